"""Batched, padded non-maximum suppression with static output shapes.

``batched_nms_padded`` is the single NMS entry point of the package. It keeps the semantics of
``torchvision.ops.batched_nms`` (greedy, per-group, IoU strictly greater than the threshold suppresses, kept
indices sorted by decreasing score) but works on a batch of fixed-size candidate sets with a validity mask and
returns a fixed number of indices per image plus a count, so that every caller has static shapes.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def batched_nms_padded(
    boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float, max_out: int
) -> Tuple[Tensor, Tensor]:
    """Greedy NMS per image and per group.

    Args:
        boxes: ``[B, N, 4]`` candidate boxes (x1, y1, x2, y2).
        scores: ``[B, N]``.
        groups: ``[B, N]`` integer group ids (class or FPN level); boxes of different groups never suppress
            each other.
        valid: ``[B, N]`` bool; invalid candidates are never kept and never suppress.
        iou_threshold: a box is suppressed by a higher-scoring kept box of its group when IoU > threshold.
        max_out: number of output slots per image.

    Returns:
        ``keep [B, max_out]`` int64 indices into N (sorted by decreasing score; padded slots hold 0) and
        ``count [B]`` int64, the number of kept boxes (``<= max_out``).
    """
    from torchvision.ops import batched_nms

    b = boxes.shape[0]
    keep_out = torch.zeros((b, max_out), dtype=torch.int64, device=boxes.device)
    count = torch.zeros((b,), dtype=torch.int64, device=boxes.device)
    for i in range(b):
        idx = torch.nonzero(valid[i], as_tuple=False).squeeze(1)
        kept = batched_nms(boxes[i, idx], scores[i, idx], groups[i, idx], iou_threshold)[:max_out]
        n = kept.numel()
        keep_out[i, :n] = idx[kept]
        count[i] = n
    return keep_out, count


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, N, ...]`` gathered along N with ``index [B, K]`` -> ``[B, K, ...]``."""
    b = torch.arange(x.shape[0], device=x.device).view(-1, 1).expand_as(index)
    return x[b, index]
