"""FPN level assignment and multi-level ROIAlign.

torchvision ``MultiScaleRoIAlign``/``LevelMapper``: lvl = floor(4 + log2(sqrt(area) / 224) + 1e-6), ROIAlign
with ``aligned=False`` and ``sampling_ratio=2``. Detectron2 ``ROIPooler``: lvl = floor(4 + log2(sqrt(area) /
224 + 2.2e-16)), ROIAlignV2 (``aligned=True``, ``sampling_ratio=0``). Levels are clamped to [2, 5].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
from torch import Tensor

from . import export_hooks, roi_align_triton, sync_free
from .boxes import box_area


@dataclass(frozen=True)
class PoolerParams:
    """Everything that defines one multi-level ROIAlign (hashable, so it can be a node attribute set)."""

    output_size: int
    sampling_ratio: int
    aligned: bool
    strides: Tuple[int, ...]  # of the pooled levels, finest first
    min_level: int
    canonical_scale: float
    canonical_level: int
    eps: float
    eps_inside_log: bool

    @property
    def max_level(self) -> int:
        return self.min_level + len(self.strides) - 1


def assign_levels(boxes: Tensor, p: PoolerParams) -> Tensor:
    """FPN level index (0 = ``min_level``) of each box ``[..., 4]`` -> ``[...]`` int64."""
    s = torch.sqrt(box_area(boxes))
    if p.eps_inside_log:
        lvl = torch.floor(p.canonical_level + torch.log2(s / p.canonical_scale + p.eps))
    else:
        lvl = torch.floor(p.canonical_level + torch.log2(s / p.canonical_scale) + p.eps)
    return torch.clamp(lvl, min=p.min_level, max=p.max_level).to(torch.int64) - p.min_level


def multiscale_roi_align(features: Sequence[Tensor], boxes: Tensor, p: PoolerParams) -> Tensor:
    """Pool each box from the FPN level it is assigned to.

    Args:
        features: one ``[B, C, H_l, W_l]`` map per pooled level (finest first).
        boxes: ``[B, K, 4]`` in input pixels.

    Returns:
        ``[B, K, C, output_size, output_size]``.
    """
    feats = tuple(features[: len(p.strides)])
    if torch.onnx.is_in_onnx_export():
        levels = assign_levels(boxes, p)
        if getattr(export_hooks.active(), "traced", False):
            from .formulations import roi_align_gather

            return roi_align_gather(feats, boxes, levels, p)
        # levels are traced as ordinary ops; a lowering that assigns levels itself (a plugin) ignores them
        return export_hooks.RoIAlignNode.apply(boxes, levels, p, *feats)
    if sync_free.active() is not None:
        triton = SYNC_FREE_ROI_ALIGN.startswith("triton")
        if triton and roi_align_triton.available(boxes.device):
            levels = assign_levels(boxes, p)
            args = (p.strides, p.output_size, p.sampling_ratio, p.aligned, SYNC_FREE_ROI_ALIGN == "triton_eager")
            return roi_align_triton.multiscale_roi_align(feats, boxes, levels, *args)
        if SYNC_FREE_ROI_ALIGN == "stacked" or triton:  # Triton where it cannot run (a CPU tensor, no Triton)
            return _roi_align_stacked(feats, boxes, p)
        return _roi_align_eager(feats, boxes, p, static=True)
    from .emulate import rounds, to_fp16

    if rounds("roi_boxes"):  # an fp16 ROIAlign plugin's view of the boxes, emulated (glue.emulate.fp16_glue)
        boxes = to_fp16(boxes)
    return _roi_align_eager(feats, boxes, p)


#: how the sync-free forward (a CUDA graph, no host synchronisation) pools: "stacked" (one ``roi_align`` over the
#: levels stacked as images, :func:`_roi_align_stacked`), "levels" (every box on every level, then a select:
#: about L times the pooling work), "triton" (one Triton kernel reading each box's own level in place,
#: :mod:`rcnn_deploy.glue.roi_align_triton`; "stacked" where it cannot run) or "triton_eager" (the same kernel,
#: launched from Python outside a torch.compile graph). A module setting so that a benchmark can time each in one
#: process. The default since session 19 is "triton_eager" (run 26: compiled fp16 forward 29.5-30.3 ms per batch
#: of 8 against 35.2 stacked, 5.7 against 6.3 ms at batch 1; the fp32 graph found all 4533 detections of the eager
#: model; "triton", the kernel inside the compiled graph, failed torch.compile's kernel analysis there and its fix
#: has not run on a GPU).
SYNC_FREE_ROI_ALIGNS = ("stacked", "levels", "triton", "triton_eager")
SYNC_FREE_ROI_ALIGN = "triton_eager"


def _roi_align_stacked(features: Sequence[Tensor], boxes: Tensor, p: PoolerParams) -> Tensor:
    """Multi-level ROIAlign in one ``roi_align`` call and without ``nonzero``: the L levels become L "images" of
    the finest level's size (``[B * L, C, H_0, W_0]``, each coarser level edge-replicated to that size) and each
    box is pooled once, from image ``b * L + level``, its coordinates scaled to its level beforehand (the strides
    are powers of two: the same float products the kernel makes with ``spatial_scale``). Past a level's last row
    or column the kernel reads the replicated edge where, at the level's own size, it clamps to that edge: the
    same values up to rounding. Samples beyond that edge plus one (which the kernel zeroes) need a box past the
    image, which the pipeline clips, or one thinner than a cell of its level at the edge; those read the edge."""
    import torch.nn.functional as F
    from torchvision.ops import roi_align

    b, k = boxes.shape[:2]
    c = features[0].shape[1]
    n_lv = len(features)
    h0, w0 = int(features[0].shape[2]), int(features[0].shape[3])
    stacked = features[0].new_empty((b, n_lv, c, h0, w0))
    for lvl, feat in enumerate(features):
        h, w = int(feat.shape[2]), int(feat.shape[3])
        stacked[:, lvl] = feat if (h, w) == (h0, w0) else F.pad(feat, (0, w0 - w, 0, h0 - h), mode="replicate")
    levels = assign_levels(boxes, p)  # [B, K]
    scale = torch.full_like(boxes[..., 0], 1.0 / p.strides[0])  # no host tensor: a CUDA graph captures this
    for lvl, stride in enumerate(p.strides[1:], 1):
        scale = torch.where(levels == lvl, torch.full_like(scale, 1.0 / stride), scale)
    scaled = boxes * scale.unsqueeze(-1)
    image = torch.arange(b, device=boxes.device).view(b, 1) * n_lv + levels
    rois = torch.cat((image.to(boxes.dtype).unsqueeze(-1), scaled), dim=2).reshape(b * k, 5)
    pooled = roi_align(stacked.view(b * n_lv, c, h0, w0), rois, p.output_size, 1.0, p.sampling_ratio, p.aligned)
    return pooled.view(b, k, c, p.output_size, p.output_size)


def _roi_align_eager(features: Sequence[Tensor], boxes: Tensor, p: PoolerParams, static: bool = False) -> Tensor:
    """torchvision's ``roi_align`` kernel per level, each box pooled from its own level. ``static``: without
    ``nonzero`` (a CUDA graph can capture it): every box is pooled on every level and its own level kept with
    ``torch.where``, the same numbers for about L times the pooling work."""
    from torchvision.ops import roi_align

    b, k = boxes.shape[:2]
    c = features[0].shape[1]
    s = p.output_size
    batch_idx = torch.arange(b, device=boxes.device, dtype=boxes.dtype).view(b, 1, 1).expand(b, k, 1)
    rois = torch.cat((batch_idx, boxes), dim=2).reshape(b * k, 5)
    levels = assign_levels(boxes, p).reshape(b * k)
    out = torch.zeros((b * k, c, s, s), dtype=features[0].dtype, device=boxes.device)
    for lvl, (feat, stride) in enumerate(zip(features, p.strides)):
        if static:
            pooled = roi_align(feat, rois, s, 1.0 / stride, p.sampling_ratio, p.aligned)
            out = torch.where((levels == lvl).view(-1, 1, 1, 1), pooled.to(out.dtype), out)
            continue
        idx = torch.nonzero(levels == lvl, as_tuple=False).squeeze(1)
        pooled = roi_align(feat, rois[idx], s, 1.0 / stride, p.sampling_ratio, p.aligned)
        out[idx] = pooled.to(out.dtype)
    return out.view(b, k, c, s, s)
