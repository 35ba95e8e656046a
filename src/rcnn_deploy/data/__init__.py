"""Datasets: a deterministic synthetic COCO-format instance-segmentation generator (``synth``)."""

from __future__ import annotations

__all__ = ["synth"]
