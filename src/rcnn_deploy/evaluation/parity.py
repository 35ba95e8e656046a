"""Detection parity between two backends (numpy only): match detections, measure the differences.

Used by the parity tests, ``rcnn-deploy compare`` and the device scripts, so every reported parity number
comes from one definition.

Two backends computing in different summation orders (fp32 kernels of another library, another CPU's vector
width) agree to about 1e-5 relative, and that is enough to flip a discrete decision that sits on its threshold:
greedy NMS keeps a box whose IoU with a higher-scored box of its class is 0.49999905 in one backend and suppresses
it at 0.50005764 in the other (seen between PyTorch and ONNX Runtime on this project's test images). Given the
model's NMS threshold, :func:`compare_detections` names such an unmatched detection an *NMS tie* instead of
counting it as a disagreement, and an unmatched detection that only fell off the end of a full (capped) list of
the other side a *displaced* one. Nothing else is excused: a detection is an NMS tie only when a higher-scored
detection of its class overlaps it at the threshold to within ``tie_tolerance``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.detections import Detections
from ..runtime.masks import PastedMasks


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
    # unmatched detections explained by a decision on its threshold: (image, "ref"/"cand", score, "nms tie" /
    # "displaced"); they are not in ``unmatched``
    explained: List[Tuple[int, str, float, str]] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.matched / max(self.reference_detections, 1)

    @property
    def recall_with_ties(self) -> float:
        """Recall counting the reference detections an NMS tie or the detection cap explains as agreed."""
        return (self.matched + self.explained_count("ref")) / max(self.reference_detections, 1)

    def explained_count(self, side: str) -> int:
        """Unmatched detections of ``side`` ("ref" or "cand") explained as NMS ties or displaced."""
        return sum(1 for e in self.explained if e[1] == side)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["recall"] = self.recall
        d["recall_with_ties"] = self.recall_with_ties
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


def _explain(
    i: int, own: Detections, other: Detections, nms_iou: float, cap: Optional[int], tol: float
) -> Optional[str]:
    """Why detection ``i`` of ``own`` has no match in ``other``, when a decision on its threshold explains it:
    "nms tie" (a higher-scored detection of its class, on either side, overlaps it at ``nms_iou`` +- ``tol``) or
    "displaced" (``other`` is full at ``cap`` detections, all scoring at least about as high); else None."""
    box, score, cls = own.boxes[i : i + 1], float(own.scores[i]), own.classes[i]
    for d in (own, other):
        higher = (d.classes == cls) & (d.scores > score)
        if higher.any() and (np.abs(box_iou(box, d.boxes[higher])[0] - nms_iou) <= tol).any():
            return "nms tie"
    if cap is not None and len(other) >= cap and score <= float(np.min(other.scores)) + tol:
        return "displaced"
    return None


def compare_detections(
    refs: Sequence[Detections],
    cands: Sequence[Detections],
    iou_threshold: float = 0.5,
    pasted_masks: bool = True,
    nms_iou: Optional[float] = None,
    max_detections: Optional[int] = None,
    tie_tolerance: float = 1e-3,
) -> ParityReport:
    """Match every image's detections and aggregate the differences.

    When both sides carry masks of the same shape they are compared by IoU: lazily pasted masks (what the runtime
    returns) by their ``M x M`` model outputs thresholded as the paste thresholds them; arrays as given
    (``pasted_masks``: bool image masks; otherwise ``M x M`` probabilities thresholded at 0.5). With the model's
    second-stage NMS IoU threshold (``nms_iou``; ``max_detections``: its detections-per-image cap) unmatched
    detections that a decision on its threshold explains go to ``explained`` rather than ``unmatched`` (module
    docstring).
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
        for side, own, other, done in (("ref", r, c, mi), ("cand", c, r, mj)):
            for k in range(len(own)):
                if k in done:
                    continue
                why = None if nms_iou is None else _explain(k, own, other, nms_iou, max_detections, tie_tolerance)
                if why is None:
                    rep.unmatched.append((img, side, float(own.scores[k])))
                else:
                    rep.explained.append((img, side, float(own.scores[k]), why))
        for i, j, iou in pairs:
            rep.min_box_iou = min(rep.min_box_iou, iou)
            box_diffs.append(float(np.abs(r.boxes[i] - c.boxes[j]).max()))
            score_diffs.append(abs(float(r.scores[i]) - float(c.scores[j])))
            pr, pc = r.pasted, c.pasted
            if isinstance(pr, PastedMasks) and isinstance(pc, PastedMasks) and pr.probs.shape[1:] == pc.probs.shape[1:]:
                # lazily pasted on both sides: compare the models' own M x M masks. Pasting is the same host code
                # for both, and it truncates the grown box to whole pixels, so a box edge 1e-4 px either side of an
                # integer shifts the whole pasted mask by a pixel (mask IoU 0.82 for an 8-pixel-tall box, seen)
                a, b = pr.binary(i), pc.binary(j)
                mask_ious.append(mask_iou(a, b))
            elif r.masks is not None and c.masks is not None and r.masks.shape[1:] == c.masks.shape[1:]:
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
