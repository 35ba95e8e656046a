"""A detector over a COCO dataset: every image through the streaming runner, the results scored
(``rcnn-deploy eval``, training validation, the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import UserError
from ..runtime.coco import CocoEntries
from .coco import IOU_TYPES, check_library_fields, evaluate_coco, pick_library
from .ground_truth import check_categories, load_ground_truth

if TYPE_CHECKING:
    from ..api import Detector


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

    from ..runtime.sources import Item

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
            assert r.item.image_id is not None  # every item above has its COCO id
            ran.append(int(r.item.image_id))
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
