"""Safe loading of Faster/Mask R-CNN ResNet-50-FPN checkpoints into torchvision's key layout.

Two checkpoint flavours are understood:

* ``torchvision``: ``.pth``/``.pt`` files written by ``torch.save`` (bare state dict, or wrapped as
  ``{"model": sd}`` / ``{"state_dict": sd}``), and the torchvision weight enums
  (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``...) when their file is already in the torch hub cache.
* ``detectron2``: model-zoo ``.pkl`` files (``{"model": {name: ndarray}, "__author__": ...}``, often
  pickled by Python 2) and training ``.pth`` checkpoints
  (``{"model": {name: tensor}, "optimizer": ..., "iteration": ...}``).

Nothing here ever executes code from a checkpoint: torch files go through ``torch.load(weights_only=True)``
only, and ``.pkl`` files through a restricted unpickler that can rebuild numpy arrays and plain containers
and refuses every other global. Nothing is downloaded either.

Detectron2 names are renamed to torchvision's and the class layout is converted from Detectron2's
"background last" to torchvision's "background first"; the box-regression and mask-logit rows of the
background class (which torchvision never uses at inference) are zero-filled.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import importlib
import io
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np
import torch

from rcnn_deploy._io import PathLike, atomic_write
from rcnn_deploy.errors import UserError

from .checkpoint import checkpoint_fields, checkpoint_state_dict, is_rcnn_deploy_checkpoint

FLAVOURS = ("torchvision", "detectron2")

_CLS_W = "roi_heads.box_predictor.cls_score.weight"
_CLS_B = "roi_heads.box_predictor.cls_score.bias"
_BOX_W = "roi_heads.box_predictor.bbox_pred.weight"
_BOX_B = "roi_heads.box_predictor.bbox_pred.bias"
_MASK_W = "roi_heads.mask_predictor.mask_fcn_logits.weight"
_MASK_B = "roi_heads.mask_predictor.mask_fcn_logits.bias"
_PREDICTOR_KEYS = frozenset({_CLS_W, _CLS_B, _BOX_W, _BOX_B, _MASK_W, _MASK_B})
_MASK_PREFIXES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")
_D2_PREFIXES = ("backbone.bottom_up.", "backbone.fpn_lateral", "backbone.fpn_output", "proposal_generator.")
_TV_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.head.")
_MAX_LISTED = 20


class WeightsError(UserError):
    """A checkpoint cannot be loaded; the message says which file, what is wrong and how to fix it."""


@dataclass
class LoadedWeights:
    """A checkpoint converted to torchvision's key layout (background class at index 0)."""

    state_dict: Dict[str, torch.Tensor]
    num_classes: int  # including background
    source: str
    dropped: List[str] = field(default_factory=list)  # keys ignored on purpose
    flavour: str = "torchvision"
    # Input normalisation stored in the checkpoint itself (Detectron2 files sometimes carry it), else None.
    pixel_mean: Optional[Tuple[float, ...]] = None
    pixel_std: Optional[Tuple[float, ...]] = None
    # What an rcnn-deploy checkpoint (models/checkpoint.py) records beside the weights, else None.
    class_names: Optional[Tuple[str, ...]] = None
    category_ids: Optional[Tuple[int, ...]] = None
    input_hw: Optional[Tuple[int, int]] = None
    meta: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------


def load_checkpoint(path: PathLike, flavour: str, *, masks: bool) -> LoadedWeights:
    """Load a checkpoint file of the given flavour ("torchvision", "detectron2" or "auto").

    ``masks=False`` drops a mask head if the checkpoint has one (Mask R-CNN weights used as Faster R-CNN);
    ``masks=True`` requires one.
    """
    path = Path(path)
    _require_file(path)
    if flavour == "auto":
        flavour = detect_format(path)
    if flavour == "torchvision":
        return _load_torchvision_file(path, masks=masks)
    if flavour == "detectron2":
        return _load_detectron2_file(path, masks=masks)
    raise WeightsError(f"{path}: unknown weights flavour {flavour!r}; use one of {', '.join(FLAVOURS)} (or 'auto').")


def load_torchvision_enum(name: str, *, masks: bool, check_hash: bool = False) -> LoadedWeights:
    """Load torchvision weights named like ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1`` from the hub cache.

    A bare member name (``"DEFAULT"``, ``"COCO_V1"``) picks the Mask or Faster R-CNN enum from ``masks``.
    The file must already be at ``$TORCH_HOME/hub/checkpoints/<basename of the url>``: nothing is downloaded.
    ``check_hash`` verifies the sha256 prefix embedded in the file name (as ``torch.hub`` does).
    """
    from torchvision.models import detection

    enums = {
        "FasterRCNN_ResNet50_FPN_Weights": detection.FasterRCNN_ResNet50_FPN_Weights,
        "MaskRCNN_ResNet50_FPN_Weights": detection.MaskRCNN_ResNet50_FPN_Weights,
    }
    parts = name.strip().split(".")
    if len(parts) == 1:
        enum_name = "MaskRCNN_ResNet50_FPN_Weights" if masks else "FasterRCNN_ResNet50_FPN_Weights"
    else:
        enum_name = parts[-2]
    member = parts[-1]
    if enum_name not in enums:
        extra = " (the v2 models have a different architecture)" if "_V2_" in enum_name else ""
        raise WeightsError(
            f"torchvision weights {name!r}: unsupported weights enum {enum_name!r}{extra}; "
            f"use one of {', '.join(sorted(enums))}, e.g. MaskRCNN_ResNet50_FPN_Weights.COCO_V1."
        )
    enum = enums[enum_name]
    try:
        weight = enum[member]
    except KeyError:
        raise WeightsError(
            f"torchvision weights {name!r}: {enum_name} has no member {member!r}; valid: {', '.join(enum.__members__)}."
        ) from None
    full = f"{enum_name}.{weight.name}"
    is_mask = enum_name.startswith("MaskRCNN")
    if masks and not is_mask:
        raise WeightsError(
            f"torchvision weights {full} are Faster R-CNN weights and have no mask head: use "
            "MaskRCNN_ResNet50_FPN_Weights.* for a Mask R-CNN model, or build the Faster R-CNN model."
        )
    url = weight.url
    hub_dir = torch.hub.get_dir()
    cached = os.path.join(hub_dir, "checkpoints", os.path.basename(urlparse(url).path))
    if not os.path.isfile(cached):
        raise WeightsError(
            f"torchvision weights {full} are not in the local torch hub cache, and rcnn-deploy never "
            f"downloads anything. Download\n  {url}\nand save it as\n  {cached}\n"
            "(the torch hub cache is $TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch, "
            "set it to use another place), e.g.\n"
            f"  mkdir -p {os.path.dirname(cached)} && curl -L -o {cached} {url}\n"
            "or pass the downloaded .pth file itself as a torchvision checkpoint."
        )
    if check_hash:
        _check_hub_hash(cached, url)
    obj = _torch_load(Path(cached))
    sd = _unwrap_state_dict(obj, Path(cached))
    return _finish_torchvision(sd, Path(cached), masks=masks, source=f"torchvision {full} ({cached})")


def detect_format(path: PathLike) -> str:
    """Return "torchvision" or "detectron2" from a checkpoint's contents (not its file name)."""
    path = Path(path)
    _require_file(path)
    _truncated_zip(path)
    container = _sniff(path)
    if container == "torch":
        obj = _torch_load(path, mmap=zipfile.is_zipfile(path))
    else:
        obj = _restricted_pickle_load(path)
    if isinstance(obj, Mapping) and "blobs" in obj:
        raise _caffe2_error(path)
    if is_rcnn_deploy_checkpoint(obj):
        return "torchvision"
    keys = list(_inner_model(obj).keys()) if isinstance(obj, Mapping) else []
    names = [k for k in keys if isinstance(k, str)]
    names = [_strip_prefixes_one(k) for k in names]
    if any(k.startswith(_D2_PREFIXES) for k in names):
        return "detectron2"
    if any(k.startswith(_TV_PREFIXES) for k in names):
        if container != "torch":
            raise WeightsError(
                f"{path}: a plain pickle holding torchvision-style names is not supported; "
                "save the state dict with torch.save(...) instead."
            )
        return "torchvision"
    shown = ", ".join(repr(k) for k in keys[:5]) or "no keys"
    raise WeightsError(
        f"{path}: cannot tell what this checkpoint is (found {shown}); expected a torchvision or "
        "Detectron2 Faster/Mask R-CNN R50-FPN checkpoint. Pass the flavour explicitly if you are sure."
    )


def check_state_dict(state_dict: Mapping[str, Any], expected: Mapping[str, Sequence[int]], source: str) -> None:
    """Raise :class:`WeightsError` unless ``state_dict`` has exactly the keys and shapes of ``expected``.

    ``expected`` is ``{name: shape}`` of the model. BatchNorm ``num_batches_tracked`` counters are ignored
    on both sides (frozen BN has none and they do not affect inference).
    """
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not _ignorable(k)}
    exp = {k: tuple(int(s) for s in shape) for k, shape in expected.items() if not _ignorable(k)}
    missing = [k for k in exp if k not in got]
    unexpected = [k for k in got if k not in exp]
    mismatched = [k for k in exp if k in got and got[k] != exp[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source}: the checkpoint does not fit the model."]
    _list_section(lines, "missing keys (in the model, not in the checkpoint)", missing)
    _list_section(lines, "unexpected keys (in the checkpoint, not in the model)", unexpected)
    _list_section(lines, "shape mismatches", [f"{k}: checkpoint {got[k]} vs model {exp[k]}" for k in mismatched])
    hints = []
    if mismatched and all(k in _PREDICTOR_KEYS for k in mismatched):
        ck = got.get(_CLS_W, (None,))[0]
        mo = exp.get(_CLS_W, (None,))[0]
        hints.append(
            f"num_classes differs (checkpoint {ck}, model {mo}, both counting background): "
            "pass the right --num-classes / class names."
        )
    if missing and all(k.startswith(_MASK_PREFIXES) for k in missing):
        hints.append(
            "is this a Faster R-CNN checkpoint loaded as Mask R-CNN? Build the Faster R-CNN model or use "
            "Mask R-CNN weights."
        )
    if unexpected and all(k.startswith(_MASK_PREFIXES) for k in unexpected):
        hints.append(
            "this is a Mask R-CNN checkpoint but the model has no mask head: load it with masks=False "
            "(the mask head is then dropped) or build the Mask R-CNN model."
        )
    if any(k.startswith(_D2_PREFIXES) for k in unexpected):
        hints.append("the checkpoint uses Detectron2 names: load it with the 'detectron2' flavour.")
    if not hints:
        hints.append(
            "check that this is a Faster/Mask R-CNN ResNet-50-FPN (v1) checkpoint and that the flavour "
            "(torchvision / detectron2) is right."
        )
    lines.append("hint: " + " ".join(hints))
    raise WeightsError("\n".join(lines))


# --------------------------------------------------------------------------------------------------------
# Detectron2 <-> torchvision name mapping
# --------------------------------------------------------------------------------------------------------

_BN = r"(weight|bias|running_mean|running_var)"
_WB = r"(weight|bias)"
_Rule = Tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]


def _rules(pairs: Iterable[Tuple[str, Callable[[re.Match[str]], str]]]) -> List[_Rule]:
    return [(re.compile(p), f) for p, f in pairs]


_D2_TO_TV = _rules(
    [
        (r"backbone\.bottom_up\.stem\.conv1\.weight", lambda m: "backbone.body.conv1.weight"),
        (rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_BN}", lambda m: f"backbone.body.bn1.{m[1]}"),
        (
            r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.weight",
            lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight",
        ),
        (
            rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.norm\.{_BN}",
            lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}",
        ),
        (
            r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.weight",
            lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight",
        ),
        (
            rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.norm\.{_BN}",
            lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}",
        ),
        (
            rf"backbone\.fpn_lateral([2-5])\.{_WB}",
            lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}",
        ),
        (
            rf"backbone\.fpn_output([2-5])\.{_WB}",
            lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}",
        ),
        (rf"proposal_generator\.rpn_head\.conv\.{_WB}", lambda m: f"rpn.head.conv.0.0.{m[1]}"),
        (rf"proposal_generator\.rpn_head\.objectness_logits\.{_WB}", lambda m: f"rpn.head.cls_logits.{m[1]}"),
        (rf"proposal_generator\.rpn_head\.anchor_deltas\.{_WB}", lambda m: f"rpn.head.bbox_pred.{m[1]}"),
        (rf"roi_heads\.box_head\.fc([12])\.{_WB}", lambda m: f"roi_heads.box_head.fc{int(m[1]) + 5}.{m[2]}"),
        (rf"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.{_WB}", lambda m: m[0]),
        (
            rf"roi_heads\.mask_head\.mask_fcn([1-4])\.{_WB}",
            lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}",
        ),
        (rf"roi_heads\.mask_head\.deconv\.{_WB}", lambda m: f"roi_heads.mask_predictor.conv5_mask.{m[1]}"),
        (
            rf"roi_heads\.mask_head\.predictor\.{_WB}",
            lambda m: f"roi_heads.mask_predictor.mask_fcn_logits.{m[1]}",
        ),
    ]
)

_TV_TO_D2 = _rules(
    [
        (r"backbone\.body\.conv1\.weight", lambda m: "backbone.bottom_up.stem.conv1.weight"),
        (rf"backbone\.body\.bn1\.{_BN}", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
        (
            r"backbone\.body\.layer([1-4])\.(\d+)\.conv([1-3])\.weight",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
        ),
        (
            rf"backbone\.body\.layer([1-4])\.(\d+)\.bn([1-3])\.{_BN}",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
        ),
        (
            r"backbone\.body\.layer([1-4])\.(\d+)\.downsample\.0\.weight",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
        ),
        (
            rf"backbone\.body\.layer([1-4])\.(\d+)\.downsample\.1\.{_BN}",
            lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
        ),
        (
            rf"backbone\.fpn\.inner_blocks\.([0-3])\.0\.{_WB}",
            lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}",
        ),
        (
            rf"backbone\.fpn\.layer_blocks\.([0-3])\.0\.{_WB}",
            lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}",
        ),
        (rf"rpn\.head\.conv\.0\.0\.{_WB}", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
        (rf"rpn\.head\.cls_logits\.{_WB}", lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
        (rf"rpn\.head\.bbox_pred\.{_WB}", lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
        (rf"roi_heads\.box_head\.fc([67])\.{_WB}", lambda m: f"roi_heads.box_head.fc{int(m[1]) - 5}.{m[2]}"),
        (rf"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.{_WB}", lambda m: m[0]),
        (
            rf"roi_heads\.mask_head\.([0-3])\.0\.{_WB}",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}",
        ),
        (rf"roi_heads\.mask_predictor\.conv5_mask\.{_WB}", lambda m: f"roi_heads.mask_head.deconv.{m[1]}"),
        (
            rf"roi_heads\.mask_predictor\.mask_fcn_logits\.{_WB}",
            lambda m: f"roi_heads.mask_head.predictor.{m[1]}",
        ),
    ]
)


def _rename(name: str, rules: List[_Rule]) -> Optional[str]:
    for pattern, build in rules:
        m = pattern.fullmatch(name)
        if m is not None:
            return build(m)
    return None


def torchvision_to_detectron2(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """Exact inverse of the Detectron2 -> torchvision conversion: Detectron2 names, background class last.

    The background rows of ``bbox_pred`` and ``mask_fcn_logits`` (unused at inference) are dropped.
    """
    out: Dict[str, np.ndarray] = {}
    unknown = []
    for key, value in state_dict.items():
        if _ignorable(key):
            continue
        d2 = _rename(key, _TV_TO_D2)
        if d2 is None:
            unknown.append(key)
            continue
        out[d2] = _as_tensor(value, key, "state dict").numpy().copy()
    if unknown:
        raise WeightsError(
            "torchvision_to_detectron2: keys without a Detectron2 equivalent:\n"
            + _format_list(unknown)
            + "\nonly Faster/Mask R-CNN ResNet-50-FPN (v1) state dicts can be converted."
        )
    cls_w = out.get("roi_heads.box_predictor.cls_score.weight")
    if cls_w is None:
        raise WeightsError(f"torchvision_to_detectron2: the state dict has no {_CLS_W}.")
    k = cls_w.shape[0] - 1
    for name in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"):
        if name in out:
            out[name] = np.concatenate([out[name][1:], out[name][:1]])
    for name in ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"):
        if name in out:
            if out[name].shape[0] != 4 * (k + 1):
                raise WeightsError(
                    f"torchvision_to_detectron2: {name} has {out[name].shape[0]} rows, expected 4 x {k + 1} classes."
                )
            out[name] = out[name][4:].copy()
    for name in ("roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"):
        if name in out:
            if out[name].shape[0] != k + 1:
                raise WeightsError(
                    f"torchvision_to_detectron2: {name} has {out[name].shape[0]} channels, expected {k + 1}."
                )
            out[name] = out[name][1:].copy()
    return out


def save_detectron2_pkl(path: PathLike, state_dict: Mapping[str, Any]) -> Path:
    """Write a Detectron2 model-zoo style ``.pkl`` (pickle protocol 2), atomically.

    ``state_dict`` is in torchvision's layout (it is converted), or already in Detectron2's names.
    """
    if any(isinstance(k, str) and k.startswith(_D2_PREFIXES) for k in state_dict):
        model = {k: _as_tensor(v, k, "state dict").numpy().copy() for k, v in state_dict.items()}
    else:
        model = torchvision_to_detectron2(state_dict)
    payload = {"model": model, "__author__": "rcnn-deploy", "matching_heuristics": False}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=2)

    return atomic_write(path, write)


# --------------------------------------------------------------------------------------------------------
# torchvision flavour
# --------------------------------------------------------------------------------------------------------


def _load_torchvision_file(path: Path, *, masks: bool) -> LoadedWeights:
    if _sniff(path) != "torch":
        _truncated_zip(path)
        raise WeightsError(
            f"{path}: not a torch.save file (no zip or legacy torch header); if it is a Detectron2 .pkl, "
            "load it with the 'detectron2' flavour."
        )
    obj = _torch_load(path)
    if is_rcnn_deploy_checkpoint(obj):
        info = checkpoint_fields(obj, str(path))  # every field checked: a WeightsError names the bad one
        sd = checkpoint_state_dict(obj, str(path))
        loaded = _finish_torchvision(sd, path, masks=masks, source=f"rcnn-deploy checkpoint {path}")
        loaded.class_names = info["class_names"]
        loaded.category_ids = info["category_ids"]
        loaded.input_hw = info["input_hw"]
        loaded.meta = info["meta"]
        if len(loaded.class_names) != loaded.num_classes:
            raise WeightsError(
                f"{path}: lists {len(loaded.class_names)} class names but its classifier has "
                f"{loaded.num_classes} outputs; the checkpoint is inconsistent, re-save it."
            )
        return loaded
    sd = _unwrap_state_dict(obj, path)
    return _finish_torchvision(sd, path, masks=masks, source=f"torchvision checkpoint {path}")


def _finish_torchvision(sd: Mapping[str, Any], path: Path, *, masks: bool, source: str) -> LoadedWeights:
    if any(k.startswith(_D2_PREFIXES) for k in sd):
        raise WeightsError(
            f"{path}: the key names are Detectron2's (e.g. backbone.bottom_up.*): load it with the "
            "'detectron2' flavour."
        )
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for key, value in sd.items():
        if _ignorable(key) or (not masks and key.startswith(_MASK_PREFIXES)):
            dropped.append(key)
            continue
        out[key] = _as_tensor(value, key, str(path))
    if _CLS_W not in out:
        what = (
            "it looks like a ResNet classification/backbone checkpoint"
            if "conv1.weight" in out or "backbone.body.conv1.weight" in out
            else "it is not a Faster/Mask R-CNN state dict"
        )
        raise WeightsError(
            f"{path}: no {_CLS_W} in the checkpoint ({what}); a full Faster/Mask R-CNN ResNet-50-FPN "
            "detector checkpoint is needed."
        )
    if masks and not any(k.startswith(_MASK_PREFIXES) for k in out):
        raise _no_mask_error(path)
    return LoadedWeights(
        state_dict=out,
        num_classes=int(out[_CLS_W].shape[0]),
        source=source,
        dropped=dropped,
        flavour="torchvision",
    )


# --------------------------------------------------------------------------------------------------------
# Detectron2 flavour
# --------------------------------------------------------------------------------------------------------


def _load_detectron2_file(path: Path, *, masks: bool) -> LoadedWeights:
    _truncated_zip(path)
    if _sniff(path) == "torch":
        obj = _torch_load(path)
        kind = "Detectron2 checkpoint"
    else:
        obj = _restricted_pickle_load(path)
        kind = "Detectron2 pickle"
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(obj).__name__}.")
    if "blobs" in obj:
        raise _caffe2_error(path)
    model = _strip_prefixes(_inner_model(obj))
    author = obj.get("__author__")
    source = f"{kind} {path}" + (f" (author: {author})" if isinstance(author, str) else "")
    if any(isinstance(k, str) and k.startswith(_TV_PREFIXES) for k in model):
        raise WeightsError(
            f"{path}: the key names are torchvision's (backbone.body.*, rpn.head.*): load it with the "
            "'torchvision' flavour."
        )
    sd, dropped, meta = _convert_detectron2(model, path, masks=masks)
    return LoadedWeights(
        state_dict=sd,
        num_classes=int(sd[_CLS_W].shape[0]),
        source=source,
        dropped=dropped,
        flavour="detectron2",
        pixel_mean=meta.get("pixel_mean"),
        pixel_std=meta.get("pixel_std"),
    )


def _convert_detectron2(
    model: Mapping[Any, Any], path: Path, *, masks: bool
) -> Tuple[Dict[str, torch.Tensor], List[str], Dict[str, Tuple[float, ...]]]:
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    unknown: List[str] = []
    meta: Dict[str, Tuple[float, ...]] = {}
    for name, value in model.items():
        if not isinstance(name, str):
            unknown.append(repr(name))
            continue
        if name in ("pixel_mean", "pixel_std"):
            meta[name] = tuple(float(x) for x in _as_tensor(value, name, str(path)).flatten().tolist())
            dropped.append(name)
            continue
        if (
            name.startswith("proposal_generator.anchor_generator.")
            or name.endswith("num_batches_tracked")
            or name.endswith("_momentum")  # Caffe2-era SGD momentum blobs
        ):
            dropped.append(name)
            continue
        tv = _rename(name, _D2_TO_TV)
        if tv is None:
            unknown.append(name)
            continue
        if not masks and tv.startswith(_MASK_PREFIXES):
            dropped.append(name)
            continue
        out[tv] = _as_tensor(value, name, str(path))
    if unknown:
        caffe2 = all("." not in k for k in unknown)
        hint = (
            "these look like Caffe2 / Detectron (v1) blob names, which are not supported: load the file in "
            "Detectron2 and save its model.state_dict() again."
            if caffe2
            else "only Detectron2 GeneralizedRCNN with a ResNet-50-FPN backbone, StandardRPNHead, 2-fc box "
            "head and (optionally) the standard 4-conv mask head is supported."
        )
        raise WeightsError(
            f"{path}: {len(unknown)} Detectron2 key(s) have no torchvision equivalent:\n"
            + _format_list(unknown)
            + f"\n{hint}"
        )
    if _CLS_W not in out:
        raise WeightsError(
            f"{path}: no roi_heads.box_predictor.cls_score.weight in the checkpoint; a full Detectron2 "
            "Faster/Mask R-CNN checkpoint is needed (not a backbone-only one)."
        )
    k = out[_CLS_W].shape[0] - 1
    # Class scores: Detectron2 puts background last, torchvision first. A pure row permutation.
    for name in (_CLS_W, _CLS_B):
        if name in out:
            t = out[name]
            out[name] = torch.cat([t[-1:], t[:-1]]).contiguous()
    # Box regression: Detectron2 has 4K class-specific rows; torchvision 4(K+1) with background first.
    for name in (_BOX_W, _BOX_B):
        if name not in out:
            continue
        t = out[name]
        rows = t.shape[0]
        if rows == 4 and k > 1:
            raise WeightsError(
                f"{path}: class-agnostic box regression (roi_heads.box_predictor.bbox_pred has 4 rows for "
                f"{k} classes, CLS_AGNOSTIC_BBOX_REG) is not supported yet; use a checkpoint trained with "
                "class-specific box regression."
            )
        if rows != 4 * k:
            raise WeightsError(
                f"{path}: roi_heads.box_predictor.bbox_pred has {rows} rows, expected 4 x {k} classes "
                f"(cls_score has {k + 1} rows including background)."
            )
        out[name] = torch.cat([t.new_zeros((4, *t.shape[1:])), t]).contiguous()
    if masks:
        if not any(n.startswith(_MASK_PREFIXES) for n in out):
            raise _no_mask_error(path)
        for name in (_MASK_W, _MASK_B):
            if name not in out:
                continue
            t = out[name]
            ch = t.shape[0]
            if ch == 1 and k > 1:
                raise WeightsError(
                    f"{path}: class-agnostic mask prediction (roi_heads.mask_head.predictor has 1 channel "
                    f"for {k} classes, CLS_AGNOSTIC_MASK) is not supported yet; use a checkpoint with a "
                    "class-specific mask head."
                )
            if ch != k:
                raise WeightsError(
                    f"{path}: roi_heads.mask_head.predictor has {ch} output channels, expected {k} classes."
                )
            out[name] = torch.cat([t.new_zeros((1, *t.shape[1:])), t]).contiguous()
    return out, dropped, meta


# --------------------------------------------------------------------------------------------------------
# Safe deserialisation
# --------------------------------------------------------------------------------------------------------

_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]  # legacy torch.save header
_CHUNK = 1 << 22


def _sniff(path: Path) -> str:
    """'torch' for torch.save files (zip or legacy format), else 'other'."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_LEGACY_TORCH_MAGIC) or zipfile.is_zipfile(path):
        return "torch"
    return "other"


def _torch_load(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` after :func:`check_torch_file`; any failure becomes a WeightsError
    (never an unsafe retry)."""
    check_torch_file(path)
    safe = getattr(torch.serialization, "safe_globals", None)
    # argparse.Namespace: torchvision's reference training scripts store their args in the checkpoint.
    ctx = safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()
    try:
        with ctx:
            kwargs: Dict[str, Any] = {"mmap": True} if mmap else {}
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as e:  # every failure mode is reported the same way
        reason = _torch_failure_reason(e)
        raise WeightsError(
            f"{path}: refused to load with torch.load(weights_only=True): {reason}\n"
            "Only tensors and plain containers are loaded; nothing in the file is executed. If the file "
            "holds other Python objects (a pickled model, training state), and only if you trust where it "
            "came from, re-save just the weights, e.g. torch.save(torch.load(f, weights_only=False)"
            "['model'], 'weights.pth')."
        ) from None


def _torch_failure_reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "global" in ln.lower():  # e.g. "Trying to load unsupported GLOBAL posix.system ..."
            return ln
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    text = useful[0] if useful else (lines[0] if lines else type(e).__name__)
    return f"{type(e).__name__}: {text[:300]}"


# --------------------------------------------------------------------------------------------------------
# Structure checks before anything is allocated
# --------------------------------------------------------------------------------------------------------
#
# A pickle declares the length of each bytes / string / long argument before its data, and CPython's unpickler
# allocates that length before reading (a 96-byte file can ask for gigabytes); torch's legacy format declares
# each storage's element count in the pickle and allocates it while unpickling; a torch zip's central
# directory declares record sizes. Every such size is checked against the bytes the file really has left
# before the real load runs. Torch zip files carry a CRC-32 per record: they are all verified, so overwritten
# tensor bytes are caught. Detectron2 .pkl files and legacy (non-zip) .pth files carry no checksum: a flipped
# byte inside their tensor data cannot be detected (only its NaN / Inf results are, by the finite check).

_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "UntypedStorage": 1,
}
_ALLOWED_KINDS = "biufc"  # numpy dtype kinds a weight file may hold (no objects, strings, structured types)


def _pickle_arg_sizes() -> Dict[int, Tuple[str, int]]:
    import pickletools

    table = {}
    for op in pickletools.opcodes:
        table[ord(op.code)] = (op.arg.name if op.arg is not None else "", op.arg.n if op.arg is not None else 0)
    return table


_OPCODES: Optional[Dict[int, Tuple[str, int]]] = None
_COUNT_BYTES = {-2: ("<B", 1), -3: ("<i", 4), -4: ("<I", 4), -5: ("<Q", 8)}  # pickletools' TAKEN_FROM_ARGUMENT*


def _scan_pickle(f: Any, end: int, what: str) -> int:
    """Walk one pickle's opcodes from ``f``'s position without building anything; every declared length must
    fit in the ``end - position`` bytes left. Returns the offset after STOP. Raises WeightsError."""
    global _OPCODES
    if _OPCODES is None:
        _OPCODES = _pickle_arg_sizes()
    while True:
        pos = f.tell()
        code = f.read(1)
        if not code:
            raise WeightsError(f"{what}: the pickle stops at byte {pos} before its end (the file is truncated).")
        entry = _OPCODES.get(code[0])
        if entry is None:
            raise WeightsError(f"{what}: byte {pos} is not a pickle opcode ({code!r}): the file is damaged.")
        name, n = entry
        if n > 0:
            _skip(f, n, end, what)
        elif n == -1:  # arguments ending at a newline (two of them for GLOBAL / INST)
            for _ in range(2 if name == "stringnl_noescape_pair" else 1):
                line = f.readline(1 << 16)
                if not line.endswith(b"\n"):
                    raise WeightsError(f"{what}: unterminated text argument at byte {pos}: the file is damaged.")
        elif n in _COUNT_BYTES:
            fmt, width = _COUNT_BYTES[n]
            raw = f.read(width)
            if len(raw) < width:
                raise WeightsError(f"{what}: the pickle stops at byte {pos} (the file is truncated).")
            count = struct.unpack(fmt, raw)[0]
            if count < 0:
                raise WeightsError(f"{what}: negative length {count} at byte {pos}: the file is damaged.")
            _skip(f, count, end, what, pos)
        if code == pickle.STOP:
            return f.tell()


def _skip(f: Any, n: int, end: int, what: str, at: Optional[int] = None) -> None:
    left = end - f.tell()
    if n > left:
        where = f" at byte {at}" if at is not None else ""
        raise WeightsError(
            f"{what}: declares {n} bytes of data{where} but only {left} bytes are left in the file "
            "(truncated or damaged); nothing was allocated."
        )
    f.seek(n, 1)


class _Inert:
    """Stands for every global of a pickle read only for its structure: takes anything, runs nothing."""

    qualified = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _DryUnpickler(pickle.Unpickler):
    """Reads a (pre-scanned) pickle into inert objects to collect its persistent ids (torch storages)."""

    def __init__(self, f: Any) -> None:
        super().__init__(f, encoding="latin1")
        self.pids: List[Any] = []
        self._types: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self._types:
            self._types[key] = type("Inert", (_Inert,), {"qualified": f"{module}.{name}"})
        return self._types[key]

    def persistent_load(self, pid: Any) -> Any:
        self.pids.append(pid)
        return _Inert()


def _dry_load(f: Any, what: str) -> Tuple[Any, List[Any]]:
    try:
        u = _DryUnpickler(f)
        return u.load(), u.pids
    except Exception as e:  # any malformed pickle
        raise WeightsError(f"{what}: the pickle is damaged ({type(e).__name__}: {str(e)[:200]}).") from None


def _storage_bytes(pid: Any, what: str) -> Optional[Tuple[str, int]]:
    """(key, bytes) of a torch ``('storage', type, key, location, numel, ...)`` persistent id."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise WeightsError(f"{what}: unexpected persistent id {str(pid)[:80]!r}: the file is damaged.")
    kind, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise WeightsError(f"{what}: malformed storage record {str(pid)[:80]!r}: the file is damaged.")
    itemsize = _STORAGE_ITEMSIZE.get(str(getattr(kind, "qualified", "")).rsplit(".", 1)[-1])
    return None if itemsize is None else (key, numel * itemsize)


def check_torch_file(path: Path) -> None:
    """Structure of a ``torch.save`` file before torch reads it: zip records within the file and matching
    their CRC-32, every storage's declared size equal to its record (zip) or within the file (legacy)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        _check_torch_zip(path)
    else:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
        if head.startswith(_LEGACY_TORCH_MAGIC):
            _check_torch_legacy(path)


def _check_torch_zip(path: Path) -> None:
    size = path.stat().st_size
    what = str(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            pkls = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pkls) != 1:
                raise WeightsError(f"{what}: a torch zip file has one data.pkl record, this one has {len(pkls)}.")
            for info in infos:
                if info.compress_type == zipfile.ZIP_STORED:
                    bad = info.file_size != info.compress_size
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    bad = info.file_size > 1100 * max(info.compress_size, 1)  # deflate expands at most ~1032x
                else:
                    raise WeightsError(f"{what}: record {info.filename} uses zip compression {info.compress_type}.")
                if bad or info.header_offset + info.compress_size > size:
                    raise WeightsError(
                        f"{what}: record {info.filename} declares {info.file_size} bytes, more than the file "
                        f"({size} bytes) holds: the file is truncated or damaged; nothing was allocated."
                    )
            for info in infos:  # zipfile verifies each record's CRC-32 when it is read to the end
                with z.open(info) as f:
                    while f.read(_CHUNK):
                        pass
            prefix = pkls[0].filename[: -len("data.pkl")]
            data = z.read(pkls[0])
            records = {i.filename: i.file_size for i in infos}
    except WeightsError:
        raise
    except zipfile.BadZipFile as e:
        text = str(e)
        if text.startswith("Bad CRC-32"):
            raise WeightsError(
                f"{what}: {text.replace('Bad CRC-32 for file', 'the CRC-32 of record')} does not match its "
                "contents: the tensor data was modified or damaged after the file was saved."
            ) from None
        raise WeightsError(f"{what}: damaged zip structure ({text[:200]}); the file is truncated or corrupt.") from None
    except (OSError, EOFError, ValueError, UnicodeDecodeError, NotImplementedError, RuntimeError, struct.error) as e:
        raise WeightsError(f"{what}: damaged zip structure ({type(e).__name__}: {str(e)[:200]}).") from None
    buf = io.BytesIO(data)
    _scan_pickle(buf, len(data), f"{what} ({pkls[0].filename})")
    buf.seek(0)
    _, pids = _dry_load(buf, f"{what} ({pkls[0].filename})")
    for pid in pids:
        found = _storage_bytes(pid, what)
        if found is None:
            continue
        key, nbytes = found
        record = f"{prefix}data/{key}"
        if record not in records:
            raise WeightsError(f"{what}: tensor storage {key} has no record {record}: the file is damaged.")
        if records[record] != nbytes:
            raise WeightsError(
                f"{what}: tensor storage {key} declares {nbytes} bytes but its record holds {records[record]}: "
                "the file is damaged; nothing was allocated."
            )


def _check_torch_legacy(path: Path) -> None:
    """torch's legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) layout: magic, protocol and system
    pickles, the object pickle (storages as persistent ids with their element counts), the list of storage
    keys, then per key an int64 element count and the raw bytes."""
    size = path.stat().st_size
    what = str(path)
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, sys info
            _scan_pickle(f, size, what)
        start = f.tell()
        _scan_pickle(f, size, what)
        f.seek(start)
        _, pids = _dry_load(f, what)
        declared: Dict[str, int] = {}
        total = 0
        for pid in pids:
            found = _storage_bytes(pid, what)
            if found is None:
                raise WeightsError(f"{what}: storage type {getattr(pid[1], 'qualified', '?')} is not supported.")
            key, nbytes = found
            if key not in declared:
                declared[key] = nbytes
                total += nbytes
        if total > size:
            raise WeightsError(
                f"{what}: declares {total} bytes of tensor data but the file has {size} bytes: it is truncated "
                "or damaged; nothing was allocated."
            )
        start = f.tell()
        _scan_pickle(f, size, what)
        f.seek(start)
        keys, _ = _dry_load(f, what)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
            raise WeightsError(f"{what}: the storage key list does not match the tensors: the file is damaged.")
        for key in keys:
            raw = f.read(8)
            if len(raw) < 8:
                raise WeightsError(f"{what}: tensor data stops before storage {key} (the file is truncated).")
            numel = struct.unpack("<q", raw)[0]
            itemsize = declared[key] // numel if numel > 0 else 0
            if numel < 0 or (numel and numel * itemsize != declared[key]) or (not numel and declared[key]):
                raise WeightsError(f"{what}: storage {key} declares {numel} elements, its tensor record another.")
            _skip(f, declared[key], size, what)


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


def _first_attr(modules: Sequence[str], attr: str) -> Any:
    for mod in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    return None


class _NdarrayType:
    """What ``numpy.ndarray`` resolves to in a .pkl: only the subtype argument of ``_reconstruct`` (calling it
    directly would allocate any shape the file asks for)."""

    def __init__(self, *args: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray called directly")


class _CheckedArray(np.ndarray):
    """An ndarray whose pickled state is checked before numpy uses it (dtype kind, shape, data length)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        dtype = _clean_dtype(dtype)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape) or len(shape) > 16:
            raise pickle.UnpicklingError(f"malformed numpy array shape {str(shape)[:60]}")
        if isinstance(raw, str):  # Python 2 pickles: a str read with encoding="latin1", as numpy takes it
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy array data is not raw bytes")
        need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if need != len(raw):
            raise pickle.UnpicklingError(f"numpy array declares {need} bytes of data but holds {len(raw)}")
        super().__setstate__((1, shape, dtype, bool(fortran), raw))


def _clean_dtype(d: Any) -> np.dtype:
    if not isinstance(d, np.dtype) or d.kind not in _ALLOWED_KINDS or d.fields is not None or d.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {str(d)[:40]} is not a plain numeric type")
    return np.dtype(d.str)  # a fresh canonical dtype (a pickled dtype's state can be edited)


class _SafeNumpy:
    """The numpy callables a .pkl may use, each checking its declared sizes against the file's size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def dtype(self, obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
        if not isinstance(obj, str) or len(obj) > 8:
            raise pickle.UnpicklingError(f"numpy dtype {str(obj)[:40]!r} is not a plain numeric type")
        try:  # always a copy: the pickle's BUILD then edits it, never numpy's shared builtin dtype
            d = np.dtype(obj, False, True)
        except TypeError as e:
            raise pickle.UnpicklingError(f"numpy dtype {obj!r}: {e}") from None
        _clean_dtype(d)
        return d

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NdarrayType:
            raise pickle.UnpicklingError("numpy _reconstruct of something other than ndarray")
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise pickle.UnpicklingError(f"malformed numpy array shape {str(shape)[:60]}")
        if float(np.prod(shape, dtype=np.float64)) > self.limit:
            raise pickle.UnpicklingError(f"numpy array of shape {shape} is larger than the file")
        return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        d = _clean_dtype(dtype)
        if isinstance(data, str):  # Python 2 pickles
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != d.itemsize:
            raise pickle.UnpicklingError("malformed numpy scalar")
        return np.frombuffer(data, dtype=d)[0].copy()

    def frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        d = _clean_dtype(dtype)
        if not isinstance(buf, (bytes, bytearray)) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("malformed numpy buffer")
        if int(np.prod(shape, dtype=np.float64)) * d.itemsize != len(buf):
            raise pickle.UnpicklingError("numpy buffer size does not match its shape")
        return np.frombuffer(buf, dtype=d).reshape(shape, order="F" if order == "F" else "C").copy()


def _safe_globals(limit: int) -> Dict[Tuple[str, str], Any]:
    """The only globals a Detectron2 .pkl may reference: numpy array rebuilding and plain containers."""
    import codecs

    safe = _SafeNumpy(limit)
    table: Dict[Tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): safe.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Python 3 pickles bytes as _codecs.encode(str, "latin1") under protocol 2.
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 writes numpy._core.*, 1 numpy.core.*
        table[(mod, "_reconstruct")] = safe.reconstruct
        table[(mod, "scalar")] = safe.scalar
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        table[(mod, "_frombuffer")] = safe.frombuffer
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global (so nothing can execute)."""

    def __init__(self, f: Any, encoding: str = "latin1", limit: Optional[int] = None) -> None:
        super().__init__(f, encoding=encoding)
        if limit is None:  # arrays can never be larger than the file they come from
            limit = os.fstat(f.fileno()).st_size if hasattr(f, "fileno") else len(f.getbuffer())
        self._globals = _safe_globals(limit)

    def find_class(self, module: str, name: str) -> Any:
        obj = self._globals.get((module, name))
        if obj is None:
            raise _RefusedGlobal(module, name)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _restricted_pickle_load(path: Path) -> Any:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            _scan_pickle(f, size, str(path))  # every declared length fits in the file: nothing huge allocated
            f.seek(0)
            return _RestrictedUnpickler(f, limit=size).load()
    except WeightsError:
        raise
    except _RefusedGlobal as e:
        raise WeightsError(
            f"{path}: refused to unpickle: the file references the global '{e.qualified}', which is not "
            "allowed (only numpy arrays and plain containers are). This is not a plain Detectron2 weight "
            "file; it may run code when opened with pickle. Do not load it unless you trust its origin; "
            "if you do, convert it to a plain {'model': {name: ndarray}} pickle."
        ) from None
    except Exception as e:  # garbage, truncated files, wrong formats
        raise WeightsError(
            f"{path}: not a PyTorch checkpoint and not a readable pickle ({type(e).__name__}: "
            f"{str(e)[:200]}); expected a torchvision .pth or a Detectron2 .pkl/.pth file."
        ) from None


def _check_hub_hash(path: str, url: str) -> None:
    m = re.search(r"-([a-f0-9]*)\.", os.path.basename(urlparse(url).path))
    if m is None or not m.group(1):
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(m.group(1)):
        raise WeightsError(
            f"{path}: sha256 does not start with {m.group(1)} as its name says: the file is corrupt or "
            f"incomplete. Download it again from {url}."
        )


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def _truncated_zip(path: Path) -> None:
    """A file that starts like a zip archive (torch.save's format) but has no central directory at its end."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise WeightsError(
            f"{path}: a zip file (torch.save's format) without its central directory: the file is truncated; "
            "copy or download it again."
        )


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file; check the path.")


def _ignorable(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _inner_model(obj: Mapping[Any, Any]) -> Mapping[Any, Any]:
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    return obj


def _strip_prefixes_one(key: str) -> str:
    for prefix in ("module.", "model."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _strip_prefixes(sd: Mapping[Any, Any]) -> Dict[Any, Any]:
    """Remove a DataParallel ``module.`` (or wrapper ``model.``) prefix shared by every key."""
    out = dict(sd)
    for prefix in ("module.", "model."):
        while out and all(isinstance(k, str) and k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _unwrap_state_dict(obj: Any, path: Path) -> Dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (or {{'model': state_dict}}), found {type(obj).__name__}.")
    sd = _strip_prefixes(_inner_model(obj))
    bad = [repr(k) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(
            f"{path}: expected a state dict of tensors, but these entries are not tensors:\n"
            + _format_list(bad)
            + "\nsave model.state_dict() (or {'model': model.state_dict()})."
        )
    return sd


def _as_tensor(value: Any, key: str, where: str) -> torch.Tensor:
    """A contiguous float32 CPU tensor (own memory) from a tensor or numpy array; NaN / Inf are refused."""
    if torch.is_tensor(value):
        t = value.detach().cpu()
        if not t.is_floating_point():
            raise WeightsError(f"{where}: {key} has dtype {t.dtype}, expected floating point weights.")
        t = t.to(torch.float32).contiguous()
    elif isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            raise WeightsError(f"{where}: {key} has dtype {arr.dtype}, expected floating point weights.")
        t = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    else:
        raise WeightsError(f"{where}: {key} is a {type(value).__name__}, expected a tensor or numpy array.")
    finite = np.isfinite(t.numpy())  # numpy's is ~20x faster than torch.isfinite here
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise WeightsError(
            f"{where}: tensor {key} has {bad} non-finite value(s) (NaN or Inf) of {t.numel()}: the checkpoint "
            "is damaged or training diverged; use another checkpoint."
        )
    return t


def _format_list(items: Sequence[str]) -> str:
    shown = [f"  {s}" for s in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"  ... and {len(items) - _MAX_LISTED} more")
    return "\n".join(shown)


def _list_section(lines: List[str], title: str, items: Sequence[str]) -> None:
    if items:
        lines.append(f"{title} ({len(items)}):")
        lines.append(_format_list(items))


def _no_mask_error(path: Path) -> WeightsError:
    return WeightsError(
        f"{path}: the checkpoint has no mask head (roi_heads.mask_*): is this a Faster R-CNN checkpoint "
        "loaded as Mask R-CNN? Build the Faster R-CNN model (masks=False) or use Mask R-CNN weights."
    )


def _caffe2_error(path: Path) -> WeightsError:
    return WeightsError(
        f"{path}: this is a Caffe2 / Detectron (v1) checkpoint ('blobs'), which is not supported; load it "
        "in Detectron2 and save the converted model.state_dict(), or use a Detectron2 model-zoo file."
    )
