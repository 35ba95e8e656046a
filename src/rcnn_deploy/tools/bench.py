"""``rcnn-deploy bench``: trtexec-style latency / throughput of a deployed model, model-only and end to end,
optionally against torchvision's own eager model with the same weights.

Speed goals live here (a benchmark writing JSON and markdown), never in timed unit tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import typer

from ..errors import UserError
from . import args

BASELINES = ("torchvision",)
BENCH_BACKENDS = ("onnxruntime", "tensorrt", "torch")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SCHEMA = "rcnn-deploy/bench/1"
SYNTH_HW = (480, 640)  # synthetic end-to-end images: COCO-like size, JPEG, so decode and resize are measured
MAX_SYNTH_IMAGES = 32
MAX_REAL_IMAGES = 256

MODE_TITLES = {
    "model": "model-only",
    "end-to-end": "end-to-end",
    "streamed": "streamed",
    "baseline": "baseline",
}


class BenchError(Exception):
    """A user-facing problem: the message says what, where and how to fix it."""


# --------------------------------------------------------------------------------------------- targets


@dataclass
class _Target:
    """What is benchmarked: a Detector plus the handles the device timers need."""

    detector: Any  # rcnn_deploy.api.Detector
    kind: str  # "export" | "checkpoint" | "engine"
    device: str
    net: Any = None  # the torch deploy model (checkpoint kind)
    engine: Any = None  # TensorRTBackend (engine kind)
    batch_range: Optional[Tuple[int, int]] = None  # the graph's / engine's batch range
    info: Dict[str, Any] = field(default_factory=dict)


def _path_kind(model_path: str) -> str:
    p = Path(model_path)
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return "engine"
    if p.is_dir() or p.suffix.lower() == ".onnx":
        return "export"
    return "checkpoint"


def _load_target(
    model_path: str,
    kind: str,
    model: Optional[str],
    input_hw: Optional[Tuple[int, int]],
    device: str,
    backend: Optional[str] = None,
) -> _Target:
    if kind == "export" and backend == "tensorrt":
        return _load_split_engines(Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent)
    if kind == "export":
        from ..api import Detector
        from ..contract import Contract

        directory = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
        c = Contract.load(directory)
        det = Detector.load(directory)
        ort = sys.modules.get("onnxruntime")  # OnnxRuntimeBackend takes the CUDA provider whenever it is there
        on_gpu = ort is not None and "CUDAExecutionProvider" in ort.get_available_providers()
        info = {"graph": c.graph, "nms": c.nms, "model": c.model, "runs_on": "cuda" if on_gpu else "cpu"}
        return _Target(det, kind, device, batch_range=tuple(c.batch), info=info)  # type: ignore[arg-type]
    if kind == "engine":
        return _load_engine(Path(model_path))
    if model is None:
        raise BenchError(
            f"{model_path} is not an export directory (no contract.json) nor a TensorRT engine "
            f"({', '.join(ENGINE_SUFFIXES)}); for a checkpoint pass --model, e.g. --model torchvision-maskrcnn"
        )
    return _load_torch(model, model_path, input_hw, device)


def _load_torch(model: str, weights: str, input_hw: Optional[Tuple[int, int]], device: str) -> _Target:
    """The PyTorch deploy model (``Detector.from_torch``), keeping the module for device timing."""
    from ..api import Detector

    det = Detector.from_torch(model, weights, input_hw, device=device)
    return _Target(det, "checkpoint", device, net=det.module, info={"model": model})


def _load_split_engines(directory: Path) -> _Target:
    """A split export's three TensorRT engines with the glue in torch on the GPU (``Detector.from_split_engines``:
    the engines read and write torch's CUDA tensors); timed as the whole pipeline, host wall clock."""
    from ..api import Detector
    from ..contract import Contract

    c = Contract.load(directory)
    if c.graph != "split":
        raise BenchError(
            f"--backend tensorrt on {directory}: a fused export runs as its engine file (bench FILE.engine)"
        )
    det = Detector.from_split_engines(directory)
    meta = det.engine.backbone.meta  # type: ignore[attr-defined]
    prof = meta.get("build_config", {}).get("batch") or list(c.batch)
    info = {
        "graph": "split",
        "model": c.model,
        "tensorrt": f"{meta.get('trt')} {meta.get('trt_version')}",
        "precision": meta.get("precision"),
        "gpu": meta.get("gpu"),
        "runs_on": "cuda",
    }
    return _Target(det, "export", "cuda", batch_range=(int(prof[0]), int(prof[-1])), info=info)


def _load_engine(path: Path) -> _Target:
    """A fused TensorRT engine (built by ``rcnn-deploy build``) with the export's contract.json beside it."""
    from ..api import Detector

    try:
        det = Detector.from_engine(path)
    except ValueError as e:
        raise BenchError(str(e)) from None
    be = det.engine
    prof = be.meta.get("build_config", {}).get("batch") or [1, 1, 1]
    info = {
        "model": det.spec.name,
        "tensorrt": f"{be.meta.get('trt')} {be.meta.get('trt_version')}",
        "precision": be.meta.get("precision"),
        "gpu": be.meta.get("gpu"),
        "runs_on": "cuda",
    }
    return _Target(det, "engine", "cuda", engine=be, batch_range=(int(prof[0]), int(prof[-1])), info=info)


def _baseline_model(target: _Target, weights: Optional[str], device: str) -> Any:
    """torchvision's own eager Mask/Faster R-CNN with the target's weights, sized to its input."""
    from ..models.reference import torchvision_reference

    spec = target.detector.spec
    if spec.flavour != "torchvision":
        raise BenchError(
            f"--baseline torchvision needs a torchvision-* model, this one is {spec.name!r} (Detectron2 weights "
            "have no torchvision eager counterpart); drop --baseline"
        )
    if target.net is not None and weights is None:
        sd = target.net.state_dict()
    else:
        if weights is None:
            raise BenchError(
                f"--baseline torchvision with {target.kind} {target.info.get('model', '')} needs the checkpoint it "
                "was made from: pass --weights model.pth"
            )
        from ..models.build import build_model

        sd = build_model(spec.name, weights).state_dict()
    try:
        ref = torchvision_reference(spec, sd, target.detector.input_hw)
    except RuntimeError as e:  # load_state_dict: missing keys / shape mismatch
        raise BenchError(
            f"the --weights checkpoint does not fit {spec.name} with {spec.num_classes} classes "
            f"({str(e).splitlines()[0]}); pass the checkpoint the export was made from"
        ) from None
    return ref.to(device)


# ---------------------------------------------------------------------------------------------- images


def _bench_images(
    images: Optional[str], count: int, tmp: Path, console: Any, warnings: List[str]
) -> Tuple[List[Path], Dict[str, Any]]:
    """Readable image files for end-to-end timing: ``--images`` or synthetic JPEGs written to ``tmp``."""
    from ..runtime.preprocess import find_images, load_rgb

    if images is None:
        n = max(1, min(count, MAX_SYNTH_IMAGES))
        with console.status(f"writing {n} synthetic {SYNTH_HW[1]}x{SYNTH_HW[0]} JPEG images"):
            paths = write_synthetic_images(tmp, n, SYNTH_HW)
        return paths, {"source": "synthetic", "count": len(paths), "size_hw": list(SYNTH_HW), "format": "jpg"}
    found = find_images(images)
    if len(found) > MAX_REAL_IMAGES:
        warnings.append(f"using the first {MAX_REAL_IMAGES} of {len(found)} images in {images}")
        found = found[:MAX_REAL_IMAGES]
    paths, sizes = [], []
    for p in found:
        try:
            rgb = load_rgb(p)
        except ValueError as e:
            warnings.append(f"skipped unreadable image: {e}")
            continue
        paths.append(p)
        sizes.append(rgb.shape[:2])
    if not paths:
        raise BenchError(f"none of the {len(found)} images in {images} can be decoded; pass a folder of jpg/png images")
    hs, ws = [s[0] for s in sizes], [s[1] for s in sizes]
    info = {
        "source": str(images),
        "count": len(paths),
        "size_hw_min": [min(hs), min(ws)],
        "size_hw_max": [max(hs), max(ws)],
    }
    return paths, info


def write_synthetic_images(directory: Path, count: int, hw: Tuple[int, int], seed: int = 0) -> List[Path]:
    """``count`` JPEGs of smooth colour noise with a few filled shapes: realistic to decode and resize, and
    something for the detector to find. numpy + Pillow only."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    h, w = hw
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = np.zeros((h, w, 3), dtype=np.float32)
        for cells in (4, 16, 64):  # colour noise at several scales
            low = rng.integers(0, 256, size=(max(1, h // cells), max(1, w // cells), 3), dtype=np.uint8)
            img += np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR), dtype=np.float32)
        im = Image.fromarray((img / 3.0).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 9))):
            size = float(rng.uniform(0.05, 0.4)) * min(h, w)
            x0, y0 = float(rng.uniform(0, w - size)), float(rng.uniform(0, h - size))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            kind = int(rng.integers(3))
            if kind == 0:
                draw.ellipse([x0, y0, x0 + size, y0 + size], fill=fill)
            elif kind == 1:
                draw.rectangle([x0, y0, x0 + size, y0 + 0.6 * size], fill=fill)
            else:
                draw.polygon([(x0, y0 + size), (x0 + size / 2, y0), (x0 + size, y0 + size)], fill=fill)
        path = directory / f"{i:06d}.jpg"
        im.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def _cycle(paths: Sequence[Path], start: int, n: int) -> List[Path]:
    return [paths[(start + j) % len(paths)] for j in range(n)]


# ---------------------------------------------------------------------------------------------- timing


@dataclass
class BenchRow:
    mode: str  # "model" | "end-to-end" | "baseline"
    engine: str  # "onnxruntime" | "torch" | "tensorrt" | "torchvision-eager"
    batch: int
    timing: str  # "host" | "cuda-events" | "cuda-graph"
    samples_ms: List[float]
    stats: Any  # LatencyStats
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{MODE_TITLES[self.mode]} · {self.engine} ({self.timing})"

    def to_dict(self) -> Dict[str, Any]:
        d = {"mode": self.mode, "engine": self.engine, "batch": self.batch, "timing": self.timing}
        d.update(self.stats.to_dict())
        d.update(self.extra)
        d["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return d


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _root_cause(e: BaseException) -> BaseException:
    """The first error of a chain: a failed capture reports 'a previous error during capture', not the op."""
    seen = {id(e)}
    while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        seen.add(id(e))
    return e


def _capture_cuda_graph(call: Callable[[], Any]) -> Tuple[Callable[[], Any], Any]:
    """Capture ``call`` into a CUDA graph (after warm-up on a side stream, as torch.cuda.graphs asks)."""
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
    ``cuda_graph`` the call is captured once and replayed. Returns ``(samples, timing, note)``; a failed
    capture (host syncs, data-dependent shapes) falls back to eager launches and says why in ``note``."""
    import torch

    launch, keep, note, timing = call, None, None, "cuda-events"
    with torch.no_grad():
        if cuda_graph:
            try:
                launch, keep = _capture_cuda_graph(call)
                timing = "cuda-graph"
            except Exception as e:  # any capture failure means "time it eagerly"
                note = f"CUDA graph capture failed ({_first_line(_root_cause(e))}); timed eager launches"
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


def _sync_for(device: str) -> Optional[Callable[[], Any]]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


def _time_model_only(
    target: _Target, array: Any, iterations: int, warmup: int, cuda_graph: bool, step: Callable[[int], None]
) -> Tuple[List[float], str, Optional[str]]:
    from ..runtime.timing import time_callable

    det = target.detector
    if target.engine is not None:  # TensorRT: its own CUDA-event / CUDA-graph timer, no host copies
        note = None
        try:
            samples = target.engine.time_gpu({"images": array}, iterations, warmup, cuda_graph)
        except RuntimeError as e:
            if not cuda_graph:
                raise
            note = f"CUDA graph capture failed ({_first_line(e)}); timed eager launches"
            cuda_graph = False
            samples = target.engine.time_gpu({"images": array}, iterations, warmup, False)
        step(iterations + warmup)
        return samples, "cuda-graph" if cuda_graph else "cuda-events", note
    if target.net is not None and target.device.startswith("cuda"):
        import torch

        x = torch.from_numpy(array).to(target.device)
        return time_torch_cuda(lambda: target.net(x), iterations, warmup, cuda_graph, lambda: step(1))
    samples = time_callable(
        lambda: det.run_padded(array), iterations, warmup, _sync_for(target.device), lambda: step(1)
    )
    return samples, "host", None


def _time_end_to_end(
    target: _Target, paths: Sequence[Path], batch: int, iterations: int, warmup: int, step: Callable[[int], None]
) -> Tuple[List[float], Dict[str, Any]]:
    from ..runtime.timing import time_callable

    det = target.detector
    stages: Dict[str, List[float]] = {"decode_preprocess_ms": [], "infer_ms": [], "postprocess_ms": []}
    counts: List[int] = []
    state = {"start": 0}

    def once() -> None:
        chunk = _cycle(paths, state["start"], batch)
        state["start"] += batch
        t0 = time.perf_counter()
        array, boxes = det.preprocess(chunk)
        t1 = time.perf_counter()
        out = det.run_padded(array)
        t2 = time.perf_counter()
        dets = det.postprocess(out, boxes)
        t3 = time.perf_counter()
        stages["decode_preprocess_ms"].append((t1 - t0) * 1000.0)
        stages["infer_ms"].append((t2 - t1) * 1000.0)
        stages["postprocess_ms"].append((t3 - t2) * 1000.0)
        counts.append(sum(len(d.scores) for d in dets))

    samples = time_callable(once, iterations, warmup, _sync_for(target.device), lambda: step(1))
    extra: Dict[str, Any] = {
        "stages_mean_ms": {k: round(sum(v[-iterations:]) / iterations, 4) for k, v in stages.items()},
        "detections_per_image": round(sum(counts[-iterations:]) / (iterations * batch), 2),
    }
    return samples, extra


def _time_streamed(
    target: _Target, paths: Sequence[Path], batch: int, iterations: int, warmup: int, step: Callable[[int], None]
) -> Tuple[List[float], Dict[str, Any]]:
    """The streaming runner over ``(warmup + iterations) * batch`` images (the folder cycled): decode, model and
    postprocessing (COCO results with RLE masks) overlap. A sample is the wall time per batch in steady state
    (successive batches' completions); ``images_per_s`` is the whole timed part's throughput and ``latency``
    each image's time from entering the pipeline to its result (queueing included)."""
    from ..runtime.coco import CocoEntries
    from ..runtime.sources import Item

    det = target.detector
    n_warm, n = warmup * batch, iterations * batch
    items = [Item(i, str(p), path=p) for i, p in enumerate(_cycle(paths, 0, n_warm + n))]
    entered: Dict[int, float] = {}

    def source() -> Any:
        for it in items:
            entered[it.index] = time.perf_counter()
            yield it

    done: List[float] = []
    latency: List[float] = []
    dets = 0
    for r in det.stream(source(), batch=batch, per_image=CocoEntries(det.spec)):
        t = time.perf_counter()
        if r.error is not None:
            raise RuntimeError(f"{r.name}: {r.error}")
        if (r.index + 1) % batch == 0:
            step(1)
        if r.index >= n_warm:
            done.append(t)
            latency.append((t - entered[r.index]) * 1000.0)
            dets += len(r.extra)
    start = entered.get(n_warm, done[0]) if done else 0.0
    ends = done[batch - 1 :: batch]
    samples = [(b - a) * 1000.0 for a, b in zip([start, *ends[:-1]], ends)]
    q = sorted(latency)
    extra: Dict[str, Any] = {
        "images_per_s": round(len(done) / (done[-1] - start), 2) if done and done[-1] > start else None,
        "latency_ms": {f"p{p}": round(q[min(len(q) - 1, int(len(q) * p / 100))], 3) for p in (50, 90, 99)} if q else {},
        "detections_per_image": round(dets / max(len(done), 1), 2),
    }
    return samples, extra


def _time_baseline(
    ref: Any, array: Any, device: str, iterations: int, warmup: int, step: Callable[[int], None]
) -> Tuple[List[float], str, Optional[str]]:
    import torch

    from ..runtime.timing import time_callable

    inputs = list(torch.from_numpy(array).to(device) / 255.0)

    def call() -> Any:
        with torch.no_grad():
            return ref(inputs)

    if device.startswith("cuda"):  # torchvision's eager model has data-dependent shapes: no CUDA graph
        return time_torch_cuda(call, iterations, warmup, False, lambda: step(1))
    return time_callable(call, iterations, warmup, None, lambda: step(1)), "host", None


# --------------------------------------------------------------------------------------------- reports


def machine_info(device: str, target_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Platform, CPU, library versions (of the libraries this process imported) and the GPU when used."""
    import numpy as np

    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "rcnn_deploy": _own_version(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
            info["cuda"] = torch.version.cuda
    tv = sys.modules.get("torchvision")
    if tv is not None:
        info["torchvision"] = tv.__version__
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    if target_info:
        for k in ("tensorrt", "gpu"):
            if target_info.get(k) and k not in info:
                info[k] = target_info[k]
    return info


def _cpu_name() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _own_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("rcnn-deploy")
    except Exception:  # not installed as a distribution
        return None


def speedups(rows: Sequence[BenchRow]) -> List[Dict[str, Any]]:
    """Per batch: baseline mean / model-only mean (and end-to-end when timed)."""
    out = []
    base = {r.batch: r for r in rows if r.mode == "baseline"}
    for r in rows:
        if r.mode != "model" or r.batch not in base:
            continue
        b = base[r.batch]
        d: Dict[str, Any] = {
            "batch": r.batch,
            "baseline_mean_ms": round(b.stats.mean_ms, 4),
            "model_mean_ms": round(r.stats.mean_ms, 4),
            "speedup_model": round(b.stats.mean_ms / r.stats.mean_ms, 3) if r.stats.mean_ms > 0 else None,
        }
        e2e = [e for e in rows if e.mode == "end-to-end" and e.batch == r.batch]
        if e2e and e2e[0].stats.mean_ms > 0:
            d["end_to_end_mean_ms"] = round(e2e[0].stats.mean_ms, 4)
            d["speedup_end_to_end"] = round(b.stats.mean_ms / e2e[0].stats.mean_ms, 3)
        out.append(d)
    return out


def render_markdown(doc: Dict[str, Any], rows: Sequence[BenchRow]) -> str:
    from ..runtime.timing import markdown_table

    m, s, mach = doc["model"], doc["settings"], doc["machine"]
    h, w = m["input_hw"]
    lines = [
        "# rcnn-deploy bench",
        "",
        f"- model: `{m['path']}` ({m['name']}, backend {m['backend']}, device {m['device']})",
        f"- input: {h}x{w}; batches {', '.join(str(b) for b in s['batches'])}; "
        f"{s['iterations']} timed iterations after {s['warmup']} warm-up",
        f"- machine: {mach.get('cpu') or mach['machine']} ({mach['cpu_count']} CPUs), {mach['platform']}"
        + (f"; GPU {mach['gpu']}" if mach.get("gpu") else ""),
        "- versions: "
        + ", ".join(f"{k} {mach[k]}" for k in ("torch", "torchvision", "onnxruntime", "tensorrt") if mach.get(k)),
    ]
    if s.get("images"):
        im = s["images"]
        lines.append(f"- end-to-end images: {im['source']} ({im['count']} files)")
    lines += ["", "## Latency", "", markdown_table([(r.label, r.stats) for r in rows])]
    lines += [
        "- model-only: the model call on a preprocessed batch (`Detector.run_padded`; on a GPU with cuda-events / "
        "cuda-graph timing the input is already on the device, like `trtexec --noDataTransfers`).",
        "- end-to-end: decode image files + letterbox + model + postprocess (box mapping, mask paste into the "
        "original image), host wall time.",
    ]
    if any(r.mode == "baseline" for r in rows):
        lines.append(
            "- baseline: torchvision's eager model with the same weights at the same input size, called as "
            "torchvision runs it (its transform, heads, postprocess and mask paste at input size)."
        )
    if doc.get("speedup"):
        lines += ["", "## Speed-up vs torchvision eager (mean latency)", ""]
        lines += ["| batch | torchvision ms | model-only ms | speed-up | end-to-end ms | speed-up |"]
        lines += ["| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for d in doc["speedup"]:
            e2e = d.get("end_to_end_mean_ms")
            lines.append(
                f"| {d['batch']} | {d['baseline_mean_ms']:.2f} | {d['model_mean_ms']:.2f} | "
                f"{_x(d['speedup_model'])} | {'' if e2e is None else f'{e2e:.2f}'} | "
                f"{_x(d.get('speedup_end_to_end'))} |"
            )
    e2e_rows = [r for r in rows if r.mode == "end-to-end" and "stages_mean_ms" in r.extra]
    if e2e_rows:
        lines += ["", "## End-to-end stages (mean ms per call)", ""]
        lines += ["| batch | decode + preprocess | model | postprocess | detections / image |"]
        lines += ["| ---: | ---: | ---: | ---: | ---: |"]
        for r in e2e_rows:
            st = r.extra["stages_mean_ms"]
            lines.append(
                f"| {r.batch} | {st['decode_preprocess_ms']:.2f} | {st['infer_ms']:.2f} | "
                f"{st['postprocess_ms']:.2f} | {r.extra['detections_per_image']} |"
            )
    if doc.get("warnings"):
        lines += ["", "## Notes", ""] + [f"- {w}" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.1f}" if v < 10000 else f"{v:.0f}"


def _x(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.2f}x"


def draw_histograms(rows: Sequence[BenchRow], path: Path) -> Path:
    """``latency_hist.png``: one latency histogram per row (median green, p99 red), drawn with Pillow."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from .._io import atomic_write

    pw, ph, cols = 460, 230, 2
    n_rows = max(1, math.ceil(len(rows) / cols))
    img = Image.new("RGB", (pw * min(cols, max(1, len(rows))), ph * n_rows), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, r in enumerate(rows):
        ox, oy = (i % cols) * pw, (i // cols) * ph
        left, right, top, bottom = ox + 50, ox + pw - 15, oy + 28, oy + ph - 32
        a = np.asarray(r.samples_ms, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        bins = int(min(40, max(5, a.size // 3)))
        counts, edges = np.histogram(a, bins=bins, range=(lo, hi))
        peak = max(1, int(counts.max()))
        draw.text((ox + 8, oy + 6), f"{r.label}, batch {r.batch} (n={a.size})", fill="black", font=font)
        draw.line([(left, bottom), (right, bottom)], fill="black")
        draw.line([(left, top), (left, bottom)], fill="black")
        bw = (right - left) / bins
        for k, c in enumerate(counts):
            if c:
                x0 = left + k * bw
                draw.rectangle([x0 + 1, bottom - (bottom - top) * c / peak, x0 + bw - 1, bottom], fill=(70, 110, 180))

        def xpos(v: float, left: float = left, right: float = right, lo: float = lo, hi: float = hi) -> float:
            return left + (right - left) * (v - lo) / (hi - lo)

        for v, colour in ((r.stats.median_ms, (0, 150, 0)), (r.stats.p99_ms, (200, 0, 0))):
            x = xpos(v)
            draw.line([(x, top), (x, bottom)], fill=colour, width=2)
        draw.text((left, bottom + 4), f"{lo:.2f}", fill="black", font=font)
        draw.text((right - 40, bottom + 4), f"{hi:.2f} ms", fill="black", font=font)
        draw.text(
            (left + 60, bottom + 16),
            f"median {r.stats.median_ms:.2f}  p99 {r.stats.p99_ms:.2f}  mean {r.stats.mean_ms:.2f} ms",
            fill="black",
            font=font,
        )
        draw.text((ox + 8, top), str(peak), fill="black", font=font)
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


# --------------------------------------------------------------------------------------------- command


def parse_batches(text: str) -> List[int]:
    """``"1,8,16"`` -> [1, 8, 16] (order kept, duplicates dropped)."""
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            b = int(part)
        except ValueError:
            b = 0
        if b < 1:
            raise BenchError(f"--batch {text!r}: expected comma-separated positive integers such as 1,8,16")
        if b not in out:
            out.append(b)
    if not out:
        raise BenchError(f"--batch {text!r}: expected comma-separated positive integers such as 1,8,16")
    return out


def bench_command(
    model_path: str = typer.Argument(
        ..., help="Export directory (contract.json), a TensorRT engine beside one, or a checkpoint with --model."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", callback=args.model_name, help="Model name when MODEL_PATH is a checkpoint."
    ),
    height: Optional[int] = typer.Option(
        None,
        callback=args.input_size,
        help="Input height for checkpoints, a multiple of 32 (default: the size an rcnn-deploy checkpoint records, "
        "else 800).",
    ),
    width: Optional[int] = typer.Option(
        None, callback=args.input_size, help="Input width for checkpoints, a multiple of 32 (default as --height)."
    ),
    batch: str = typer.Option(
        "1",
        "--batch",
        "-b",
        callback=args.positive_int_list,
        help="Batch sizes to time, comma-separated positive integers, e.g. 1,8,16.",
    ),
    iterations: int = typer.Option(50, callback=args.positive_int, help="Timed iterations per (mode, batch), >= 1."),
    warmup: int = typer.Option(
        10, callback=args.non_negative_int, help="Untimed warm-up iterations before each timing, >= 0."
    ),
    cuda_graph: bool = typer.Option(
        True,
        "--cuda-graph/--no-cuda-graph",
        help="GPU model-only timing: capture once and replay a CUDA graph (TensorRT, torch on cuda); "
        "falls back to eager launches, with a note, when the model cannot be captured.",
    ),
    device: str = typer.Option(
        "cpu", callback=args.device, help="cpu or cuda[:N] for PyTorch models (checkpoint and baseline)."
    ),
    images: Optional[str] = typer.Option(
        None,
        "--images",
        help=f"End-to-end images (file, folder or glob; first {MAX_REAL_IMAGES}); "
        f"default: synthetic {SYNTH_HW[1]}x{SYNTH_HW[0]} JPEGs.",
    ),
    end_to_end: bool = typer.Option(
        True, "--end-to-end/--no-end-to-end", help="Also time decode + preprocess + model + postprocess."
    ),
    baseline: Optional[str] = typer.Option(
        None,
        "--baseline",
        callback=args.choice(BASELINES, "baseline"),
        help="'torchvision': also time torchvision's own eager model with the same weights (model-only).",
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Checkpoint for --baseline when MODEL_PATH is an export directory or engine."
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        callback=args.output_dir,
        help="Directory for bench.json and bench.md (and latency_hist.png); created if missing, checked before "
        "any timing.",
    ),
    histogram: bool = typer.Option(False, "--histogram", help="Also write latency_hist.png to --output."),
    backend: Optional[str] = typer.Option(
        None,
        callback=args.choice(
            BENCH_BACKENDS, "backend", "use onnxruntime or tensorrt (an export), torch (a checkpoint)"
        ),
        help="'tensorrt' on a split export: time its three engines (each graph's ONNX file name with .engine) with"
        " the glue on the GPU (default: ONNX Runtime for an export, TensorRT for an engine file).",
    ),
) -> None:
    """Latency and throughput (min/mean/median/p90/p95/p99/max, img/s), model-only and end to end.

    Model-only times the model call on a preprocessed batch; end-to-end times decoding image files,
    letterboxing, the model and postprocessing (box mapping and mask paste). --baseline torchvision times
    torchvision's own eager model with the same weights so you see the gain. Writes bench.json (stats, raw
    samples, machine info) and bench.md with --output.

    Examples:

      rcnn-deploy bench out/ --batch 1,8 -o runs/bench

      rcnn-deploy bench out/ --batch 1,8 --baseline torchvision --weights model.pth -o runs/bench --histogram

      rcnn-deploy bench model.pth -m torchvision-maskrcnn --height 800 --width 800 --device cuda --batch 1,4

      rcnn-deploy bench out/model.engine --batch 1,8,16 --iterations 200 --no-end-to-end -o runs/trt

      rcnn-deploy bench runs/split/ --backend tensorrt --batch 1,8 -o runs/split-trt
    """
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)

    def fail(msg: str, code: int = 2) -> NoReturn:
        console.print(f"[red]error:[/red] {escape(msg)}")
        raise typer.Exit(code)

    warnings: List[str] = []
    try:
        batches = parse_batches(batch)
        if histogram and output is None:
            raise BenchError("--histogram writes latency_hist.png into --output DIR: pass -o DIR as well")
        kind = _path_kind(model_path)
        if backend == "tensorrt" and kind == "checkpoint":
            raise BenchError(f"--backend tensorrt needs an export directory with built engines, not {model_path}")
        if kind != "checkpoint" and not Path(model_path).exists():
            raise BenchError(f"{model_path} not found: pass an export directory, an engine file or a checkpoint")
        if kind == "checkpoint" and model is None:
            raise BenchError(
                f"{model_path} is not an export directory (no contract.json) nor a TensorRT engine "
                f"({', '.join(ENGINE_SUFFIXES)}); for a checkpoint pass --model, e.g. --model torchvision-maskrcnn"
            )
        if baseline and kind != "checkpoint" and weights is None:
            raise BenchError(
                f"--baseline {baseline} needs the weights the {kind} was made from: pass --weights model.pth"
            )
        if device.startswith("cuda"):
            _check_cuda(device)
        if kind != "checkpoint" and device != "cpu":
            warnings.append(
                "--device applies to PyTorch models (checkpoints and the baseline); ONNX Runtime picks its CUDA "
                "provider by itself when onnxruntime-gpu is installed, TensorRT always runs on the GPU"
            )
        with console.status(f"loading {model_path}"):
            from .infer import input_hw

            target = _load_target(model_path, kind, model, input_hw(height, width), device, backend)
    except (BenchError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    except Exception as e:  # BackendUnavailable, TensorRT/ORT load errors: say what failed where
        fail(f"could not load {model_path}: {_first_line(e)}")

    det = target.detector
    if target.batch_range is not None:
        lo, hi = target.batch_range
        for b in batches:
            if target.kind == "engine" and not lo <= b <= hi:
                fail(
                    f"batch {b} is outside the engine's profile {lo}:{hi}; rebuild it with rcnn-deploy build "
                    f"--batch {min(lo, b)}:{max(hi, b)} or time batches within {lo}..{hi}"
                )
            if b > hi:
                warnings.append(
                    f"batch {b} exceeds the export's maximum batch {hi}: it runs as {math.ceil(b / hi)} calls"
                )
            elif b < lo:
                warnings.append(f"batch {b} is below the export's minimum batch {lo}: it is padded to {lo}")

    if output is not None:  # checked when the options were parsed; created now, before any timing
        try:
            args.ensure_output_dir(output)
        except UserError as e:
            fail(str(e))

    ref = None
    if baseline:
        try:
            with console.status("loading torchvision's eager model (baseline)"):
                ref = _baseline_model(target, weights, device)
        except (BenchError, ValueError, FileNotFoundError) as e:
            fail(str(e))

    rows: List[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="rcnn-bench-") as tmp:
        try:
            paths, image_info = _bench_images(images, max(batches), Path(tmp), console, warnings)
        except (BenchError, FileNotFoundError, ValueError) as e:
            fail(str(e))
        arrays = {b: det.preprocess(_cycle(paths, 0, b))[0] for b in batches}
        jobs: List[Tuple[str, int]] = [("model", b) for b in batches]
        if end_to_end:
            jobs += [("end-to-end", b) for b in batches]
            jobs += [("streamed", b) for b in batches]
        if ref is not None:
            jobs += [("baseline", b) for b in batches]
        rows = _run_jobs(jobs, target, ref, arrays, paths, iterations, warmup, cuda_graph, console, fail)

    for r in rows:
        if r.extra.get("note"):
            warnings.append(f"{r.label} batch {r.batch}: {r.extra['note']}")
    doc = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(device, target.info),
        "model": {
            "path": str(model_path),
            "kind": target.kind,
            "name": det.spec.name,
            "masks": det.spec.masks,
            "backend": det.backend,
            "device": target.info.get("runs_on", device),
            "input_hw": list(det.input_hw),
            "batch_range": list(target.batch_range) if target.batch_range else None,
            **{k: v for k, v in target.info.items() if k in ("graph", "nms", "precision")},
        },
        "settings": {
            "torch_device": device,
            "batches": batches,
            "iterations": iterations,
            "warmup": warmup,
            "cuda_graph": cuda_graph,
            "end_to_end": end_to_end,
            "baseline": baseline,
            "images": image_info,
        },
        "results": [r.to_dict() for r in rows],
        "speedup": speedups(rows),
        "warnings": warnings,
    }
    _print_table(console, rows, doc)
    for w in warnings:
        console.print(f"[yellow]note:[/yellow] {escape(w)}")
    if output is not None:
        from .._io import atomic_write_json, atomic_write_text

        written = [
            atomic_write_json(output / "bench.json", doc),
            atomic_write_text(output / "bench.md", render_markdown(doc, rows)),
        ]
        if histogram:
            written.append(draw_histograms(rows, output / "latency_hist.png"))
        console.print(f"wrote {', '.join(p.name for p in written)} to {escape(str(output))}")


def _check_cuda(device: str) -> None:
    try:
        import torch
    except ImportError:
        raise BenchError(f"--device {device} needs PyTorch: pip install 'rcnn-deploy[torch]'") from None
    if not torch.cuda.is_available():
        raise BenchError(
            f"--device {device}: torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False); "
            "use --device cpu, or run on a GPU machine with a CUDA build of torch"
        )


def _run_jobs(
    jobs: Sequence[Tuple[str, int]],
    target: _Target,
    ref: Any,
    arrays: Dict[int, Any],
    paths: Sequence[Path],
    iterations: int,
    warmup: int,
    cuda_graph: bool,
    console: Any,
    fail: Callable[..., NoReturn],
) -> List[BenchRow]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runtime.timing import LatencyStats

    det = target.detector
    rows: List[BenchRow] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for mode, b in jobs:
            engine = "torchvision-eager" if mode == "baseline" else det.backend
            task = progress.add_task(f"{MODE_TITLES[mode]} {engine} b={b}", total=warmup + iterations)

            def step(n: int, task: Any = task) -> None:
                progress.advance(task, n)

            extra: Dict[str, Any] = {}
            note = None
            try:
                if mode == "model":
                    samples, timing, note = _time_model_only(target, arrays[b], iterations, warmup, cuda_graph, step)
                elif mode == "end-to-end":
                    samples, extra = _time_end_to_end(target, paths, b, iterations, warmup, step)
                    timing = "host"
                elif mode == "streamed":
                    samples, extra = _time_streamed(target, paths, b, iterations, warmup, step)
                    timing = "host"
                else:
                    samples, timing, note = _time_baseline(ref, arrays[b], target.device, iterations, warmup, step)
            except Exception as e:  # report which run failed and how to get past it
                progress.stop()
                fail(
                    f"{MODE_TITLES[mode]} timing of {engine} at batch {b} failed: {_first_line(e)}; "
                    "try a smaller --batch, or check the model with 'rcnn-deploy infer'",
                    1,
                )
            if note:
                extra["note"] = note
            rows.append(BenchRow(mode, engine, b, timing, samples, LatencyStats.from_samples(samples, b), extra))
    return rows


def _print_table(console: Any, rows: Sequence[BenchRow], doc: Dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    m = doc["model"]
    h, w = m["input_hw"]
    show_timing = any(r.timing != "host" for r in rows)
    table = Table(title=f"{m['name']} · {m['backend']} · {h}x{w} · {m['device']} · latency in ms", box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    table.add_column("b", justify="right")
    if show_timing:
        table.add_column("timing")
    for col in ("mean", "p50", "p90", "p99", "max", "img/s"):
        table.add_column(col, justify="right")
    for r in rows:
        s = r.stats
        tp = "inf" if not math.isfinite(s.throughput) else f"{s.throughput:.1f}"
        run = MODE_TITLES[r.mode] if r.engine == m["backend"] else r.engine
        cells = [run, str(r.batch)] + ([r.timing.replace("cuda-", "")] if show_timing else [])
        cells += [_ms(v) for v in (s.mean_ms, s.median_ms, s.p90_ms, s.p99_ms, s.max_ms)] + [tp]
        table.add_row(*cells)
    console.print(table)
    for d in doc.get("speedup", []):
        e2e = f", end-to-end {_x(d['speedup_end_to_end'])}" if d.get("speedup_end_to_end") else ""
        console.print(f"batch {d['batch']}: {_x(d['speedup_model'])} faster than torchvision eager (model-only){e2e}")
