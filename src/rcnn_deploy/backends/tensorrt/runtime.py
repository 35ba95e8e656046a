"""TensorRT engine runtime (torch-free, Python 3.9 compatible): name-based I/O, device buffers reused across
calls, one stream per context, optional CUDA-graph replay for fixed shapes. Device memory and streams come
from polygraphy's CUDA wrapper (ctypes over libcudart), which ships with TensorRT's Python tooling."""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from ...errors import UserError
from ..base import Backend, BackendUnavailable
from .builder import read_sidecar
from .compat import TRT, device_compute_capability, load_trt


def _cuda() -> Any:
    try:
        from polygraphy import cuda
    except ImportError as e:  # pragma: no cover
        raise BackendUnavailable("the TensorRT runtime needs polygraphy: pip install polygraphy") from e
    return cuda


def _cudart(cuda: Any) -> Any:
    try:
        return cuda.wrapper().handle
    except Exception:  # no CUDA runtime library: the capability then comes from nvidia-smi, or stays unknown
        return None


def _side(be: Any, field: str) -> str:
    return f"{be.path}.json: {field}"


def rebuild_command(engine: Path, meta: Dict[str, Any]) -> str:
    """The ``rcnn-deploy build`` command that rebuilds ``engine`` from its export's graph, with its settings."""
    onnx = engine.parent / str(meta.get("onnx", "MODEL.onnx"))
    found = _contract_graph(engine, meta)
    if found is not None:
        onnx = engine.parent / found[2].file
    given = meta.get("build_config")
    cfg: Dict[str, Any] = given if isinstance(given, dict) else {}
    b = cfg.get("batch") if isinstance(cfg.get("batch"), list) and len(cfg["batch"]) == 3 else None
    cmd = f"rcnn-deploy build {onnx} -o {engine}"
    if meta.get("precision"):
        cmd += f" --precision {meta['precision']}"
    if b:
        cmd += f" --batch {b[0]}:{b[1]}:{b[2]}"
    return cmd


def _contract_graph(engine: Path, meta: Dict[str, Any]) -> Optional[Tuple[Any, int, Any]]:
    """The graph of the contract.json beside ``engine`` that takes the engine's inputs (by name), if any."""
    from ...contract import CONTRACT_FILE, Contract

    if not (engine.parent / CONTRACT_FILE).is_file():
        return None
    c = Contract.load(engine.parent)
    names = sorted(str(t.get("name")) for t in meta.get("inputs", []) if isinstance(t, dict))
    for i, g in enumerate(c.graphs):
        if sorted(t.name for t in g.inputs) == names:
            return c, i, g
    return None


def check_engine(path: Path, meta: Dict[str, Any], trt: TRT, device_cc: Callable[[], Optional[str]]) -> bytes:
    """Everything checkable before TensorRT deserializes an engine, from its (validated) sidecar ``meta``:
    the TensorRT flavour and version, the GPU's compute capability (when ``device_cc()`` can tell; not for
    TensorRT-RTX, whose engines are not tied to one), the engine file's size and sha256, and its inputs
    against the contract.json beside it. Returns the engine's bytes; each mismatch is a UserError with the
    rebuild command."""
    side = f"{path}.json"
    rebuild = rebuild_command(path, meta)
    if meta["trt"] != trt.name or meta["trt_version"] != trt.version:
        raise UserError(
            f"the engine was built with {meta['trt']} {meta['trt_version']} but this is {trt.name} {trt.version}; "
            "engines only load in the TensorRT that built them",
            where=path,
            fix=f"rebuild it here: {rebuild}",
        )
    if meta.get("compute_capability") and not trt.is_rtx:
        here = device_cc()
        if here is not None and here != meta["compute_capability"]:
            raise UserError(
                f"the engine was built for a GPU of compute capability {meta['compute_capability']} "
                f"({meta.get('gpu', '?')}), this GPU's is {here}",
                where=path,
                fix=f"rebuild it on this GPU: {rebuild}",
            )
    size = path.stat().st_size
    if size != meta["engine_size"]:
        raise UserError(
            f"the engine file is {size} bytes, its sidecar (engine_size) records {meta['engine_size']}: it is "
            f"{'truncated' if size < meta['engine_size'] else 'another engine'}",
            where=path,
            fix=f"rebuild it: {rebuild}",
        )
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta["engine_sha256"]:
        raise UserError(
            f"the engine file's sha256 ({digest[:16]}...) differs from its sidecar's (engine_sha256 "
            f"{meta['engine_sha256'][:16]}...): the engine was damaged or replaced",
            where=path,
            fix=f"rebuild it: {rebuild}",
        )
    from ...contract import LETTERBOX_FILE

    found = _contract_graph(path, meta)
    if meta.get("onnx") == LETTERBOX_FILE:  # the export's letterbox graph (gpu_pre): not one of the contract's
        return blob
    if (path.parent / "contract.json").is_file():
        if found is None:
            names = [t["name"] for t in meta["inputs"]]
            raise UserError(
                f"the engine's inputs {names} match no graph of the contract.json beside it: it was built from "
                "another export",
                where=path,
                fix=f"build it from this export's graph: {rebuild}",
            )
        c, i, g = found
        by_name = {t["name"]: (j, t) for j, t in enumerate(meta["inputs"])}
        for k, t in enumerate(g.inputs):
            j, e = by_name[t.name]
            ok = len(e["shape"]) == len(t.shape) and all(
                isinstance(want, str) or want == got for got, want in zip(e["shape"], t.shape)
            )
            if not ok:
                raise UserError(
                    f"engine input {t.name!r} is {e['shape']} (sidecar inputs[{j}]) but the contract's graph "
                    f"(graphs[{i}].inputs[{k}].shape) is {t.shape}: the engine was built from another export",
                    where=path,
                    fix=f"rebuild it from this export's graph: {rebuild}",
                )
        lo, _, hi = meta["build_config"]["batch"]
        if "images" in by_name and not (c.batch[0] <= lo and hi <= c.batch[1]):
            raise UserError(
                f"the engine's batch profile {lo}..{hi} (build_config.batch) is outside the export's batch range "
                f"{c.batch[0]}..{c.batch[1]}",
                where=side,
                fix=f"rebuild it: {rebuild}",
            )
        if meta["onnx"] == g.file and g.sha256 and meta["onnx_sha256"] != g.sha256:
            raise UserError(
                f"the engine was built from a different {g.file} than the one its contract records (onnx_sha256 "
                f"{meta['onnx_sha256'][:16]}... vs graphs[{i}].sha256 {g.sha256[:16]}...): the export was redone",
                where=path,
                fix=f"rebuild it: {rebuild}",
            )
    return blob


class _CudaRT:
    """The few CUDA runtime calls polygraphy does not wrap: events and graph capture/replay."""

    def __init__(self, cuda: Any) -> None:
        self.lib = cuda.wrapper().handle

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in {what}")

    def event(self) -> ctypes.c_void_p:
        ev = ctypes.c_void_p()
        self.check(self.lib.cudaEventCreate(ctypes.byref(ev)), "cudaEventCreate")
        return ev

    def record(self, ev: ctypes.c_void_p, stream: int) -> None:
        self.check(self.lib.cudaEventRecord(ev, ctypes.c_void_p(stream)), "cudaEventRecord")

    def elapsed_ms(self, start: ctypes.c_void_p, end: ctypes.c_void_p) -> float:
        self.check(self.lib.cudaEventSynchronize(end), "cudaEventSynchronize")
        ms = ctypes.c_float()
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return float(ms.value)

    def capture(self, stream: int, launch: Any) -> ctypes.c_void_p:
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), 0), "cudaStreamBeginCapture")
        launch()
        self.check(self.lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)), "cudaStreamEndCapture")
        self.check(
            self.lib.cudaGraphInstantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)), "cudaGraphInstantiate"
        )
        return exe

    def replay(self, exe: ctypes.c_void_p, stream: int) -> None:
        self.check(self.lib.cudaGraphLaunch(exe, ctypes.c_void_p(stream)), "cudaGraphLaunch")


class DeviceTensor(NamedTuple):
    """Caller-owned GPU memory for :meth:`TensorRTBackend.infer_device`: a CUDA device pointer, the tensor's
    shape and its numpy dtype (a torch CUDA tensor is ``DeviceTensor(t.data_ptr(), tuple(t.shape), ...)``)."""

    ptr: int
    shape: Tuple[int, ...]
    dtype: np.dtype


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: Union[str, Path], trt: Optional[TRT] = None) -> None:
        self.trt = trt or load_trt()
        mod = self.trt.module
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise UserError("engine file not found", where=self.path, fix="build it with 'rcnn-deploy build'")
        self.meta = meta = read_sidecar(self.path)
        self.cuda = _cuda()
        blob = check_engine(self.path, meta, self.trt, lambda: device_compute_capability(_cudart(self.cuda)))
        self.logger = mod.Logger(mod.Logger.WARNING)
        if hasattr(mod, "init_libnvinfer_plugins"):
            mod.init_libnvinfer_plugins(self.logger, "")
        self.runtime = mod.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        del blob
        if self.engine is None:
            raise UserError(
                f"{self.trt.name} {self.trt.version} could not deserialize the engine (see its log above; no GPU, "
                "or a GPU or driver this engine was not built for)",
                where=self.path,
                fix=f"rebuild it on this machine: {rebuild_command(self.path, meta)}",
            )
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == mod.TensorIOMode.INPUT  # noqa: E731
        self._inputs = [n for n in names if is_input(n)]
        self._outputs = [n for n in names if not is_input(n)]
        self._buffers: Dict[str, Any] = {}
        self._check_engine_io()

    def _check_engine_io(self) -> None:
        """The deserialized engine's inputs, shapes and batch profile against its sidecar (edits to the sidecar
        would otherwise size the runtime's buffers and batches wrongly)."""
        meta = self.meta
        from ...contract import LETTERBOX_FILE

        if meta.get("onnx") == LETTERBOX_FILE:  # gpu_pre's own engine: TensorRT fixes a dim whose profile is 1..1
            return
        fix = f"the sidecar was edited or belongs to another engine; rebuild: {rebuild_command(self.path, meta)}"
        want = {t["name"]: list(t["shape"]) for t in meta["inputs"]}
        if sorted(want) != sorted(self._inputs):
            raise UserError(
                f"lists inputs {sorted(want)}, the engine has {self._inputs}", where=_side(self, "inputs"), fix=fix
            )
        for i, t in enumerate(meta["inputs"]):
            shape = [int(d) for d in self.engine.get_tensor_shape(t["name"])]
            if shape != list(t["shape"]):
                raise UserError(
                    f"says {t['shape']}, the engine's is {shape}", where=_side(self, f"inputs[{i}].shape"), fix=fix
                )
            if -1 in shape and t["name"] == "images":
                lo, opt, hi = (int(s[0]) for s in self.engine.get_tensor_profile_shape(t["name"], 0))
                if [lo, opt, hi] != list(meta["build_config"]["batch"]):
                    raise UserError(
                        f"says {meta['build_config']['batch']}, the engine's profile is {[lo, opt, hi]}",
                        where=_side(self, "build_config.batch"),
                        fix=fix,
                    )

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.module.nptype(self.engine.get_tensor_dtype(name)))

    def tensor_dtype(self, name: str) -> np.dtype:
        """The engine's dtype of I/O tensor ``name`` (what :meth:`infer_device` expects there)."""
        if name not in self._inputs and name not in self._outputs:
            raise KeyError(f"{self.path.name} has no I/O tensor {name!r}; it has {self._inputs + self._outputs}")
        return self._dtype(name)

    def output_shapes(self, input_shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
        """Set the input shapes on the context; return every output's shape for them (to allocate outputs)."""
        for name in self._inputs:
            if name not in input_shapes:
                raise ValueError(f"{self.path.name}: no shape for input {name!r}; the engine takes {self._inputs}")
            if not self.context.set_input_shape(name, tuple(int(d) for d in input_shapes[name])):
                raise ValueError(
                    f"{self.path.name}: input {name!r} shape {tuple(input_shapes[name])} is outside the engine's"
                    " optimization profile; rebuild with a --batch range that covers it"
                )
        return {name: tuple(int(d) for d in self.context.get_tensor_shape(name)) for name in self._outputs}

    def infer_device(self, inputs: Dict[str, DeviceTensor], outputs: Dict[str, DeviceTensor], stream: int) -> None:
        """Zero-copy execution: read ``inputs`` and write ``outputs`` in caller-owned GPU memory, enqueued on
        the caller's CUDA ``stream`` (a ``cudaStream_t`` as an int; 0 is the legacy default stream). Nothing
        is copied and nothing is synchronised: the caller orders its own work on that stream. This is how the
        split pipeline keeps feature maps on the GPU between the engines and the glue."""
        shapes = self.output_shapes({n: t.shape for n, t in inputs.items()})
        for group, want in (("input", {n: None for n in self._inputs}), ("output", shapes)):
            given = inputs if group == "input" else outputs
            for name, shape in want.items():
                t = given.get(name)
                if t is None:
                    raise ValueError(f"{self.path.name}: no device {group} {name!r}; it has {list(want)}")
                if np.dtype(t.dtype) != self._dtype(name):
                    raise TypeError(
                        f"{self.path.name}: {group} {name!r} is {np.dtype(t.dtype)}, the engine's is "
                        f"{self._dtype(name)}; cast it first (engine I/O dtypes: tensor_dtype())"
                    )
                if shape is not None and tuple(t.shape) != shape:
                    raise ValueError(f"{self.path.name}: output {name!r} buffer is {tuple(t.shape)}, needs {shape}")
                if not t.ptr:
                    raise ValueError(f"{self.path.name}: {group} {name!r} has a null device pointer")
                self.context.set_tensor_address(name, int(t.ptr))
        if not self.context.execute_async_v3(int(stream)):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")

    def _buffer(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> Any:
        buf = self._buffers.get(name)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self.cuda.DeviceArray(shape=shape, dtype=dtype)
            self._buffers[name] = buf
        buf.resize(shape)
        return buf

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.copy_inputs(feed)
        self.execute()
        return self.copy_outputs()

    def copy_inputs(self, feed: Dict[str, np.ndarray]) -> None:
        for name in self._inputs:
            arr = np.ascontiguousarray(feed[name], dtype=self._dtype(name))
            self.context.set_input_shape(name, arr.shape)
            buf = self._buffer(name, arr.shape, arr.dtype)
            buf.copy_from(arr, stream=self.stream)
            self.context.set_tensor_address(name, buf.ptr)
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            buf = self._buffer(name, shape, self._dtype(name))
            self.context.set_tensor_address(name, buf.ptr)

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")

    def copy_outputs(self) -> Dict[str, np.ndarray]:
        out = {}
        for name in self._outputs:
            buf = self._buffers[name]
            host = np.empty(buf.shape, dtype=self._dtype(name))
            buf.copy_to(host, stream=self.stream)
            out[name] = host
        self.stream.synchronize()
        return out

    def time_gpu(
        self, feed: Dict[str, np.ndarray], iterations: int = 100, warmup: int = 10, cuda_graph: bool = True
    ) -> List[float]:
        """GPU compute latency (ms) per inference, CUDA events around each launch (inputs already on the GPU,
        like ``trtexec --noDataTransfers``); with ``cuda_graph`` the enqueue is captured once and replayed."""
        rt = _CudaRT(self.cuda)
        self.copy_inputs(feed)
        self.execute()  # first enqueue outside capture (TensorRT sets up shape-dependent state)
        self.stream.synchronize()
        launch = self.execute
        if cuda_graph:
            exe = rt.capture(self.stream.ptr, self.execute)
            launch = lambda: rt.replay(exe, self.stream.ptr)  # noqa: E731
        for _ in range(warmup):
            launch()
        self.stream.synchronize()
        start, end = rt.event(), rt.event()
        times = []
        for _ in range(iterations):
            rt.record(start, self.stream.ptr)
            launch()
            rt.record(end, self.stream.ptr)
            times.append(rt.elapsed_ms(start, end))
        return times

    def profile_layers(self, feed: Dict[str, np.ndarray], iterations: int = 20) -> Dict[str, float]:
        """Mean GPU time (ms) per engine layer (fused layers, reformats, plugins, Myelin regions) over
        ``iterations`` profiled launches, like ``trtexec --dumpProfile --separateProfileRun``."""
        mod = self.trt.module

        base: Any = mod.IProfiler  # a class of the TensorRT module loaded at run time

        class _Times(base):
            def __init__(self) -> None:
                mod.IProfiler.__init__(self)
                self.ms: Dict[str, float] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.ms[layer_name] = self.ms.get(layer_name, 0.0) + float(ms)

        prof = _Times()
        self.copy_inputs(feed)
        self.execute()
        self.stream.synchronize()
        self.context.profiler = prof  # stays attached: profile after timing, not before
        for _ in range(iterations):
            self.execute()
            self.stream.synchronize()
        return {k: v / iterations for k, v in prof.ms.items()}

    def close(self) -> None:
        for b in self._buffers.values():
            b.free()
        self._buffers.clear()
