"""How the glue's two non-layer operations appear in an exported ONNX graph.

``nms_padded`` and ``multiscale_roi_align`` call these autograd Functions while ``torch.onnx.export`` traces
the model. Their ``forward`` runs the eager implementation (so tracing sees real values and shapes); their
``symbolic`` asks the active *lowering* to emit the graph nodes. A lowering is chosen per export with
:func:`lowering` (standard ONNX ops, TensorRT plugins, ...) and lives in :mod:`rcnn_deploy.export.lowering`.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterator, Optional, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .roi_align import PoolerParams

_LOWERING: ContextVar[Optional[Any]] = ContextVar("rcnn_deploy_lowering", default=None)


@contextlib.contextmanager
def lowering(impl: Any) -> Iterator[None]:
    """Use ``impl`` (an object with ``nms(g, ...)`` and ``roi_align(g, ...)``) for symbolic export."""
    token = _LOWERING.set(impl)
    try:
        yield
    finally:
        _LOWERING.reset(token)


def active() -> Any:
    impl = _LOWERING.get()
    if impl is None:
        raise RuntimeError(
            "exporting an rcnn_deploy model needs a lowering: use rcnn_deploy.export.export_onnx(...) rather "
            "than calling torch.onnx.export on the model directly"
        )
    return impl


class NMSNode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        boxes: Tensor,
        scores: Tensor,
        valid: Tensor,
        iou_threshold: float,
        max_out: int,
        score_threshold: float,
        shape: Tuple[int, int],
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        from .nms import nms_eager

        return nms_eager(boxes, scores, valid, iou_threshold, max_out)

    @staticmethod
    def symbolic(  # g: the TorchScript graph context, the tensors its values (see export.lowering)
        g: Any,
        boxes: Any,
        scores: Any,
        valid: Any,
        iou_threshold: float,
        max_out: int,
        score_threshold: float,
        shape: Tuple[int, int],
    ) -> Any:
        return active().nms(g, boxes, scores, valid, iou_threshold, max_out, score_threshold, shape)


class RoIAlignNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, boxes: Tensor, levels: Tensor, params: PoolerParams, *features: Tensor) -> Tensor:
        from .roi_align import _roi_align_eager

        return _roi_align_eager(features, boxes, params)

    @staticmethod
    def symbolic(g: Any, boxes: Any, levels: Any, params: PoolerParams, *features: Any) -> Any:
        return active().roi_align(g, boxes, levels, params, list(features))
