"""The sync-free NMS's fixed rounds (:func:`rcnn_deploy.glue.sync_free.fixpoint_rounds`) on bits, one Triton kernel
per round.

The round ``keep <- valid & not (S @ keep)`` was a half-precision matrix-vector product and a few elementwise ops:
about six kernels per round, each waiting on the one before (cuBLAS's split-K product and its reduction, a copy,
the comparison and the product with ``valid``). In run 28b's batch-1 profile (``latency_profile_run28b``) the rounds
of the two NMS of a forward, 97 per image, took about 1.5 ms of the 5.4 ms graph, the box head's NMS reading its
3840 x 3840 half matrix (29 MB) each round. Here ``S`` is packed once into bits (``[B, M, M / 32]`` int32: 1.8 MB
for that NMS) and each round is one kernel: a program per 32 rows ANDs their bit rows with ``keep``'s bits and
writes one word of the next ``keep``. The same rounds and the same result as the product (which is exact:
0 / 1 entries), the convergence check included (one more round compared with the last).

Only where Triton runs (:func:`rcnn_deploy.glue.roi_align_triton.available`: CUDA, or the interpreter for the
tests). The kernels are launched from Python outside any ``torch.compile`` graph (a graph break, like the
ROIAlign's default ``triton_eager``); a CUDA graph captures them like any other kernel.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .roi_align_triton import available  # noqa: F401  (where the kernels can run: re-exported)

_PACK_ROWS = 8
_PACK_WORDS = 16
_ROUND_WORDS = 128  # the most bit words a round's program ANDs at once


def pack_bits(x: Tensor) -> Tensor:
    """``x [B, R, C]`` (nonzero: 1) -> ``[B, R, ceil(C / 32)]`` int32 bit rows (bit ``k`` of word ``w``: column
    ``32 w + k``)."""
    import triton

    from ._nms_kernel import pack_bits_kernel

    if x.stride(-1) != 1:
        x = x.contiguous()
    b, r, c = (int(s) for s in x.shape)
    words = triton.cdiv(c, 32)
    out = torch.empty((b, r, words), dtype=torch.int32, device=x.device)
    if out.numel() == 0:
        return out
    grid = (b, triton.cdiv(r, _PACK_ROWS), triton.cdiv(words, _PACK_WORDS))
    stride_b = x.stride(0) if b > 1 else 0
    stride_r = x.stride(1) if r > 1 else 0
    pack_bits_kernel[grid](x, out, r, c, words, stride_b, stride_r, BLOCK_R=_PACK_ROWS, BLOCK_W=_PACK_WORDS)
    return out


def _round(bits: Tensor, keep: Tensor, valid: Tensor, keepf: Tensor, write_float: bool) -> Tensor:
    import triton

    from ._nms_kernel import fixpoint_round_kernel

    b, m, words = (int(s) for s in bits.shape)
    out = torch.empty((b, words), dtype=torch.int32, device=bits.device)
    block_w = min(triton.next_power_of_2(words), _ROUND_WORDS)
    fixpoint_round_kernel[(b, words)](bits, keep, valid, out, keepf, m, words, BLOCK_W=block_w,
                                      WRITE_FLOAT=write_float)  # fmt: skip
    return out


@torch._dynamo.disable
def fixpoint_rounds_bits(suppress: Tensor, valid: Tensor, rounds: int) -> Tuple[Tensor, Tensor]:
    """``rounds`` rounds of ``keep <- valid & not (S @ keep)`` from ``keep = valid`` -> (``keep`` in ``valid``'s
    dtype, 0 / 1; a 0-dim bool tensor: whether one more round leaves it unchanged). ``suppress [B, M, M]``
    (nonzero where column ``j`` suppresses row ``i``), ``valid [B, M]`` (nonzero: a candidate), on one device;
    no host synchronisation."""
    if rounds < 1:
        raise ValueError(f"NMS rounds must be >= 1, got {rounds}")
    b, m = int(valid.shape[0]), int(valid.shape[1])
    if tuple(suppress.shape) != (b, m, m):
        raise ValueError(f"suppress {tuple(suppress.shape)} does not match valid {tuple(valid.shape)}")
    keepf = torch.empty((b, m), dtype=valid.dtype, device=valid.device)
    if b * m == 0:
        return keepf, torch.ones((), dtype=torch.bool, device=valid.device)
    bits = pack_bits(suppress)
    valid_bits = pack_bits(valid.reshape(b, 1, m)).reshape(b, -1)
    keep = valid_bits
    for r in range(rounds):
        keep = _round(bits, keep, valid_bits, keepf, write_float=r == rounds - 1)
    more = _round(bits, keep, valid_bits, keepf, write_float=False)
    return keepf, (more == keep).all()
