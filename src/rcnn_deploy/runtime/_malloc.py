"""glibc's malloc told to hand large freed blocks straight back to the operating system (stdlib only; Python 3.9
compatible).

glibc serves an allocation of at least its *mmap threshold* with a mapping of its own, unmapped when it is
freed; smaller ones come from its heaps, which keep freed memory for reuse. The threshold starts at 128 KiB but
is dynamic: each time a mapped block is freed, the threshold rises to that block's size (up to 32 MiB). ONNX
Runtime without its arena allocates and frees every intermediate tensor through malloc, so after the first
freed tensor of a few MiB, the following ones land in the heaps, fragment them and stay resident: the process
keeps hundreds of MiB it no longer uses, and the peak grows with them. A fixed threshold (setting it turns the
dynamic adjustment off) keeps every block of 1 MiB or more a mapping of its own.

Measured with ``benchmarks/memory_bench.py`` (peak RSS, fused Mask R-CNN graph, ONNX Runtime on the CPU): see
``benchmarks/results/memory_cpu_*.json``. ``RCNN_DEPLOY_MMAP_THRESHOLD`` sets another threshold in bytes
(at most 32 MiB), ``0`` leaves malloc as it is. Outside glibc (macOS, Windows, musl) nothing is done.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from ..errors import UserError

ENV = "RCNN_DEPLOY_MMAP_THRESHOLD"
DEFAULT_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_applied: Optional[int] = None
_tried = False


def fixed_mmap_threshold() -> Optional[int]:
    """Fix glibc's mmap threshold for this process (once; later calls return the first result): the
    threshold set, or None where nothing was changed (not glibc, or ``RCNN_DEPLOY_MMAP_THRESHOLD=0``)."""
    global _applied, _tried
    if _tried:
        return _applied
    env = os.environ.get(ENV, "").strip()
    if env and not env.isdigit():
        raise UserError(f"must be a whole number of bytes (0: leave malloc alone), got {env!r}", where=ENV)
    value = int(env) if env else DEFAULT_THRESHOLD
    _tried = True
    if value == 0 or not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no such tuning
            return None
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if value > 2**31 - 1 or mallopt(_M_MMAP_THRESHOLD, value) != 1:
        _tried = False
        raise UserError(f"glibc refused an mmap threshold of {value} bytes", where=ENV, fix="use at most 33554432")
    _applied = value
    return value
