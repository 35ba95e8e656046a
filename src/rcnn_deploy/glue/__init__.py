"""The glue between the network pieces of a two-stage detector, in one place.

Everything that is *not* a convolution or a linear layer lives here: anchors, box coding, proposal selection
(top-k, NMS), level assignment and multi-level ROIAlign, the final per-class NMS and mask selection. The
deploy-form model (``rcnn_deploy.models.rcnn``) calls these functions, the fused ONNX export traces them (NMS
and ROIAlign become single nodes lowered per target, see ``export_hooks``), and the split-graph pipeline
(``split``: three inference backends as the network pieces of ``pipeline.two_stage``) calls them between
engines. All functions are batched with static shapes: padded outputs plus a validity mask or count, never a
Python branch on tensor values.
"""

from .anchors import cell_anchors, grid_anchors
from .boxes import box_area, clip_boxes, decode_boxes, encode_boxes, min_size_mask
from .nms import gather_rows, nms_padded
from .roi_align import PoolerParams, assign_levels, multiscale_roi_align
from .stages import (
    level_sizes,
    pooler_params,
    select_detections,
    select_masks,
    select_proposals,
    spec_anchors,
)

__all__ = [
    "PoolerParams",
    "assign_levels",
    "box_area",
    "cell_anchors",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "gather_rows",
    "grid_anchors",
    "level_sizes",
    "min_size_mask",
    "multiscale_roi_align",
    "nms_padded",
    "pooler_params",
    "select_detections",
    "select_masks",
    "select_proposals",
    "spec_anchors",
]
