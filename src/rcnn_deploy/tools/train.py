"""``rcnn-deploy train``: train torchvision Faster / Mask R-CNN R50-FPN on COCO-format data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import args

# train.engine.TRAINABLE_MODELS / OPTIMIZERS and models.checkpoint.COMPRESSIONS (those modules import torch)
TRAINABLE = ("torchvision-maskrcnn", "torchvision-fasterrcnn")
OPTIMIZERS = ("sgd", "adamw")
COMPRESSIONS = ("int8", "fp16", "none")


def train_command(
    images: Path = typer.Option(
        ...,
        "--images",
        callback=args.input_dir,
        help="Directory the annotations' file_name entries are relative to.",
    ),
    annotations: Path = typer.Option(
        ..., "--annotations", callback=args.json_file, help="COCO instances JSON (train split)."
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        callback=args.output_file,
        help="Checkpoint to write (rcnn-deploy format, .pt).",
    ),
    model: str = typer.Option(
        "torchvision-maskrcnn",
        "--model",
        "-m",
        callback=args.choice(TRAINABLE, "trainable model"),
        help="torchvision-maskrcnn or torchvision-fasterrcnn.",
    ),
    height: int = typer.Option(
        384,
        callback=args.input_size,
        help="Model input height, a multiple of 32 (images are letterboxed to it, as at deploy time).",
    ),
    width: int = typer.Option(384, callback=args.input_size, help="Model input width, a multiple of 32."),
    epochs: int = typer.Option(
        12, callback=args.positive_int, help="Epochs (the schedule's length unless --time-budget ends it first)."
    ),
    batch: int = typer.Option(8, callback=args.positive_int, help="Images per iteration (>= 1)."),
    lr: float = typer.Option(
        0.02, callback=args.positive_float, help="Peak learning rate (after warm-up; cosine decay to 0)."
    ),
    optimizer: str = typer.Option(
        "sgd", callback=args.choice(OPTIMIZERS, "optimizer"), help="sgd (momentum 0.9) or adamw."
    ),
    weight_decay: float = typer.Option(
        1e-4, callback=args.non_negative_float, help="Weight decay (not on biases and norm parameters)."
    ),
    warmup_iters: int = typer.Option(200, callback=args.non_negative_int, help="Linear warm-up iterations."),
    amp: bool = typer.Option(True, help="bf16 autocast on CUDA (ignored on CPU)."),
    vflip: bool = typer.Option(False, help="Also flip vertically (horizontal flips are always on)."),
    val_annotations: Optional[Path] = typer.Option(
        None, callback=args.json_file, help="COCO JSON of a validation split: mAP per epoch."
    ),
    val_images: Optional[Path] = typer.Option(
        None, callback=args.input_dir, help="Its images (default: images/ beside the JSON)."
    ),
    val_max_images: int = typer.Option(500, callback=args.positive_int, help="Validate on at most this many images."),
    time_budget: Optional[float] = typer.Option(
        None, callback=args.positive_float, help="Minutes of training the schedule is fitted into."
    ),
    stop_after: Optional[float] = typer.Option(
        None, callback=args.positive_float, help="Leave after this many minutes; continue with --resume."
    ),
    max_iters: Optional[int] = typer.Option(
        None, callback=args.positive_int, help="Stop after this many iterations (smoke tests)."
    ),
    init: Optional[str] = typer.Option(None, help="Fine-tune from a checkpoint (matching tensors are loaded)."),
    resume: Optional[Path] = typer.Option(
        None, callback=args.input_file, help="Continue from <output>.state.pt of an earlier run."
    ),
    workers: int = typer.Option(4, callback=args.non_negative_int, help="Data-loading processes (0: in-process)."),
    device: str = typer.Option("auto", callback=args.device_or_auto, help="auto, cuda, cuda:N or cpu."),
    seed: int = typer.Option(0, help="Random seed."),
    compress: str = typer.Option(
        "int8",
        callback=args.choice(COMPRESSIONS, "compression"),
        help="Checkpoint weights: int8 (per-channel, ~44 MB), fp16 or none.",
    ),
) -> None:
    """Train on COCO-format data and save a checkpoint that every rcnn-deploy command takes.

    The checkpoint records the class names, category ids and input size, so no other flag is needed later.

    Examples:

      rcnn-deploy data synth -o data/train -n 8000 --height 384 --width 384 --seed 1

      rcnn-deploy train --images data/train/images --annotations data/train/annotations.json -o shapes.pt

      rcnn-deploy train ... --epochs 1 --batch 2 --max-iters 10 --device cpu      # smoke test
    """
    from rich.console import Console
    from rich.markup import escape

    from ..config import InputSize
    from ..train.engine import TrainConfig, train, write_summary

    console = Console(stderr=True)
    try:
        InputSize(height, width)
        for p, what in ((annotations, "--annotations"), (images, "--images")):
            if not p.exists():
                raise FileNotFoundError(f"{what} {p} does not exist")
        cfg = TrainConfig(
            images=str(images),
            annotations=str(annotations),
            output=str(output),
            model=model,
            input_hw=(height, width),
            epochs=epochs,
            batch=batch,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            warmup_iters=warmup_iters,
            amp=amp,
            vflip=vflip,
            val_images=str(val_images) if val_images else None,
            val_annotations=str(val_annotations) if val_annotations else None,
            val_max_images=val_max_images,
            time_budget_min=time_budget,
            stop_after_min=stop_after,
            max_iters=max_iters,
            init=init,
            resume=str(resume) if resume else None,
            workers=workers,
            device=device,
            seed=seed,
            compress=compress,
        )
        result = train(cfg, log=lambda m: console.print(escape(m)))
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    write_summary(output.with_name(output.name + ".summary.json"), result)
    if not result.finished:
        raise typer.Exit(3)
