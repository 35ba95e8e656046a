"""The two-stage detector as one function of three network pieces.

``two_stage(net, images, spec)`` runs: ``net.features`` (backbone + FPN + RPN head) -> proposal selection ->
multi-level ROIAlign -> ``net.box_head`` -> detection selection -> ROIAlign -> ``net.mask_head``. The network
pieces can be torch modules (the deploy model, whose ``forward`` is exactly this function, so the fused
export traces it) or inference backends running the split graphs (ONNX Runtime, TensorRT), so the split
runtime and the deploy model cannot drift apart.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Protocol, Tuple

import torch
from torch import Tensor

from ..config import ModelSpec
from .roi_align import multiscale_roi_align
from .stages import level_sizes, pooler_params, select_detections, select_proposals, spec_anchors

OUTPUT_NAMES = ("num_detections", "boxes", "scores", "classes", "masks")


class NetworkPieces(Protocol):
    def features(self, images: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        """``images [B,3,H,W]`` RGB 0-255 -> (FPN maps P2..P5, objectness ``[B, N]``, deltas ``[B, N, 4]``)."""

    def box_head(self, box_features: Tensor) -> Tuple[Tensor, Tensor]:
        """``[R, 256, 7, 7]`` -> (class_logits ``[R, C]``, box_regression ``[R, 4C]``)."""

    def mask_head(self, mask_features: Tensor, classes: Tensor) -> Tensor:
        """``[R, 256, 14, 14]``, model class ``[R]`` -> class-selected mask probabilities ``[R, 28, 28]``."""


def split_levels(x: Tensor, spec: ModelSpec, image_hw: Tuple[int, int]) -> List[Tensor]:
    """Split ``[B, N, ...]`` RPN outputs (levels concatenated, (H, W, A) order) into per-level tensors."""
    a = spec.num_anchors_per_location
    counts = [h * w * a for h, w in level_sizes(spec, image_hw)]
    return list(torch.split(x, counts, dim=1))


_LABEL_IDS: Dict[Tuple[Tuple[int, ...], str], Tensor] = {}


def _label_ids(ids: Tuple[int, ...], device: torch.device) -> Tensor:
    """The label of each model class as a tensor, made once per device: a host-to-device copy cannot be part
    of a CUDA graph capture, so the capture finds it made by the warm-up runs. Traced exports get a constant."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return torch.tensor(ids, dtype=torch.int32, device=device)
    key = (tuple(ids), str(device))
    if key not in _LABEL_IDS:
        _LABEL_IDS[key] = torch.tensor(ids, dtype=torch.int32, device=device)
    return _LABEL_IDS[key]


def two_stage(
    net: NetworkPieces, images: Tensor, spec: ModelSpec, anchors: List[Tensor] | None = None
) -> Dict[str, Tensor]:
    """Run the whole detector; returns the padded outputs of :data:`OUTPUT_NAMES` (``masks`` for Mask R-CNN)."""
    image_hw = (int(images.shape[-2]), int(images.shape[-1]))
    feats, objectness, deltas = net.features(images)
    if anchors is None:
        anchors = spec_anchors(spec, image_hw, objectness.device)
    proposals, _, valid = select_proposals(
        split_levels(objectness, spec, image_hw),
        split_levels(deltas, spec, image_hw),
        anchors,
        image_hw,
        spec,
    )
    b, p = proposals.shape[:2]
    box_feats = multiscale_roi_align(feats, proposals, pooler_params(spec, "box"))
    logits, reg = net.box_head(box_feats.flatten(0, 1))
    boxes, scores, classes, count = select_detections(
        logits.view(b, p, -1), reg.view(b, p, -1), proposals, valid, image_hw, spec
    )
    k = boxes.shape[1]
    slot_valid = torch.arange(k, device=boxes.device).view(1, -1) < count.view(-1, 1)
    label_ids = _label_ids(spec.label_ids, boxes.device)
    labels = torch.where(slot_valid, label_ids[classes], torch.full_like(classes, -1, dtype=torch.int32))
    out: Dict[str, Tensor] = OrderedDict(
        num_detections=count.view(-1, 1).to(torch.int32),
        boxes=boxes,
        scores=scores,
        classes=labels.to(torch.int32),
    )
    if spec.masks:
        mask_feats = multiscale_roi_align(feats, boxes, pooler_params(spec, "mask"))
        masks = net.mask_head(mask_feats.flatten(0, 1), classes.flatten())
        out["masks"] = masks.view(b, k, masks.shape[-2], masks.shape[-1]) * slot_valid.view(b, k, 1, 1)
    return out
