"""The ``rcnn-deploy`` command line. Each command group lives in ``rcnn_deploy.tools.<group>``; this module
only assembles them, so ``rcnn-deploy --help`` stays fast (no torch import)."""

from __future__ import annotations

import typer

from .tools import data as data_tools
from .tools.bench import bench_command
from .tools.build import build_command
from .tools.demo import demo_command
from .tools.evaluate import eval_command
from .tools.export import export_command
from .tools.infer import compare_command, infer_command
from .tools.train import train_command

app = typer.Typer(
    name="rcnn-deploy",
    help="Deploy Faster/Mask R-CNN R50-FPN (torchvision or Detectron2 weights) to TensorRT, ONNX Runtime and PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_tools.app, name="data", help="Synthetic COCO-format datasets.")
app.command("export")(export_command)
app.command("build")(build_command)
app.command("infer")(infer_command)
app.command("compare")(compare_command)
app.command("bench")(bench_command)
app.command("eval")(eval_command)
app.command("train")(train_command)
app.command("demo")(demo_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
