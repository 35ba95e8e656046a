"""TensorRT engine runtime (torch-free, Python 3.9 compatible): name-based I/O, device buffers reused across
calls, one stream per context, optional CUDA-graph replay for fixed shapes. Device memory and streams come
from polygraphy's CUDA wrapper (ctypes over libcudart), which ships with TensorRT's Python tooling."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from ..base import Backend, BackendUnavailable
from .builder import read_sidecar
from .compat import TRT, load_trt


def _cuda():  # type: ignore[no-untyped-def]
    try:
        from polygraphy import cuda
    except ImportError as e:  # pragma: no cover
        raise BackendUnavailable("the TensorRT runtime needs polygraphy: pip install polygraphy") from e
    return cuda


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
            raise FileNotFoundError(f"engine not found: {self.path}")
        meta = read_sidecar(self.path)
        if meta.get("trt") != self.trt.name or str(meta.get("trt_version")) != self.trt.version:
            raise RuntimeError(
                f"{self.path.name} was built with {meta.get('trt')} {meta.get('trt_version')} but this is "
                f"{self.trt.name} {self.trt.version}; rebuild it with 'rcnn-deploy build'"
            )
        self.meta = meta
        self.logger = mod.Logger(mod.Logger.WARNING)
        if hasattr(mod, "init_libnvinfer_plugins"):
            mod.init_libnvinfer_plugins(self.logger, "")
        self.runtime = mod.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {self.path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.cuda = _cuda()
        self.stream = self.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == mod.TensorIOMode.INPUT  # noqa: E731
        self._inputs = [n for n in names if is_input(n)]
        self._outputs = [n for n in names if not is_input(n)]
        self._buffers: Dict[str, Any] = {}

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

    def _buffer(self, name: str, shape: Tuple[int, ...], dtype: np.dtype):  # type: ignore[no-untyped-def]
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

        class _Times(mod.IProfiler):  # type: ignore[misc,name-defined]
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
