"""One backend's detections scored with another's as the ground truth: COCO mAP of a candidate against a
reference (``rcnn-deploy compare``; 1.0 when the candidate reproduces the reference)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..runtime.coco import detections_to_coco
from ..runtime.detections import Detections
from .coco import IOU_TYPES, METRIC_NAMES, evaluate_coco


def reference_ground_truth(
    refs: Sequence[Detections], masks: Optional[bool] = None
) -> Tuple[Dict[str, Any], Dict[int, int]]:
    """A COCO ground-truth dict made of reference detections (image ``i`` gets id ``i + 1``) and the map from
    model label to its category id there (labels sorted, ids 1..n).

    Boxes become ``bbox`` / ``area``, pasted bool masks RLE ``segmentation`` (``area`` is then the mask's
    pixel count, as in COCO); every entry has ``iscrowd`` 0. ``masks``: default when every image has pasted
    masks."""
    return _reference_gt(refs, [], masks)[:2]


def reference_map(
    refs: Sequence[Detections],
    cands: Sequence[Detections],
    iou_types: Optional[Sequence[str]] = None,
    *,
    library: str = "auto",
) -> Dict[str, Dict[str, float]]:
    """COCO metrics of the candidate's detections with the reference's detections as the ground truth
    (``refs[i]`` and ``cands[i]`` are the same image; one category per label seen on either side).

    1.0 when the candidate reproduces the reference exactly (bbox; segm too unless a reference mask is empty:
    COCO gives an empty mask IoU 0). ``iou_types``: default bbox, plus segm when both sides carry pasted (bool,
    image-sized) masks. Every metric is -1 ("undefined", COCO's convention) when the reference has no detection.
    """
    if len(refs) != len(cands):
        raise ValueError(f"{len(refs)} reference images but {len(cands)} candidate images; pass the same images")
    pasted = all(_pasted(d) for d in (*refs, *cands))
    if iou_types is None:
        iou_types = IOU_TYPES if pasted and refs else ("bbox",)
    if "segm" in iou_types and not pasted:
        raise ValueError("segm needs pasted (bool, image-sized) masks on both sides; use iou_types=('bbox',)")
    gt, cat, results = _reference_gt(refs, cands, "segm" in iou_types)
    if not gt["annotations"]:
        return {t: {k: -1.0 for k in METRIC_NAMES} for t in iou_types}
    return evaluate_coco(gt, results, iou_types, library=library)


def _pasted(d: Detections) -> bool:
    if d.pasted is not None:
        return True
    return d.masks is not None and d.masks.ndim == 3 and d.masks.dtype == bool


def _mask_area(d: Detections, k: int) -> float:
    pasted = d.pasted
    if pasted is not None:
        return float(pasted.area(k))
    assert d.masks is not None  # called for detections with masks
    return float(d.masks[k].sum())


def _reference_gt(
    refs: Sequence[Detections], cands: Sequence[Detections], masks: Optional[bool]
) -> Tuple[Dict[str, Any], Dict[int, int], List[Dict[str, Any]]]:
    if masks is None:
        masks = bool(refs) and all(_pasted(d) for d in refs)
    labels = sorted({int(c) for d in (*refs, *cands) for c in d.classes})
    cat = {label: i + 1 for i, label in enumerate(labels)}
    label_ids = (min(labels, default=0) - 1, *labels)  # index 0 (background) is never looked up
    category_ids = (0, *range(1, len(labels) + 1))
    images: List[Dict[str, Any]] = []
    anns: List[Dict[str, Any]] = []
    results: List[Dict[str, Any]] = []
    for i, r in enumerate(refs):
        image_id = i + 1
        image: Dict[str, Any] = {"id": image_id}
        if r.pasted is not None:
            image["height"], image["width"] = r.pasted.image_hw
        elif r.masks is not None and r.masks.ndim == 3:
            image["height"], image["width"] = (int(v) for v in r.masks.shape[1:])
        images.append(image)
        plain = r if masks else Detections(r.boxes, r.scores, r.classes)
        for k, entry in enumerate(detections_to_coco(plain, image_id, category_ids, label_ids)):
            w, h = entry["bbox"][2], entry["bbox"][3]
            entry.pop("score")
            entry.update(id=len(anns) + 1, iscrowd=0, area=_mask_area(r, k) if masks else float(w * h))
            anns.append(entry)
    for i, c in enumerate(cands):
        plain = c if masks else Detections(c.boxes, c.scores, c.classes)
        results += detections_to_coco(plain, i + 1, category_ids, label_ids)
    categories = [{"id": cid, "name": f"label {label}"} for label, cid in cat.items()]
    return {"images": images, "annotations": anns, "categories": categories}, cat, results
