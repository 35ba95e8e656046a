"""Safe loading of Faster/Mask R-CNN ResNet-50-FPN checkpoints into torchvision's key layout.

Checkpoints from torchvision (``.pth`` files, weight enums from the hub cache) and Detectron2 (model-zoo
``.pkl`` files, training ``.pth`` checkpoints) are loaded without ever executing code from them and converted
to torchvision's names and class layout. The package, one concern per module:

``loaders``    :func:`load_checkpoint`, :func:`load_torchvision_enum`, :func:`detect_format`,
               :func:`check_state_dict` (the entry points)
``convert``    Detectron2 <-> torchvision layout (classes, background rows), :func:`save_detectron2_pkl`
``names``      the Detectron2 <-> torchvision name table, written once, read both ways
``structure``  what a file is and whether its declared sizes fit in it, before anything is allocated
``unpickler``  the restricted unpickler for ``.pkl`` files (numpy arrays and plain containers only)
``errors``     :class:`WeightsError`
"""

from rcnn_deploy.errors import UserError

from .convert import save_detectron2_pkl, torchvision_to_detectron2
from .errors import WeightsError
from .loaders import FLAVOURS, LoadedWeights, check_state_dict, detect_format, load_checkpoint, load_torchvision_enum
from .structure import check_torch_file

__all__ = [
    "FLAVOURS",
    "LoadedWeights",
    "UserError",
    "WeightsError",
    "check_state_dict",
    "check_torch_file",
    "detect_format",
    "load_checkpoint",
    "load_torchvision_enum",
    "save_detectron2_pkl",
    "torchvision_to_detectron2",
]
