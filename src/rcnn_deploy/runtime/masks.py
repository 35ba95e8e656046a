"""Pasting ``M x M`` mask probabilities into the image, exactly as each framework does it (numpy only).

* ``torchvision`` (``roi_heads.paste_masks_in_image``): pad the mask by one pixel, grow the box by
  (M + 2) / M, truncate it to integers, bilinearly resize the padded mask to the box size
  (``align_corners=False``) and copy it in; the result is thresholded afterwards.
* ``detectron2`` (``layers.mask_ops._do_paste_mask``): sample the mask at every image pixel centre with
  ``grid_sample(align_corners=False)`` and zero padding, in continuous box coordinates; ``>= threshold``.

Both resamplings are separable, so each mask is pasted as ``Wy @ mask @ Wx.T`` over the box's pixels only.

:class:`PastedMasks` pastes lazily from the probabilities; :class:`RleMasks` holds masks as runs computed elsewhere
(the GPU post-processing, :mod:`rcnn_deploy.glue.gpu_post`); both have the interface of :class:`LazyMasks`.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

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
    src = (pix + 0.5 - lo) / max(hi - lo, 1e-12) * m - 0.5
    i0 = np.floor(src).astype(np.int64)
    w1 = src - i0
    w = np.zeros((pix.shape[0], m), dtype=np.float64)
    for idx, wt in ((i0, 1.0 - w1), (i0 + 1, w1)):
        ok = (idx >= 0) & (idx < m)
        w[np.nonzero(ok)[0], idx[ok]] += wt[ok]
    return w


def _paste_region(
    mask: np.ndarray, box: np.ndarray, image_hw: Tuple[int, int], method: str
) -> Optional[Tuple[int, int, int, int, np.ndarray]]:
    """Where one ``[M, M]`` probability mask lands for ``box``: ``(y0, y1, x0, x1, probabilities)`` of the
    image region it covers (everything outside is 0), or None when that region is empty."""
    h_img, w_img = image_hw
    m = mask.shape[0]
    if method == "torchvision":
        padded = np.zeros((m + 2, m + 2), dtype=np.float64)
        padded[1:-1, 1:-1] = mask
        scale = (m + 2) / m
        cx, cy = (box[0] + box[2]) * 0.5, (box[1] + box[3]) * 0.5
        hw, hh = (box[2] - box[0]) * 0.5 * scale, (box[3] - box[1]) * 0.5 * scale
        # float32 like torchvision's expand_boxes, then truncation toward zero like .to(torch.int64)
        ebox = np.array([cx - hw, cy - hh, cx + hw, cy + hh], dtype=np.float32).astype(np.int64)
        w = max(int(ebox[2] - ebox[0] + 1), 1)
        h = max(int(ebox[3] - ebox[1] + 1), 1)
        x0, x1 = int(max(ebox[0], 0)), int(min(ebox[2] + 1, w_img))
        y0, y1 = int(max(ebox[1], 0)), int(min(ebox[3] + 1, h_img))
        if x1 <= x0 or y1 <= y0:
            return None
        cv2 = opencv()
        if cv2 is not None and max(h, w) < MAX_SIDE:
            # the same sampling as _resize_weights, in float32 like torchvision's interpolate: about 30x faster
            # than the matmuls below (which stay the reference, and the path without OpenCV)
            full = cv2.resize(padded.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            return y0, y1, x0, x1, full[y0 - ebox[1] : y1 - ebox[1], x0 - ebox[0] : x1 - ebox[0]]
        # only the rows and columns of the resize that land inside the image
        wy = _resize_weights(h, m + 2)[y0 - ebox[1] : y1 - ebox[1]]
        wx = _resize_weights(w, m + 2)[x0 - ebox[0] : x1 - ebox[0]]
        return y0, y1, x0, x1, wy @ padded @ wx.T
    if method == "detectron2":
        x0 = int(max(np.floor(box[0]) - 1, 0))
        y0 = int(max(np.floor(box[1]) - 1, 0))
        x1 = int(min(np.ceil(box[2]) + 1, w_img))
        y1 = int(min(np.ceil(box[3]) + 1, h_img))
        if x1 <= x0 or y1 <= y0:
            return None
        wy = _sample_weights(np.arange(y0, y1, dtype=np.float64), float(box[1]), float(box[3]), m)
        wx = _sample_weights(np.arange(x0, x1, dtype=np.float64), float(box[0]), float(box[2]), m)
        return y0, y1, x0, x1, wy @ mask @ wx.T
    raise ValueError(f"unknown mask paste method {method!r}; use 'torchvision' or 'detectron2'")


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


def rle_runs(crop: np.ndarray, y0: int, x0: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """The runs of 1s of an ``[H, W]`` bool mask that is 0 everywhere except the ``crop`` placed at ``(y0, x0)``,
    in COCO's column-major pixel order: ``[R, 2]`` int64 ``(start, end)`` positions (``end`` exclusive), sorted,
    each run maximal. Computed from the crop alone."""
    h_img = int(image_hw[0])
    ch, cw = crop.shape
    if crop.size == 0 or not crop.any():
        return np.zeros((0, 2), dtype=np.int64)
    # each crop column, then a 0: every run of 1s starts and ends inside its own column's segment
    cols = np.zeros((cw, ch + 1), dtype=np.int8)
    cols[:, :ch] = crop.T
    flat = cols.ravel()
    step = np.diff(flat, prepend=np.int8(0))  # +1: a run of 1s starts here, -1: the pixel after a run
    idx = np.flatnonzero(step)
    col, row = np.divmod(idx, ch + 1)
    pos = (x0 + col) * h_img + y0 + row
    up = step[idx] > 0
    starts, ends = pos[up], pos[~up]  # alternate, starts first; equal counts (every column ends in a 0)
    # a run ending at the bottom of one column and starting at the top of the next is one run (only when
    # the crop spans the image's full height)
    split = ends[:-1] == starts[1:]
    if split.any():
        keep = ~split
        starts = np.concatenate([starts[:1], starts[1:][keep]])
        ends = np.concatenate([ends[:-1][keep], ends[-1:]])
    return np.stack([starts, ends], axis=1).astype(np.int64, copy=False)


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


def _compress(counts: List[int], image_hw: Tuple[int, int]) -> Dict[str, Any]:
    """Uncompressed counts -> ``{"size": [H, W], "counts": str}`` (pycocotools' compressed form)."""
    from pycocotools import mask as mask_util

    h, w = image_hw
    rle = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


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

    def rle(self, i: int) -> Dict[str, Any]:
        """Mask ``i`` as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' compressed form)."""
        r = self.region(i)
        counts = [self.image_hw[0] * self.image_hw[1]] if r is None else rle_counts(r[4], r[0], r[2], self.image_hw)
        return _compress(counts, self.image_hw)

    def area(self, i: int) -> int:
        r = self.region(i)
        return 0 if r is None else int(r[4].sum())

    def subset(self, key: Any) -> PastedMasks:
        return PastedMasks(self.probs[key], self.boxes[key], self.image_hw, self.method, self.threshold)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = paste_masks(self.probs, self.boxes, self.image_hw, self.method, self.threshold)
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"PastedMasks(n={len(self)}, image_hw={self.image_hw}, method={self.method!r})"


class RleMasks(LazyMasks):
    """``N`` masks in an ``(H, W)`` image held as their runs of 1s: what the GPU post-processing
    (:func:`rcnn_deploy.glue.gpu_post.paste_runs`) brings back instead of ``M x M`` probabilities. The same
    interface as :class:`PastedMasks` (see :class:`LazyMasks`); COCO RLE counts are differences of the run
    positions, and a region or dense mask is filled from the runs.

    ``runs [R, 2]`` int: ``(start, end)`` (end exclusive) in COCO's column-major pixel order (``x * H + y``),
    sorted and maximal within each mask; ``offsets [N + 1]``: mask ``i``'s runs are
    ``runs[offsets[i]:offsets[i + 1]]``; ``regions [N, 4]`` int ``(y0, y1, x0, x1)``: the box region each mask
    was pasted into (every run lies inside it; empty when ``y1 <= y0`` or ``x1 <= x0``).
    """

    def __init__(self, runs: np.ndarray, offsets: np.ndarray, regions: np.ndarray, image_hw: Tuple[int, int]) -> None:
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

    @classmethod
    def from_masks(cls, masks: LazyMasks) -> RleMasks:
        """The runs of other lazy masks (e.g. :class:`PastedMasks`), computed from their box regions."""
        regions = np.zeros((len(masks), 4), dtype=np.int64)
        runs: List[np.ndarray] = []
        for i in range(len(masks)):
            r = masks.region(i)
            if r is None:
                runs.append(np.zeros((0, 2), dtype=np.int64))
                continue
            regions[i] = r[:4]
            runs.append(rle_runs(r[4], r[0], r[2], masks.image_hw))
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in runs], dtype=np.int64)])
        flat = np.concatenate(runs) if runs else np.zeros((0, 2), dtype=np.int64)
        return cls(flat, offsets, regions, masks.image_hw)

    def __len__(self) -> int:
        return int(self.regions.shape[0])

    def runs_of(self, i: int) -> np.ndarray:
        return self.runs[self.offsets[i] : self.offsets[i + 1]]

    def counts(self, i: int) -> List[int]:
        """Mask ``i``'s uncompressed COCO RLE counts."""
        return counts_from_runs(self.runs_of(i), self.image_hw[0] * self.image_hw[1])

    def rle(self, i: int) -> Dict[str, Any]:
        """Mask ``i`` as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' compressed form)."""
        return _compress(self.counts(i), self.image_hw)

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
        return RleMasks(self.runs[take], offsets, self.regions[idx], self.image_hw)

    def __repr__(self) -> str:
        return f"RleMasks(n={len(self)}, image_hw={self.image_hw}, runs={self.runs.shape[0]})"
