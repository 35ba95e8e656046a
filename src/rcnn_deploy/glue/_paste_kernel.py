"""The Triton kernel of :func:`rcnn_deploy.glue.gpu_post.paste_runs` on a GPU (imported on first use: ``triton.jit``
reads ``TRITON_INTERPRET`` when this module is imported)."""

import triton
import triton.language as tl


@triton.jit
def _bits(base, yi, yw0, yw1, xi, xw0, xw1, live, threshold, K1: tl.constexpr, GE: tl.constexpr):
    # the x pass, then the y pass, as gpu_post's bmm groups them: (P[yi, xi] xw0 + P[yi, xi + 1] xw1) yw0 + ...
    # Explicit FMAs: every evaluation of a pixel is the same instructions (the kernel evaluates each row twice, as
    # itself and as the row above the next; a compiler free to contract a * b + c either way gave the two different
    # bits near the threshold, and a column an odd number of changes)
    top = base + yi[:, None] * K1 + xi[None, :]
    bottom = top + K1
    a = tl.fma(tl.load(top, mask=live, other=0.0), xw0[None, :], tl.load(top + 1, mask=live, other=0.0) * xw1[None, :])
    b = tl.fma(
        tl.load(bottom, mask=live, other=0.0), xw0[None, :], tl.load(bottom + 1, mask=live, other=0.0) * xw1[None, :]
    )
    v = tl.fma(a, yw0[:, None], b * yw1[:, None])
    if GE:
        return (v >= threshold) & live
    return (v > threshold) & live


@triton.jit
def paste_transitions_kernel(
    padded_ptr, ytaps_ptr, xtaps_ptr, side_ptr, out_ptr, count_ptr, threshold, rows_total, cols_total,
    K1: tl.constexpr, MAX_RUNS: tl.constexpr, GE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """Mask ``n`` (program 0) of ``N`` (``padded [N, K1, K1]``: its probabilities with a zero border), region
    columns ``BLOCK_W`` at a time (program 1): every row of each column, pasted and thresholded, and the rows where
    the value changes (0 -> 1: a run starts; 1 -> 0: the row after it ends, up to row ``rh``, the first past the
    region) written in order to ``out[column, :MAX_RUNS]`` as column-major positions in the mask's image
    (``(x0 + column) * image_h + y0 + row``: the runs' starts and ends as COCO RLE counts them); the number of them
    to ``count[column]`` (more than ``MAX_RUNS``: only the first are written). Region rows and columns of all masks
    one after the other: ``side [7, N]`` int64 holds each mask's rows ``rh``, columns ``rw``, where its first row
    and first column are in ``ytaps [3, rows_total]`` and ``xtaps [3, cols_total]`` (float32: the first tap's
    index into the bordered mask, the two taps' weights) and in ``out`` / ``count`` (by column), and its region's
    first row ``y0``, first column ``x0`` and its image's height."""
    n = tl.program_id(0)
    masks = tl.num_programs(0)
    rh = tl.load(side_ptr + n)
    rw = tl.load(side_ptr + masks + n)
    first = tl.program_id(1) * BLOCK_W
    if first < rw:
        y_off = tl.load(side_ptr + 2 * masks + n)
        cols = first + tl.arange(0, BLOCK_W)
        col_live = cols < rw
        at = tl.load(side_ptr + 3 * masks + n) + cols  # the columns' places in xtaps, out and count
        xi = tl.load(xtaps_ptr + at, mask=col_live, other=0.0).to(tl.int32)
        xw0 = tl.load(xtaps_ptr + cols_total + at, mask=col_live, other=0.0)
        xw1 = tl.load(xtaps_ptr + 2 * cols_total + at, mask=col_live, other=0.0)
        base = padded_ptr + n.to(tl.int64) * K1 * K1
        # each column's position in the image (column-major) at the region's first row
        col_pos = (tl.load(side_ptr + 5 * masks + n) + cols) * tl.load(side_ptr + 6 * masks + n)
        col_pos += tl.load(side_ptr + 4 * masks + n)
        count = tl.zeros([BLOCK_W], dtype=tl.int32)
        for start in range(0, rh + 1, BLOCK_H):
            rows = start + tl.arange(0, BLOCK_H)
            # each row's bit and the bit of the row above it (0 above row 0 and from row rh on)
            here = rows < rh
            above = (rows >= 1) & (rows <= rh)
            r_at = y_off + rows
            yi = tl.load(ytaps_ptr + r_at, mask=here, other=0.0).to(tl.int32)
            yw0 = tl.load(ytaps_ptr + rows_total + r_at, mask=here, other=0.0)
            yw1 = tl.load(ytaps_ptr + 2 * rows_total + r_at, mask=here, other=0.0)
            bit = _bits(base, yi, yw0, yw1, xi, xw0, xw1, here[:, None] & col_live[None, :], threshold, K1, GE)
            yi = tl.load(ytaps_ptr + r_at - 1, mask=above, other=0.0).to(tl.int32)
            yw0 = tl.load(ytaps_ptr + rows_total + r_at - 1, mask=above, other=0.0)
            yw1 = tl.load(ytaps_ptr + 2 * rows_total + r_at - 1, mask=above, other=0.0)
            prev = _bits(base, yi, yw0, yw1, xi, xw0, xw1, above[:, None] & col_live[None, :], threshold, K1, GE)
            change = (bit != prev).to(tl.int32)
            slot = count[None, :] + tl.cumsum(change, axis=0) - change
            dst = out_ptr + at[None, :] * MAX_RUNS + slot
            pos = col_pos[None, :] + rows[:, None]
            tl.store(dst, pos.to(out_ptr.dtype.element_ty), mask=(change != 0) & (slot < MAX_RUNS))
            count += tl.sum(change, axis=0)
        tl.store(count_ptr + at, count, mask=col_live)


@triton.jit
def compact_changes_kernel(out_ptr, count_ptr, start_ptr, dst_ptr, cols, MAX_RUNS: tl.constexpr, BLOCK: tl.constexpr):
    """Columns ``BLOCK`` at a time: the first ``count[c]`` changes of column ``c`` (``out [cols, MAX_RUNS]``, as
    :func:`paste_transitions_kernel` wrote them) copied to ``dst[start[c]:]`` (``start``: the exclusive cumulative
    sum of ``count``), so every column's changes end up one after the other, in column order."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = c < cols
    n = tl.load(count_ptr + c, mask=live, other=0)
    start = tl.load(start_ptr + c, mask=live, other=0)
    slot = tl.arange(0, MAX_RUNS)
    keep = live[:, None] & (slot[None, :] < n[:, None])
    v = tl.load(out_ptr + c[:, None].to(tl.int64) * MAX_RUNS + slot[None, :], mask=keep, other=0)
    tl.store(dst_ptr + start[:, None] + slot[None, :], v, mask=keep)
