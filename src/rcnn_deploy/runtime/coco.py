"""COCO results and COCO mAP (bbox / segm) through faster-coco-eval or pycocotools.

``detections_to_coco`` turns a :class:`~rcnn_deploy.runtime.detections.Detections` (original-image
coordinates, pasted masks) into COCO results entries; ``evaluate_coco`` scores a results list against a
COCO-format ground-truth dict or file and returns the standard 12 numbers per IoU type. No Detectron2 needed.

``evaluate_detector`` runs a :class:`~rcnn_deploy.api.Detector` over a COCO ground truth's images and scores
it (``rcnn-deploy eval``, training validation); ``reference_map`` scores one backend's detections with
another's as the ground truth (``rcnn-deploy compare``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .detections import Detections

if TYPE_CHECKING:
    from ..api import Detector

#: Names of COCOeval's 12 summary numbers, in its order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def detections_to_coco(
    det: Detections, image_id: int, category_ids: Sequence[int], label_ids: Sequence[int]
) -> List[Dict[str, Any]]:
    """COCO results for one image: bbox as ``[x, y, w, h]``, category id through the model's label map,
    RLE ``segmentation`` when the detections carry pasted (image-sized) masks."""
    index = {int(lid): i for i, lid in enumerate(label_ids) if i > 0}
    rles: Optional[List[Dict[str, Any]]] = None
    if det.pasted is not None:  # RLE from each mask's box region: no image-sized arrays
        rles = [det.pasted.rle(i) for i in range(len(det))]
    elif det.masks is not None and det.masks.ndim == 3 and len(det):
        from pycocotools import mask as mask_util

        enc = mask_util.encode(np.asfortranarray(det.masks.transpose(1, 2, 0).astype(np.uint8)))
        rles = [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in enc]
    out = []
    for i, (b, s, c) in enumerate(zip(det.boxes, det.scores, det.classes)):
        c = int(c)
        if c not in index:
            raise ValueError(f"detection label {c} is not one of the model's labels {sorted(index)}")
        entry: Dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[index[c]]),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        if rles is not None:
            entry["segmentation"] = rles[i]
        out.append(entry)
    return out


def load_ground_truth(annotations: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(annotations, Mapping):
        return dict(annotations)
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    try:
        with open(path) as f:
            gt = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass a COCO instances file") from None
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"{path} has no '{key}' list; is it a COCO instances file?")
    return gt


def evaluate_coco(
    annotations: Union[str, Path, Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    *,
    library: str = "auto",
    image_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """``{iou_type: {AP, AP50, ..., ARl}}`` for ``results`` against ``annotations`` (COCO dict or file).

    ``library``: "faster-coco-eval", "pycocotools" or "auto" (the first that imports). ``image_ids``
    restricts the evaluation to those images (default: every image of the ground truth). An empty results
    list scores 0 everywhere (pycocotools itself refuses one). segm is skipped when no result has a mask.
    """
    gt = load_ground_truth(annotations)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"unknown IoU type {t!r}; use one of {IOU_TYPES}")
    lib = pick_library(library)
    out: Dict[str, Dict[str, float]] = {}
    for t in iou_types:
        res = [dict(r) for r in results]
        if t == "segm":
            res = [r for r in res if "segmentation" in r]
            if results and not res:
                continue
            for r in res:
                r.pop("bbox", None)  # loadRes derives the box from the mask for segm
        if not res:
            out[t] = {k: 0.0 for k in METRIC_NAMES}
            continue
        out[t] = _run_cocoeval(lib, gt, res, t, image_ids)
    return out


def pick_library(library: str = "auto") -> str:
    """The COCO evaluation library ``library`` resolves to ("auto": faster-coco-eval, else pycocotools)."""
    order = {"auto": ("faster-coco-eval", "pycocotools")}.get(library, (library,))
    for name in order:
        try:
            if name == "faster-coco-eval":
                import faster_coco_eval  # noqa: F401
            elif name == "pycocotools":
                import pycocotools  # noqa: F401
            else:
                raise ValueError(f"unknown COCO evaluation library {name!r}; use faster-coco-eval or pycocotools")
            return name
        except ImportError:
            continue
    raise ImportError("COCO evaluation needs faster-coco-eval or pycocotools: pip install 'rcnn-deploy[eval]'")


def _run_cocoeval(
    lib: str, gt: Dict[str, Any], results: List[Dict[str, Any]], iou_type: str, image_ids: Optional[Sequence[int]]
) -> Dict[str, float]:
    if lib == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats[: len(METRIC_NAMES)]]
    # COCOeval reports -1 where a category/area range has no ground truth; keep it (it means "undefined").
    return dict(zip(METRIC_NAMES, stats))


# ------------------------------------------------------------------------------------- a detector on a dataset
def evaluate_detector(
    detector: Detector,
    annotations: Union[str, Path, Mapping[str, Any]],
    images_dir: Union[str, Path],
    *,
    iou_types: Optional[Sequence[str]] = None,
    library: str = "auto",
    max_images: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    on_skip: Optional[Callable[[str, str], None]] = None,
) -> Dict[str, Any]:
    """Run ``detector`` on every image of a COCO ground truth and score it.

    ``images_dir``: the folder the annotations' ``file_name`` entries are relative to. ``iou_types``: default
    bbox, plus segm when the model predicts masks. ``max_images``: only the first N images of the file.
    ``progress(done, total)`` is called as images are processed, ``on_skip(path, reason)`` for each image that
    is missing, unreadable or not the size the annotations say: it is skipped, never stops the run, and the
    metrics cover only the images that ran. The detector's ``batch`` images go through each model call.

    Returns ``{"metrics": {iou_type: {AP, AP50, ...}}, "images": evaluated count, "image_ids": [...],
    "skipped": [{"image_id", "file_name", "error"}], "detections": count, "library": name, "results": [COCO
    results]}``. Raises ValueError when no image could be evaluated or the model's category ids share none
    with the annotations.
    """
    from .preprocess import load_rgb

    gt = load_ground_truth(annotations)
    lib = pick_library(library)  # fail before running the model
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"images folder not found: {root}; pass the folder the annotations' file_name entries are relative to"
        )
    entries = list(gt["images"])
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}; leave it unset to evaluate every image")
        entries = entries[:max_images]
    if not entries:
        raise ValueError("the annotations list no images; nothing to evaluate")
    spec = detector.spec
    gt_cats = {int(c["id"]) for c in gt["categories"]}
    model_cats = {int(c) for c in spec.category_ids[1:]}
    if gt_cats and not gt_cats & model_cats:
        raise ValueError(
            f"none of the model's category ids ({_id_range(model_cats)}) is a category of the annotations "
            f"({_id_range(gt_cats)}); evaluate a model trained on these categories, whose spec's category_ids "
            "use the annotations' ids"
        )
    if iou_types is None:
        iou_types = IOU_TYPES if spec.masks else ("bbox",)

    batch = max(int(getattr(detector, "batch", 1)), 1)
    total = len(entries)
    results: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    ran: List[int] = []
    pending: List[Tuple[int, np.ndarray]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        for (image_id, _), d in zip(pending, detector([a for _, a in pending])):
            results.extend(detections_to_coco(d, image_id, spec.category_ids, spec.label_ids))
            ran.append(image_id)
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, total)

    for entry in entries:
        image_id = int(entry["id"])
        name = str(entry.get("file_name") or "")
        path = root / name
        try:
            rgb = _read_gt_image(path, name, entry, load_rgb)
        except ValueError as e:
            skipped.append({"image_id": image_id, "file_name": name, "error": str(e)})
            if on_skip is not None:
                on_skip(str(path), str(e))
            done += 1
            if progress is not None:
                progress(done, total)
            continue
        pending.append((image_id, rgb))
        if len(pending) >= batch:
            flush()
    flush()
    if not ran:
        raise ValueError(
            f"none of the {total} images could be evaluated (first problem: {skipped[0]['error']}); check that "
            f"{root} is the folder the annotations' file_name entries are relative to"
        )
    metrics = evaluate_coco(gt, results, iou_types, library=lib, image_ids=ran)
    return {
        "metrics": metrics,
        "images": len(ran),
        "image_ids": ran,
        "skipped": skipped,
        "detections": len(results),
        "library": lib,
        "results": results,
    }


def _read_gt_image(path: Path, name: str, entry: Mapping[str, Any], load: Callable[[Path], np.ndarray]) -> np.ndarray:
    if not name:
        raise ValueError(f"image id {entry['id']} has no file_name in the annotations")
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    rgb = load(path)
    h, w = entry.get("height"), entry.get("width")
    if h and w and tuple(rgb.shape[:2]) != (int(h), int(w)):
        raise ValueError(
            f"{path} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but the annotations say {w}x{h}; "
            "are these the images of this annotations file?"
        )
    return rgb


def _id_range(ids: Iterable[int]) -> str:
    s = sorted(ids)
    return ", ".join(map(str, s)) if len(s) <= 8 else f"{s[0]}..{s[-1]}, {len(s)} ids"


# ------------------------------------------------------------------------ one backend scored against another
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
    return float(d.pasted.area(k)) if d.pasted is not None else float(d.masks[k].sum())  # type: ignore[index]


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
