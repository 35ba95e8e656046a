"""rcnn-deploy's own checkpoint format: a torchvision state dict plus what a deployer needs to know.

``save_checkpoint`` writes (atomically, through ``torch.save``; loadable with ``weights_only=True``)::

    {"format": "rcnn-deploy/checkpoint", "version": 1,
     "model": "torchvision-maskrcnn", "class_names": [...], "category_ids": [...], "input_hw": [H, W],
     "weights": {name: float tensor},                          # kept as they are (fp32 or fp16)
     "int8": {name: {"q": int8 tensor, "scale": fp32 [C_out]}},  # per-output-channel symmetric
     "meta": {...}}                                             # free-form: training recipe, metrics

``compress="int8"`` stores every conv / linear weight with at least ``INT8_MIN_NUMEL`` elements as int8 with
one fp32 scale per output channel (``w = q * scale``) and every other tensor in fp32: a Mask R-CNN R50-FPN
takes ~44 MB instead of ~177 MB. Dequantized weights *are* the model: every reference (PyTorch parity, mAP)
is computed from the loaded file, never from the training weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from .._io import PathLike, atomic_write
from ..errors import UserError

CHECKPOINT_FORMAT = "rcnn-deploy/checkpoint"
CHECKPOINT_VERSION = 1
INT8_MIN_NUMEL = 4096
COMPRESSIONS = ("none", "fp16", "int8")


def is_rcnn_deploy_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def checkpoint_model_name(path: PathLike) -> Optional[str]:
    """The model name an rcnn-deploy checkpoint records, or None for any other file (the full load that
    follows reports what is wrong with a damaged one)."""
    from ..config import MODEL_NAMES

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a (zip) torch file, or not loadable safely: not ours
        return None
    if not is_rcnn_deploy_checkpoint(obj):
        return None
    name = obj.get("model")
    return name if name in MODEL_NAMES else None


def quantize_per_channel(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (dim 0): returns ``(q int8, scale fp32 [C])``."""
    w = w.detach().float().cpu()
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def save_checkpoint(
    path: PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    input_hw: Tuple[int, int],
    compress: str = "int8",
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a deployable checkpoint (see module docstring). ``class_names`` includes background first."""
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {COMPRESSIONS}, got {compress!r}")
    if len(class_names) != len(category_ids):
        raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
    weights: Dict[str, torch.Tensor] = {}
    int8: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, t in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        t = t.detach().cpu()
        if compress == "int8" and name.endswith(".weight") and t.dim() >= 2 and t.numel() >= INT8_MIN_NUMEL:
            q, scale = quantize_per_channel(t)
            int8[name] = {"q": q, "scale": scale}
        elif compress == "fp16" and t.is_floating_point() and t.dim() >= 2:
            weights[name] = t.half().clone()
        else:
            weights[name] = t.float().clone()
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model,
        "class_names": list(class_names),
        "category_ids": [int(c) for c in category_ids],
        "input_hw": [int(input_hw[0]), int(input_hw[1])],
        "compress": compress,
        "weights": weights,
        "int8": int8,
        # plain JSON types only, so the file loads with torch.load(weights_only=True)
        "meta": json.loads(json.dumps(meta or {}, default=str)),
    }
    return atomic_write(path, lambda p: torch.save(obj, p))


def checkpoint_fields(obj: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Check every field of a loaded rcnn-deploy checkpoint (a damaged or edited one raises a UserError naming
    the field); returns the class names, category ids, input size and meta, converted."""
    from ..config import MODEL_NAMES

    def bad(key: str, what: str) -> UserError:
        return _error(where, f"field {key!r} {what}")

    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise _error(
            where,
            f"rcnn-deploy checkpoint version {version!r} is not supported by this rcnn-deploy (it reads version "
            f"{CHECKPOINT_VERSION}); upgrade rcnn-deploy or re-save the checkpoint.",
        )
    if obj.get("model") not in MODEL_NAMES:
        raise bad("model", f"is {str(obj.get('model'))[:40]!r}, not one of {', '.join(MODEL_NAMES)}")
    names = obj.get("class_names")
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "must list the background and at least one class name")
    ids = obj.get("category_ids")
    if not isinstance(ids, (list, tuple)) or len(ids) != len(names) or not all(_is_int(c) for c in ids):
        raise bad("category_ids", f"must be {len(names)} integers, one per class name")
    hw = obj.get("input_hw")
    if hw is not None and not (
        isinstance(hw, (list, tuple)) and len(hw) == 2 and all(_is_int(s) and s > 0 and s % 32 == 0 for s in hw)
    ):
        raise bad("input_hw", f"must be [H, W], positive multiples of 32, got {str(hw)[:40]}")
    meta = obj.get("meta", {})
    if not isinstance(meta, Mapping):
        raise bad("meta", "must be a dict")
    weights, int8 = obj.get("weights"), obj.get("int8")
    if not isinstance(weights, Mapping) or not isinstance(int8, Mapping):
        raise bad("weights" if not isinstance(weights, Mapping) else "int8", "must be a dict of tensors")
    for k, v in weights.items():
        if not isinstance(k, str) or not torch.is_tensor(v) or not v.is_floating_point():
            raise bad("weights", f"entry {str(k)[:80]!r} is not a floating-point tensor")
    for k, e in int8.items():
        q, scale = (e.get("q"), e.get("scale")) if isinstance(e, Mapping) else (None, None)
        if not (isinstance(k, str) and torch.is_tensor(q) and torch.is_tensor(scale)):
            raise bad("int8", f"entry {str(k)[:80]!r} must hold tensors 'q' and 'scale'")
        if q.dtype != torch.int8 or q.dim() < 1 or not scale.is_floating_point() or scale.numel() != q.shape[0]:
            raise bad("int8", f"entry {k!r}: q must be int8 and scale one float per output channel ({q.shape[0]})")
    return {
        "class_names": tuple(names),
        "category_ids": tuple(int(c) for c in ids),
        "input_hw": (int(hw[0]), int(hw[1])) if hw is not None else None,
        "meta": dict(meta),
    }


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _error(where: str, what: str) -> UserError:
    from .weights import WeightsError

    return WeightsError(f"{where}: {what}")


def checkpoint_state_dict(obj: Mapping[str, Any], where: str) -> Dict[str, torch.Tensor]:
    """The float32 state dict of a loaded rcnn-deploy checkpoint (int8 entries dequantized); call
    :func:`checkpoint_fields` first."""
    checkpoint_fields(obj, where)
    sd: Dict[str, torch.Tensor] = {k: v.float() for k, v in obj["weights"].items()}
    for k, entry in obj["int8"].items():
        sd[k] = dequantize_per_channel(entry["q"], entry["scale"])
    return sd
