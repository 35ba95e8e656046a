"""Latency statistics and timing for ``rcnn-deploy bench`` and the benchmarks (numpy only at import; Python 3.9
compatible, so the TensorRT runtime may use it beside TensorRT's own Python). torch is imported only inside the
CUDA timers (:func:`time_torch_cuda`, :func:`cuda_sync`).

    samples = time_callable(lambda: detector.run_padded(batch), iterations=50, warmup=10)
    stats = LatencyStats.from_samples(samples, batch=len(batch))
    print(markdown_table([("model-only b=8", stats)]))

Percentiles use numpy's default linear interpolation between the two nearest samples. Throughput is images
per second at the mean latency: ``batch * 1000 / mean_ms``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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


# ------------------------------------------------------------------------------------------- CUDA timing


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` (for one-line reports of a failed run)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def root_cause(e: BaseException) -> BaseException:
    """The first error of a chain: a failed capture reports 'a previous error during capture', not the op."""
    seen = {id(e)}
    while (prev := e.__cause__ or e.__context__) is not None and id(prev) not in seen:
        e = prev
        seen.add(id(e))
    return e


def cuda_sync(device: str) -> Optional[Callable[[], Any]]:
    """``torch.cuda.synchronize`` for a ``cuda[:N]`` device (for :func:`time_callable`'s ``sync``), else None."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


def capture_cuda_graph(call: Callable[[], Any]) -> Tuple[Callable[[], Any], Any]:
    """Capture ``call`` into a CUDA graph (after warm-up on a side stream, as torch.cuda.graphs asks). Returns
    ``(replay, keep)``: keep ``keep`` alive (the graph and its static outputs) while replaying."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = call()
    torch.cuda.synchronize()
    return graph.replay, (graph, static_out)


def time_torch_cuda(
    call: Callable[[], Any],
    iterations: int,
    warmup: int,
    cuda_graph: bool,
    on_iteration: Optional[Callable[[], Any]] = None,
) -> Tuple[List[float], str, Optional[str]]:
    """GPU latency (ms) of ``call`` (inputs already on the GPU) from CUDA events around each launch; with
    ``cuda_graph`` the call is captured once and replayed. Returns ``(samples, timing, note)``, ``timing``
    "cuda-graph" or "cuda-events"; a failed capture (host syncs, data-dependent shapes) falls back to eager
    launches and says why in ``note``."""
    import torch

    launch, keep, note, timing = call, None, None, "cuda-events"
    with torch.no_grad():
        if cuda_graph:
            try:
                launch, keep = capture_cuda_graph(call)
                timing = "cuda-graph"
            except Exception as e:  # any capture failure means "time it eagerly"
                note = f"CUDA graph capture failed ({first_line(root_cause(e))}); timed eager launches"
                launch = call
                with contextlib.suppress(Exception):  # the failed capture may leave an error to clear
                    torch.cuda.synchronize()
        for _ in range(warmup):
            launch()
            if on_iteration is not None:
                on_iteration()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples: List[float] = []
        for _ in range(iterations):
            start.record()
            launch()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
            if on_iteration is not None:
                on_iteration()
    del keep
    return samples, timing, note


# ------------------------------------------------------------------------------- a detector, end to end


def cycle(paths: Sequence[Any], start: int, n: int) -> List[Any]:
    """``n`` entries of ``paths`` from ``start`` on, wrapping around."""
    return [paths[(start + j) % len(paths)] for j in range(n)]


def time_end_to_end(
    detector: Any,
    paths: Sequence[Any],
    batch: int,
    iterations: int,
    warmup: int = 0,
    sync: Optional[Callable[[], Any]] = None,
    on_iteration: Optional[Callable[[], Any]] = None,
) -> Tuple[List[float], Dict[str, Any]]:
    """Host wall time (ms) of ``detector.preprocess`` (decode + letterbox) + ``run_padded`` + ``postprocess``
    on ``batch`` files per call, ``paths`` cycled. Returns the samples and ``{"stages_mean_ms": {...},
    "detections_per_image": n}`` over the timed calls."""
    stages: Dict[str, List[float]] = {"decode_preprocess_ms": [], "infer_ms": [], "postprocess_ms": []}
    counts: List[int] = []
    state = {"start": 0}

    def once() -> None:
        chunk = cycle(paths, state["start"], batch)
        state["start"] += batch
        t0 = time.perf_counter()
        array, boxes = detector.preprocess(chunk)
        t1 = time.perf_counter()
        out = detector.run_padded(array)
        t2 = time.perf_counter()
        dets = detector.postprocess(out, boxes)
        t3 = time.perf_counter()
        stages["decode_preprocess_ms"].append((t1 - t0) * 1000.0)
        stages["infer_ms"].append((t2 - t1) * 1000.0)
        stages["postprocess_ms"].append((t3 - t2) * 1000.0)
        counts.append(sum(len(d.scores) for d in dets))

    samples = time_callable(once, iterations, warmup, sync, on_iteration)
    extra: Dict[str, Any] = {
        "stages_mean_ms": {k: round(sum(v[-iterations:]) / iterations, 4) for k, v in stages.items()},
        "detections_per_image": round(sum(counts[-iterations:]) / (iterations * batch), 2),
    }
    return samples, extra


def time_streamed(
    detector: Any,
    paths: Sequence[Any],
    batch: int,
    iterations: int,
    warmup: int = 0,
    on_batch: Optional[Callable[[], Any]] = None,
) -> Tuple[List[float], Dict[str, Any]]:
    """``detector.stream`` over ``(warmup + iterations) * batch`` images (``paths`` cycled): decode, model and
    postprocessing (COCO results with RLE masks) overlap. A sample is the wall time per batch in steady state
    (successive batches' completions); ``images_per_s`` is the whole timed part's throughput and ``latency_ms``
    each image's time from entering the pipeline to its result (queueing included). ``on_batch`` runs after
    every ``batch`` results."""
    from .coco import CocoEntries
    from .sources import Item

    n_warm, n = warmup * batch, iterations * batch
    items = [Item(i, str(p), path=p) for i, p in enumerate(cycle(paths, 0, n_warm + n))]
    entered: Dict[int, float] = {}

    def source() -> Iterator[Item]:
        for it in items:
            entered[it.index] = time.perf_counter()
            yield it

    done: List[float] = []
    latency: List[float] = []
    dets = 0
    for r in detector.stream(source(), batch=batch, per_image=CocoEntries(detector.spec)):
        t = time.perf_counter()
        if r.error is not None:
            raise RuntimeError(f"{r.name}: {r.error}")
        if (r.index + 1) % batch == 0 and on_batch is not None:
            on_batch()
        if r.index >= n_warm:
            done.append(t)
            latency.append((t - entered[r.index]) * 1000.0)
            dets += len(r.extra)
    start = entered.get(n_warm, done[0]) if done else 0.0
    ends = done[batch - 1 :: batch]
    samples = [(b - a) * 1000.0 for a, b in zip([start] + ends[:-1], ends)]
    q = sorted(latency)
    extra: Dict[str, Any] = {
        "images_per_s": round(len(done) / (done[-1] - start), 2) if done and done[-1] > start else None,
        "latency_ms": {f"p{p}": round(q[min(len(q) - 1, int(len(q) * p / 100))], 3) for p in (50, 90, 99)} if q else {},
        "detections_per_image": round(dets / max(len(done), 1), 2),
    }
    return samples, extra
