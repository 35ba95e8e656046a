"""NMS and multi-level ROIAlign written with plain tensor ops and static shapes, for graphs that may use
neither an NMS op nor a RoiAlign op (TensorRT-RTX has no NonMaxSuppression runner; TensorRT 8.6's RoiAlign
importer needs a plugin library our bundle lacks). They are traced like any other torch code by the
``tensor`` lowering, and tested in eager mode against torchvision's kernels.

``nms_fixpoint``: exact greedy NMS. ``S[i, j]`` says candidate j (ranked above i: higher score, ties by
position) would suppress i. Greedy NMS keeps i iff no kept j suppresses it, and
``keep <- valid & not (S @ keep)`` iterated from ``keep = valid`` reaches that greedy solution after as many
rounds as the longest suppression chain (entry i is final after i + 1 rounds, and the fixpoint is unique).
In the graph the iteration is an ONNX ``Loop`` that stops when ``keep`` no longer changes. Only the
candidates ranked below ``max_candidates`` are dropped before NMS, and that changes no output slot as long
as the K-th kept detection outranks them (NMS never lets a lower-ranked box affect a higher-ranked one).

``roi_align_gather``: torchvision's ``roi_align`` (both ``aligned`` modes, fixed ``sampling_ratio``) as four
gathers from the FPN levels concatenated into one table, each ROI reading only its assigned level.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union, cast

import torch
from torch import Tensor

from . import sync_free
from .roi_align import PoolerParams


class FixpointNode(torch.autograd.Function):
    """``keep = fixpoint(S, valid)``; exported as a placeholder that ``export.surgery`` turns into a Loop."""

    @staticmethod
    def forward(ctx: Any, suppress: Tensor, valid: Tensor, max_iterations: int) -> Tensor:
        return _fixpoint_eager(suppress, valid)

    @staticmethod
    def symbolic(g: Any, suppress: Any, valid: Any, max_iterations: int) -> Any:  # TorchScript graph values
        keep = g.op("rcnn_deploy::FixpointKeep", suppress, valid, max_iterations_i=max_iterations)
        keep.setType(valid.type())
        return keep


def _fixpoint_eager(suppress: Tensor, valid: Tensor) -> Tensor:
    """``suppress [B, M, M]`` float (1 where j suppresses i), ``valid [B, M]`` float -> keep ``[B, M]`` float."""
    keep = valid
    for _ in range(suppress.shape[-1] + 1):
        new = valid * (torch.matmul(suppress, keep.unsqueeze(-1)).squeeze(-1) < 0.5).to(valid.dtype)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def fixpoint_keep(suppress: Tensor, valid: Tensor) -> Tensor:
    """``suppress [B, M, M]`` bool (True where j suppresses i), ``valid [B, M]`` float -> keep ``[B, M]`` float.
    The products take ``suppress`` in ``valid``'s dtype (cast here: the graph :func:`nms_fixpoint` exports casts
    where it always did); the sync-free rounds on bits take the bools as they are."""
    if torch.onnx.is_in_onnx_export():
        s = suppress.to(valid.dtype)
        return FixpointNode.apply(s, valid, int(valid.shape[-1]) + 1)  # static bound: every candidate
    state = sync_free.active()
    if state is not None:
        return sync_free.fixpoint_rounds(suppress, valid, state)
    return _fixpoint_eager(suppress.to(valid.dtype), valid)


def _pairwise_iou(boxes: Tensor) -> Tensor:
    """``[B, M, 4]`` -> ``[B, M, M]``."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, :, None] + area[:, None, :] - inter)


TOPK_LIMIT = 3840  # the largest K TensorRT's TopK layer accepts


def nms_fixpoint(
    boxes: Tensor,
    scores: Tensor,
    valid: Tensor,
    iou_threshold: float,
    max_out: int,
    max_candidates: int = TOPK_LIMIT,
    exclusive_groups: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`rcnn_deploy.glue.nms.nms_padded` (see the module docstring for the method).

    With ``exclusive_groups`` (each candidate valid in at most one group, boxes shared: the RPN's levels)
    the N candidates are used as they are; otherwise the N*G (box, group) pairs are reduced to the best
    ``max_candidates`` (<= TensorRT's TopK limit) first.
    """
    b, n, g = scores.shape
    neg = torch.full_like(scores, -1.0)
    if exclusive_groups and boxes.shape[2] == 1:
        masked = torch.where(valid, scores, neg)
        cand_scores, cand_groups = masked.max(dim=2)
        cand_boxes = boxes[:, :, 0]
        cand_valid = valid.any(dim=2)
    else:
        ng = n * g
        flat_valid = valid.reshape(b, ng)
        masked = torch.where(valid, scores, neg).reshape(b, ng)
        m = min(ng, max_candidates)
        cand_scores, top_idx = masked.topk(m, dim=1)
        cand_boxes = torch.gather(boxes.expand(b, n, g, 4).reshape(b, ng, 4), 1, top_idx.unsqueeze(-1).expand(b, m, 4))
        cand_groups = top_idx % g
        cand_valid = torch.gather(flat_valid, 1, top_idx)
    m = cand_scores.shape[1]
    k = min(max_out, m)
    rank = torch.arange(m, device=boxes.device)
    # j "ranks above" i: higher score, ties broken by position (no sort needed, so no TopK over all M)
    s_i, s_j = cand_scores.unsqueeze(2), cand_scores.unsqueeze(1)
    above = (s_j > s_i) | ((s_j == s_i) & (rank.view(1, 1, m) < rank.view(1, m, 1)))
    same = cand_groups.unsqueeze(2) == cand_groups.unsqueeze(1)
    suppress = (_pairwise_iou(cand_boxes) > iou_threshold) & same & above
    keep = fixpoint_keep(suppress, cand_valid.to(boxes.dtype))
    ranked = torch.where(keep > 0.5, cand_scores, torch.full_like(cand_scores, -2.0))
    out_scores, slot = ranked.topk(k, dim=1)  # kept candidates first, in score order
    count = torch.clamp(keep.sum(dim=1).to(torch.int64), max=k)
    slot_valid = rank[:k].view(1, k) < count.view(b, 1)
    out_boxes = torch.gather(cand_boxes, 1, slot.unsqueeze(-1).expand(b, k, 4)) * slot_valid.unsqueeze(-1)
    out_scores = out_scores * slot_valid
    out_groups = torch.gather(cand_groups, 1, slot) * slot_valid
    if k < max_out:
        pad = max_out - k
        out_boxes = torch.nn.functional.pad(out_boxes, (0, 0, 0, pad))
        out_scores = torch.nn.functional.pad(out_scores, (0, pad))
        out_groups = torch.nn.functional.pad(out_groups, (0, pad))
    return out_boxes, out_scores, out_groups, count


def _axis_samples(
    lo: Tensor, length: Tensor, size: Tensor, out: int, ratio: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-axis bilinear taps of torchvision's roi_align for ``[R]`` ROIs: sample coordinates
    ``lo + (p + (i + 0.5) / ratio) * length / out`` -> (low index, high index, low weight, high weight),
    each ``[R, out * ratio]``; weights are zero for samples outside ``[-1, size]``."""
    steps = (torch.arange(out * ratio, device=lo.device, dtype=lo.dtype) + 0.5) / ratio  # p + (i + .5)/ratio
    coord = lo.unsqueeze(1) + steps.unsqueeze(0) * (length / out).unsqueeze(1)
    size_f = size.to(lo.dtype).unsqueeze(1)
    inside = ((coord >= -1.0) & (coord <= size_f)).to(lo.dtype)
    coord = coord.clamp(min=0)
    low = torch.floor(coord)
    at_edge = low >= size_f - 1
    low = torch.where(at_edge, size_f - 1, low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low)
    return low.to(torch.int64), high.to(torch.int64), (1 - frac) * inside, frac * inside


def roi_align_gather(features: Sequence[Tensor], boxes: Tensor, levels: Tensor, p: PoolerParams) -> Tensor:
    """``features`` P2..P5 ``[B, C, H_l, W_l]``, ``boxes [B, K, 4]``, ``levels [B, K]`` -> ``[B, K, C, S, S]``."""
    if p.sampling_ratio <= 0:
        raise NotImplementedError(
            "the gather ROIAlign needs a fixed sampling_ratio; adaptive sampling (Detectron2's ROIAlignV2) is "
            "available in split graphs and in the onnx/plugin fused variants"
        )
    b, k = boxes.shape[:2]
    c = features[0].shape[1]
    s, r = p.output_size, p.sampling_ratio
    dev, dt = boxes.device, boxes.dtype
    heights = torch.tensor([f.shape[2] for f in features], device=dev)
    widths = torch.tensor([f.shape[3] for f in features], device=dev)
    scales = torch.tensor([1.0 / st for st in p.strides], device=dev, dtype=dt)
    # table [B * L, C] with the levels side by side per image: offsets within an image do not depend on B
    sizes = [f.shape[2] * f.shape[3] for f in features]
    per_image = sum(sizes)
    starts = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=dev)
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, c) for f in features], dim=1).reshape(-1, c)

    lv = levels.reshape(-1)
    h, w, scale = heights[lv], widths[lv], scales[lv]
    rois = boxes.reshape(-1, 4) * scale.unsqueeze(1)
    if p.aligned:
        rois = rois - 0.5
    rw = rois[:, 2] - rois[:, 0]
    rh = rois[:, 3] - rois[:, 1]
    if not p.aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    y0, y1, wy0, wy1 = _axis_samples(rois[:, 1], rh, h, s, r)
    x0, x1, wx0, wx1 = _axis_samples(rois[:, 0], rw, w, s, r)
    batch = torch.arange(b, device=dev).view(b, 1).expand(b, k).reshape(-1)
    base = (starts[lv] + batch * per_image).view(-1, 1, 1)
    row_w = w.view(-1, 1, 1)
    acc: Union[int, Tensor] = 0
    for yi, wy in ((y0, wy0), (y1, wy1)):
        for xi, wx in ((x0, wx0), (x1, wx1)):
            idx = base + yi.unsqueeze(2) * row_w + xi.unsqueeze(1)  # [R, S*r, S*r]
            weight = wy.unsqueeze(2) * wx.unsqueeze(1)
            acc = acc + table[idx.reshape(-1)].view(-1, s * r, s * r, c) * weight.unsqueeze(-1)
    out = cast(Tensor, acc).view(-1, s, r, s, r, c).mean(dim=(2, 4))  # average the r x r samples of each bin
    return out.permute(0, 3, 1, 2).reshape(b, k, c, s, s)
