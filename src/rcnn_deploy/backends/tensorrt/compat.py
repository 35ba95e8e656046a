"""Every difference between TensorRT 8.6, 10, 11 and TensorRT-RTX that the builder and runtime care about."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

from ..base import BackendUnavailable


@dataclass(frozen=True)
class TRT:
    """An imported TensorRT flavour: the module plus what it supports."""

    module: Any
    name: str  # "tensorrt" | "tensorrt_rtx"
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11 and TensorRT-RTX take precision from the graph (no fp16/int8 builder flags)."""
        return self.is_rtx or self.major >= 11

    @property
    def has_implicit_precision_flags(self) -> bool:
        return not self.strongly_typed_only

    def network_flags(self, strongly_typed: bool) -> int:
        trt = self.module
        flags = 0
        if self.major < 10 and not self.is_rtx:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and not self.is_rtx:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return flags

    def set_workspace(self, config: Any, nbytes: int) -> None:
        config.set_memory_pool_limit(self.module.MemoryPoolType.WORKSPACE, int(nbytes))

    def restrict_tactics(self, config: Any, sources: Sequence[str]) -> None:
        """Limit tactic sources (e.g. our TRT 8.6 bundle stubs cuBLAS/cuDNN)."""
        trt = self.module
        if not hasattr(config, "set_tactic_sources"):
            return
        known = [n for n in dir(trt.TacticSource) if n.isupper()]
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise ValueError(f"{self.name} {self.version} has no tactic source {unknown}; it has {known}")
        mask = 0
        for s in sources:
            mask |= 1 << int(getattr(trt.TacticSource, s))
        config.set_tactic_sources(mask)

    def set_opt_level(self, config: Any, level: int) -> None:
        """Builder optimization level (0 = fastest build ... 5 = widest tactic search; TensorRT's default 3)."""
        if not 0 <= int(level) <= 5:
            raise ValueError(f"builder optimization level must be 0-5, got {level}")
        if not hasattr(config, "builder_optimization_level"):
            raise ValueError(f"{self.name} {self.version} has no builder optimization level (TensorRT >= 8.6)")
        config.builder_optimization_level = int(level)


def load_trt(prefer: Optional[str] = None) -> TRT:
    """Import ``tensorrt`` (preferred) or ``tensorrt_rtx``; ``prefer`` forces one."""
    names = [prefer] if prefer else ["tensorrt", "tensorrt_rtx"]
    errors = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        if not hasattr(mod, "Builder"):  # PyPI's 'tensorrt' stub sdists import but hold nothing
            errors.append(f"{name}: not a real TensorRT installation")
            continue
        return TRT(mod, name, getattr(mod, "__version__", "0"))
    raise BackendUnavailable(
        "no TensorRT found (" + "; ".join(errors) + "). Install TensorRT for your GPU, or "
        "pip install 'rcnn-deploy[rtx]' for TensorRT-RTX (builds engines on CPU-only machines)"
    )


def gpu_info() -> Tuple[str, Optional[str]]:
    """(name, compute capability "MAJOR.MINOR") of GPU 0 from nvidia-smi, ("none", None) without one."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "none", None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return "none", None
    parts = [p.strip() for p in lines[0].rsplit(",", 1)]
    if len(parts) == 2 and parts[1].replace(".", "", 1).isdigit():
        return parts[0], parts[1]
    return lines[0].strip(), None


def device_compute_capability(cudart: Any = None) -> Optional[str]:
    """The current CUDA device's compute capability through the CUDA runtime (``cudart``: a ctypes library
    such as polygraphy's ``cuda.wrapper().handle``), else through nvidia-smi; None when neither can tell."""
    import ctypes

    if cudart is not None:
        try:
            dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
            if (
                cudart.cudaGetDevice(ctypes.byref(dev)) == 0
                and cudart.cudaDeviceGetAttribute(ctypes.byref(major), 75, dev) == 0  # ComputeCapabilityMajor
                and cudart.cudaDeviceGetAttribute(ctypes.byref(minor), 76, dev) == 0  # ComputeCapabilityMinor
            ):
                return f"{major.value}.{minor.value}"
        except (AttributeError, OSError, TypeError):
            pass
    return gpu_info()[1]
