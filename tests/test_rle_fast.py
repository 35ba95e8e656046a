"""The batched COCO RLE of lazily pasted masks (``runtime.masks``: ``PastedMasks.rles``, ``_mask_runs``,
``_rle_strings``) against pycocotools' encoding of the dense image-sized masks, for both paste methods, boxes
touching or outside the image, masks spanning the full height or the whole image, empty masks, regions larger
than a chunk, with and without OpenCV; and the pieces the speed-up changed against the code they replaced."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rcnn_deploy.runtime import masks
from rcnn_deploy.runtime.coco import detections_to_coco
from rcnn_deploy.runtime.detections import Detections
from rcnn_deploy.runtime.masks import PastedMasks, RleMasks, paste_masks, rle_counts, rle_runs

mask_util = pytest.importorskip("pycocotools.mask")

METHODS = ("torchvision", "detectron2")


def _coco(dense: np.ndarray) -> list:
    """pycocotools' RLE of each ``[N, H, W]`` bool mask, as the strings the runtime writes."""
    if len(dense) == 0:
        return []
    enc = mask_util.encode(np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in enc]


def _case(rng: np.random.Generator, h: int, w: int, n: int, m: int = 28):
    """``n`` boxes of every kind (inside, across a border, outside, tiny, the whole image and more) and blob-like
    probabilities with noise."""
    kind = rng.integers(0, 6, n)
    side = np.where(kind[:, None] == 0, rng.uniform(0.2, 4, (n, 2)), rng.uniform(4, 1.3 * max(h, w), (n, 2)))
    xy = rng.uniform(-0.3, 1.1, (n, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + side], 1)
    whole = kind == 5  # the whole image (or more): every column full height
    boxes[whole] = [-2.0, -3.0, w + 2.0, h + 1.0] + rng.uniform(-1.5, 1.5, (int(whole.sum()), 4))
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1) - 0.5
    r = rng.uniform(0.1, 0.6, (n, 1, 1))
    logits = 10 * (r - np.sqrt(yy**2 + xx**2)[None]) + rng.normal(0, 2.0, (n, m, m))
    probs = 1 / (1 + np.exp(-logits))
    return probs.astype(np.float32), boxes.astype(np.float32)


def _check(probs, boxes, hw, method, threshold):
    lazy = PastedMasks(probs, boxes, hw, method, threshold)
    dense = paste_masks(probs, boxes, hw, method, threshold)
    want = _coco(dense)
    got = lazy.rles()
    assert got == want
    for i in range(len(lazy)):
        assert lazy.rle(i) == want[i]
        assert lazy.area(i) == int(dense[i].sum())
    runs = RleMasks.from_masks(lazy)
    assert runs.rles() == want
    assert [runs.rle(i) for i in range(len(runs))] == want
    assert [runs.area(i) for i in range(len(runs))] == [int(d.sum()) for d in dense]
    return dense


@pytest.mark.parametrize("method", METHODS)
def test_rles_equal_pycocotools_of_the_dense_masks(method):
    rng = np.random.default_rng(11)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(64, 321, 2))
        probs, boxes = _case(rng, h, w, int(rng.integers(0, 25)))
        for threshold in (0.5, 0.3):
            _check(probs, boxes, (h, w), method, threshold)


@pytest.mark.parametrize("method", METHODS)
def test_full_height_whole_image_and_empty_masks(method):
    rng = np.random.default_rng(12)
    h, w = 70, 90
    probs = rng.random((6, 28, 28)).astype(np.float32)
    boxes = np.array(
        [
            [-5, -5, w + 5, h + 5],  # the whole image
            [10, -8, 40, h + 8],  # full height, some columns
            [w - 3, 0, w + 30, h],  # full height at the right border (the mask ends at the last pixel)
            [200, 200, 260, 240],  # outside: no region
            [5, 5, 5.2, 5.1],  # tiny
            [0, 0, w, h],
        ],
        dtype=np.float32,
    )
    for threshold in (-1.0, 0.0, 0.5, 1.0):  # everything in the region, most, some, nothing
        dense = _check(probs, boxes, (h, w), method, threshold)
        if threshold == 1.0:
            assert not dense.any()
    dense = _check(probs, boxes, (h, w), method, -1.0)
    assert dense[0].all()
    whole = PastedMasks(probs[:1], boxes[:1], (h, w), method, -1.0).rle(0)
    assert mask_util.frPyObjects({"size": [h, w], "counts": [0, h * w]}, h, w)["counts"].decode() == whole["counts"]


@pytest.mark.parametrize("method", METHODS)
def test_regions_larger_than_a_chunk_and_many_chunks(monkeypatch, method):
    rng = np.random.default_rng(13)
    h, w = 150, 200
    probs, boxes = _case(rng, h, w, 30)
    want = _coco(paste_masks(probs, boxes, (h, w), method, 0.5))
    for chunk in (64, 1000, 5000, 1 << 20):
        monkeypatch.setattr(masks, "_CHUNK", chunk)
        assert PastedMasks(probs, boxes, (h, w), method, 0.5).rles() == want


@pytest.mark.parametrize("method", METHODS)
def test_without_opencv(monkeypatch, method):
    rng = np.random.default_rng(14)
    monkeypatch.setattr(masks, "opencv", lambda: None)
    for _ in range(3):
        h, w = (int(v) for v in rng.integers(64, 200, 2))
        probs, boxes = _case(rng, h, w, 12)
        _check(probs, boxes, (h, w), method, 0.5)


def test_no_masks():
    lazy = PastedMasks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (50, 60), "torchvision", 0.5)
    assert lazy.rles() == []
    assert RleMasks.from_masks(lazy).rles() == []
    empty = PastedMasks(
        np.zeros((2, 28, 28), np.float32),
        np.array([[1, 1, 30, 30], [90, 90, 99, 99]], np.float32),
        (50, 60),
        "torchvision",
        0.5,
    )
    want = mask_util.frPyObjects({"size": [50, 60], "counts": [3000]}, 50, 60)["counts"].decode()
    assert [r["counts"] for r in empty.rles()] == [want, want]


def _rle_string(counts: list) -> str:
    """pycocotools' ``rleToString`` in Python: each count (less the one two before it from the fourth on) in
    5-bit groups, low first, 0x20 where another follows, plus 48."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_rle_strings_equal_frpyobjects():
    """pycocotools' string form of uncompressed counts: small and large counts, zeros, 1 to 6 counts (the delta
    from the count two before starts at the fourth). pycocotools itself is asked only below 2**24 per count: it
    allocates 6 characters a count and a count of 2**24 or more can take 6 (and one more for the terminating 0)."""
    rng = np.random.default_rng(15)
    lists = [[7], [0, 5], [3, 0, 4], [0, 1, 2, 3], [5, 5, 5, 5, 5, 5], [2**24 - 1, 1], [1, 2**23, 3, 2**23 + 7, 1]]
    for _ in range(300):
        k = int(rng.integers(1, 40))
        top = int(10.0 ** rng.uniform(0, 7.2))
        lists.append([int(v) for v in rng.integers(0, max(top, 1), k) + (np.arange(k) > 0)])
    flat = np.concatenate([np.asarray(c, dtype=np.int64) for c in lists])
    got = masks._rle_strings(flat, np.array([len(c) for c in lists]))
    for counts, s in zip(lists, got):
        h = sum(counts)
        want = mask_util.frPyObjects({"size": [h, 1], "counts": counts}, h, 1)["counts"].decode("ascii")
        assert s == want == _rle_string(counts), counts
        assert masks._compress(counts, (h, 1))["counts"] == want
    # counts too large for pycocotools' buffer (an image of 2**31 pixels and more): the Python rleToString
    large = [[2**31 - 1], [1, 2**30, 3, 2**30 + 7, 1], [2**33, 5, 2**32, 2**34, 0, 9]]
    got = masks._rle_strings(
        np.concatenate([np.asarray(c, np.int64) for c in large]), np.array([len(c) for c in large])
    )
    assert got == [_rle_string(c) for c in large]


def test_rle_runs_and_counts_of_a_crop():
    rng = np.random.default_rng(16)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        ch, cw = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = rng.random((ch, cw)) < rng.choice([0.0, 0.3, 0.9, 1.0])
        dense = np.zeros((h, w), bool)
        dense[y0 : y0 + ch, x0 : x0 + cw] = crop
        flat = np.concatenate([[0], dense.T.reshape(-1).astype(np.int8), [0]])
        step = np.diff(flat)
        want = np.stack([np.flatnonzero(step == 1), np.flatnonzero(step == -1)], 1)
        runs = rle_runs(crop, y0, x0, (h, w))
        assert runs.dtype == np.int64 and np.array_equal(runs.reshape(-1, 2), want)
        counts = rle_counts(crop, y0, x0, (h, w))
        assert masks._compress(counts, (h, w))["counts"] == _coco(dense[None])[0]["counts"]


def test_threads_have_their_own_buffers():
    rng = np.random.default_rng(17)
    cases = [_case(rng, 200, 240, 20) for _ in range(6)]
    want = [_coco(paste_masks(p, b, (200, 240), "torchvision", 0.5)) for p, b in cases]
    barrier = threading.Barrier(3)

    def one(k: int) -> list:
        if k < 3:  # the first three at once
            barrier.wait(timeout=10)
        p, b = cases[k]
        return PastedMasks(p, b, (200, 240), "torchvision", 0.5).rles()

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(one, range(6))) == want


def test_detections_to_coco_lazy_equals_dense():
    rng = np.random.default_rng(18)
    probs, boxes = _case(rng, 120, 160, 15)
    scores = np.sort(rng.random(15).astype(np.float32))[::-1]
    classes = rng.integers(1, 5, 15).astype(np.int32)
    lazy = Detections(boxes, scores, classes, PastedMasks(probs, boxes, (120, 160), "detectron2", 0.5))
    dense = Detections(boxes, scores, classes, paste_masks(probs, boxes, (120, 160), "detectron2", 0.5))
    ids = [0, 1, 2, 3, 4]
    assert detections_to_coco(lazy, 7, ids, ids) == detections_to_coco(dense, 7, ids, ids)


# ------------------------------------------------------------------ the replaced code, kept here as the reference
def _sample_weights_before(pix, lo, hi, m):
    src = (pix + 0.5 - lo) / max(hi - lo, 1e-12) * m - 0.5
    i0 = np.floor(src).astype(np.int64)
    w1 = src - i0
    w = np.zeros((pix.shape[0], m), dtype=np.float64)
    for idx, wt in ((i0, 1.0 - w1), (i0 + 1, w1)):
        ok = (idx >= 0) & (idx < m)
        w[np.nonzero(ok)[0], idx[ok]] += wt[ok]
    return w


def test_sample_weights_equal_the_loop_they_replaced():
    rng = np.random.default_rng(19)
    for _ in range(400):
        lo = float(np.float32(rng.uniform(-20, 300)))
        hi = float(np.float32(lo + rng.choice([0.0, 1e-6, rng.uniform(0, 2), rng.uniform(0, 400)])))
        a = int(np.floor(lo)) - int(rng.integers(0, 3))
        pix = np.arange(a, max(int(np.ceil(hi)) + int(rng.integers(0, 3)), a + 1), dtype=np.float64)
        got = masks._sample_weights(pix, lo, hi, 28)
        want = _sample_weights_before(pix, lo, hi, 28)
        assert (
            got.flags.c_contiguous and np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
        )


@pytest.mark.parametrize("method", METHODS)
def test_paste_region_in_scratch_buffers_equals_the_plain_one(method):
    """The probabilities pasted into the reused buffers (OpenCV's resize into them; BLAS's product into them) are
    the ones pasted without; and OpenCV's resize of the float32 padded mask is the one of the float64 padded mask
    cast to float32 (what the code did before)."""
    cv2 = masks.opencv()
    rng = np.random.default_rng(20)
    probs, boxes = _case(rng, 300, 260, 40)
    scratch = masks._Scratch()
    for p, b in zip(probs, boxes):
        plain = masks._paste_region(p, b, (300, 260), method)
        reused = masks._paste_region(p, b, (300, 260), method, scratch)
        assert (plain is None) == (reused is None)
        if plain is None:
            continue
        assert plain[:4] == reused[:4] and plain[4].dtype == reused[4].dtype
        assert np.array_equal(plain[4], reused[4])
    if cv2 is None:
        return
    for p in probs[:10]:
        padded = np.zeros((30, 30), np.float64)
        padded[1:-1, 1:-1] = p
        padded32 = np.zeros((30, 30), np.float32)
        padded32[1:-1, 1:-1] = p
        assert np.array_equal(padded.astype(np.float32), padded32)


def test_detectron2_paste_equals_the_products_it_made_before():
    """Rows' and columns' weights made in one go, then the same two products as before (identical values)."""
    rng = np.random.default_rng(21)
    probs, boxes = _case(rng, 200, 230, 40)
    for p, b in zip(probs, boxes):
        got = masks._paste_region(p, b, (200, 230), "detectron2")
        x0, y0 = int(max(np.floor(b[0]) - 1, 0)), int(max(np.floor(b[1]) - 1, 0))
        x1, y1 = int(min(np.ceil(b[2]) + 1, 230)), int(min(np.ceil(b[3]) + 1, 200))
        if x1 <= x0 or y1 <= y0:
            assert got is None
            continue
        wy = _sample_weights_before(np.arange(y0, y1, dtype=np.float64), float(b[1]), float(b[3]), 28)
        wx = _sample_weights_before(np.arange(x0, x1, dtype=np.float64), float(b[0]), float(b[2]), 28)
        assert got[:4] == (y0, y1, x0, x1) and np.array_equal(got[4], wy @ p @ wx.T)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 40])
def test_balanced_cuts_cover_every_mask_in_order(n):
    rng = np.random.default_rng(n)
    weights = rng.lognormal(8, 1.5, n)
    for parts in (1, 2, 3, 4, 9):
        cuts = masks._balanced_cuts(weights, parts)
        assert cuts[0] == 0 and cuts[-1] == n
        if n:
            assert all(b > a for a, b in zip(cuts, cuts[1:])), cuts  # no empty part
            assert len(cuts) - 1 == min(parts, n)
        else:
            assert cuts == [0, 0]
    # one huge mask first: it is a part of its own, the rest share the others
    w = np.array([1000.0] + [1.0] * 12)
    assert masks._balanced_cuts(w, 3)[:2] == [0, 1]


class _Inline:
    """An executor running each task at once, counting them (what the split hands out, without processes)."""

    def __init__(self) -> None:
        self.tasks = 0

    def submit(self, fn, *args):
        from concurrent.futures import Future

        self.tasks += 1
        f: Future = Future()
        f.set_result(fn(*args))
        return f


@pytest.mark.parametrize("method", METHODS)
def test_rles_split_across_an_executor_equals_one_piece(method):
    rng = np.random.default_rng(23)
    probs, boxes = _case(rng, 180, 260, 37)
    lazy = PastedMasks(probs, boxes, (180, 260), method, 0.5)
    want = _coco(paste_masks(probs, boxes, (180, 260), method, 0.5))
    ex = _Inline()
    assert lazy.rles(ex, parts=4) == want
    assert ex.tasks == 3  # the first part is made by the caller
    few = PastedMasks(probs[:5], boxes[:5], (180, 260), method, 0.5)
    assert few.rles(ex, parts=4) == want[:5] and ex.tasks == 3  # too few masks to split: no tasks


def test_rles_split_across_worker_processes():
    from concurrent.futures import ProcessPoolExecutor

    rng = np.random.default_rng(24)
    probs, boxes = _case(rng, 300, 400, 60)
    lazy = PastedMasks(probs, boxes, (300, 400), "torchvision", 0.5)
    det = Detections(boxes, np.linspace(1, 0.1, 60).astype(np.float32), np.ones(60, np.int32), lazy)
    with ProcessPoolExecutor(2) as pool:
        got = detections_to_coco(det, 7, [0, 1], [0, 1], executor=pool, parts=3)
    assert got == detections_to_coco(det, 7, [0, 1], [0, 1])


def test_batched_torchvision_regions_equal_the_per_mask_paste(monkeypatch):
    """``_torchvision_regions`` (the box arithmetic and zero borders for all masks at once, what ``PastedMasks.rles``
    reads) yields exactly ``_paste_region``'s regions: boxes of every kind, boxes on half and whole pixels (where the
    expanded box's truncation could go either way), and the masks too large for OpenCV, which take the per-mask path
    (MAX_SIDE lowered so small boxes exercise it)."""
    if masks.opencv() is None:
        pytest.skip("the batched path is OpenCV's")
    rng = np.random.default_rng(21)
    probs, boxes = _case(rng, 300, 260, 60)
    grid = rng.integers(-20, 280, (40, 4)).astype(np.float32) * 0.5  # half and whole pixels
    grid[:, 2:] = grid[:, :2] + np.abs(grid[:, 2:] - grid[:, :2])
    probs = np.concatenate([probs, probs[:40]])
    boxes = np.concatenate([boxes, grid])
    monkeypatch.setattr(masks, "MAX_SIDE", 120)
    assert any(max(b[2] - b[0], b[3] - b[1]) * 30 / 28 >= 120 for b in boxes)  # some take the per-mask path
    hw = (300, 260)
    plain = [masks._paste_region(p, b, hw, "torchvision") for p, b in zip(probs, boxes)]
    batched = masks._torchvision_regions(probs, boxes, hw, masks._Scratch())
    for i, (want, got) in enumerate(zip(plain, batched)):
        assert (want is None) == (got is None), i
        if want is not None:
            assert want[:4] == got[:4] and np.array_equal(want[4], got[4]), i
    geometry = masks._torchvision_geometry(boxes, 28, hw)
    assert geometry.dtype == np.int64 and geometry.shape == (len(boxes), 8)
