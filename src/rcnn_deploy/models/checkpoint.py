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

CHECKPOINT_FORMAT = "rcnn-deploy/checkpoint"
CHECKPOINT_VERSION = 1
INT8_MIN_NUMEL = 4096
COMPRESSIONS = ("none", "fp16", "int8")


def is_rcnn_deploy_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def checkpoint_model_name(path: PathLike) -> Optional[str]:
    """The model name an rcnn-deploy checkpoint records, or None for any other file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a (zip) torch file, or not loadable safely: not ours
        return None
    return str(obj["model"]) if is_rcnn_deploy_checkpoint(obj) else None


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


def checkpoint_state_dict(obj: Mapping[str, Any], where: str) -> Dict[str, torch.Tensor]:
    """The float32 state dict of a loaded rcnn-deploy checkpoint (int8 entries dequantized)."""
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(
            f"{where}: rcnn-deploy checkpoint version {version!r} is not supported by this rcnn-deploy "
            f"(it reads version {CHECKPOINT_VERSION}); upgrade rcnn-deploy or re-save the checkpoint."
        )
    sd: Dict[str, torch.Tensor] = {k: v.float() for k, v in obj["weights"].items()}
    for k, entry in obj["int8"].items():
        sd[k] = dequantize_per_channel(entry["q"], entry["scale"])
    return sd
