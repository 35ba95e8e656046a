"""OpenCV, optional: the runtime's resize and mask paste use it when it is installed and numpy otherwise."""

from __future__ import annotations

from typing import Any

_CV2: Any = None

# OpenCV's resize keeps source offsets in 16-bit tables; larger sizes take the numpy path.
MAX_SIDE = 32767


def opencv() -> Any:
    """The ``cv2`` module, or None when it is not installed (imported once, lazily, so ``import rcnn_deploy``
    stays cheap)."""
    global _CV2
    if _CV2 is None:
        try:
            import cv2

            _CV2 = cv2
        except ImportError:
            _CV2 = False
    return _CV2 or None
