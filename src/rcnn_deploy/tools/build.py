"""``rcnn-deploy build``: ONNX graph -> TensorRT / TensorRT-RTX engine (+ sidecar JSON), or, with
``--target onnxruntime``, the fused graph rewritten for ONNX Runtime on the CPU (fp32 or int8 Q/DQ) as an export
directory of its own (:mod:`rcnn_deploy.export.ort_cpu`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Optional

import typer

from . import args

if TYPE_CHECKING:
    from rich.console import Console

    from ..contract import Contract

PRECISIONS = ("fp32", "fp16", "int8", "best")  # backends.tensorrt.builder.PRECISIONS (its package imports numpy)
TRT_MODULES = ("tensorrt", "tensorrt_rtx")
TARGETS = ("tensorrt", "onnxruntime")
CALIB_METHODS = ("minmax", "percentile", "entropy")  # export.ort_cpu.CALIBRATION_METHODS (it imports numpy)
ORT_CALIB_IMAGES = 64  # --calib-images default for --target onnxruntime (2-core CPUs calibrate ~1 image/s)


def build_command(
    ctx: typer.Context,
    onnx_path: Path = typer.Argument(..., help="ONNX file written by 'rcnn-deploy export' (contract.json beside it)."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Engine file to write (a .json sidecar is written too); with --target onnxruntime, a directory.",
    ),
    target: str = typer.Option(
        "tensorrt",
        callback=args.choice(TARGETS, "target"),
        help="tensorrt: an engine file. onnxruntime: the fused --nms onnx graph rewritten for the CPU (each ROI"
        " pooled once, mask head on the detections only), fp32 or int8 (Q/DQ, calibrated on --calib-input), as an"
        " export directory that infer/eval/bench load like any export.",
    ),
    precision: str = typer.Option(
        "fp16", callback=args.choice(PRECISIONS, "precision"), help="fp32, fp16, int8 or best."
    ),
    batch: str = typer.Option(
        "1",
        callback=args.batch_profile,
        help="Batch profile N, MIN:MAX or MIN:OPT:MAX (1 <= MIN <= OPT <= MAX, within the export's range).",
    ),
    workspace: float = typer.Option(4.0, callback=args.positive_float, help="Builder workspace in GiB (> 0)."),
    timing_cache: Optional[Path] = typer.Option(
        None, callback=args.output_file, help="Timing cache file (read if present, then updated)."
    ),
    calib_input: Optional[Path] = typer.Option(None, help="INT8: directory of calibration images."),
    calib_cache: Optional[Path] = typer.Option(
        None,
        callback=args.output_file,
        help="INT8: calibration cache, reused if it exists (strongly typed TensorRT: the quantized Q/DQ ONNX).",
    ),
    calib_images: int = typer.Option(
        500,
        callback=args.positive_int,
        help=f"INT8: number of calibration images to use (>= 1; --target onnxruntime: default {ORT_CALIB_IMAGES}).",
    ),
    calib_method: str = typer.Option(
        "minmax",
        callback=args.choice(CALIB_METHODS, "calibration method"),
        help="INT8 with --target onnxruntime: activation ranges by minmax, percentile or entropy.",
    ),
    calib_batch: int = typer.Option(1, callback=args.positive_int, help="INT8: calibration batch size (>= 1)."),
    calib_graph: Optional[Path] = typer.Option(
        None,
        callback=args.input_file,
        help="INT8 on TensorRT 8.6/10: --calib-cache belongs to this other graph of the same model (e.g. the split"
        " backbone, which calibrates quickly); its ranges are applied to this graph's layers of the same name, with"
        " no calibration here; layers it does not cover run fp16.",
    ),
    fp32_glue: bool = typer.Option(
        True, help="fp16/int8 on TensorRT 8.6/10: keep the glue (box decoding, NMS inputs, ROIAlign) in fp32."
    ),
    opt_level: Optional[int] = typer.Option(
        None,
        callback=args.int_between(0, 5),
        help="Builder optimization level 0-5 (TensorRT >= 8.6, default 3): lower builds faster.",
    ),
    tactic_sources: Optional[str] = typer.Option(
        None, help="Comma-separated tactic sources, e.g. EDGE_MASK_CONVOLUTIONS,JIT_CONVOLUTIONS (default: all)."
    ),
    trt: Optional[str] = typer.Option(
        None,
        callback=args.choice(TRT_MODULES, "TensorRT module"),
        help="Force 'tensorrt' or 'tensorrt_rtx' (default: whichever imports).",
    ),
    verbose: bool = typer.Option(False, help="TensorRT verbose log."),
) -> None:
    """Build a TensorRT engine, or (--target onnxruntime) a CPU build for ONNX Runtime.

    --target onnxruntime takes the fused --nms onnx graph of an export and writes an export directory (-o DIR)
    whose graph pools each ROI once and runs the mask head on the detections only (the same outputs, about
    half the work); --precision int8 quantises its network layers (ONNX Runtime static Q/DQ, per-channel int8
    weights, calibrated on --calib-input, default 64 images); the glue stays fp32. See docs/cpu.md.

    TensorRT 8.6/10 take fp16/int8 as builder flags (int8 calibrates on --calib-input with the model's own
    preprocessing, or reuses --calib-cache, or applies the cache of another graph of the model by layer
    name with --calib-graph); TensorRT 11 and TensorRT-RTX are strongly typed, so fp16 builds
    an fp16 graph made by rule (network layers fp16, glue fp32) and int8 a Q/DQ graph (nvidia-modelopt,
    calibrated on --calib-input; the network layers int8, the glue fp32). A Q/DQ graph given directly is
    built as explicit quantization by every version.

    Examples:

      rcnn-deploy build out/torchvision-maskrcnn_backbone.onnx -o backbone.engine --precision fp16 --batch 1:4:8

      rcnn-deploy build out/model_fused_plugin.onnx -o int8.engine --precision int8 --calib-input data/images
      --calib-cache calib.cache

      rcnn-deploy build out/torchvision-maskrcnn_backbone.onnx -o backbone_int8.engine --precision int8
      --trt tensorrt_rtx --calib-input data/images --calib-cache backbone_int8_qdq.onnx

      rcnn-deploy build fused/model_fused_plugin.onnx -o fused_int8.engine --precision int8
      --calib-graph split/torchvision-maskrcnn_backbone.onnx --calib-cache backbone.cache

      rcnn-deploy build fused/torchvision-maskrcnn_fused_onnx.onnx --target onnxruntime -o cpu_int8
      --precision int8 --calib-input data/train/images     (then: rcnn-deploy infer cpu_int8 images/ -o out)
    """
    if target == "onnxruntime":
        _onnxruntime_build(
            ctx, onnx_path, output, precision, calib_input, calib_images, calib_method, calib_cache, calib_graph
        )
        return
    args.check_output_file(output)
    from rich.console import Console
    from rich.markup import escape

    from ..backends.base import BackendUnavailable
    from ..backends.tensorrt.builder import BuildConfig, build_engine
    from ..backends.tensorrt.compat import load_trt
    from ..contract import Contract, verify_graph_file

    console = Console(stderr=True)

    def fail(msg: str) -> NoReturn:
        console.print(f"[red]error:[/red] {escape(msg)}")
        raise typer.Exit(2)

    if not onnx_path.is_file():
        fail(f"ONNX file not found: {onnx_path}")
    try:
        contract = Contract.load(onnx_path.parent)
        verify_graph_file(onnx_path)  # before anything parses it: the graph its contract records (sha256)
        runtime = load_trt(trt)
    except (FileNotFoundError, ValueError, BackendUnavailable) as e:
        fail(str(e))
    if calib_graph is not None and runtime.strongly_typed_only:
        fail(
            f"--calib-graph applies a calibration cache with builder int8 flags (TensorRT 8.6/10); {runtime.name} "
            f"{runtime.version} is strongly typed: int8 there is a Q/DQ graph (--calib-input, --calib-cache)"
        )
    lo, opt, hi = args.parse_batch_range(batch, "--batch", opt=True)
    if not (contract.batch[0] <= lo and hi <= contract.batch[1]):
        fail(f"batch profile {lo}:{opt}:{hi} is outside the exported range {contract.batch[0]}:{contract.batch[1]}")
    cfg = BuildConfig(
        precision=precision,
        batch=(lo, opt, hi),
        rois=(1, 1000 * opt, 1000 * hi),
        workspace_gib=workspace,
        timing_cache=str(timing_cache) if timing_cache else None,
        fp32_glue=fp32_glue,
        tactic_sources=[t.strip().upper() for t in tactic_sources.split(",") if t.strip()] if tactic_sources else None,
        opt_level=opt_level,
        verbose=verbose,
    )
    src = onnx_path
    calibrator = None
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as tmp:
        if runtime.strongly_typed_only and precision == "fp16":
            import onnx

            from ..export.precision import to_fp16

            src = Path(tmp) / (onnx_path.stem + "_fp16.onnx")
            onnx.save(to_fp16(onnx.load(onnx_path)), src)
            cfg.precision = "fp16"
        if precision in ("int8", "best") and runtime.strongly_typed_only:
            src = _explicit_int8(onnx_path, contract, calib_input, calib_cache, calib_images, Path(tmp), console, fail)
        elif precision in ("int8", "best") and calib_graph is not None:
            if calib_cache is None or not calib_cache.is_file():
                fail(
                    f"--calib-graph needs the calibration cache of {calib_graph.name} (--calib-cache): build that graph"
                    " first with --precision int8 --calib-input DIR --calib-cache FILE"
                )
            if not calib_graph.is_file():
                fail(f"calibration graph not found: {calib_graph}")
            cfg.int8_ranges_graph, cfg.int8_ranges_cache = str(calib_graph), str(calib_cache)
            console.print(f"applying {calib_cache.name} (calibrated on {calib_graph.name}) by layer name")
        elif precision in ("int8", "best"):
            if calib_cache is None:
                fail("--precision int8 needs --calib-cache (it is reused on the next build)")
            if not calib_cache.is_file():
                if calib_input is None:
                    fail(f"no calibration cache at {calib_cache}: pass --calib-input DIR to calibrate")
                npy = _calibration_array(contract, calib_input, calib_images, Path(tmp), console)
            else:
                console.print(f"reusing calibration cache {calib_cache}")
                npy = ""
            from ..backends.tensorrt.calibrator import make_calibrator

            calibrator = make_calibrator(runtime, npy, str(calib_cache), calib_batch)
        try:
            with console.status(f"building {src.name} with {runtime.name} {runtime.version} ({precision})"):
                side = build_engine(src, output, cfg, runtime, calibrator)
        except (RuntimeError, ValueError) as e:
            fail(str(e))
    console.print(f"[green]engine[/green] {output} ({side['build_seconds']:.1f} s, {runtime.name} {runtime.version})")


def _onnxruntime_build(
    ctx: typer.Context,
    onnx_path: Path,
    output: Path,
    precision: str,
    calib_input: Optional[Path],
    calib_images: int,
    calib_method: str,
    calib_cache: Optional[Path],
    calib_graph: Optional[Path],
) -> None:
    """``--target onnxruntime``: the CPU build of a fused --nms onnx export (UserErrors print as one line)."""
    from click.core import ParameterSource
    from rich.console import Console
    from rich.markup import escape

    from ..errors import UserError
    from ..export.ort_cpu import build_cpu_export

    console = Console(stderr=True)
    for name, value in (("--calib-cache", calib_cache), ("--calib-graph", calib_graph)):
        if value is not None:
            raise UserError(
                "is a TensorRT option", where=name, fix="--target onnxruntime writes the quantized graph into -o"
            )
    args.check_output_dir(output)
    if ctx.get_parameter_source("calib_images") == ParameterSource.DEFAULT:
        calib_images = ORT_CALIB_IMAGES
    if precision == "fp16":
        raise UserError(
            "ONNX Runtime's CPU kernels gain nothing from fp16",
            where="--precision",
            fix="use --precision fp32, or int8 with --calib-input DIR",
        )
    precision = "int8" if precision == "best" else precision
    with console.status(f"building {onnx_path.name} for ONNX Runtime on the CPU ({precision})"):
        c = build_cpu_export(
            onnx_path,
            output,
            precision,
            calib_input,
            calib_images,
            calib_method,
            log=lambda m: console.print(escape(m)),
        )
    note = c.notes["cpu"]
    console.print(
        f"[green]CPU build[/green] {output}/{c.graphs[0].file} ({precision}, {note['build_seconds']:.1f} s); "
        f"run it with: rcnn-deploy infer {output} IMAGES -o OUT"
    )


def _explicit_int8(
    onnx_path: Path,
    contract: Contract,
    calib_input: Optional[Path],
    calib_cache: Optional[Path],
    limit: int,
    tmp: Path,
    console: Console,
    fail: Callable[[str], NoReturn],
) -> Path:
    """Strongly typed builders: the Q/DQ graph (nvidia-modelopt), calibrated on --calib-input. --calib-cache
    names the quantized ONNX here: written by the first build, reused (no calibration) by the next."""
    import numpy as np
    import onnx

    from ..backends.base import BackendUnavailable
    from ..export.quantize import is_quantized, quantize_int8

    if is_quantized(onnx.load(str(onnx_path), load_external_data=False)):
        return onnx_path  # quantized already: built as it is
    if calib_cache is not None and calib_cache.is_file():
        console.print(f"reusing quantized graph {calib_cache}")
        return calib_cache
    if calib_input is None:
        fail(
            "--precision int8 on a strongly typed TensorRT builds a quantized (Q/DQ) graph: pass --calib-input DIR "
            "to calibrate it (needs nvidia-modelopt: pip install 'rcnn-deploy[quant]')"
        )
    images = np.load(_calibration_array(contract, calib_input, limit, tmp, console))
    out = calib_cache if calib_cache is not None else tmp / (onnx_path.stem + "_int8_qdq.onnx")
    try:
        rep = quantize_int8(onnx_path, out, images)
    except (BackendUnavailable, ValueError) as e:
        fail(str(e))
    console.print(f"quantized {rep['quantize_nodes']} tensors to int8 (Q/DQ, {rep['method']}) -> {out}")
    return out


def _calibration_array(contract: Contract, directory: Path, limit: int, tmp: Path, console: Console) -> str:
    import numpy as np

    from ..runtime.preprocess import find_images, iter_batches, rgb_fill

    paths = find_images(directory)[:limit]
    spec = contract.spec
    fill = rgb_fill(spec.pixel_mean, spec.channel_order)
    arrays = []
    for images, _, _, failed in iter_batches(paths, contract.input_hw, fill, batch=8, resize=contract.spec.resize):
        for p, why in failed:
            console.print(f"[yellow]skipped[/yellow] {p}: {why}")
        if len(images):
            arrays.append(images)
    if not arrays:
        raise typer.BadParameter(f"no readable calibration images in {directory}")
    out = tmp / "calibration.npy"
    np.save(out, np.concatenate(arrays))
    console.print(f"calibrating on {sum(len(a) for a in arrays)} images from {directory}")
    return str(out)
