"""Option callbacks shared by every command: each checks one argument at the CLI boundary, before any work.

Use them as ``typer.Option(..., callback=args.probability)``. A bad value raises
:class:`~rcnn_deploy.errors.UserError` whose ``where`` is the option's name (``--mask-threshold``), so the CLI
prints one ``error: --mask-threshold: ...`` line and exits 2 without a traceback (see ``rcnn_deploy.cli``).
Click runs every callback while it parses the command line, i.e. before the command body loads a model or
times anything; a ``None`` value (an optional option left out) always passes.

Nothing here imports numpy or torch: ``rcnn-deploy --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

import typer

from .._io import binary_kind
from ..config import MODEL_NAMES
from ..errors import UserError

#: Backends a model can run on (``--backend`` of infer, compare and eval).
BACKENDS = ("torch", "onnxruntime", "tensorrt")
#: The FPN's coarsest stride: model input sizes are multiples of it (``config.InputSize``).
SIZE_MULTIPLE = 32

Callback = Callable[[typer.Context, typer.CallbackParam, Any], Any]


# ------------------------------------------------------------------------------------------------- helpers
def option_name(param: Optional[typer.CallbackParam]) -> str:
    """``--mask-threshold`` for an option (its long name), ``MODEL_PATH`` for an argument."""
    if param is None:
        return "argument"
    opts = [str(o) for o in (getattr(param, "opts", None) or [])]
    if getattr(param, "param_type_name", "option") == "option" and opts:
        longs = [o for o in opts if o.startswith("--")]
        return longs[0] if longs else opts[0]
    return str(getattr(param, "name", None) or "argument").upper()


def fail(param: Optional[typer.CallbackParam], what: str, fix: Optional[str] = None) -> NoReturn:
    raise UserError(what, where=option_name(param), fix=fix)


def _completing(ctx: Optional[typer.Context]) -> bool:
    """Click is only completing the command line: nothing to check. Every callback below also lets ``None``
    (the option left out) pass: ``value is None or _completing(ctx)``."""
    return bool(getattr(ctx, "resilient_parsing", False))


def _or(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# ------------------------------------------------------------------------------------------------- numbers
def probability(ctx: typer.Context, param: typer.CallbackParam, value: Optional[float]) -> Optional[float]:
    """A threshold in [0, 1] (scores, IoUs, recalls, mAPs); NaN and infinities are refused."""
    if value is None or _completing(ctx):
        return value
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        fail(param, f"must be a number between 0 and 1, got {value}")
    return value


def int_at_least(minimum: int, hint: str = "") -> Callback:
    """An integer >= ``minimum``; ``hint`` is added to the message."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Optional[int]) -> Optional[int]:
        if value is None or _completing(ctx):
            return value
        if value < minimum:
            fail(param, f"must be an integer >= {minimum}, got {value}", hint or None)
        return value

    return check


def int_between(lo: int, hi: int, hint: str = "") -> Callback:
    """An integer in ``[lo, hi]``."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Optional[int]) -> Optional[int]:
        if value is None or _completing(ctx):
            return value
        if not lo <= value <= hi:
            fail(param, f"must be an integer from {lo} to {hi}, got {value}", hint or None)
        return value

    return check


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(ctx: typer.Context, param: typer.CallbackParam, value: Optional[float]) -> Optional[float]:
    """A finite number > 0 (learning rate, workspace, minutes)."""
    if value is None or _completing(ctx):
        return value
    if not math.isfinite(value) or value <= 0:
        fail(param, f"must be a number > 0, got {value}")
    return value


def non_negative_float(ctx: typer.Context, param: typer.CallbackParam, value: Optional[float]) -> Optional[float]:
    """A finite number >= 0."""
    if value is None or _completing(ctx):
        return value
    if not math.isfinite(value) or value < 0:
        fail(param, f"must be a number >= 0, got {value}")
    return value


def input_size(ctx: typer.Context, param: typer.CallbackParam, value: Optional[int]) -> Optional[int]:
    """A model input height / width: a positive multiple of 32, the rule of ``config.InputSize``."""
    if value is None or _completing(ctx):
        return value
    if value <= 0 or value % SIZE_MULTIPLE:
        near = max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        fail(
            param,
            f"must be a positive multiple of {SIZE_MULTIPLE} (the FPN's coarsest stride), got {value}",
            f"try {near}",
        )
    return value


# ----------------------------------------------------------------------------------------- names and lists
def choice(names: Sequence[str], what: str = "value", hint: Optional[str] = None) -> Callback:
    """One of ``names`` (case-sensitive); the message lists them all (``hint`` replaces "choose A, B or C")."""
    names = tuple(names)
    hint = hint or f"choose {_or(names)}"

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
        if value is None or _completing(ctx):
            return value
        if value not in names:
            fail(param, f"{value!r} is not a known {what}; {hint}")
        return value

    return check


backend = choice(BACKENDS, "backend")
model_name = choice(MODEL_NAMES, "model")


def device(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """A torch device: cpu, cuda or cuda:N."""
    if value is None or _completing(ctx):
        return value
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        fail(param, f"{value!r} is not a device; use cpu, cuda or cuda:N")
    return value


# The PyTorch backend on a GPU (infer, eval, compare, bench): one help text per option, shared by the commands
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICE_HELP = "PyTorch checkpoints: cpu, cuda or cuda:N (exports and engines pick their own device)."
PRECISION_HELP = (
    "PyTorch on a GPU: the layers in fp32, fp16 or bf16 (the glue stays fp32, as in the TensorRT fp16 builds)."
)
CUDA_GRAPH_HELP = (
    "PyTorch on a GPU: capture one CUDA graph per batch size and replay it (sync-free NMS). A TensorRT engine:"
    " replay each batch's engine run and output download from a CUDA graph (like trtexec --useCudaGraph)."
)
GPU_DECODE_HELP = (
    "PyTorch on a GPU, or a fused TensorRT engine (with --device cuda): decode JPEGs and letterbox them on the GPU;"
    " other formats on the host. Decoder: nvImageCodec (the gpu-decode extra; a TensorRT engine needs it), else"
    " torchvision's decode_jpeg for PyTorch."
)
GPU_POST_HELP = (
    "PyTorch on a GPU, or a fused TensorRT engine (with --device cuda): map boxes back, paste and threshold masks"
    " and run-length encode them on the GPU; only boxes, scores, classes and RLE runs come back to the host. With an"
    " engine and torch (CUDA) installed, --gpu-decode then decodes with the PyTorch backend's GPU letterbox; without"
    " torch, the masks are pasted by a CUDA kernel compiled with NVRTC (nvidia-cuda-nvrtc): lower latency per image,"
    " lower throughput over a folder (its host half runs in the main process; measured in docs/e2e.md)."
)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # backends.torch_cuda.COMPILE_MODES
COMPILE_HELP = (
    "PyTorch on a GPU: torch.compile the sync-free forward in this mode (default or max-autotune-no-cudagraphs)"
    " before the CUDA graph captures it; compiles once per batch size (minutes). Off unless given."
)
compile_mode = choice(COMPILE_MODES, "compile mode")


def torch_gpu(
    device: str,
    precision: str,
    cuda_graph: bool,
    gpu_decode: bool,
    gpu_post: bool = False,
    compile: Optional[str] = None,
) -> dict:
    """The options above as ``Detector.load`` keywords; a GPU-only option without ``--device cuda`` is an error."""
    if not device.startswith("cuda"):
        for name, on in (
            ("--precision " + precision, precision != "fp32"),
            ("--gpu-decode", gpu_decode),
            ("--gpu-post", gpu_post),
            ("--compile", compile is not None),
        ):
            if on:
                raise UserError(f"{name} needs a GPU", where=name.split()[0], fix="add --device cuda")
    gpu = {
        "device": device,
        "precision": precision,
        "cuda_graph": cuda_graph,
        "gpu_decode": gpu_decode,
        "gpu_post": gpu_post,
    }
    if compile is not None:
        gpu["compile"] = compile
    return gpu


def device_or_auto(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """``auto`` or a torch device."""
    if value is None or _completing(ctx) or value == "auto":
        return value
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        fail(param, f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


def parse_int_list(text: str, where: str = "--batch") -> List[int]:
    """``"1,8,16"`` -> ``[1, 8, 16]`` (order kept, duplicates dropped); every entry a positive integer."""
    out: List[int] = []
    parts = [p.strip() for p in str(text).split(",")]
    for part in parts:
        if not part and len(parts) > 1:
            continue
        try:
            n = int(part)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"{text!r}: expected comma-separated positive integers such as 1,8,16", where=where)
        if n not in out:
            out.append(n)
    if not out:
        raise UserError(f"{text!r}: expected comma-separated positive integers such as 1,8,16", where=where)
    return out


def positive_int_list(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """A comma-separated list of positive integers such as ``1,8,16`` (kept as text; parse it with
    :func:`parse_int_list`)."""
    if value is None or _completing(ctx):
        return value
    parse_int_list(value, option_name(param))
    return value


def parse_batch_range(text: str, where: str = "--batch", opt: bool = False) -> Tuple[int, ...]:
    """``"8"`` -> (8, 8), ``"1:8"`` -> (1, 8); with ``opt`` also ``"1:4:8"`` -> (1, 4, 8) and the result
    is always (MIN, OPT, MAX). Each number >= 1 and MIN <= (OPT <=) MAX."""
    form = "N, MIN:MAX or MIN:OPT:MAX" if opt else "N or MIN:MAX"
    parts = str(text).split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"expected {form} (e.g. 1:8), got {text!r}", where=where) from None
    if len(nums) > (3 if opt else 2):
        raise UserError(f"expected {form} (e.g. 1:8), got {text!r}", where=where)
    if len(nums) == 1:
        nums = nums * 2
    if opt and len(nums) == 2:
        nums = [nums[0], nums[1], nums[1]]
    if nums[0] < 1 or any(a > b for a, b in zip(nums, nums[1:])):
        rule = "1 <= MIN <= OPT <= MAX" if opt else "1 <= MIN <= MAX"
        raise UserError(f"batch sizes must satisfy {rule}, got {text!r}", where=where)
    return tuple(nums)


def batch_range(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """A batch size N or a dynamic range MIN:MAX (kept as text)."""
    if value is not None and not _completing(ctx):
        parse_batch_range(value, option_name(param))
    return value


def batch_profile(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """A TensorRT batch profile N, MIN:MAX or MIN:OPT:MAX (kept as text)."""
    if value is not None and not _completing(ctx):
        parse_batch_range(value, option_name(param), opt=True)
    return value


# ------------------------------------------------------------------------------------------------- paths
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, where: str, kind: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable directory."""
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        raise UserError(
            f"cannot create {kind} {path}: {base} is a file, not a directory", where=where, fix="pick another path"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {kind} {path}: {base} is not writable", where=where, fix="pick another path")


def check_output_dir(path: Path, where: str = "--output") -> Path:
    """An output directory: an existing writable directory, or a path where one can be created. Nothing is
    created here (a later bad option would leave it behind); :func:`ensure_output_dir` creates it."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"{path} exists and is not a directory",
                where=where,
                fix="pass a directory (created if missing), or move the file away",
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"output directory {path} is not writable", where=where, fix="pick another directory")
        return path
    _check_creatable(path, where, "directory")
    return path


def ensure_output_dir(path: Path, where: str = "--output") -> Path:
    """:func:`check_output_dir`, then create it (and its parents) if missing."""
    path = check_output_dir(path, where)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {path}: {e.strerror or e}", where=where) from None
    return path


def output_dir(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """``-o DIR``: refused at once when it names a file or cannot be created (see :func:`check_output_dir`)."""
    if value is not None and not _completing(ctx):
        check_output_dir(Path(value), option_name(param))
    return value


def check_output_file(path: Path, where: str = "--output") -> Path:
    """An output file: not a directory, and its folder exists or can be created, writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a file", where=where, fix="pass a file path, e.g. one inside it")
    parent = path.absolute().parent
    if parent.exists():
        if not parent.is_dir():
            raise UserError(f"cannot write {path}: {parent} is a file, not a directory", where=where)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {path}: {parent} is not writable", where=where)
    else:
        _check_creatable(parent, where, "directory")
    return path


def output_file(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """``-o FILE``: refused at once when it names a directory or its folder cannot be written."""
    if value is not None and not _completing(ctx):
        check_output_file(Path(value), option_name(param))
    return value


def input_file(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """An existing regular file."""
    if value is None or _completing(ctx):
        return value
    p = Path(value)
    if not p.exists():
        fail(param, f"file not found: {p} does not exist")
    if not p.is_file():
        fail(param, f"{p} is not a file", "pass the file itself")
    return value


def input_dir(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """An existing directory."""
    if value is None or _completing(ctx):
        return value
    p = Path(value)
    if not p.exists():
        fail(param, f"directory not found: {p} does not exist")
    if not p.is_dir():
        fail(param, f"{p} is not a directory")
    return value


def json_file(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """An existing file that is not obviously binary (the full JSON parse comes with the command's loader)."""
    if value is None or _completing(ctx):
        return value
    input_file(ctx, param, value)
    try:
        with open(value, "rb") as f:
            head = f.read(64)
    except OSError as e:
        fail(param, f"cannot read {value}: {e.strerror or e}")
    kind = binary_kind(head)
    if kind is not None:
        fail(param, f"{value} is {kind}, not a JSON file", "pass the COCO instances .json file")
    return value


# --------------------------------------------------------------------------------------- eval ground truth
def warn(message: str) -> None:
    """One ``warning:`` line on stderr, in the CLI's style."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(message)}")


def validate_ground_truth(gt: Any, spec: Any, path: Any = None) -> List[str]:
    """``rcnn_deploy.evaluation.ground_truth.validate_ground_truth`` with its warnings printed as ``warning:`` lines:
    raises UserError when the model's categories share none with the annotations, warns when they share only
    some or their names differ. Call it once the model is loaded, before running it."""
    from ..evaluation.ground_truth import validate_ground_truth as check

    return check(gt, spec, path, warn=warn)
