"""Box geometry shared by the RPN and the box head. Boxes are (x1, y1, x2, y2) in input pixels.

The coder is the one of torchvision's ``BoxCoder`` and Detectron2's ``Box2BoxTransform`` (they agree:
width = x2 - x1, centre = x1 + width / 2, dw/dh clamped at ``scale_clamp`` before ``exp``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def decode_boxes(deltas: Tensor, ref: Tensor, weights: Sequence[float], scale_clamp: float) -> Tensor:
    """Apply ``deltas [..., 4]`` to reference boxes ``ref [..., 4]`` (broadcastable); returns ``[..., 4]``."""
    wx, wy, ww, wh = weights
    widths = ref[..., 2] - ref[..., 0]
    heights = ref[..., 3] - ref[..., 1]
    ctr_x = ref[..., 0] + 0.5 * widths
    ctr_y = ref[..., 1] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[..., 3] / wh, max=scale_clamp)
    pcx = dx * widths + ctr_x
    pcy = dy * heights + ctr_y
    pw = torch.exp(dw) * widths
    ph = torch.exp(dh) * heights
    return torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph), dim=-1)


def encode_boxes(boxes: Tensor, ref: Tensor, weights: Sequence[float]) -> Tensor:
    """Inverse of :func:`decode_boxes` (without the clamp): deltas that take ``ref`` to ``boxes``."""
    wx, wy, ww, wh = weights
    rw = ref[..., 2] - ref[..., 0]
    rh = ref[..., 3] - ref[..., 1]
    rx = ref[..., 0] + 0.5 * rw
    ry = ref[..., 1] + 0.5 * rh
    gw = boxes[..., 2] - boxes[..., 0]
    gh = boxes[..., 3] - boxes[..., 1]
    gx = boxes[..., 0] + 0.5 * gw
    gy = boxes[..., 1] + 0.5 * gh
    return torch.stack(
        (wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)), dim=-1
    )


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip ``[..., 4]`` boxes to the image ``[0, width] x [0, height]``."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def min_size_mask(boxes: Tensor, min_size: float, inclusive: bool) -> Tensor:
    """True where a box is large enough: torchvision keeps ``w >= min`` (inclusive), Detectron2 ``w > min``."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    if inclusive:
        return (w >= min_size) & (h >= min_size)
    return (w > min_size) & (h > min_size)
