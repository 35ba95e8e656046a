"""The fp16 rule, shared by the ONNX fp16 conversion (strongly typed builders) and the TensorRT 8.6/10 builder
(layer precision constraints): network layers may run in reduced precision, the glue stays fp32.

A node / layer belongs to the network when its name lies in a network module's scope. Names come from the
model's own module paths ("/backbone/body/layer1/...", "/net/roi_heads/box_head/fc6/Gemm"), not from
exporter-generated counters. Pure string logic: imported by the torch-free TensorRT builder on Python 3.9.
"""

from __future__ import annotations

# "head": the RPN head. The pipeline calls ``rpn.head`` directly, so its nodes are named "/net/head/..." (the
# RPN module itself never runs as a module and leaves no "rpn" scope); "rpn" covers graphs that do run it.
NETWORK_SCOPES = ("backbone", "rpn", "head", "box_head", "box_predictor", "mask_head", "mask_predictor")


def in_network_scope(name: str) -> bool:
    parts = name.split("/")
    return any(s in parts for s in NETWORK_SCOPES)


# The predictors: the last layer of each head, whose outputs are decoded (RPN objectness and box deltas,
# class logits and box deltas, mask logits). Optional rule (``fp32_predictors``): they cost a few percent of
# the FLOPs, and their fp16 rounding moves scores near the thresholds and box coordinates.
PREDICTOR_SCOPES = ("cls_logits", "bbox_pred", "box_predictor", "mask_predictor")


def in_predictor_scope(name: str) -> bool:
    """ONNX export suffixes repeated module calls (one per FPN level): "/net/head/cls_logits_3/Conv"."""
    for part in name.split("/"):
        base, _, tail = part.rpartition("_")
        if part in PREDICTOR_SCOPES or (tail.isdigit() and base in PREDICTOR_SCOPES):
            return True
    return False
