"""Pasting ``M x M`` mask probabilities into the image, exactly as each framework does it (numpy only).

* ``torchvision`` (``roi_heads.paste_masks_in_image``): pad the mask by one pixel, grow the box by
  (M + 2) / M, truncate it to integers, bilinearly resize the padded mask to the box size
  (``align_corners=False``) and copy it in; the result is thresholded afterwards.
* ``detectron2`` (``layers.mask_ops._do_paste_mask``): sample the mask at every image pixel centre with
  ``grid_sample(align_corners=False)`` and zero padding, in continuous box coordinates; ``>= threshold``.

Both resamplings are separable, so each mask is pasted as ``Wy @ mask @ Wx.T`` over the box's pixels only.

COCO RLE is made from the box regions alone, for many masks at once (:meth:`PastedMasks.rles`, :func:`_chunks`):
the regions are thresholded and laid out column by column in a buffer a chunk of masks at a time, and the runs,
counts and pycocotools' compressed strings come from a few numpy calls per chunk (the strings are pycocotools'
``rleToString``, byte for byte, without pycocotools).

:class:`PastedMasks` pastes lazily from the probabilities; :class:`RleMasks` holds masks as runs computed elsewhere
(the GPU post-processing, :mod:`rcnn_deploy.glue.gpu_post`); both have the interface of :class:`LazyMasks`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ._opencv import MAX_SIDE, opencv


def _resize_weights(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear ``align_corners=False`` resize from ``n_in`` to ``n_out`` samples as an ``[n_out, n_in]``
    matrix (PyTorch's ``interpolate`` semantics: source = (dst + 0.5) * scale - 0.5, clamped at 0)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    w = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    w[rows, i0] += 1.0 - w1  # each row once per statement, so += needs no np.add.at
    w[rows, i1] += w1
    return w


def _sample_weights(pix: np.ndarray, lo: float, hi: float, m: int) -> np.ndarray:
    """grid_sample(align_corners=False, padding zeros) weights for pixel centres ``pix + 0.5`` mapped from
    the box ``[lo, hi]`` onto ``m`` mask cells: ``[len(pix), m]``."""
    return _grid_weights(pix, lo, max(hi - lo, 1e-12), m)


def _grid_weights(pix: np.ndarray, lo: Any, size: Any, m: int) -> np.ndarray:
    """:func:`_sample_weights` given the box's size (``max(hi - lo, 1e-12)``); ``lo`` and ``size`` may be arrays
    of one value per pixel (the same arithmetic, element by element: the same weights)."""
    src = (pix + 0.5 - lo) / size * m - 0.5
    i0 = np.floor(src).astype(np.int64)
    w1 = src - i0
    # each tap written into a row of m + 2 columns, those outside 0 .. m - 1 into the two that are dropped (the
    # taps of a row are different cells: a weight written once is the 0 + weight of adding it)
    n = pix.shape[0]
    w = np.zeros((n, m + 2), dtype=np.float64)
    row = np.arange(n, dtype=np.int64) * (m + 2) + 1
    flat = w.reshape(-1)
    flat[row + np.minimum(np.maximum(i0, -1), m)] = 1.0 - w1
    flat[row + np.minimum(np.maximum(i0 + 1, -1), m)] = w1
    return np.ascontiguousarray(w[:, 1:-1])


class _Scratch(threading.local):
    """Per-thread buffers reused from one mask (or image) to the next: fresh pages for every mask's pasted
    probabilities cost page faults (a large share of the time where they are slow, e.g. in a VM), and buffers that
    stay the same are warm in the cache. A thread that pasted keeps a few MiB (at most :attr:`KEEP` bytes a buffer,
    seven named buffers) until it ends."""

    #: a buffer asked for larger than this (bytes) is made for the one call and not kept
    KEEP = 1 << 22

    def __init__(self) -> None:
        self.buffers: Dict[str, np.ndarray] = {}

    def take(self, name: str, dtype: Any, shape: Tuple[int, ...]) -> np.ndarray:
        """An uninitialised C-contiguous ``shape`` array in buffer ``name``, valid until its next ``take``."""
        n = 1
        for v in shape:
            n *= int(v)
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.shape[0] < n:
            buf = np.empty(max(n, 1 << 16), dtype=dtype)
            if buf.nbytes > self.KEEP:
                return buf[:n].reshape(shape)
            self.buffers[name] = buf
        return buf[:n].reshape(shape)


_SCRATCH = _Scratch()


def _resize32(padded32: np.ndarray, w: int, h: int, scratch: Optional[_Scratch]) -> np.ndarray:
    """OpenCV's ``INTER_LINEAR`` resize of a float32 mask to ``h x w``, into ``scratch``'s buffer when given (valid
    until its next use)."""
    cv2 = opencv()
    if scratch is None:
        return cv2.resize(padded32, (w, h), interpolation=cv2.INTER_LINEAR)
    full = scratch.take("paste32", np.float32, (h, w))
    got = cv2.resize(padded32, (w, h), dst=full, interpolation=cv2.INTER_LINEAR)
    return full if got is full else got  # OpenCV may make an array of its own


def _torchvision_geometry(boxes: np.ndarray, m: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """The torchvision paste's box arithmetic for every box (``[N, 4]``, or one ``[4]``) at once: ``[N, 8]`` int64
    rows ``(ex0, ey0, w, h, x0, x1, y0, y1)``, the expanded box's truncated corner, the resize size and the region
    in the image; float32 like torchvision's ``expand_boxes``, with NumPy 1 and 2 alike (array operations)."""
    h_img, w_img = int(image_hw[0]), int(image_hw[1])
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = (m + 2) / m
    cx, cy = (b[:, 0] + b[:, 2]) * 0.5, (b[:, 1] + b[:, 3]) * 0.5
    hw, hh = (b[:, 2] - b[:, 0]) * 0.5 * scale, (b[:, 3] - b[:, 1]) * 0.5 * scale
    ebox = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1).astype(np.int64)
    out = np.empty((b.shape[0], 8), dtype=np.int64)
    out[:, 0], out[:, 1] = ebox[:, 0], ebox[:, 1]
    out[:, 2] = np.maximum(ebox[:, 2] - ebox[:, 0] + 1, 1)
    out[:, 3] = np.maximum(ebox[:, 3] - ebox[:, 1] + 1, 1)
    out[:, 4], out[:, 5] = np.maximum(ebox[:, 0], 0), np.minimum(ebox[:, 2] + 1, w_img)
    out[:, 6], out[:, 7] = np.maximum(ebox[:, 1], 0), np.minimum(ebox[:, 3] + 1, h_img)
    return out


def _paste_region(
    mask: np.ndarray,
    box: np.ndarray,
    image_hw: Tuple[int, int],
    method: str,
    scratch: Optional[_Scratch] = None,
) -> Optional[Tuple[int, int, int, int, np.ndarray]]:
    """Where one ``[M, M]`` probability mask lands for ``box``: ``(y0, y1, x0, x1, probabilities)`` of the
    image region it covers (everything outside is 0), or None when that region is empty. With ``scratch``, the
    probabilities are in its buffers, valid only until the next call that uses them."""
    h_img, w_img = image_hw
    m = mask.shape[0]
    if method == "torchvision":
        # float32 like torchvision's expand_boxes, then truncation toward zero like .to(torch.int64)
        ex0, ey0, w, h, x0, x1, y0, y1 = _torchvision_geometry(box, m, image_hw)[0].tolist()
        if x1 <= x0 or y1 <= y0:
            return None
        if opencv() is not None and max(h, w) < MAX_SIDE:
            # the same sampling as _resize_weights, in float32 like torchvision's interpolate: about 30x faster
            # than the matmuls below (which stay the reference, and the path without OpenCV)
            padded32 = np.zeros((m + 2, m + 2), dtype=np.float32)
            padded32[1:-1, 1:-1] = mask  # rounds like float64 -> float32 would: the same values
            full = _resize32(padded32, w, h, scratch)
            return y0, y1, x0, x1, full[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
        padded = np.zeros((m + 2, m + 2), dtype=np.float64)
        padded[1:-1, 1:-1] = mask
        # only the rows and columns of the resize that land inside the image
        wy = _resize_weights(h, m + 2)[y0 - ey0 : y1 - ey0]
        wx = _resize_weights(w, m + 2)[x0 - ex0 : x1 - ex0]
        return y0, y1, x0, x1, wy @ padded @ wx.T
    if method == "detectron2":
        x0 = int(max(np.floor(box[0]) - 1, 0))
        y0 = int(max(np.floor(box[1]) - 1, 0))
        x1 = int(min(np.ceil(box[2]) + 1, w_img))
        y1 = int(min(np.ceil(box[3]) + 1, h_img))
        if x1 <= x0 or y1 <= y0:
            return None
        # _sample_weights of the rows and of the columns, in one go (half the numpy calls)
        ny, lx, ly = y1 - y0, float(box[0]), float(box[1])
        pix = np.concatenate([np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64)])
        lo, size = np.empty_like(pix), np.empty_like(pix)
        lo[:ny], lo[ny:] = ly, lx
        size[:ny], size[ny:] = max(float(box[3]) - ly, 1e-12), max(float(box[2]) - lx, 1e-12)
        weights = _grid_weights(pix, lo, size, m)
        wy, wx = weights[:ny], weights[ny:]
        if scratch is None:
            return y0, y1, x0, x1, wy @ mask @ wx.T
        # the same products (BLAS writes the second into the buffer): the same values
        return y0, y1, x0, x1, np.matmul(wy @ mask, wx.T, out=scratch.take("paste64", np.float64, (y1 - y0, x1 - x0)))
    raise ValueError(f"unknown mask paste method {method!r}; use 'torchvision' or 'detectron2'")


def _torchvision_regions(
    probs: np.ndarray, boxes: np.ndarray, image_hw: Tuple[int, int], scratch: _Scratch
) -> Iterator[Optional[_Region]]:
    """:func:`_paste_region` (torchvision, with OpenCV) of every mask, one after another, in ``scratch``'s buffers:
    the box arithmetic and the zero-bordered masks made for all masks at once (per mask, only OpenCV's resize)."""
    cv2 = opencv()
    n, m = int(probs.shape[0]), int(probs.shape[-1])
    geometry = _torchvision_geometry(boxes, m, image_hw).tolist()
    padded = np.zeros((n, m + 2, m + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = probs  # rounds like _paste_region's copy: the same values
    for i, (ex0, ey0, w, h, x0, x1, y0, y1) in enumerate(geometry):
        if x1 <= x0 or y1 <= y0:
            yield None
        elif cv2 is None or max(h, w) >= MAX_SIDE:
            yield _paste_region(probs[i], boxes[i], image_hw, "torchvision", scratch)
        else:
            full = _resize32(padded[i], w, h, scratch)
            yield y0, y1, x0, x1, full[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]


def paste_mask(mask: np.ndarray, box: np.ndarray, image_hw: Tuple[int, int], method: str = "torchvision") -> np.ndarray:
    """Paste one ``[M, M]`` probability mask for ``box`` into a float ``[H, W]`` image-sized canvas."""
    canvas = np.zeros(image_hw, dtype=np.float32)
    region = _paste_region(mask, box, image_hw, method)
    if region is not None:
        y0, y1, x0, x1, prob = region
        canvas[y0:y1, x0:x1] = prob
    return canvas


def paste_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_hw: Tuple[int, int],
    method: str = "torchvision",
    threshold: float = 0.5,
) -> np.ndarray:
    """Paste ``masks [N, M, M]`` for ``boxes [N, 4]`` into ``[N, H, W]`` bool masks (``prob >= threshold``
    for Detectron2, ``prob > threshold`` for torchvision as its visualisation/eval code does). Each mask is
    resampled and thresholded over its box's region only (no image-sized float canvas per mask), and only the
    bounding box of its pixels is written: ``out`` is allocated zeroed and untouched pages cost no memory, so a
    large photo's ``[N, H, W]`` array stays resident only where masks are (about 1 GB for 100 masks on a 6000x4000
    photo when whole box regions were written, 10 % less this way)."""
    out = np.zeros((masks.shape[0], *image_hw), dtype=bool)
    for i in range(masks.shape[0]):
        region = _paste_region(masks[i], boxes[i], image_hw, method)
        if region is None:
            continue
        y0, y1, x0, x1, prob = region
        crop = _threshold(prob, method, threshold)
        rows = np.flatnonzero(crop.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(crop.any(axis=0))
        a, b, c, d = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        out[i, y0 + a : y0 + b, x0 + c : x0 + d] = crop[a:b, c:d]
    return out


def _threshold(prob: np.ndarray, method: str, threshold: float) -> np.ndarray:
    prob = prob.astype(np.float32, copy=False)  # the canvas's precision, as paste_mask thresholds it
    return prob >= threshold if method == "detectron2" else prob > threshold


def _threshold_into(
    prob: np.ndarray, method: str, threshold: float, out: np.ndarray, scratch: Optional[_Scratch] = None
) -> None:
    """:func:`_threshold` written into ``out`` (bool, the shape of ``prob``): the same comparison."""
    if prob.dtype != np.float32 and scratch is not None:
        prob32 = scratch.take("threshold32", np.float32, prob.shape)
        np.copyto(prob32, prob, casting="same_kind")  # rounds as astype does
        prob = prob32
    prob = prob.astype(np.float32, copy=False)
    if method == "detectron2":
        np.greater_equal(prob, threshold, out=out)
    else:
        np.greater(prob, threshold, out=out)


# ------------------------------------------------------------------------------------------------ runs and RLE
# Masks are turned into runs a chunk of box regions at a time (one image's 100 masks: a few chunks, so a few
# dozen numpy calls per chunk rather than per mask). Each region is thresholded into a row-major buffer with a
# row of 0s above and below it and transposed (OpenCV, else numpy) into the chunk's buffer: column-major, every
# column framed by 0s, which also keep the masks apart. One XOR of each byte with the one before marks every
# run's start and end, already in COCO's order (start, end, start, ...); they are found 8 bytes at a time.
_CHUNK = 1 << 20  # pixels of a chunk (the buffers stay in the cache); a larger region is a chunk of its own

_Region = Tuple[int, int, int, int, np.ndarray]
_Binarize = Callable[[np.ndarray, np.ndarray], None]


def _copy_bool(crop: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, crop, casting="unsafe")


def _chunk_runs(
    cols: np.ndarray, steps: np.ndarray, chunk: List[Tuple[int, int, int, int, int, int]], h_img: int
) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The runs of the masks in ``cols`` (``chunk``: mask, y0, x0, rows + 2, columns, offset of each)."""
    mask, y0, x0, rows, ncols, offset = (np.array(v, dtype=np.int64) for v in zip(*chunk))
    n = int(offset[-1] + rows[-1] * ncols[-1])
    padded = (n + 6) // 8 * 8  # the steps of bytes 1 .. n - 1, then 0s up to whole 8-byte words
    np.bitwise_xor(cols[1:n], cols[: n - 1], out=steps[: n - 1])
    steps[n - 1 : padded] = 0
    words = steps[:padded].view(np.uint64)
    hit = np.flatnonzero(np.not_equal(words, 0, out=_SCRATCH.take("words", np.bool_, words.shape)))
    if hit.size == 0:
        return None
    inner = np.flatnonzero(words[hit].view(np.bool_))  # the nonzero bytes of the words that have one
    q = (hit << 3)[inner >> 3] + (inner & 7) + 1  # the first pixel of each new value
    # every column starts and ends with a 0: starts and ends alternate, a start first, both in one column
    begin, end = q[0::2], q[1::2]
    # every column of the chunk: where it starts, and the image position of its first pixel, less that start
    m = np.repeat(np.arange(mask.shape[0]), ncols)
    c = np.arange(m.shape[0], dtype=np.int64) - np.repeat(np.cumsum(ncols) - ncols, ncols)
    first = offset[m] + c * rows[m]
    base = (x0[m] + c) * h_img + y0[m] - 1 - first  # -1: a column's first pixel follows its frame
    col = np.searchsorted(first, begin, side="right") - 1
    shift = base[col]
    s, e, w = begin + shift, end + shift, mask[m[col]]
    # a run ending at the bottom of one column and starting at the top of the next is one run (only when the
    # region spans the image's full height)
    split = np.flatnonzero((e[:-1] == s[1:]) & (w[:-1] == w[1:]))
    if split.size:
        s, e, w = np.delete(s, split + 1), np.delete(e, split), np.delete(w, split + 1)
    return s, e, w


def _chunks(
    regions: Iterable[Optional[_Region]], image_hw: Tuple[int, int], binarize: _Binarize = _copy_bool
) -> Iterator[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """The runs of 1s of masks given as box regions ``(y0, y1, x0, x1, values)`` (None: an empty mask), where
    ``binarize(values, out)`` writes a region's bool crop into ``out``, a chunk of masks at a time: ``(stop,
    starts, ends, mask)``, the runs of the masks before ``stop`` not given before, int64, in COCO's column-major
    pixel positions (``end`` exclusive), sorted by mask then position, each run maximal (like :func:`rle_runs`, a
    run through the bottom of one column into the top of the next is one run). A region's ``values`` are used
    before the next region is asked for (they may live in a reused buffer)."""
    h_img = int(image_hw[0])
    cv2 = opencv()
    scratch = _SCRATCH
    chunk: List[Tuple[int, int, int, int, int, int]] = []  # mask, y0, x0, rows + 2, columns, offset
    fill, capacity = 0, _CHUNK
    cols = rows = steps = np.zeros(0, dtype=np.uint8)
    empty = np.zeros(0, dtype=np.int64)
    for i, r in enumerate(regions):
        if r is None:
            continue
        y0, y1, x0, x1, values = r
        rh, cw = y1 - y0, x1 - x0
        size = (rh + 2) * cw
        if not chunk or fill + size > capacity:
            if chunk:
                yield (i, *(_chunk_runs(cols, steps, chunk, h_img) or (empty, empty, empty)))
            chunk, fill, capacity = [], 0, max(size, _CHUNK)
            cols = scratch.take("cols", np.uint8, (capacity,))
            rows = scratch.take("rows", np.uint8, (capacity,))
            steps = scratch.take("steps", np.uint8, (capacity + 8,))
        framed = rows[:size].reshape(rh + 2, cw)
        framed[0] = 0
        framed[-1] = 0
        binarize(values, framed[1:-1].view(np.bool_))
        dst = cols[fill : fill + size].reshape(cw, rh + 2)
        if cv2 is None or cv2.transpose(framed, dst=dst) is not dst:
            dst[...] = framed.T
        chunk.append((i, y0, x0, rh + 2, cw, fill))
        fill += size
    if chunk:
        yield (chunk[-1][0] + 1, *(_chunk_runs(cols, steps, chunk, h_img) or (empty, empty, empty)))


def _mask_runs(
    regions: Iterable[Optional[_Region]], image_hw: Tuple[int, int], binarize: _Binarize = _copy_bool
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All the runs of :func:`_chunks`: ``starts, ends, mask``."""
    found = [c[1:] for c in _chunks(regions, image_hw, binarize)]
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if len(found) == 1:
        return found[0]
    s, e, w = (np.concatenate(a) for a in zip(*found))
    return s, e, w


def _rle_texts(
    regions: Iterable[Optional[_Region]], n: int, image_hw: Tuple[int, int], binarize: _Binarize = _copy_bool
) -> List[str]:
    """The compressed COCO RLE strings of ``n`` masks given as box regions (see :func:`_chunks`), made a chunk
    at a time (the arrays stay small: no fresh pages, warm in the cache)."""
    total = int(image_hw[0]) * int(image_hw[1])
    texts: List[str] = []
    for stop, s, e, w in _chunks(regions, image_hw, binarize):
        start = len(texts)
        counts, lengths = _counts_batch(s, e, w - start, stop - start, total)
        texts.extend(_rle_strings(counts, lengths))
    if len(texts) < n:  # the masks after the last region are empty
        texts.extend(_rle_strings(np.array([total], dtype=np.int64), np.ones(1, dtype=np.int64)) * (n - len(texts)))
    return texts


def _counts_batch(
    starts: np.ndarray, ends: np.ndarray, which: np.ndarray, n: int, total: int
) -> Tuple[np.ndarray, np.ndarray]:
    """The uncompressed COCO counts of ``n`` masks of ``total`` pixels from their runs (:func:`_mask_runs`):
    all masks' counts one after the other, and the number of counts of each (as :func:`counts_from_runs`)."""
    runs = np.bincount(which, minlength=n).astype(np.int64) if which.size else np.zeros(n, dtype=np.int64)
    # each mask's bounds 0, start, end, ..., total; run r of mask w sits at 2 r + 2 w + 1 (its end after it)
    bounds = np.empty(2 * int(starts.shape[0]) + 2 * n, dtype=np.int64)
    first = 2 * (np.cumsum(runs) - runs) + 2 * np.arange(n, dtype=np.int64)  # where each mask's bounds begin
    bounds[first] = 0
    bounds[first + 2 * runs + 1] = total
    at = 2 * np.arange(starts.shape[0], dtype=np.int64) + 2 * which + 1
    bounds[at] = starts
    bounds[at + 1] = ends
    diffs = np.diff(bounds)  # mask w's counts: diffs[first[w] : first[w] + 2 runs[w] + 1], then 0 - total
    lengths = 2 * runs + 1
    last = first + 2 * runs
    drop = diffs[last] == 0  # a mask ending in 1s has no closing run of 0s (as pycocotools writes it)
    keep = np.ones(diffs.shape[0], dtype=bool)
    keep[first[1:] - 1] = False
    keep[last[drop]] = False
    return diffs[keep], lengths - drop


def _rle_strings(counts: np.ndarray, lengths: np.ndarray) -> List[str]:
    """pycocotools' compressed RLE strings (``rleToString``) of masks whose uncompressed counts lie one after the
    other in ``counts`` (``lengths[i]`` of them for mask ``i``): each count, less the one two before it from the
    fourth on, in groups of 5 bits, low first, 0x20 where another follows, plus 48 (as ASCII)."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    n = int(lengths.shape[0])
    if counts.shape[0] == 0:
        return [""] * n
    begin = np.cumsum(lengths) - lengths
    x = counts.copy()
    x[2:] -= counts[:-2]
    for k in (0, 1, 2):  # each mask's first three counts are written as they are
        first = begin[lengths > k] + k
        x[first] = counts[first]
    # characters per value: the fewest 5-bit groups that hold it as a signed number
    mag = x ^ (x >> 63)  # x, or -1 - x when negative
    chars = np.ones(x.shape[0], dtype=np.int8)
    bits = 4
    top = int(mag.max())
    while top >= 1 << bits:
        chars += mag >= 1 << bits
        bits += 5
    # one row per character position, a column per value; positions past a value's length hold 0 (dropped)
    pos = np.arange(int(chars.max()), dtype=np.int8)[:, None]
    if top < 1 << 31:
        x = x.astype(np.int32)
    digits = np.empty((pos.shape[0], x.shape[0]), dtype=np.uint8)
    group = np.empty_like(x)
    for k in range(pos.shape[0]):  # a row at a time: small temporaries
        np.bitwise_and(np.right_shift(x, 5 * k, out=group), 0x1F, out=group)
        digits[k] = group
    digits |= np.left_shift((chars > pos + 1).view(np.uint8), 5)
    digits += 48
    digits *= chars > pos
    cv2 = opencv()
    by_value = digits.T if cv2 is None else cv2.transpose(digits)
    text = by_value.tobytes().translate(None, b"\0").decode("ascii")
    ends = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(chars, out=ends[1:])
    bounds = ends[np.concatenate([[0], np.cumsum(lengths)])].tolist()
    return [text[bounds[i] : bounds[i + 1]] for i in range(n)]


def _rle_dicts(texts: List[str], image_hw: Tuple[int, int]) -> List[Dict[str, Any]]:
    h, w = int(image_hw[0]), int(image_hw[1])
    return [{"size": [h, w], "counts": c} for c in texts]


def rle_runs(crop: np.ndarray, y0: int, x0: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """The runs of 1s of an ``[H, W]`` bool mask that is 0 everywhere except the ``crop`` placed at ``(y0, x0)``,
    in COCO's column-major pixel order: ``[R, 2]`` int64 ``(start, end)`` positions (``end`` exclusive), sorted,
    each run maximal. Computed from the crop alone."""
    ch, cw = crop.shape
    if crop.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    s, e, _ = _mask_runs([(int(y0), int(y0) + ch, int(x0), int(x0) + cw, crop)], image_hw)
    return np.stack([s, e], axis=1)


def counts_from_runs(runs: np.ndarray, total: int) -> List[int]:
    """COCO's uncompressed RLE counts (alternating runs of 0s and 1s, starting with 0s) of an image of ``total``
    pixels from its sorted, maximal runs of 1s (``[R, 2]`` column-major ``(start, end)``, :func:`rle_runs`)."""
    if runs.shape[0] == 0:
        return [int(total)]
    bounds = np.empty(2 * runs.shape[0] + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, total
    bounds[1:-1] = runs.reshape(-1)
    counts = np.diff(bounds).tolist()
    if counts[-1] == 0:  # a mask ending in 1s has no closing run of 0s (as pycocotools writes it)
        counts.pop()
    return counts


def rle_counts(crop: np.ndarray, y0: int, x0: int, image_hw: Tuple[int, int]) -> List[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with a run of 0s) of an ``[H, W]`` bool mask
    that is 0 everywhere except the ``crop`` placed at ``(y0, x0)``, computed from the crop alone."""
    return counts_from_runs(rle_runs(crop, y0, x0, image_hw), int(image_hw[0]) * int(image_hw[1]))


def _compress(counts: Sequence[int], image_hw: Tuple[int, int]) -> Dict[str, Any]:
    """Uncompressed counts -> ``{"size": [H, W], "counts": str}`` (pycocotools' compressed form, the same string
    as its ``frPyObjects``)."""
    h, w = image_hw
    arr = np.asarray(counts, dtype=np.int64).reshape(-1)
    return {"size": [h, w], "counts": _rle_strings(arr, np.array([arr.shape[0]], dtype=np.int64))[0]}


class LazyMasks:
    """``N`` bool masks in an ``(H, W)`` image that behave like the ``[N, H, W]`` array :func:`paste_masks`
    returns (``shape``, ``ndim``, ``dtype``, ``len``, ``m[i]`` -> one ``[H, W]`` mask, ``m[keep]`` -> a subset,
    ``np.asarray(m)`` -> the dense array) without holding it: :meth:`region` gives one mask's box-region crop,
    :meth:`rle` its COCO RLE and :meth:`area` its pixel count, so no image-sized array is made unless asked for.

    :class:`PastedMasks` pastes them on the host from ``M x M`` probabilities; :class:`RleMasks` holds them as
    runs that were computed elsewhere (the GPU post-processing of ``rcnn_deploy.glue.gpu_post``)."""

    ndim = 3
    dtype = np.dtype(bool)
    image_hw: Tuple[int, int]

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (len(self), *self.image_hw)

    def region(self, i: int) -> Optional[Tuple[int, int, int, int, np.ndarray]]:
        """``(y0, y1, x0, x1, bool crop)`` of mask ``i``'s box region (0 everywhere else), or None if empty."""
        raise NotImplementedError

    def rle(self, i: int) -> Dict[str, Any]:
        """Mask ``i`` as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' compressed form)."""
        raise NotImplementedError

    def rles(self) -> List[Dict[str, Any]]:
        """Every mask as COCO RLE (:meth:`rle` of each; the subclasses make them all at once)."""
        return [self.rle(i) for i in range(len(self))]

    def area(self, i: int) -> int:
        raise NotImplementedError

    def subset(self, key: Any) -> LazyMasks:
        """The masks ``key`` selects (an index array, a bool mask or a slice), as the same kind of object."""
        raise NotImplementedError

    def dense(self, i: int) -> np.ndarray:
        out = np.zeros(self.image_hw, dtype=bool)
        r = self.region(i)
        if r is not None:
            y0, y1, x0, x1, crop = r
            out[y0:y1, x0:x1] = crop
        return out

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.dense(int(key))
        return self.subset(key)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.dense(i)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        for i in range(len(self)):
            r = self.region(i)
            if r is not None:
                y0, y1, x0, x1, crop = r
                out[i, y0:y1, x0:x1] = crop
        return out if dtype is None else out.astype(dtype)


class PastedMasks(LazyMasks):
    """``N`` masks in an ``(H, W)`` image, pasted on demand from their ``[N, M, M]`` probabilities and boxes.

    Behaves like the ``[N, H, W]`` bool array :func:`paste_masks` returns (``shape``, ``ndim``, ``dtype``,
    ``len``, ``m[i]`` -> one ``[H, W]`` mask, ``m[keep]`` -> a subset, ``np.asarray(m)`` -> the dense array), but
    holds only the ``M x M`` probabilities: :meth:`region` gives the box-region crop of one mask and
    :meth:`rle` its COCO RLE computed from that crop, so no image-sized array is made unless asked for.
    """

    def __init__(
        self, probs: np.ndarray, boxes: np.ndarray, image_hw: Tuple[int, int], method: str, threshold: float
    ) -> None:
        self.probs = np.asarray(probs, dtype=np.float32)
        self.boxes = np.asarray(boxes, dtype=np.float32)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.method, self.threshold = method, float(threshold)

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def region(self, i: int) -> Optional[Tuple[int, int, int, int, np.ndarray]]:
        """``(y0, y1, x0, x1, bool crop)`` of mask ``i``'s box region (0 everywhere else), or None if empty."""
        r = _paste_region(self.probs[i], self.boxes[i], self.image_hw, self.method)
        if r is None:
            return None
        y0, y1, x0, x1, prob = r
        return y0, y1, x0, x1, _threshold(prob, self.method, self.threshold)

    def binary(self, i: int) -> np.ndarray:
        """Mask ``i``'s ``M x M`` probabilities thresholded as the paste thresholds them (box coordinates)."""
        return _threshold(self.probs[i], self.method, self.threshold)

    def _regions(self, index: Iterable[int]) -> Iterator[Optional[_Region]]:
        """The box regions of masks ``index`` with their probabilities (:func:`_paste_region`), one at a time."""
        if self.method == "torchvision" and opencv() is not None:
            picked = np.fromiter(index, dtype=np.int64)
            yield from _torchvision_regions(self.probs[picked], self.boxes[picked], self.image_hw, _SCRATCH)
            return
        for i in index:
            yield _paste_region(self.probs[i], self.boxes[i], self.image_hw, self.method, _SCRATCH)

    def _binarize(self) -> _Binarize:
        """Writes a region's probabilities thresholded (:func:`_threshold`) into a bool crop."""
        method, threshold = self.method, self.threshold

        def binarize(prob: np.ndarray, out: np.ndarray) -> None:
            _threshold_into(prob, method, threshold, out, _SCRATCH)

        return binarize

    def rle(self, i: int) -> Dict[str, Any]:
        """Mask ``i`` as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' compressed form)."""
        return _rle_dicts(_rle_texts(self._regions([i]), 1, self.image_hw, self._binarize()), self.image_hw)[0]

    def rles(self, executor: Any = None, parts: int = 4) -> List[Dict[str, Any]]:
        """Every mask as COCO RLE, made together (a chunk of box regions at a time, see :func:`_chunks`).

        ``executor`` (a ``concurrent.futures`` executor of worker *processes*: the work holds the GIL too often for
        threads to help): the masks are cut into up to ``parts`` runs of consecutive masks of about equal box area;
        all but the first go to the executor, the first is made here meanwhile. The same strings in the same order:
        for one image's latency on a machine with idle cores (the streaming runner already spreads images over
        its worker processes)."""
        n = len(self)
        if executor is None or parts < 2 or n < 2 * _MIN_PART:
            return _rle_dicts(_texts_of(self), self.image_hw)
        cuts = _balanced_cuts(self._weights(), min(int(parts), n // _MIN_PART))
        futures = [executor.submit(_texts_of, self.subset(slice(a, b))) for a, b in zip(cuts[1:-1], cuts[2:])]
        try:
            texts = _texts_of(self.subset(slice(cuts[0], cuts[1])))
            for f in futures:
                texts.extend(f.result())
        finally:
            for f in futures:
                f.cancel()
        return _rle_dicts(texts, self.image_hw)

    def _weights(self) -> np.ndarray:
        """Each mask's share of the RLE work: its box's pixels in the image, plus a fixed cost per mask."""
        h, w = self.image_hw
        b = self.boxes.astype(np.float64)
        bw = np.clip(b[:, 2], 0, w) - np.clip(b[:, 0], 0, w)
        bh = np.clip(b[:, 3], 0, h) - np.clip(b[:, 1], 0, h)
        return np.maximum(bw, 0) * np.maximum(bh, 0) + _MASK_COST_PIXELS

    def area(self, i: int) -> int:
        r = self.region(i)
        return 0 if r is None else int(np.count_nonzero(r[4]))

    def subset(self, key: Any) -> PastedMasks:
        return PastedMasks(self.probs[key], self.boxes[key], self.image_hw, self.method, self.threshold)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = paste_masks(self.probs, self.boxes, self.image_hw, self.method, self.threshold)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"PastedMasks(n={len(self)}, image_hw={self.image_hw}, method={self.method!r})"


_MIN_PART = 4  # masks per part at least when PastedMasks.rles splits one image's masks across processes
_MASK_COST_PIXELS = 4000.0  # what one mask costs beside its pixels, in pixels (post_bench.py, 2-core VM)


def _texts_of(masks: PastedMasks) -> List[str]:
    """The compressed COCO RLE strings of every mask of ``masks`` (a worker process's part of
    :meth:`PastedMasks.rles`)."""
    n = len(masks)
    return _rle_texts(masks._regions(range(n)), n, masks.image_hw, masks._binarize())


def _balanced_cuts(weights: np.ndarray, parts: int) -> List[int]:
    """``parts + 1`` increasing cut points ``0 .. len(weights)`` splitting ``weights`` into runs of consecutive
    items of about equal sum, none empty."""
    n = int(weights.shape[0])
    if n == 0:
        return [0, 0]
    parts = max(1, min(int(parts), n))
    total = np.cumsum(weights, dtype=np.float64)
    targets = total[-1] * np.arange(1, parts) / parts
    cuts = [0]
    for k, t in enumerate(np.searchsorted(total, targets, side="left") + 1):
        # at least one item per part, and room for one in each part after it
        cuts.append(int(min(max(int(t), cuts[-1] + 1), n - (parts - 1 - k))))
    cuts.append(n)
    return cuts


class RleMasks(LazyMasks):
    """``N`` masks in an ``(H, W)`` image held as their runs of 1s: what the GPU post-processing
    (:func:`rcnn_deploy.glue.gpu_post.paste_runs`) brings back instead of ``M x M`` probabilities. The same
    interface as :class:`PastedMasks` (see :class:`LazyMasks`); COCO RLE counts are differences of the run
    positions, and a region or dense mask is filled from the runs.

    ``runs [R, 2]`` int: ``(start, end)`` (end exclusive) in COCO's column-major pixel order (``x * H + y``),
    sorted and maximal within each mask; ``offsets [N + 1]``: mask ``i``'s runs are
    ``runs[offsets[i]:offsets[i + 1]]``; ``regions [N, 4]`` int ``(y0, y1, x0, x1)``: the box region each mask
    was pasted into (every run lies inside it; empty when ``y1 <= y0`` or ``x1 <= x0``). ``texts``: each mask's
    compressed COCO RLE string where it was made with the runs (the GPU post-processing makes them on the device),
    else they are made from the runs when asked for.
    """

    def __init__(
        self,
        runs: np.ndarray,
        offsets: np.ndarray,
        regions: np.ndarray,
        image_hw: Tuple[int, int],
        texts: Optional[Sequence[str]] = None,
    ) -> None:
        self.texts = None if texts is None else list(texts)
        self.runs = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        self.regions = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        n = self.regions.shape[0]
        if self.offsets.shape[0] != n + 1 or self.offsets[0] != 0 or self.offsets[-1] != self.runs.shape[0]:
            raise ValueError(
                f"RleMasks: offsets {self.offsets.shape[0]} for {n} masks and {self.runs.shape[0]} runs; "
                "want N + 1 offsets from 0 to the number of runs"
            )
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"RleMasks: {len(self.texts)} RLE strings for {n} masks")

    @classmethod
    def from_masks(cls, masks: LazyMasks) -> RleMasks:
        """The runs of other lazy masks (e.g. :class:`PastedMasks`), computed from their box regions."""
        n = len(masks)
        regions = np.zeros((n, 4), dtype=np.int64)

        def noted(found: Iterable[Optional[_Region]]) -> Iterator[Optional[_Region]]:
            for i, r in enumerate(found):
                if r is not None:
                    regions[i] = r[:4]
                yield r

        if isinstance(masks, PastedMasks):  # thresholded as the runs are made, as PastedMasks.rles does
            starts, ends, which = _mask_runs(noted(masks._regions(range(n))), masks.image_hw, masks._binarize())
        else:
            starts, ends, which = _mask_runs(noted(masks.region(i) for i in range(n)), masks.image_hw)
        offsets = np.zeros(n + 1, dtype=np.int64)
        if which.size:
            offsets[1:] = np.cumsum(np.bincount(which, minlength=n))
        return cls(np.stack([starts, ends], axis=1), offsets, regions, masks.image_hw)

    def __len__(self) -> int:
        return int(self.regions.shape[0])

    def runs_of(self, i: int) -> np.ndarray:
        return self.runs[self.offsets[i] : self.offsets[i + 1]]

    def counts(self, i: int) -> List[int]:
        """Mask ``i``'s uncompressed COCO RLE counts."""
        return counts_from_runs(self.runs_of(i), self.image_hw[0] * self.image_hw[1])

    def rle(self, i: int) -> Dict[str, Any]:
        """Mask ``i`` as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' compressed form)."""
        if self.texts is not None:
            return _rle_dicts([self.texts[i]], self.image_hw)[0]
        return _compress(self.counts(i), self.image_hw)

    def rles(self) -> List[Dict[str, Any]]:
        """Every mask as COCO RLE, made together."""
        if self.texts is not None:
            return _rle_dicts(self.texts, self.image_hw)
        n = len(self)
        which = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.offsets))
        total = self.image_hw[0] * self.image_hw[1]
        counts, lengths = _counts_batch(self.runs[:, 0], self.runs[:, 1], which, n, total)
        return _rle_dicts(_rle_strings(counts, lengths), self.image_hw)

    def area(self, i: int) -> int:
        r = self.runs_of(i)
        return int((r[:, 1] - r[:, 0]).sum())

    def region(self, i: int) -> Optional[Tuple[int, int, int, int, np.ndarray]]:
        """``(y0, y1, x0, x1, bool crop)`` of mask ``i``'s box region (0 everywhere else), or None if empty."""
        y0, y1, x0, x1 = (int(v) for v in self.regions[i])
        rh, rw = y1 - y0, x1 - x0
        if rh <= 0 or rw <= 0:
            return None
        runs = self.runs_of(i)
        h_img = self.image_hw[0]
        # a run's start in the crop's own column-major order; its end is start + length (a run crosses a column
        # only when the region spans the image's full height, and then this order is the image's, shifted)
        col, row = np.divmod(runs[:, 0], h_img)
        start = (col - x0) * rh + (row - y0)
        end = start + (runs[:, 1] - runs[:, 0])
        step = np.zeros(rh * rw + 1, dtype=np.int8)
        step[start] += 1  # starts are distinct, and so are ends (one may fall where another run starts)
        step[end] -= 1
        crop = np.cumsum(step[:-1], dtype=np.int8).astype(bool).reshape(rw, rh).T
        return y0, y1, x0, x1, crop

    def subset(self, key: Any) -> RleMasks:
        idx = np.arange(len(self))[key]
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # every selected mask's run indices, in selection order
        first = np.repeat(self.offsets[idx] - offsets[:-1], lengths)
        take = np.arange(int(offsets[-1]), dtype=np.int64) + first
        texts = None if self.texts is None else [self.texts[i] for i in idx]
        return RleMasks(self.runs[take], offsets, self.regions[idx], self.image_hw, texts)

    def __repr__(self) -> str:
        return f"RleMasks(n={len(self)}, image_hw={self.image_hw}, runs={self.runs.shape[0]})"
