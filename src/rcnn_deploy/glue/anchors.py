"""Anchor generation for both flavours.

torchvision ``AnchorGenerator``: cell anchor = round([-w/2, -h/2, w/2, h/2]) with h = size*sqrt(r),
w = size/sqrt(r); shifts = arange(grid) * stride.
Detectron2 ``DefaultAnchorGenerator``: w = sqrt(size^2 / r), h = r * w, no rounding; shifts =
arange(grid) * stride + offset * stride.
Both lay anchors out as (H, W, A) with A ordered by aspect ratio (one size per level).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

StrideLike = Union[int, Tuple[int, int]]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_: bool) -> Tensor:
    """Anchors centred on (0, 0) for one level: ``[len(ratios) * len(sizes), 4]`` (x1, y1, x2, y2)."""
    out = []
    if round_:  # torchvision: ratio-major, computed in float32, then rounded
        for r in aspect_ratios:
            h_ratio = torch.sqrt(torch.tensor(r, dtype=torch.float32))
            w_ratio = 1 / h_ratio
            for s in sizes:
                w, h = float(w_ratio * s), float(h_ratio * s)
                out.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(out, dtype=torch.float32).round()
    for s in sizes:  # Detectron2: size-major, computed in float64, not rounded
        for r in aspect_ratios:
            w = math.sqrt(s * s / r)
            h = r * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(
    feature_sizes: Sequence[Tuple[int, int]],
    strides: Sequence[StrideLike],
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
    round_: bool,
    offset: float = 0.0,
    device: torch.device | None = None,
) -> List[Tensor]:
    """Anchors of every level, each ``[H_l * W_l * A, 4]`` in (H, W, A) order, in input pixels.

    A stride is an int or a ``(stride_y, stride_x)`` pair (torchvision derives it per axis from the image and
    grid sizes, which differ from the nominal stride when the size is not a multiple of it, e.g. P6 at 800).
    """
    levels = []
    for (h, w), stride, lvl_sizes in zip(feature_sizes, strides, sizes):
        sy_, sx_ = stride if isinstance(stride, (tuple, list)) else (stride, stride)
        base = cell_anchors(lvl_sizes, aspect_ratios, round_).to(device)
        sx = (torch.arange(w, dtype=torch.float32, device=device) + offset) * sx_
        sy = (torch.arange(h, dtype=torch.float32, device=device) + offset) * sy_
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        xx = xx.reshape(-1)
        yy = yy.reshape(-1)
        shifts = torch.stack((xx, yy, xx, yy), dim=1)
        levels.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return levels
