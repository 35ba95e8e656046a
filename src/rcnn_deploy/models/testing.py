"""Deterministic test weights that give confident, well-separated detections.

A randomly initialised R-CNN scores every class near 1/num_classes (below the 0.05 detection threshold), its
frozen batch-norm statistics are meaningless (activations grow through 50 layers) and its RPN objectness
logits are near-tied, so a parity test would compare noise. The recipe:

1. every conv / linear weight ~ N(0, 1/fan_in) (variance preserving), biases ~ N(0, 0.01^2), drawn from one
   seeded generator in state-dict order (independent of the global RNG);
2. frozen batch-norm statistics are set *from data*: one forward pass over a calibration batch in which each
   ``FrozenBatchNorm2d`` first takes the per-channel mean/variance of its own input, so every stage sees
   unit-variance activations (data-dependent initialisation);
3. wider heads: ``rpn.head.cls_logits`` ~ N(0, ``rpn_std``) so objectness logits spread over several units
   (clear top-k and NMS order); ``box_predictor.cls_score`` ~ N(0, ``cls_std``) with bias ~ N(0, 1) so the
   softmax is peaked (scores well above 0.05 and spread apart); ``bbox_pred`` and ``rpn.head.bbox_pred``
   small (``box_std``, ``rpn_box_std``) so boxes stay near their anchors / proposals.

The parity tests, the export tests and the device scripts all use this recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .rcnn import DeployRCNN


def calibration_images(batch: int, height: int, width: int, seed: int = 0) -> Tensor:
    """Smooth random RGB images in 0-255 (blobs at several scales), deterministic from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(batch, 3, height, width)
    for scale in (4, 16, 64):
        low = torch.rand(batch, 3, max(1, height // scale), max(1, width // scale), generator=g)
        img += torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return (img / 3 * 255).clamp(0, 255)


@torch.no_grad()
def confident_state_dict(
    model: DeployRCNN,
    seed: int = 0,
    calib: Optional[Tensor] = None,
    rpn_std: float = 0.1,
    cls_std: float = 0.02,
    box_std: float = 0.002,
    rpn_box_std: float = 0.01,
) -> Dict[str, Tensor]:
    """Load the recipe's weights into ``model`` (a DeployRCNN) and return its state dict."""
    from torchvision.ops import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        if k.endswith("weight") and v.dim() in (2, 4):
            fan_in = v[0].numel() if "conv5_mask" not in k else v.shape[0] * v.shape[2] * v.shape[3]
            sd[k] = torch.randn(v.shape, generator=g) * (1.0 / fan_in) ** 0.5
        elif k.endswith("bias") and v.dim() == 1 and "bn" not in k and "downsample.1" not in k:
            sd[k] = torch.randn(v.shape, generator=g) * 0.01
    heads = {
        "rpn.head.cls_logits.weight": rpn_std,
        "rpn.head.bbox_pred.weight": rpn_box_std,
        "roi_heads.box_predictor.cls_score.weight": cls_std,
        "roi_heads.box_predictor.bbox_pred.weight": box_std,
    }
    for k, std in heads.items():
        sd[k] = torch.randn(sd[k].shape, generator=g) * std
    sd["roi_heads.box_predictor.cls_score.bias"] = torch.randn(
        sd["roi_heads.box_predictor.cls_score.bias"].shape, generator=g
    )
    sd["roi_heads.box_predictor.bbox_pred.bias"].zero_()
    model.load_state_dict(sd)

    # data-dependent frozen-BN statistics: each BN normalises its own input on the calibration batch
    def set_stats(bn: FrozenBatchNorm2d, inputs: tuple) -> None:
        x = inputs[0]
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        if calib is None:
            calib = calibration_images(2, 256, 256, seed)
        model.backbone(model.normalize(calib))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.clone() for k, v in model.state_dict().items()}
