"""Post-processing on the model's device (rcnn_deploy.glue.gpu_post) against the host's (runtime.masks): the
same box regions, the same pasted masks as COCO RLE, and RleMasks with the interface of PastedMasks. Written
device-agnostic in torch; these tests run it on the CPU (the GPU runs are benchmarks/gpu_post_bench.py).

The one tolerance: the host resamples a mask in float64 (or OpenCV's float32 resize) and the device in float32,
so a pixel whose pasted probability is within 1e-5 of the threshold may land on the other side of it (the
differences are about 1e-7). Every other pixel must be equal, and such pixels are rare: the tests also require
that they are few."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mask_util = pytest.importorskip("pycocotools.mask")

from rcnn_deploy.glue.gpu_post import paste_runs, postprocess_batch  # noqa: E402
from rcnn_deploy.runtime.detections import Detections  # noqa: E402
from rcnn_deploy.runtime.masks import PastedMasks, RleMasks, paste_mask  # noqa: E402
from rcnn_deploy.runtime.preprocess import Letterbox  # noqa: E402

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
NEAR = 1e-5  # see the module docstring
METHODS = ("torchvision", "detectron2")


def _boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Random boxes plus the hard cases: crossing and touching each border, tiny, empty, full height, the whole
    image, outside the image."""
    xy = rng.uniform(-0.2, 1.0, (n, 2)) * [w, h]
    wh = np.exp(rng.uniform(np.log(0.3), np.log(1.2 * max(h, w)), (n, 2)))
    boxes = np.concatenate([xy, xy + wh], 1)
    special = [
        [-7.5, 3.2, 20.3, 40.9],  # crosses the left border
        [w - 15.2, h - 9.7, w + 12.0, h + 3.3],  # crosses the right and bottom borders
        [0.0, 0.0, 17.0, 23.0],  # touches the top-left corner exactly
        [w - 31.0, 5.0, float(w), float(h)],  # touches the right border and bottom exactly, full height below 5
        [10.2, 11.7, 10.6, 12.1],  # tiny (under a pixel)
        [30.0, 20.0, 30.0, 45.0],  # empty width
        [12.0, 33.0, 40.0, 33.0],  # empty height
        [5.3, 0.0, 60.7, float(h)],  # full height: runs go on across column ends
        [0.0, 0.0, float(w), float(h)],  # the whole image
        [-40.0, -30.0, -20.0, -5.0],  # outside the image
        [w + 3.0, h + 2.0, w + 30.0, h + 20.0],  # outside, beyond the far corner
    ]
    return np.concatenate([boxes, np.array(special)]).astype(np.float32)


def _probs(rng: np.random.Generator, n: int, m: int = 28) -> np.ndarray:
    """Mask-head-like probabilities: a blob, mostly near 0 or 1, noisy in between; some all 1 (so full-height
    boxes give runs across columns) and some all 0."""
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1) - 0.5
    r = rng.uniform(0.15, 0.5, (n, 1, 1))
    logits = 10 * (r - np.sqrt(yy**2 + xx**2)[None]) + rng.normal(0, 1.5, (n, m, m))
    probs = 1 / (1 + np.exp(-logits))
    probs[::5] = 1.0
    probs[3::7] = 0.0
    return probs.astype(np.float32)


def _check_against_host(got: RleMasks, probs, boxes, hw, method, threshold=0.5, near=NEAR) -> int:
    """Each mask of ``got`` against PastedMasks: the same region and, decoded from its COCO RLE string, the same
    pixels except those within ``near`` of the threshold. Returns how many pixels differed."""
    ref = PastedMasks(probs, boxes, hw, method, threshold)
    assert len(got) == len(ref) and got.shape == ref.shape
    differing = 0
    for i in range(len(ref)):
        r, g = ref.region(i), got.region(i)
        assert (r is None) == (g is None), (i, boxes[i], r and r[:4], g and g[:4])
        if r is not None:
            assert tuple(r[:4]) == tuple(g[:4]), (i, boxes[i])
        rle = got.rle(i)
        assert rle["size"] == list(hw)
        decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
        want = ref.dense(i)
        diff = decoded != want
        if diff.any():
            prob = paste_mask(probs[i], boxes[i], hw, method)
            assert np.abs(prob[diff] - threshold).max() < near, (i, boxes[i], int(diff.sum()))
            differing += int(diff.sum())
        else:
            assert rle == ref.rle(i)  # the same pixels: the same string
        assert got.area(i) == int(decoded.sum())
    return differing


@pytest.mark.parametrize("method", METHODS)
def test_paste_runs_equals_the_host_paste(method):
    rng = np.random.default_rng(7)
    pixels = differing = 0
    for h, w in [(64, 64), (100, 320), (320, 90), (257, 193)]:
        boxes = _boxes(rng, 14, h, w)
        probs = _probs(rng, len(boxes))
        # the default grouping, and every mask in a group of its own (padding to the largest in a group is
        # never seen in a result, and neither is the order masks are worked on in)
        for kwargs in ({}, {"max_elements": 1}, {"min_fill": 0.0}):
            out = paste_runs(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), method, 0.5, **kwargs)
            got = out.masks(0, len(boxes), (h, w))
            differing += _check_against_host(got, probs, boxes, (h, w), method)
            sides = np.maximum(out.regions[:, [1, 3]] - out.regions[:, [0, 2]], 0)
            pixels += int(sides.prod(1).sum())
    assert pixels > 100_000
    assert differing <= pixels * 1e-4  # near-threshold pixels only, and rare


@pytest.mark.parametrize("method", METHODS)
def test_paste_runs_takes_masks_of_images_of_different_sizes_at_once(method):
    """One call for a whole batch: each mask in its own image size (positions are column-major in that image)."""
    rng = np.random.default_rng(3)
    sizes = [(80, 200), (240, 64), (131, 131)]
    boxes = [_boxes(rng, 5, h, w) for h, w in sizes]
    probs = [_probs(rng, len(b)) for b in boxes]
    hw = np.concatenate([np.repeat([s], len(b), 0) for s, b in zip(sizes, boxes)])
    out = paste_runs(torch.from_numpy(np.concatenate(probs)), torch.from_numpy(np.concatenate(boxes)), hw, method)
    start = 0
    for s, b, p in zip(sizes, boxes, probs):
        got = out.masks(start, start + len(b), s)
        _check_against_host(got, p, b, s, method)
        start += len(b)


def test_threshold_rules_hold_exactly_and_padding_never_counts():
    """All-zero probabilities at threshold 0: Detectron2 keeps ``>=`` (its whole region is 1), torchvision ``>``
    (nothing). Exactly, no tolerance: every value is an exact 0. The padding around smaller regions in a group
    and each column's extra slot must not count as ``>= 0``."""
    h, w = 90, 120
    boxes = np.array([[10, 5, 30, 80], [0, 0, 120, 90], [50.5, 40.2, 52.1, 41.0], [100, 10, 140, 30]], np.float32)
    probs = np.zeros((len(boxes), 28, 28), np.float32)
    for method in METHODS:
        out = paste_runs(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), method, 0.0, min_fill=0.0)
        got = out.masks(0, len(boxes), (h, w))
        ref = PastedMasks(probs, boxes, (h, w), method, 0.0)
        for i in range(len(boxes)):
            assert np.array_equal(got.dense(i), ref.dense(i)), (method, i)
            assert got.rle(i) == ref.rle(i)
        if method == "detectron2":
            assert got.area(1) == h * w  # the whole image: one run through every column
            assert got.runs_of(1).tolist() == [[0, h * w]]
        else:
            assert all(got.area(i) == 0 for i in range(len(boxes)))


def test_paste_runs_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="unknown mask paste method"):
        paste_runs(torch.zeros((1, 28, 28)), torch.zeros((1, 4)), (10, 10), "bilinear")


# ------------------------------------------------------------------------ RleMasks: PastedMasks' interface
def _pair(method="torchvision"):
    rng = np.random.default_rng(11)
    h, w = 150, 210
    boxes = _boxes(rng, 6, h, w)
    probs = _probs(rng, len(boxes))
    ref = PastedMasks(probs, boxes, (h, w), method, 0.5)
    return ref, RleMasks.from_masks(ref)


@pytest.mark.parametrize("method", METHODS)
def test_rle_masks_behave_like_pasted_masks(method):
    ref, got = _pair(method)
    n, h, w = ref.shape
    assert (len(got), got.shape, got.ndim, got.dtype) == (n, (n, h, w), 3, np.dtype(bool))
    dense = np.asarray(ref)
    assert np.array_equal(np.asarray(got), dense) and np.asarray(got, dtype=np.uint8).dtype == np.uint8
    assert [m.tolist() for m in got] == [m.tolist() for m in dense]
    for i in range(n):
        r, g = ref.region(i), got.region(i)
        assert (r is None) == (g is None)
        if r is not None:
            assert tuple(r[:4]) == tuple(g[:4]) and np.array_equal(r[4], g[4]) and g[4].dtype == bool
        assert got.rle(i) == ref.rle(i) and got.area(i) == ref.area(i)
        assert np.array_equal(got[i], dense[i]) and np.array_equal(got[np.int64(i)], dense[i])
    keep = np.array([True, False, True, True] + [False] * (n - 5) + [True])
    for key in (keep, np.array([n - 1, 0, 3]), slice(1, None, 2), [2]):
        sub = got[key]
        assert isinstance(sub, RleMasks) and np.array_equal(np.asarray(sub), dense[key])
        assert [sub.rle(i) for i in range(len(sub))] == [ref[key].rle(i) for i in range(len(sub))]
    empty = got[np.zeros(n, bool)]
    assert empty.shape == (0, h, w) and np.asarray(empty).shape == (0, h, w)
    back = pickle.loads(pickle.dumps(got))  # worker processes get them pickled
    assert np.array_equal(np.asarray(back), dense)


def test_rle_masks_refuse_inconsistent_offsets():
    with pytest.raises(ValueError, match="offsets"):
        RleMasks(np.zeros((2, 2)), np.array([0, 1]), np.zeros((2, 4)), (10, 10))


def test_writers_visualisation_and_serving_read_rle_masks_like_pasted_masks():
    from rcnn_deploy.evaluation.reference import reference_map
    from rcnn_deploy.runtime.coco import detections_to_coco
    from rcnn_deploy.runtime.visualize import render
    from rcnn_deploy.serve.contract import mask_rles

    ref, got = _pair()
    n, h, w = ref.shape
    boxes, scores = ref.boxes, np.linspace(0.9, 0.3, n).astype(np.float32)
    classes = np.arange(n, dtype=np.int32) % 3 + 1
    a, b = Detections(boxes, scores, classes, ref), Detections(boxes, scores, classes, got)
    assert b.pasted is got and b.masks.shape == (n, h, w) and np.array_equal(b.masks, a.masks)
    assert repr(b) == repr(a) == f"Detections(n={n}, masks=lazy)"
    assert detections_to_coco(a, 1, [0, 1, 2, 3], [0, 1, 2, 3]) == detections_to_coco(b, 1, [0, 1, 2, 3], [0, 1, 2, 3])
    kept_a, kept_b = a.above(0.5), b.above(0.5)
    assert isinstance(kept_b.pasted, RleMasks) and np.array_equal(kept_b.masks, kept_a.masks)
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    names = ["bg", "a", "b", "c"]
    assert np.array_equal(render(image, b, names, [0, 1, 2, 3]), render(image, a, names, [0, 1, 2, 3]))
    assert mask_rles(got) == mask_rles(ref)
    # (not 1.0: some of these masks are empty, which COCO scores 0 even against themselves)
    assert reference_map([a], [b]) == reference_map([a], [a]) == reference_map([b], [b])


# -------------------------------------------------------------------------- a batch, and the wired path
def _outputs(rng, b=3, d=9, m=28, num=None):
    """Padded model outputs of ``b`` images in an input of 128 x 160, some slots past num_detections."""
    boxes = np.sort(rng.uniform(-5, 170, (b, d, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(b, d, 4)
    return {
        "num_detections": np.array([d, 4, 0] if num is None else num, np.int64)[:b],
        "boxes": boxes.astype(np.float32),
        "scores": np.sort(rng.random((b, d)).astype(np.float32))[:, ::-1].copy(),
        "classes": rng.integers(1, 4, (b, d)).astype(np.int64),
        "masks": _probs(rng, b * d, m).reshape(b, d, m, m),
    }


@pytest.mark.parametrize("method", METHODS)
def test_postprocess_batch_equals_host_stages(method):
    from rcnn_deploy import get_spec
    from rcnn_deploy.api import HostStages

    rng = np.random.default_rng(5)
    out = _outputs(rng)
    lbs = [Letterbox.fit(300, 200, (128, 160)), Letterbox.fit(64, 320, (128, 160)), Letterbox.fit(128, 160, (128, 160))]
    spec = get_spec("torchvision-maskrcnn").replace(mask_paste=method)
    stages = HostStages(spec, (128, 160), (0, 0, 0), "|u1", None, False)
    compact = postprocess_batch({k: torch.from_numpy(v) for k, v in out.items()}, lbs, method, 0.5)
    assert set(compact) == {"detections", "finite"} and compact["finite"].tolist() == [True] * 3
    for i, lb in enumerate(lbs):
        want = stages.detections_for(lb, {k: v[i : i + 1] for k, v in out.items()})
        got = stages.detections_for(lb, {k: v[i : i + 1] for k, v in compact.items()})
        assert len(got) == len(want) == out["num_detections"][i]
        assert np.array_equal(got.boxes, want.boxes) and got.boxes.dtype == np.float32  # bit for bit
        assert np.array_equal(got.scores, want.scores) and np.array_equal(got.classes, want.classes)
        assert got.classes.dtype == want.classes.dtype
        assert isinstance(got.pasted, RleMasks) and got.pasted.image_hw == (lb.orig_h, lb.orig_w)
        _check_against_host(got.pasted, want.pasted.probs, want.pasted.boxes, want.pasted.image_hw, method)


def test_a_non_finite_image_fails_alone():
    from rcnn_deploy import get_spec
    from rcnn_deploy.api import HostStages
    from rcnn_deploy.errors import UserError

    out = _outputs(np.random.default_rng(1))
    out["boxes"][0, 2, 1] = np.nan
    out["scores"][1, 7] = np.inf  # past image 1's num_detections (4): padding, not looked at
    lbs = [Letterbox.fit(128, 160, (128, 160))] * 3
    compact = postprocess_batch({k: torch.from_numpy(v) for k, v in out.items()}, lbs)
    assert compact["finite"].tolist() == [False, True, True]
    stages = HostStages(get_spec("torchvision-maskrcnn"), (128, 160), (0, 0, 0), "|u1", None, False)
    with pytest.raises(UserError, match="non-finite"):
        stages.detections_for(lbs[0], {k: v[:1] for k, v in compact.items()}, "a.jpg")
    with pytest.raises(UserError, match="non-finite"):  # the host path says the same
        stages.detections_for(lbs[0], {k: v[:1] for k, v in out.items()}, "a.jpg")
    assert len(stages.detections_for(lbs[1], {k: v[1:2] for k, v in compact.items()})) == 4


def _detect_both_ways(model, spec, input_hw, images, batch):
    """``images`` through Detector -> runner -> GpuBatchModel(model) on device "cpu" -> HostStages, once with
    the outputs copied to the host and post-processed there, once post-processed by GpuPost."""
    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.torch_cuda import GpuBatchModel, GpuLetterbox
    from rcnn_deploy.glue.gpu_post import GpuPost

    results = []
    for post in (None, GpuPost(spec.mask_paste, spec.mask_threshold)):
        det = Detector(spec, input_hw, lambda a: {}, "torch", batch)
        det.input_dtype = np.dtype(np.uint8)  # what the CUDA path feeds: uint8, cast on the device
        lb = GpuLetterbox(input_hw, det.fill, spec.resize, "cpu", None)
        det.batch_model = GpuBatchModel(model, lb, batch, post)
        dets = det(images)
        assert all(isinstance(d.pasted, PastedMasks if post is None else RleMasks) for d in dets)
        results.append(dets)
    return results


def _same_coco(host, device, spec):
    from rcnn_deploy.runtime.coco import detections_to_coco

    assert len(host) == len(device)
    for i, (a, b) in enumerate(zip(host, device)):
        ca = detections_to_coco(a, i + 1, spec.category_ids, spec.label_ids)
        cb = detections_to_coco(b, i + 1, spec.category_ids, spec.label_ids)
        assert [{k: v for k, v in e.items() if k != "segmentation"} for e in ca] == [
            {k: v for k, v in e.items() if k != "segmentation"} for e in cb
        ]
        p = a.pasted
        _check_against_host(b.pasted, p.probs, p.boxes, p.image_hw, p.method, p.threshold)


@pytest.mark.parametrize("method", METHODS)
def test_the_wired_path_passes_letterboxes_and_returns_host_detections(method):
    """The wiring with a stand-in for the network (padded outputs made up from each batch's pixels; the real
    network: the next test): five images of five sizes in batches of two through the streaming runner."""
    from rcnn_deploy import get_spec

    spec = get_spec("torchvision-maskrcnn").replace(mask_paste=method)
    rng = np.random.default_rng(2)
    images = [
        rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for h, w in [(60, 90), (128, 160), (300, 120), (77, 77), (90, 400)]
    ]
    calls = []

    def model(x):
        calls.append(int(x.shape[0]))
        r = np.random.default_rng(int(x.double().sum()))
        out = _outputs(r, b=int(x.shape[0]), num=r.integers(0, 10, int(x.shape[0])))
        return {k: torch.from_numpy(v) for k, v in out.items()}

    host, device = _detect_both_ways(model, spec, (128, 160), images, batch=2)
    assert calls == [2, 2, 2] * 2  # the last batch (one image) padded to the batch
    assert sum(len(d) for d in host) > 10
    _same_coco(host, device, spec)


def test_a_model_that_launches_is_post_processed_in_the_waiter():
    """``GpuBatchModel`` with a model that has ``launch`` (``CudaGraphModel``'s: queue the batch, finish later):
    ``submit`` only launches, the returned waiter finishes and post-processes; the detections are those of the
    same model called synchronously, in both output modes."""
    from rcnn_deploy import get_spec

    spec = get_spec("torchvision-maskrcnn")
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(60, 90), (128, 160), (300, 120)]]
    events = []

    def run(x):
        r = np.random.default_rng(int(x.double().sum()))
        out = _outputs(r, b=int(x.shape[0]), num=r.integers(0, 10, int(x.shape[0])))
        return {k: torch.from_numpy(v) for k, v in out.items()}

    class Launching:
        def __call__(self, x):
            raise AssertionError("a model with launch is not called synchronously")

        def launch(self, x):
            events.append("launch")
            x = x.clone()  # the letterbox buffer is reused by the next batch

            def finish():
                events.append("finish")
                return run(x)

            return finish

    sync_host, sync_device = _detect_both_ways(run, spec, (128, 160), images, batch=2)
    events.clear()
    host, device = _detect_both_ways(Launching(), spec, (128, 160), images, batch=2)
    assert events.count("launch") == events.count("finish") == 4
    for a, b in ((sync_host, host), (sync_device, device)):
        assert [len(d) for d in a] == [len(d) for d in b]
        for da, db in zip(a, b):
            np.testing.assert_array_equal(da.boxes, db.boxes)
            np.testing.assert_array_equal(da.scores, db.scores)
    _same_coco(host, device, spec)


def test_the_waiter_post_processes_before_the_convergence_check_and_again_when_it_fails():
    """A launch whose ``finish`` offers ``ready`` (outputs, unchecked) and ``exact_if_needed`` (CudaGraphModel's):
    with GPU post-processing the waiter post-processes ``ready()``'s outputs first (queued behind the graph, no
    wait before it) and only then asks for the convergence check; where a batch had not converged, its exact
    outputs are post-processed instead. The detections equal those of a model called synchronously that returns
    the exact outputs."""
    from rcnn_deploy import get_spec
    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.torch_cuda import GpuBatchModel, GpuLetterbox
    from rcnn_deploy.glue.gpu_post import GpuPost

    spec = get_spec("torchvision-maskrcnn")
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(60, 90), (128, 160), (300, 120)]]
    unconverged = 1  # the second batch: its NMS "did not converge" within the rounds
    events, calls = [], []

    def run(x, exact=False):
        r = np.random.default_rng(int(x.double().sum()) + (1 if exact else 0))
        out = _outputs(r, b=int(x.shape[0]), num=r.integers(1, 10, int(x.shape[0])))
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def synchronous(x):
        calls.append(1)
        return run(x, exact=len(calls) - 1 == unconverged)

    class Launching:
        def launch(self, x):
            x, batch = x.clone(), len(calls)
            calls.append(1)

            def finish():
                raise AssertionError("with GPU post-processing the waiter uses ready / exact_if_needed")

            def ready():
                events.append((batch, "ready"))
                return run(x)

            def exact_if_needed():
                events.append((batch, "check"))
                return run(x, exact=True) if batch == unconverged else None

            finish.ready, finish.exact_if_needed = ready, exact_if_needed
            return finish

    results = []
    for model in (synchronous, Launching()):
        calls.clear()
        det = Detector(spec, (128, 160), lambda a: {}, "torch", 2)
        det.input_dtype = np.dtype(np.uint8)
        lb = GpuLetterbox((128, 160), det.fill, spec.resize, "cpu", None)
        det.batch_model = GpuBatchModel(model, lb, 2, GpuPost(spec.mask_paste, spec.mask_threshold))
        results.append(det(images))
    # each batch: its outputs post-processed, then the check (the second batch's exact outputs after it)
    assert sorted(events) == [(0, "check"), (0, "ready"), (1, "check"), (1, "ready")]
    for batch in (0, 1):
        assert events.index((batch, "ready")) < events.index((batch, "check"))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.pasted.rles() == b.pasted.rles()


class _PointerEngine:
    """A stand-in for a fused TensorRTBackend with ``infer_device``'s contract: it reads its input and writes its
    outputs (the fused graph's names) through raw pointers into memory it does not own, here host memory (device
    "cpu"), so what TensorRTTorchModel hands a real engine (pointers, shapes, dtypes, names) is what it is checked
    on. The outputs are ``run``'s for the pixels it read."""

    def __init__(self, run, input_dtype, d=9, m=28):
        self.run, self.input_dtype, self.d, self.m = run, np.dtype(input_dtype), d, m
        self.input_names = ["images"]
        self.calls = []

    def tensor_dtype(self, name):
        dtypes = {"images": self.input_dtype, "num_detections": np.int32, "detection_classes": np.int32}
        return np.dtype(dtypes.get(name, np.float32))

    def output_shapes(self, shapes):
        b, d, m = int(shapes["images"][0]), self.d, self.m
        return {"num_detections": (b,), "detection_boxes": (b, d, 4), "detection_scores": (b, d),
                "detection_classes": (b, d), "detection_masks": (b, d, m, m)}  # fmt: skip

    @staticmethod
    def _view(t):
        import ctypes

        n = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(t.ptr))
        return raw.view(t.dtype).reshape(t.shape)

    def infer_device(self, inputs, outputs, stream):
        x = self._view(inputs["images"])
        assert x.dtype == self.input_dtype and stream == 0
        self.calls.append(tuple(x.shape))
        out = self.run(torch.from_numpy(x.astype(np.uint8)))  # the pixels as the model saw them
        assert sorted(outputs) == sorted(self.output_shapes({"images": x.shape}))
        for name, t in outputs.items():
            self._view(t)[...] = out[name.replace("detection_", "")].numpy()


@pytest.mark.parametrize("input_dtype", [np.uint8, np.float32])
def test_an_engine_on_torch_tensors_gives_the_models_detections(input_dtype):
    """``engine_on_torch`` (``Detector.from_engine(..., gpu_post=True)``'s model): a fused engine fed from and
    writing into torch tensors through their pointers (TensorRTTorchModel), between the GPU letterbox and
    GpuPost, gives the detections of the same outputs from a torch model in GpuBatchModel, and those of the host
    path; an engine taking float32 gets the uint8 pixels cast. On the CPU, with a stand-in engine: not TensorRT."""
    from rcnn_deploy import get_spec
    from rcnn_deploy.api import Detector, engine_on_torch

    spec = get_spec("torchvision-maskrcnn")
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(60, 90), (128, 160), (300, 120)]]

    def run(x):
        r = np.random.default_rng(int(x.double().sum()))
        num = r.integers(0, 10, int(x.shape[0]))
        out = _outputs(r, b=int(x.shape[0]), num=num)
        out["num_detections"], out["classes"] = out["num_detections"].astype(np.int32), out["classes"].astype(np.int32)
        return {k: torch.from_numpy(v) for k, v in out.items()}

    host, device = _detect_both_ways(run, spec, (128, 160), images, batch=2)
    engine = _PointerEngine(run, input_dtype)
    det = Detector(spec, (128, 160), lambda a: {}, "tensorrt", 2)
    det.input_dtype = np.dtype(np.uint8)
    det.batch_model = engine_on_torch(engine, spec, (128, 160), det.fill, None, 2, False, device="cpu")
    got = det(images)
    assert engine.calls == [(2, 3, 128, 160)] * 2  # every batch padded to the profile's largest
    assert all(isinstance(d.pasted, RleMasks) for d in got)
    for a, b in zip(device, got):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.classes, b.classes)
        assert a.pasted.rles() == b.pasted.rles()
    _same_coco(host, got, spec)


@pytest.fixture(scope="module")
def shapes_net():
    from rcnn_deploy.models.build import build_model

    return build_model("torchvision-maskrcnn", str(CKPT)).eval()


def test_gpu_post_needs_a_cuda_device_and_a_checkpoint(tmp_path):
    from rcnn_deploy.api import Detector
    from rcnn_deploy.errors import UserError

    with pytest.raises(UserError, match="needs a CUDA device"):
        Detector.from_module(object(), (128, 128), gpu_post=True)  # refused before the model is looked at
    (tmp_path / "contract.json").write_text("{}")
    with pytest.raises(UserError, match="but for a fused TensorRT engine"):
        Detector.load(tmp_path, gpu_post=True)  # an export directory (ONNX Runtime): not there
    (tmp_path / "model.engine").write_bytes(b"")
    if not torch.cuda.is_available():  # an engine: its outputs post-processed by torch on the GPU
        with pytest.raises(UserError, match="needs torch with a CUDA GPU"):
            Detector.load(tmp_path / "model.engine", gpu_post="torch")


def test_gpu_post_of_an_engine_without_torch_cuda_takes_the_kernel_and_needs_nvrtc(tmp_path, monkeypatch):
    """``gpu_post=True`` on an engine where torch has no CUDA: the torch-free kernel paste, which needs NVRTC (a
    clear error before anything is read when there is none); any other value is refused."""
    from rcnn_deploy import api
    from rcnn_deploy.backends import cuda_rtc
    from rcnn_deploy.errors import UserError

    (tmp_path / "model.engine").write_bytes(b"")
    monkeypatch.setattr(api, "_torch_cuda_here", lambda: False)
    monkeypatch.setattr(cuda_rtc, "find_nvrtc", lambda: None)
    for value in (True, "kernel"):
        with pytest.raises(UserError, match="needs NVRTC"):
            api.Detector.from_engine(tmp_path / "model.engine", gpu_post=value)
    with pytest.raises(ValueError, match="gpu_post='gpu'"):
        api.Detector.from_engine(tmp_path / "model.engine", gpu_post="gpu")


@pytest.mark.full  # four model calls of the R50 Mask R-CNN on the CPU: about 15 s on 2 cores
def test_the_wired_gpu_path_on_the_cpu_equals_the_host_path(shapes_net, tmp_path):
    """Detector -> runner -> GpuBatchModel (the deploy model, then GpuPost, on device "cpu") -> HostStages: the
    same COCO results as the same model's outputs post-processed on the host. Three images in batches of two
    (the runner passes each batch's letterboxes), of three sizes."""
    pytest.importorskip("torchvision")
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.runtime.preprocess import load_rgb

    net = shapes_net
    images = []
    for i, (h, w) in enumerate([(192, 256), (250, 170), (120, 120)]):
        generate_synthetic_coco(tmp_path / str(i), num_images=1, height=h, width=w, seed=20 + i)
        images += [load_rgb(p) for p in sorted((tmp_path / str(i) / "images").iterdir())]
    seen = {}

    def model(x):  # the same batch gets the same outputs (computed once: both passes post-process them)
        key = x.numpy().tobytes()
        if key not in seen:
            with torch.no_grad():
                seen[key] = net(x.float())
        return seen[key]

    host, device = _detect_both_ways(model, net.spec, (192, 192), images, batch=2)
    assert len(seen) == 2  # two batches, each run once
    assert sum(len(d) for d in host) >= 6  # the shapes model finds the shapes
    _same_coco(host, device, net.spec)


def test_a_mask_threshold_set_after_loading_reaches_the_gpu_post_processing():
    """``infer --mask-threshold`` sets it after the detector is built; with --gpu-post the threshold lives in the
    GpuPost the batch model holds, which must follow (the host path reads ``spec.mask_threshold``)."""
    from rcnn_deploy import get_spec
    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.torch_cuda import GpuBatchModel, GpuLetterbox
    from rcnn_deploy.glue.gpu_post import GpuPost

    spec = get_spec("torchvision-maskrcnn")
    det = Detector(spec, (64, 64), lambda a: {}, "torch", 2)
    post = GpuPost(spec.mask_paste, spec.mask_threshold)
    det.batch_model = GpuBatchModel(lambda x: {}, GpuLetterbox((64, 64), det.fill, spec.resize, "cpu", None), 2, post)
    det.set_mask_threshold(0.8)
    assert det.spec.mask_threshold == 0.8 and post.threshold == 0.8
    host = Detector(spec, (64, 64), lambda a: {}, "torch", 2)
    host.set_mask_threshold(0.3)  # no GPU post-processing: the spec alone
    assert host.spec.mask_threshold == 0.3


@pytest.mark.parametrize("method", METHODS)
def test_host_taps_equal_the_torch_taps_bit_for_bit(method):
    """The kernel path's numpy taps (_taps_host) against the groups path's torch ones (_taps), float64 both: the
    same indices and the same float32 weights, for random boxes and the hard cases of _boxes in several images."""
    from rcnn_deploy.glue.gpu_post import _geometry, _taps, _taps_host

    rng = np.random.default_rng(5)
    for h, w in [(64, 64), (1080, 1920), (37, 500)]:
        boxes = torch.from_numpy(_boxes(rng, 40, h, w))
        n = len(boxes)
        regions, axes = _geometry(boxes, torch.tensor([[h, w]] * n), 28, method, torch.float64)
        for (a, b), lo, hi in zip(axes, (0, 2), (1, 3)):
            size = np.maximum(regions[:, hi].numpy() - regions[:, lo].numpy(), 0)
            owner = np.repeat(np.arange(n), size)
            first = np.concatenate([[0], np.cumsum(size)])
            pix = np.arange(first[-1]) - first[owner] + regions[:, lo].numpy()[owner]
            want = _taps(torch.from_numpy(pix), a[torch.from_numpy(owner)], b[torch.from_numpy(owner)], method, 28,
                         torch.float64)  # fmt: skip
            got = _taps_host(pix, a.numpy()[owner], b.numpy()[owner], method, 28)
            assert pix.size > 0
            for x, y in zip(want, got):
                assert x.numpy().dtype == y.dtype and np.array_equal(x.numpy(), y), (method, h, w)


# ------------------------------------------------------------------------------- the Triton kernel (GPU default)
KERNEL_SCRIPT = """
import sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_gpu_post import METHODS, _boxes, _check_against_host, _probs
from rcnn_deploy.glue import gpu_post

assert gpu_post._kernel_runs("cpu")  # the interpreter: the default path on the CPU too
groups, redone = gpu_post.paste_runs, []


def counted(probs, *args, **kwargs):  # the masks the kernel hands to the groups
    if kwargs.get("kernel") is False:
        redone.append(len(probs))
    return groups(probs, *args, **kwargs)


gpu_post.paste_runs = counted
rng = np.random.default_rng(7)
pixels = differing = overflowed = 0
for method in METHODS:
    for h, w in [(64, 64), (100, 320), (320, 90), (257, 193)]:
        boxes = _boxes(rng, 14, h, w)
        probs = _probs(rng, len(boxes))
        # the default, and a limit of 2 changes a column: most masks go through the groups instead
        for limit in (gpu_post.KERNEL_MAX_RUNS, 2):
            gpu_post.KERNEL_MAX_RUNS = limit
            redone.clear()
            out = gpu_post.paste_runs(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), method, 0.5)
            overflowed += sum(redone) if limit == 2 else 0  # masks the groups pasted (some pass 16 too)
            differing += _check_against_host(out.masks(0, len(boxes), (h, w)), probs, boxes, (h, w), method)
            sides = np.maximum(out.regions[:, [1, 3]] - out.regions[:, [0, 2]], 0)
            pixels += int(sides.prod(1).sum())
        gpu_post.KERNEL_MAX_RUNS = 16
    # one call for masks of images of different sizes
    sizes = [(80, 200), (240, 64)]
    bs = [_boxes(rng, 5, h, w) for h, w in sizes]
    ps = [_probs(rng, len(b)) for b in bs]
    hw = np.concatenate([np.repeat([s], len(b), 0) for s, b in zip(sizes, bs)])
    out = gpu_post.paste_runs(torch.from_numpy(np.concatenate(ps)), torch.from_numpy(np.concatenate(bs)), hw, method)
    start = 0
    for s, b, p in zip(sizes, bs, ps):
        _check_against_host(out.masks(start, start + len(b), s), p, b, s, method)
        start += len(b)
# the threshold rules exactly: all-zero probabilities at threshold 0
h, w = 90, 120
boxes = np.array([[10, 5, 30, 80], [0, 0, 120, 90], [50.5, 40.2, 52.1, 41.0]], np.float32)
for method in METHODS:
    got = gpu_post.paste_runs(torch.zeros((3, 28, 28)), torch.from_numpy(boxes), (h, w), method, 0.0)
    rle = got.masks(0, 3, (h, w))
    if method == "detectron2":
        assert rle.runs_of(1).tolist() == [[0, h * w]]
    else:
        assert all(rle.area(i) == 0 for i in range(3))
# an image of more than 2**31 pixels: the kernel's positions in int64 (boxes near its last columns)
h, w = 50_000, 50_000
boxes = np.array([[49_900.0, 49_800.0, 49_990.5, 49_999.0], [10.0, 20.0, 60.0, 45.0]], np.float32)
probs = _probs(rng, 2)
for method in METHODS:
    got = gpu_post.paste_runs(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), method)
    ref = gpu_post.paste_runs(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w), method, kernel=False)
    assert got.runs.max() > 2**31 and np.array_equal(got.runs, ref.runs), method
    assert np.array_equal(got.offsets, ref.offsets), method
assert pixels > 200_000 and differing <= pixels * 1e-4 and overflowed > 10, (pixels, differing, overflowed)
print("kernel ok", pixels, differing, overflowed)
"""


@pytest.mark.slow
def test_the_triton_kernel_pastes_as_the_host_does():
    """The kernel (the default on a GPU) in Triton's interpreter, against the host paste as the groups are, including
    masks with more row changes in a column than it keeps (those go through the groups), images of different sizes
    in one call, and the exact threshold rules. A subprocess: ``triton.jit`` reads ``TRITON_INTERPRET`` at import."""
    _run_interpreted(KERNEL_SCRIPT, "kernel ok")


def _run_interpreted(script: str, done: str) -> None:
    """``script`` (with ``{tests}`` for this folder) in a Python of its own under Triton's interpreter; it must
    print ``done``."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = script.format(tests=str(Path(__file__).parent))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert done in r.stdout


GRID_SCRIPT = """
import sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_gpu_post import METHODS, _boxes, _check_against_host, _probs
from rcnn_deploy import get_spec
from rcnn_deploy.api import HostStages
from rcnn_deploy.glue import gpu_post
from rcnn_deploy.runtime.preprocess import Letterbox

assert gpu_post._kernel_runs("cpu")  # the interpreter: the grid path is postprocess_batch's default on the CPU too
grids, ragged, redone = [], [], []
grid_changes, paste = gpu_post._grid_changes, gpu_post.paste_runs


def counted_grid(*args, **kwargs):
    grids.append(1)
    return grid_changes(*args, **kwargs)


def counted_paste(probs, *args, **kwargs):
    (redone if kwargs.get("kernel") is False else ragged).append(len(probs))
    return paste(probs, *args, **kwargs)


gpu_post._grid_changes, gpu_post.paste_runs = counted_grid, counted_paste
rng = np.random.default_rng(11)
sizes = [(100, 320), (257, 193), (64, 64)]
d, pixels, differing = 18, 0, 0
for method in METHODS:
    spec = get_spec("torchvision-maskrcnn").replace(mask_paste=method)
    stages = HostStages(spec, (128, 160), (0, 0, 0), "|u1", None, False)
    lbs = [Letterbox.fit(h, w, (128, 160)) for h, w in sizes]
    b = len(sizes)
    boxes = np.zeros((b, d, 4), np.float32)  # in input pixels: the host maps them back as boxes_to_original does
    for i, (lb, (h, w)) in enumerate(zip(lbs, sizes)):
        orig = _boxes(rng, d - 9, h, w)[:d]
        boxes[i, : len(orig)] = orig * np.array([lb.resized_hw[1] / w, lb.resized_hw[0] / h] * 2, np.float32)
    out = {{
        "num_detections": np.array([d, 5, 0], np.int64),  # a full image, one with padded slots, an empty one
        "boxes": boxes,
        "scores": np.sort(rng.random((b, d)).astype(np.float32))[:, ::-1].copy(),
        "classes": rng.integers(1, 4, (b, d)).astype(np.int64),
        "masks": _probs(rng, b * d).reshape(b, d, 28, 28),
    }}
    out["boxes"][1, 7] = np.nan  # a padded slot's garbage: not looked at
    # the defaults; only 2 changes a column (most masks go through the groups); a first copy of 40 changes an image
    # (the rest copied after it); a grid too large for the budget (the ragged layout instead)
    for runs, guess, budget in [(16, 1 << 16, 1 << 28), (2, 1 << 16, 1 << 28), (16, 40, 1 << 28), (16, 1 << 16, 1000)]:
        gpu_post.KERNEL_MAX_RUNS, gpu_post.GRID_CHANGES_PER_IMAGE, gpu_post.GRID_MAX_ELEMENTS = runs, guess, budget
        grids.clear(), ragged.clear(), redone.clear()
        got = gpu_post.postprocess_batch({{k: torch.from_numpy(v) for k, v in out.items()}}, lbs, method, 0.5)
        assert (len(grids), len(ragged)) == ((0, 1) if budget == 1000 else (1, 0)), (grids, ragged)
        assert (sum(redone) > 5) == (runs == 2), redone
        for i, lb in enumerate(lbs):
            want = stages.detections_for(lb, {{k: v[i : i + 1] for k, v in out.items()}})
            have = got["detections"][i]
            assert len(have) == len(want) == out["num_detections"][i]
            assert np.array_equal(have.boxes, want.boxes) and np.array_equal(have.scores, want.scores)
            # the strings made on the device, unless masks went to the groups or the changes took a second copy
            assert (have.pasted.texts is not None) == (budget > 1000 and runs == 16 and guess > 40)
            differing += _check_against_host(have.pasted, want.pasted.probs, want.pasted.boxes, sizes[i], method)
            pixels += sum(want.pasted.area(j) for j in range(len(want)))
    gpu_post.KERNEL_MAX_RUNS, gpu_post.GRID_CHANGES_PER_IMAGE, gpu_post.GRID_MAX_ELEMENTS = 16, 1 << 16, 1 << 27
    # a non-finite image: its slots are not pasted, the others are
    bad = {{k: v.copy() for k, v in out.items()}}
    bad["scores"][0, 2] = np.inf
    got = gpu_post.postprocess_batch({{k: torch.from_numpy(v) for k, v in bad.items()}}, lbs, method, 0.5)
    assert got["finite"].tolist() == [False, True, True] and got["detections"][0].pasted is None
    assert len(got["detections"][1].pasted) == 5
assert pixels > 40_000 and differing <= pixels * 1e-4, (pixels, differing)
print("grid ok", pixels, differing)
"""


@pytest.mark.slow
def test_postprocess_batch_pastes_a_batch_on_the_grid_as_the_host_does():
    """``postprocess_batch``'s default with the kernel (a GPU, here Triton's interpreter): every detection slot of
    the batch pasted on a grid of the largest image's rows and columns and the changes compacted on the device, one
    copy back. Against ``HostStages.detections_for`` on three images of three sizes (one with padded slots, one
    empty): the same boxes bit for bit and the same masks but for pixels at the threshold; with masks the kernel
    cannot take (the groups paste them), with more changes than the first copy takes, with a grid over its budget
    (the ragged layout), and with a non-finite image (not pasted)."""
    _run_interpreted(GRID_SCRIPT, "grid ok")


def test_rle_strings_made_on_the_device_are_pycocotools_strings():
    """``rle_strings_device`` (the grid post-processing's strings, torch ops with no host synchronisation) gives
    RleMasks.rles' strings for the same runs: random masks in images of random sizes and three 1920x1080 ones,
    empty and full masks, masks starting at pixel 0 or ending at the last, runs split in two where they go on
    across a column end (one run in COCO), and a capacity with room to spare."""
    from rcnn_deploy.glue.gpu_post import rle_strings_device

    rng = np.random.default_rng(0)
    for trial in range(150):
        hws = [tuple(int(v) for v in rng.integers(1, 60, 2)) for _ in range(int(rng.integers(1, 8)))]
        if trial % 7 == 0:
            hws = [(1080, 1920)] * 3
        changes, per_mask, runs, offsets = [], [], [], [0]
        for h, w in hws:
            p = h * w
            kind = int(rng.integers(0, 5))
            if kind == 0:
                points = []
            elif kind == 1 or p < 2:
                points = [0, p]
            else:
                k = min(int(rng.integers(1, 12)) * 2, (p + 1) // 2 * 2)
                points = sorted(rng.choice(p + 1, size=k, replace=False).tolist())
                if kind == 3:
                    points[0] = 0
                if kind == 4:
                    points[-1] = p
            mine = [(points[i], points[i + 1]) for i in range(0, len(points), 2)]
            made = []
            for a, b in mine:  # some runs handed over in two pieces, as the kernel finds them across a column end
                if b - a > 2 and rng.random() < 0.5:
                    cut = int(rng.integers(a + 1, b))
                    made += [a, cut, cut, b]
                else:
                    made += [a, b]
            changes += made
            per_mask.append(len(made))
            runs += mine
            offsets.append(len(runs))
        pixels = np.array([h * w for h, w in hws])
        capacity = len(changes) + int(rng.integers(0, 5))
        text, bounds = rle_strings_device(
            torch.tensor(changes + [0] * 5, dtype=torch.int64), torch.tensor(per_mask), torch.from_numpy(pixels),
            capacity, int(pixels.max()),
        )  # fmt: skip
        whole = bytes(text.numpy()[: int(bounds[-1])]).decode("ascii")
        for i, (h, w) in enumerate(hws):
            r = np.array(runs[offsets[i] : offsets[i + 1]], np.int64).reshape(-1, 2)
            want = RleMasks(r, [0, len(r)], np.array([[0, h, 0, w]]), (h, w)).rles()[0]["counts"]
            assert whole[int(bounds[i]) : int(bounds[i + 1])] == want, (trial, i, r)


def test_rle_masks_carry_strings_made_elsewhere_through_subsets():
    """RleMasks given each mask's string (the device's) returns them for rle / rles, keeps them through subset
    (Detections.above), and refuses a list of the wrong length."""
    rng = np.random.default_rng(3)
    hw = (40, 30)
    out = paste_runs(torch.from_numpy(_probs(rng, 6)), torch.from_numpy(_boxes(rng, 6, *hw)[:6]), hw)
    plain = out.masks(0, 6, hw)
    strings = [r["counts"] for r in plain.rles()]
    marked = [f"{s}#{i}" for i, s in enumerate(strings)]  # not strings the runs would give: where they come from
    given = RleMasks(plain.runs, plain.offsets, plain.regions, hw, marked)
    assert [r["counts"] for r in given.rles()] == marked and given.rle(4)["counts"] == marked[4]
    keep = np.array([True, False, True, True, False, True])
    assert [r["counts"] for r in given[keep].rles()] == [m for m, k in zip(marked, keep) if k]
    assert [r["counts"] for r in plain[keep].rles()] == [s for s, k in zip(strings, keep) if k]
    with pytest.raises(ValueError, match="5 RLE strings for 6 masks"):
        RleMasks(plain.runs, plain.offsets, plain.regions, hw, marked[:5])
