"""Detection parity between two backends moved to :mod:`rcnn_deploy.evaluation.parity`; its names still
resolve from here, lazily, for callers written before the move (numpy only; Python 3.9 compatible)."""

from __future__ import annotations

import importlib
from typing import Any

_MOVED = ("box_iou", "mask_iou", "ParityReport", "match_detections", "compare_detections")


def __getattr__(name: str) -> Any:
    """The names of :mod:`rcnn_deploy.evaluation.parity`, imported on first use."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("rcnn_deploy.evaluation.parity"), name)
