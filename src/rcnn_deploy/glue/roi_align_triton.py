"""Multi-level ROIAlign as one Triton kernel: each box pooled straight from the FPN level it is assigned to.

The sync-free forward (a CUDA graph, no host synchronisation) cannot gather the boxes of each level (``nonzero``), so
:func:`rcnn_deploy.glue.roi_align._roi_align_stacked` copies the levels into one ``[B * L, C, H_0, W_0]`` tensor and
pools every box once from it; torchvision's ``roi_align`` then makes that copy contiguous again and pools one
output element per thread. Here one program pools one output bin of one box over a block of channels, reading the
box's own level in place (any strides: the channels-last maps of the fp16 model load as contiguous vectors), with
torchvision's arithmetic (``roi_align_forward_kernel_impl``: the same sample points, the same bilinear weights,
the same clamping at the map's edges, the samples summed in the same order and divided by their count, in float32,
divisions IEEE-rounded). The numbers are those of ``roi_align`` on each level with ``spatial_scale = 1 / stride``
(the eager path), up to the compilers' contraction of multiply-adds; the stacked path matches them only up to
rounding at a level's last row and column.

Only for CUDA tensors (Triton); :func:`available` says whether it can run. Registered as the Triton op
``rcnn_deploy::multiscale_roi_align`` (``torch.library.triton_op``): ``torch.compile`` traces into it and Inductor
launches the kernel; ``graph_break=True`` launches it from Python outside the compiled graph instead (run 26: the
compiled forward with the kernel as an opaque custom op crashed its process at batch 1, after batch 8 had run).
The tests run the kernel on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, List, Sequence

import torch
from torch import Tensor

MAX_LEVELS = 5  # the kernel's level arguments (torchvision and Detectron2 pool P2-P5: 4)


# decided once, at import: the sync-free forward asks per call, inside torch.compile's tracing
_TRITON = importlib.util.find_spec("triton") is not None
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(device: Any) -> bool:
    """Whether the kernel can run on ``device``: a CUDA device (or Triton's interpreter, for the tests, set
    before this module is imported) and an installed Triton."""
    return _TRITON and (torch.device(device).type == "cuda" or _INTERPRET)


def kernels_run(device: Any) -> bool:
    """:func:`available`, and on CUDA a GPU Triton compiles for (compute capability 7.0 or newer): what the
    project's other Triton kernels (mask paste, letterbox), launched outside any compiled graph, check before
    they are chosen; on an older GPU those paths keep their torch ops."""
    dev = torch.device(device)
    if not available(dev):
        return False
    return dev.type != "cuda" or (torch.cuda.is_available() and torch.cuda.get_device_capability(dev) >= (7, 0))


def _launch(
    features: Sequence[Tensor],
    boxes: Tensor,
    levels: Tensor,
    strides: Sequence[int],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    wrap: bool,
) -> Tensor:
    import triton

    b, k = int(boxes.shape[0]), int(boxes.shape[1])
    c = int(features[0].shape[1])
    s = int(output_size)
    out = torch.empty((b * k, c, s, s), dtype=features[0].dtype, device=boxes.device)
    if b * k == 0:
        return out
    args: List[Any] = []
    for lvl in range(MAX_LEVELS):
        f = features[min(lvl, len(features) - 1)]
        stride = strides[min(lvl, len(strides) - 1)]
        sn, sc, sh, sw = f.stride()
        args += [f, int(f.shape[2]), int(f.shape[3]), sn, sc, sh, sw, 1.0 / float(stride)]
    block_c = min(triton.next_power_of_2(c), 256)
    grid = (b * k * s * s, triton.cdiv(c, block_c))
    from ._roi_align_kernel import multiscale_roi_align_kernel as kernel

    if wrap:
        from torch.library import wrap_triton

        kernel = wrap_triton(kernel)
    kernel[grid](
        out,
        boxes.float().contiguous(),
        levels.to(torch.int32).contiguous(),
        k,
        c,
        *args,
        0.5 if aligned else 0.0,
        LEVELS=len(features),
        POOLED=s,
        SAMPLING=int(sampling_ratio),
        ALIGNED=bool(aligned),
        BLOCK_C=block_c,
    )
    return out


def _op_impl(
    features: List[Tensor],
    boxes: Tensor,
    levels: Tensor,
    strides: List[int],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    # a Triton op: torch.compile traces into it and Inductor launches the kernel itself, beside its own kernels
    # (wrap_triton; in eager mode the kernel is launched as it is)
    return _launch(features, boxes, levels, strides, output_size, sampling_ratio, aligned, wrap=not _INTERPRET)


# torch.library.triton_op and wrap_triton came with torch 2.6 (the package takes torch >= 2.1): before, only the
# graph-break launch
_triton_op = getattr(torch.library, "triton_op", None)
_op = _triton_op("rcnn_deploy::multiscale_roi_align", mutates_args=())(_op_impl) if _triton_op else None

# the kernel launched from Python, outside any compiled graph (a graph break in a compiled forward)
_eager = torch._dynamo.disable(functools.partial(_launch, wrap=False))


def multiscale_roi_align(
    features: Sequence[Tensor],
    boxes: Tensor,
    levels: Tensor,
    strides: Sequence[int],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    graph_break: bool = False,
) -> Tensor:
    """Pool box ``[b, k]`` of ``boxes [B, K, 4]`` (input pixels) from ``features[levels[b, k]]`` (``[B, C, H_l,
    W_l]`` each, finest first, at most :data:`MAX_LEVELS`; stride ``strides[l]``) -> ``[B, K, C, S, S]`` in the
    features' dtype (computed in float32), as ``roi_align(features[l], ..., S, 1 / strides[l], sampling_ratio,
    aligned)`` would. ``graph_break``: launched from Python outside ``torch.compile``'s graph (else the Triton op,
    which Inductor launches)."""
    if not 1 <= len(features) <= MAX_LEVELS or len(strides) != len(features):
        raise ValueError(f"multiscale_roi_align: 1..{MAX_LEVELS} levels with one stride each, got "
                         f"{len(features)} maps and strides {list(strides)}")  # fmt: skip
    b, k = int(boxes.shape[0]), int(boxes.shape[1])
    args = (list(features), boxes, levels, [int(x) for x in strides], int(output_size), int(sampling_ratio),
            bool(aligned))  # fmt: skip
    pooled = _eager(*args) if graph_break or _op is None else _op(*args)
    return pooled.view(b, k, pooled.shape[1], int(output_size), int(output_size))
