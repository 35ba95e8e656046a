"""Reduced-precision glue, emulated in eager PyTorch: what a TensorRT plugin running in fp16 does to the glue's
inputs and outputs, without TensorRT. For measuring how much a precision moves the accuracy
(benchmarks/fp16_sensitivity.py), never used by deployed models.

    with fp16_glue(nms=True, roi_boxes=True):
        outputs = model(images)   # every NMS takes and returns fp16-rounded boxes and scores; ROIAlign pools
                                  # at fp16-rounded boxes

Only the eager path of :func:`rcnn_deploy.glue.nms.nms_padded` and
:func:`rcnn_deploy.glue.roi_align.multiscale_roi_align` read it; exports ignore it. The setting is process-wide,
not per thread or context: the streaming runner calls the model on a thread of its own, which must see it too.
"""

from __future__ import annotations

import contextlib
from typing import FrozenSet, Iterator

from torch import Tensor

_ROUNDED: FrozenSet[str] = frozenset()  # process-wide (see the module docstring)


@contextlib.contextmanager
def fp16_glue(nms: bool = False, roi_boxes: bool = False) -> Iterator[None]:
    """Within the block, ``nms``: NMS inputs (boxes, scores) and kept boxes / scores rounded to fp16, as
    EfficientNMS_TRT in fp16 sees and returns them; ``roi_boxes``: the multi-level ROIAlign's boxes rounded to
    fp16, as a ROIAlign plugin in fp16 sees them (steps of 0.25 px at 256-511 px, 1 px at 1024-2047)."""
    global _ROUNDED
    before = _ROUNDED
    _ROUNDED = frozenset(name for name, on in (("nms", nms), ("roi_boxes", roi_boxes)) if on)
    try:
        yield
    finally:
        _ROUNDED = before


def rounds(op: str) -> bool:
    """Whether glue op ``op`` ("nms", "roi_boxes") runs fp16-rounded here (see :func:`fp16_glue`)."""
    return op in _ROUNDED


def to_fp16(t: Tensor) -> Tensor:
    """``t`` rounded to the nearest fp16 value, kept in its own dtype."""
    return t.half().to(t.dtype)
