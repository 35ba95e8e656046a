"""Build a deploy-form model from a model name and a checkpoint (the one entry point every tool uses)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from ..config import MODEL_NAMES, ModelSpec, get_spec
from ..errors import UserError
from .rcnn import DeployRCNN

WeightsArg = Union[str, "os.PathLike[str]", None]


def _is_enum_name(weights: str) -> bool:
    return "_Weights." in weights and not os.path.exists(weights)


def build_model(
    model: str,
    weights: WeightsArg = None,
    *,
    class_names: Optional[Sequence[str]] = None,
    **spec_overrides: object,
) -> DeployRCNN:
    """Create ``DeployRCNN`` for ``model`` (see :data:`rcnn_deploy.MODEL_NAMES`) and load ``weights``.

    ``weights`` is a checkpoint path (torchvision ``.pth``; Detectron2 ``.pkl``/``.pth``), a torchvision
    weight enum name such as ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"`` (read from the torch hub cache, never
    downloaded), or None for an untrained model. When the checkpoint has a different number of classes than
    COCO and no ``class_names`` are given, classes are named ``class_1 ... class_N``.
    """
    if model not in MODEL_NAMES:
        raise UserError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}", where="--model")
    base = get_spec(model, class_names, **spec_overrides)
    if weights is None:
        return DeployRCNN(base)
    from .weights import check_state_dict, load_checkpoint, load_torchvision_enum

    if isinstance(weights, str) and _is_enum_name(weights):
        if base.flavour != "torchvision":
            raise UserError(
                f"weight enum {weights!r} is a torchvision checkpoint; use a torchvision-* model", where="--weights"
            )
        loaded = load_torchvision_enum(weights, masks=base.masks)
        source = weights
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError("weights file not found", where=path, fix="check the path given to --weights")
        loaded = load_checkpoint(path, base.flavour, masks=base.masks)
        source = str(path)
    if class_names is None and loaded.class_names is not None and base.flavour == "torchvision":
        # an rcnn-deploy checkpoint names its classes and their COCO category ids
        overrides = {"category_ids": loaded.category_ids, **spec_overrides}
        spec = get_spec(model, loaded.class_names, **overrides)
    else:
        spec = _spec_for(model, base, loaded.num_classes, class_names, spec_overrides)
    net = DeployRCNN(spec)
    sd = {k: v for k, v in loaded.state_dict.items() if not k.endswith("num_batches_tracked")}
    check_state_dict(sd, {k: tuple(v.shape) for k, v in net.state_dict().items()}, loaded.source)
    net.load_state_dict(sd)
    net.checkpoint_input_hw = loaded.input_hw  # the input size the checkpoint was trained at, if it says
    net.checkpoint_meta = loaded.meta
    net.checkpoint_source = source  # named by export's non-finite check
    return net


def _spec_for(
    model: str,
    base: ModelSpec,
    num_classes: int,
    class_names: Optional[Sequence[str]],
    overrides: dict,
) -> ModelSpec:
    if num_classes == base.num_classes:
        return base
    if class_names is not None:
        raise UserError(
            f"the checkpoint has {num_classes} classes (with background) but {len(base.class_names)} class "
            "names were given; pass one name per class"
            + (" plus '__background__' first" if base.flavour == "torchvision" else " (foreground only)")
        )
    fg = [f"class_{i}" for i in range(1, num_classes)]
    names = (["__background__"] + fg) if base.flavour == "torchvision" else fg
    return get_spec(model, names, **overrides)
