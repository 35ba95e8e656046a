"""The Triton kernels of :mod:`rcnn_deploy.glue.nms_triton` (imported on first use: ``triton.jit`` reads
``TRITON_INTERPRET`` when this module is imported)."""

import triton
import triton.language as tl


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def pack_bits_kernel(src_ptr, dst_ptr, rows, cols, words, stride_b, stride_r, BLOCK_R: tl.constexpr,
                     BLOCK_W: tl.constexpr):  # fmt: skip
    """Matrix ``b`` of ``src [B, rows, cols]`` (any dtype; element ``(b, r, c)`` at ``b * stride_b + r * stride_r
    + c``) as bits: ``dst [B, rows, words]`` int32, bit ``k`` of word ``w`` set where column ``32 w + k`` is
    nonzero (columns past ``cols`` read 0). Program ``(b, row block, word block)``."""
    b = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    w = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    col = w[:, None] * 32 + bit[None, :]  # [BLOCK_W, 32]
    live = (r[:, None, None] < rows) & (col[None, :, :] < cols)
    at = b.to(tl.int64) * stride_b + r[:, None, None].to(tl.int64) * stride_r + col[None, :, :]
    v = tl.load(src_ptr + at, mask=live, other=0)
    ones = (v != 0).to(tl.int32) << bit[None, None, :]
    word = tl.reduce(ones, 2, _or)  # [BLOCK_R, BLOCK_W]
    out = (b * rows + r[:, None]).to(tl.int64) * words + w[None, :]
    tl.store(dst_ptr + out, word, mask=(r[:, None] < rows) & (w[None, :] < words))


@triton.jit
def fixpoint_round_kernel(s_ptr, keep_ptr, valid_ptr, out_ptr, keepf_ptr, rows, words, BLOCK_W: tl.constexpr,
                          WRITE_FLOAT: tl.constexpr):  # fmt: skip
    """One round of ``keep <- valid & not (S @ keep)`` on bits, for rows ``32 t .. 32 t + 31`` of matrix ``b``
    (program ``(b, t)``): ``s [B, rows, words]`` (row ``i``: the candidates that suppress ``i``), ``keep`` and
    ``valid`` ``[B, words]``; writes word ``t`` of ``out [B, words]`` and, with ``WRITE_FLOAT``, those rows of
    ``keepf [B, rows]`` as 0 / 1 in its dtype."""
    b = tl.program_id(0)
    t = tl.program_id(1)
    bit = tl.arange(0, 32)
    r = t * 32 + bit
    r_live = r < rows
    hit = tl.zeros([32], dtype=tl.int32)
    for w0 in range(0, words, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        w_live = w < words
        k = tl.load(keep_ptr + b * words + w, mask=w_live, other=0)
        at = (b * rows + r[:, None]).to(tl.int64) * words + w[None, :]
        s = tl.load(s_ptr + at, mask=r_live[:, None] & w_live[None, :], other=0)
        hit = hit | tl.reduce(s & k[None, :], 1, _or)
    suppressed = tl.reduce((hit != 0).to(tl.int32) << bit, 0, _or)
    word = tl.load(valid_ptr + b * words + t) & ~suppressed
    tl.store(out_ptr + b * words + t, word)
    if WRITE_FLOAT:
        kept = (word >> bit) & 1
        tl.store(keepf_ptr + b.to(tl.int64) * rows + r, kept.to(keepf_ptr.dtype.element_ty), mask=r_live)
