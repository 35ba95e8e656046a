"""The three selection stages of a two-stage detector, batched with static shapes.

``select_proposals``  RPN outputs      -> top ``rpn_post_nms_top_n`` proposals per image (padded + valid mask)
``select_detections`` box-head outputs -> top ``detections_per_img`` detections per image (padded + count)
``select_masks``      mask logits      -> the detected class's mask probabilities
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelSpec
from .boxes import clip_boxes, decode_boxes, min_size_mask
from .nms import batched_nms_padded, gather_rows


def select_proposals(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_hw: Tuple[int, int],
    spec: ModelSpec,
) -> Tuple[Tensor, Tensor, Tensor]:
    """RPN post-processing, as torchvision ``RegionProposalNetwork.filter_proposals`` and Detectron2
    ``find_top_rpn_proposals``: per-level top-k on the logits, decode, clip, drop small / non-finite boxes,
    NMS per level, keep the best ``rpn_post_nms_top_n`` over all levels.

    Args:
        objectness: per level ``[B, N_l]`` logits in (H, W, A) order.
        deltas: per level ``[B, N_l, 4]``.
        anchors: per level ``[N_l, 4]``.

    Returns:
        ``proposals [B, P, 4]``, ``scores [B, P]`` (sigmoid), ``valid [B, P]`` bool; P = rpn_post_nms_top_n.
    """
    boxes_l: List[Tensor] = []
    logits_l: List[Tensor] = []
    level_l: List[Tensor] = []
    for lvl, (obj, dlt, anc) in enumerate(zip(objectness, deltas, anchors)):
        k = min(spec.rpn_pre_nms_top_n, obj.shape[1])
        top, idx = obj.topk(k, dim=1)
        d = gather_rows(dlt, idx)
        a = anc[idx]
        boxes_l.append(decode_boxes(d, a, spec.rpn_box_weights, spec.box_scale_clamp))
        logits_l.append(top)
        level_l.append(torch.full_like(idx, lvl))
    h, w = image_hw
    boxes = clip_boxes(torch.cat(boxes_l, dim=1), h, w)
    logits = torch.cat(logits_l, dim=1)
    levels = torch.cat(level_l, dim=1)
    scores = torch.sigmoid(logits)
    valid = (
        min_size_mask(boxes, spec.rpn_min_size, spec.rpn_min_size_inclusive)
        & (scores >= spec.rpn_score_thresh)
        & torch.isfinite(boxes).all(dim=-1)
        & torch.isfinite(logits)
    )
    p = spec.rpn_post_nms_top_n
    keep, count = batched_nms_padded(boxes, scores, levels, valid, spec.rpn_nms_thresh, p)
    slot_valid = torch.arange(p, device=boxes.device).view(1, -1) < count.view(-1, 1)
    proposals = gather_rows(boxes, keep) * slot_valid.unsqueeze(-1)
    return proposals, gather_rows(scores, keep) * slot_valid, slot_valid


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
        ``boxes [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]`` (model class index, 0 in padded slots),
        ``count [B]``; K = detections_per_img.
    """
    b, p, c = class_logits.shape
    probs = F.softmax(class_logits, dim=-1)
    boxes = decode_boxes(
        box_regression.reshape(b, p, c, 4), proposals.unsqueeze(2), spec.box_weights, spec.box_scale_clamp
    )
    h, w = image_hw
    boxes = clip_boxes(boxes, h, w)[:, :, 1:].reshape(b, p * (c - 1), 4)
    scores = probs[:, :, 1:].reshape(b, p * (c - 1))
    labels = torch.arange(1, c, device=class_logits.device).view(1, 1, c - 1).expand(b, p, c - 1)
    labels = labels.reshape(b, p * (c - 1))
    valid = (scores > spec.box_score_thresh) & proposal_valid.unsqueeze(2).expand(b, p, c - 1).reshape(b, -1)
    if spec.box_min_size > 0:
        valid = valid & min_size_mask(boxes, spec.box_min_size, inclusive=True)
    k = spec.detections_per_img
    keep, count = batched_nms_padded(boxes, scores, labels, valid, spec.box_nms_thresh, k)
    slot_valid = torch.arange(k, device=boxes.device).view(1, -1) < count.view(-1, 1)
    out_boxes = gather_rows(boxes, keep) * slot_valid.unsqueeze(-1)
    out_scores = gather_rows(scores, keep) * slot_valid
    out_classes = gather_rows(labels, keep) * slot_valid
    return out_boxes, out_scores, out_classes, count


def select_masks(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """``mask_logits [B, K, C, M, M]`` and model class ``classes [B, K]`` -> probabilities ``[B, K, M, M]``."""
    b, k, _, m, _ = mask_logits.shape
    idx = classes.view(b, k, 1, 1, 1).expand(b, k, 1, m, m)
    return torch.sigmoid(torch.gather(mask_logits, 2, idx).squeeze(2))
