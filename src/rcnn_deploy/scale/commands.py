"""The ``--ray`` branch of ``rcnn-deploy infer`` and ``rcnn-deploy eval``: options in, a progress bar, the merged
outputs and one final line with the throughput and the images each worker ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import UserError

_MAX_SKIP_LINES = 10


def _input_hw(height: Optional[int], width: Optional[int]) -> Optional[Tuple[int, int]]:
    if height is None and width is None:
        return None
    h, w = height or width, width or height
    assert h is not None and w is not None  # one of them is given
    return (h, w)


def _require_ray(ray: bool) -> None:
    if not ray:
        raise UserError("--ray-address, --workers, --gpus-per-worker and --resume apply to Ray runs", fix="add --ray")


class _Bar:
    """A rich progress bar fed by the driver's ``progress(done, total, workers)`` callback."""

    def __init__(self, console: Any, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(f"{description} [dim](ray)[/dim]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[workers]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(description, total=None, workers="")

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, done: int, total: int, workers: Mapping[str, int]) -> None:
        self.progress.update(self.task, completed=done, total=total, workers=f"{len(workers)} workers")


def _final_line(report: Any) -> str:
    per_worker = ", ".join(f"{w} {n}" for w, n in sorted(report.workers.items())) or "none"
    resumed = f", {report.shards_resumed}/{report.shards} shards resumed" if report.shards_resumed else ""
    dup = f", {report.duplicates_dropped} duplicate rows dropped" if report.duplicates_dropped else ""
    return (
        f"ray ({report.address}): {report.processed} images in {report.wall_s:.1f} s = {report.img_per_s:.2f} img/s "
        f"on {report.num_workers} workers{resumed}{dup}; per worker: {per_worker}; exactly once: "
        f"{'yes' if report.exactly_once else 'NO'}"
    )


def run_ray_infer(
    *,
    ray: bool,
    model_path: str,
    source: str,
    output: Path,
    model: Optional[str],
    height: Optional[int],
    width: Optional[int],
    batch: int,
    nms_threshold: Optional[float],
    mask_threshold: Optional[float],
    visualize: bool,
    draw_threshold: float,
    backend: Optional[str],
    ray_address: Optional[str],
    workers: Optional[int],
    gpus_per_worker: Optional[float],
    resume: bool,
    stride: int = 1,
    vis_format: str = "auto",
) -> None:
    """``rcnn-deploy infer ... --ray``: the local command's outputs, computed on Ray."""
    import typer
    from rich.console import Console
    from rich.markup import escape

    from .ray_infer import infer_on_ray

    _require_ray(ray)
    console = Console(stderr=True)
    with _Bar(console, "infer") as bar:
        summary, report = infer_on_ray(
            model_path,
            source,
            output,
            model=model,
            input_hw=_input_hw(height, width),
            backend=backend,
            batch=batch,
            score_threshold=nms_threshold,
            mask_threshold=mask_threshold,
            visualize=visualize,
            vis_format=vis_format,
            draw_threshold=draw_threshold,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            address=ray_address,
            resume=resume,
            stride=stride,
            progress=bar,
        )
    failures = summary["failures"]
    for f in failures[:_MAX_SKIP_LINES]:
        console.print(f"[yellow]skipped[/yellow] {escape(f['error'])}")
    if len(failures) > _MAX_SKIP_LINES:
        console.print(f"[yellow]... and {len(failures) - _MAX_SKIP_LINES} more (summary.json lists them)[/yellow]")
    console.print(
        f"{summary['written']}/{summary['images']} images, {summary['detections']} detections -> {escape(str(output))} "
        + (f"([yellow]{len(failures)} skipped[/yellow])" if failures else "")
    )
    console.print(escape(_final_line(report)), highlight=False)
    if failures and summary["written"] == 0:
        raise typer.Exit(1)


def run_ray_eval(
    *,
    ray: bool,
    model_path: str,
    annotations: Path,
    images: Optional[Path],
    model: Optional[str],
    height: Optional[int],
    width: Optional[int],
    batch: int,
    backend: Optional[str],
    output: Optional[Path],
    max_images: Optional[int],
    library: str,
    ray_address: Optional[str],
    workers: Optional[int],
    gpus_per_worker: Optional[float],
    resume: bool,
) -> None:
    """``rcnn-deploy eval ... --ray``: the images run on Ray; the metrics come from the merged results. The
    shards (and ``results.json``, ``run.json``) are kept in ``OUTPUT.shards/`` beside ``-o``; without ``-o`` in
    a temporary folder removed at the end."""
    import shutil
    import tempfile

    from rich.console import Console
    from rich.markup import escape

    from .._io import atomic_write_json
    from ..evaluation.ground_truth import load_ground_truth
    from ..tools.evaluate import _default_images_dir, metrics_table
    from .ray_infer import eval_on_ray

    _require_ray(ray)
    if resume and output is None:
        raise UserError("--resume needs -o FILE: the shards to resume are kept beside it", fix="pass -o metrics.json")
    try:
        gt = load_ground_truth(annotations)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e), where=annotations) from None
    images_dir = images if images is not None else _default_images_dir(annotations, gt)
    if output is not None:
        work = output.parent / f"{output.name}.shards"
    else:
        work = Path(tempfile.mkdtemp(prefix="rcnn-deploy-eval-ray-"))
    console = Console(stderr=True)
    try:
        with _Bar(console, "eval") as bar:
            out, report = eval_on_ray(
                model_path,
                annotations,
                images_dir,
                work,
                model=model,
                input_hw=_input_hw(height, width),
                backend=backend,
                batch=batch,
                library=library,
                max_images=max_images,
                workers=workers,
                gpus_per_worker=gpus_per_worker,
                address=ray_address,
                resume=resume,
                progress=bar,
            )
    finally:
        if output is None:
            shutil.rmtree(work, ignore_errors=True)
    for s in out["skipped"][:_MAX_SKIP_LINES]:
        console.print(f"[yellow]skipped[/yellow] {escape(s['error'])}")
    if len(out["skipped"]) > _MAX_SKIP_LINES:
        console.print(f"[yellow]... and {len(out['skipped']) - _MAX_SKIP_LINES} more skipped images[/yellow]")
    Console().print(
        metrics_table(out["metrics"], f"COCO mAP of {model_path} ({out['backend']}), {out['images']} images")
    )
    summary: Dict[str, Any] = {
        "model": model_path,
        "backend": out["backend"],
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
        console.print(
            f"metrics -> {escape(str(output))} (shards, merged results.json and run.json in {escape(str(work))})"
        )
    if out["skipped"]:
        where = f"listed in {escape(str(output))}" if output is not None else "-o FILE lists them"
        console.print(
            f"[yellow]{len(out['skipped'])} of {len(out['skipped']) + out['images']} images skipped[/yellow] "
            f"({where}); the metrics cover the rest"
        )
    console.print(escape(_final_line(report)), highlight=False)
