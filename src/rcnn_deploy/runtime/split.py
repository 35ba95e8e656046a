"""The deploy model's names for a fused graph's outputs (numpy only; Python 3.9 compatible).

The split-graph pipeline (three backends with the torch glue between them: ``SplitPieces``, ``run_split``,
``onnxruntime_split``, ``tensorrt_split``, ``split_engine_paths``, ``device_call``) is
:mod:`rcnn_deploy.glue.split`, on the torch side; those names still resolve from here, lazily (importing this
module never imports torch), for callers written before the move.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

import numpy as np

_MOVED = {
    name: "rcnn_deploy.glue.split"
    for name in ("SplitPieces", "device_call", "run_split", "onnxruntime_split", "split_engine_paths", "tensorrt_split")
}


def fused_outputs(out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Rename a fused graph's outputs (``detection_*``) to the deploy model's names."""
    return {k.replace("detection_", ""): v for k, v in out.items()}


def __getattr__(name: str) -> Any:
    """The names that moved to the torch side (see ``_MOVED``), imported on first use."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
