"""COCO ground truth: loading an instances file, checking its structure, and checking it against a model
before the model runs (categories it cannot predict, other class names, missing masks)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .._io import binary_kind
from ..errors import UserError

if TYPE_CHECKING:
    from ..config import ModelSpec


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
