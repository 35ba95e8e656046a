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

from typing import Tuple

import torch
from torch import Tensor

from . import export_hooks


def nms_padded(
    boxes: Tensor,
    scores: Tensor,
    valid: Tensor,
    iou_threshold: float,
    max_out: int,
    score_threshold: float = 0.0,
    exclusive_groups: bool = False,
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
        exclusive_groups: promise that each candidate is valid in at most one group (shared boxes grouped by
            FPN level); lets formulations work on N candidates instead of N*G pairs.

    Returns:
        ``boxes [B, K, 4]``, ``scores [B, K]``, ``groups [B, K]`` int64 and ``count [B]`` int64; slots past
        ``count`` are zero.
    """
    if torch.onnx.is_in_onnx_export():
        impl = export_hooks.active()
        if getattr(impl, "traced", False):  # the lowering wants plain tensor ops: trace the formulation
            from .formulations import nms_fixpoint

            return nms_fixpoint(boxes, scores, valid, iou_threshold, max_out, impl.max_candidates, exclusive_groups)
        # candidate and group counts are static for a fixed input size; pass them as attributes
        shape = (int(scores.shape[1]), int(scores.shape[2]))
        return export_hooks.NMSNode.apply(
            boxes, scores, valid, float(iou_threshold), int(max_out), float(score_threshold), shape
        )
    return _nms_eager(boxes, scores, valid, iou_threshold, max_out)


def _nms_eager(
    boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, max_out: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
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
