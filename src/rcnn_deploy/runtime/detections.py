"""Per-image detections, the common currency of every backend and tool (numpy only)."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

import numpy as np

from .masks import LazyMasks


class Detections:
    """Detections of one image.

    ``boxes [N, 4]`` float32 (x1, y1, x2, y2), ``scores [N]`` float32 (descending), ``classes [N]`` int32
    labels as the model reports them, and optionally ``masks``: ``[N, M, M]`` float32 probabilities in box
    coordinates (before pasting) or ``[N, H, W]`` bool pasted into the image.

    The runtime gives pasted masks lazily: it stores a :class:`~rcnn_deploy.runtime.masks.LazyMasks` (a
    :class:`~rcnn_deploy.runtime.masks.PastedMasks`: ``M x M`` probabilities + boxes, or, from the GPU
    post-processing, a :class:`~rcnn_deploy.runtime.masks.RleMasks`: runs), available as :attr:`pasted`, and
    ``masks`` makes the dense ``[N, H, W]`` bool array only when read (then keeps it). Writers that can work per
    box region (COCO RLE, drawing) use :attr:`pasted` and never make an image-sized array.
    """

    __slots__ = ("boxes", "scores", "classes", "_masks", "_dense")
    _masks: Optional[Any]
    _dense: Optional[np.ndarray]

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, masks: Optional[Any] = None) -> None:
        self.boxes, self.scores, self.classes = boxes, scores, classes
        self.masks = masks

    @property
    def masks(self) -> Optional[np.ndarray]:
        if isinstance(self._masks, LazyMasks):
            if self._dense is None:
                self._dense = np.asarray(self._masks)
            return self._dense
        return self._masks

    @masks.setter
    def masks(self, value: Optional[Any]) -> None:
        self._masks, self._dense = value, None

    @property
    def pasted(self) -> Optional[LazyMasks]:
        """The lazily pasted masks (None when the masks are a plain array or absent)."""
        return self._masks if isinstance(self._masks, LazyMasks) else None

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        kind = "none" if self._masks is None else ("lazy" if self.pasted is not None else "array")
        return f"Detections(n={len(self)}, masks={kind})"

    def above(self, score_threshold: float) -> Detections:
        """The detections scoring at least ``score_threshold`` (a new object; masks follow)."""
        keep = self.scores >= score_threshold
        masks = None if self._masks is None else self._masks[keep]
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep], masks)

    @classmethod
    def from_padded(cls, outputs: Mapping[str, np.ndarray]) -> List[Detections]:
        """Split padded model outputs (``num_detections``, ``boxes``, ``scores``, ``classes``, ``masks``) into
        one :class:`Detections` per image."""
        num = np.asarray(outputs["num_detections"]).reshape(-1)
        out = []
        for i, n in enumerate(num.tolist()):
            masks = outputs.get("masks")
            out.append(
                cls(
                    boxes=np.asarray(outputs["boxes"][i, :n], dtype=np.float32),
                    scores=np.asarray(outputs["scores"][i, :n], dtype=np.float32),
                    classes=np.asarray(outputs["classes"][i, :n], dtype=np.int32),
                    masks=None if masks is None else np.asarray(masks[i, :n], dtype=np.float32),
                )
            )
        return out
