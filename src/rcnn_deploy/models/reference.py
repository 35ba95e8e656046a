"""torchvision's own eager models as the reference (parity tests, ``compare``, ``bench`` baseline)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelSpec
from ..runtime.detections import Detections


def torchvision_reference(spec: ModelSpec, state_dict: Dict[str, Tensor], image_hw: Tuple[int, int]) -> nn.Module:
    """``torchvision.models.detection.{Faster,Mask}RCNN`` R50-FPN (frozen BN, v1 defaults) with ``state_dict``.

    ``min_size``/``max_size`` are set so that an ``image_hw`` input is not resized, so it sees exactly the
    tensor the deploy model sees.
    """
    if spec.flavour != "torchvision":
        raise ValueError(f"torchvision reference needs a torchvision-flavour spec, got {spec.flavour!r}")
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 5)
    cls = MaskRCNN if spec.masks else FasterRCNN
    model = cls(
        backbone,
        num_classes=spec.num_classes,
        min_size=min(image_hw),
        max_size=max(image_hw),
        rpn_pre_nms_top_n_test=spec.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=spec.rpn_post_nms_top_n,
        rpn_nms_thresh=spec.rpn_nms_thresh,
        box_score_thresh=spec.box_score_thresh,
        box_nms_thresh=spec.box_nms_thresh,
        box_detections_per_img=spec.detections_per_img,
    )
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def run_torchvision_reference(model: nn.Module, images: Tensor, mask_threshold: float = 0.5) -> List[Detections]:
    """Run the reference on ``images [B, 3, H, W]`` RGB 0-255; masks come back pasted and thresholded."""
    outs = model(list(images / 255.0))
    dets = []
    for o in outs:
        masks = None
        if "masks" in o:
            masks = (o["masks"][:, 0] > mask_threshold).cpu().numpy()
        dets.append(
            Detections(
                boxes=o["boxes"].cpu().numpy().astype(np.float32),
                scores=o["scores"].cpu().numpy().astype(np.float32),
                classes=o["labels"].cpu().numpy().astype(np.int32),
                masks=masks,
            )
        )
    return dets
