"""The selection stages of a two-stage detector, batched with static shapes, parameterised by a ModelSpec.

``spec_anchors``      anchors of every level for an input size
``rpn_nms_inputs``    RPN outputs      -> the RPN's NMS call (:class:`RpnNms`: candidates, scores, parameters)
``select_proposals``  RPN outputs      -> top ``rpn_post_nms_top_n`` proposals per image (padded + valid mask)
``pooler_params``     the box / mask head's multi-level ROIAlign
``select_detections`` box-head outputs -> top ``detections_per_img`` detections per image (padded + count)
``select_masks``      mask logits      -> the detected class's mask probabilities
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelSpec
from .anchors import StrideLike, grid_anchors
from .boxes import clip_boxes, decode_boxes, min_size_mask
from .nms import gather_rows, nms_padded
from .roi_align import PoolerParams


def level_sizes(spec: ModelSpec, image_hw: Tuple[int, int]) -> List[Tuple[int, int]]:
    """FPN feature sizes for an input size: ceil(size / stride) (P2-P5 divide exactly for multiples of 32;
    P6 is P5 max-pooled with stride 2, i.e. ceil(size / 64))."""
    return [(-(-image_hw[0] // s), -(-image_hw[1] // s)) for s in spec.anchor_strides]


def spec_anchors(spec: ModelSpec, image_hw: Tuple[int, int], device: torch.device | None = None) -> List[Tensor]:
    """Anchors ``[H_l * W_l * A, 4]`` of every level for an input size.

    torchvision's AnchorGenerator uses the per-axis stride ``image_size // grid_size`` (61 instead of 64 for P6
    at 800 px); Detectron2 uses the nominal stride.
    """
    sizes = level_sizes(spec, image_hw)
    if spec.flavour == "torchvision":
        strides: List[StrideLike] = [(image_hw[0] // h, image_hw[1] // w) for h, w in sizes]
    else:
        strides = list(spec.anchor_strides)
    return grid_anchors(
        sizes, strides, spec.anchor_sizes, spec.aspect_ratios, spec.anchor_round, spec.anchor_offset, device
    )


class RpnNms(NamedTuple):
    """The RPN's NMS call: every level's top candidates, scored and valid only in their own level's group."""

    boxes: Tensor  # [B, N, 1, 4], shared by the groups
    scores: Tensor  # [B, N, levels] (sigmoid), zero outside a candidate's level
    valid: Tensor  # [B, N, levels] bool
    iou_threshold: float
    max_out: int  # rpn_post_nms_top_n
    score_threshold: float
    group_blocks: List[int]  # candidates per level, in order

    def run(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """:func:`nms_padded` on these arguments (what :func:`select_proposals` does)."""
        return nms_padded(
            self.boxes,
            self.scores,
            self.valid,
            self.iou_threshold,
            self.max_out,
            self.score_threshold,
            group_blocks=self.group_blocks,
        )


def rpn_nms_inputs(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_hw: Tuple[int, int],
    spec: ModelSpec,
) -> RpnNms:
    """RPN post-processing up to its NMS, as torchvision ``RegionProposalNetwork.filter_proposals`` and
    Detectron2 ``find_top_rpn_proposals``: per-level top-k on the logits, decode, clip, drop small / non-finite
    boxes. Arguments as :func:`select_proposals`."""
    boxes_l: List[Tensor] = []
    logits_l: List[Tensor] = []
    onehot_l: List[Tensor] = []
    n_levels = len(objectness)
    for lvl, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
        k = min(spec.rpn_pre_nms_top_n, obj.shape[1])
        top, idx = obj.topk(k, dim=1)
        boxes_l.append(decode_boxes(gather_rows(dlt, idx), anc[idx], spec.rpn_box_weights, spec.box_scale_clamp))
        logits_l.append(top)
        onehot = torch.zeros(k, n_levels, dtype=torch.bool, device=obj.device)
        onehot[:, lvl] = True
        onehot_l.append(onehot)
    h, w = image_hw
    boxes = clip_boxes(torch.cat(boxes_l, dim=1), h, w)
    logits = torch.cat(logits_l, dim=1)
    scores = torch.sigmoid(logits)
    valid = (
        min_size_mask(boxes, spec.rpn_min_size, spec.rpn_min_size_inclusive)
        & (scores >= spec.rpn_score_thresh)
        & torch.isfinite(boxes).all(dim=-1)
        & torch.isfinite(logits)
    )
    # group = FPN level: scores/valid laid out [B, N, levels] with each candidate in its level's column
    level_mask = torch.cat(onehot_l, dim=0).unsqueeze(0)
    return RpnNms(
        boxes.unsqueeze(2),
        scores.unsqueeze(2) * level_mask,
        valid.unsqueeze(2) & level_mask,
        spec.rpn_nms_thresh,
        spec.rpn_post_nms_top_n,
        spec.rpn_score_thresh,
        [int(x.shape[1]) for x in logits_l],
    )


def select_proposals(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_hw: Tuple[int, int],
    spec: ModelSpec,
) -> Tuple[Tensor, Tensor, Tensor]:
    """RPN post-processing, as torchvision ``RegionProposalNetwork.filter_proposals`` and Detectron2
    ``find_top_rpn_proposals``: :func:`rpn_nms_inputs`, then NMS per level, keep the best
    ``rpn_post_nms_top_n`` over all levels.

    Args:
        objectness: per level ``[B, N_l]`` logits in (H, W, A) order.
        deltas: per level ``[B, N_l, 4]``.
        anchors: per level ``[N_l, 4]``.

    Returns:
        ``proposals [B, P, 4]``, ``scores [B, P]`` (sigmoid), ``valid [B, P]`` bool; P = rpn_post_nms_top_n.
    """
    props, prop_scores, _, count = rpn_nms_inputs(objectness, deltas, anchors, image_hw, spec).run()
    slot_valid = torch.arange(props.shape[1], device=props.device).view(1, -1) < count.view(-1, 1)
    return props, prop_scores, slot_valid


def pooler_params(spec: ModelSpec, head: str) -> PoolerParams:
    """The multi-level ROIAlign of the ``"box"`` or ``"mask"`` head."""
    n = spec.roi_levels[1] - spec.roi_levels[0] + 1
    size, ratio = (
        (spec.box_roi_size, spec.box_sampling_ratio)
        if head == "box"
        else (spec.mask_roi_size, spec.mask_sampling_ratio)
    )
    return PoolerParams(
        output_size=size,
        sampling_ratio=ratio,
        aligned=spec.roi_aligned,
        strides=tuple(spec.anchor_strides[:n]),
        min_level=spec.roi_levels[0],
        canonical_scale=spec.canonical_scale,
        canonical_level=spec.canonical_level,
        eps=spec.level_eps,
        eps_inside_log=spec.level_eps_inside_log,
    )


def select_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: Tensor,
    proposal_valid: Tensor,
    image_hw: Tuple[int, int],
    spec: ModelSpec,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Box-head post-processing, as torchvision ``RoIHeads.postprocess_detections`` and Detectron2
    ``fast_rcnn_inference``: softmax, class-specific decode, clip, score threshold, (torchvision) small-box
    removal, NMS per class, keep the best ``detections_per_img``.

    Args:
        class_logits: ``[B, P, C]`` (background at 0).
        box_regression: ``[B, P, 4 C]``.
        proposals: ``[B, P, 4]``; proposal_valid: ``[B, P]``.

    Returns:
        ``boxes [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]`` int64 (model class index, 0 in padded
        slots), ``count [B]``; K = detections_per_img.
    """
    b, p, c = class_logits.shape
    probs = F.softmax(class_logits, dim=-1)
    boxes = decode_boxes(
        box_regression.reshape(b, p, c, 4), proposals.unsqueeze(2), spec.box_weights, spec.box_scale_clamp
    )
    # Detectron2 drops a proposal whose predicted boxes or scores are not all finite (before clipping);
    # torchvision has no such check but never produces non-finite values from finite weights.
    finite = torch.isfinite(boxes).all(dim=-1).all(dim=-1) & torch.isfinite(probs).all(dim=-1)
    h, w = image_hw
    boxes = clip_boxes(boxes, h, w)[:, :, 1:]  # [B, P, C-1, 4]
    scores = probs[:, :, 1:]  # [B, P, C-1]
    valid = (scores > spec.box_score_thresh) & (proposal_valid & finite).unsqueeze(2)
    if spec.box_min_size > 0:
        valid = valid & min_size_mask(boxes, spec.box_min_size, inclusive=True)
    out_boxes, out_scores, groups, count = nms_padded(
        boxes, scores, valid, spec.box_nms_thresh, spec.detections_per_img, spec.box_score_thresh
    )
    slot_valid = torch.arange(out_boxes.shape[1], device=boxes.device).view(1, -1) < count.view(-1, 1)
    return out_boxes, out_scores, (groups + 1) * slot_valid, count


def select_masks(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """``mask_logits [B, K, C, M, M]`` and model class ``classes [B, K]`` -> probabilities ``[B, K, M, M]``."""
    b, k, _, m, _ = mask_logits.shape
    idx = classes.view(b, k, 1, 1, 1).expand(b, k, 1, m, m)
    return torch.sigmoid(torch.gather(mask_logits, 2, idx)[:, :, 0])
