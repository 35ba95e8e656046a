"""The Triton kernel of :mod:`rcnn_deploy.glue.roi_align_triton` (imported on first use: ``triton.jit`` reads
``TRITON_INTERPRET`` when this module is imported, and Triton resolves the helper by module globals)."""

import triton
import triton.language as tl


@triton.jit
def _pool_bin(
    ptr, n, height, width, s_n, s_c, s_h, s_w, scale, offset,
    x1, y1, x2, y2, ph, pw, c, c_mask,
    POOLED: tl.constexpr, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # torchvision's roi_align_forward_kernel_impl for one bin (ph, pw) of one box, channels c at once
    start_w = x1 * scale - offset
    start_h = y1 * scale - offset
    roi_w = x2 * scale - offset - start_w
    roi_h = y2 * scale - offset - start_h
    if not ALIGNED:
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    bin_h = tl.math.div_rn(roi_h, POOLED * 1.0)
    bin_w = tl.math.div_rn(roi_w, POOLED * 1.0)
    if SAMPLING > 0:
        grid_h = SAMPLING
        grid_w = SAMPLING
    else:
        grid_h = tl.math.ceil(tl.math.div_rn(roi_h, POOLED * 1.0)).to(tl.int32)
        grid_w = tl.math.ceil(tl.math.div_rn(roi_w, POOLED * 1.0)).to(tl.int32)
    # "* 1.0", not ".to(tl.float32)": these may be Python ints (a constexpr grid; torch.compile's analysis of the
    # kernel specialises integer arguments)
    count = tl.maximum(grid_h * grid_w, 1) * 1.0
    hf = height * 1.0
    wf = width * 1.0
    base = ptr + n.to(tl.int64) * s_n + c.to(tl.int64) * s_c
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for iy in range(0, grid_h):
        y = start_h + ph * bin_h + tl.math.div_rn((iy + 0.5) * bin_h, grid_h * 1.0)
        for ix in range(0, grid_w):
            x = start_w + pw * bin_w + tl.math.div_rn((ix + 0.5) * bin_w, grid_w * 1.0)
            inside = (y >= -1.0) & (y <= hf) & (x >= -1.0) & (x <= wf)
            # outside (or NaN): sample pixel (0, 0) and weigh it 0, so that every load is in bounds
            yc = tl.where(inside, tl.maximum(y, 0.0), 0.0)
            xc = tl.where(inside, tl.maximum(x, 0.0), 0.0)
            y_lo = yc.to(tl.int32)
            x_lo = xc.to(tl.int32)
            y_edge = y_lo >= height - 1
            x_edge = x_lo >= width - 1
            y_lo = tl.where(y_edge, height - 1, y_lo)
            x_lo = tl.where(x_edge, width - 1, x_lo)
            y_hi = tl.where(y_edge, y_lo, y_lo + 1)
            x_hi = tl.where(x_edge, x_lo, x_lo + 1)
            yc = tl.where(y_edge, y_lo.to(tl.float32), yc)
            xc = tl.where(x_edge, x_lo.to(tl.float32), xc)
            ly = yc - y_lo.to(tl.float32)
            lx = xc - x_lo.to(tl.float32)
            hy = 1.0 - ly
            hx = 1.0 - lx
            row_lo = base + y_lo.to(tl.int64) * s_h
            row_hi = base + y_hi.to(tl.int64) * s_h
            v1 = tl.load(row_lo + x_lo.to(tl.int64) * s_w, mask=c_mask, other=0.0).to(tl.float32)
            v2 = tl.load(row_lo + x_hi.to(tl.int64) * s_w, mask=c_mask, other=0.0).to(tl.float32)
            v3 = tl.load(row_hi + x_lo.to(tl.int64) * s_w, mask=c_mask, other=0.0).to(tl.float32)
            v4 = tl.load(row_hi + x_hi.to(tl.int64) * s_w, mask=c_mask, other=0.0).to(tl.float32)
            val = hy * hx * v1 + hy * lx * v2 + ly * hx * v3 + ly * lx * v4
            acc += tl.where(inside, val, 0.0)
    return tl.math.div_rn(acc, count)


@triton.jit
def multiscale_roi_align_kernel(
    out_ptr, boxes_ptr, levels_ptr, per_image, channels,
    f0, h0, w0, n0, c0, y0, x0, k0,
    f1, h1, w1, n1, c1, y1_, x1_, k1,
    f2, h2, w2, n2, c2, y2_, x2_, k2,
    f3, h3, w3, n3, c3, y3, x3, k3,
    f4, h4, w4, n4, c4, y4, x4, k4,
    offset,
    LEVELS: tl.constexpr, POOLED: tl.constexpr, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)  # one (box, bin) per program along axis 0, channel blocks along axis 1
    r = pid // (POOLED * POOLED)
    ph = (pid // POOLED) % POOLED
    pw = pid % POOLED
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < channels
    n = r // per_image
    bx = boxes_ptr + r.to(tl.int64) * 4
    bx1 = tl.load(bx)
    by1 = tl.load(bx + 1)
    bx2 = tl.load(bx + 2)
    by2 = tl.load(bx + 3)
    lvl = tl.load(levels_ptr + r)
    res = tl.zeros([BLOCK_C], dtype=tl.float32)
    if lvl == 0:
        res = _pool_bin(f0, n, h0, w0, n0, c0, y0, x0, k0, offset, bx1, by1, bx2, by2, ph, pw, c, c_mask,
                        POOLED, SAMPLING, ALIGNED, BLOCK_C)  # fmt: skip
    if LEVELS > 1:  # noqa: SIM102 (a compile-time test around a runtime one: Triton has no `and` of both)
        if lvl == 1:
            res = _pool_bin(f1, n, h1, w1, n1, c1, y1_, x1_, k1, offset, bx1, by1, bx2, by2, ph, pw, c,
                            c_mask, POOLED, SAMPLING, ALIGNED, BLOCK_C)  # fmt: skip
    if LEVELS > 2:  # noqa: SIM102
        if lvl == 2:
            res = _pool_bin(f2, n, h2, w2, n2, c2, y2_, x2_, k2, offset, bx1, by1, bx2, by2, ph, pw, c,
                            c_mask, POOLED, SAMPLING, ALIGNED, BLOCK_C)  # fmt: skip
    if LEVELS > 3:  # noqa: SIM102
        if lvl == 3:
            res = _pool_bin(f3, n, h3, w3, n3, c3, y3, x3, k3, offset, bx1, by1, bx2, by2, ph, pw, c, c_mask,
                            POOLED, SAMPLING, ALIGNED, BLOCK_C)  # fmt: skip
    if LEVELS > 4:  # noqa: SIM102
        if lvl == 4:
            res = _pool_bin(f4, n, h4, w4, n4, c4, y4, x4, k4, offset, bx1, by1, bx2, by2, ph, pw, c, c_mask,
                            POOLED, SAMPLING, ALIGNED, BLOCK_C)  # fmt: skip
    dst = out_ptr + r.to(tl.int64) * channels * POOLED * POOLED + c.to(tl.int64) * POOLED * POOLED + ph * POOLED + pw
    tl.store(dst, res.to(out_ptr.dtype.element_ty), mask=c_mask)
