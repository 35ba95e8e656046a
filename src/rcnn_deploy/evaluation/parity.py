"""Detection parity between two backends (numpy only): match detections, measure the differences.

Used by the parity tests, ``rcnn-deploy compare`` and the device scripts, so every reported parity number
comes from one definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.detections import Detections


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[N, M]`` of ``a [N, 4]`` and ``b [M, 4]`` (x1, y1, x2, y2)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


@dataclass
class ParityReport:
    """Aggregated agreement of a candidate with a reference over a set of images."""

    images: int = 0
    reference_detections: int = 0
    candidate_detections: int = 0
    matched: int = 0
    min_box_iou: float = 1.0
    max_box_abs_diff: float = 0.0
    mean_box_abs_diff: float = 0.0
    max_score_diff: float = 0.0
    mean_score_diff: float = 0.0
    min_mask_iou: Optional[float] = None
    mean_mask_iou: Optional[float] = None
    unmatched: List[Tuple[int, str, float]] = field(default_factory=list)  # (image, "ref"/"cand", score)

    @property
    def recall(self) -> float:
        return self.matched / max(self.reference_detections, 1)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["recall"] = self.recall
        return d


def match_detections(ref: Detections, cand: Detections, iou_threshold: float = 0.5) -> List[Tuple[int, int, float]]:
    """Greedy matching in decreasing reference score: each reference detection takes the unmatched candidate
    of the same class with the highest box IoU (>= ``iou_threshold``). Returns ``(ref_i, cand_j, iou)``."""
    if len(ref) == 0 or len(cand) == 0:
        return []
    iou = box_iou(ref.boxes, cand.boxes)
    iou[ref.classes[:, None] != cand.classes[None, :]] = -1.0
    taken = np.zeros(len(cand), dtype=bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_threshold:
            taken[j] = True
            pairs.append((int(i), j, float(row[j])))
    return pairs


def compare_detections(
    refs: Sequence[Detections],
    cands: Sequence[Detections],
    iou_threshold: float = 0.5,
    pasted_masks: bool = True,
) -> ParityReport:
    """Match every image's detections and aggregate the differences.

    When both sides carry masks of the same shape they are compared by IoU (``pasted_masks``: bool image
    masks; otherwise ``M x M`` probabilities thresholded at 0.5).
    """
    rep = ParityReport(images=len(refs))
    box_diffs: List[float] = []
    score_diffs: List[float] = []
    mask_ious: List[float] = []
    for img, (r, c) in enumerate(zip(refs, cands)):
        rep.reference_detections += len(r)
        rep.candidate_detections += len(c)
        pairs = match_detections(r, c, iou_threshold)
        rep.matched += len(pairs)
        mi = {i for i, _, _ in pairs}
        mj = {j for _, j, _ in pairs}
        rep.unmatched += [(img, "ref", float(r.scores[i])) for i in range(len(r)) if i not in mi]
        rep.unmatched += [(img, "cand", float(c.scores[j])) for j in range(len(c)) if j not in mj]
        for i, j, iou in pairs:
            rep.min_box_iou = min(rep.min_box_iou, iou)
            box_diffs.append(float(np.abs(r.boxes[i] - c.boxes[j]).max()))
            score_diffs.append(abs(float(r.scores[i]) - float(c.scores[j])))
            if r.masks is not None and c.masks is not None and r.masks.shape[1:] == c.masks.shape[1:]:
                a, b = r.masks[i], c.masks[j]
                if not pasted_masks:
                    a, b = a > 0.5, b > 0.5
                mask_ious.append(mask_iou(a.astype(bool), b.astype(bool)))
    if box_diffs:
        rep.max_box_abs_diff = max(box_diffs)
        rep.mean_box_abs_diff = float(np.mean(box_diffs))
        rep.max_score_diff = max(score_diffs)
        rep.mean_score_diff = float(np.mean(score_diffs))
    if mask_ious:
        rep.min_mask_iou = min(mask_ious)
        rep.mean_mask_iou = float(np.mean(mask_ious))
    return rep
