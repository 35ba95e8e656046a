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
