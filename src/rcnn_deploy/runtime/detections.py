"""Per-image detections, the common currency of every backend and tool (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional

import numpy as np


@dataclass
class Detections:
    """Detections of one image.

    ``boxes [N, 4]`` float32 (x1, y1, x2, y2), ``scores [N]`` float32 (descending), ``classes [N]`` int32
    labels as the model reports them, and optionally ``masks``: ``[N, M, M]`` float32 probabilities in box
    coordinates (before pasting) or ``[N, H, W]`` bool pasted into the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, score_threshold: float) -> Detections:
        """The detections scoring at least ``score_threshold`` (a new object; masks follow)."""
        keep = self.scores >= score_threshold
        masks = None if self.masks is None else self.masks[keep]
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
