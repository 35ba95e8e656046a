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
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._io import binary_kind
from ..errors import UserError
from .detections import Detections

if TYPE_CHECKING:
    from ..api import Detector
    from ..config import ModelSpec

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


GT_LISTS = ("images", "annotations", "categories")
_MAX_LISTED = 6


def load_ground_truth(annotations: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
    """A COCO instances ground truth (a file or a dict already loaded), checked for what COCO evaluation and
    :func:`evaluate_detector` read, so a bad file fails here, before any model runs.

    A missing file raises FileNotFoundError; anything else wrong raises :class:`~rcnn_deploy.errors.UserError`
    naming the file: a binary file (an image, a checkpoint), text that is not JSON, a JSON list (a results
    file), ``images`` / ``annotations`` / ``categories`` missing, null or not lists, an entry without an
    integer ``id`` (annotations: ``image_id``, ``category_id``, a 4-number ``bbox`` too).
    """
    if isinstance(annotations, Mapping):
        gt = dict(annotations)
        check_ground_truth(gt)
        return gt
    path = Path(annotations)
    if path.is_dir():
        raise UserError(
            "is a directory, not a COCO annotations file", where=path, fix="pass the instances .json file itself"
        )
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    data = path.read_bytes()
    kind = binary_kind(data[:64])
    if kind is not None:
        raise UserError(f"is {kind}, not a COCO annotations JSON file", where=path, fix="pass the instances .json")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"is not a UTF-8 text file (byte {e.start}), so not a COCO annotations JSON file", where=path
        ) from None
    if not text.strip():
        raise UserError("is empty", where=path, fix="pass a COCO instances .json file")
    try:
        gt = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
            where=path,
            fix="pass a COCO instances file",
        ) from None
    check_ground_truth(gt, path)
    return gt


def check_ground_truth(gt: Any, where: Optional[Union[str, Path]] = None) -> None:
    """Raise :class:`~rcnn_deploy.errors.UserError` when ``gt`` is not a usable COCO instances dict (see
    :func:`load_ground_truth`). ``where``: the file, for the message."""
    where = str(where) if where is not None else "the annotations"
    if isinstance(gt, list):
        if gt and isinstance(gt[0], Mapping) and "score" in gt[0]:
            raise UserError(
                "is a list of detections (a COCO results file), not the ground truth",
                where=where,
                fix="pass the COCO instances file with 'images', 'annotations' and 'categories'",
            )
        raise UserError(
            "holds a JSON list; a COCO instances file is a JSON object with 'images', 'annotations' and 'categories'",
            where=where,
        )
    if not isinstance(gt, Mapping):
        raise UserError(f"holds a JSON {type(gt).__name__}, not a COCO instances object", where=where)
    for key in GT_LISTS:
        if key not in gt:
            raise UserError(
                f"has no '{key}' list",
                where=where,
                fix="is it a COCO instances file (with 'images', 'annotations' and 'categories')?",
            )
        if gt[key] is None:
            raise UserError(f"'{key}' is null", where=where, fix="a COCO instances file lists them ([] for none)")
        if not isinstance(gt[key], list):
            raise UserError(f"'{key}' must be a list, got {_json_type(gt[key])}", where=where)
    _check_entries(gt["images"], "images", ("id",), where)
    _check_entries(gt["categories"], "categories", ("id",), where)
    _check_entries(gt["annotations"], "annotations", ("id", "image_id", "category_id"), where, bbox=True)


def _check_entries(entries: List[Any], key: str, ints: Sequence[str], where: str, bbox: bool = False) -> None:
    first: Optional[Tuple[int, str]] = None
    bad = 0
    for i, e in enumerate(entries):
        why = _entry_problem(e, ints, bbox)
        if why is not None:
            bad += 1
            if first is None:
                first = (i, why)
    if first is not None:
        i, why = first
        raise UserError(
            f"{bad} of the {len(entries)} '{key}' entries are malformed; the first, {key}[{i}], {why}", where
        )


def _entry_problem(e: Any, ints: Sequence[str], bbox: bool) -> Optional[str]:
    if not isinstance(e, Mapping):
        return f"is a JSON {_json_type(e)}, not an object"
    for k in ints:
        if k not in e or e[k] is None:
            return f"has no '{k}'"
        v = e[k]
        if isinstance(v, bool) or not isinstance(v, int):
            return f"has '{k}' {v!r}, not an integer"
    if bbox:
        b = e.get("bbox")
        if b is None:
            return "has no 'bbox' ([x, y, width, height])"
        if (
            not isinstance(b, (list, tuple))
            or len(b) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        ):
            return f"has 'bbox' {b!r}, not [x, y, width, height] (4 numbers)"
    return None


def _json_type(v: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


def validate_ground_truth(
    annotations: Union[str, Path, Mapping[str, Any]],
    spec: ModelSpec,
    path: Optional[Union[str, Path]] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> List[str]:
    """Check a COCO ground truth against a model before running the model on it.

    ``annotations``: the file or the dict :func:`load_ground_truth` returned; ``spec``: the model's (its
    ``category_ids`` and ``class_names``); ``path``: the file, for the messages. Raises
    :class:`~rcnn_deploy.errors.UserError` when none of the model's categories is one of the annotations'
    (every AP would be 0), naming both sets. Warns (``warn(message)`` for each, default ``warnings.warn``) and
    returns the warnings when the model predicts only some of the categories the annotations use, when the
    class names of shared ids differ (a model of another dataset: expect an mAP near 0), when annotations name
    categories that ``categories`` does not list, or when a Mask R-CNN is evaluated on annotations without
    masks (segm is then skipped by :func:`evaluate_detector`).
    """
    if not isinstance(annotations, Mapping) and path is None:
        path = annotations
    where = str(path) if path is not None else "the annotations"
    if isinstance(annotations, Mapping):
        gt: Mapping[str, Any] = annotations
        check_ground_truth(gt, where)  # cheap next to a model run; a dict from load_ground_truth passes
    else:
        gt = load_ground_truth(annotations)
    check_categories(gt, spec, where)
    notes: List[str] = []
    gt_cats = _gt_categories(gt)
    model_cats = _model_categories(spec)
    anns = [a for a in gt["annotations"] if isinstance(a, Mapping)]
    used = {a.get("category_id") for a in anns}
    unknown = sorted(c for c in used if isinstance(c, int) and c not in gt_cats)
    if unknown:
        n = sum(a.get("category_id") in unknown for a in anns)
        notes.append(
            f"{where}: {n} annotations have category ids that its 'categories' does not list "
            f"({_ids(unknown)}); COCO evaluation ignores them"
        )
    scored = {c for c in used if c in gt_cats} or set(gt_cats)  # the categories with objects (else all listed)
    missing = sorted(scored - set(model_cats))
    if missing:
        notes.append(
            f"the model predicts {len(scored) - len(missing)} of the {len(scored)} categories of {where}; the other "
            f"{len(missing)} never appear in its output and score AP 0, pulling the mean down: "
            f"{_describe({c: gt_cats[c] for c in missing})}"
        )
    compared = [c for c in sorted(set(gt_cats) & set(model_cats)) if _real_name(model_cats[c]) and gt_cats[c]]
    differ = [c for c in compared if _norm(model_cats[c]) != _norm(gt_cats[c])]
    if differ:
        pairs = "; ".join(f"id {c}: {model_cats[c]!r} in the model, {gt_cats[c]!r} there" for c in differ[:_MAX_LISTED])
        more = f"; and {len(differ) - _MAX_LISTED} more" if len(differ) > _MAX_LISTED else ""
        if len(differ) == len(compared):
            notes.append(
                f"the model's classes are not the categories of {where}: every shared category id has another "
                f"name ({pairs}{more}); its detections are scored against other objects, so expect an mAP near 0 "
                "(evaluate the model trained on this dataset)"
            )
        else:
            notes.append(
                f"{len(differ)} of the {len(compared)} category ids the model shares with {where} have other names "
                f"({pairs}{more}); check that the model was trained with these category ids"
            )
    if spec.masks and anns:
        no_mask = sum("segmentation" not in a or a["segmentation"] is None for a in anns)
        if no_mask:
            notes.append(
                f"{no_mask} of the {len(anns)} annotations of {where} have no 'segmentation': mask AP (segm) is "
                "skipped, only box AP (bbox) is computed"
            )
    emit = warn if warn is not None else _python_warning
    for note in notes:
        emit(note)
    return notes


def check_categories(gt: Mapping[str, Any], spec: ModelSpec, where: str = "the annotations") -> None:
    """UserError when none of the model's category ids is a category of ``gt`` (an empty list passes)."""
    gt_cats = _gt_categories(gt)
    model_cats = _model_categories(spec)
    if gt_cats and not set(gt_cats) & set(model_cats):
        raise UserError(
            f"none of the model's category ids ({_describe(model_cats)}) is a category id of the annotations "
            f"({_describe(gt_cats)}); every AP would be 0",
            where=where,
            fix="evaluate a model trained on these categories (an rcnn-deploy checkpoint records their ids), or "
            "pass the annotations of the model's dataset",
        )


def _gt_categories(gt: Mapping[str, Any]) -> Dict[int, str]:
    return {int(c["id"]): str(c.get("name") or "") for c in gt["categories"]}


def _model_categories(spec: ModelSpec) -> Dict[int, str]:
    """Category id -> class name of every class the model can predict (not background, not torchvision's
    unused "N/A" COCO ids)."""
    pairs = zip(spec.category_ids[1:], spec.class_names[1:])
    return {int(c): str(n) for c, n in pairs if n != "N/A"}


def _real_name(name: str) -> bool:
    """False for the placeholders ``class_1 ...`` a checkpoint without class names gets."""
    return bool(name) and re.fullmatch(r"class_\d+", name) is None


def _norm(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower()))


def _describe(cats: Mapping[int, str]) -> str:
    """``1 person, 2 bicycle, ... (80 categories, ids 1..90)``."""
    ids = sorted(cats)
    shown = ", ".join(f"{c} {cats[c]}".rstrip() for c in ids[:_MAX_LISTED])
    if len(ids) <= _MAX_LISTED:
        return shown or "none"
    return f"{shown}, ... ({len(ids)} categories, ids {ids[0]}..{ids[-1]})"


def _ids(ids: Sequence[int]) -> str:
    s = ", ".join(map(str, ids[:_MAX_LISTED]))
    return s + (f", ... ({len(ids)} ids)" if len(ids) > _MAX_LISTED else "")


def _python_warning(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)


def check_library_fields(gt: Mapping[str, Any], library: str, where: Optional[Union[str, Path]] = None) -> None:
    """pycocotools reads every ground-truth annotation's ``area`` and ``iscrowd`` (faster-coco-eval does not):
    UserError before any model runs rather than a KeyError after."""
    if library != "pycocotools":
        return
    anns = gt["annotations"]
    for key in ("area", "iscrowd"):
        lacking = [i for i, a in enumerate(anns) if a.get(key) is None]
        if lacking:
            raise UserError(
                f"{len(lacking)} of the {len(anns)} annotations have no '{key}' (the first: annotations[{lacking[0]}]),"
                " which pycocotools needs",
                where=str(where) if where is not None else "the annotations",
                fix=f"add '{key}' to every annotation, or use faster-coco-eval (--library faster-coco-eval)",
            )


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
    check_library_fields(gt, lib, None if isinstance(annotations, Mapping) else annotations)
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
    processes: Optional[int] = 0,
) -> Dict[str, Any]:
    """Run ``detector`` on every image of a COCO ground truth and score it.

    ``images_dir``: the folder the annotations' ``file_name`` entries are relative to. ``iou_types``: default
    bbox, plus segm when the model predicts masks and every annotation has a mask. ``max_images``: only the
    first N images of the file.
    ``progress(done, total)`` is called as images are processed, ``on_skip(path, reason)`` for each image that
    is missing, unreadable or not the size the annotations say: it is skipped, never stops the run, and the
    metrics cover only the images that ran. The detector's ``batch`` images go through each model call.

    Returns ``{"metrics": {iou_type: {AP, AP50, ...}}, "images": evaluated count, "image_ids": [...],
    "skipped": [{"image_id", "file_name", "error"}], "detections": count, "library": name, "results": [COCO
    results]}``. Raises ValueError when no image could be evaluated, and (before running the model)
    :class:`~rcnn_deploy.errors.UserError` when the annotations are malformed or the model's category ids share
    none with them; :func:`validate_ground_truth` also warns about partial mismatches.
    """
    gt = load_ground_truth(annotations)
    where = "the annotations" if isinstance(annotations, Mapping) else str(annotations)
    lib = pick_library(library)  # fail before running the model
    check_library_fields(gt, lib, where)
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
    check_categories(gt, spec, where)
    has_masks = all(a.get("segmentation") is not None for a in gt["annotations"])
    if iou_types is None:
        iou_types = IOU_TYPES if spec.masks and has_masks else ("bbox",)
    elif "segm" in iou_types and not has_masks:
        raise UserError(
            "segm AP needs a 'segmentation' in every annotation; some have none", where=where, fix="use bbox only"
        )

    from .sources import Item

    total = len(entries)
    results: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    ran: List[int] = []
    items: List[Item] = []
    for entry in entries:  # a missing file_name is this entry's problem; the others still run
        name = str(entry.get("file_name") or "")
        hw = (int(entry["height"]), int(entry["width"])) if entry.get("height") and entry.get("width") else None
        label = str(root / name) if name else f"image id {entry['id']} (it has no file_name in the annotations)"
        item = Item(len(items), label, path=root / name if name else None, expect_hw=hw)
        item.image_id = int(entry["id"])
        items.append(item)
    # every image through the streaming runner: decode, the model and COCO encoding overlap
    stream = detector.stream(items, per_image=CocoEntries(spec), processes=processes)
    for done, r in enumerate(stream, start=1):
        if r.ok:
            results.extend(r.extra)
            ran.append(int(r.item.image_id))  # type: ignore[arg-type]
        else:
            name = r.item.path.name if r.item.path is not None else ""
            skipped.append({"image_id": r.item.image_id, "file_name": name, "error": str(r.error)})
            if on_skip is not None:
                on_skip(r.name, str(r.error))
        if progress is not None:
            progress(done, total)
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


class CocoEntries:
    """The streaming runner's per-image function: an image's COCO results (picklable). The image id is the
    item's dataset id, else its 1-based position."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, r: Any) -> List[Dict[str, Any]]:
        image_id = r.item.image_id if r.item.image_id is not None else r.index + 1
        return detections_to_coco(r.detections, image_id, self.spec.category_ids, self.spec.label_ids)


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
