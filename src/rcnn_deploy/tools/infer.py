"""``rcnn-deploy infer`` and ``rcnn-deploy compare``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import typer

from ..errors import UserError
from ..runtime.visualize import DRAW_THRESHOLD, VIS_FORMATS
from . import args, detector
from .detector import input_hw  # noqa: F401  (rcnn_deploy.tools.infer.input_hw: bench and serve import it)

if TYPE_CHECKING:
    from rich.console import Console

    from ..runtime.detections import Detections
    from ..runtime.stream import Progress


def infer_command(
    model_path: str = typer.Argument(..., help="Export directory (contract.json), or a checkpoint with --model."),
    source: str = typer.Argument(..., help="An image, a directory of jpg/png/bmp/webp, or a glob."),
    output: Path = typer.Option(
        ..., "--output", "-o", callback=args.output_dir, help="Output directory (created if missing)."
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
    replicas: int = typer.Option(
        1,
        callback=args.positive_int,
        help="ONNX Runtime on a fused export: this many sessions share the CPU cores and run images side by side"
        " (throughput; see docs/cpu.md).",
    ),
    nms_threshold: Optional[float] = typer.Option(
        None,
        callback=args.probability,
        help="Keep detections with score >= this, in [0, 1] (raises the exported second-NMS score threshold).",
    ),
    mask_threshold: Optional[float] = typer.Option(
        None, callback=args.probability, help="Mask probability threshold in [0, 1] (default 0.5)."
    ),
    visualize: bool = typer.Option(True, help="Write a picture of the detections per image (see --vis-format)."),
    vis_format: str = typer.Option(
        "auto",
        "--vis-format",
        callback=args.choice(VIS_FORMATS, "picture format"),
        help="The pictures' format: auto (JPEG, quality 95, for JPEG images and video frames; PNG for the rest:"
        " PNG took 20x as long to write a 1920x1080 picture), png or jpg.",
    ),
    draw_threshold: float = typer.Option(
        DRAW_THRESHOLD,
        callback=args.probability,
        help="The pictures (and --save-video frames) draw detections with score >= this, in [0, 1]; the TSV and COCO"
        " results keep every detection.",
    ),
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
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="Decode / postprocess threads (default: one per CPU core, at most 16)."
    ),
    max_pixels: Optional[int] = typer.Option(
        None, min=1, help="Refuse images with more pixels than this (decompression-bomb guard; default 100000000)."
    ),
    stride: int = typer.Option(1, min=1, help="Video input: every Nth frame."),
    save_video: Optional[Path] = typer.Option(
        None, "--save-video", help="Video input: write the annotated frames as this mp4 (not a picture per frame)."
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run on Ray Data (a local instance, or --ray-address): decoding in CPU tasks, the model in an actor"
        " pool, results sharded under OUTPUT/shards and merged into the same files. INPUT may also be a list file"
        " (.txt, one image or video path per line); a video is split into frame ranges (--stride applies)."
        " Needs pip install 'rcnn-deploy[ray]'.",
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
        False, "--resume", help="With --ray: keep the finished shards of the same job in OUTPUT and run the rest."
    ),
) -> None:
    """Detect objects in images or video: per image a visualisation and a TSV, plus one COCO results JSON.

    Decoding, the model and postprocessing overlap (worker threads, batches of --batch); outputs keep the
    input order. results.jsonl grows one line per image as the run goes; results.json and summary.json are
    written at the end, also when the run is interrupted (summary.json then says how far it got). An image
    that cannot be read or processed is reported and skipped.

    Examples:

      rcnn-deploy infer out/ data/images -o runs/infer

      rcnn-deploy infer model.pth "photos/*.jpg" -m torchvision-maskrcnn --height 800 --width 800 -o runs/infer

      rcnn-deploy infer out/ clip.mp4 --stride 5 --save-video runs/clip.mp4 -o runs/clip
      rcnn-deploy infer out/ data/images -o runs/infer --ray --workers 2 --batch 4 --resume
    """
    if ray or resume or ray_address or workers is not None or gpus_per_worker is not None:
        from ..scale.commands import run_ray_infer

        if save_video is not None:
            raise UserError(
                "--save-video writes one video from frames in order; a --ray run's frames finish out of order on "
                "several workers",
                where="--save-video",
                fix="drop --save-video (the per-frame TSVs and results.json are written), or run without --ray",
            )
        return run_ray_infer(
            ray=ray,
            model_path=model_path,
            source=source,
            output=output,
            model=model,
            height=height,
            width=width,
            batch=batch,
            nms_threshold=nms_threshold,
            mask_threshold=mask_threshold,
            visualize=visualize,
            vis_format=vis_format,
            draw_threshold=draw_threshold,
            backend=backend,
            ray_address=ray_address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            resume=resume,
            stride=stride,
        )
    import contextlib

    from rich.console import Console
    from rich.markup import escape

    from ..runtime.sources import count, is_video, open_source
    from ..runtime.stream import Progress, StreamStats
    from ..runtime.writers import InferWriter

    console = Console(stderr=True)
    try:
        gpu = args.torch_gpu(device, precision, cuda_graph, gpu_decode, gpu_post, compile)
        det = detector.load_detector(model_path, model, height, width, batch, backend, gpu, replicas)
        total = count(source)
        items = open_source(source, stride=stride)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    if mask_threshold is not None:
        det.set_mask_threshold(mask_threshold)
    det.max_pixels = max_pixels
    video = save_video is not None and is_video(source)
    writer = InferWriter(
        output,
        det.spec,
        backend=det.backend,
        visualize=visualize,
        score_threshold=nms_threshold,
        draw_threshold=draw_threshold,
        render_frames=video,
        total=total,
        max_pixels=max_pixels,
        vis_format=vis_format,
    )
    stats = StreamStats()
    progress = Progress("infer", total, stream=console.file)
    video_out = None
    if video and save_video is not None:
        from ..runtime.sources import VideoWriter, video_fps

        video_out = VideoWriter(save_video, video_fps(Path(source)) / stride)
    stopped: Optional[str] = None
    try:
        # the pixels are not kept through the model: the writer draws on the item's array (video frames) or on
        # the file decoded again (one decoded photo less per image in flight: 72 MB for 6000x4000). With
        # --gpu-decode they are kept as before, which keeps that run decoding on the host when it draws pictures.
        keep = bool(visualize and det.gpu_decode)
        # the writer makes each image's RLE in the workers; only boxes, scores and classes need to come back
        results = det.stream(
            items,
            batch=batch,
            workers=threads,
            keep_images=keep,
            per_image=writer.per_image,
            stats=stats,
            return_masks=False,
        )
        # closing(): on Ctrl-C or an error the runner's threads stop here, before the final files are written
        with contextlib.closing(results):
            for r in results:
                if not r.ok:
                    progress_print(progress, console, f"[yellow]skipped[/yellow] {escape(str(r.error))}")
                elif video_out is not None and r.extra and r.extra.get("frame") is not None:
                    video_out.write(r.extra["frame"])
                writer.add(r)
                progress.update(r.ok)
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C)"
        raise
    except BaseException as e:
        stopped = f"stopped by an error: {type(e).__name__}: {e}"
        raise
    finally:
        progress.close()
        summary = writer.close(stats, stopped)
        if video_out is not None:
            video_out.close()
    failures = summary["failures"]
    print(
        f"{summary['written']}/{summary['images']} images, {summary['detections']} detections, "
        f"{summary.get('images_per_s', 0):.1f} img/s -> {output}" + (f" ({len(failures)} skipped)" if failures else "")
    )
    if failures and summary["written"] == 0:
        raise typer.Exit(1)


def progress_print(progress: Progress, console: Console, text: str) -> None:
    """A message that does not break the progress bar."""
    bar = getattr(progress, "_bar", None)
    (bar.console if bar is not None else console).print(text)


def compare_command(
    candidate: str = typer.Argument(..., help="Export directory (or checkpoint with --model) to check."),
    images: str = typer.Option(..., "--images", help="Images: a file, a directory or a glob."),
    reference: Optional[str] = typer.Option(
        None, help="Reference: export directory or checkpoint (default: the PyTorch deploy model of --weights)."
    ),
    weights: Optional[str] = typer.Option(None, help="Checkpoint for the default PyTorch reference."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", callback=args.model_name, help="Model name for checkpoints."
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
    min_recall: float = typer.Option(
        0.99, callback=args.probability, help="Fail below this fraction of reference detections matched (0-1)."
    ),
    min_box_iou: float = typer.Option(
        0.9, callback=args.probability, help="Fail when a matched pair's box IoU is below this (0-1)."
    ),
    max_score_diff: float = typer.Option(
        0.02, callback=args.probability, help="Fail when a matched pair's scores differ by more (0-1)."
    ),
    min_mask_iou: float = typer.Option(
        0.9, callback=args.probability, help="Fail when a matched pair's pasted masks overlap less (0-1)."
    ),
    min_map: float = typer.Option(
        0.95,
        "--min-map",
        callback=args.probability,
        help="Fail when the candidate's bbox mAP (COCO AP@[.5:.95]), scored with the reference's detections as "
        "the ground truth, is below this.",
    ),
    report: Optional[Path] = typer.Option(
        None, "--report", callback=args.output_file, help="Write the parity report as JSON to this file."
    ),
    backend: Optional[str] = typer.Option(
        None,
        callback=args.backend,
        help="The candidate's backend: torch, onnxruntime or tensorrt (default: from CANDIDATE; tensorrt on a split"
        " export runs its three engines).",
    ),
    device: str = typer.Option("cpu", callback=args.device, help=args.DEVICE_HELP + " The candidate's."),
    precision: str = typer.Option("fp32", callback=args.choice(args.PRECISIONS, "precision"), help=args.PRECISION_HELP),
    cuda_graph: bool = typer.Option(True, help=args.CUDA_GRAPH_HELP),
    gpu_decode: bool = typer.Option(False, help=args.GPU_DECODE_HELP),
    gpu_post: bool = typer.Option(False, help=args.GPU_POST_HELP),
    compile: Optional[str] = typer.Option(None, "--compile", callback=args.compile_mode, help=args.COMPILE_HELP),
) -> None:
    """Parity report between two backends; exits 1 when a threshold is missed (usable as a CI gate).

    Matches each image's detections (same class, box IoU >= 0.5) and reports box / score / mask differences,
    plus the candidate's COCO mAP with the reference's detections as the ground truth (1.0 = identical).
    Unreadable images are reported and skipped.

    Examples:

      rcnn-deploy compare out/ --weights model.pth --images data/images --report parity.json

      rcnn-deploy compare out_fp16/ --reference out/ --images "data/images/*.png" --min-map 0.9

      rcnn-deploy compare runs/split/ --backend tensorrt --weights model.pth --images data/images
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .._io import atomic_write_json
    from ..evaluation.coco import pick_library
    from ..evaluation.parity import compare_detections
    from ..evaluation.reference import reference_map
    from ..runtime.preprocess import find_images

    console = Console(stderr=True)
    try:
        gpu = args.torch_gpu(device, precision, cuda_graph, gpu_decode, gpu_post, compile)
        cand = detector.load_detector(candidate, model, height, width, 1, backend, gpu)
        if reference is None:
            if weights is None:
                raise ValueError("pass --weights (for the PyTorch reference) or --reference")
            from ..api import Detector

            ref = Detector.from_torch(model or cand.spec.name, weights, cand.input_hw)
        else:
            ref = detector.load_detector(reference, model, height, width, 1, None)
        paths = find_images(images)
        pick_library("auto")  # the mAP check needs faster-coco-eval or pycocotools: fail before running models
    except (ValueError, FileNotFoundError, ImportError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    from ..runtime.stream import Progress

    refs: List[Detections] = []
    cands: List[Detections] = []
    used: List[str] = []
    skipped: List[Dict[str, Any]] = []
    progress = Progress("compare", len(paths), stream=console.file)
    # both models stream over the same images in lockstep (each keeps input order)
    for r, c in zip(ref.stream([str(p) for p in paths]), cand.stream([str(p) for p in paths])):
        progress.update(r.ok and c.ok)
        if not (r.ok and c.ok):
            error = r.error if not r.ok else c.error
            skipped.append({"image": r.name, "error": error})
            progress_print(progress, console, f"[yellow]skipped[/yellow] {escape(str(error))}")
            continue
        assert r.detections is not None and c.detections is not None  # ok results carry their detections
        refs.append(r.detections)
        cands.append(c.detections)
        used.append(r.name)
    progress.close()
    if not refs:
        console.print(f"[red]error:[/red] none of the {len(paths)} images could be read; check --images")
        raise typer.Exit(1)
    spec = cand.spec
    rep = compare_detections(refs, cands, nms_iou=spec.box_nms_thresh, max_detections=spec.detections_per_img)
    rmap = reference_map(refs, cands)
    bbox_ap = rmap["bbox"]["AP"]
    checks = {
        # a detection whose NMS decision sits on the IoU threshold (+-1e-3) may go either way in two backends'
        # fp32 arithmetic: counted as agreed, and listed in the report's "explained"
        f"recall (NMS ties excused) >= {min_recall}": rep.recall_with_ties >= min_recall,
        f"min box IoU >= {min_box_iou}": rep.min_box_iou >= min_box_iou,
        f"max score diff <= {max_score_diff}": rep.max_score_diff <= max_score_diff,
        f"min mask IoU >= {min_mask_iou}": rep.min_mask_iou is None or rep.min_mask_iou >= min_mask_iou,
        # -1: the reference found nothing, so there is nothing to score (the recall check covers that case)
        f"bbox mAP vs reference >= {min_map}": bbox_ap < 0 or bbox_ap >= min_map,
    }
    table = Table(title=f"{cand.backend} vs {ref.backend} on {len(refs)} images")
    table.add_column("metric")
    table.add_column("value")
    d = rep.to_dict()
    for k in (
        "reference_detections",
        "candidate_detections",
        "matched",
        "recall",
        "recall_with_ties",
        "min_box_iou",
        "max_box_abs_diff",
        "max_score_diff",
        "mean_score_diff",
        "min_mask_iou",
        "mean_mask_iou",
    ):
        table.add_row(k, str(d[k] if not isinstance(d[k], float) else round(d[k], 6)))
    table.add_row("unmatched: NMS ties / displaced by the cap", _explained_counts(rep.explained))
    for iou_type, m in rmap.items():
        for k in ("AP", "AP50", "AP75"):
            table.add_row(f"{iou_type} {k} vs reference", "n/a" if m[k] < 0 else str(round(m[k], 6)))
    for k, ok in checks.items():
        table.add_row(k, "[green]ok[/green]" if ok else "[red]FAILED[/red]")
    console.print(table)
    if skipped:
        console.print(f"[yellow]{len(skipped)} of {len(paths)} images skipped[/yellow] (unreadable)")
    if report:
        d["unmatched"] = d["unmatched"][:100]
        d["explained"] = d["explained"][:100]
        d["reference_map"] = rmap
        # "unmatched" entries name images by their index in "images" (the images that could be read)
        atomic_write_json(report, {"report": d, "checks": checks, "images": used, "skipped": skipped})
    if not all(checks.values()):
        raise typer.Exit(1)


def _explained_counts(explained: List[Any]) -> str:
    ties = sum(1 for e in explained if e[3] == "nms tie")
    return f"{ties} / {len(explained) - ties}"
