"""Detectron2 <-> torchvision parameter names of Faster/Mask R-CNN ResNet-50-FPN, as one table.

:data:`TABLE` is written once, Detectron2 name -> torchvision name; both directions are compiled from it
(:func:`detectron2_to_torchvision_name`, :func:`torchvision_to_detectron2_name`), so they cannot disagree.

A name template is literal text with fields in braces. ``{stage}`` stands for one value of the field (its
values are in :data:`FIELDS`, ``None``: any decimal number, copied as it is); ``{stage-1}`` / ``{fc+5}`` for
that value shifted by a constant (integer fields only). Each field appears at most once per template, and the
two templates of a row have the same fields, so a name converts both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

CLS_W = "roi_heads.box_predictor.cls_score.weight"
CLS_B = "roi_heads.box_predictor.cls_score.bias"
BOX_W = "roi_heads.box_predictor.bbox_pred.weight"
BOX_B = "roi_heads.box_predictor.bbox_pred.bias"
MASK_W = "roi_heads.mask_predictor.mask_fcn_logits.weight"
MASK_B = "roi_heads.mask_predictor.mask_fcn_logits.bias"
PREDICTOR_KEYS = frozenset({CLS_W, CLS_B, BOX_W, BOX_B, MASK_W, MASK_B})
MASK_PREFIXES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")
D2_PREFIXES = ("backbone.bottom_up.", "backbone.fpn_lateral", "backbone.fpn_output", "proposal_generator.")
TV_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.head.")

FieldValues = Optional[Sequence[Union[int, str]]]

#: The values each field takes, on the Detectron2 side of :data:`TABLE`.
FIELDS: Dict[str, FieldValues] = {
    "bn": ("weight", "bias", "running_mean", "running_var"),  # a BatchNorm's parameters and buffers
    "wb": ("weight", "bias"),
    "stage": (2, 3, 4, 5),  # ResNet stage: Detectron2 res2..res5, torchvision layer1..layer4
    "block": None,  # block index inside a stage
    "conv": (1, 2, 3),  # the bottleneck's convolutions
    "level": (2, 3, 4, 5),  # FPN level: Detectron2 P2..P5, torchvision block 0..3
    "fc": (1, 2),  # box head fully connected layers: Detectron2 fc1/fc2, torchvision fc6/fc7
    "mask_conv": (1, 2, 3, 4),  # mask head convolutions: Detectron2 mask_fcn1..4, torchvision 0..3
    "predictor": ("cls_score", "bbox_pred"),
}

#: (Detectron2 name, torchvision name) of every parameter; the only place the mapping is written.
TABLE: Tuple[Tuple[str, str], ...] = (
    ("backbone.bottom_up.stem.conv1.weight", "backbone.body.conv1.weight"),
    ("backbone.bottom_up.stem.conv1.norm.{bn}", "backbone.body.bn1.{bn}"),
    (
        "backbone.bottom_up.res{stage}.{block}.conv{conv}.weight",
        "backbone.body.layer{stage-1}.{block}.conv{conv}.weight",
    ),
    (
        "backbone.bottom_up.res{stage}.{block}.conv{conv}.norm.{bn}",
        "backbone.body.layer{stage-1}.{block}.bn{conv}.{bn}",
    ),
    (
        "backbone.bottom_up.res{stage}.{block}.shortcut.weight",
        "backbone.body.layer{stage-1}.{block}.downsample.0.weight",
    ),
    (
        "backbone.bottom_up.res{stage}.{block}.shortcut.norm.{bn}",
        "backbone.body.layer{stage-1}.{block}.downsample.1.{bn}",
    ),
    ("backbone.fpn_lateral{level}.{wb}", "backbone.fpn.inner_blocks.{level-2}.0.{wb}"),
    ("backbone.fpn_output{level}.{wb}", "backbone.fpn.layer_blocks.{level-2}.0.{wb}"),
    ("proposal_generator.rpn_head.conv.{wb}", "rpn.head.conv.0.0.{wb}"),
    ("proposal_generator.rpn_head.objectness_logits.{wb}", "rpn.head.cls_logits.{wb}"),
    ("proposal_generator.rpn_head.anchor_deltas.{wb}", "rpn.head.bbox_pred.{wb}"),
    ("roi_heads.box_head.fc{fc}.{wb}", "roi_heads.box_head.fc{fc+5}.{wb}"),
    ("roi_heads.box_predictor.{predictor}.{wb}", "roi_heads.box_predictor.{predictor}.{wb}"),
    ("roi_heads.mask_head.mask_fcn{mask_conv}.{wb}", "roi_heads.mask_head.{mask_conv-1}.0.{wb}"),
    ("roi_heads.mask_head.deconv.{wb}", "roi_heads.mask_predictor.conv5_mask.{wb}"),
    ("roi_heads.mask_head.predictor.{wb}", "roi_heads.mask_predictor.mask_fcn_logits.{wb}"),
)

_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")


@dataclass(frozen=True)
class _Template:
    """One side of a table row: a regex that parses names into field values, and the format that writes them."""

    text: str
    pattern: re.Pattern[str]
    shifts: Dict[str, int]  # field -> the constant added to its value on this side

    def parse(self, name: str) -> Optional[Dict[str, Union[int, str]]]:
        """The fields' Detectron2-side values of ``name``, or None when it does not match."""
        m = self.pattern.fullmatch(name)
        if m is None:
            return None
        values: Dict[str, Union[int, str]] = {}
        for field, shift in self.shifts.items():
            raw = m.group(field)
            values[field] = int(raw) - shift if _is_int_field(field) else raw
        return values

    def format(self, values: Mapping[str, Union[int, str]]) -> str:
        def one(m: re.Match[str]) -> str:
            value = values[m[1]]
            return str(value + int(m[2] or 0)) if isinstance(value, int) else str(value)

        return _FIELD.sub(one, self.text)


def _is_int_field(field: str) -> bool:
    values = FIELDS[field]
    return values is not None and all(isinstance(v, int) for v in values)


def _compile(text: str) -> _Template:
    parts: List[str] = []
    shifts: Dict[str, int] = {}
    pos = 0
    for m in _FIELD.finditer(text):
        field, shift = m[1], int(m[2] or 0)
        if field not in FIELDS:
            raise ValueError(f"name template {text!r}: unknown field {field!r}")
        if field in shifts:
            raise ValueError(f"name template {text!r}: field {field!r} appears twice")
        values = FIELDS[field]
        if shift and not _is_int_field(field):
            raise ValueError(f"name template {text!r}: only integer fields can be shifted, not {field!r}")
        if values is None:
            alternatives = r"\d+"
        else:
            shown = [str(v + shift) if isinstance(v, int) else str(v) for v in values]
            alternatives = "|".join(re.escape(s) for s in sorted(shown, key=len, reverse=True))
        parts += [re.escape(text[pos : m.start()]), f"(?P<{field}>{alternatives})"]
        shifts[field] = shift
        pos = m.end()
    parts.append(re.escape(text[pos:]))
    return _Template(text, re.compile("".join(parts)), shifts)


def _directions() -> Tuple[List[Tuple[_Template, _Template]], List[Tuple[_Template, _Template]]]:
    d2_to_tv, tv_to_d2 = [], []
    for d2_text, tv_text in TABLE:
        d2, tv = _compile(d2_text), _compile(tv_text)
        if set(d2.shifts) != set(tv.shifts):
            raise ValueError(f"name table row {d2_text!r} / {tv_text!r}: the two sides have different fields")
        if any(d2.shifts.values()):
            raise ValueError(f"name table row {d2_text!r}: the Detectron2 side holds the fields' own values")
        d2_to_tv.append((d2, tv))
        tv_to_d2.append((tv, d2))  # the inverse: the same rows read the other way
    return d2_to_tv, tv_to_d2


_D2_TO_TV, _TV_TO_D2 = _directions()


def _rename(name: str, rules: List[Tuple[_Template, _Template]]) -> Optional[str]:
    for source, target in rules:
        values = source.parse(name)
        if values is not None:
            return target.format(values)
    return None


def detectron2_to_torchvision_name(name: str) -> Optional[str]:
    """torchvision's name of a Detectron2 parameter, or None when the table has no such parameter."""
    return _rename(name, _D2_TO_TV)


def torchvision_to_detectron2_name(name: str) -> Optional[str]:
    """Detectron2's name of a torchvision parameter, or None when the table has no such parameter."""
    return _rename(name, _TV_TO_D2)


def ignorable(key: str) -> bool:
    """BatchNorm ``num_batches_tracked`` counters: not weights (frozen BN has none), never compared or mapped."""
    return key.endswith("num_batches_tracked")
