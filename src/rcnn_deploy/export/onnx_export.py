"""Trace the deploy model into ONNX graphs, clean them up and describe them in the I/O contract."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import __version__
from ..contract import CONTRACT_FILE, MAX_BATCH, Contract, GraphSpec, TensorSpec, check_spec
from ..errors import UserError
from ..glue import export_hooks
from ..models.rcnn import DeployRCNN
from ..runtime.preprocess import rgb_fill
from .letterbox_graph import LETTERBOX_FILE, letterbox_graph
from .lowering import make_lowering
from .sanitize import sanitize
from .staging import commit, crash_point, stage, write_file
from .surgery import expand_placeholders

DEFAULT_OPSET = 17
LETTERBOX_RESAMPLER = "opencv"  # letterbox.onnx reproduces the host letterbox's OpenCV resize (session 18)
FUSED_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_masks")


class _Backbone(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        feats, objectness, deltas = self.net.features(images.float())  # a uint8 input is cast inside the graph
        return (*feats, objectness, deltas)


class _BoxHead(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, box_features: Tensor) -> Tuple[Tensor, Tensor]:
        return self.net.box_head(box_features)


class _MaskHead(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, mask_features: Tensor, classes: Tensor) -> Tensor:
        return self.net.mask_head(mask_features, classes)


class _Fused(nn.Module):
    def __init__(self, net: DeployRCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.net(images.float()).values())  # a uint8 input is cast inside the graph


def parse_batch(batch: Union[int, str, Sequence[int]]) -> Tuple[int, int]:
    """``4`` -> (4, 4); ``"1:8"`` -> (1, 8)."""
    try:
        if isinstance(batch, int):
            lo = hi = batch
        elif isinstance(batch, str):
            parts = batch.split(":")
            if len(parts) > 2:
                raise ValueError
            lo, hi = (int(parts[0]), int(parts[-1]))
        else:
            lo, hi = int(batch[0]), int(batch[-1])
    except (ValueError, TypeError, IndexError):
        raise UserError(f"must be N or MIN:MAX (e.g. 1:8), got {batch!r}", where="--batch") from None
    if lo < 1 or hi < lo or hi > MAX_BATCH:
        raise UserError(f"must satisfy 1 <= MIN <= MAX <= {MAX_BATCH}, got {lo}:{hi}", where="--batch")
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
            buf,  # type: ignore[arg-type]  # annotated as a path; the TorchScript exporter writes file objects too
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


def _tensor_specs(values: Any) -> List[TensorSpec]:  # an ONNX graph's inputs or outputs (ValueInfoProto)
    from onnx import helper

    out = []
    for v in values:
        t = v.type.tensor_type
        dims: List[Union[int, str]] = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        out.append(TensorSpec(v.name, dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type))))
    return out


def _write_graph(exported: Tuple[bytes, dict], path: Path, role: str, first: bool) -> GraphSpec:
    import hashlib

    import onnx

    data, dims = exported
    model = sanitize(expand_placeholders(onnx.load_from_string(data)))
    for out in model.graph.output:
        for dim, size in zip(out.type.tensor_type.shape.dim, dims[out.name]):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
    blob = model.SerializeToString()
    write_file(path, blob, crash_halfway=first)
    return GraphSpec(
        role,
        path.name,
        _tensor_specs(model.graph.input),
        _tensor_specs(model.graph.output),
        sha256=hashlib.sha256(blob).hexdigest(),
        size=len(blob),
    )


def export_module(
    module: nn.Module,
    args: Sequence[Tensor],
    path: Union[str, Path],
    input_names: Sequence[str],
    output_names: Sequence[str],
    lowering: Any = "onnx",
    image_hw: Optional[Tuple[int, int]] = None,
    dynamic_axes: Optional[dict] = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """One ONNX graph of any torch module that calls the glue (``nms_padded``, ``multiscale_roi_align``): the glue
    lowered by ``lowering`` (an ``--nms`` name, "onnx", "tensor" or "plugin" (which needs ``image_hw``), or a
    lowering object from :func:`~rcnn_deploy.export.lowering.make_lowering`), the graph cleaned like
    :func:`export_onnx`'s and written atomically (no contract.json). For benchmarks and tests of a glue op alone,
    e.g. the RPN's NMS as TensorRT builds it."""
    from .._io import atomic_write

    low = make_lowering(lowering, tuple(image_hw or (0, 0))) if isinstance(lowering, str) else lowering
    custom = {low.custom_domain: 1} if low.custom_domain else {}
    with export_hooks.lowering(low):
        data = _onnx_bytes(
            module, tuple(args), list(input_names), list(output_names), dynamic_axes or {}, opset, custom
        )
    return atomic_write(Path(path), lambda tmp: _write_graph(data, tmp, "graph", False))


def check_finite(model: nn.Module, where: str = "the model's weights") -> None:
    """Refuse weights with NaN or Inf: the graph would fail at run time or return nothing."""
    import numpy as np

    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        finite = np.isfinite(t.detach().cpu().float().numpy())  # numpy's is much faster than torch's on the CPU
        if not finite.all():
            n = int(finite.size - np.count_nonzero(finite))
            raise UserError(
                f"weight {name} has {n} non-finite value(s) (NaN or Inf) of {t.numel()}; exporting it would give a "
                "graph that fails or detects nothing",
                where=where,
                fix="use a checkpoint saved before training diverged",
            )


def _old_export_files(directory: Path) -> List[str]:
    """The files that made up the previous export in ``directory`` (its contract and graphs), if readable."""
    names = [CONTRACT_FILE, LETTERBOX_FILE]
    with contextlib.suppress(UserError):  # a damaged contract: its graphs are carried over untouched
        names += [g.file for g in Contract.load(directory).graphs]
    return names


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
    cast inside the graph: a quarter of the upload; the runtime's letterbox fill rounds to whole values).

    The graphs and contract.json are written into a hidden directory beside ``out_dir`` and moved into place
    whole (:mod:`.staging`): ``out_dir`` always holds a complete export, the previous one or this one; files
    of your own in ``out_dir`` (engines, caches) are kept."""
    from ..config import InputSize
    from ..contract import MAX_SIDE

    try:
        InputSize(height, width)  # validates multiples of 32
    except ValueError as e:
        raise UserError(str(e), where="--height/--width") from None
    if max(height, width) > MAX_SIDE:
        raise UserError(f"input side must be <= {MAX_SIDE}, got {height}x{width}", where="--height/--width")
    if graph not in ("split", "fused"):
        raise UserError(f"must be 'split' or 'fused', got {graph!r}", where="--graph")
    if nms not in ("onnx", "plugin", "tensor"):
        raise UserError(f"must be 'onnx', 'plugin' or 'tensor', got {nms!r}", where="--nms")
    lo, hi = parse_batch(batch)
    dynamic = lo != hi
    if dynamic and graph == "fused" and nms == "plugin":
        raise UserError(
            "PyramidROIAlign_TRT is an IPluginV2Ext plugin and needs fully static shapes: export the plugin "
            f"variant with a fixed batch (e.g. --batch {hi}), or use --nms tensor / --graph split for dynamic batch",
            where="--batch",
        )
    check_spec(model.spec)
    check_finite(model, getattr(model, "checkpoint_source", None) or "the model's weights")
    out = Path(out_dir)
    model = model.eval()
    spec = model.spec
    trace_b = (2 if hi > 1 else 1) if dynamic else hi  # trace with B > 1 so nothing specialises to 1
    dev = next(model.parameters()).device
    if input_dtype not in ("float32", "uint8"):
        raise UserError(f"must be 'float32' or 'uint8', got {input_dtype!r}", where="--input-dtype")
    images = torch.rand(trace_b, 3, height, width, device=dev) * 255
    if input_dtype == "uint8":
        images = images.round().to(torch.uint8)
    staged = stage(out)
    try:
        graphs: List[GraphSpec] = []
        extra: List[str] = []  # files beside the graphs, not listed in the contract
        if graph == "fused":
            names = list(FUSED_OUTPUTS if spec.masks else FUSED_OUTPUTS[:4])
            dyn = {n: {0: "batch"} for n in ["images", *names]} if dynamic else {}
            low = make_lowering(nms, (height, width))
            custom = {low.custom_domain: 1} if low.custom_domain else {}
            with export_hooks.lowering(low):
                data = _onnx_bytes(_Fused(model), (images,), ["images"], names, dyn, opset, custom)
            graphs.append(_write_graph(data, staged / f"{spec.name}_fused_{nms}.onnx", "fused", True))
            if spec.resize == "torchvision":  # for TensorRT with the JPEGs decoded on the GPU (export.letterbox_graph)
                extra.append(LETTERBOX_FILE)
                fill = rgb_fill(spec.pixel_mean, spec.channel_order)
                lb = letterbox_graph((height, width), fill, input_dtype, LETTERBOX_RESAMPLER)
                write_file(staged / LETTERBOX_FILE, lb.SerializeToString())
        else:
            feat_names = [f"p{i}" for i in range(spec.roi_levels[0], spec.roi_levels[1] + 1)]
            names = [*feat_names, "rpn_objectness", "rpn_deltas"]
            dyn = {n: {0: "batch"} for n in ["images", *names]} if dynamic else {}
            data = _onnx_bytes(_Backbone(model), (images,), ["images"], names, dyn, opset, {})
            graphs.append(_write_graph(data, staged / f"{spec.name}_backbone.onnx", "backbone", True))
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
            graphs.append(_write_graph(data, staged / f"{spec.name}_box_head.onnx", "box_head", False))
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
                graphs.append(_write_graph(data, staged / f"{spec.name}_mask_head.onnx", "mask_head", False))
        crash_point("graphs_written")
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
            # how letterbox.onnx resamples (runtime.preprocess.letterbox_taps makes its inputs to match)
            notes={"letterbox_resampler": LETTERBOX_RESAMPLER} if LETTERBOX_FILE in extra else {},
        )
        text = json.dumps(contract.to_dict(), indent=2) + "\n"
        try:  # the loader must accept what the exporter writes
            Contract.from_dict(json.loads(text), where=CONTRACT_FILE)
        except UserError as e:
            raise RuntimeError(f"internal error: the exporter wrote a contract its loader refuses: {e}") from None
        write_file(staged / CONTRACT_FILE, text.encode("utf-8"))
        crash_point("contract_written")
        commit(staged, out, [CONTRACT_FILE, *(g.file for g in graphs), *extra], _old_export_files)
    except OSError as e:  # a full disk, a directory that cannot be renamed: the old export stays as it was
        shutil.rmtree(staged, ignore_errors=True)
        raise UserError(f"cannot write the export ({e.strerror or e}); nothing was changed", where=out) from None
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    contract.path = out / CONTRACT_FILE
    return contract
