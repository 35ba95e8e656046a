"""The split-graph pipeline: three backends (backbone, box head, mask head) with the torch glue between them.

The glue is :func:`rcnn_deploy.glue.pipeline.two_stage`, the very function the deploy model's ``forward``
is (there over torch modules, here over backends), so split engines reproduce the PyTorch model by
construction. Runs on the GPU when the tensors are CUDA tensors (torch's NMS / ROIAlign kernels), else on the
CPU.

With TensorRT engines and CUDA tensors the pipeline is GPU-resident: each engine reads its inputs from and
writes its outputs into torch CUDA tensors (``TensorRTBackend.infer_device``, on torch's current stream), so
feature maps never leave the GPU. Other backends (ONNX Runtime) take and return host arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..backends.base import Backend
from ..contract import Contract
from .pipeline import two_stage


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    table = {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.int8): torch.int8,
        np.dtype(np.uint8): torch.uint8,
        np.dtype(np.bool_): torch.bool,
    }
    if np.dtype(dtype) not in table:
        raise TypeError(f"no torch dtype for engine dtype {dtype}")
    return table[np.dtype(dtype)]


def device_call(backend: Any, feed: Dict[str, Any], stream: Optional[int] = None) -> Dict[str, Any]:
    """Run ``backend`` (one with ``infer_device``, e.g. :class:`TensorRTBackend`) on torch tensors without a
    host round trip: inputs are cast to the engine's dtypes on their device, outputs are allocated as torch
    tensors beside them and written by the engine. ``stream`` defaults to torch's current CUDA stream, so
    later torch work on that stream sees the outputs, and memory the engine still reads is not reused before
    it is done (the caching allocator orders reuse by stream). CPU tensors are refused unless the backend
    reads host memory (``host_memory = True``: test doubles), since an engine would take their addresses for
    device addresses."""
    from ..backends.tensorrt.runtime import DeviceTensor

    first = next(iter(feed.values()))
    dev = first.device
    if dev.type != "cuda" and not getattr(backend, "host_memory", False):
        raise ValueError(f"the device path needs CUDA tensors, got {dev} ones; move them with .cuda() first")
    if stream is None:
        stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
    inputs, keep = {}, []  # keep: the cast copies stay referenced until the launch is enqueued
    for name, t in feed.items():
        want = backend.tensor_dtype(name)
        t = t.to(dtype=_torch_dtype(want)).contiguous()
        keep.append(t)
        inputs[name] = DeviceTensor(t.data_ptr(), tuple(t.shape), want)
    shapes = backend.output_shapes({n: d.shape for n, d in inputs.items()})
    out = {n: torch.empty(shp, dtype=_torch_dtype(backend.tensor_dtype(n)), device=dev) for n, shp in shapes.items()}
    outputs = {n: DeviceTensor(t.data_ptr(), tuple(t.shape), backend.tensor_dtype(n)) for n, t in out.items()}
    backend.infer_device(inputs, outputs, int(stream))
    return out


class SplitPieces:
    """Adapts three backends to the ``NetworkPieces`` protocol of ``two_stage`` (torch in, torch out).

    ``device_io``: None (default) runs a backend through :func:`device_call` when it has ``infer_device``
    and the tensors are CUDA tensors, else through host arrays; True requires the device path; False never
    takes it."""

    def __init__(
        self,
        contract: Contract,
        backbone: Backend,
        box_head: Backend,
        mask_head: Optional[Backend],
        device_io: Optional[bool] = None,
    ):
        self.contract = contract
        self.backbone, self.box, self.mask = backbone, box_head, mask_head
        self.device_io = device_io
        spec = contract.spec
        self.feature_names = [f"p{i}" for i in range(spec.roi_levels[0], spec.roi_levels[1] + 1)]

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy())

    def _call(self, be: Backend, **feed: Any) -> Dict[str, Any]:
        """One backend on torch tensors -> its outputs as float/int torch tensors on the inputs' device."""
        dev = next(iter(feed.values())).device
        has_device_path = hasattr(be, "infer_device")
        if self.device_io is True and not has_device_path:
            raise RuntimeError(f"device_io=True needs backends with infer_device (TensorRT); got {type(be).__name__}")
        if has_device_path and (self.device_io is True or (self.device_io is None and dev.type == "cuda")):
            return device_call(be, feed)
        out = be(**{n: self._np(t) for n, t in feed.items()})
        return {n: torch.from_numpy(v).to(dev) for n, v in out.items()}

    def features(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
        out = self._call(self.backbone, images=images)
        feats = [out[n].float() for n in self.feature_names]
        return feats, out["rpn_objectness"].float(), out["rpn_deltas"].float()

    def box_head(self, box_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self._call(self.box, box_features=box_features)
        return out["class_logits"].float(), out["box_regression"].float()

    def mask_head(self, mask_features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("this contract has no mask head graph")
        out = self._call(self.mask, mask_features=mask_features, classes=classes.to(torch.int64))
        return out["masks"].float()


def run_split(pieces: SplitPieces, images: np.ndarray, device: str = "cpu") -> Dict[str, np.ndarray]:
    """Run the split pipeline on ``images [B, 3, H, W]`` RGB 0-255, the glue on ``device`` (``"cuda"``: the
    glue's NMS / ROIAlign in torch's CUDA kernels; with TensorRT engines the whole pipeline stays on the
    GPU); returns padded numpy outputs."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
        out = two_stage(pieces, x, pieces.contract.spec)
    return {k: v.cpu().numpy() for k, v in out.items()}


def onnxruntime_split(
    contract: Contract, directory: Union[str, Path], providers: Optional[Sequence[str]] = None
) -> SplitPieces:
    from ..backends.onnxruntime import OnnxRuntimeBackend

    d = Path(directory)

    def mk(role: str) -> OnnxRuntimeBackend:
        return OnnxRuntimeBackend(d / contract.graph_for(role).file, providers)

    mask = mk("mask_head") if contract.spec.masks else None
    return SplitPieces(contract, mk("backbone"), mk("box_head"), mask)


def split_engine_paths(directory: Union[str, Path], contract: Contract) -> Dict[str, Path]:
    """The engines of a split export: each graph's ONNX file with ``.engine`` (what the build commands in the
    error below write). Raises FileNotFoundError naming the missing ones and how to build them."""
    d = Path(directory)
    onnx = {g.role: d / g.file for g in contract.graphs}  # the contract's graphs: no mask head for Faster R-CNN
    paths = {r: f.with_suffix(".engine") for r, f in onnx.items()}
    missing = [r for r, p in paths.items() if not p.is_file()]
    if missing:
        lo, hi = contract.batch
        hint = "; ".join(f"rcnn-deploy build {onnx[r]} -o {paths[r]} --batch {lo}:{hi}" for r in missing)
        raise FileNotFoundError(f"{d} lacks the split engines for {missing}; build them: {hint}")
    return paths


def tensorrt_split(
    contract: Contract, directory: Union[str, Path], engines: Optional[Dict[str, Union[str, Path]]] = None
) -> SplitPieces:
    """Three TensorRT engines of a split export (``engines``: role -> file, default
    :func:`split_engine_paths`), GPU-resident when run with CUDA tensors."""
    from ..backends.tensorrt.runtime import TensorRTBackend

    paths = {r: Path(p) for r, p in (engines or split_engine_paths(directory, contract)).items()}
    be = {r: TensorRTBackend(p) for r, p in paths.items()}
    return SplitPieces(contract, be["backbone"], be["box_head"], be.get("mask_head"))
