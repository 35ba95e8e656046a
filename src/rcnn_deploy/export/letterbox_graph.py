"""The letterbox as an ONNX graph, for TensorRT: decoded images on the device -> the model's input.

With the JPEGs decoded on the GPU (nvImageCodec, :mod:`rcnn_deploy.backends.tensorrt.gpu_pre`), a TensorRT
process without torch still has to resize and pad them there. This graph does it with the sampling of
:func:`rcnn_deploy.runtime.preprocess.bilinear_resize_numpy` (PyTorch's bilinear, ``align_corners=False``, no
antialiasing: the ``"torchvision"`` resize), as gathers and lerps in float32, so one small engine serves every
image size; what depends on the size travels as small index and weight inputs that
:func:`rcnn_deploy.runtime.preprocess.letterbox_taps` computes on the host.

Inputs (``B`` images of one batch, each at the top left of a ``[H, W]`` buffer, ``H``/``W`` the batch's largest):

* ``raw`` uint8 ``[B, H, W, 3]`` RGB;
* ``y0``, ``y1`` int32 ``[B, IH]``: the two source rows of each output row, as indices into the ``B * H`` rows
  of the batch (``b * H + row``), and ``wy`` float32 ``[B, IH, 1]`` the weight of ``y1``;
* ``x0``, ``x1`` int32 ``[B, IW]`` and ``wx`` float32 ``[B, IW, 1]``: the same for columns (``b * W + col``);
* ``vy`` float32 ``[B, 1, IH, 1]`` and ``vx`` float32 ``[B, IW, 1, 1]``: 1 inside the resized image, 0 in the
  padding (filled with the model's pixel mean, as :func:`~rcnn_deploy.runtime.preprocess.letterbox`).

Output ``images`` ``[B, 3, IH, IW]`` in the model input's dtype (uint8 or float32), RGB 0-255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Tuple, Union

import numpy as np

from ..contract import LETTERBOX_FILE

__all__ = ["LETTERBOX_FILE", "LETTERBOX_INPUTS", "letterbox_graph", "write_letterbox_graph"]
LETTERBOX_INPUTS = ("raw", "y0", "y1", "wy", "x0", "x1", "wx", "vy", "vx")


def letterbox_graph(input_hw: Tuple[int, int], fill_rgb: Sequence[float], out_dtype: Any = np.uint8) -> Any:
    """The ONNX model (opset 17) of the letterbox into ``input_hw`` with ``fill_rgb`` padding."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ih, iw = int(input_hw[0]), int(input_hw[1])
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise ValueError(f"the letterbox graph writes uint8 or float32, not {out_dtype}")
    fill = np.asarray(fill_rgb, dtype=np.float64).reshape(1, 1, 1, 3)
    if out_dtype == np.uint8:
        fill = np.rint(fill)  # as letterbox() writes uint8 padding
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32

    def const(name: str, value: np.ndarray) -> Any:
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        const("one", np.array(1.0, np.float32)),
        const("lo", np.array(0.0, np.float32)),
        const("hi", np.array(255.0, np.float32)),
        const("fill", fill.astype(np.float32)),
        const("split3", np.array([0, 0, -1, 3], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("Cast", ["raw"], ["x"], to=f32),
        n("Flatten", ["x"], ["x_rows"], axis=2),  # [B*H, W*3]
        n("Gather", ["x_rows", "y0"], ["r0"], axis=0),  # [B, IH, W*3]
        n("Gather", ["x_rows", "y1"], ["r1"], axis=0),
        n("Sub", ["one", "wy"], ["wy0"]),
        n("Mul", ["r0", "wy0"], ["r0w"]),
        n("Mul", ["r1", "wy"], ["r1w"]),
        n("Add", ["r0w", "r1w"], ["rows"]),  # img[y0] * (1 - wy) + img[y1] * wy
        n("Reshape", ["rows", "split3"], ["rows4"]),  # [B, IH, W, 3]
        n("Transpose", ["rows4"], ["cols_first"], perm=[0, 2, 1, 3]),  # [B, W, IH, 3]
        n("Flatten", ["cols_first"], ["x_cols"], axis=2),  # [B*W, IH*3]
        n("Gather", ["x_cols", "x0"], ["c0"], axis=0),  # [B, IW, IH*3]
        n("Gather", ["x_cols", "x1"], ["c1"], axis=0),
        n("Sub", ["one", "wx"], ["wx0"]),
        n("Mul", ["c0", "wx0"], ["c0w"]),
        n("Mul", ["c1", "wx"], ["c1w"]),
        n("Add", ["c0w", "c1w"], ["cols"]),
        n("Reshape", ["cols", "split3"], ["cols4"]),  # [B, IW, IH, 3]
        n("Round", ["cols4"], ["rounded"]),  # half to even, as np.rint
        n("Clip", ["rounded", "lo", "hi"], ["pixels"]),
        n("Mul", ["vx", "vy"], ["inside"]),  # [B, IW, IH, 1]
        n("Sub", ["one", "inside"], ["outside"]),
        n("Mul", ["pixels", "inside"], ["kept"]),
        n("Mul", ["fill", "outside"], ["padding"]),
        n("Add", ["kept", "padding"], ["hwc"]),
        n("Transpose", ["hwc"], ["chw"], perm=[0, 3, 2, 1]),  # [B, 3, IH, IW]
    ]
    if out_dtype == np.uint8:
        nodes.append(n("Cast", ["chw"], ["images"], to=TensorProto.UINT8))
    else:
        nodes.append(n("Identity", ["chw"], ["images"]))
    out_type = TensorProto.UINT8 if out_dtype == np.uint8 else f32
    inputs = [
        helper.make_tensor_value_info("raw", TensorProto.UINT8, ["B", "H", "W", 3]),
        helper.make_tensor_value_info("y0", i32, ["B", ih]),
        helper.make_tensor_value_info("y1", i32, ["B", ih]),
        helper.make_tensor_value_info("wy", f32, ["B", ih, 1]),
        helper.make_tensor_value_info("x0", i32, ["B", iw]),
        helper.make_tensor_value_info("x1", i32, ["B", iw]),
        helper.make_tensor_value_info("wx", f32, ["B", iw, 1]),
        helper.make_tensor_value_info("vy", f32, ["B", 1, ih, 1]),
        helper.make_tensor_value_info("vx", f32, ["B", iw, 1, 1]),
    ]
    outputs = [helper.make_tensor_value_info("images", out_type, ["B", 3, ih, iw])]
    graph = helper.make_graph(nodes, "rcnn_deploy_letterbox", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rcnn-deploy")
    model.ir_version = 8  # TensorRT 8.6's parser and ONNX Runtime both read IR 8
    onnx.checker.check_model(model)
    return model


def write_letterbox_graph(
    directory: Union[str, Path], input_hw: Tuple[int, int], fill_rgb: Sequence[float], out_dtype: Any
) -> Path:
    """Write :data:`LETTERBOX_FILE` into an export directory (atomically)."""
    from .._io import atomic_write_bytes

    path = Path(directory) / LETTERBOX_FILE
    atomic_write_bytes(path, letterbox_graph(input_hw, fill_rgb, out_dtype).SerializeToString())
    return path
