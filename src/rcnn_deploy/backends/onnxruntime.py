"""ONNX Runtime backend (CPU, or CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from .base import Backend, BackendUnavailable


def _ort():  # type: ignore[no-untyped-def]
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailable("ONNX Runtime is not installed: pip install 'rcnn-deploy[onnx]'") from e
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Union[str, Path], providers: Optional[Sequence[str]] = None, threads: int = 0) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers))
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outs = self.session.run(self._outputs, {k: feed[k] for k in self._inputs})
        return dict(zip(self._outputs, outs))
