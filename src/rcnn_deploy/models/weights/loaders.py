"""Loading Faster/Mask R-CNN ResNet-50-FPN checkpoints into torchvision's key layout, and checking that they fit.

Two checkpoint flavours are understood:

* ``torchvision``: ``.pth``/``.pt`` files written by ``torch.save`` (bare state dict, or wrapped as
  ``{"model": sd}`` / ``{"state_dict": sd}``), and the torchvision weight enums
  (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``...) when their file is already in the torch hub cache.
* ``detectron2``: model-zoo ``.pkl`` files (``{"model": {name: ndarray}, "__author__": ...}``, often
  pickled by Python 2) and training ``.pth`` checkpoints
  (``{"model": {name: tensor}, "optimizer": ..., "iteration": ...}``).

Nothing here ever executes code from a checkpoint: every file's structure is checked first
(:mod:`.structure`), torch files then go through ``torch.load(weights_only=True)`` only, and ``.pkl`` files
through the restricted unpickler (:mod:`.unpickler`). Nothing is downloaded either.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch

from rcnn_deploy._io import PathLike

from ..checkpoint import checkpoint_fields, checkpoint_state_dict, is_rcnn_deploy_checkpoint
from .convert import as_tensor, detectron2_to_torchvision
from .errors import WeightsError, caffe2_error, format_list, list_section, no_mask_error
from .names import (
    CLS_W,
    D2_PREFIXES,
    MASK_PREFIXES,
    PREDICTOR_KEYS,
    TV_PREFIXES,
    ignorable,
)
from .structure import check_torch_file, scan_pickle, sniff, truncated_zip
from .unpickler import RefusedGlobal, RestrictedUnpickler

FLAVOURS = ("torchvision", "detectron2")


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
    truncated_zip(path)
    container = sniff(path)
    if container == "torch":
        obj = _torch_load(path, mmap=zipfile.is_zipfile(path))
    else:
        obj = _restricted_pickle_load(path)
    if isinstance(obj, Mapping) and "blobs" in obj:
        raise caffe2_error(path)
    if is_rcnn_deploy_checkpoint(obj):
        return "torchvision"
    keys = list(_inner_model(obj).keys()) if isinstance(obj, Mapping) else []
    names = [k for k in keys if isinstance(k, str)]
    names = [_strip_prefixes_one(k) for k in names]
    if any(k.startswith(D2_PREFIXES) for k in names):
        return "detectron2"
    if any(k.startswith(TV_PREFIXES) for k in names):
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
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not ignorable(k)}
    exp = {k: tuple(int(s) for s in shape) for k, shape in expected.items() if not ignorable(k)}
    missing = [k for k in exp if k not in got]
    unexpected = [k for k in got if k not in exp]
    mismatched = [k for k in exp if k in got and got[k] != exp[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source}: the checkpoint does not fit the model."]
    list_section(lines, "missing keys (in the model, not in the checkpoint)", missing)
    list_section(lines, "unexpected keys (in the checkpoint, not in the model)", unexpected)
    list_section(lines, "shape mismatches", [f"{k}: checkpoint {got[k]} vs model {exp[k]}" for k in mismatched])
    hints = []
    if mismatched and all(k in PREDICTOR_KEYS for k in mismatched):
        ck = got.get(CLS_W, (None,))[0]
        mo = exp.get(CLS_W, (None,))[0]
        hints.append(
            f"num_classes differs (checkpoint {ck}, model {mo}, both counting background): "
            "pass the checkpoint's class names (Python: build_model(..., class_names=[...]); an rcnn-deploy "
            "checkpoint from `rcnn-deploy train` records them)."
        )
    if missing and all(k.startswith(MASK_PREFIXES) for k in missing):
        hints.append(
            "is this a Faster R-CNN checkpoint loaded as Mask R-CNN? Use -m torchvision-fasterrcnn (or "
            "detectron2-fasterrcnn), or Mask R-CNN weights."
        )
    if unexpected and all(k.startswith(MASK_PREFIXES) for k in unexpected):
        hints.append(
            "this is a Mask R-CNN checkpoint but the model has no mask head: use -m torchvision-maskrcnn "
            "(or detectron2-maskrcnn) for the masks; -m *-fasterrcnn loads it without them (Python: masks=False, "
            "the mask head is dropped)."
        )
    if any(k.startswith(D2_PREFIXES) for k in unexpected):
        hints.append("the checkpoint uses Detectron2 names: use -m detectron2-maskrcnn or detectron2-fasterrcnn.")
    if not hints:
        hints.append(
            "check that this is a Faster/Mask R-CNN ResNet-50-FPN (v1) checkpoint and that the flavour "
            "(torchvision / detectron2) is right."
        )
    lines.append("hint: " + " ".join(hints))
    raise WeightsError("\n".join(lines))


# --------------------------------------------------------------------------------------------------------
# torchvision flavour
# --------------------------------------------------------------------------------------------------------


def _load_torchvision_file(path: Path, *, masks: bool) -> LoadedWeights:
    if sniff(path) != "torch":
        truncated_zip(path)
        raise WeightsError(
            f"{path}: not a torch.save file (no zip or legacy torch header); if it is a Detectron2 .pkl, "
            "use -m detectron2-maskrcnn (or detectron2-fasterrcnn)."
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
    if any(k.startswith(D2_PREFIXES) for k in sd):
        raise WeightsError(
            f"{path}: the key names are Detectron2's (e.g. backbone.bottom_up.*): use -m detectron2-maskrcnn "
            "(or detectron2-fasterrcnn)."
        )
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for key, value in sd.items():
        if ignorable(key) or (not masks and key.startswith(MASK_PREFIXES)):
            dropped.append(key)
            continue
        out[key] = as_tensor(value, key, str(path))
    if CLS_W not in out:
        what = (
            "it looks like a ResNet classification/backbone checkpoint"
            if "conv1.weight" in out or "backbone.body.conv1.weight" in out
            else "it is not a Faster/Mask R-CNN state dict"
        )
        raise WeightsError(
            f"{path}: no {CLS_W} in the checkpoint ({what}); a full Faster/Mask R-CNN ResNet-50-FPN "
            "detector checkpoint is needed."
        )
    if masks and not any(k.startswith(MASK_PREFIXES) for k in out):
        raise no_mask_error(path)
    return LoadedWeights(
        state_dict=out,
        num_classes=int(out[CLS_W].shape[0]),
        source=source,
        dropped=dropped,
        flavour="torchvision",
    )


# --------------------------------------------------------------------------------------------------------
# Detectron2 flavour
# --------------------------------------------------------------------------------------------------------


def _load_detectron2_file(path: Path, *, masks: bool) -> LoadedWeights:
    truncated_zip(path)
    if sniff(path) == "torch":
        obj = _torch_load(path)
        kind = "Detectron2 checkpoint"
    else:
        obj = _restricted_pickle_load(path)
        kind = "Detectron2 pickle"
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of weights, found {type(obj).__name__}.")
    if "blobs" in obj:
        raise caffe2_error(path)
    model = _strip_prefixes(_inner_model(obj))
    author = obj.get("__author__")
    source = f"{kind} {path}" + (f" (author: {author})" if isinstance(author, str) else "")
    if any(isinstance(k, str) and k.startswith(TV_PREFIXES) for k in model):
        raise WeightsError(
            f"{path}: the key names are torchvision's (backbone.body.*, rpn.head.*): load it with the "
            "'torchvision' flavour."
        )
    sd, dropped, meta = detectron2_to_torchvision(model, path, masks=masks)
    return LoadedWeights(
        state_dict=sd,
        num_classes=int(sd[CLS_W].shape[0]),
        source=source,
        dropped=dropped,
        flavour="detectron2",
        pixel_mean=meta.get("pixel_mean"),
        pixel_std=meta.get("pixel_std"),
    )


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


def _restricted_pickle_load(path: Path) -> Any:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            scan_pickle(f, size, str(path))  # every declared length fits in the file: nothing huge allocated
            f.seek(0)
            return RestrictedUnpickler(f, limit=size).load()
    except WeightsError:
        raise
    except RefusedGlobal as e:
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


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file; check the path.")


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
            + format_list(bad)
            + "\nsave model.state_dict() (or {'model': model.state_dict()})."
        )
    return sd
