"""``rcnn-deploy export``: deploy-form model -> ONNX graph(s) + contract.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from ..config import MODEL_NAMES
from ..errors import UserError
from . import args

GRAPHS = ("split", "fused")
NMS_VARIANTS = ("onnx", "tensor", "plugin")


def _check_flags(model: str, thresholds: dict, max_detections: Optional[int]) -> None:
    """Bad flags are named before anything is built (a UserError: one ``error:`` line, exit 2)."""
    if model not in MODEL_NAMES:
        raise UserError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}", where="--model")
    for flag, value in thresholds.items():
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"must be between 0 and 1, got {value}", where=flag)
    if max_detections is not None and not 1 <= max_detections <= 100000:
        raise UserError(f"must be between 1 and 100000, got {max_detections}", where="--max-detections")


def export_command(
    model: str = typer.Option(
        ..., "--model", "-m", callback=args.model_name, help=f"One of: {', '.join(MODEL_NAMES)}."
    ),
    weights: Optional[str] = typer.Option(
        None,
        "--weights",
        "-w",
        help="Checkpoint: torchvision .pth, Detectron2 .pkl/.pth, or a torchvision enum such as "
        "MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (read from the torch hub cache). Omit for random weights.",
    ),
    height: int = typer.Option(1344, "--height", callback=args.input_size, help="Input height (multiple of 32)."),
    width: int = typer.Option(1344, "--width", callback=args.input_size, help="Input width (multiple of 32)."),
    batch: str = typer.Option(
        "1", "--batch", callback=args.batch_range, help="Batch size N or dynamic range MIN:MAX (1 <= MIN <= MAX)."
    ),
    graph: str = typer.Option(
        "split",
        "--graph",
        callback=args.choice(GRAPHS, "graph"),
        help="split (backbone / box head / mask head) or fused.",
    ),
    nms: str = typer.Option(
        "onnx",
        "--nms",
        callback=args.choice(NMS_VARIANTS, "NMS variant"),
        help="Fused graphs: onnx (standard ONNX ops), tensor (plain tensor ops: exact greedy NMS and ROIAlign as "
        "gathers, so TensorRT-RTX and 8.6 build it without plugins) or plugin (TensorRT plugins).",
    ),
    input_dtype: str = typer.Option(
        "float32",
        "--input-dtype",
        callback=args.choice(("float32", "uint8"), "input dtype"),
        help="float32 (RGB 0-255 floats, the default) or uint8 (pixels as bytes, cast in the graph: 4x less upload).",
    ),
    first_nms_score_threshold: Optional[float] = typer.Option(
        None, callback=args.probability, help="RPN score threshold in [0, 1] (default: the flavour's, 0.0)."
    ),
    second_nms_score_threshold: Optional[float] = typer.Option(
        None, callback=args.probability, help="Detection score threshold in [0, 1] (default: the flavour's, 0.05)."
    ),
    max_detections: Optional[int] = typer.Option(
        None, callback=args.positive_int, help="Detections per image, >= 1 (default 100)."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", callback=args.output_dir, help="Output directory (created if missing)."
    ),
) -> None:
    """Export a model to ONNX and write its I/O contract.

    The export is written beside OUTPUT and moved into place whole: OUTPUT always holds a complete export
    (the previous one until this one is done); other files in OUTPUT (engines, caches) are kept.

    Examples:

      rcnn-deploy export -m torchvision-maskrcnn -w maskrcnn.pth --height 800 --width 800 --batch 1:8 -o out/

      rcnn-deploy export -m detectron2-maskrcnn -w model_final_f10217.pkl --graph fused --nms plugin -o out/

      rcnn-deploy export -m torchvision-maskrcnn -w maskrcnn.pth --graph fused --nms tensor --batch 1:8 -o out/
    """
    from rich.console import Console

    from ..export import export_onnx
    from ..export.onnx_export import parse_batch
    from ..models.build import build_model

    _check_flags(
        model,
        {
            "--first-nms-score-threshold": first_nms_score_threshold,
            "--second-nms-score-threshold": second_nms_score_threshold,
        },
        max_detections,
    )
    parse_batch(batch)  # a bad --batch is named before the model is built
    overrides: Dict[str, Any] = {}
    if first_nms_score_threshold is not None:
        overrides["rpn_score_thresh"] = first_nms_score_threshold
    if second_nms_score_threshold is not None:
        overrides["box_score_thresh"] = second_nms_score_threshold
    if max_detections is not None:
        overrides["detections_per_img"] = max_detections
    console = Console(stderr=True)
    with console.status(f"building {model}"):
        net = build_model(model, weights, **overrides)
    with console.status(f"exporting {graph} graph(s) at {height}x{width}"):
        contract = export_onnx(
            net, output, height=height, width=width, batch=batch, graph=graph, nms=nms, input_dtype=input_dtype
        )
    if weights is None:
        console.print("[yellow]warning:[/yellow] no --weights given: the graphs carry random weights")
    for g in contract.graphs:
        ins = ", ".join(f"{t.name}{t.shape}" for t in g.inputs)
        outs = ", ".join(f"{t.name}{t.shape}" for t in g.outputs)
        console.print(f"[green]{g.role}[/green] {output / g.file}\n  in: {ins}\n  out: {outs}")
    console.print(f"contract: {output / 'contract.json'}")
