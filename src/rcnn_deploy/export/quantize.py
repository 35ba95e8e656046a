"""Explicit int8: a Q/DQ graph made by nvidia-modelopt's ONNX post-training quantization.

Strongly typed builders (TensorRT 11, TensorRT-RTX) take precision from the graph, so int8 there means
QuantizeLinear/DequantizeLinear pairs in the ONNX; TensorRT 8.6/10 build the same graph as explicit
quantization (no calibrator). Calibration runs in ONNX Runtime on the CPU over images that went through the
model's own preprocessing (``rcnn-deploy build --calib-input``). Only the network layers are quantized (the
scopes of :mod:`rcnn_deploy.precision_rule`); the glue (box decoding, NMS inputs, ROIAlign sampling) stays
fp32, the same rule as for fp16.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from ..backends.base import BackendUnavailable
from ..precision_rule import NETWORK_SCOPES

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def is_quantized(model: Any) -> bool:
    """Whether an ONNX ``ModelProto`` already carries Q/DQ nodes."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def quantize_int8(
    onnx_in: Union[str, Path], onnx_out: Union[str, Path], images: np.ndarray, method: str = "entropy"
) -> Dict[str, Any]:
    """Write ``onnx_out``: ``onnx_in`` with int8 Q/DQ on its network layers, calibrated on ``images``
    (``[N, 3, H, W]`` float32 RGB 0-255, the graph normalises inside). Returns a short report."""
    import onnx

    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise BackendUnavailable(
            "int8 for strongly typed TensorRT (11, TensorRT-RTX) needs an explicitly quantized graph, made with "
            "nvidia-modelopt: pip install 'rcnn-deploy[quant]'"
        ) from e
    model = onnx.load(str(onnx_in))
    inputs = [i.name for i in model.graph.input]
    if inputs != ["images"]:
        raise ValueError(
            f"{Path(onnx_in).name} takes {inputs}: Q/DQ calibration feeds images, so quantize the backbone or the "
            "fused graph (the split heads take ROI features; build them fp16)"
        )
    if is_quantized(model):
        raise ValueError(f"{Path(onnx_in).name} is quantized already")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"calibration images must be [N, 3, H, W], got {list(images.shape)}")
    # node names carry the model's module paths ("/net/backbone/body/layer1/..."): quantize those scopes only
    scopes = "|".join(NETWORK_SCOPES)
    out = Path(onnx_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        quantize(
            str(onnx_in),
            quantize_mode="int8",
            calibration_data={"images": np.ascontiguousarray(images, dtype=np.float32)},
            calibration_method=method,
            calibration_eps=["cpu"],
            nodes_to_quantize=[rf".*/({scopes})/.*"],
            # convolutions and matrix products; their frozen-BN Mul/Add and activations fuse in TensorRT
            op_types_to_quantize=list(QUANTIZED_OPS),
            high_precision_dtype="fp32",
            output_path=str(staged),
            log_level="WARNING",
        )
        q = onnx.load(str(staged))
        os.replace(staged, out)
    return {
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in q.graph.node),
        "calibration_images": int(images.shape[0]),
        "method": method,
    }
