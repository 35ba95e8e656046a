"""compare_detections names an unmatched detection an NMS tie only when a higher-scored detection of its class
overlaps it at the NMS threshold (+- the tolerance), and a displaced one only when the other side is full at the
cap with detections scoring at least as high; every other disagreement stays in ``unmatched``."""

from __future__ import annotations

import numpy as np

from rcnn_deploy.evaluation.parity import box_iou, compare_detections
from rcnn_deploy.runtime.detections import Detections


def dets(boxes, scores, classes) -> Detections:
    return Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(classes, np.int32))


def _box_at_iou(target: float) -> list:
    """A box [0, 0, w, 10] whose IoU with [0, 0, 10, 10] is ``target`` (w > 10)."""
    return [0.0, 0.0, 10.0 / target, 10.0]


def test_a_box_kept_on_one_side_at_the_nms_threshold_is_an_nms_tie() -> None:
    top = [0.0, 0.0, 10.0, 10.0]
    tie = _box_at_iou(0.4999)
    assert abs(box_iou(np.array([top]), np.array([tie]))[0, 0] - 0.4999) < 1e-6
    ref = dets([top, [50, 50, 60, 60]], [0.9, 0.4], [1, 1])
    cand = dets([top, tie, [50, 50, 60, 60]], [0.9, 0.6, 0.4], [1, 1, 1])
    rep = compare_detections([ref], [cand], nms_iou=0.5)
    assert rep.matched == 2 and rep.unmatched == []
    assert rep.explained == [(0, "cand", rep.explained[0][2], "nms tie")] and rep.recall_with_ties == 1.0
    # without the NMS threshold nothing is excused
    assert compare_detections([ref], [cand]).unmatched == [(0, "cand", rep.explained[0][2])]


def test_an_extra_box_away_from_the_threshold_is_a_disagreement() -> None:
    top = [0.0, 0.0, 10.0, 10.0]
    for iou, cls in ((0.45, 1), (0.4999, 2)):  # overlap below the threshold, or at it with another class
        ref = dets([top], [0.9], [1])
        cand = dets([top, _box_at_iou(iou)], [0.9, 0.6], [1, cls])
        rep = compare_detections([ref], [cand], nms_iou=0.5)
        assert rep.explained == [] and len(rep.unmatched) == 1, (iou, cls)


def test_a_detection_pushed_off_a_full_list_is_displaced_only_when_it_ranks_below_it() -> None:
    top = [0.0, 0.0, 10.0, 10.0]
    tie = _box_at_iou(0.5004)
    ref = dets([top, [50, 50, 60, 60], [80, 80, 90, 90]], [0.9, 0.5, 0.3], [1, 1, 1])
    cand = dets([top, tie, [50, 50, 60, 60]], [0.9, 0.6, 0.5], [1, 1, 1])  # full at cap 3
    rep = compare_detections([ref], [cand], nms_iou=0.5, max_detections=3)
    assert sorted(e[3] for e in rep.explained) == ["displaced", "nms tie"] and rep.unmatched == []
    # the same reference detection scoring above the candidate's lowest is a real miss
    ref_high = dets([top, [50, 50, 60, 60], [80, 80, 90, 90]], [0.9, 0.5, 0.55], [1, 1, 1])
    rep = compare_detections([ref_high], [cand], nms_iou=0.5, max_detections=3)
    assert [u[1] for u in rep.unmatched] == ["ref"] and rep.recall_with_ties < 1.0
