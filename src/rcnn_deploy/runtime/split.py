"""Split-graph runtime: three backends (backbone, box head, mask head) with the torch glue between them.

The glue is :func:`rcnn_deploy.glue.pipeline.two_stage`, the very function the deploy model's ``forward``
is, so split engines reproduce the PyTorch model by construction. Runs on the GPU when the tensors are CUDA
tensors (torch's NMS / ROIAlign kernels), else on the CPU.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..backends.base import Backend
from ..contract import Contract


class SplitPieces:
    """Adapts three backends to the ``NetworkPieces`` protocol of ``two_stage`` (torch in, torch out)."""

    def __init__(self, contract: Contract, backbone: Backend, box_head: Backend, mask_head: Optional[Backend]):
        self.contract = contract
        self.backbone, self.box, self.mask = backbone, box_head, mask_head
        spec = contract.spec
        self.feature_names = [f"p{i}" for i in range(spec.roi_levels[0], spec.roi_levels[1] + 1)]

    @staticmethod
    def _np(t):  # type: ignore[no-untyped-def]
        return np.ascontiguousarray(t.detach().cpu().numpy())

    def features(self, images):  # type: ignore[no-untyped-def]
        import torch

        out = self.backbone(images=self._np(images))
        dev = images.device
        feats = [torch.from_numpy(out[n]).to(dev) for n in self.feature_names]
        return feats, torch.from_numpy(out["rpn_objectness"]).to(dev), torch.from_numpy(out["rpn_deltas"]).to(dev)

    def box_head(self, box_features):  # type: ignore[no-untyped-def]
        import torch

        out = self.box(box_features=self._np(box_features))
        dev = box_features.device
        return torch.from_numpy(out["class_logits"]).to(dev), torch.from_numpy(out["box_regression"]).to(dev)

    def mask_head(self, mask_features, classes):  # type: ignore[no-untyped-def]
        import torch

        if self.mask is None:
            raise RuntimeError("this contract has no mask head graph")
        out = self.mask(mask_features=self._np(mask_features), classes=self._np(classes).astype(np.int64))
        return torch.from_numpy(out["masks"]).to(mask_features.device)


def run_split(pieces: SplitPieces, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Run the split pipeline on ``images [B, 3, H, W]`` RGB 0-255; returns padded numpy outputs."""
    import torch

    from ..glue.pipeline import two_stage

    with torch.no_grad():
        out = two_stage(pieces, torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), pieces.contract.spec)
    return {k: v.cpu().numpy() for k, v in out.items()}


def onnxruntime_split(contract: Contract, directory, providers=None) -> SplitPieces:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from ..backends.onnxruntime import OnnxRuntimeBackend

    d = Path(directory)
    mk = lambda role: OnnxRuntimeBackend(d / contract.graph_for(role).file, providers)  # noqa: E731
    mask = mk("mask_head") if contract.spec.masks else None
    return SplitPieces(contract, mk("backbone"), mk("box_head"), mask)


def fused_outputs(out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Rename a fused graph's outputs (``detection_*``) to the deploy model's names."""
    return {k.replace("detection_", ""): v for k, v in out.items()}
