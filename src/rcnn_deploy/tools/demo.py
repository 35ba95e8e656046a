"""``rcnn-deploy demo``: the whole job on built-in synthetic data, no downloads.

Generates the synthetic validation split, exports the model, builds it for the best backend available
(TensorRT when it is installed, else ONNX Runtime on the CPU, else PyTorch), then runs infer + eval + bench and
prints one summary table (on stdout; progress goes to stderr, one line per step when it is not a terminal). By
default the model is the project's own checkpoint trained on the synthetic set, shipped inside the package
(``rcnn_deploy/checkpoints/shapes_maskrcnn_r50fpn.pt``, see recipes/train_shapes.sh), so the detections are real.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import typer

from . import args

CHECKPOINT_NAME = "shapes_maskrcnn_r50fpn.pt"
# package data (pyproject [tool.setuptools.package-data]): found the same way in a checkout, an editable or a
# regular install
DEFAULT_CHECKPOINT = Path(
    str(importlib.resources.files("rcnn_deploy").joinpath("checkpoints").joinpath(CHECKPOINT_NAME))
)
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
SHOW_SCORE = 0.5  # detections drawn in the PNGs and listed in the TSVs
SHOW_IMAGES = 3  # images that get a PNG + TSV
DEFAULT_ITERATIONS = 3


def pick_backend(requested: str) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested != "auto":
        return requested
    for name, module in (("tensorrt", "tensorrt"), ("onnxruntime", "onnxruntime")):
        if importlib.util.find_spec(module) is not None:
            return name
    return "torch"


def demo_command(
    output: Path = typer.Option(
        Path("runs/demo"),
        "--output",
        "-o",
        callback=args.output_dir,
        help="Everything the demo writes goes here (a directory, created if missing).",
    ),
    weights: Optional[str] = typer.Option(
        None, help="Checkpoint (torchvision .pth, Detectron2 .pkl, rcnn-deploy .pt); default: the project's own."
    ),
    model: str = typer.Option(
        "torchvision-maskrcnn", "--model", "-m", callback=args.model_name, help="Model name for --weights."
    ),
    num_images: int = typer.Option(
        8,
        "--images",
        "-n",
        callback=args.positive_int,
        help=f"Synthetic validation images to evaluate (>= 1); the first {SHOW_IMAGES} also get a PNG and a TSV.",
    ),
    size: Optional[int] = typer.Option(
        None,
        callback=args.input_size,
        help="Input size, a multiple of 32 (default: the checkpoint's training size, else 800).",
    ),
    backend: str = typer.Option(
        "auto",
        callback=args.choice(BACKENDS, "backend"),
        help="auto (TensorRT if installed, else ONNX Runtime), or force one: tensorrt, onnxruntime or torch.",
    ),
    iterations: int = typer.Option(
        DEFAULT_ITERATIONS, callback=args.positive_int, help="Timed model runs for the model-only latency (>= 1)."
    ),
) -> None:
    """Generate data, export, build, infer, evaluate and benchmark: one command, one summary table.

    The table goes to stdout; progress goes to stderr. Everything lands in -o: data/, export/, infer/ (a PNG
    and a TSV for the first 3 images), results.json (COCO results of every image) and summary.json.

    Examples:

      rcnn-deploy demo                       # the project's shapes checkpoint on 8 synthetic images

      rcnn-deploy demo --weights model_final.pkl -m detectron2-maskrcnn --size 800 -o runs/d2
    """
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    try:
        summary = run_demo(output, weights, model, num_images, size, backend, iterations, console)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    _print_summary(summary, Console())


class _Steps:
    """Numbered progress for the demo's steps on ``console``: a spinner on a terminal, else a line when a step
    starts; on both a line with its duration when it ends. The durations go into the summary."""

    def __init__(self, console: Any, total: int) -> None:
        self.console, self.total, self.n = console, total, 0
        self.seconds: Dict[str, float] = {}
        # this process's CPU time: next to the wall time, it shows a busy machine
        self.cpu_seconds: Dict[str, float] = {}
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    @contextmanager
    def __call__(self, key: str, text: str) -> Iterator[None]:
        self.n += 1
        head = f"[{self.n}/{self.total}] {text}"
        t0, c0 = time.perf_counter(), time.process_time()
        if self.console.is_terminal:
            with self.console.status(head):
                yield
        else:
            self.console.print(f"{head} ...", highlight=False, markup=False, soft_wrap=True)
            yield
        self.seconds[key] = round(time.perf_counter() - t0, 2)
        self.cpu_seconds[key] = round(time.process_time() - c0, 2)
        done = f"{head}: {self.seconds[key]:.1f} s (CPU {self.cpu_seconds[key]:.1f} s)"
        self.console.print(done, highlight=False, markup=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A line under the current step (only when not on a terminal: there the spinner shows the step)."""
        if not self.console.is_terminal:
            self.console.print(f"      {text}", highlight=False, markup=False, soft_wrap=True)


def run_demo(
    output: Path,
    weights: Optional[str],
    model: str,
    num_images: int,
    size: Optional[int],
    backend: str,
    iterations: int,
    console: Any,
) -> Dict[str, Any]:
    from rich.markup import escape

    from .._io import atomic_write_json
    from ..api import Detector
    from ..data.synth import generate_synthetic_coco
    from ..evaluation.dataset import evaluate_detector
    from ..evaluation.ground_truth import validate_ground_truth
    from ..models.build import build_model
    from ..runtime.preprocess import load_rgb
    from ..runtime.timing import LatencyStats, time_callable
    from ..runtime.visualize import draw, write_tsv

    if weights is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"the project checkpoint {DEFAULT_CHECKPOINT} is missing from the installed package (reinstall "
                "rcnn-deploy, or pass --weights)"
            )
        weights, model = str(DEFAULT_CHECKPOINT), "torchvision-maskrcnn"
    chosen = pick_backend(backend)
    args.ensure_output_dir(output)
    steps = _Steps(console, total=5 + (chosen != "torch") + (chosen == "tensorrt"))
    with steps("load", "loading the model"):
        net = build_model(model, weights)
    hw = getattr(net, "checkpoint_input_hw", None) or (800, 800)
    if size is not None:
        hw = (size, size)
    what = f"model {model} from {weights}, input {hw[0]}x{hw[1]}, backend {chosen}"
    console.print(what, highlight=False, markup=False, soft_wrap=True)

    data = output / "data"
    with steps("data", f"generating {num_images} synthetic images ({hw[0]}x{hw[1]})"):
        ann = generate_synthetic_coco(data, num_images, hw[0], hw[1], seed=2)
    export_dir = output / "export"
    if chosen == "torch":
        det = Detector.from_module(net, hw)
    else:
        from ..export import export_onnx

        nms = "plugin" if chosen == "tensorrt" else "onnx"
        with steps("export", f"exporting the fused ONNX graph ({nms} NMS)"):
            contract = export_onnx(net, export_dir, height=hw[0], width=hw[1], batch=1, graph="fused", nms=nms)
        if chosen == "tensorrt":
            from ..backends.tensorrt.builder import BuildConfig, build_engine

            engine = export_dir / "model_fp16.engine"
            with steps("build", "building the TensorRT engine (fp16)"):
                build_engine(export_dir / contract.graph_for("fused").file, engine, BuildConfig(precision="fp16"))
            det = Detector.load(engine)
        else:
            det = Detector.load(export_dir)
    score_floor = float(det.spec.box_score_thresh)

    marks = {max(1, round(num_images * k / 4)) for k in (1, 2, 3)}

    def progress(done: int, total: int) -> None:
        if done in marks and done < total:
            steps.note(f"{done}/{total} images")

    with steps("eval", f"infer + COCO eval on {num_images} images"):
        t0 = time.perf_counter()
        try:
            validate_ground_truth(ann, det.spec, warn=lambda m: console.print(f"[yellow]warning:[/yellow] {escape(m)}"))
            res = evaluate_detector(det, ann, data / "images", progress=progress)
            metrics: Optional[Dict[str, Any]] = res["metrics"]
            results = res["results"]
        except ValueError as e:  # e.g. COCO weights: their classes are not the synthetic set's
            console.print(f"[yellow]no mAP:[/yellow] {escape(str(e))}")
            metrics, results = None, []
        eval_s = time.perf_counter() - t0
    atomic_write_json(output / "results.json", results)

    infer_dir = output / "infer"
    coco = json.loads(Path(ann).read_text())
    shown = [data / "images" / im["file_name"] for im in coco["images"][:SHOW_IMAGES]]
    e2e_ms: List[float] = []
    shown_counts: List[int] = []
    with steps("infer", f"PNG + TSV of {len(shown)} images (detections with score >= {SHOW_SCORE})"):
        for path in shown:
            t = time.perf_counter()
            d = det([str(path)])[0]  # end to end: decode, letterbox, model, boxes and masks back in the image
            e2e_ms.append((time.perf_counter() - t) * 1e3)
            d = d.above(SHOW_SCORE)  # mAP above uses every detection; pictures and TSVs show the confident ones
            shown_counts.append(len(d))
            write_tsv(infer_dir / f"{path.stem}.tsv", d, det.spec.class_names, det.spec.label_ids)
            draw(load_rgb(path), d, det.spec.class_names, det.spec.label_ids, infer_dir / f"{path.stem}.png")

    with steps("bench", f"model-only latency ({iterations} runs, batch 1)"):
        arr, _ = det.preprocess([str(shown[0])])
        model_ms = time_callable(lambda: det.run_padded(arr), iterations)  # warm: the model ran above
    bench = {
        "model_only": LatencyStats.from_samples(model_ms, 1).to_dict(),
        "end_to_end": LatencyStats.from_samples(e2e_ms, 1).to_dict(),
    }
    summary = {
        "model": model,
        "weights": str(weights),
        "backend": det.backend,
        "input_hw": list(hw),
        "images": num_images,
        "metrics": metrics,
        "bench": bench,
        "eval_images_per_s": num_images / eval_s if eval_s > 0 else None,
        "score_floor": score_floor,
        "detections_per_image": len(results) / max(len(coco["images"]), 1),
        "show_score": SHOW_SCORE,
        "shown_images": len(shown),
        "shown_per_image": sum(shown_counts) / max(len(shown_counts), 1),
        "seconds": {**steps.seconds, "total": round(time.perf_counter() - steps.started, 2)},
        "cpu_seconds": {**steps.cpu_seconds, "total": round(time.process_time() - steps.cpu_started, 2)},
        "outputs": {"infer": str(infer_dir), "results": str(output / "results.json"), "export": str(export_dir)},
    }
    atomic_write_json(output / "summary.json", summary)
    return summary


def _print_summary(s: Dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"rcnn-deploy demo: {s['model']} on {s['images']} synthetic images ({s['backend']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for iou in ("bbox", "segm"):
        m = (s.get("metrics") or {}).get(iou)
        if m:
            t.add_row(f"{iou} mAP / AP50 / AP75", f"{m['AP']:.3f} / {m['AP50']:.3f} / {m['AP75']:.3f}")
    t.add_row(f"detections/image, score >= {s['score_floor']:g} (mAP scores all)", f"{s['detections_per_image']:.1f}")
    t.add_row(
        f"detections/image, score >= {s['show_score']:g} (drawn, {s['shown_images']} images)",
        f"{s['shown_per_image']:.1f}",
    )
    model, e2e = s["bench"]["model_only"], s["bench"]["end_to_end"]
    t.add_row(f"model only, batch 1: median ms of {model['count']}", f"{model['median_ms']:.1f}")
    t.add_row(f"end to end (decode+model+masks): median ms of {e2e['count']}", f"{e2e['median_ms']:.1f}")
    if s.get("eval_images_per_s"):
        t.add_row("infer + eval: images/s", f"{s['eval_images_per_s']:.2f}")
    t.add_row("total time: s", f"{s['seconds']['total']:.1f}")
    t.add_row(f"PNG + TSV of {s['shown_images']} images", s["outputs"]["infer"])
    t.add_row(f"COCO results of all {s['images']} images", s["outputs"]["results"])
    console.print(t)
