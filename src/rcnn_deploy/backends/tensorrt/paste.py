"""Masks pasted, thresholded and run-length encoded on the GPU in the torch-free TensorRT process: a CUDA kernel
(compiled by NVRTC at first use, :mod:`rcnn_deploy.backends.cuda_rtc`) reads the engine's mask probabilities where
the engine wrote them and writes each box-region column's row changes; only those come back to the host, not
``[B, 100, M, M]`` probabilities to resample there. :class:`KernelPaste` is :class:`TensorRTBatchModel`'s ``post``
(``Detector.from_engine(..., gpu_post=True)`` where torch with CUDA is not in the process, or
``gpu_post="kernel"``).

The host works out each mask's box region and the bilinear taps of its rows and columns in numpy
(:func:`rcnn_deploy.runtime.paste_plan.plan_paste`, float64 like the host paste); the kernel, one thread per
region column, evaluates every pixel of its column from the mask with a zero border with explicit FMAs, in the
order of the PyTorch path's Triton kernel (``glue/_paste_kernel.py``), and thresholds it (torchvision ``>``,
Detectron2 ``>=``), so the masks are the host paste's up to pixels within about 1e-6 of the threshold. A column
of more than :data:`~rcnn_deploy.runtime.paste_plan.MAX_RUNS` changes sends its image's masks to the host paste
(:class:`~rcnn_deploy.runtime.masks.PastedMasks`) instead.

The same source builds with a C++ compiler for the CPU (``RD_CPU``: one call per column), which is how the tests
check the kernel's arithmetic against the host paste on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...runtime.detections import Detections
from ...runtime.masks import PastedMasks, RleMasks
from ...runtime.paste_plan import MAX_RUNS, METHODS, PastePlan, plan_paste, runs_from_changes
from ..cuda_rtc import Arg, CudaModule

KERNEL_SOURCE = r"""
#ifndef RD_CPU
#define RD_FMA(a, b, c) __fmaf_rn(a, b, c)
#define RD_MUL(a, b) __fmul_rn(a, b)
#define RD_DEVICE __device__ __forceinline__
#else
#include <math.h>
#define RD_FMA(a, b, c) fmaf(a, b, c)
#define RD_MUL(a, b) ((a) * (b))
#define RD_DEVICE static inline
#endif

typedef long long i64;

RD_DEVICE float rd_half(unsigned short h) {  /* IEEE half -> float, exactly */
  unsigned int sign = ((unsigned int)h & 0x8000u) << 16, exp = ((unsigned int)h >> 10) & 0x1fu, man = h & 0x3ffu;
  unsigned int bits;
  if (exp == 0u) {
    if (man == 0u) {
      bits = sign;
    } else {
      exp = 113u;
      while (!(man & 0x400u)) { man <<= 1; --exp; }
      bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31u) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  union { unsigned int u; float f; } v;
  v.u = bits;
  return v.f;
}

RD_DEVICE float rd_load(const float* p, i64 i) { return p[i]; }
RD_DEVICE float rd_load(const unsigned short* p, i64 i) { return rd_half(p[i]); }

/* the M x M mask with a zero border: border index i is mask row i - 1 */
template <typename T>
RD_DEVICE float rd_prob(const T* mask, int i, int j, int m) {
  return (i >= 1 && i <= m && j >= 1 && j <= m) ? rd_load(mask, (i64)(i - 1) * m + (j - 1)) : 0.0f;
}

/* region column c (of all masks' columns): every row pasted and thresholded, its row changes written to
   changes[c, :max_runs] as image positions (x * H + y; a run's start, then the row after its end), their number
   to count[c] */
template <typename T>
RD_DEVICE void rd_paste_column(i64 c, const T* probs, const int* slot_of, const int* col_owner, const float* ytaps,
                               const float* xtaps, const i64* side, int* changes, int* count, float threshold, int n,
                               i64 rows_total, i64 cols_total, int m, int ge, int max_runs) {
  int d = col_owner[c];
  i64 rh = side[d], first_y = side[2 * n + d], first_x = side[3 * n + d];
  i64 col_pos = (side[5 * n + d] + (c - first_x)) * side[6 * n + d] + side[4 * n + d];
  int xi = (int)xtaps[c];
  float xw0 = xtaps[cols_total + c], xw1 = xtaps[2 * cols_total + c];
  const T* mask = probs + (i64)slot_of[d] * m * m;
  int found = 0, prev = 0;
  for (i64 r = 0; r <= rh; ++r) {
    int bit = 0;
    if (r < rh) {
      i64 at = first_y + r;
      int yi = (int)ytaps[at];
      float yw0 = ytaps[rows_total + at], yw1 = ytaps[2 * rows_total + at];
      float a = RD_FMA(rd_prob(mask, yi, xi, m), xw0, RD_MUL(rd_prob(mask, yi, xi + 1, m), xw1));
      float b = RD_FMA(rd_prob(mask, yi + 1, xi, m), xw0, RD_MUL(rd_prob(mask, yi + 1, xi + 1, m), xw1));
      float v = RD_FMA(a, yw0, RD_MUL(b, yw1));
      bit = ge ? (v >= threshold) : (v > threshold);
    }
    if (bit != prev) {
      if (found < max_runs) changes[c * max_runs + found] = (int)(col_pos + r);
      ++found;
      prev = bit;
    }
  }
  count[c] = found;
}

#define RD_ARGS(T) const T* probs, const int* slot_of, const int* col_owner, const float* ytaps, const float* xtaps, \
  const i64* side, int* changes, int* count, float threshold, int n, i64 rows_total, i64 cols_total, int m, int ge, \
  int max_runs
#define RD_PASS probs, slot_of, col_owner, ytaps, xtaps, side, changes, count, threshold, n, rows_total, cols_total, \
  m, ge, max_runs
#ifndef RD_CPU
#define RD_KERNEL(NAME, T) extern "C" __global__ void NAME(RD_ARGS(T)) { \
    i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; \
    if (c < cols_total) rd_paste_column<T>(c, RD_PASS); }
#else
#define RD_KERNEL(NAME, T) extern "C" void NAME(RD_ARGS(T)) { \
    for (i64 c = 0; c < cols_total; ++c) rd_paste_column<T>(c, RD_PASS); }
#endif
RD_KERNEL(paste_changes_f32, float)
RD_KERNEL(paste_changes_f16, unsigned short)
"""

_BLOCK = 128
_ALIGN = 256
_H2D, _D2H = 1, 2


def kernel_name(dtype: Any) -> str:
    """The kernel for masks of ``dtype`` (float32 or float16)."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "paste_changes_f32"
    if dt == np.float16:
        return "paste_changes_f16"
    raise ValueError(f"the paste kernel reads float32 or float16 masks, not {dt}")


def _layout(sizes: Sequence[int]) -> Tuple[List[int], int]:
    """Byte offsets of parts of ``sizes`` bytes packed one after another (each at a multiple of 256), and the
    total."""
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at)
        at += -(-int(size) // _ALIGN) * _ALIGN
    return offsets, max(at, _ALIGN)


class _Buffers:
    """One slot's growing device and page-locked host buffers: the plan going up, the changes coming back."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.dev_in, self.dev_out = ctypes.c_void_p(), ctypes.c_void_p()
        self.host_in: Any = None
        self.host_out: Any = None
        self.in_bytes = self.out_bytes = 0

    def _grow(self, which: str, nbytes: int) -> None:
        from .pipelined import _Pinned

        size = 1 << max(16, (nbytes - 1).bit_length())
        dev = getattr(self, "dev_" + which)
        host = getattr(self, "host_" + which)
        if dev.value:
            self.lib.cudaFree(dev)
        if host is not None:
            host.free()
        dev = ctypes.c_void_p()
        status = self.lib.cudaMalloc(ctypes.byref(dev), ctypes.c_size_t(size))
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaMalloc({size} bytes) for the mask paste")
        setattr(self, "dev_" + which, dev)
        setattr(self, "host_" + which, _Pinned(self.lib, (size,), np.dtype(np.uint8)))
        setattr(self, which + "_bytes", size)

    def ensure(self, in_bytes: int, out_bytes: int) -> None:
        if in_bytes > self.in_bytes:
            self._grow("in", in_bytes)
        if out_bytes > self.out_bytes:
            self._grow("out", out_bytes)

    def free(self) -> None:
        for name in ("dev_in", "dev_out"):
            dev = getattr(self, name)
            if dev.value:
                self.lib.cudaFree(dev)
            setattr(self, name, ctypes.c_void_p())
        for name in ("host_in", "host_out"):
            host = getattr(self, name)
            if host is not None:
                host.free()
            setattr(self, name, None)
        self.in_bytes = self.out_bytes = 0


class KernelPaste:
    """A fused engine's padded outputs of one batch -> each image's :class:`Detections` in original pixels with
    :class:`RleMasks`, the masks pasted by the kernel (module docstring). ``lib``: the CUDA runtime (ctypes, as
    :class:`TensorRTBatchModel`'s). ``check_host``: also paste every mask on the host and count the RLE strings
    that equal the kernel's (``checked`` / ``identical``; benchmarks' parity, slow)."""

    def __init__(self, lib: Any, method: str = "torchvision", threshold: float = 0.5, module: Any = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown mask paste method {method!r}; use 'torchvision' or 'detectron2'")
        self.lib, self.method, self.threshold = lib, method, float(threshold)
        self.module = module if module is not None else CudaModule(KERNEL_SOURCE, "paste.cu")
        self._buffers: Dict[Any, _Buffers] = {}
        self._lock = threading.Lock()
        self.check_host = False
        self.checked = self.identical = 0
        self.host_pasted = 0  # images whose masks went to the host paste (a column past MAX_RUNS changes)

    def __call__(
        self, out: Dict[str, np.ndarray], masks_ptr: int, stream: int, letterboxes: Sequence[Any], key: Any = None
    ) -> Dict[str, Any]:
        """``out``: the batch's host outputs (runtime names, ``k`` images; ``masks`` ``[k, D, M, M]``), the same
        masks on the device at ``masks_ptr`` (``[>= k, D, M, M]``, as the engine wrote them), ``stream``: where
        the engine ran (the kernel queues behind it). Returns ``detections`` and ``finite`` (see
        :meth:`rcnn_deploy.api.HostStages.detections_for`)."""
        dets = Detections.from_padded(out)
        k = len(dets)
        masks = out["masks"]
        d_slots, m = int(masks.shape[1]), int(masks.shape[-1])
        finite = np.array([bool(np.isfinite(d.boxes).all() and np.isfinite(d.scores).all()) for d in dets])
        boxes, hw, slot_of, owner = [], [], [], []
        for i, (d, lb) in enumerate(zip(dets, letterboxes)):
            if not finite[i]:
                continue
            d.boxes = lb.boxes_to_original(d.boxes)
            n = len(d.boxes)
            if n and (lb.orig_h * lb.orig_w) < 2**31:  # image positions in int32
                boxes.append(d.boxes)
                hw.append(np.broadcast_to(np.array([lb.orig_h, lb.orig_w], np.int64), (n, 2)))
                slot_of.append(i * d_slots + np.arange(n))
                owner.append(np.full(n, i))
        kernel: Optional[Tuple[PastePlan, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = None
        if boxes:
            plan = plan_paste(np.concatenate(boxes), np.concatenate(hw), m, self.method)
            changes, count = self.run(plan, np.concatenate(slot_of).astype(np.int32), masks_ptr, masks.dtype, m,
                                      stream, key)  # fmt: skip
            kernel = (plan, *runs_from_changes(plan, changes, count), np.concatenate(owner))
        result = np.empty(k, dtype=object)
        host_pasted = checked = identical = 0  # added to the counters at the end, under the lock (see below)
        for i, (d, lb) in enumerate(zip(dets, letterboxes)):
            probs = d.masks
            if not finite[i]:
                d.masks = None
            elif len(d.boxes) and probs is not None:
                hw_i = (lb.orig_h, lb.orig_w)
                mine = np.flatnonzero(kernel[4] == i) if kernel is not None else np.zeros(0, np.int64)
                if kernel is None or not mine.size or bool(kernel[3][mine].any()):
                    d.masks = PastedMasks(probs, d.boxes, hw_i, self.method, self.threshold)
                    host_pasted += 1
                else:
                    plan, runs, offsets = kernel[0], kernel[1], kernel[2]
                    a, b = int(mine[0]), int(mine[-1]) + 1
                    got = RleMasks(runs[offsets[a] : offsets[b]], offsets[a : b + 1] - offsets[a],
                                   plan.regions[a:b], hw_i)  # fmt: skip
                    if self.check_host:
                        host = PastedMasks(probs, d.boxes, hw_i, self.method, self.threshold)
                        checked += len(got)
                        identical += sum(x == y for x, y in zip(got.rles(), host.rles()))
                    d.masks = got
            result[i] = d
        # the batch models' waiters call this from several threads at once: ``self.identical += sum(...)`` read
        # the counter before the slow comparison and lost the other threads' counts (run 35 reported 47-86 %)
        with self._lock:
            self.host_pasted += host_pasted
            self.checked += checked
            self.identical += identical
        return {"detections": result, "finite": finite}

    def run(
        self, plan: PastePlan, slot_of: np.ndarray, masks_ptr: int, dtype: Any, m: int, stream: int, key: Any = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The kernel over ``plan`` on ``stream``: the plan up, the kernel, its changes back, then waits for the
        stream. Returns ``changes [cols, MAX_RUNS]`` (a view of ``key``'s page-locked buffer, valid until the next
        call with ``key``: :meth:`__call__` reads it at once; a copy was 2 MB for 16,000 region columns) and
        ``count [cols]`` (a copy)."""
        cols = plan.cols
        if cols == 0:
            return np.zeros((0, MAX_RUNS), np.int32), np.zeros(0, np.int32)
        parts = [plan.ytaps, plan.xtaps, plan.side, plan.col_owner, slot_of]
        in_off, in_bytes = _layout([p.nbytes for p in parts])
        changes_bytes, count_bytes = cols * MAX_RUNS * 4, cols * 4  # int32 each
        out_off, out_bytes = _layout([changes_bytes, count_bytes])
        with self._lock:
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = _Buffers(self.lib)
        buf.ensure(in_bytes, out_bytes)
        staged = buf.host_in.array
        for p, at in zip(parts, in_off):
            staged[at : at + p.nbytes] = np.ascontiguousarray(p).view(np.uint8).reshape(-1)
        self._copy(buf.dev_in.value, buf.host_in.ptr.value, in_off[-1] + parts[-1].nbytes, _H2D, stream)
        dev = [int(buf.dev_in.value or 0) + at for at in in_off]
        out_dev = [int(buf.dev_out.value or 0) + at for at in out_off]
        args = [Arg.ptr(masks_ptr), Arg.ptr(dev[4]), Arg.ptr(dev[3]), Arg.ptr(dev[0]), Arg.ptr(dev[1]), Arg.ptr(dev[2]),
                Arg.ptr(out_dev[0]), Arg.ptr(out_dev[1]), Arg.f32(self.threshold), Arg.i32(plan.side.shape[1]),
                Arg.i64(plan.rows), Arg.i64(cols), Arg.i32(m), Arg.i32(self.method == "detectron2"),
                Arg.i32(MAX_RUNS)]  # fmt: skip
        self.module.launch(kernel_name(dtype), (-(-cols // _BLOCK), 1, 1), (_BLOCK, 1, 1), args, stream)
        self._copy(buf.host_out.ptr.value, buf.dev_out.value, out_off[-1] + count_bytes, _D2H, stream)
        status = self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream))
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaStreamSynchronize after the mask paste")
        got = buf.host_out.array
        count = got[out_off[1] : out_off[1] + count_bytes].view(np.int32).copy()
        return got[out_off[0] : out_off[0] + changes_bytes].view(np.int32).reshape(cols, MAX_RUNS), count

    def _copy(self, dst: Optional[int], src: Optional[int], nbytes: int, kind: int, stream: int) -> None:
        status = self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind,
                                          ctypes.c_void_p(stream))  # fmt: skip
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaMemcpyAsync (mask paste)")

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
