"""The ``rcnn-deploy`` command line. Each command group lives in ``rcnn_deploy.tools.<group>``; this module
only assembles them, so ``rcnn-deploy --help`` stays fast (no torch import)."""

from __future__ import annotations

import sys
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

from .errors import UserError, debug_enabled
from .tools import data as data_tools
from .tools.bench import bench_command
from .tools.build import build_command
from .tools.demo import demo_command
from .tools.evaluate import eval_command
from .tools.export import export_command
from .tools.infer import compare_command, infer_command
from .tools.serve import serve_command, triton_repo_command
from .tools.train import train_command


class _Commands(TyperGroup):
    """Every command runs inside this: a :class:`UserError` becomes one ``error:`` line on stderr and exit
    status 2 (``--debug`` or ``RCNN_DEPLOY_DEBUG=1`` shows its traceback too); other exceptions keep theirs."""

    # ctx: the click.Context of the click typer runs on (recent typers vendor their own copy, older ones use
    # the click package), hence Any
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            if debug_enabled():
                raise
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None


app = typer.Typer(
    name="rcnn-deploy",
    cls=_Commands,
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
app.command("triton-repo")(triton_repo_command)
app.command("serve")(serve_command)


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for user errors too (RCNN_DEPLOY_DEBUG=1)."),
) -> None:
    import os

    from .errors import DEBUG_ENV

    if debug:
        os.environ[DEBUG_ENV] = "1"


def main(argv: Optional[List[str]] = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="rcnn-deploy")


if __name__ == "__main__":
    main()
