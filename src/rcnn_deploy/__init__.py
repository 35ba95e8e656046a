"""rcnn-deploy: deploy two-stage R-CNN detectors (Faster/Mask R-CNN R50-FPN) to TensorRT and friends.

Importing this package is cheap: torch, onnxruntime and TensorRT are imported only by the stage that needs
them.
"""

from .config import MODEL_NAMES, ModelSpec, get_spec

__version__ = "0.1.0"

__all__ = ["MODEL_NAMES", "ModelSpec", "get_spec", "__version__"]
