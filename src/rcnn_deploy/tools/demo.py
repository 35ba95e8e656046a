"""``rcnn-deploy demo``: the whole job on built-in synthetic data, no downloads.

Generates the synthetic validation split, exports the model, builds it for the best backend available
(TensorRT when it is installed, else ONNX Runtime on the CPU, else PyTorch), then runs infer + eval + bench and
prints one summary table. By default the model is the project's own checkpoint trained on the synthetic set
(``checkpoints/shapes_maskrcnn_r50fpn.pt``, see recipes/train_shapes.sh), so the detections are real.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from . import args

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[3] / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
SHOW_SCORE = 0.5


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
        16, "--images", "-n", callback=args.positive_int, help="Synthetic validation images to run on (>= 1)."
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
    iterations: int = typer.Option(10, callback=args.positive_int, help="Timed runs for the latency numbers (>= 1)."),
) -> None:
    """Generate data, export, build, infer, evaluate and benchmark: one command, one summary table.

    Examples:

      rcnn-deploy demo                       # the project's shapes checkpoint on 16 synthetic images

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
    _print_summary(summary, console)


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
    from ..models.build import build_model
    from ..runtime.coco import evaluate_detector, validate_ground_truth
    from ..runtime.preprocess import load_rgb
    from ..runtime.timing import LatencyStats, time_callable
    from ..runtime.visualize import draw, write_tsv

    if weights is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"the project checkpoint {DEFAULT_CHECKPOINT} is missing (run from a git checkout of rcnn-deploy, "
                "or pass --weights)"
            )
        weights, model = str(DEFAULT_CHECKPOINT), "torchvision-maskrcnn"
    chosen = pick_backend(backend)
    args.ensure_output_dir(output)
    with console.status("loading the model"):
        net = build_model(model, weights)
    hw = getattr(net, "checkpoint_input_hw", None) or (800, 800)
    if size is not None:
        hw = (size, size)
    console.print(f"model {model} from {weights}, input {hw[0]}x{hw[1]}, backend {chosen}")

    data = output / "data"
    with console.status(f"generating {num_images} synthetic images"):
        ann = generate_synthetic_coco(data, num_images, hw[0], hw[1], seed=2)
    export_dir = output / "export"
    if chosen == "torch":
        det = Detector.from_module(net, hw)
    else:
        from ..export import export_onnx

        nms = "plugin" if chosen == "tensorrt" else "onnx"
        with console.status(f"exporting the fused graph ({nms} NMS)"):
            contract = export_onnx(net, export_dir, height=hw[0], width=hw[1], batch=1, graph="fused", nms=nms)
        if chosen == "tensorrt":
            from ..backends.tensorrt.builder import BuildConfig, build_engine

            engine = export_dir / "model_fp16.engine"
            with console.status("building the TensorRT engine (fp16)"):
                build_engine(export_dir / contract.graph_for("fused").file, engine, BuildConfig(precision="fp16"))
            det = Detector.load(engine)
        else:
            det = Detector.load(export_dir)

    with console.status("infer + eval"):
        try:
            validate_ground_truth(ann, det.spec, warn=lambda m: console.print(f"[yellow]warning:[/yellow] {escape(m)}"))
            res = evaluate_detector(det, ann, data / "images")
            metrics: Optional[Dict[str, Any]] = res["metrics"]
            results = res["results"]
        except ValueError as e:  # e.g. COCO weights: their classes are not the synthetic set's
            console.print(f"[yellow]no mAP:[/yellow] {e}")
            metrics, results = None, []
    atomic_write_json(output / "results.json", results)
    infer_dir = output / "infer"
    coco = json.loads(Path(ann).read_text())
    shown = [data / "images" / im["file_name"] for im in coco["images"][:4]]
    for path, d in zip(shown, det([str(p) for p in shown])):
        d = d.above(SHOW_SCORE)  # mAP above uses every detection; pictures and TSVs show the confident ones
        write_tsv(infer_dir / f"{path.stem}.tsv", d, det.spec.class_names, det.spec.label_ids)
        draw(load_rgb(path), d, det.spec.class_names, det.spec.label_ids, infer_dir / f"{path.stem}.png")

    with console.status("benchmark"):
        arr, _ = det.preprocess([str(shown[0])])
        model_ms = time_callable(lambda: det.run_padded(arr), iterations, warmup=2)
        e2e_ms = time_callable(lambda: det([str(shown[0])]), iterations, warmup=1)
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
        "detections_per_image": len(results) / max(len(coco["images"]), 1),
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
    t.add_row("detections per image", f"{s['detections_per_image']:.1f}")
    for k in ("model_only", "end_to_end"):
        t.add_row(f"{k.replace('_', '-')} latency, median (ms)", f"{s['bench'][k]['median_ms']:.1f}")
    t.add_row("outputs", s["outputs"]["infer"])
    console.print(t)
