"""The letterbox as an ONNX graph, for TensorRT: decoded images on the device -> the model's input.

With the JPEGs decoded on the GPU (nvImageCodec, :mod:`rcnn_deploy.backends.tensorrt.gpu_pre`), a TensorRT
process without torch still has to resize and pad them there. This graph does it as the host letterbox does
(the ``"torchvision"`` resize: bilinear, ``align_corners=False``, no antialiasing), as gathers and weighted sums in
float32, so one small engine serves every image size; what depends on the size travels as small index and weight
inputs that :func:`rcnn_deploy.runtime.preprocess.letterbox_taps` computes on the host. Two resamplers: ``"opencv"``
reproduces the host's OpenCV ``INTER_LINEAR`` bit for bit (the default since session 18, recorded in the contract's
``notes["letterbox_resampler"]``); ``"float"`` is :func:`rcnn_deploy.runtime.preprocess.bilinear_resize_numpy`
(exports before session 18, whose contracts say nothing).

Inputs (``B`` images of one batch, each at the top left of a ``[H, W]`` buffer, ``H``/``W`` the batch's largest):

* ``raw`` uint8 ``[B, H, W, 3]`` RGB;
* ``y0``, ``y1`` int32 ``[B, IH]``: the two source rows of each output row, as indices into the ``B * H`` rows
  of the batch (``b * H + row``), and ``wy`` float32 ``[B, IH, 1]``: ``"float"``: the weight of ``y1``;
  ``"opencv"``: both integer weights, packed (``b0 * 4096 + b1``);
* ``x0``, ``x1`` int32 ``[B, IW]`` and ``wx`` float32 ``[B, IW, 1]``: the same for columns (``b * W + col``);
* ``vy`` float32 ``[B, 1, IH, 1]`` and ``vx`` float32 ``[B, IW, 1, 1]``: 1 inside the resized image, 0 in the
  padding (filled with the model's pixel mean, as :func:`~rcnn_deploy.runtime.preprocess.letterbox`).

Output ``images`` ``[B, 3, IH, IW]`` in the model input's dtype (uint8 or float32), RGB 0-255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from ..contract import LETTERBOX_FILE

__all__ = ["LETTERBOX_FILE", "LETTERBOX_INPUTS", "letterbox_graph", "write_letterbox_graph"]
LETTERBOX_INPUTS = ("raw", "y0", "y1", "wy", "x0", "x1", "wx", "vy", "vx")


def letterbox_graph(
    input_hw: Tuple[int, int], fill_rgb: Sequence[float], out_dtype: Any = np.uint8, resampler: str = "opencv"
) -> Any:
    """The ONNX model (opset 17) of the letterbox into ``input_hw`` with ``fill_rgb`` padding. ``resampler``:
    ``"opencv"`` (the default since session 18) reproduces the host letterbox's OpenCV ``INTER_LINEAR`` exactly,
    its integer arithmetic done in float32 on integers below 2**24 (exact; see :func:`_opencv_nodes`);
    ``"float"`` is PyTorch's bilinear sampling in float32 (up to session 17; within 1 grey level of OpenCV's on
    12.5 % of the values of 1920x1080 photos at 1344, ``benchmarks/results/cpu/letterbox_pixels_24.json``).
    :func:`rcnn_deploy.runtime.preprocess.letterbox_taps` makes the inputs of either."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..runtime.preprocess import LETTERBOX_RESAMPLERS

    if resampler not in LETTERBOX_RESAMPLERS:
        raise ValueError(f"unknown letterbox resampler {resampler!r}; use one of {', '.join(LETTERBOX_RESAMPLERS)}")
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
        const("fill", fill.astype(np.float32)),
        const("split3", np.array([0, 0, -1, 3], np.int64)),
    ]
    n = helper.make_node
    if resampler == "opencv":
        # powers of two: "pm12" is 2**-12, "p8" 2**8
        inits += [
            const(f"p{'m' if k < 0 else ''}{abs(k)}", np.array(2.0**k, np.float32))
            for k in (-16, -12, -8, -4, -2, 8, 12)
        ]
        inits.append(const("two", np.array(2.0, np.float32)))
        nodes = _opencv_nodes(n)
    else:
        inits += [const("lo", np.array(0.0, np.float32)), const("hi", np.array(255.0, np.float32))]
        nodes = _float_nodes(n)
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
    helper.set_model_props(model, {"rcnn_deploy.letterbox_resampler": resampler})
    onnx.checker.check_model(model)
    return model


def _opencv_nodes(n: Any) -> List[Any]:
    """OpenCV's uint8 ``INTER_LINEAR`` (:func:`rcnn_deploy.runtime.preprocess.opencv_linear_resize_numpy`):
    columns first, ``D = S[x0] * a0 + S[x1] * a1`` (at most 255 * 2049), then rows,
    ``((b0 * (D0 >> 4)) >> 16) + ((b1 * (D1 >> 4)) >> 16) + 2 >> 2``. Every value is an integer below 2**24,
    so float32 holds it exactly, multiplying by a power of two is exact and ``Floor`` is the shift; the one
    product that could pass 2**24, ``b * T`` (T = D >> 4 < 2**15), is split as ``T = 256 th + tl``:
    ``(b T) >> 16 = q + ((256 r + b tl) >> 16)`` with ``b th = 256 q + r``. The weights come packed, ``wx = a0 *
    4096 + a1`` and ``wy = b0 * 4096 + b1``."""

    def shift(x: str, k: int, out: str) -> List[Any]:  # out = x >> k
        return [n("Mul", [x, f"pm{k}"], [out + "_scaled"]), n("Floor", [out + "_scaled"], [out])]

    def divmod_(x: str, k: int, q: str, r: str) -> List[Any]:  # q = x >> k, r = x & (2**k - 1)
        return [*shift(x, k, q), n("Mul", [q, f"p{k}"], [q + "_up"]), n("Sub", [x, q + "_up"], [r])]

    def taps(table: str, i0: str, i1: str, packed: str, v0: str, v1: str, w0: str, w1: str) -> List[Any]:
        # the two source samples of each output sample, and their weights unpacked (w0 * 4096 + w1)
        gathers = [n("Gather", [table, i0], [v0], axis=0), n("Gather", [table, i1], [v1], axis=0)]
        return gathers + divmod_(packed, 12, w0, w1)

    nodes = [
        n("Cast", ["raw"], ["x"], to=1),  # float32 [B, H, W, 3]
        n("Transpose", ["x"], ["x_t"], perm=[0, 2, 1, 3]),  # [B, W, H, 3]
        n("Flatten", ["x_t"], ["x_cols"], axis=2),  # [B*W, H*3]
        *taps("x_cols", "x0", "x1", "wx", "c0", "c1", "a0", "a1"),  # [B, IW, H*3]; [B, IW, 1]
        n("Mul", ["c0", "a0"], ["c0a"]),
        n("Mul", ["c1", "a1"], ["c1a"]),
        n("Add", ["c0a", "c1a"], ["d"]),  # the horizontal pass, in OpenCV's int32 units
        *shift("d", 4, "t"),  # D >> 4
        n("Reshape", ["t", "split3"], ["t4"]),  # [B, IW, H, 3]
        n("Transpose", ["t4"], ["t_t"], perm=[0, 2, 1, 3]),  # [B, H, IW, 3]
        n("Flatten", ["t_t"], ["t_rows"], axis=2),  # [B*H, IW*3]
        *taps("t_rows", "y0", "y1", "wy", "r0", "r1", "b0", "b1"),  # [B, IH, IW*3]; [B, IH, 1]
    ]
    for k in ("0", "1"):  # (b_k * r_k) >> 16 without a product past 2**24
        r, b, o = f"r{k}", f"b{k}", f"v{k}_"
        nodes += [
            *divmod_(r, 8, o + "th", o + "tl"),  # r = 256 th + tl
            n("Mul", [b, o + "th"], [o + "x"]),  # below 2049 * 128
            n("Mul", [b, o + "tl"], [o + "y"]),  # below 2049 * 256
            *divmod_(o + "x", 8, o + "q", o + "rem"),  # b th = 256 q + rem
            n("Mul", [o + "rem", "p8"], [o + "rem256"]),
            n("Add", [o + "rem256", o + "y"], [o + "low"]),  # below 2**24
            *shift(o + "low", 16, o + "lowq"),
            n("Add", [o + "q", o + "lowq"], [f"term{k}"]),
        ]
    nodes += [
        n("Add", ["term0", "term1"], ["terms"]),
        n("Add", ["terms", "two"], ["terms2"]),
        *shift("terms2", 2, "pix"),  # [B, IH, IW*3], 0 .. 255
        n("Reshape", ["pix", "split3"], ["pix4"]),  # [B, IH, IW, 3]
        n("Mul", ["vx", "vy"], ["inside_t"]),  # [B, IW, IH, 1]
        n("Transpose", ["inside_t"], ["inside"], perm=[0, 2, 1, 3]),  # [B, IH, IW, 1]
        *_fill_outside(n, "pix4", [0, 3, 1, 2]),  # [B, IH, IW, 3] -> [B, 3, IH, IW]
    ]
    return nodes


def _fill_outside(n: Any, pixels: str, perm: List[int]) -> List[Any]:
    """``pixels`` where ``inside`` is 1, the fill colour where it is 0, transposed by ``perm`` to ``chw``."""
    return [
        n("Sub", ["one", "inside"], ["outside"]),
        n("Mul", [pixels, "inside"], ["kept"]),
        n("Mul", ["fill", "outside"], ["padding"]),
        n("Add", ["kept", "padding"], ["hwc"]),
        n("Transpose", ["hwc"], ["chw"], perm=perm),
    ]


def _float_nodes(n: Any) -> List[Any]:
    """PyTorch's bilinear sampling in float32: rows, then columns, rounded half to even."""
    nodes = [
        n("Cast", ["raw"], ["x"], to=1),
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
        *_fill_outside(n, "pixels", [0, 3, 2, 1]),  # [B, IW, IH, 3] -> [B, 3, IH, IW]
    ]
    return nodes


def write_letterbox_graph(
    directory: Union[str, Path],
    input_hw: Tuple[int, int],
    fill_rgb: Sequence[float],
    out_dtype: Any,
    resampler: str = "opencv",
) -> Path:
    """Write :data:`LETTERBOX_FILE` into an export directory (atomically)."""
    from .._io import atomic_write_bytes

    path = Path(directory) / LETTERBOX_FILE
    atomic_write_bytes(path, letterbox_graph(input_hw, fill_rgb, out_dtype, resampler).SerializeToString())
    return path
