"""The deploy-form Faster / Mask R-CNN ResNet-50-FPN.

Same module names and parameter shapes as ``torchvision.models.detection.{faster,mask}rcnn_resnet50_fpn``
(so torchvision state dicts load as they are, and Detectron2 checkpoints after renaming, see
:mod:`rcnn_deploy.models.weights`), but with a deploy-friendly forward:

* input ``images [B, 3, H, W]`` float32 RGB 0-255, H and W multiples of 32; normalisation (and the RGB->BGR
  flip of the Detectron2 flavour) happens inside;
* static shapes for a given (B, H, W): fixed top-k, padded outputs plus a count, no Python branch on values;
* outputs ``num_detections [B, 1] int32``, ``boxes [B, K, 4]`` (x1, y1, x2, y2 input pixels),
  ``scores [B, K]``, ``classes [B, K] int32`` (the label each framework reports; -1 in padded slots) and, for
  Mask R-CNN, ``masks [B, K, M, M]`` class-selected probabilities (M = 28).

The three network pieces (``features``, ``box_head``, ``mask_head``) are what the split export cuts out;
``forward`` is :func:`rcnn_deploy.glue.pipeline.two_stage` over them, and everything that is not a layer
lives in :mod:`rcnn_deploy.glue`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import ModelSpec
from ..glue import select_masks, spec_anchors
from ..glue.pipeline import two_stage


def build_backbone(spec: ModelSpec) -> nn.Module:
    """ResNet-50 + FPN (P2-P6) with frozen batch norm, as torchvision builds it for detection.

    The Detectron2 flavour ("MSRA" ResNet) puts the stride of each stage's first block in its 1x1 conv.
    """
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    def norm(c: int) -> nn.Module:
        return FrozenBatchNorm2d(c, eps=spec.frozen_bn_eps)

    body = resnet50(weights=None, norm_layer=norm)
    if spec.stride_in_1x1:
        for layer in (body.layer2, body.layer3, body.layer4):
            block = layer[0]
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    # trainable_layers only sets requires_grad; the deploy model is inference-only anyway.
    return _resnet_fpn_extractor(body, trainable_layers=5)


class _Namespace(nn.Module):
    """A plain container so parameter names match torchvision's (``rpn.head...``, ``roi_heads...``)."""

    if TYPE_CHECKING:  # its attributes are the submodules set on it (nn.Module.__getattr__ finds them)

        def __getattr__(self, name: str) -> nn.Module: ...


class DeployRCNN(nn.Module):
    pixel_mean: Tensor  # buffers, registered in __init__
    pixel_std: Tensor
    # set by models.build.build_model (absent on a model built directly): the checkpoint's training input size
    # (None when it does not say), its metadata and where it was loaded from
    checkpoint_input_hw: Optional[Tuple[int, int]]
    checkpoint_meta: Dict[str, Any]
    checkpoint_source: str

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.rpn import RPNHead

        self.spec = spec
        ch = spec.fpn_channels
        self.backbone = build_backbone(spec)
        self.rpn = _Namespace()
        self.rpn.head = RPNHead(ch, spec.num_anchors_per_location)
        self.roi_heads = _Namespace()
        self.roi_heads.box_head = TwoMLPHead(ch * spec.box_roi_size**2, spec.representation_size)
        self.roi_heads.box_predictor = FastRCNNPredictor(spec.representation_size, spec.num_classes)
        if spec.masks:
            self.roi_heads.mask_head = MaskRCNNHeads(ch, [256, 256, 256, 256], 1)
            self.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, spec.num_classes)
        # torchvision normalises x/255 with mean/std on the 0-1 scale; keep its exact float32 constants.
        unit = 255.0 if spec.flavour == "torchvision" else 1.0
        mean = torch.tensor([v / unit for v in spec.pixel_mean], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor([v / unit for v in spec.pixel_std], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self._anchor_cache: Dict[Tuple, List[Tensor]] = {}
        # the layers' dtype (float32 unless set_precision); the glue between them always runs in float32
        self.compute_dtype = torch.float32
        self.channels_last = False
        self.eval()

    def set_precision(self, dtype: torch.dtype, channels_last: bool = False) -> DeployRCNN:
        """Run the layers (backbone, FPN, RPN head, box and mask heads) in ``dtype`` (float16 / bfloat16 weights
        and activations) and optionally channels_last; normalisation, anchors, box decoding, NMS and ROIAlign stay
        float32, the rule the TensorRT fp16 builds follow. Every piece's outputs are cast back to float32."""
        self.compute_dtype = dtype
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for part in (self.backbone, self.rpn, self.roi_heads):
            part.to(dtype=dtype, memory_format=fmt)  # type: ignore[call-overload]
        return self

    def _to_compute(self, x: Tensor) -> Tensor:
        if self.compute_dtype != torch.float32:
            x = x.to(self.compute_dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_glue(self, x: Tensor) -> Tensor:
        return x.float() if self.compute_dtype != torch.float32 else x

    # ------------------------------------------------------------------------------------- network pieces
    def normalize(self, images: Tensor) -> Tensor:
        """RGB 0-255 -> the network's input (channel order and mean/std of the flavour)."""
        if self.spec.channel_order == "BGR":  # pixel_mean/std are stored in the network's channel order
            images = images.flip(1)
        if self.spec.flavour == "torchvision":  # exactly torchvision's arithmetic: x/255, then (x - m)/s
            images = images / 255.0
        return (images - self.pixel_mean) / self.pixel_std

    def features(self, images: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        """Backbone + FPN + RPN head: FPN maps P2-P5 (``[B, 256, H/s, W/s]``, the ones ROIAlign pools),
        objectness ``[B, N]`` and deltas ``[B, N, 4]`` of all levels P2-P6, each in (H, W, A) order."""
        _check_input(images)
        feats = list(self.backbone(self._to_compute(self.normalize(images))).values())
        objectness, deltas = [], []
        for o, d in zip(*self.rpn.head(feats)):
            o, d = self._to_glue(o), self._to_glue(d)
            b, a, h, w = o.shape
            objectness.append(o.permute(0, 2, 3, 1).reshape(b, h * w * a))
            deltas.append(d.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4))
        n_pooled = self.spec.roi_levels[1] - self.spec.roi_levels[0] + 1
        pooled = [self._to_glue(f) for f in feats[:n_pooled]]
        return pooled, torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)

    def box_head(self, box_features: Tensor) -> Tuple[Tensor, Tensor]:
        """``[R, 256, 7, 7]`` -> class_logits ``[R, C]``, box_regression ``[R, 4C]``."""
        logits, reg = self.roi_heads.box_predictor(self.roi_heads.box_head(self._to_compute(box_features)))
        return self._to_glue(logits), self._to_glue(reg)

    def mask_head(self, mask_features: Tensor, classes: Tensor) -> Tensor:
        """``[R, 256, 14, 14]`` and model classes ``[R]`` -> class-selected probabilities ``[R, 28, 28]``."""
        logits = self._to_glue(self.roi_heads.mask_predictor(self.roi_heads.mask_head(self._to_compute(mask_features))))
        return select_masks(logits.unsqueeze(0), classes.unsqueeze(0))[0]

    # ---------------------------------------------------------------------------------------------- forward
    def anchors(self, image_hw: Tuple[int, int], device: torch.device) -> List[Tensor]:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return spec_anchors(self.spec, image_hw, device)  # become graph constants
        key = (image_hw, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = spec_anchors(self.spec, image_hw, device)
        return self._anchor_cache[key]

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        image_hw = (int(images.shape[-2]), int(images.shape[-1]))
        return two_stage(self, images, self.spec, self.anchors(image_hw, images.device))


def _check_input(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected images as a float tensor [B, 3, H, W] (RGB, 0-255), got shape {tuple(images.shape)}"
        )
    h, w = images.shape[-2:]
    if not torch.jit.is_tracing() and (int(h) % 32 or int(w) % 32):
        raise ValueError(
            f"input height and width must be multiples of 32, got {int(h)}x{int(w)}; pad or resize the image"
        )
