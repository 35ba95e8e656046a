"""Converting weights between Detectron2's and torchvision's layouts, and to float32 tensors.

Detectron2 names are renamed to torchvision's (the table in :mod:`.names`) and the class layout is converted
from Detectron2's "background last" to torchvision's "background first"; the box-regression and mask-logit
rows of the background class (which torchvision never uses at inference) are zero-filled. The reverse
conversion drops those rows again, so a Detectron2 file round-trips exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch

from rcnn_deploy._io import PathLike, atomic_write

from .errors import WeightsError, format_list, no_mask_error
from .names import (
    BOX_B,
    BOX_W,
    CLS_B,
    CLS_W,
    D2_PREFIXES,
    MASK_B,
    MASK_PREFIXES,
    MASK_W,
    detectron2_to_torchvision_name,
    ignorable,
    torchvision_to_detectron2_name,
)


def torchvision_to_detectron2(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """Exact inverse of the Detectron2 -> torchvision conversion: Detectron2 names, background class last.

    The background rows of ``bbox_pred`` and ``mask_fcn_logits`` (unused at inference) are dropped.
    """
    out: Dict[str, np.ndarray] = {}
    unknown = []
    for key, value in state_dict.items():
        if ignorable(key):
            continue
        d2 = torchvision_to_detectron2_name(key)
        if d2 is None:
            unknown.append(key)
            continue
        out[d2] = as_tensor(value, key, "state dict").numpy().copy()
    if unknown:
        raise WeightsError(
            "torchvision_to_detectron2: keys without a Detectron2 equivalent:\n"
            + format_list(unknown)
            + "\nonly Faster/Mask R-CNN ResNet-50-FPN (v1) state dicts can be converted."
        )
    cls_w = out.get("roi_heads.box_predictor.cls_score.weight")
    if cls_w is None:
        raise WeightsError(f"torchvision_to_detectron2: the state dict has no {CLS_W}.")
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
    if any(isinstance(k, str) and k.startswith(D2_PREFIXES) for k in state_dict):
        model = {k: as_tensor(v, k, "state dict").numpy().copy() for k, v in state_dict.items()}
    else:
        model = torchvision_to_detectron2(state_dict)
    payload = {"model": model, "__author__": "rcnn-deploy", "matching_heuristics": False}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=2)

    return atomic_write(path, write)


def detectron2_to_torchvision(
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
            meta[name] = tuple(float(x) for x in as_tensor(value, name, str(path)).flatten().tolist())
            dropped.append(name)
            continue
        if (
            name.startswith("proposal_generator.anchor_generator.")
            or name.endswith("num_batches_tracked")
            or name.endswith("_momentum")  # Caffe2-era SGD momentum blobs
        ):
            dropped.append(name)
            continue
        tv = detectron2_to_torchvision_name(name)
        if tv is None:
            unknown.append(name)
            continue
        if not masks and tv.startswith(MASK_PREFIXES):
            dropped.append(name)
            continue
        out[tv] = as_tensor(value, name, str(path))
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
            + format_list(unknown)
            + f"\n{hint}"
        )
    if CLS_W not in out:
        raise WeightsError(
            f"{path}: no roi_heads.box_predictor.cls_score.weight in the checkpoint; a full Detectron2 "
            "Faster/Mask R-CNN checkpoint is needed (not a backbone-only one)."
        )
    k = out[CLS_W].shape[0] - 1
    # Class scores: Detectron2 puts background last, torchvision first. A pure row permutation.
    for name in (CLS_W, CLS_B):
        if name in out:
            t = out[name]
            out[name] = torch.cat([t[-1:], t[:-1]]).contiguous()
    # Box regression: Detectron2 has 4K class-specific rows; torchvision 4(K+1) with background first.
    for name in (BOX_W, BOX_B):
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
        if not any(n.startswith(MASK_PREFIXES) for n in out):
            raise no_mask_error(path)
        for name in (MASK_W, MASK_B):
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


def as_tensor(value: Any, key: str, where: str) -> torch.Tensor:
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
