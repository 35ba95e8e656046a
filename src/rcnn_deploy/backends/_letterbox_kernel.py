"""The Triton kernel of :meth:`rcnn_deploy.backends.torch_cuda.GpuLetterbox` on a GPU (imported on first use:
``triton.jit`` reads ``TRITON_INTERPRET`` when this module is imported)."""

import triton
import triton.language as tl


@triton.jit
def letterbox_opencv_kernel(
    src_ptr, s_c, s_h, s_w, dst_ptr, x0_ptr, x1_ptr, a0_ptr, a1_ptr, y0_ptr, y1_ptr, b0_ptr, b1_ptr,
    rh, rw, out_h, out_w, fill_ptr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """One ``[3, out_h, out_w]`` uint8 letterbox slot, a tile per program: inside the ``rh x rw`` top-left region,
    OpenCV's ``INTER_LINEAR`` of the uint8 ``[3, h, w]`` source (any strides) in its integer arithmetic
    (:func:`rcnn_deploy.runtime.preprocess.opencv_linear_resize_chw`, the same taps); outside, the fill
    (``fill_ptr``: 3 uint8)."""
    rows = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_in = rows < rh
    col_in = cols < rw
    inside = row_in[:, None] & col_in[None, :]
    slot = (rows < out_h)[:, None] & (cols < out_w)[None, :]
    x0 = tl.load(x0_ptr + cols, mask=col_in, other=0).to(tl.int64) * s_w
    x1 = tl.load(x1_ptr + cols, mask=col_in, other=0).to(tl.int64) * s_w
    a0 = tl.load(a0_ptr + cols, mask=col_in, other=0)[None, :]
    a1 = tl.load(a1_ptr + cols, mask=col_in, other=0)[None, :]
    y0 = tl.load(y0_ptr + rows, mask=row_in, other=0).to(tl.int64) * s_h
    y1 = tl.load(y1_ptr + rows, mask=row_in, other=0).to(tl.int64) * s_h
    b0 = tl.load(b0_ptr + rows, mask=row_in, other=0)[:, None]
    b1 = tl.load(b1_ptr + rows, mask=row_in, other=0)[:, None]
    at = rows.to(tl.int64)[:, None] * out_w + cols[None, :]
    for c in tl.static_range(3):
        base = src_ptr + c * s_c
        top = base + y0[:, None]
        bottom = base + y1[:, None]
        p00 = tl.load(top + x0[None, :], mask=inside, other=0).to(tl.int32)
        p01 = tl.load(top + x1[None, :], mask=inside, other=0).to(tl.int32)
        p10 = tl.load(bottom + x0[None, :], mask=inside, other=0).to(tl.int32)
        p11 = tl.load(bottom + x1[None, :], mask=inside, other=0).to(tl.int32)
        t0 = (p00 * a0 + p01 * a1) >> 4  # the horizontal pass of rows y0 and y1
        t1 = (p10 * a0 + p11 * a1) >> 4
        v = (((b0 * t0) >> 16) + ((b1 * t1) >> 16) + 2) >> 2
        v = tl.where(inside, v, tl.load(fill_ptr + c).to(tl.int32))
        tl.store(dst_ptr + c * out_h * out_w + at, v.to(tl.uint8), mask=slot)
