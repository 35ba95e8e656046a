"""A forward with no host synchronisation, so a CUDA graph can capture it (``torch.cuda.graph``).

The eager glue asks the host for data-dependent sizes twice: torchvision's NMS (``batched_nms`` after a
``nonzero`` over the valid candidates) and the per-level ROIAlign (``nonzero`` per FPN level). Inside
:func:`sync_free` both take static-shape formulations instead:

* NMS: the exact greedy fixpoint of :func:`rcnn_deploy.glue.formulations.nms_fixpoint` (the one the fused
  ``tensor`` export traces), RPN levels side by side (:func:`rcnn_deploy.glue.nms._nms_blocked`), but with a
  fixed number of rounds instead of "until nothing changes". One more round is computed and compared on the
  GPU; :attr:`SyncFree.converged` holds that flag (a 0-dim bool tensor, every NMS of the forward ANDed), read by
  the caller after the graph ran. A forward whose flag is False is not exact and must be re-run without the
  round limit (:class:`rcnn_deploy.backends.torch_cuda.CudaGraphModel` does that). Where Triton runs, each round is
  one kernel on ``S`` packed into bits (``SYNC_FREE_FIXPOINT``, :mod:`rcnn_deploy.glue.nms_triton`); elsewhere a
  matrix-vector product.
* ROIAlign (``glue.roi_align.SYNC_FREE_ROI_ALIGN``): on CUDA with Triton, one Triton kernel that pools each box
  from its own level in place with torchvision's arithmetic (``glue.roi_align_triton``, the default since session
  19); elsewhere torchvision's ``roi_align`` kernel once over the pooled levels stacked as images, coarser ones
  edge-replicated to the finest level's size, each box pooled from its own level's image with its coordinates
  scaled beforehand (``"stacked"``, ``glue.roi_align._roi_align_stacked``): the eager path's numbers up to
  rounding at a level's last row and column (adaptive sampling, Detectron2's ROIAlignV2, included). ``"levels"``
  pools every box on every level and keeps its own instead (the same numbers as the eager path, about L times the
  pooling work; the only way before session 15).

Outside the context nothing changes. The context is per thread (a ContextVar).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
from torch import Tensor

_ACTIVE: ContextVar[Optional[SyncFree]] = ContextVar("rcnn_deploy_sync_free", default=None)


class SyncFree:
    """The state of one sync-free forward: the NMS round limit and the convergence flag."""

    def __init__(self, rounds: Optional[int]) -> None:
        if rounds is not None and rounds < 1:
            raise ValueError(f"NMS rounds must be >= 1, got {rounds}")
        self.rounds = rounds  # None: iterate until converged (exact, syncs: the fallback)
        self.converged: Optional[Tensor] = None

    def note(self, converged: Tensor) -> None:
        self.converged = converged if self.converged is None else self.converged & converged


@contextlib.contextmanager
def sync_free(rounds: Optional[int] = 24) -> Iterator[SyncFree]:
    """Run the glue without host synchronisation (see the module docstring); ``rounds=None`` keeps the same
    formulations but iterates each NMS to convergence (exact, with syncs)."""
    state = SyncFree(rounds)
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


#: how the sync-free NMS runs its rounds: "bits" (:mod:`rcnn_deploy.glue.nms_triton`: ``S`` packed into bits, one
#: Triton kernel per round; "matmul" where Triton cannot run) or "matmul" (a half-precision matrix-vector product
#: per round, the only way before session 24). The same rounds and results either way; a module setting so that a
#: benchmark can time both in one process.
SYNC_FREE_FIXPOINTS = ("bits", "matmul")
SYNC_FREE_FIXPOINT = "bits"


def active() -> Optional[SyncFree]:
    return _ACTIVE.get()


def fixpoint_rounds(suppress: Tensor, valid: Tensor, state: SyncFree) -> Tensor:
    """``keep = valid & not (S @ keep)`` for ``state.rounds`` rounds from ``keep = valid``; notes whether one
    more round would change it (then the result is not yet greedy NMS's). ``suppress [B, M, M]`` bool (or 0 / 1
    numbers), ``valid [B, M]`` float."""
    if state.rounds is None:
        from .formulations import _fixpoint_eager

        return _fixpoint_eager(suppress.to(valid.dtype), valid)

    if SYNC_FREE_FIXPOINT == "bits":
        from . import nms_triton

        if nms_triton.available(suppress.device):
            keep, converged = nms_triton.fixpoint_rounds_bits(suppress, valid, state.rounds)
            state.note(converged)
            return keep

    out_dtype = valid.dtype
    if suppress.is_cuda:
        # 0/1 entries and non-negative sums: "any kept j suppresses i" survives fp16 rounding exactly (a sum
        # of ones is never rounded to below 0.5), and half the bytes per round
        suppress, valid = suppress.half(), valid.half()
    else:
        suppress = suppress.to(valid.dtype)

    def step(keep: Tensor) -> Tensor:
        return valid * (torch.matmul(suppress, keep.unsqueeze(-1)).squeeze(-1) < 0.5).to(valid.dtype)

    keep = valid
    for _ in range(state.rounds):
        keep = step(keep)
    state.note((step(keep) == keep).all())
    return keep.to(out_dtype)
