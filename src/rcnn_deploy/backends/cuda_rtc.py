"""CUDA C kernels compiled at run time by NVRTC and launched through the CUDA driver API, with ctypes only (no torch,
no CuPy, no cuda-python; Python 3.9 compatible): what the torch-free TensorRT process uses for work TensorRT's
layers do not express, e.g. pasting masks (:mod:`rcnn_deploy.backends.tensorrt.paste`).

NVRTC is found as ``RCNN_DEPLOY_NVRTC`` (a path to ``libnvrtc.so.*``), else as ``libnvrtc.so.13`` / ``.12`` /
``libnvrtc.so`` on the loader's path, else in an ``nvidia`` pip package's ``lib`` folder on ``sys.path``
(``pip install nvidia-cuda-nvrtc`` / ``nvidia-cuda-nvrtc-cu12``; torch's CUDA wheels bring one). The program is
compiled for the current device's architecture to a cubin (``-arch=sm_XY``), so the driver loads it without a PTX
JIT; :func:`compile_cuda` works without a GPU (the tests compile the kernels on the CPU machine)."""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

_NVRTC_NAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
_nvrtc: Optional[Any] = None
_lock = threading.Lock()


class CudaRtcError(RuntimeError):
    """NVRTC or the CUDA driver failed (the message says which call and why)."""


def find_nvrtc() -> Optional[str]:
    """The NVRTC library this process would load (see the module docstring), or None."""
    env = os.environ.get("RCNN_DEPLOY_NVRTC")
    if env:
        return env
    for name in _NVRTC_NAMES:
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            pass
    for base in sys.path:
        for pattern in ("nvidia/cu13/lib/libnvrtc.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.*"):
            found = sorted(
                f for f in glob.glob(os.path.join(base, pattern)) if "builtins" not in f and ".alt." not in f
            )
            if found:
                return found[0]
    return None


def nvrtc() -> Any:
    """The NVRTC library (ctypes), loaded once; raises :class:`CudaRtcError` when there is none."""
    global _nvrtc
    with _lock:
        if _nvrtc is None:
            path = find_nvrtc()
            if path is None:
                raise CudaRtcError(
                    "NVRTC (libnvrtc.so) was not found: install nvidia-cuda-nvrtc (CUDA 13) or nvidia-cuda-nvrtc-cu12, "
                    "or set RCNN_DEPLOY_NVRTC to the library's path"
                )
            # its builtins library first, from the same folder (a pip package's lib folder is seldom on the loader's
            # path; NVRTC opens the builtins by name when it compiles)
            for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.*"))):
                if ".alt." not in builtins:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(path)
            lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            _nvrtc = lib
        return _nvrtc


def _check_nvrtc(lib: Any, status: int, what: str, log: str = "") -> None:
    if status != 0:
        msg = lib.nvrtcGetErrorString(status).decode()
        raise CudaRtcError(f"NVRTC {what} failed: {msg}" + (f"\n{log}" if log else ""))


def compile_cuda(source: str, arch: str, name: str = "kernel.cu", options: Sequence[str] = ()) -> bytes:
    """``source`` (CUDA C) compiled for ``arch`` (``"sm_90"``: a cubin; ``"compute_90"``: PTX)."""
    lib = nvrtc()
    prog = ctypes.c_void_p()
    _check_nvrtc(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
                 "nvrtcCreateProgram")  # fmt: skip
    try:
        opts = [f"-arch={arch}".encode(), *(o.encode() for o in options)]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        _check_nvrtc(lib, status, f"compiling {name} for {arch}", log.value.decode(errors="replace"))
        cubin = arch.startswith("sm_")
        get_size, get = (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
        _check_nvrtc(lib, get_size(prog, ctypes.byref(size)), "getting the compiled size")
        image = ctypes.create_string_buffer(size.value)
        _check_nvrtc(lib, get(prog, image), "getting the compiled image")
        return image.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


class Arg:
    """A kernel argument of a fixed C type: ``Arg.ptr(address)``, ``Arg.i32(v)``, ``Arg.i64(v)``, ``Arg.f32(v)``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    @classmethod
    def ptr(cls, address: int) -> Arg:
        return cls(ctypes.c_void_p(int(address)))

    @classmethod
    def i32(cls, v: int) -> Arg:
        return cls(ctypes.c_int32(int(v)))

    @classmethod
    def i64(cls, v: int) -> Arg:
        return cls(ctypes.c_int64(int(v)))

    @classmethod
    def f32(cls, v: float) -> Arg:
        return cls(ctypes.c_float(float(v)))


def kernel_params(args: List[Arg]) -> Any:
    """``cuLaunchKernel``'s ``kernelParams``: an array of pointers to each argument's value (the values stay alive
    with the array: it holds them)."""
    values = [a.value for a in args]
    params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
    params._values = values  # type: ignore[attr-defined]
    return params


class CudaModule:
    """``source`` compiled for the current device (on first use) and loaded by the driver; :meth:`launch` runs one
    of its ``extern "C"`` kernels on a CUDA stream (a ``cudaStream_t`` from the runtime API is a ``CUstream``).
    The driver calls are made in the primary context of the current device (the runtime API's)."""

    def __init__(self, source: str, name: str = "kernel.cu") -> None:
        self.source, self.name = source, name
        self._cuda: Any = None
        self._ctx = ctypes.c_void_p()
        self._module = ctypes.c_void_p()
        self._functions: Dict[str, ctypes.c_void_p] = {}
        self._lock = threading.Lock()
        self.arch: Optional[str] = None

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            text = ctypes.c_char_p()
            self._cuda.cuGetErrorString(status, ctypes.byref(text))
            raise CudaRtcError(f"CUDA driver {what} failed: {status} {(text.value or b'').decode()}")

    def _load(self) -> None:
        cuda = ctypes.CDLL("libcuda.so.1")
        self._cuda = cuda
        self._check(cuda.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        if self._current():  # the runtime API's device in this thread
            self._check(cuda.cuCtxGetDevice(ctypes.byref(dev)), "cuCtxGetDevice")
        else:
            self._check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev), "cuDeviceGetAttribute")
        self._check(cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev), "cuDeviceGetAttribute")
        self._check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(self._ctx), dev), "cuDevicePrimaryCtxRetain")
        self._enter()
        self.arch = f"sm_{major.value}{minor.value}"
        image = compile_cuda(self.source, self.arch, self.name)
        self._check(cuda.cuModuleLoadData(ctypes.byref(self._module), image), "cuModuleLoadData")

    def _current(self) -> bool:
        ctx = ctypes.c_void_p()
        return self._cuda.cuCtxGetCurrent(ctypes.byref(ctx)) == 0 and bool(ctx.value)

    def _enter(self) -> None:
        """Make the primary context current in this thread (the runtime API's; a thread that has made no
        runtime call yet may have none)."""
        ctx = ctypes.c_void_p()
        self._cuda.cuCtxGetCurrent(ctypes.byref(ctx))
        if ctx.value != self._ctx.value:
            self._check(self._cuda.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    def function(self, kernel: str) -> ctypes.c_void_p:
        with self._lock:
            if not self._module.value:
                self._load()
            fn = self._functions.get(kernel)
            if fn is None:
                fn = ctypes.c_void_p()
                self._check(self._cuda.cuModuleGetFunction(ctypes.byref(fn), self._module, kernel.encode()),
                            f"cuModuleGetFunction({kernel})")  # fmt: skip
                self._functions[kernel] = fn
            return fn

    def launch(self, kernel: str, grid: Tuple[int, int, int], block: Tuple[int, int, int], args: List[Arg],
               stream: int) -> None:  # fmt: skip
        """Queue ``kernel<<<grid, block, 0, stream>>>(args...)``."""
        fn = self.function(kernel)
        self._enter()
        params = kernel_params(args)
        self._check(
            self._cuda.cuLaunchKernel(fn, *(ctypes.c_uint(g) for g in grid), *(ctypes.c_uint(b) for b in block),
                                      ctypes.c_uint(0), ctypes.c_void_p(stream), params, None),
            f"cuLaunchKernel({kernel})",
        )  # fmt: skip
