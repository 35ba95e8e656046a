"""Latency statistics and host-side timing for ``rcnn-deploy bench`` (numpy only; Python 3.9 compatible, so the
TensorRT runtime may use it beside TensorRT's own Python).

    samples = time_callable(lambda: detector.run_padded(batch), iterations=50, warmup=10)
    stats = LatencyStats.from_samples(samples, batch=len(batch))
    print(markdown_table([("model-only b=8", stats)]))

Percentiles use numpy's default linear interpolation between the two nearest samples. Throughput is images
per second at the mean latency: ``batch * 1000 / mean_ms``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: (header, LatencyStats attribute, number format) of every column of :func:`markdown_table`, in order.
STAT_COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("batch", "batch", "{:d}"),
    ("n", "count", "{:d}"),
    ("min ms", "min_ms", "{:.2f}"),
    ("mean ms", "mean_ms", "{:.2f}"),
    ("median ms", "median_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p95 ms", "p95_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.2f}"),
    ("img/s", "throughput", "{:.1f}"),
)


@dataclass(frozen=True)
class LatencyStats:
    """trtexec-style summary of per-call latencies (milliseconds) for calls of ``batch`` images each."""

    batch: int
    count: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    throughput: float  # images per second at the mean latency

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], batch: int) -> LatencyStats:
        """Summarise ``samples_ms`` (one latency per call, in ms) of calls that each process ``batch`` images."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        a = np.asarray(list(samples_ms), dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError("no latency samples: time at least one iteration")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"latency samples must be finite and >= 0 ms, got min {a.min()} max {a.max()}")
        p90, p95, p99 = (float(v) for v in np.percentile(a, [90.0, 95.0, 99.0]))
        mean = float(a.mean())
        return cls(
            batch=int(batch),
            count=int(a.size),
            min_ms=float(a.min()),
            mean_ms=mean,
            median_ms=float(np.median(a)),
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
            max_ms=float(a.max()),
            std_ms=float(a.std()),
            throughput=batch * 1000.0 / mean if mean > 0 else math.inf,
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-safe dict (an infinite throughput, from all-zero samples, becomes None)."""
        d = asdict(self)
        if not math.isfinite(d["throughput"]):
            d["throughput"] = None
        return d


def markdown_table(rows: Sequence[Tuple[str, LatencyStats]], label: str = "run") -> str:
    """A GitHub-markdown table: one row per ``(label, stats)``, the columns of :data:`STAT_COLUMNS`."""
    headers = [label] + [h for h, _, _ in STAT_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(STAT_COLUMNS)) + "|"]
    for name, stats in rows:
        cells = [name.replace("|", "\\|")]
        for _, attr, fmt in STAT_COLUMNS:
            v = getattr(stats, attr)
            cells.append("inf" if isinstance(v, float) and not math.isfinite(v) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_callable(
    fn: Callable[[], Any],
    iterations: int,
    warmup: int = 0,
    sync: Optional[Callable[[], Any]] = None,
    on_iteration: Optional[Callable[[], Any]] = None,
) -> List[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``iterations`` times; return each call's wall time in ms.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after every call, inside the timed region, so
    asynchronous work is counted; it also runs once before timing starts. ``on_iteration`` is called after
    every call, warm-up included, outside the timed region (progress bars).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
        if on_iteration is not None:
            on_iteration()
    if sync is not None:
        sync()
    samples: List[float] = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if on_iteration is not None:
            on_iteration()
    return samples
