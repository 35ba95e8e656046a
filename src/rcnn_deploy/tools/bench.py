"""``rcnn-deploy bench``: trtexec-style latency / throughput of a deployed model, model-only and end to end,
optionally against torchvision's own eager model with the same weights.

A thin command: the model comes from :meth:`rcnn_deploy.api.Detector.load` (which picks the backend), the
synthetic images from :mod:`rcnn_deploy.data.synth`, the timers from :mod:`rcnn_deploy.runtime.timing` and the
reports (bench.json's parts, bench.md, the console table, the histograms) from :mod:`rcnn_deploy.reports.bench`.
Speed goals live here (a benchmark writing JSON and markdown), never in timed unit tests.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import typer

from ..errors import UserError
from ..reports.bench import MODE_TITLES, BenchRow
from . import args

BASELINES = ("torchvision",)
BENCH_BACKENDS = ("onnxruntime", "tensorrt", "torch")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SCHEMA = "rcnn-deploy/bench/1"
SYNTH_HW = (480, 640)  # synthetic end-to-end images: COCO-like size, JPEG, so decode and resize are measured
MAX_SYNTH_IMAGES = 32
MAX_REAL_IMAGES = 256


# --------------------------------------------------------------------------------------------- targets


@dataclass
class _Target:
    """What is benchmarked: the Detector plus the handles the device timers need."""

    detector: Any  # rcnn_deploy.api.Detector
    kind: str  # "export" | "checkpoint" | "engine"
    device: str
    net: Any = None  # the torch deploy model (checkpoint kind)
    engine: Any = None  # TensorRTBackend (engine kind)
    batch_range: Optional[Tuple[int, int]] = None  # the graph's / engine's batch range
    info: Dict[str, Any] = field(default_factory=dict)


def _path_kind(model_path: str) -> str:
    """What MODEL_PATH looks like, for the checks and messages before loading (the API picks the backend)."""
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
    cuda_graph: bool = True,
    precision: str = "fp32",
    compile: Optional[str] = None,
) -> _Target:
    """``Detector.load`` with bench's options, described for the timers and the report."""
    from ..api import Detector

    path = Path(model_path)
    contract = None
    if kind == "export" or backend == "onnxruntime":  # contract.json: the message when missing, the graph's facts
        from ..contract import Contract

        contract = Contract.load(path if path.is_dir() else path.parent)
        if backend == "tensorrt" and contract.graph != "split":
            raise UserError(
                "a fused export runs as its engine file (bench FILE.engine)", where=f"--backend tensorrt on {path}"
            )
    det = Detector.load(
        model_path,
        model=model,
        input_hw=input_hw,
        backend=backend,
        device=device,
        cuda_graph=cuda_graph,
        precision=precision,
        compile=compile,
    )
    return _describe(det, device, contract)


def _describe(det: Any, device: str, contract: Any) -> _Target:
    """The timers' handles and the report's facts of a loaded Detector."""
    if det.cuda_model is not None:  # the PyTorch deploy model on a GPU: its CudaGraphModel (own CUDA graphs)
        info = {"model": det.spec.name, "precision": det.cuda_model.precision}
        return _Target(det, "checkpoint", device, net=det.cuda_model, info=info)
    if det.module is not None:  # the PyTorch deploy model on the CPU
        return _Target(det, "checkpoint", device, net=det.module, info={"model": det.spec.name})
    if det.backend == "onnxruntime":
        ort = sys.modules.get("onnxruntime")  # OnnxRuntimeBackend takes the CUDA provider whenever it is there
        on_gpu = ort is not None and "CUDAExecutionProvider" in ort.get_available_providers()
        info = {
            "graph": contract.graph,
            "nms": contract.nms,
            "model": contract.model,
            "runs_on": "cuda" if on_gpu else "cpu",
        }
        return _Target(det, "export", device, batch_range=tuple(contract.batch), info=info)
    split = hasattr(det.engine, "backbone")  # SplitPieces: three engines with the glue in torch on the GPU
    meta = det.engine.backbone.meta if split else det.engine.meta
    prof = meta.get("build_config", {}).get("batch") or (list(contract.batch) if split else [1, 1, 1])
    info = {
        "model": det.spec.name,
        "tensorrt": f"{meta.get('trt')} {meta.get('trt_version')}",
        "precision": meta.get("precision"),
        "gpu": meta.get("gpu"),
        "runs_on": "cuda",
    }
    if split:
        info["graph"] = "split"
    engine = None if split else det.engine  # a fused engine has its own CUDA-event / CUDA-graph timer
    batch_range = (int(prof[0]), int(prof[-1]))
    return _Target(det, "export" if split else "engine", "cuda", engine=engine, batch_range=batch_range, info=info)


def _baseline_model(target: _Target, weights: Optional[str], device: str) -> Any:
    """torchvision's own eager Mask/Faster R-CNN with the target's weights, sized to its input."""
    from ..models.reference import torchvision_reference

    spec = target.detector.spec
    if spec.flavour != "torchvision":
        raise UserError(
            f"--baseline torchvision needs a torchvision-* model, this one is {spec.name!r} (Detectron2 weights "
            "have no torchvision eager counterpart); drop --baseline"
        )
    if target.net is not None and weights is None:
        sd = target.detector.module.state_dict()
    else:
        if weights is None:
            raise UserError(
                f"--baseline torchvision with {target.kind} {target.info.get('model', '')} needs the checkpoint it "
                "was made from: pass --weights model.pth"
            )
        from ..models.build import build_model

        sd = build_model(spec.name, weights).state_dict()
    try:
        ref = torchvision_reference(spec, sd, target.detector.input_hw)
    except RuntimeError as e:  # load_state_dict: missing keys / shape mismatch
        raise UserError(
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
        from ..data.synth import write_synthetic_images

        n = max(1, min(count, MAX_SYNTH_IMAGES))
        with console.status(f"writing {n} synthetic {SYNTH_HW[1]}x{SYNTH_HW[0]} JPEG images"):
            paths = write_synthetic_images(tmp, n, *SYNTH_HW, image_format="jpg")
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
        raise UserError(f"none of the {len(found)} images in {images} can be decoded; pass a folder of jpg/png images")
    hs, ws = [s[0] for s in sizes], [s[1] for s in sizes]
    info = {
        "source": str(images),
        "count": len(paths),
        "size_hw_min": [min(hs), min(ws)],
        "size_hw_max": [max(hs), max(ws)],
    }
    return paths, info


# ---------------------------------------------------------------------------------------------- timing


def _time_model_only(
    target: _Target, array: Any, iterations: int, warmup: int, cuda_graph: bool, step: Callable[[int], None]
) -> Tuple[List[float], str, Optional[str]]:
    from ..runtime.timing import cuda_sync, first_line, time_callable, time_torch_cuda

    if target.engine is not None:  # TensorRT: its own CUDA-event / CUDA-graph timer, no host copies
        note = None
        try:
            samples = target.engine.time_gpu({"images": array}, iterations, warmup, cuda_graph)
        except RuntimeError as e:
            if not cuda_graph:
                raise
            note = f"CUDA graph capture failed ({first_line(e)}); timed eager launches"
            cuda_graph = False
            samples = target.engine.time_gpu({"images": array}, iterations, warmup, False)
        step(iterations + warmup)
        return samples, "cuda-graph" if cuda_graph else "cuda-events", note
    if target.net is not None and target.device.startswith("cuda"):  # a CudaGraphModel: it captures by itself
        import torch

        x = torch.from_numpy(array).to(target.device)
        samples, _, note = time_torch_cuda(lambda: target.net(x), iterations, warmup, False, lambda: step(1))
        return samples, "cuda-graph" if target.net.cuda_graph else "cuda-events", note
    det = target.detector
    samples = time_callable(
        lambda: det.run_padded(array), iterations, warmup, cuda_sync(target.device), lambda: step(1)
    )
    return samples, "host", None


def _time_baseline(
    ref: Any, array: Any, device: str, iterations: int, warmup: int, step: Callable[[int], None]
) -> Tuple[List[float], str, Optional[str]]:
    import torch

    from ..runtime.timing import time_callable, time_torch_cuda

    inputs = list(torch.from_numpy(array).to(device) / 255.0)

    def call() -> Any:
        with torch.no_grad():
            return ref(inputs)

    if device.startswith("cuda"):  # torchvision's eager model has data-dependent shapes: no CUDA graph
        return time_torch_cuda(call, iterations, warmup, False, lambda: step(1))
    return time_callable(call, iterations, warmup, None, lambda: step(1)), "host", None


def _time_job(
    mode: str,
    b: int,
    target: _Target,
    ref: Any,
    arrays: Dict[int, Any],
    paths: Sequence[Path],
    iterations: int,
    warmup: int,
    cuda_graph: bool,
    step: Callable[[int], None],
) -> Tuple[List[float], str, Dict[str, Any]]:
    """One (mode, batch) timing: samples, the timing kind and the row's extra fields."""
    from ..runtime.timing import cuda_sync, time_end_to_end, time_streamed

    note = None
    extra: Dict[str, Any] = {}
    if mode == "model":
        samples, timing, note = _time_model_only(target, arrays[b], iterations, warmup, cuda_graph, step)
    elif mode == "end-to-end":
        sync = cuda_sync(target.device)
        samples, extra = time_end_to_end(target.detector, paths, b, iterations, warmup, sync, lambda: step(1))
        timing = "host"
    elif mode == "streamed":
        samples, extra = time_streamed(target.detector, paths, b, iterations, warmup, lambda: step(1))
        timing = "host"
    else:
        samples, timing, note = _time_baseline(ref, arrays[b], target.device, iterations, warmup, step)
    if note:
        extra["note"] = note
    return samples, timing, extra


# --------------------------------------------------------------------------------------------- command


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
    precision: str = typer.Option("fp32", callback=args.choice(args.PRECISIONS, "precision"), help=args.PRECISION_HELP),
    compile: Optional[str] = typer.Option(None, "--compile", callback=args.compile_mode, help=args.COMPILE_HELP),
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
        batches = args.parse_int_list(batch, "--batch")
        kind = _check_options(model_path, histogram, output, backend, baseline, weights, device, warnings)
        with console.status(f"loading {model_path}"):
            from .infer import input_hw

            args.torch_gpu(device, precision, cuda_graph, False, compile=compile)
            hw = input_hw(height, width)
            target = _load_target(model_path, kind, model, hw, device, backend, cuda_graph, precision, compile)
    except (ValueError, FileNotFoundError) as e:  # UserError is a ValueError
        fail(str(e))
    except Exception as e:  # BackendUnavailable, TensorRT/ORT load errors: say what failed where
        from ..runtime.timing import first_line

        fail(f"could not load {model_path}: {first_line(e)}")

    try:
        warnings += _batch_warnings(target, batches)
        if output is not None:  # checked when the options were parsed; created now, before any timing
            args.ensure_output_dir(output)
        ref = None
        if baseline:
            with console.status("loading torchvision's eager model (baseline)"):
                ref = _baseline_model(target, weights, device)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))

    from ..runtime.timing import cycle

    with tempfile.TemporaryDirectory(prefix="rcnn-bench-") as tmp:
        try:
            paths, image_info = _bench_images(images, max(batches), Path(tmp), console, warnings)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        arrays = {b: target.detector.preprocess(cycle(paths, 0, b))[0] for b in batches}
        jobs: List[Tuple[str, int]] = [("model", b) for b in batches]
        if end_to_end:
            jobs += [("end-to-end", b) for b in batches] + [("streamed", b) for b in batches]
        if ref is not None:
            jobs += [("baseline", b) for b in batches]
        rows = _run_jobs(jobs, target, ref, arrays, paths, iterations, warmup, cuda_graph, console, fail)

    for r in rows:
        if r.extra.get("note"):
            warnings.append(f"{r.label} batch {r.batch}: {r.extra['note']}")
    settings = {
        "torch_device": device,
        "batches": batches,
        "iterations": iterations,
        "warmup": warmup,
        "cuda_graph": cuda_graph,
        "precision": precision,
        "compile": compile,
        "end_to_end": end_to_end,
        "baseline": baseline,
        "images": image_info,
    }
    doc = _document(model_path, target, device, settings, rows, warnings)
    _report(console, doc, rows, output, histogram)


def _check_options(
    model_path: str,
    histogram: bool,
    output: Optional[Path],
    backend: Optional[str],
    baseline: Optional[str],
    weights: Optional[str],
    device: str,
    warnings: List[str],
) -> str:
    """The checks that need no model (combinations of options, the path's kind, CUDA); returns the kind."""
    if histogram and output is None:
        raise UserError("--histogram writes latency_hist.png into --output DIR: pass -o DIR as well")
    kind = _path_kind(model_path)
    if backend == "torch" and kind != "checkpoint":
        raise UserError(
            f"--backend torch runs a checkpoint (with --model), not the {kind} {model_path}; an export runs with "
            "onnxruntime (the default) or tensorrt"
        )
    if backend == "tensorrt" and kind == "checkpoint":
        raise UserError(f"--backend tensorrt needs an export directory with built engines, not {model_path}")
    if kind != "checkpoint" and not Path(model_path).exists():
        raise UserError(f"{model_path} not found: pass an export directory, an engine file or a checkpoint")
    if baseline and kind != "checkpoint" and weights is None:
        raise UserError(f"--baseline {baseline} needs the weights the {kind} was made from: pass --weights model.pth")
    if device.startswith("cuda"):
        _check_cuda(device)
    if kind != "checkpoint" and device != "cpu":
        warnings.append(
            "--device applies to PyTorch models (checkpoints and the baseline); ONNX Runtime picks its CUDA "
            "provider by itself when onnxruntime-gpu is installed, TensorRT always runs on the GPU"
        )
    return kind


def _batch_warnings(target: _Target, batches: Sequence[int]) -> List[str]:
    """Batches outside the model's range: an engine's profile refuses them, an export pads or splits them."""
    if target.batch_range is None:
        return []
    lo, hi = target.batch_range
    out = []
    for b in batches:
        if target.kind == "engine" and not lo <= b <= hi:
            raise UserError(
                f"batch {b} is outside the engine's profile {lo}:{hi}; rebuild it with rcnn-deploy build "
                f"--batch {min(lo, b)}:{max(hi, b)} or time batches within {lo}..{hi}"
            )
        if b > hi:
            out.append(f"batch {b} exceeds the export's maximum batch {hi}: it runs as {math.ceil(b / hi)} calls")
        elif b < lo:
            out.append(f"batch {b} is below the export's minimum batch {lo}: it is padded to {lo}")
    return out


def _document(
    model_path: str,
    target: _Target,
    device: str,
    settings: Dict[str, Any],
    rows: Sequence[BenchRow],
    warnings: List[str],
) -> Dict[str, Any]:
    """bench.json."""
    from ..reports.bench import machine_info, speedups

    det = target.detector
    return {
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
        "settings": settings,
        "results": [r.to_dict() for r in rows],
        "speedup": speedups(rows),
        "warnings": warnings,
    }


def _report(
    console: Any, doc: Dict[str, Any], rows: Sequence[BenchRow], output: Optional[Path], histogram: bool
) -> None:
    """The console table and notes; bench.json, bench.md (and latency_hist.png) into ``output``."""
    from rich.markup import escape

    from ..reports.bench import draw_histograms, print_table, render_markdown

    print_table(console, rows, doc)
    for w in doc["warnings"]:
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
        raise UserError(f"--device {device} needs PyTorch: pip install 'rcnn-deploy[torch]'") from None
    if not torch.cuda.is_available():
        raise UserError(
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

    from ..runtime.timing import LatencyStats, first_line

    det = target.detector
    rows: List[BenchRow] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for mode, b in jobs:
            engine = "torchvision-eager" if mode == "baseline" else det.backend
            task = progress.add_task(f"{MODE_TITLES[mode]} {engine} b={b}", total=warmup + iterations)

            def step(n: int, task: Any = task) -> None:
                progress.advance(task, n)

            try:
                samples, timing, extra = _time_job(
                    mode, b, target, ref, arrays, paths, iterations, warmup, cuda_graph, step
                )
            except Exception as e:  # report which run failed and how to get past it
                progress.stop()
                fail(
                    f"{MODE_TITLES[mode]} timing of {engine} at batch {b} failed: {first_line(e)}; "
                    "try a smaller --batch, or check the model with 'rcnn-deploy infer'",
                    1,
                )
            rows.append(BenchRow(mode, engine, b, timing, samples, LatencyStats.from_samples(samples, b), extra))
    return rows
