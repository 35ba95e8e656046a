"""Lowerings: how the glue's NMS and multi-level ROIAlign become ONNX nodes (see ``glue.export_hooks``).

``OnnxLowering``   standard ONNX: ``NonMaxSuppression`` (+ ScatterND/TopK to get static, score-sorted slots)
                   and one ``RoiAlign`` per FPN level merged with ``Where``. Runs in ONNX Runtime; TensorRT
                   imports NonMaxSuppression as INMSLayer.
``TensorLowering`` plain tensor ops only (``glue.formulations``): exact greedy NMS as an IoU-matrix fixpoint
                   ``Loop`` and ROIAlign as gathers; TensorRT-RTX, TensorRT 8.6-11 without plugins, ORT.
``PluginLowering`` TensorRT plugins, as NVIDIA's Detectron2 sample: ``EfficientNMS_TRT`` and
                   ``PyramidROIAlign_TRT`` (TensorRT 8.6-10; deprecated in 10.12 / 11.0). Nodes carry the
                   domain ``trt.plugins`` so ``onnx.checker`` accepts the graph; TensorRT finds plugins by op type.

Each method receives the TorchScript graph context ``g`` and returns values with exactly the eager outputs'
meaning (``glue.nms.nms_eager`` / ``glue.roi_align._roi_align_eager``).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch.onnx import symbolic_helper as sh

from ..glue.roi_align import PoolerParams
from .surgery import PLACEHOLDER_DOMAIN

PLUGIN_DOMAIN = "trt.plugins"
_INVALID_SCORE = -1.0e9

# The TorchScript exporter's graph context and the values of its graph (torch.onnx's GraphContext, whose private
# module moves between torch releases, and torch._C.Value): typed loosely.
GraphContext = Any
Value = Any


def _const(g: GraphContext, value: Any, dtype: Optional[torch.dtype] = None) -> Value:
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _set_type(v: Value, dtype: torch.dtype, sizes: Sequence[Optional[int]]) -> None:
    """Give a custom node's output its dtype and shape (torch cannot infer them for plugins)."""
    v.setType(v.type().with_dtype(dtype).with_sizes(sizes))


def _sizes(v: Value) -> List[Optional[int]]:
    sizes = sh._get_tensor_sizes(v)
    if sizes is None:
        raise RuntimeError("exporter lost a tensor's rank; export with a fixed input height and width")
    return sizes


class OnnxLowering:
    name = "onnx"
    custom_domain = None  # standard ops only

    def nms(
        self,
        g: GraphContext,
        boxes: Value,
        scores: Value,
        valid: Value,
        iou_threshold: float,
        max_out: int,
        score_threshold: float,
        shape: Tuple[int, int],
    ) -> Tuple[Value, Value, Value, Value]:
        del score_threshold  # already folded into ``valid``
        n, groups = shape
        ng = n * groups
        k = min(max_out, ng)
        i64 = torch.int64
        # candidates flattened to [B, N*G] (group fastest), boxes expanded when shared by all groups
        score_shape = g.op("Shape", scores)
        box_shape = g.op("Concat", score_shape, _const(g, [4], i64), axis_i=0)
        flat_boxes = g.op("Reshape", g.op("Expand", boxes, box_shape), _const(g, [0, ng, 4], i64))
        flat_scores = g.op("Reshape", scores, _const(g, [0, ng], i64))
        flat_valid = g.op("Reshape", valid, _const(g, [0, ng], i64))
        group_ids = torch.arange(groups, dtype=torch.float32).repeat(n)
        # torchvision's coordinate trick: offset each group's boxes so different groups never overlap
        max_coord = g.op("ReduceMax", flat_boxes, keepdims_i=0)
        offsets = g.op("Mul", _const(g, group_ids.view(1, ng, 1)), g.op("Add", max_coord, _const(g, 1.0)))
        nms_boxes = g.op("Add", flat_boxes, offsets)
        masked = g.op("Where", flat_valid, flat_scores, _const(g, _INVALID_SCORE))
        selected = g.op(
            "NonMaxSuppression",
            nms_boxes,
            g.op("Unsqueeze", masked, _const(g, [1], i64)),
            _const(g, [max_out], i64),
            _const(g, [iou_threshold], torch.float32),
            _const(g, [_INVALID_SCORE / 2], torch.float32),
            center_point_box_i=0,
        )
        # selected [M, 3] = (batch, class=0, candidate) -> kept mask [B, N*G] -> TopK into K sorted slots
        index = g.op("Gather", selected, _const(g, [0, 2], i64), axis_i=1)
        ones = g.op(
            "ConstantOfShape",
            g.op("Slice", g.op("Shape", selected), _const(g, [0], i64), _const(g, [1], i64)),
            value_t=torch.tensor([1.0]),
        )
        kept = g.op("ScatterND", g.op("Mul", masked, _const(g, 0.0)), index, ones)
        ranked = g.op("Where", g.op("Greater", kept, _const(g, 0.5)), masked, _const(g, 2 * _INVALID_SCORE))
        top_scores, top_idx = g.op("TopK", ranked, _const(g, [k], i64), axis_i=1, largest_i=1, sorted_i=1, outputs=2)
        count = g.op("Cast", g.op("ReduceSum", kept, _const(g, [1], i64), keepdims_i=0), to_i=7)  # int64
        count = g.op("Min", count, _const(g, k, i64))
        slot_valid = g.op("Less", _const(g, torch.arange(k).view(1, k)), g.op("Unsqueeze", count, _const(g, [1], i64)))
        slot_f = g.op("Cast", slot_valid, to_i=1)
        box_idx = g.op(
            "Expand",
            g.op("Unsqueeze", top_idx, _const(g, [2], i64)),
            g.op("Concat", g.op("Shape", top_idx), _const(g, [4], i64), axis_i=0),
        )
        out_boxes = g.op(
            "Mul", g.op("GatherElements", flat_boxes, box_idx, axis_i=1), g.op("Unsqueeze", slot_f, _const(g, [2], i64))
        )
        out_scores = g.op("Mul", g.op("GatherElements", flat_scores, top_idx, axis_i=1), slot_f)
        grp = g.op("Mod", top_idx, _const(g, groups, i64))
        out_groups = g.op("Mul", grp, g.op("Cast", slot_valid, to_i=7))
        if k < max_out:  # fewer candidates than slots: pad to the static K
            pad = max_out - k
            out_boxes = g.op("Pad", out_boxes, _const(g, [0, 0, 0, 0, pad, 0], i64))
            out_scores = g.op("Pad", out_scores, _const(g, [0, 0, 0, pad], i64))
            out_groups = g.op("Pad", out_groups, _const(g, [0, 0, 0, pad], i64))
        return out_boxes, out_scores, out_groups, count

    def roi_align(
        self, g: GraphContext, boxes: Value, levels: Value, p: PoolerParams, features: Sequence[Value]
    ) -> Value:
        i64 = torch.int64
        rois = g.op("Reshape", boxes, _const(g, [-1, 4], i64))
        b = g.op("Slice", g.op("Shape", boxes), _const(g, [0], i64), _const(g, [1], i64))
        k = g.op("Slice", g.op("Shape", boxes), _const(g, [1], i64), _const(g, [2], i64))
        bk = g.op("Concat", b, k, axis_i=0)
        batch_range = g.op("Range", _const(g, 0, i64), g.op("Squeeze", b, _const(g, [0], i64)), _const(g, 1, i64))
        batch_idx = g.op(
            "Reshape", g.op("Expand", g.op("Unsqueeze", batch_range, _const(g, [1], i64)), bk), _const(g, [-1], i64)
        )
        flat_levels = g.op("Reshape", levels, _const(g, [-1, 1, 1, 1], i64))
        mode = "half_pixel" if p.aligned else "output_half_pixel"
        out = None
        for lvl, (feat, stride) in enumerate(zip(features, p.strides)):
            pooled = g.op(
                "RoiAlign",
                feat,
                rois,
                batch_idx,
                coordinate_transformation_mode_s=mode,
                mode_s="avg",
                output_height_i=p.output_size,
                output_width_i=p.output_size,
                sampling_ratio_i=p.sampling_ratio,
                spatial_scale_f=1.0 / stride,
            )
            if out is None:
                out = pooled
            else:
                out = g.op("Where", g.op("Equal", flat_levels, _const(g, lvl, i64)), pooled, out)
        c = _sizes(features[0])[1]
        shape = g.op("Concat", bk, _const(g, [c, p.output_size, p.output_size], i64), axis_i=0)
        return g.op("Reshape", out, shape)


class PluginLowering:
    """TensorRT plugins (EfficientNMS_TRT, PyramidROIAlign_TRT), configured to the flavour's semantics as far
    as the plugins allow; see docs/notes/trt_plugins.md for the remaining differences."""

    name = "plugin"
    custom_domain = PLUGIN_DOMAIN

    def __init__(self, image_hw: tuple) -> None:
        self.image_hw = image_hw

    def nms(
        self,
        g: GraphContext,
        boxes: Value,
        scores: Value,
        valid: Value,
        iou_threshold: float,
        max_out: int,
        score_threshold: float,
        shape: Tuple[int, int],
    ) -> Tuple[Value, Value, Value, Value]:
        del shape
        i64 = torch.int64
        masked = g.op("Where", valid, scores, _const(g, -1.0))
        thr = max(float(score_threshold), 0.0)
        num, det_boxes, det_scores, det_classes = g.op(
            f"{PLUGIN_DOMAIN}::EfficientNMS_TRT",
            boxes,
            masked,
            score_threshold_f=thr,
            iou_threshold_f=float(iou_threshold),
            max_output_boxes_i=int(max_out),
            background_class_i=-1,
            score_activation_i=0,
            class_agnostic_i=0,
            box_coding_i=0,
            plugin_version_s="1",
            outputs=4,
        )
        _set_type(num, torch.int32, [None, 1])
        _set_type(det_boxes, torch.float32, [None, max_out, 4])
        _set_type(det_scores, torch.float32, [None, max_out])
        _set_type(det_classes, torch.int32, [None, max_out])
        count = g.op("Cast", g.op("Reshape", num, _const(g, [-1], i64)), to_i=7)
        groups = g.op("Cast", det_classes, to_i=7)  # padded slots hold class 0, like ours
        return det_boxes, det_scores, groups, count

    def roi_align(
        self, g: GraphContext, boxes: Value, levels: Value, p: PoolerParams, features: Sequence[Value]
    ) -> Value:
        del levels  # the plugin assigns levels itself
        pooled = g.op(
            f"{PLUGIN_DOMAIN}::PyramidROIAlign_TRT",
            boxes,
            *features,
            fpn_scale_i=int(p.canonical_scale),
            pooled_size_i=p.output_size,
            image_size_i=list(self.image_hw),
            roi_coords_absolute_i=1,
            roi_coords_swap_i=0,
            roi_coords_plusone_i=0,
            roi_coords_transform_i=2 if p.aligned else 1,
            sampling_ratio_i=p.sampling_ratio,
            legacy_i=0,
            plugin_version_s="1",
        )
        c = _sizes(features[0])[1]
        _set_type(pooled, torch.float32, [None, _sizes(boxes)[1], c, p.output_size, p.output_size])
        return pooled


class TensorLowering:
    """No NMS op, no RoiAlign op: the glue traces ``glue.formulations`` (exact greedy NMS as an IoU-matrix
    fixpoint Loop, ROIAlign as gathers). For TensorRT-RTX, TensorRT 8.6 without plugins, and ONNX Runtime."""

    name = "tensor"
    custom_domain = PLACEHOLDER_DOMAIN  # FixpointKeep, expanded into a Loop by export.surgery
    traced = True

    def __init__(self, max_candidates: int = 3840) -> None:
        self.max_candidates = max_candidates


def make_lowering(nms: str, image_hw: tuple) -> Union[OnnxLowering, PluginLowering, TensorLowering]:
    """The lowering for an export's ``--nms`` value."""
    if nms == "plugin":
        return PluginLowering(image_hw)
    return {"onnx": OnnxLowering, "tensor": TensorLowering}[nms]()
