"""``rcnn-deploy triton-repo`` (write a Triton model repository) and ``rcnn-deploy serve`` (run a real
tritonserver on one, in the foreground)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

DEFAULT_MAX_PIXELS = 40_000_000  # rcnn_deploy.serve.contract.DEFAULT_MAX_PIXELS (not imported: numpy stays unloaded)


def _input_hw(height: Optional[int], width: Optional[int]) -> Optional[Tuple[int, int]]:
    from .infer import input_hw

    return input_hw(height, width)


def triton_repo_command(
    model_path: str = typer.Argument(
        ..., help="Export directory (contract.json), a built fused engine, or a checkpoint (python flavour)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Model repository folder to write."),
    flavour: str = typer.Option(
        "python",
        "--flavour",
        help="python: one Python-backend model running rcnn_deploy's Detector (any backend; runs on the bundled "
        "tritonserver). tensorrt: the fused engine as a tensorrt_plan model + Python pre/post + an ensemble "
        "(NGC Triton containers).",
    ),
    name: str = typer.Option("rcnn_detector", "--name", help="The model name clients call."),
    max_batch: int = typer.Option(4, "--max-batch", help="max_batch_size (tensorrt: at most the engine's)."),
    instances: int = typer.Option(1, "--instances", help="Instances of each model (instance_group count)."),
    max_queue_delay_us: int = typer.Option(
        2000, "--max-queue-delay-us", help="Dynamic batching: how long a request may wait for others."
    ),
    backend: Optional[str] = typer.Option(
        None,
        "--backend",
        help="python flavour: torch, onnxruntime or tensorrt, as infer's --backend (default: onnxruntime for an "
        "export, tensorrt for an engine, torch for a checkpoint).",
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name for a checkpoint that lacks it."),
    height: Optional[int] = typer.Option(None, help="Checkpoints: input height (default: the one it records)."),
    width: Optional[int] = typer.Option(None, help="Checkpoints: input width (default as --height)."),
    device: str = typer.Option("cpu", "--device", help="python flavour: cpu or cuda (torch model, split glue)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Largest image (w*h) decoded."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
) -> None:
    """Write a Triton Inference Server model repository. Clients send encoded image bytes (IMAGE, BYTES) and
    get NUM_DETECTIONS, BOXES (original pixels), SCORES, CLASSES, CLASS_NAMES and MASKS (COCO RLE JSON per
    detection) back, whichever the flavour.

    Examples:

      rcnn-deploy triton-repo runs/fused -o triton_repo                       # ONNX Runtime, python flavour

      rcnn-deploy triton-repo runs/fused/model_fp16.engine -o repo --flavour tensorrt --max-batch 8
    """
    from rich.console import Console

    from ..serve.repository import RepoOptions, write_repo

    opts = RepoOptions(
        name=name,
        max_batch=max_batch,
        instances=instances,
        max_queue_delay_us=max_queue_delay_us,
        backend=backend,
        model=model,
        input_hw=_input_hw(height, width),
        device=device,
        max_pixels=max_pixels,
    )
    model_dir = write_repo(model_path, output, flavour, opts, overwrite=overwrite)
    console = Console(stderr=True)
    for cfg in sorted(output.glob("*/config.pbtxt")):
        console.print(f"[green]{cfg.parent.name}[/green] {cfg}")
    console.print(
        f"repository: {output} (clients call model '{model_dir.name}'); run it with "
        f"tritonserver --model-repository {output.resolve()}"
    )


def serve_command(
    model_path: str = typer.Argument(
        ...,
        help="Export directory (contract.json), a built engine, or a checkpoint: what infer takes as its model path.",
    ),
    http_port: int = typer.Option(8000, "--http-port"),
    grpc_port: int = typer.Option(8001, "--grpc-port"),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus metrics at /metrics."),
    instances: int = typer.Option(1, "--instances", help="Model instances (instance_group count)."),
    max_batch: int = typer.Option(4, "--max-batch", help="Dynamic batching's largest batch."),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us"),
    address: str = typer.Option("0.0.0.0", "--address", help="Address the three endpoints listen on."),
    name: str = typer.Option("rcnn_detector", "--name", help="The model name clients call."),
    backend: Optional[str] = typer.Option(
        None,
        "--backend",
        help="torch, onnxruntime or tensorrt, as infer's --backend (default: onnxruntime for an export, tensorrt "
        "for an engine, torch for a checkpoint).",
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name for a checkpoint that lacks it."),
    height: Optional[int] = typer.Option(None, help="Checkpoints: input height."),
    width: Optional[int] = typer.Option(None, help="Checkpoints: input width."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (torch model, split glue)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Largest image (w*h) decoded."),
    tritonserver: Optional[str] = typer.Option(
        None, "--tritonserver", help="The tritonserver binary (default: RCNN_DEPLOY_TRITONSERVER, then searched)."
    ),
    log_verbose: int = typer.Option(0, "--log-verbose", help="tritonserver's --log-verbose level."),
) -> None:
    """Serve a model with a real Triton Inference Server in the foreground: a python-flavour repository in a
    temporary folder (the model files linked, not copied), tritonserver on it; Ctrl-C / SIGTERM is forwarded
    to the server, which drains and stops, and the folder is removed. Readiness at
    http://HOST:HTTP_PORT/v2/health/ready, Prometheus metrics at http://HOST:METRICS_PORT/metrics.

    Examples:

      rcnn-deploy serve runs/fused --instances 2 --max-batch 8

      rcnn-deploy serve runs/fused/model_fp16.engine --http-port 9000 --grpc-port 9001 --metrics-port 9002
    """
    import shutil
    import tempfile

    from rich.console import Console

    from ..serve.repository import RepoOptions, write_python_repo
    from ..serve.server import TritonServer, find_tritonserver, run_foreground

    console = Console(stderr=True)
    install = find_tritonserver(tritonserver)  # fail before writing anything
    opts = RepoOptions(
        name=name,
        max_batch=max_batch,
        instances=instances,
        max_queue_delay_us=max_queue_delay_us,
        backend=backend,
        model=model,
        input_hw=_input_hw(height, width),
        device=device,
        max_pixels=max_pixels,
        link=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="rcnn-deploy-serve-"))
    try:
        write_python_repo(model_path, tmp / "repo", opts)
        server = TritonServer(
            tmp / "repo",
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            address=address,
            tritonserver=install.binary,
            log_verbose=log_verbose,
        )
        console.print(f"tritonserver {install.binary} on {tmp / 'repo'} (model '{name}')")

        def ready(s: TritonServer) -> None:
            console.print(
                f"[green]ready[/green]: model '{name}' — HTTP {s.http_url}, gRPC {s.grpc_url}, metrics "
                f"{s.metrics_url} (Ctrl-C stops)"
            )

        code = run_foreground(server, on_ready=ready)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"tritonserver stopped (status {code}); removed {tmp}")
    if code != 0:
        raise typer.Exit(code if 0 < code < 256 else 1)
