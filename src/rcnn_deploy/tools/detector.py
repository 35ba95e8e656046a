"""The model a command runs: ``MODEL_PATH`` with ``--model``, ``--height`` / ``--width``, ``--batch`` and
``--backend`` opened as a :class:`~rcnn_deploy.api.Detector` (``infer``, ``compare``, ``eval``).

Nothing here imports numpy or torch at import time: ``rcnn-deploy --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

if TYPE_CHECKING:
    from ..api import Detector


def input_hw(height: Optional[int], width: Optional[int]) -> Optional[Tuple[int, int]]:
    """``--height/--width`` as an input size; one of them alone means a square; neither means the default."""
    if height is None and width is None:
        return None
    h, w = height or width, width or height
    assert h is not None and w is not None  # one of them is given
    return (h, w)


def load_detector(
    model_path: str,
    model: Optional[str],
    height: Optional[int],
    width: Optional[int],
    batch: int,
    backend: Optional[str],
    gpu: Optional[Dict[str, Any]] = None,
    replicas: int = 1,
) -> Detector:
    """``Detector.load`` with a command's options (an export directory, an engine, or a checkpoint); ``gpu``:
    the PyTorch GPU options (``args.torch_gpu``), passed on as keywords; ``replicas``: ONNX Runtime sessions."""
    from .. import api

    hw = input_hw(height, width)
    extra: Dict[str, Any] = dict(gpu or {})
    if replicas != 1:
        extra["replicas"] = replicas
    return api.Detector.load(model_path, model=model, input_hw=hw, batch=batch, backend=backend, **extra)
