"""Model specifications: every inference knob of the two supported flavours, with published defaults.

A :class:`ModelSpec` is plain data (no torch) so that the exporter, the runtimes and the CLI can all read it.
The two flavours differ only in data, never in code paths scattered around the package:

* ``torchvision`` follows ``torchvision.models.detection.{faster,mask}rcnn_resnet50_fpn`` (v1) in eval mode.
* ``detectron2`` follows ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x`` (and the Faster R-CNN sibling).

Class layout inside the deploy model is always "background at index 0, then foreground classes"; the
Detectron2 loader reorders Detectron2's "background last" layout into it (softmax is permutation-equivariant,
so this is exact). ``label_ids`` maps a model class index (1..num_classes-1) to the label we report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

# torchvision's 91-entry COCO category list (index == COCO category id; "N/A" are unused ids).
COCO_91_NAMES: Tuple[str, ...] = (
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
# Detectron2's 80 contiguous COCO classes and the COCO category id of each.
COCO_80_NAMES: Tuple[str, ...] = tuple(n for n in COCO_91_NAMES[1:] if n != "N/A")
COCO_80_CATEGORY_IDS: Tuple[int, ...] = tuple(i for i, n in enumerate(COCO_91_NAMES) if i > 0 and n != "N/A")

FLAVOURS = ("torchvision", "detectron2")
MODEL_NAMES = (
    "torchvision-maskrcnn",
    "torchvision-fasterrcnn",
    "detectron2-maskrcnn",
    "detectron2-fasterrcnn",
)

_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build and post-process one deploy-form model.

    Pixel statistics are on the 0-255 scale of the model input; ``channel_order`` is the order the network
    was trained on (the deploy model always takes RGB and flips internally when this is ``"BGR"``).
    """

    name: str
    flavour: str
    masks: bool
    class_names: Tuple[str, ...]  # index 0 is background
    # label reported for model class index i (i >= 1); for torchvision this is the COCO id, for
    # Detectron2 the contiguous id (i - 1), as each framework reports it.
    label_ids: Tuple[int, ...]
    # COCO category id for each model class index (used when writing COCO results / evaluating).
    category_ids: Tuple[int, ...]
    channel_order: str
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    stride_in_1x1: bool
    # anchors
    anchor_sizes: Tuple[Tuple[float, ...], ...] = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_strides: Tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_offset: float = 0.0
    anchor_round: bool = True  # torchvision rounds the cell anchors to integers
    # RPN
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    rpn_min_size_inclusive: bool = True  # torchvision keeps w >= min; Detectron2 keeps w > min
    rpn_box_weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    box_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_scale_clamp: float = _BBOX_XFORM_CLIP
    # ROI pooling
    roi_aligned: bool = False
    box_roi_size: int = 7
    box_sampling_ratio: int = 2
    mask_roi_size: int = 14
    mask_sampling_ratio: int = 2
    roi_levels: Tuple[int, int] = (2, 5)
    canonical_scale: float = 224.0
    canonical_level: int = 4
    level_eps: float = 1e-6
    level_eps_inside_log: bool = False  # Detectron2: log2(s / 224 + eps); torchvision: log2(s / 224) + eps
    # box head post-processing
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    box_min_size: float = 1e-2  # torchvision removes tiny boxes; Detectron2 does not (0 = off)
    mask_threshold: float = 0.5
    mask_paste: str = "torchvision"  # how masks are pasted into the image: "torchvision" | "detectron2"
    # how the letterbox resizes images, as each framework's own preprocessing does: "torchvision" (bilinear,
    # align_corners=False, no antialiasing: F.interpolate in GeneralizedRCNNTransform) | "detectron2" (Pillow's
    # antialiased BILINEAR: ResizeShortestEdge)
    resize: str = "torchvision"
    # backbone
    fpn_channels: int = 256
    representation_size: int = 1024
    frozen_bn_eps: float = 1e-5

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs including background."""
        return len(self.class_names)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios)

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> ModelSpec:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown ModelSpec fields {unknown}; was this written by a newer rcnn-deploy?")
        kw = {k: _tuplify(v) for k, v in d.items()}
        kw.setdefault("resize", default_resize(kw.get("flavour", "torchvision")))
        return cls(**kw)


def default_resize(flavour: str) -> str:
    """The letterbox resize of a flavour (specs written before ``resize`` existed name none)."""
    return "detectron2" if flavour == "detectron2" else "torchvision"


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def _torchvision_spec(name: str, masks: bool, class_names: Sequence[str]) -> ModelSpec:
    n = len(class_names)
    return ModelSpec(
        name=name,
        flavour="torchvision",
        masks=masks,
        class_names=tuple(class_names),
        label_ids=tuple(range(n)),
        category_ids=tuple(range(n)),
        channel_order="RGB",
        pixel_mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        pixel_std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        stride_in_1x1=False,
    )


def _detectron2_spec(
    name: str, masks: bool, fg_names: Sequence[str], category_ids: Optional[Sequence[int]] = None
) -> ModelSpec:
    n = len(fg_names) + 1
    cat = tuple(category_ids) if category_ids is not None else tuple(range(1, n))
    return ModelSpec(
        name=name,
        flavour="detectron2",
        masks=masks,
        class_names=("__background__",) + tuple(fg_names),
        label_ids=tuple(range(-1, n - 1)),
        category_ids=(0,) + cat,
        channel_order="BGR",
        pixel_mean=(103.53, 116.28, 123.675),
        pixel_std=(1.0, 1.0, 1.0),
        stride_in_1x1=True,
        anchor_round=False,
        rpn_min_size=0.0,
        rpn_min_size_inclusive=False,
        roi_aligned=True,
        box_sampling_ratio=0,
        mask_sampling_ratio=0,
        level_eps=2.220446049250313e-16,  # sys.float_info.epsilon, as poolers.assign_boxes_to_levels
        level_eps_inside_log=True,
        resize="detectron2",
        box_min_size=0.0,
        mask_paste="detectron2",
    )


def get_spec(model: str, class_names: Optional[Sequence[str]] = None, **overrides: Any) -> ModelSpec:
    """Return the published spec for ``model`` (one of :data:`MODEL_NAMES`).

    ``class_names`` replaces the COCO classes: for torchvision it includes the background entry at index 0
    (torchvision's convention, ``num_classes`` counts it); for Detectron2 it lists foreground classes only.
    ``overrides`` replace any other field (e.g. ``box_score_thresh=0.3``).
    """
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    flavour, arch = model.split("-")
    masks = arch == "maskrcnn"
    if flavour == "torchvision":
        spec = _torchvision_spec(model, masks, class_names or COCO_91_NAMES)
    else:
        if class_names is None:
            spec = _detectron2_spec(model, masks, COCO_80_NAMES, COCO_80_CATEGORY_IDS)
        else:
            spec = _detectron2_spec(model, masks, class_names)
    return spec.replace(**overrides) if overrides else spec


@dataclass
class InputSize:
    height: int
    width: int

    def __post_init__(self) -> None:
        for what, v in (("height", self.height), ("width", self.width)):
            if v <= 0 or v % 32:
                raise ValueError(
                    f"input {what} {v} must be a positive multiple of 32 (the FPN's coarsest stride); "
                    f"try {max(32, round(v / 32) * 32)}"
                )
