"""The host half of pasting masks on a GPU, in numpy (no torch): for a CUDA kernel that pastes every mask of a
batch one region column per thread (:mod:`rcnn_deploy.backends.tensorrt.paste`, the torch-free TensorRT
process's) or the Triton kernel of :mod:`rcnn_deploy.glue.gpu_post`.

:func:`plan_paste` works out, from the boxes in original pixels, each mask's box region in its image and the two
bilinear taps of every region row and column (float64 arithmetic, as the host paste of
:class:`~rcnn_deploy.runtime.masks.PastedMasks`); the kernel evaluates each pixel from them with explicit FMAs and
writes each column's row changes (:data:`MAX_RUNS` at most); :func:`runs_from_changes` turns those changes into
the runs of 1s of :class:`~rcnn_deploy.runtime.masks.RleMasks`. A mask with a column of more changes than the
kernel keeps is flagged (``over``) for the host paste instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .masks import _torchvision_geometry

METHODS = ("torchvision", "detectron2")
#: Row changes per region column a kernel keeps. A column of an ``M x M`` mask pasted with bilinear taps is linear
#: between ``M + 2`` samples (the zero border included), so it crosses the threshold at most ``M + 1`` times, plus
#: one closing change where the image cuts the region: at most 30 for the usual ``M = 28`` (in exact arithmetic;
#: float rounding right at the threshold could add a pair, which the host paste then covers). 16 was too few: this
#: project's checkpoint reached 16 in low-score masks on the CPU, and in run 35 (TensorRT fp16, H100) about 10 % of
#: the images had a column with more.
MAX_RUNS = 32


def region_geometry(
    boxes: np.ndarray, hw: np.ndarray, m: int, method: str
) -> Tuple[np.ndarray, Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]]:
    """Box regions ``[N, 4]`` int64 ``(y0, y1, x0, x1)`` clipped to each mask's image (``hw [N, 2]``) and, per
    axis (y, x), what :func:`taps` needs: torchvision's expanded integer box start and resize length, Detectron2's
    box ends (float64). ``boxes [N, 4]`` in original pixels, float32 (the host paste's arithmetic)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
    if method == "torchvision":
        g = _torchvision_geometry(b, m, (2**62, 2**62))  # unclipped above; clipped to each mask's image here
        ex0, ey0, w, h = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
        regions = np.stack([g[:, 6], np.minimum(g[:, 7], hw[:, 0]), g[:, 4], np.minimum(g[:, 5], hw[:, 1])], 1)
        return regions, ((ey0, h), (ex0, w))
    if method == "detectron2":
        x0 = np.maximum((np.floor(b[:, 0]) - 1).astype(np.int64), 0)
        y0 = np.maximum((np.floor(b[:, 1]) - 1).astype(np.int64), 0)
        x1 = np.minimum((np.ceil(b[:, 2]) + 1).astype(np.int64), hw[:, 1])
        y1 = np.minimum((np.ceil(b[:, 3]) + 1).astype(np.int64), hw[:, 0])
        b64 = b.astype(np.float64)
        return np.stack([y0, y1, x0, x1], 1), ((b64[:, 1], b64[:, 3]), (b64[:, 0], b64[:, 2]))
    raise ValueError(f"unknown mask paste method {method!r}; use 'torchvision' or 'detectron2'")


def taps(pix: np.ndarray, a: np.ndarray, b: np.ndarray, method: str, m: int) -> Tuple[np.ndarray, ...]:
    """The two taps of image pixels ``pix`` along one axis: ``(i, w0, w1)``, weight ``w0`` on index ``i`` and
    ``w1`` on ``i + 1`` of the mask with a zero border (``K = M + 2``) and one more zero after it (index ``K``);
    ``a``, ``b``: that axis's parameters from :func:`region_geometry`, per pixel. float64 arithmetic, float32
    weights (``glue.gpu_post._taps`` in torch: the same operations in the same order, the same values)."""
    k = m + 2
    if method == "torchvision":
        # bilinear, align_corners=False, from k to b samples; pix - a: the position in the resized box. Where the
        # source index clamps at k - 1 (torchvision reads the border twice) index k reads the same 0.
        scale = np.float64(k) / b.astype(np.float64)
        src = np.maximum(((pix - a).astype(np.float64) + 0.5) * scale - 0.5, 0.0)
        i = np.minimum(np.floor(src).astype(np.int64), k - 1)
        w1 = src - i
        w0 = 1 - w1
    else:
        # grid_sample(align_corners=False) at pixel centres in box [a, b] over m cells, zero padding: cells f and
        # f + 1 are border indices f + 1 and f + 2; both outside the mask (and its zero border): weights 0
        src = (pix.astype(np.float64) + 0.5 - a) / np.maximum(b - a, 1e-12) * m - 0.5
        f = np.floor(src)
        w1 = src - f
        w0 = 1 - w1
        i = f.astype(np.int64) + 1
        out = (i < 0) | (i > k - 1)
        i[out], w0[out], w1[out] = 0, 0.0, 0.0
    return i, w0.astype(np.float32), w1.astype(np.float32)


@dataclass
class PastePlan:
    """What a paste kernel reads for ``N`` masks (:func:`plan_paste`): ``ytaps [3, rows]`` and ``xtaps [3, cols]``
    float32 (first tap's index, its weight, the next index's weight) of every mask's region rows and columns one
    mask after the other; ``side [7, N]`` int64 (region rows, columns, the mask's first row in ``ytaps``, first
    column in ``xtaps``, the region's first image row ``y0`` and column ``x0``, the image's height);
    ``col_owner [cols]`` int32: the mask of each column; ``regions [N, 4]`` ``(y0, y1, x0, x1)``."""

    ytaps: np.ndarray
    xtaps: np.ndarray
    side: np.ndarray
    col_owner: np.ndarray
    regions: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.ytaps.shape[1])

    @property
    def cols(self) -> int:
        return int(self.xtaps.shape[1])


def plan_paste(boxes: np.ndarray, hw: np.ndarray, m: int, method: str) -> PastePlan:
    """The :class:`PastePlan` of masks ``[N, M, M]`` (``m = M``) for ``boxes [N, 4]`` (original pixels) in images
    of ``hw [N, 2]`` (one ``(H, W)`` per mask)."""
    hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
    n = hw.shape[0]
    regions, (ay, ax) = region_geometry(boxes, hw, m, method)
    rh = np.maximum(regions[:, 1] - regions[:, 0], 0)
    rw = np.maximum(regions[:, 3] - regions[:, 2], 0)
    tapped, firsts, owners = [], [], []
    for (a, b), start, size in ((ay, regions[:, 0], rh), (ax, regions[:, 2], rw)):
        first = np.zeros(n + 1, np.int64)
        np.cumsum(size, out=first[1:])
        owner = np.repeat(np.arange(n), size)  # the mask of each row (column)
        pix = np.arange(first[-1]) - first[owner] + start[owner]
        i, w0, w1 = taps(pix, a[owner], b[owner], method, m)
        tapped.append(np.stack([i.astype(np.float32), w0, w1]))
        firsts.append(first)
        owners.append(owner)
    side = np.stack([rh, rw, firsts[0][:-1], firsts[1][:-1], regions[:, 0], regions[:, 2], hw[:, 0]]).astype(np.int64)
    return PastePlan(tapped[0], tapped[1], np.ascontiguousarray(side), owners[1].astype(np.int32), regions)


def runs_from_changes(
    plan: PastePlan, changes: np.ndarray, count: np.ndarray, max_runs: int = MAX_RUNS
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A kernel's output -> ``(runs [R, 2], offsets [N + 1], over [N])``: ``changes [cols, max_runs]`` (each region
    column's first row changes as image positions ``x * H + y``: a run's start, then the row after its end) and
    ``count [cols]`` (how many changes each column had). A mask with a column of more than ``max_runs`` changes,
    or an odd number (a run without its end), is ``over``: none of its runs are given (paste it on the host). A
    run that ends at the bottom of one column and goes on at the top of the next (a region of the image's full
    height) is one run."""
    n = int(plan.side.shape[1])
    count = np.asarray(count, dtype=np.int64).reshape(-1)
    bad = (count > max_runs) | (count % 2 == 1)
    over = np.zeros(n, bool)
    over[plan.col_owner[bad]] = True
    kept = np.where(over[plan.col_owner], 0, count)
    # each column's first kept[c] changes, column after column: gathered by index, in time with the changes kept
    # (a column has 0-4 of its max_runs slots filled, mostly), not by a [cols, max_runs] mask
    first = np.cumsum(kept) - kept  # where column c's changes start in pos
    at = np.arange(int(first[-1] + kept[-1]) if kept.size else 0, dtype=np.int64)
    at += np.repeat(np.arange(kept.size, dtype=np.int64) * max_runs - first, kept)
    pos = np.asarray(changes).reshape(-1)[at].astype(np.int64)
    per_mask = np.bincount(plan.col_owner, weights=kept, minlength=n).astype(np.int64)
    runs, run_det = join_changes(pos, per_mask)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(run_det, minlength=n), out=offsets[1:])
    return runs, offsets, over


def join_changes(pos: np.ndarray, per_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Runs ``[R, 2]`` int64 ``(start, end)`` and each run's mask from the row changes ``pos`` of ``N`` masks (image
    positions, mask after mask, each mask's in order, ``per_mask [N]`` of them each: a run's start, then its end).
    A run ending at the bottom of one column that goes on at the top of the next (a region of the image's full
    height) is one run."""
    n = int(per_mask.shape[0])
    starts, ends, run_det = pos[0::2], pos[1::2], np.repeat(np.arange(n), per_mask // 2)
    join = (ends[:-1] == starts[1:]) & (run_det[:-1] == run_det[1:])
    if join.any():
        keep_start, keep_end = np.ones(starts.shape[0], bool), np.ones(starts.shape[0], bool)
        keep_start[1:][join] = False
        keep_end[:-1][join] = False
        starts, ends, run_det = starts[keep_start], ends[keep_end], run_det[keep_start]
    return np.stack([starts, ends], 1).astype(np.int64), run_det
