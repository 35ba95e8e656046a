"""FPN level assignment and multi-level ROIAlign.

torchvision ``MultiScaleRoIAlign``/``LevelMapper``: lvl = floor(4 + log2(sqrt(area) / 224) + 1e-6), ROIAlign
with ``aligned=False`` and ``sampling_ratio=2``. Detectron2 ``ROIPooler``: lvl = floor(4 + log2(sqrt(area) / 224
+ 1e-8)), ROIAlignV2 (``aligned=True``, ``sampling_ratio=0``). Levels are clamped to [2, 5].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .boxes import box_area


def assign_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_scale: float,
    canonical_level: int,
    eps: float,
    eps_inside_log: bool,
) -> Tensor:
    """FPN level index (0 = ``min_level``) of each box ``[..., 4]`` -> ``[...]`` int64."""
    s = torch.sqrt(box_area(boxes))
    if eps_inside_log:
        lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale + eps))
    else:
        lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + eps)
    return torch.clamp(lvl, min=min_level, max=max_level).to(torch.int64) - min_level


def multiscale_roi_align(
    features: Sequence[Tensor],
    boxes: Tensor,
    levels: Tensor,
    strides: Sequence[int],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Pool each box from the FPN level it is assigned to.

    Args:
        features: one ``[B, C, H_l, W_l]`` map per level.
        boxes: ``[B, K, 4]`` in input pixels.
        levels: ``[B, K]`` level index into ``features`` (see :func:`assign_levels`).
        strides: stride of each feature map.

    Returns:
        ``[B, K, C, output_size, output_size]``.
    """
    from torchvision.ops import roi_align

    b, k = boxes.shape[:2]
    c = features[0].shape[1]
    batch_idx = torch.arange(b, device=boxes.device, dtype=boxes.dtype).view(b, 1, 1).expand(b, k, 1)
    rois = torch.cat((batch_idx, boxes), dim=2).reshape(b * k, 5)
    flat_levels = levels.reshape(b * k)
    out = torch.zeros((b * k, c, output_size, output_size), dtype=features[0].dtype, device=boxes.device)
    for lvl, (feat, stride) in enumerate(zip(features, strides)):
        idx = torch.nonzero(flat_levels == lvl, as_tuple=False).squeeze(1)
        pooled = roi_align(
            feat, rois[idx], output_size, spatial_scale=1.0 / stride, sampling_ratio=sampling_ratio, aligned=aligned
        )
        out[idx] = pooled.to(out.dtype)
    return out.view(b, k, c, output_size, output_size)
