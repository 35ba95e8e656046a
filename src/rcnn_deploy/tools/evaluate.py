"""``rcnn-deploy eval``: COCO bbox / segm mAP of a model on a COCO-format dataset (no Detectron2 needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import typer

from . import args

if TYPE_CHECKING:
    from rich.table import Table

#: Columns of the printed table (all 12 numbers go to the JSON file).
TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_MAX_SKIP_LINES = 10


def eval_command(
    model_path: str = typer.Argument(..., help="Export directory (contract.json), or a checkpoint with --model."),
    annotations: Path = typer.Option(
        ...,
        "--annotations",
        "-a",
        callback=args.json_file,
        help="COCO instances JSON (the ground truth); checked, and its categories against the model's, before the "
        "model runs.",
    ),
    images: Optional[Path] = typer.Option(
        None,
        "--images",
        help="Folder the annotations' file_name entries are relative to "
        "(default: the 'images' folder beside the annotations file).",
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
    batch: int = typer.Option(1, callback=args.positive_int, help="Images per model call (>= 1)."),
    backend: Optional[str] = typer.Option(
        None,
        callback=args.backend,
        help="torch, onnxruntime or tensorrt (default: from MODEL_PATH; an engine file runs tensorrt; tensorrt on"
        " a split export runs its three engines: each graph's ONNX file name with .engine).",
    ),
    device: str = typer.Option("cpu", callback=args.device, help=args.DEVICE_HELP),
    precision: str = typer.Option("fp32", callback=args.choice(args.PRECISIONS, "precision"), help=args.PRECISION_HELP),
    cuda_graph: bool = typer.Option(True, help=args.CUDA_GRAPH_HELP),
    gpu_decode: bool = typer.Option(False, help=args.GPU_DECODE_HELP),
    gpu_post: bool = typer.Option(False, help=args.GPU_POST_HELP),
    compile: Optional[str] = typer.Option(None, "--compile", callback=args.compile_mode, help=args.COMPILE_HELP),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", callback=args.output_file, help="Write the metrics as JSON to this file."
    ),
    max_images: Optional[int] = typer.Option(
        None, "--max-images", callback=args.positive_int, help="Evaluate only the first N images of the annotations."
    ),
    library: str = typer.Option("auto", help="COCO evaluation library: auto, faster-coco-eval or pycocotools."),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run the images on Ray Data (a local instance, or --ray-address) and score the merged results; the"
        " shards are kept in OUTPUT.shards/ beside -o. Needs pip install 'rcnn-deploy[ray]'.",
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="With --ray: the Ray cluster to connect to (auto: the cluster of this node; default: RAY_ADDRESS, else a"
        " local instance).",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="With --ray: model actors (default: one per GPU of the cluster; CPU-only: 1)."
    ),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", help="With --ray: GPUs per actor (default 1 where the cluster has GPUs, else 0)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="With --ray and -o: keep the finished shards of the same job and run the rest."
    ),
) -> None:
    """COCO mAP (bbox, and segm for Mask R-CNN): AP, AP50, AP75, APs, APm, APl; all 12 numbers with -o.

    Images that are missing or unreadable are reported and skipped; the metrics cover the images that ran.
    A -1 means "undefined" (e.g. APs when the dataset has no small object).

    Examples:

      rcnn-deploy eval out/ --annotations data/annotations.json

      rcnn-deploy eval out/ -a coco/annotations/instances_val2017.json --images coco/val2017 -o map.json

      rcnn-deploy eval model.pth -m torchvision-maskrcnn --height 800 --width 800 -a data/annotations.json

      rcnn-deploy eval out/ -a data/annotations.json -o map.json --ray --workers 2 --resume
    """
    if ray or resume or ray_address or workers is not None or gpus_per_worker is not None:
        from ..scale.commands import run_ray_eval

        return run_ray_eval(
            ray=ray,
            model_path=model_path,
            annotations=annotations,
            images=images,
            model=model,
            height=height,
            width=width,
            batch=batch,
            backend=backend,
            output=output,
            max_images=max_images,
            library=library,
            ray_address=ray_address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            resume=resume,
        )
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .._io import atomic_write_json
    from ..evaluation.coco import pick_library
    from ..evaluation.dataset import evaluate_detector
    from ..evaluation.ground_truth import load_ground_truth
    from .detector import load_detector

    console = Console(stderr=True)
    try:
        gpu = args.torch_gpu(device, precision, cuda_graph, gpu_decode, gpu_post, compile)  # first: no file read
        lib = pick_library(library)
        gt = load_ground_truth(annotations)
        images_dir = images if images is not None else _default_images_dir(annotations, gt)
        if not images_dir.is_dir():
            how = "" if images is not None else " (the default: the images folder beside the annotations file)"
            raise FileNotFoundError(
                f"images folder {images_dir}{how} not found; pass --images DIR, the folder the annotations' "
                "file_name entries are relative to"
            )
        det = load_detector(model_path, model, height, width, batch, backend, gpu)
        args.validate_ground_truth(gt, det.spec, annotations)
    except (ValueError, FileNotFoundError, ImportError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None

    skips: List[str] = []
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("eval", total=min(len(gt["images"]), max_images or len(gt["images"])))

        def on_skip(path: str, reason: str) -> None:
            skips.append(path)
            if len(skips) <= _MAX_SKIP_LINES:
                progress.console.print(f"[yellow]skipped[/yellow] {escape(reason)}")

        try:
            out = evaluate_detector(
                det,
                gt,
                images_dir,
                library=lib,
                max_images=max_images,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
                on_skip=on_skip,
            )
        except (ValueError, FileNotFoundError) as e:
            progress.stop()
            console.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(1) from None
    if len(skips) > _MAX_SKIP_LINES:
        console.print(f"[yellow]... and {len(skips) - _MAX_SKIP_LINES} more skipped images[/yellow]")

    Console().print(metrics_table(out["metrics"], f"COCO mAP of {model_path} ({det.backend}), {out['images']} images"))
    summary: Dict[str, Any] = {
        "model": model_path,
        "backend": det.backend,
        "annotations": str(annotations),
        "images_dir": str(images_dir),
        "library": out["library"],
        "images": out["images"],
        "detections": out["detections"],
        "skipped": out["skipped"],
        "metrics": out["metrics"],
    }
    if output is not None:
        atomic_write_json(output, summary)
        console.print(f"metrics -> {escape(str(output))}")
    if out["skipped"]:
        where = f"listed in {escape(str(output))}" if output is not None else "-o FILE lists them"
        console.print(
            f"[yellow]{len(out['skipped'])} of {len(out['skipped']) + out['images']} images skipped[/yellow] "
            f"({where}); the metrics cover the rest"
        )


def metrics_table(metrics: Dict[str, Dict[str, float]], title: str) -> Table:
    """A rich table: one row per IoU type, columns AP .. APl (``n/a`` for COCO's -1, "undefined")."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for name in TABLE_METRICS:
        table.add_column(name, justify="right")
    for iou_type, values in metrics.items():
        table.add_row(iou_type, *(_fmt(values.get(k, -1.0)) for k in TABLE_METRICS))
    return table


def _fmt(v: float) -> str:
    return "n/a" if v < 0 else f"{v:.4f}"


def _default_images_dir(annotations: Path, gt: Dict[str, Any]) -> Path:
    """``images`` beside the annotations file (or the folder its ``info.image_dir`` names, as synthetic sets do)."""
    info = gt.get("info")
    name = info.get("image_dir") if isinstance(info, dict) else None
    return annotations.parent / (name if isinstance(name, str) and name else "images")
