"""Trace the deploy model into ONNX graphs, clean them up and describe them in the I/O contract."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import __version__
from .._io import atomic_write_bytes
from ..contract import Contract, GraphSpec, TensorSpec
from ..glue import export_hooks
from ..models.rcnn import DeployRCNN
from .lowering import make_lowering
from .sanitize import sanitize
from .surgery import expand_placeholders

DEFAULT_OPSET = 17
FUSED_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_masks")


class _Backbone(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor):  # type: ignore[no-untyped-def]
        feats, objectness, deltas = self.net.features(images.float())  # a uint8 input is cast inside the graph
        return (*feats, objectness, deltas)


class _BoxHead(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, box_features: Tensor):  # type: ignore[no-untyped-def]
        return self.net.box_head(box_features)


class _MaskHead(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, mask_features: Tensor, classes: Tensor):  # type: ignore[no-untyped-def]
        return self.net.mask_head(mask_features, classes)


class _Fused(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor):  # type: ignore[no-untyped-def]
        return tuple(self.net(images.float()).values())  # a uint8 input is cast inside the graph


def parse_batch(batch: Union[int, str, Sequence[int]]) -> Tuple[int, int]:
    """``4`` -> (4, 4); ``"1:8"`` -> (1, 8)."""
    if isinstance(batch, int):
        lo = hi = batch
    elif isinstance(batch, str):
        parts = batch.split(":")
        try:
            lo, hi = (int(parts[0]), int(parts[-1]))
        except ValueError:
            raise ValueError(f"batch must be N or MIN:MAX (e.g. 1:8), got {batch!r}") from None
    else:
        lo, hi = int(batch[0]), int(batch[-1])
    if lo < 1 or hi < lo:
        raise ValueError(f"batch range must satisfy 1 <= MIN <= MAX, got {lo}:{hi}")
    return lo, hi


def _onnx_bytes(
    module: nn.Module,
    args: Tuple,
    input_names: List[str],
    output_names: List[str],
    dynamic_axes: dict,
    opset: int,
    custom_opsets: dict,
) -> Tuple[bytes, dict]:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected: shapes are static
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            custom_opsets=custom_opsets or None,
        )
        example = module(*args)
        example = (example,) if isinstance(example, Tensor) else example
    # Every dimension but the dynamic ones is static for a fixed input size: remember the traced sizes so the
    # graph outputs can carry them (the exporter leaves some symbolic after Concat/Reshape/Gather chains).
    dims = {}
    for name, value in zip(output_names, example):
        dyn = dynamic_axes.get(name, {})
        dims[name] = [dyn[i] if i in dyn else int(n) for i, n in enumerate(value.shape)]
    return buf.getvalue(), dims


def _tensor_specs(values) -> List[TensorSpec]:  # type: ignore[no-untyped-def]
    from onnx import helper

    out = []
    for v in values:
        t = v.type.tensor_type
        dims: List[Union[int, str]] = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        out.append(TensorSpec(v.name, dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type))))
    return out


def _write_graph(exported: Tuple[bytes, dict], path: Path, role: str) -> GraphSpec:
    import onnx

    data, dims = exported
    model = sanitize(expand_placeholders(onnx.load_from_string(data)))
    for out in model.graph.output:
        for dim, size in zip(out.type.tensor_type.shape.dim, dims[out.name]):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
    atomic_write_bytes(path, model.SerializeToString())
    return GraphSpec(role, path.name, _tensor_specs(model.graph.input), _tensor_specs(model.graph.output))


def export_onnx(
    model: DeployRCNN,
    out_dir: Union[str, Path],
    *,
    height: int = 1344,
    width: int = 1344,
    batch: Union[int, str, Sequence[int]] = 1,
    graph: str = "split",
    nms: str = "onnx",
    opset: int = DEFAULT_OPSET,
    input_dtype: str = "float32",
) -> Contract:
    """Export ``model`` for ``height x width`` inputs into ``out_dir`` and return the written contract.

    ``input_dtype``: ``float32`` (RGB 0-255 as floats, the seed's contract) or ``uint8`` (the pixels as bytes,
    cast inside the graph: a quarter of the upload; the runtime's letterbox fill rounds to whole values)."""
    from ..config import InputSize

    InputSize(height, width)  # validates multiples of 32
    if graph not in ("split", "fused"):
        raise ValueError(f"graph must be 'split' or 'fused', got {graph!r}")
    if nms not in ("onnx", "plugin", "tensor"):
        raise ValueError(f"nms must be 'onnx', 'plugin' or 'tensor', got {nms!r}")
    lo, hi = parse_batch(batch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    spec = model.spec
    dynamic = lo != hi
    if dynamic and graph == "fused" and nms == "plugin":
        raise ValueError(
            "PyramidROIAlign_TRT is an IPluginV2Ext plugin and needs fully static shapes: export the plugin "
            f"variant with a fixed batch (e.g. --batch {hi}), or use --nms tensor / --graph split for dynamic batch"
        )
    trace_b = (2 if hi > 1 else 1) if dynamic else hi  # trace with B > 1 so nothing specialises to 1
    dev = next(model.parameters()).device
    if input_dtype not in ("float32", "uint8"):
        raise ValueError(f"input_dtype must be 'float32' or 'uint8', got {input_dtype!r}")
    images = torch.rand(trace_b, 3, height, width, device=dev) * 255
    if input_dtype == "uint8":
        images = images.round().to(torch.uint8)
    graphs: List[GraphSpec] = []
    if graph == "fused":
        names = list(FUSED_OUTPUTS if spec.masks else FUSED_OUTPUTS[:4])
        dyn = {n: {0: "batch"} for n in ["images", *names]} if dynamic else {}
        low = make_lowering(nms, (height, width))
        custom = {low.custom_domain: 1} if low.custom_domain else {}
        with export_hooks.lowering(low):
            data = _onnx_bytes(_Fused(model), (images,), ["images"], names, dyn, opset, custom)
        graphs.append(_write_graph(data, out / f"{spec.name}_fused_{nms}.onnx", "fused"))
    else:
        feat_names = [f"p{i}" for i in range(spec.roi_levels[0], spec.roi_levels[1] + 1)]
        names = [*feat_names, "rpn_objectness", "rpn_deltas"]
        dyn = {n: {0: "batch"} for n in ["images", *names]} if dynamic else {}
        data = _onnx_bytes(_Backbone(model), (images,), ["images"], names, dyn, opset, {})
        graphs.append(_write_graph(data, out / f"{spec.name}_backbone.onnx", "backbone"))
        r = 8
        box_in = torch.rand(r, spec.fpn_channels, spec.box_roi_size, spec.box_roi_size, device=dev)
        data = _onnx_bytes(
            _BoxHead(model),
            (box_in,),
            ["box_features"],
            ["class_logits", "box_regression"],
            {"box_features": {0: "rois"}, "class_logits": {0: "rois"}, "box_regression": {0: "rois"}},
            opset,
            {},
        )
        graphs.append(_write_graph(data, out / f"{spec.name}_box_head.onnx", "box_head"))
        if spec.masks:
            mask_in = torch.rand(r, spec.fpn_channels, spec.mask_roi_size, spec.mask_roi_size, device=dev)
            classes = torch.randint(1, spec.num_classes, (r,), device=dev)
            data = _onnx_bytes(
                _MaskHead(model),
                (mask_in, classes),
                ["mask_features", "classes"],
                ["masks"],
                {"mask_features": {0: "rois"}, "classes": {0: "rois"}, "masks": {0: "rois"}},
                opset,
                {},
            )
            graphs.append(_write_graph(data, out / f"{spec.name}_mask_head.onnx", "mask_head"))
    contract = Contract(
        model=spec.name,
        graph=graph,
        nms=nms if graph == "fused" else None,
        input_hw=(height, width),
        batch=(lo, hi),
        spec=spec,
        graphs=graphs,
        opset=opset,
        producer=f"rcnn-deploy {__version__}, torch {torch.__version__}",
    )
    contract.save(out)
    return contract
