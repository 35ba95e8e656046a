"""COCO mAP (bbox / segm) of a results list against a ground truth, through faster-coco-eval or pycocotools.

``evaluate_coco`` scores COCO results entries (:func:`rcnn_deploy.runtime.coco.detections_to_coco` makes them)
against a COCO-format ground-truth dict or file and returns the standard 12 numbers per IoU type. No
Detectron2 needed.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import UserError
from .ground_truth import load_ground_truth

#: Names of COCOeval's 12 summary numbers, in its order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


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
