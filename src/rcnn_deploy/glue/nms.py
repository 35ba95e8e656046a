"""Batched, padded non-maximum suppression with static output shapes: the package's single NMS entry point.

``nms_padded`` keeps the semantics of ``torchvision.ops.batched_nms`` (greedy, per group, a box is suppressed
by a kept higher-scoring box of its group when IoU > threshold, output sorted by decreasing score) on a batch
of fixed-size candidate sets, and returns a fixed number of slots per image plus a count.

Candidates are laid out the way TensorRT's EfficientNMS takes them: ``boxes [B, N, G', 4]`` with G' = 1
(boxes shared by every group, e.g. RPN proposals grouped by FPN level) or G' = G (class-specific boxes), and
``scores / valid [B, N, G]``. In eager mode it runs torchvision's NMS per image; while exporting to ONNX it
becomes one node chosen by the active export target (see :mod:`rcnn_deploy.glue.export_hooks`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import export_hooks, sync_free


def nms_padded(
    boxes: Tensor,
    scores: Tensor,
    valid: Tensor,
    iou_threshold: float,
    max_out: int,
    score_threshold: float = 0.0,
    group_blocks: Optional[Sequence[int]] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Greedy NMS per image and per group.

    Args:
        boxes: ``[B, N, G', 4]`` (x1, y1, x2, y2), G' in {1, G}.
        scores: ``[B, N, G]``.
        valid: ``[B, N, G]`` bool; invalid candidates are never kept and never suppress.
        iou_threshold: suppression when IoU > threshold.
        max_out: output slots per image (K).
        score_threshold: the score threshold already folded into ``valid``; lowerings whose NMS filters by a
            threshold of its own (EfficientNMS) use it.
        group_blocks: shared boxes (G' = 1) whose candidates come in contiguous blocks, one per group, each
            valid only in its own group (RPN proposals grouped by FPN level): the sizes of the blocks. Exported
            graphs then run one NMS per (image, block) with all blocks in the batch dimension and merge the
            kept boxes by score (:func:`_nms_blocked`): the same result, the blocks suppressed in parallel.

    Returns:
        ``boxes [B, K, 4]``, ``scores [B, K]``, ``groups [B, K]`` int64 and ``count [B]`` int64; slots past
        ``count`` are zero.
    """
    if torch.onnx.is_in_onnx_export():
        if group_blocks is not None and len(group_blocks) > 1:
            return _nms_blocked(boxes, scores, valid, iou_threshold, max_out, score_threshold, group_blocks)
        impl = export_hooks.active()
        if getattr(impl, "traced", False):  # the lowering wants plain tensor ops: trace the formulation
            from .formulations import nms_fixpoint

            exclusive = group_blocks is not None
            return nms_fixpoint(boxes, scores, valid, iou_threshold, max_out, impl.max_candidates, exclusive)
        # candidate and group counts are static for a fixed input size; pass them as attributes
        shape = (int(scores.shape[1]), int(scores.shape[2]))
        return export_hooks.NMSNode.apply(
            boxes, scores, valid, float(iou_threshold), int(max_out), float(score_threshold), shape
        )
    if sync_free.active() is not None:  # static shapes, no host sync (a CUDA graph captures it)
        if group_blocks is not None and len(group_blocks) > 1:
            return _nms_blocked(boxes, scores, valid, iou_threshold, max_out, score_threshold, group_blocks)
        from .formulations import TOPK_LIMIT, nms_fixpoint

        return nms_fixpoint(boxes, scores, valid, iou_threshold, max_out, TOPK_LIMIT, group_blocks is not None)
    from .emulate import rounds, to_fp16

    if rounds("nms"):  # an fp16 NMS plugin, emulated (glue.emulate.fp16_glue)
        b, s, g, n = nms_eager(to_fp16(boxes), to_fp16(scores), valid, iou_threshold, max_out)
        return to_fp16(b), to_fp16(s), g, n
    return nms_eager(boxes, scores, valid, iou_threshold, max_out)


def _nms_blocked(
    boxes: Tensor,
    scores: Tensor,
    valid: Tensor,
    iou_threshold: float,
    max_out: int,
    score_threshold: float,
    blocks: Sequence[int],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``nms_padded`` for candidates in per-group blocks (see ``group_blocks``), as exported graphs compute it.

    Groups never suppress each other, so NMS per group is independent: each block (padded to the largest with
    invalid candidates) becomes one row of a ``[B * G, K_max]`` batch, one single-group NMS keeps up to
    ``min(max_out, K_max)`` boxes per row, and one TopK merges each image's rows by score. The single NMS
    node then suppresses G small sets side by side instead of one set of N candidates. TensorRT's
    EfficientNMS walks its candidates one at a time in one thread block per batch row (and by its source
    considers at most 4096 of them): over the RPN's 5 x 1000 candidates at 1344 px as one set it took 2.7 ms
    of a 6.7 ms fp16 engine on the H200, and its proposals differed from torchvision's (see docs/results.md,
    RPN NMS); per level, 0.9 ms and the same proposals. The tensor formulation's IoU matrix shrinks from N^2
    to G * K_max^2.
    """
    g = len(blocks)
    kmax = max(blocks)
    rows_boxes, rows_scores, rows_valid = [], [], []
    start = 0
    for grp, k in enumerate(blocks):
        pad = kmax - k
        rows_boxes.append(F.pad(boxes[:, start : start + k, 0], (0, 0, 0, pad)))
        rows_scores.append(F.pad(scores[:, start : start + k, grp], (0, pad)))
        rows_valid.append(F.pad(valid[:, start : start + k, grp].to(scores.dtype), (0, pad)) > 0.5)
        start += k
    if start != scores.shape[1]:
        raise ValueError(f"group_blocks {tuple(blocks)} cover {start} candidates, the scores have {scores.shape[1]}")
    m = min(max_out, kmax)
    kept_boxes, kept_scores, _, kept_count = nms_padded(
        torch.stack(rows_boxes, 1).reshape(-1, kmax, 1, 4),
        torch.stack(rows_scores, 1).reshape(-1, kmax, 1),
        torch.stack(rows_valid, 1).reshape(-1, kmax, 1),
        iou_threshold,
        m,
        score_threshold,
    )
    kept_boxes = kept_boxes.reshape(-1, g * m, 4)
    # counts are small integers: summed and compared as floats (exact), the arithmetic TensorRT 8.6 reduces
    kept_count = kept_count.reshape(-1, g).to(scores.dtype)
    slot = torch.arange(m, device=boxes.device, dtype=scores.dtype).view(1, 1, m) < kept_count.unsqueeze(2)
    kept_scores = kept_scores.reshape(-1, g * m)
    ranked = torch.where(slot.reshape(-1, g * m), kept_scores, torch.full_like(kept_scores, -2.0))
    k = min(max_out, g * m)
    top_scores, top_idx = ranked.topk(k, dim=1)
    count_f = kept_count.sum(dim=1).clamp(max=k)
    slot_valid = torch.arange(k, device=boxes.device, dtype=scores.dtype).view(1, k) < count_f.view(-1, 1)
    count = count_f.to(torch.int64)
    out_boxes = gather_rows(kept_boxes, top_idx) * slot_valid.unsqueeze(-1).to(boxes.dtype)
    out_scores = torch.where(slot_valid, top_scores, torch.zeros_like(top_scores))
    out_groups = torch.div(top_idx, m, rounding_mode="floor") * slot_valid
    if k < max_out:
        out_boxes = F.pad(out_boxes, (0, 0, 0, max_out - k))
        out_scores = F.pad(out_scores, (0, max_out - k))
        out_groups = F.pad(out_groups, (0, max_out - k))
    return out_boxes, out_scores, out_groups, count


def nms_eager(
    boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, max_out: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`nms_padded`'s reference semantics: ``torchvision.ops.batched_nms`` per image over the valid
    candidates, the groups as its classes (the RPN's FPN levels, the detector's classes)."""
    from torchvision.ops import batched_nms

    b, n, g = scores.shape
    dev = boxes.device
    flat_boxes = boxes.expand(b, n, g, 4).reshape(b, n * g, 4)
    flat_scores = scores.reshape(b, n * g)
    flat_groups = torch.arange(g, device=dev).repeat(n)
    flat_valid = valid.reshape(b, n * g)
    out_boxes = torch.zeros((b, max_out, 4), dtype=boxes.dtype, device=dev)
    out_scores = torch.zeros((b, max_out), dtype=scores.dtype, device=dev)
    out_groups = torch.zeros((b, max_out), dtype=torch.int64, device=dev)
    count = torch.zeros((b,), dtype=torch.int64, device=dev)
    for i in range(b):
        idx = torch.nonzero(flat_valid[i], as_tuple=False).squeeze(1)
        kept = idx[batched_nms(flat_boxes[i, idx], flat_scores[i, idx], flat_groups[idx], iou_threshold)[:max_out]]
        k = kept.numel()
        out_boxes[i, :k] = flat_boxes[i, kept]
        out_scores[i, :k] = flat_scores[i, kept]
        out_groups[i, :k] = flat_groups[kept]
        count[i] = k
    return out_boxes, out_scores, out_groups, count


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, N, ...]`` gathered along N with ``index [B, K]`` -> ``[B, K, ...]``."""
    b = torch.arange(x.shape[0], device=x.device).view(-1, 1).expand_as(index)
    return x[b, index]
