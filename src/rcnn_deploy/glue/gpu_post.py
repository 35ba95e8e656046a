"""Post-processing on the model's device: boxes back to original pixels, masks pasted, thresholded and
run-length encoded there, so only compact results cross to the host (boxes, scores, classes, the box region of
each mask and its runs of 1s), not the ``[B, 100, M, M]`` mask probabilities.

It computes what the host does (:meth:`rcnn_deploy.api.HostStages.detections_for` with
:class:`~rcnn_deploy.runtime.masks.PastedMasks`): the same box arithmetic in float32
(:meth:`~rcnn_deploy.runtime.preprocess.Letterbox.boxes_to_original`), the same box regions and sampling
positions (``runtime.masks._paste_region``, in float64 like the reference; float32 on MPS), and the threshold
rule of each paste method (torchvision ``>``, Detectron2 ``>=``). The bilinear sums themselves run in float32, so a
pixel whose probability is within about 1e-6 of the threshold may fall on the other side of it than on the host.

How it is batched (:func:`paste_runs`): every detection of the batch at once (all images), each mask resampled
separably over its box region only: the mask gets a zero border (``K = M + 2``: torchvision's padding and
Detectron2's zero padding alike; one more zero column takes the second tap of the last index), the x pass gathers
two of its columns per region column (``[W, K + 1]``), the y pass is a batched matmul with a ``[K + 1, H + 1]``
matrix of two taps per region row, so ``bmm`` gives each region
column-major (COCO's order) with one extra slot after each column that never holds a 1. Regions are grouped by
size and padded to their group's largest height and width (:func:`_chunks`: at most ``max_elements`` padded
pixels a group, and filled at least ``min_fill``); padding rows and columns get NaN weights, so they are never
above a threshold. A ``diff`` and ``nonzero`` over a group's thresholded bits give the run starts and ends (a
run never crosses a column's extra slot); only their image positions (``x * H + y``) go to the host, where COCO
counts are their differences (:class:`~rcnn_deploy.runtime.masks.RleMasks`). A run that ends at the bottom of one
column and goes on at the top of the next (a region of the image's full height) is merged on the device.

Where the Triton kernel runs (a GPU; ``TRITON_INTERPRET=1`` on the CPU), :func:`postprocess_batch` pastes a whole
batch with no host synchronisation before its one copy back (:func:`_grid_changes`): box regions and taps are
computed on the device for every detection slot over the batch's largest image's rows and columns (so no
buffer size depends on the boxes), the kernel writes each column's row changes, and a second kernel compacts them
column after column; the boxes, scores, classes, counts, regions and changes then come back together. Before it,
the host computed the regions and taps from boxes it had copied back first, and the changes took two more
synchronisations (:func:`_paste_runs_kernel`, still :func:`paste_runs`' kernel path).

The matmul runs in float32 when torch's float32 matmul precision is "highest" (its default), else in float64: a
TF32 or bf16 pass would move pixels within about 1e-3 of the threshold across it.

Why padded matmuls: measured on the CPU (this project's 2-core machine, one thread, 100 detections on
1920 x 1080, ``benchmarks/results/gpu_post_cpu.json``) they took 51-102 ms per image (two box-size distributions,
both paste methods) against 63-234 ms for a layout without padding (every region's pixels in one ragged array, a
two-tap gather per pixel: about 17 passes over the pixels where the padded layout makes 5 over its padded
pixels). A per-detection ``F.interpolate`` loop took 30-65 ms on the CPU (torchvision method) but costs about ten
kernel launches per detection on a GPU. ``benchmarks/gpu_post_bench.py`` runs all three on any device, for the
comparison on a GPU. On the CPU the host's numpy / OpenCV paste (24-72 ms) is faster than any of them: this path
is for a GPU, where it takes the paste off the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..runtime.detections import Detections
from ..runtime.masks import RleMasks
from ..runtime.paste_plan import join_changes, plan_paste, taps

METHODS = ("torchvision", "detectron2")
#: Padded region pixels per batched paste of :func:`paste_runs` (about 7 bytes of device memory each, 11 in float64).
DEFAULT_MAX_ELEMENTS = 1 << 24
#: The least fraction of a batched paste's padded pixels its regions fill (:func:`_chunks`), by device type. On
#: the CPU padding costs its pixels' time: at 0.5, 21-40 groups padded 1.5-1.8x took 51-102 ms in the benchmark's
#: four cases, at 0.2, 2-3 groups padded 2.8-4.5x took 74-182 ms (benchmarks/results/gpu_post_cpu*.json). On a GPU
#: each group costs about 30 kernel launches and a synchronisation (nonzero) while padding costs little: 0.2 there,
#: a guess, not yet measured on a GPU.
MIN_FILL = {"cpu": 0.5}
DEFAULT_MIN_FILL = 0.2


@dataclass
class PastedRuns:
    """What :func:`paste_runs` returns, on the host: ``regions [N, 4]`` int64 ``(y0, y1, x0, x1)`` of each mask's
    box region (empty when ``y1 <= y0`` or ``x1 <= x0``), ``runs [R, 2]`` int64 ``(start, end)`` column-major
    image positions of the runs of 1s, and ``offsets [N + 1]``: mask ``i``'s runs are
    ``runs[offsets[i]:offsets[i + 1]]``."""

    regions: np.ndarray
    runs: np.ndarray
    offsets: np.ndarray
    texts: Optional[List[str]] = None  # each mask's COCO RLE string, where they were made on the device

    def masks(self, start: int, stop: int, image_hw: Tuple[int, int]) -> RleMasks:
        """Masks ``start:stop`` (all in one image of ``image_hw``) as :class:`RleMasks`."""
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        texts = None if self.texts is None else self.texts[start:stop]
        return RleMasks(self.runs[a:b], self.offsets[start : stop + 1] - a, self.regions[start:stop], image_hw, texts)


def _geometry(boxes: Tensor, hw: Tensor, m: int, method: str, cdtype: Any) -> Tuple[Tensor, Tuple[Any, Any]]:
    """Box regions ``[N, 4]`` int64 ``(y0, y1, x0, x1)`` clipped to the image, and per axis (y, x) what the
    sampling positions need: torchvision's expanded integer box start and resize length, Detectron2's box ends."""
    if method == "torchvision":
        # torchvision's expand_boxes in float32, then truncation toward zero (as _paste_region)
        # filled on the device (no copy from the host, which would wait for the stream): the float32 of (m + 2) / m
        scale = torch.full((), (m + 2) / m, dtype=torch.float32, device=boxes.device)
        cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
        cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
        half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
        half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
        ex0, ey0 = (cx - half_w).long(), (cy - half_h).long()
        ex1, ey1 = (cx + half_w).long(), (cy + half_h).long()
        w = (ex1 - ex0 + 1).clamp(min=1)
        h = (ey1 - ey0 + 1).clamp(min=1)
        x0, x1 = ex0.clamp(min=0), torch.minimum(ex1 + 1, hw[:, 1])
        y0, y1 = ey0.clamp(min=0), torch.minimum(ey1 + 1, hw[:, 0])
        axes: Tuple[Any, Any] = ((ey0, h), (ex0, w))
    else:
        x0 = (torch.floor(boxes[:, 0]) - 1).long().clamp(min=0)
        y0 = (torch.floor(boxes[:, 1]) - 1).long().clamp(min=0)
        x1 = torch.minimum((torch.ceil(boxes[:, 2]) + 1).long(), hw[:, 1])
        y1 = torch.minimum((torch.ceil(boxes[:, 3]) + 1).long(), hw[:, 0])
        b = boxes.to(cdtype)
        axes = ((b[:, 1], b[:, 3]), (b[:, 0], b[:, 2]))
    return torch.stack([y0, y1, x0, x1], 1), axes


def _taps(pix: Tensor, a: Tensor, b: Tensor, method: str, m: int, cdtype: Any) -> Tuple[Tensor, Tensor, Tensor]:
    """The two taps of image pixels ``pix`` along one axis: ``(i, w0, w1)``, weight ``w0`` on index ``i`` and ``w1``
    on ``i + 1`` of the mask with a zero border (``K = M + 2``) and one more zero after it (index ``K``);
    ``a``, ``b``: that axis's parameters from :func:`_geometry`, per pixel."""
    k = m + 2
    if method == "torchvision":
        # bilinear, align_corners=False, from k to b samples; pix - a: the position in the resized box. Where
        # the source index clamps at k - 1 (torchvision reads the border twice) index k reads the same 0.
        scale = torch.full_like(b, k, dtype=cdtype) / b.to(cdtype)  # a true division, as n_in / n_out
        src = (((pix - a).to(cdtype) + 0.5) * scale - 0.5).clamp(min=0)
        i = torch.floor(src).long().clamp(max=k - 1)
        w1 = src - i.to(cdtype)
        w0 = 1 - w1
    else:
        # grid_sample(align_corners=False) at pixel centres in box [a, b] over m cells, zero padding: cells f and
        # f + 1 are border indices f + 1 and f + 2; both outside the mask (and its zero border): weights 0
        src = (pix.to(cdtype) + 0.5 - a) / (b - a).clamp(min=1e-12) * m - 0.5
        f = torch.floor(src)
        w1 = src - f
        w0 = 1 - w1
        i = f.long() + 1
        out = (i < 0) | (i > k - 1)
        i = i.masked_fill(out, 0)
        w0, w1 = w0.masked_fill(out, 0), w1.masked_fill(out, 0)
    return i, w0.float(), w1.float()


#: :func:`_taps` in numpy on the host, float64 (the Triton kernel's path): the same operations in the same order, so
#: the same values (tests/test_gpu_post.py checks them against :func:`_taps` bit for bit); about three times faster
#: than torch's CPU ops on one image's region rows. Shared with the torch-free CUDA kernel's host half.
_taps_host = taps


def _chunks(rh: np.ndarray, rw: np.ndarray, max_elements: int, min_fill: float) -> List[np.ndarray]:
    """Groups of the non-empty regions, each padded to its largest height + 1 and width: by size (the longer side),
    a new group when the padded elements would pass ``max_elements`` or the regions would fill less than
    ``min_fill`` of them (a region larger than ``max_elements`` is a group of its own)."""
    live = np.flatnonzero((rh > 0) & (rw > 0))
    order = live[np.argsort(np.maximum(rh[live], rw[live]), kind="stable")]
    out: List[np.ndarray] = []
    start, big_h, big_w, filled = 0, 0, 0, 0
    for pos, i in enumerate(order):
        h, w = int(rh[i]), int(rw[i])
        nh, nw = max(big_h, h), max(big_w, w)
        padded = (pos - start + 1) * (nh + 1) * nw
        if pos > start and (padded > max_elements or filled + h * w < min_fill * padded):
            out.append(order[start:pos])
            start, nh, nw, filled = pos, h, w, 0
        big_h, big_w, filled = nh, nw, filled + h * w
    if start < len(order):
        out.append(order[start:])
    return out


#: Row changes per region column the kernel keeps (a mask-head column is usually 0-4); a mask with a column of more
#: goes through the groups instead.
KERNEL_MAX_RUNS = 16
_KERNEL_BLOCK_H, _KERNEL_BLOCK_W = 64, 32


def _kernel_runs(device: Any) -> bool:
    """Whether :func:`paste_runs` takes the Triton kernel on ``device`` by default."""
    from .roi_align_triton import kernels_run

    return kernels_run(device)


def _image_sizes(image_hw: Any, n: int) -> np.ndarray:
    hw = (image_hw.cpu().numpy() if isinstance(image_hw, Tensor) else np.asarray(image_hw)).astype(np.int64)
    return np.broadcast_to(hw.reshape(-1, 2), (n, 2)).copy()


def _paste_runs_kernel(
    probs: Tensor,
    boxes: Tensor,
    image_hw: Any,
    method: str,
    threshold: float,
    max_elements: int,
    min_fill: Optional[float],
) -> PastedRuns:
    """:func:`paste_runs` by one Triton launch (:mod:`._paste_kernel`): every mask pasted, thresholded and its row
    changes found per region column on the device; the box regions and the taps
    (:func:`~rcnn_deploy.runtime.paste_plan.plan_paste`, numpy, float64) computed on the host for the regions' own
    rows and columns (all masks' one after the other, no padding to the largest), and the changes turned into runs on
    the host in numpy: a handful of device operations in all (the groups path launches about 150 small kernels
    for 100 masks, which took 2.9 ms on an H200, host-bound). The float32 products are the groups'
    ``bmm`` grouping as FMAs. A mask with a column of more than :data:`KERNEL_MAX_RUNS` changes (or, never seen,
    of an odd number) goes through the groups."""
    import triton

    from ._paste_kernel import paste_transitions_kernel

    dev = probs.device
    n, m = int(probs.shape[0]), int(probs.shape[-1])
    k1 = m + 3
    hw_h = _image_sizes(image_hw, n)
    boxes_c = boxes.detach().to("cpu", torch.float32).reshape(n, 4)
    # regions and taps of every mask's region rows (and columns) one after the other: real pixels only, no padding
    # (runtime.paste_plan, shared with the torch-free CUDA kernel; its regions equal _geometry's bit for bit)
    plan = plan_paste(boxes_c.numpy(), hw_h, m, method)
    regions_h = plan.regions
    rh, rw = plan.side[0], plan.side[1]
    max_h, max_w = (int(s.max()) if n else 0 for s in (rh, rw))
    empty = PastedRuns(regions_h, np.zeros((0, 2), np.int64), np.zeros(n + 1, np.int64))
    if max_h <= 0 or max_w <= 0:
        return empty
    taps = [torch.from_numpy(t).to(dev) for t in (plan.ytaps, plan.xtaps)]  # [3, total]: index, weights
    first_x, owner_x, cols_total = np.append(plan.side[3], plan.cols), plan.col_owner, plan.cols
    first_y = np.append(plan.side[2], plan.rows)
    side = plan.side
    side_d = torch.from_numpy(side.astype(np.int64)).to(dev)
    padded = torch.zeros((n, k1, k1), dtype=torch.float32, device=dev)
    padded[:, 1 : m + 1, 1 : m + 1] = probs
    # the changes as image positions: int32 where every image has fewer than 2**31 pixels
    wide = int((hw_h[:, 0] * hw_h[:, 1]).max()) >= 2**31
    out = torch.empty((cols_total, KERNEL_MAX_RUNS), dtype=torch.int64 if wide else torch.int32, device=dev)
    count = torch.zeros(cols_total, dtype=torch.int32, device=dev)
    grid = (n, triton.cdiv(max_w, _KERNEL_BLOCK_W))
    paste_transitions_kernel[grid](
        padded, taps[0], taps[1], side_d, out, count, float(threshold), int(first_y[-1]), cols_total,
        K1=k1, MAX_RUNS=KERNEL_MAX_RUNS, GE=method == "detectron2", BLOCK_H=_KERNEL_BLOCK_H, BLOCK_W=_KERNEL_BLOCK_W,
    )  # fmt: skip
    kept = count.clamp(max=KERNEL_MAX_RUNS)
    changes = out[torch.arange(KERNEL_MAX_RUNS, device=dev) < kept[:, None]]  # by mask, column, then row: in order
    count_h, pos = count.cpu().numpy(), changes.cpu().numpy().astype(np.int64, copy=False)
    # changes per mask (columns of mask i: first_x[i]:first_x[i + 1])
    cum = np.zeros(cols_total + 1, np.int64)
    np.cumsum(np.minimum(count_h, KERNEL_MAX_RUNS), out=cum[1:])
    per_mask = cum[first_x[1:]] - cum[first_x[:-1]]
    # a column with more changes than the kernel keeps, or (never seen since the kernel's explicit FMAs; checked all
    # the same) an odd count, a run without its end: that mask goes through the groups
    over = np.zeros(n, bool)
    over[owner_x[(count_h > KERNEL_MAX_RUNS) | (count_h % 2 == 1)]] = True
    if over.any():
        pos = pos[~np.repeat(over, per_mask)]
        per_mask[over] = 0
    runs, offsets = _runs_of_changes(pos, per_mask, over, probs, boxes, hw_h, method, threshold, max_elements, min_fill)
    return PastedRuns(regions_h, runs, offsets)


def _runs_of_changes(
    pos: np.ndarray,
    per_mask: np.ndarray,
    over: np.ndarray,
    probs: Tensor,
    boxes: Tensor,
    hw_h: np.ndarray,
    method: str,
    threshold: float,
    max_elements: int,
    min_fill: Optional[float],
) -> Tuple[np.ndarray, np.ndarray]:
    """The runs ``[R, 2]`` and per-mask offsets ``[N + 1]`` of ``N`` masks from the kernel's row changes ``pos``
    (image positions, mask after mask, each mask's in order; ``per_mask`` of them each), with the masks marked
    ``over`` (none of their changes in ``pos``) pasted by the groups from ``probs`` / ``boxes`` instead."""
    n = int(per_mask.shape[0])
    runs, run_det = join_changes(pos, per_mask)  # runs across a column end (full-height regions) joined
    if over.any():  # those masks by the groups, their runs put in mask order with the others'
        redo = np.flatnonzero(over)
        sel = torch.as_tensor(redo, device=probs.device)
        sub = paste_runs(probs[sel], boxes[torch.as_tensor(redo, device=boxes.device)], hw_h[redo], method,
                         threshold, max_elements, min_fill, kernel=False)  # fmt: skip
        sub_det = redo[np.repeat(np.arange(redo.shape[0]), np.diff(sub.offsets))]
        order = np.argsort(np.concatenate([run_det, sub_det]), kind="stable")
        runs = np.concatenate([runs, sub.runs])[order]
        run_det = np.concatenate([run_det, sub_det])[order]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(run_det, minlength=n), out=offsets[1:])
    return runs, offsets


@torch.no_grad()
def paste_runs(
    probs: Tensor,
    boxes: Tensor,
    image_hw: Union[Tuple[int, int], Sequence[Tuple[int, int]], np.ndarray, Tensor],
    method: str = "torchvision",
    threshold: float = 0.5,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    min_fill: Optional[float] = None,
    kernel: Optional[bool] = None,
) -> PastedRuns:
    """Paste ``probs [N, M, M]`` (mask probabilities in box coordinates) for ``boxes [N, 4]`` (original image
    pixels) into images of ``image_hw`` (one ``(H, W)`` or one per mask), threshold them and run-length encode
    them, on ``probs``' device; returns the host :class:`PastedRuns`. Equals ``PastedMasks(probs, boxes, hw,
    method, threshold)`` up to pixels within about 1e-6 of the threshold (see the module docstring).
    ``max_elements``, ``min_fill``: how regions are grouped into padded batches (:func:`_chunks`; ``min_fill``
    defaults by device type, :data:`MIN_FILL`). ``kernel``: paste with the Triton kernel
    (:func:`_paste_runs_kernel`; default: on a CUDA device with Triton installed), the groups only for the masks
    it cannot take."""
    if method not in METHODS:
        raise ValueError(f"unknown mask paste method {method!r}; use 'torchvision' or 'detectron2'")
    if _kernel_runs(probs.device) if kernel is None else kernel:
        return _paste_runs_kernel(probs, boxes, image_hw, method, threshold, max_elements, min_fill)
    dev = probs.device
    n, m = int(probs.shape[0]), int(probs.shape[-1])
    k = m + 2
    cdtype = torch.float32 if dev.type == "mps" else torch.float64
    # float32 matmuls exactly as written: never TF32 / bf16 passes, which would move pixels across the threshold
    mdtype = torch.float32 if torch.get_float32_matmul_precision() == "highest" else cdtype
    hw_h = _image_sizes(image_hw, n)
    hw = torch.as_tensor(hw_h, device=dev)
    boxes = boxes.to(dev, torch.float32).reshape(n, 4)
    regions, (ax_y, ax_x) = _geometry(boxes, hw, m, method, cdtype)
    regions_h = regions.cpu().numpy()  # the work's shape
    rh = np.maximum(regions_h[:, 1] - regions_h[:, 0], 0)
    rw = np.maximum(regions_h[:, 3] - regions_h[:, 2], 0)
    # the mask with a zero border (torchvision's padding, Detectron2's zero padding) and one more zero column
    # (the second tap of the last index); by_col row det * (k + 1) + kx: the mask's column kx over its rows
    padded = torch.zeros((n, k + 1, k + 1), dtype=mdtype, device=dev)
    padded[:, 1 : m + 1, 1 : m + 1] = probs.to(mdtype)
    by_col = padded.transpose(1, 2).reshape(n * (k + 1), k + 1)
    y0, x0, h_img = regions[:, 0], regions[:, 2], hw[:, 0]
    rh_d, rw_d = (regions[:, 1] - regions[:, 0]).clamp(min=0), (regions[:, 3] - regions[:, 2]).clamp(min=0)
    fill = MIN_FILL.get(dev.type, DEFAULT_MIN_FILL) if min_fill is None else min_fill
    groups = _chunks(rh, rw, max_elements, fill)
    order = torch.as_tensor(np.concatenate(groups) if groups else np.zeros(0, np.int64), device=dev)

    found_pos: List[Tensor] = []  # run starts and ends: image position, mask, start or end
    found_det: List[Tensor] = []
    found_up: List[Tensor] = []
    start = 0
    for group in groups:
        g = len(group)
        idx = order[start : start + g]
        start += g
        big_h, big_w = int(rh[group].max()), int(rw[group].max())
        rows = torch.arange(big_h + 1, device=dev)  # each column's rows, then one slot that is never 1
        cols = torch.arange(big_w, device=dev)
        # y taps as a dense [g, k + 1, rows] matrix; x taps applied by gathering the mask's columns. A padding
        # row or column (and each column's extra slot) gets NaN weights: never above (or at) a threshold.
        yi, yw0, yw1 = _taps(y0[idx, None] + rows, ax_y[0][idx, None], ax_y[1][idx, None], method, m, cdtype)
        yw0 = yw0.to(mdtype).masked_fill(rows >= rh_d[idx, None], float("nan"))
        wy = torch.zeros((g, k + 1, big_h + 1), dtype=mdtype, device=dev)
        wy.scatter_add_(1, yi[:, None, :], yw0[:, None, :])
        wy.scatter_add_(1, (yi + 1)[:, None, :], yw1.to(mdtype)[:, None, :])
        xi, xw0, xw1 = _taps(x0[idx, None] + cols, ax_x[0][idx, None], ax_x[1][idx, None], method, m, cdtype)
        xw0 = xw0.to(mdtype).masked_fill(cols >= rw_d[idx, None], float("nan"))
        at = (idx[:, None] * (k + 1) + xi).reshape(-1)
        ax = by_col.index_select(0, at).view(g, big_w, k + 1) * xw0[..., None]
        ax += by_col.index_select(0, at + 1).view(g, big_w, k + 1) * xw1.to(mdtype)[..., None]
        prob = torch.bmm(ax, wy)  # [g, width, height + 1]: each region column-major, COCO's order
        bits = (prob >= threshold) if method == "detectron2" else (prob > threshold)
        # one flat diff over the group: the slot before each region's first pixel is the previous region's
        # last (never 1), or the start
        flat = bits.view(-1).view(torch.int8)
        step = torch.empty_like(flat)
        step[:1] = flat[:1]
        torch.sub(flat[1:], flat[:-1], out=step[1:])  # +1: a run starts here, -1: the pixel after a run
        f = torch.nonzero(step).squeeze(1)
        per_region = big_w * (big_h + 1)
        d_loc, f_in = f // per_region, f % per_region
        col, row = f_in // (big_h + 1), f_in % (big_h + 1)
        det = idx[d_loc]
        found_pos.append((x0[det] + col) * h_img[det] + y0[det] + row)
        found_det.append(det)
        found_up.append(step[f] > 0)
    if not found_pos:
        return PastedRuns(regions_h, np.zeros((0, 2), np.int64), np.zeros(n + 1, np.int64))
    pos, det_t, up = torch.cat(found_pos), torch.cat(found_det), torch.cat(found_up)
    # a run ending at the bottom of a column that goes on at the top of the next is one run (full-height region);
    # each mask's transitions are consecutive and in order (masks come in size order)
    if pos.shape[0] > 1:
        joint = (~up[:-1]) & up[1:] & (det_t[:-1] == det_t[1:]) & (pos[:-1] == pos[1:])
        drop = torch.zeros_like(up)
        drop[:-1] |= joint
        drop[1:] |= joint
        pos, det_t = pos[~drop], det_t[~drop]
    runs, run_det = pos.view(-1, 2), det_t[0::2]
    by_mask = torch.sort(run_det, stable=True).indices
    big = int((hw_h[:, 0] * hw_h[:, 1]).max()) >= 2**31
    runs_h = runs[by_mask].to(torch.int64 if big else torch.int32).cpu().numpy().astype(np.int64)
    per_mask = torch.bincount(run_det, minlength=n).cpu().numpy()
    return PastedRuns(regions_h, runs_h, np.concatenate([[0], np.cumsum(per_mask)]).astype(np.int64))


#: The most (mask slot, column, change) entries of a batch's grid paste (:func:`_grid_changes`: its change buffer,
#: 4 or 8 bytes each, and as much again for the compacted copy: 1 GiB at most in int32); a batch needing more pastes
#: with the ragged layout. Batch 8 of 1920x1080 images with 100 detection slots each takes 24.6 million.
GRID_MAX_ELEMENTS = 1 << 27
#: Row changes per image copied back with the batch's other results before the host knows how many there are (60
#: random masks with boxes of about 120 px on 1920x1080, as gpu_post_bench's lognormal case draws them, had about
#: 44,000: a CPU count, not a model's output); more take a second copy.
GRID_CHANGES_PER_IMAGE = 1 << 16
#: Characters of the slots' COCO RLE strings copied back with the rest, per change (and per slot) the first copy
#: takes; more take a second copy.
GRID_CHARS_PER_CHANGE = 3
_COMPACT_BLOCK = 128


def _grid_taps(pix: Tensor, axis: Tuple[Any, Any], method: str, m: int) -> Tensor:
    """:func:`_taps` for a grid of pixels ``[S, L]`` (``axis``: the ``[S]`` parameters of :func:`_geometry`) as the
    kernel reads them: ``[3, S * L]`` float32, the first tap's index, then the two weights."""
    a, b = axis
    i, w0, w1 = _taps(pix, a[:, None], b[:, None], method, m, torch.float64)
    return torch.stack([i.float(), w0, w1]).reshape(3, -1)


def _grid_changes(
    probs: Tensor,
    boxes: Tensor,
    live: Tensor,
    hw: Tensor,
    hw_max: Tuple[int, int],
    wide: bool,
    method: str,
    threshold: float,
    capacity: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The paste kernel over every detection slot of a batch with no host synchronisation: ``probs [S, M, M]``,
    ``boxes [S, 4]`` (original pixels), ``live [S]`` (slots to paste), ``hw [S, 2]`` each slot's image size (int64),
    all on the device; ``hw_max``: the largest image height and width. Box regions (:func:`_geometry`) and taps
    (:func:`_taps`, float64: the ragged layout's values) are computed on the device for every slot over the largest
    image's rows and columns (slot ``s``'s columns at ``s * W``), so their number is known without looking at the
    boxes; the kernel's changes are then compacted on the device, column after column (:mod:`._paste_kernel`), and
    every slot's COCO RLE string made from its first ``capacity`` (:func:`rle_strings_device`). Returns ``meta``
    int64 ``[7 S + 2]`` (changes per slot, 1 where a slot needs the groups instead, the ``[S, 4]`` regions, the
    total, the ``S + 1`` offsets of the slots' strings), the compacted changes (their first ``total`` entries) and
    the strings' characters (valid where the total is at most ``capacity`` and no slot needs the groups), all still
    on the device."""
    import triton

    from ._paste_kernel import compact_changes_kernel, paste_transitions_kernel

    dev = probs.device
    n, m = int(probs.shape[0]), int(probs.shape[-1])
    h_max, w_max = int(hw_max[0]), int(hw_max[1])
    regions, (ay, ax) = _geometry(boxes, hw, m, method, torch.float64)
    zero = torch.zeros((), dtype=regions.dtype, device=dev)
    rh = torch.where(live, regions[:, 1] - regions[:, 0], zero).clamp(min=0)
    rw = torch.where(live, regions[:, 3] - regions[:, 2], zero).clamp(min=0)
    ytaps = _grid_taps(regions[:, 0:1] + torch.arange(h_max, device=dev), ay, method, m)
    xtaps = _grid_taps(regions[:, 2:3] + torch.arange(w_max, device=dev), ax, method, m)
    slot = torch.arange(n, device=dev)
    side = torch.stack([rh, rw, slot * h_max, slot * w_max, regions[:, 0], regions[:, 2], hw[:, 0].to(regions.dtype)])
    k1 = m + 3
    padded = torch.zeros((n, k1, k1), dtype=torch.float32, device=dev)
    padded[:, 1 : m + 1, 1 : m + 1] = probs
    cols = n * w_max
    out = torch.empty((cols, KERNEL_MAX_RUNS), dtype=torch.int64 if wide else torch.int32, device=dev)
    count = torch.zeros(cols, dtype=torch.int32, device=dev)
    paste_transitions_kernel[(n, triton.cdiv(w_max, _KERNEL_BLOCK_W))](
        padded, ytaps, xtaps, side, out, count, float(threshold), n * h_max, cols,
        K1=k1, MAX_RUNS=KERNEL_MAX_RUNS, GE=method == "detectron2", BLOCK_H=_KERNEL_BLOCK_H, BLOCK_W=_KERNEL_BLOCK_W,
    )  # fmt: skip
    per_col = count.view(n, w_max)
    # a column with more changes than the kernel keeps, or an odd count: that slot goes through the groups
    over = ((per_col > KERNEL_MAX_RUNS) | (per_col % 2 == 1)).any(1)
    kept = torch.where(over[:, None], torch.zeros_like(per_col), per_col).reshape(-1).to(torch.int64)
    start = _exclusive_cumsum(kept)
    per_slot = kept.view(n, w_max).sum(1)
    compact = torch.empty_like(out).view(-1)
    compact_changes_kernel[(triton.cdiv(cols, _COMPACT_BLOCK),)](
        out, kept, start, compact, cols, MAX_RUNS=KERNEL_MAX_RUNS, BLOCK=_COMPACT_BLOCK
    )
    pixels = hw[:, 0].to(torch.int64) * hw[:, 1].to(torch.int64)
    max_pixels = h_max * w_max  # at least any slot's image
    text, text_offsets = rle_strings_device(compact, per_slot, pixels, min(capacity, int(compact.shape[0])), max_pixels)
    meta = torch.cat([per_slot, over.to(torch.int64), regions.reshape(-1), per_slot.sum().view(1), text_offsets])
    return meta, compact, text


def _upload(a: np.ndarray, dev: Any) -> Tensor:
    """A small host array on ``dev`` without waiting: on CUDA through pinned memory, asynchronously (a copy from
    pageable memory first waits for everything queued on the stream, here the graph that made the outputs)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if torch.device(dev).type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


def _exclusive_cumsum(x: Tensor) -> Tensor:
    return torch.cumsum(x, 0) - x


def rle_strings_device(
    changes: Tensor, per_mask: Tensor, pixels: Tensor, capacity: int, max_pixels: int
) -> Tuple[Tensor, Tensor]:
    """pycocotools' compressed COCO RLE strings of ``N`` masks from their row changes, on the changes' device
    with no host synchronisation (every size below is ``capacity``'s, not the data's): ``changes`` int: each
    mask's run starts and ends (image positions, column-major; end exclusive), mask after mask, ``per_mask [N]``
    of them each (even), the first ``capacity`` of them used; ``pixels [N]`` each mask's image size ``H * W``
    (``max_pixels``: the largest, which bounds the characters per count).
    A run ending where the next starts (across a column end, a region of the image's full height) is one run.
    Returns the strings' characters one after the other (uint8, ASCII; ``capacity`` sized, the valid ones first)
    and ``[N + 1]`` int64 offsets into them (mask ``i``: ``chars[offsets[i]:offsets[i + 1]]``). Valid only when
    ``per_mask.sum() <= capacity``: the caller checks. The same strings as :meth:`RleMasks.rles
    <rcnn_deploy.runtime.masks.RleMasks.rles>` of the same runs (``_counts_batch`` and ``_rle_strings``)."""
    dev = changes.device
    n, g = int(per_mask.shape[0]), int(capacity)
    per_mask = per_mask.to(torch.int64)
    nb = g + 2 * n  # boundaries: per mask 0, its changes, its pixels
    bounds = torch.zeros(nb + 1, dtype=torch.int64, device=dev)  # the last: where out-of-range writes go
    j = torch.arange(g, device=dev)
    mask_j = torch.searchsorted(torch.cumsum(per_mask, 0), j, right=True).clamp(max=max(n - 1, 0))
    total = per_mask.sum()
    bstart = _exclusive_cumsum(per_mask + 2)  # each mask's first boundary
    at = torch.where(j < total, j + 2 * mask_j + 1, nb).clamp(max=nb)
    bounds.scatter_(0, at, changes[:g].to(torch.int64))
    bounds.index_fill_(0, bstart.clamp(max=nb), 0)  # a scalar fill: no value tensor copied to the device
    bounds[(bstart + per_mask + 1).clamp(max=nb)] = pixels.to(torch.int64)
    # each boundary's mask and place in it (0: the leading 0; odd: a run's start; even from 2: a run's end)
    b = torch.arange(nb, device=dev)
    mask_b = torch.searchsorted(bstart + per_mask + 2, b, right=True).clamp(max=max(n - 1, 0))
    local = b - bstart[mask_b]
    used = b < total + 2 * n
    # a run's end equal to the next run's start: both go (the two runs are one)
    join = used & (local >= 2) & (local % 2 == 0) & (local + 1 <= per_mask[mask_b]) & (bounds[:-1] == bounds[1:])
    keep = used & ~join
    keep[1:] &= ~join[:-1]
    kidx = torch.cumsum(keep.to(torch.int64), 0) - 1
    kept = torch.zeros(nb + 1, dtype=torch.int64, device=dev)
    kept.scatter_(0, torch.where(keep, kidx, nb), bounds[:-1])
    kept_per_mask = torch.zeros(n, dtype=torch.int64, device=dev).scatter_add_(0, mask_b, keep.to(torch.int64))
    kstart = _exclusive_cumsum(kept_per_mask)
    # counts: differences of a mask's kept boundaries (kept_per_mask - 1 of them; mask i's start at kstart - i)
    t = b  # count t lies between kept boundaries t and t + 1
    mask_t = torch.searchsorted(kstart + kept_per_mask, t, right=True).clamp(max=max(n - 1, 0))
    i_local = t - kstart[mask_t]
    counts = kept[1:] - kept[:-1]
    ncounts = kept_per_mask - 1
    in_mask = t < kstart[mask_t] + ncounts[mask_t]
    # a mask ending in 1s has no closing run of 0s (pycocotools)
    last = i_local == ncounts[mask_t] - 1
    in_mask &= ~(last & (counts == 0) & (ncounts[mask_t] > 1))
    # pycocotools' rleToString: from the fourth count on, the difference with the count two before
    before = torch.cat([torch.zeros(2, dtype=torch.int64, device=dev), counts[:-2]])
    x = torch.where(i_local >= 3, counts - before, counts)
    # characters per value: the fewest 5-bit groups that hold it as a signed number
    groups = (int(max_pixels).bit_length() + 1 + 4) // 5  # a count (or a difference of two) and its sign
    mag = x ^ (x >> 63)
    chars = torch.ones_like(x)
    for bits in range(4, 5 * groups - 1, 5):
        chars += (mag >= (1 << bits)).to(torch.int64)
    chars = torch.where(in_mask, chars, 0)
    cpos = _exclusive_cumsum(chars)
    k = torch.arange(groups, device=dev)
    digit = (x[:, None] >> (5 * k)) & 0x1F
    digit |= (k < chars[:, None] - 1).to(torch.int64) << 5
    digit += 48
    out_len = groups * nb
    where_c = torch.where(k < chars[:, None], cpos[:, None] + k, out_len).clamp(max=out_len)
    text = torch.zeros(out_len + 1, dtype=torch.uint8, device=dev)
    text.scatter_(0, where_c.reshape(-1), digit.to(torch.uint8).reshape(-1))
    per_mask_chars = torch.zeros(n, dtype=torch.int64, device=dev).scatter_add_(0, mask_t, chars)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(per_mask_chars, 0)])
    return text[:out_len], offsets


@torch.no_grad()
def postprocess_batch(
    outputs: Mapping[str, Tensor],
    letterboxes: Sequence[Any],
    method: str = "torchvision",
    threshold: float = 0.5,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Dict[str, np.ndarray]:
    """One batch's padded outputs (:data:`rcnn_deploy.glue.pipeline.OUTPUT_NAMES`, on their device, batch ``B``)
    and each image's :class:`~rcnn_deploy.runtime.preprocess.Letterbox` -> host results: ``detections``, an
    object array of ``B`` :class:`~rcnn_deploy.runtime.detections.Detections` in original pixels (masks as
    :class:`~rcnn_deploy.runtime.masks.RleMasks`), and ``finite`` ``[B]`` bool: False where the model returned
    non-finite boxes or scores (that image's masks are not pasted; ``HostStages.detections_for`` fails it)."""
    boxes = outputs["boxes"].float()
    scores = outputs["scores"].float()
    b, d = int(scores.shape[0]), int(scores.shape[1])
    if len(letterboxes) != b:
        raise ValueError(f"{len(letterboxes)} letterboxes for a batch of {b}")
    dev = boxes.device
    # Letterbox.boxes_to_original, in float32 with the same ratios
    ratio = np.array(
        [[lb.orig_w / lb.resized_hw[1], lb.orig_h / lb.resized_hw[0]] * 2 for lb in letterboxes], np.float32
    )
    limit = np.array([[lb.orig_w, lb.orig_h] * 2 for lb in letterboxes], np.float32)
    num = outputs["num_detections"].reshape(-1).to(dev)
    valid = torch.arange(d, device=dev)[None, :] < num[:, None]
    finite = ((torch.isfinite(boxes).all(-1) & torch.isfinite(scores)) | ~valid).all(1)
    orig = (boxes * _upload(ratio, dev)[:, None, :]).clamp(min=0)
    orig = torch.minimum(orig, _upload(limit, dev)[:, None, :])
    # one copy to the host (one synchronisation) for all of them: classes and counts are exact in float32
    columns = [orig.reshape(b, d * 4), scores, outputs["classes"].reshape(b, d).float(), num[:, None].float()]
    packed_d = torch.cat(columns + [finite[:, None].float()], 1)
    masks = outputs.get("masks")
    hw_img = np.array([[lb.orig_h, lb.orig_w] for lb in letterboxes], np.int64).reshape(-1, 2)
    grid = None
    fits = b * d * int(hw_img[:, 1].max()) * KERNEL_MAX_RUNS <= GRID_MAX_ELEMENTS
    if masks is not None and fits and _kernel_runs(dev):
        # every slot pasted with no synchronisation before the one copy back (the changes with it)
        live = (valid & finite[:, None]).reshape(-1)
        hw_slots_h = np.repeat(hw_img, d, 0)  # each slot's image size
        hw_slots = _upload(hw_slots_h, dev)
        wide = int((hw_img[:, 0] * hw_img[:, 1]).max()) >= 2**31
        probs = masks.reshape(b * d, *masks.shape[2:]).float()
        guess = GRID_CHANGES_PER_IMAGE * b
        meta, compact, text = _grid_changes(probs, orig.reshape(-1, 4), live, hw_slots, tuple(hw_img.max(0)), wide,
                                            method, threshold, guess)  # fmt: skip
        text_guess = min(int(text.shape[0]), GRID_CHARS_PER_CHANGE * (guess + 2 * b * d))
        copies = [t.to("cpu", non_blocking=True) for t in (packed_d, meta, compact[:guess], text[:text_guess])]
        if dev.type == "cuda":
            torch.cuda.current_stream(dev).synchronize()
        packed, meta_h, changes_h, text_h = (t.numpy() for t in copies)
        grid = (probs, hw_slots_h, meta_h, changes_h, compact, text_h, text, guess)
    else:
        packed = packed_d.cpu().numpy()
    boxes_h = packed[:, : d * 4].reshape(b, d, 4)
    scores_h, classes_h = packed[:, d * 4 : d * 5], packed[:, d * 5 : d * 6]
    num_h, finite_h = packed[:, d * 6].astype(np.int64), packed[:, d * 6 + 1] > 0

    pasted = None
    first = np.zeros(b + 1, np.int64)  # image i's masks are pasted[first[i]:first[i + 1]]
    if grid is not None:
        probs, hw_slots_h, meta_h, changes_h, compact, text_h, text, guess = grid
        slots = b * d
        per_slot, over = meta_h[:slots], meta_h[slots : 2 * slots] > 0
        total = int(meta_h[6 * slots])
        pos = changes_h[:total]
        if total > changes_h.shape[0]:  # more than the first copy took
            pos = np.concatenate([changes_h, compact[changes_h.shape[0] : total].cpu().numpy()])
        runs, offsets = _runs_of_changes(pos.astype(np.int64, copy=False), per_slot.copy(), over, probs,
                                         torch.from_numpy(boxes_h.reshape(slots, 4)), hw_slots_h, method, threshold,
                                         max_elements, None)  # fmt: skip
        texts = None
        if total <= guess and not over.any():  # the strings made on the device are every slot's
            bounds = meta_h[6 * slots + 1 :]
            chars = text_h if int(bounds[-1]) <= text_h.shape[0] else text[: int(bounds[-1])].cpu().numpy()
            whole = chars[: int(bounds[-1])].tobytes().decode("ascii")
            texts = [whole[int(bounds[i]) : int(bounds[i + 1])] for i in range(slots)]
        pasted = PastedRuns(meta_h[2 * slots : 6 * slots].reshape(slots, 4), runs, offsets, texts)
        first = np.arange(b + 1, dtype=np.int64) * d  # image i's slots
    elif masks is not None:
        counts = np.where(finite_h, num_h, 0)
        first[1:] = np.cumsum(counts)
        index = np.concatenate([i * d + np.arange(c) for i, c in enumerate(counts)]).astype(np.int64)
        hw = np.repeat(hw_img, counts, 0)
        sel = torch.as_tensor(index, device=dev)
        probs = masks.reshape(b * d, *masks.shape[2:])[sel]
        boxes_sel = torch.from_numpy(boxes_h.reshape(b * d, 4)[index])  # on the host already: no sync for them
        pasted = paste_runs(probs, boxes_sel, hw, method, threshold, max_elements)
    dets = np.empty(b, dtype=object)
    for i, lb in enumerate(letterboxes):
        n = int(num_h[i])
        rle = None
        if pasted is not None and finite_h[i]:
            rle = pasted.masks(int(first[i]), int(first[i]) + n, (lb.orig_h, lb.orig_w))
        dets[i] = Detections(
            boxes_h[i, :n].astype(np.float32),
            scores_h[i, :n].astype(np.float32),
            classes_h[i, :n].astype(np.int32),
            rle,
        )
    return {"detections": dets, "finite": finite_h.astype(bool)}


class GpuPost:
    """:func:`postprocess_batch` with a model's paste method and threshold (``ModelSpec.mask_paste`` /
    ``mask_threshold``): what :class:`~rcnn_deploy.backends.torch_cuda.GpuBatchModel` calls with each batch's
    outputs on the device."""

    def __init__(self, method: str = "torchvision", threshold: float = 0.5, max_elements: int = DEFAULT_MAX_ELEMENTS):
        if method not in METHODS:
            raise ValueError(f"unknown mask paste method {method!r}; use 'torchvision' or 'detectron2'")
        self.method, self.threshold, self.max_elements = method, float(threshold), int(max_elements)

    def __call__(self, outputs: Mapping[str, Tensor], letterboxes: Sequence[Any]) -> Dict[str, np.ndarray]:
        return postprocess_batch(outputs, letterboxes, self.method, self.threshold, self.max_elements)
