"""``rcnn-deploy data ...``: dataset utilities."""

from __future__ import annotations

from pathlib import Path

import typer

from . import args

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
def synth(
    out_dir: Path = typer.Option(
        ..., "--out-dir", "-o", callback=args.output_dir, help="Output directory (created if missing)."
    ),
    num_images: int = typer.Option(200, "--num-images", "-n", help="Number of images to generate (>= 1)."),
    height: int = typer.Option(320, "--height", help="Image height in pixels (64-8192)."),
    width: int = typer.Option(320, "--width", help="Image width in pixels (64-8192)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (>= 0); the same seed gives byte-identical output."),
    min_objects: int = typer.Option(2, "--min-objects", help="Fewest objects per image (0-64)."),
    max_objects: int = typer.Option(6, "--max-objects", help="Most objects per image (1-64, >= --min-objects)."),
    image_format: str = typer.Option("png", "--image-format", help="png (lossless) or jpg."),
    workers: int = typer.Option(
        1,
        "--workers",
        "-j",
        callback=args.positive_int,
        help="Processes rendering images, >= 1 (same output for any value).",
    ),
) -> None:
    """Generate a deterministic synthetic COCO instance-segmentation dataset of textured shapes.

    Writes OUT_DIR/images/000000.png ... and OUT_DIR/annotations.json (visible-part RLE masks).

    Example:

        rcnn-deploy data synth -o data/shapes --num-images 200 --height 320 --width 320 --seed 0
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data.synth import generate_synthetic_coco, load_coco

    console = Console()
    try:
        with Progress(
            TextColumn("[bold]synth[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("images", total=num_images)
            ann_path = generate_synthetic_coco(
                out_dir,
                num_images,
                height=height,
                width=width,
                seed=seed,
                min_objects=min_objects,
                max_objects=max_objects,
                image_format=image_format,
                progress=lambda done, total: bar.update(task, completed=done),
                workers=workers,
            )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    coco = load_coco(ann_path)
    console.print(
        f"Wrote {len(coco['images'])} images, {len(coco['annotations'])} instances "
        f"({len(coco['categories'])} classes) -> {ann_path}",
        highlight=False,
        soft_wrap=True,
    )
