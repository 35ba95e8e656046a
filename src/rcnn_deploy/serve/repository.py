"""Write a Triton Inference Server model repository for an rcnn-deploy model.

Two flavours, one client contract (:mod:`rcnn_deploy.serve.contract`: encoded image bytes in, boxes in
original pixels, scores, classes, class names and COCO-RLE masks out):

* ``python``: one Python-backend model (``model.py`` here, next to this file) that runs
  ``rcnn_deploy.api.Detector`` on whatever ``Detector.load`` takes: an export directory (ONNX Runtime), a
  fused TensorRT engine, a split export with ``backend="tensorrt"``, or a PyTorch checkpoint. Dynamic
  batching, ``instances`` instances, the model files copied into the version directory. It runs on the
  tritonserver of the ``nvidia-pytriton`` wheel as well as in NGC containers.
* ``tensorrt``: for NGC Triton containers (TensorRT backend): the fused engine as a ``tensorrt_plan`` model,
  Python-backend pre-processing (decode + letterbox) and post-processing (un-letterbox, mask paste, RLE)
  models, and an ensemble that ties them under the model name clients call.

Every Python-backend model gets a copy of the ``rcnn_deploy`` package in its version directory, which its
``model.py`` puts first on ``sys.path``: the repository runs the code that wrote it. Its dependencies (numpy,
Pillow, pycocotools and the model's runtime: onnxruntime, tensorrt or torch) come from the Python
environment the Python backend runs in.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .._io import atomic_write_text
from ..errors import UserError
from . import contract as C

FLAVOURS = ("python", "tensorrt")
DEFAULT_NAME = "rcnn_detector"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl")
_TEMPLATES = Path(__file__).resolve().parent
_PACKAGE = _TEMPLATES.parent  # src/rcnn_deploy
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_NUMPY_TO_TRITON = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


@dataclass
class ModelSource:
    """What ``Detector.load`` will be given inside the repository, and the files that make it up."""

    kind: str  # "export" | "engine" | "checkpoint"
    root: Path  # the directory the files are relative to
    files: List[str]  # relative to root, copied into the version directory's "model/" folder
    load: str  # relative to "model/": what Detector.load receives ("." for an export directory)
    contract: Any = None  # rcnn_deploy.contract.Contract for exports and engines
    model: Optional[str] = None  # model name for checkpoints
    engine_meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RepoOptions:
    name: str = DEFAULT_NAME
    max_batch: int = 4
    instances: int = 1
    max_queue_delay_us: int = 2000
    backend: Optional[str] = None  # Detector.load's backend= (python flavour)
    model: Optional[str] = None  # model name for a checkpoint that does not record it
    input_hw: Optional[Tuple[int, int]] = None  # checkpoints: input size (default: the size it records)
    device: str = "cpu"  # python flavour: where the torch model / split glue runs
    max_pixels: int = C.DEFAULT_MAX_PIXELS
    link: bool = False  # symlink the model files instead of copying them (rcnn-deploy serve's temp repository)


# ------------------------------------------------------------------------------------------ model sources
def resolve_source(
    model_path: Union[str, Path], backend: Optional[str] = None, model: Optional[str] = None
) -> ModelSource:
    """Classify ``model_path`` like ``Detector.load`` does and list the files a repository needs."""
    from ..contract import CONTRACT_FILE, Contract

    p = Path(model_path).expanduser()
    if not p.exists():
        raise UserError("not found", where=p, fix="pass an export directory, a built engine or a checkpoint")
    p = p.resolve()
    if p.is_file() and p.suffix.lower() in ENGINE_SUFFIXES and backend in (None, "tensorrt"):
        if not (p.parent / CONTRACT_FILE).is_file():
            raise UserError(
                f"no {CONTRACT_FILE} beside the engine",
                where=p,
                fix="build the engine into its export directory or copy contract.json there",
            )
        c = Contract.load(p.parent)
        files = [CONTRACT_FILE, p.name] + ([p.name + ".json"] if (p.parent / (p.name + ".json")).is_file() else [])
        return ModelSource("engine", p.parent, files, p.name, c, engine_meta=_engine_meta(p))
    directory = p if p.is_dir() else p.parent
    if (directory / CONTRACT_FILE).is_file() and backend in (None, "onnxruntime", "tensorrt"):
        c = Contract.load(directory)
        files = [CONTRACT_FILE]
        for g in c.graphs:
            stem = Path(g.file).stem
            for f in sorted(directory.iterdir()):
                if not f.is_file():
                    continue
                wanted = f.name == g.file or f.name.startswith(g.file + ".")  # the graph and its external data
                if backend == "tensorrt":  # split engines: each graph's ONNX name with .engine, and sidecars
                    wanted = wanted or f.name in (stem + ".engine", stem + ".engine.json")
                if wanted and f.name not in files:
                    files.append(f.name)
            if not (directory / g.file).is_file() and backend != "tensorrt":
                raise UserError(f"the contract's graph {g.file} is missing", where=directory, fix="re-export")
        return ModelSource("export", directory, files, ".", c)
    if p.is_dir():
        raise UserError(
            "not an export directory (no contract.json)",
            where=p,
            fix="pass 'rcnn-deploy export' output, a built engine or a checkpoint file",
        )
    if backend not in (None, "torch"):
        raise UserError(f"backend {backend!r} needs an export directory", where=p, fix="use --backend torch")
    if model is None:
        from ..models.checkpoint import checkpoint_model_name

        model = checkpoint_model_name(p)
    if model is None:
        raise UserError(
            "a checkpoint that does not name its model",
            where=p,
            fix="pass --model (e.g. torchvision-maskrcnn) or an export directory",
        )
    return ModelSource("checkpoint", p.parent, [p.name], p.name, None, model=model)


def _engine_meta(engine: Path) -> Dict[str, Any]:
    import json

    side = Path(str(engine) + ".json")
    if not side.is_file():
        return {}
    try:
        return dict(json.loads(side.read_text(encoding="utf-8")))
    except ValueError as e:
        raise UserError(f"sidecar is not valid JSON ({e})", where=side, fix="rebuild the engine") from None


# ------------------------------------------------------------------------------------------ config text
def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(d: List[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in d) + " ]"


def _tensors(kind: str, items: List[Tuple[str, str, List[int]]]) -> str:
    body = ",\n".join(f"  {{\n    name: {_q(n)}\n    data_type: {t}\n    dims: {_dims(d)}\n  }}" for n, t, d in items)
    return f"{kind} [\n{body}\n]\n"


def _params(params: Dict[str, str]) -> str:
    return "".join(
        f"parameters: {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(v)} }}\n}}\n" for k, v in params.items()
    )


def _batching(opts: RepoOptions) -> str:
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(opts.max_queue_delay_us)}\n}}\n"


def _instances(count: int, kind: str) -> str:
    return f"instance_group [\n  {{\n    count: {int(count)}\n    kind: {kind}\n  }}\n]\n"


def _contract_io() -> Tuple[List[Tuple[str, str, List[int]]], List[Tuple[str, str, List[int]]]]:
    ins = [(C.INPUT, "TYPE_STRING", [1])]
    outs = [(n, *C.OUTPUT_TYPES[n]) for n in C.OUTPUTS]
    return ins, outs


def python_model_config(opts: RepoOptions, params: Dict[str, str]) -> str:
    ins, outs = _contract_io()
    return (
        f"# rcnn-deploy python flavour: rcnn_deploy.api.Detector in Triton's Python backend\n"
        f'name: {_q(opts.name)}\nbackend: "python"\nmax_batch_size: {int(opts.max_batch)}\n'
        + _tensors("input", ins)
        + _tensors("output", outs)
        + _batching(opts)
        + _instances(opts.instances, "KIND_CPU")
        + _params(params)
    )


def validate_config(text: str, where: Union[str, Path] = "config.pbtxt") -> Any:
    """Parse ``text`` with Triton's own model-config protobuf (ships with tritonclient[grpc]); returns the
    ``ModelConfig`` message. Raises UserError when it does not parse."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"not a valid Triton model config: {e}", where=where) from None


# ------------------------------------------------------------------------------------------ writing
def _check_opts(opts: RepoOptions) -> None:
    if not _NAME_RE.match(opts.name):
        raise UserError(f"model name {opts.name!r} has characters Triton does not allow", where="--name")
    if opts.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {opts.max_batch}", where="--max-batch")
    if opts.instances < 1:
        raise UserError(f"--instances must be >= 1, got {opts.instances}", where="--instances")
    if opts.max_queue_delay_us < 0:
        raise UserError("the queue delay must be >= 0 microseconds", where="--max-queue-delay-us")
    if opts.max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {opts.max_pixels}", where="--max-pixels")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError("the output folder is not empty", where=out, fix="pass --overwrite or another -o")
        if not out.is_dir():
            raise UserError("exists and is not a folder", where=out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def bundle_package(dst: Path) -> Path:
    """Copy the ``rcnn_deploy`` package (Python sources only) to ``dst/rcnn_deploy``."""
    target = dst / "rcnn_deploy"
    shutil.copytree(_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    return target


def _place(src: ModelSource, dst: Path, link: bool) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for rel in src.files:
        s, d = src.root / rel, dst / rel
        if link:
            os.symlink(s, d)
        else:
            shutil.copy2(s, d)


def _write_config(path: Path, text: str) -> None:
    with contextlib.suppress(ImportError):  # without tritonclient the tests still validate every config
        validate_config(text, path)
    atomic_write_text(path, text)


def write_python_repo(
    model_path: Union[str, Path], out: Union[str, Path], opts: RepoOptions, overwrite: bool = False
) -> Path:
    """The ``python`` flavour (see the module doc). Returns the model's directory."""
    _check_opts(opts)
    src = resolve_source(model_path, opts.backend, opts.model)
    out = Path(out)
    _prepare_out(out, overwrite)
    model_dir = out / opts.name
    version = model_dir / "1"
    version.mkdir(parents=True)
    _place(src, version / "model", opts.link)
    shutil.copy2(_TEMPLATES / "model.py", version / "model.py")
    bundle_package(version)
    params = {
        "model_path": "model" if src.load == "." else f"model/{src.load}",
        "backend": opts.backend or "",
        "model": src.model or "",
        "input_hw": "" if opts.input_hw is None else f"{int(opts.input_hw[0])},{int(opts.input_hw[1])}",
        "device": opts.device,
        "max_pixels": str(int(opts.max_pixels)),
        "source": str(Path(model_path)),
    }
    _write_config(model_dir / "config.pbtxt", python_model_config(opts, params))
    return model_dir


def write_tensorrt_repo(
    model_path: Union[str, Path], out: Union[str, Path], opts: RepoOptions, overwrite: bool = False
) -> Path:
    """The ``tensorrt`` flavour (see the module doc): ``<name>`` (ensemble), ``<name>_preprocess``,
    ``<name>_engine`` (tensorrt_plan) and ``<name>_postprocess``. Returns the ensemble's directory."""
    _check_opts(opts)
    p = Path(model_path).expanduser()
    if p.is_dir():
        engines = sorted(f for f in p.iterdir() if f.suffix.lower() in ENGINE_SUFFIXES)
        if len(engines) != 1:
            raise UserError(
                f"the tensorrt flavour needs one fused engine; this folder has {len(engines)}",
                where=p,
                fix="pass the engine file (rcnn-deploy build out/model.onnx -o out/model.engine --batch 1:4:8)",
            )
        p = engines[0]
    if p.suffix.lower() not in ENGINE_SUFFIXES:
        raise UserError(
            "the tensorrt flavour serves a built TensorRT engine (.engine/.plan)",
            where=p,
            fix="build one with 'rcnn-deploy build', or use --flavour python for exports and checkpoints",
        )
    src = resolve_source(p, "tensorrt")
    c, meta = src.contract, src.engine_meta
    if c.graph != "fused":
        raise UserError("the tensorrt flavour needs a fused export's engine", where=p, fix="export --graph fused")
    if str(meta.get("trt", "tensorrt")) == "tensorrt_rtx":
        raise UserError(
            "a TensorRT-RTX engine: Triton's TensorRT backend runs TensorRT engines only",
            where=p,
            fix="build with TensorRT (the version of your Triton container), or use --flavour python",
        )
    lo, hi = _engine_batch(c, meta)
    if lo > 1:
        raise UserError(
            f"the engine's batch profile starts at {lo}; Triton sends any batch from 1",
            where=p,
            fix="rebuild with --batch 1:OPT:MAX",
        )
    opts.max_batch = min(opts.max_batch, hi)
    graph = c.graph_for("fused")
    (image_in,) = graph.inputs
    raw = [(t.name, _triton_type(t.dtype, p), [int(v) for v in t.shape[1:]]) for t in graph.outputs]
    for _, _, dims in raw:
        if any(v < 0 for v in dims):
            raise UserError("the engine has a dynamic non-batch output dim; Triton configs need them fixed", where=p)
    out = Path(out)
    _prepare_out(out, overwrite)
    name = opts.name
    pre, eng, post = f"{name}_preprocess", f"{name}_engine", f"{name}_postprocess"
    ins, outs = _contract_io()
    hw_t = ("ORIGINAL_HW", "TYPE_INT32", [2])
    img_t = (image_in.name, _triton_type(image_in.dtype, p), [int(v) for v in image_in.shape[1:]])
    common = {"max_pixels": str(int(opts.max_pixels)), "image_tensor": image_in.name}

    def py_model(model: str, template: str, inputs: list, outputs: list, comment: str) -> None:
        d = out / model
        v = d / "1"
        v.mkdir(parents=True)
        shutil.copy2(_TEMPLATES / template, v / "model.py")
        shutil.copy2(src.root / "contract.json", v / "contract.json")
        bundle_package(v)
        text = (
            f'# {comment}\nname: {_q(model)}\nbackend: "python"\nmax_batch_size: {opts.max_batch}\n'
            + _tensors("input", inputs)
            + _tensors("output", outputs)
            + _batching(opts)
            + _instances(opts.instances, "KIND_CPU")
            + _params(common)
        )
        _write_config(d / "config.pbtxt", text)

    py_model(pre, "pre_model.py", ins, [img_t, hw_t], "rcnn-deploy: decode + letterbox (Python backend)")
    py_model(post, "post_model.py", [*raw, hw_t], outs, "rcnn-deploy: un-letterbox, mask paste, RLE (Python backend)")

    ev = out / eng / "1"
    ev.mkdir(parents=True)
    (shutil.copy2 if not opts.link else os.symlink)(p.resolve(), ev / "model.plan")
    trt_version = meta.get("trt_version", "unknown")
    eng_text = (
        f"# rcnn-deploy: the fused engine ({p.name}, built by TensorRT {trt_version}); the container's TensorRT\n"
        f'# must be that version\nname: {_q(eng)}\nplatform: "tensorrt_plan"\nmax_batch_size: {opts.max_batch}\n'
        + _tensors("input", [img_t])
        + _tensors("output", raw)
        + _batching(opts)
        + _instances(opts.instances, "KIND_GPU")
    )
    _write_config(out / eng / "config.pbtxt", eng_text)

    def maps(kind: str, pairs: List[Tuple[str, str]]) -> str:
        return "".join(f"      {kind} {{\n        key: {_q(k)}\n        value: {_q(v)}\n      }}\n" for k, v in pairs)

    raw_names = [n for n, _, _ in raw]
    steps = [
        (
            pre,
            maps("input_map", [(C.INPUT, C.INPUT)])
            + maps("output_map", [(image_in.name, "_images"), ("ORIGINAL_HW", "_hw")]),
        ),
        (eng, maps("input_map", [(image_in.name, "_images")]) + maps("output_map", [(n, f"_{n}") for n in raw_names])),
        (
            post,
            maps("input_map", [*((n, f"_{n}") for n in raw_names), ("ORIGINAL_HW", "_hw")])
            + maps("output_map", [(n, n) for n in C.OUTPUTS]),
        ),
    ]
    body = ",\n".join(f"    {{\n      model_name: {_q(m)}\n      model_version: -1\n{s}    }}" for m, s in steps)
    ens = (
        f"# rcnn-deploy: encoded image bytes -> {pre} -> {eng} (TensorRT) -> {post} -> detections\n"
        f'name: {_q(name)}\nplatform: "ensemble"\nmax_batch_size: {opts.max_batch}\n'
        + _tensors("input", ins)
        + _tensors("output", outs)
        + f"ensemble_scheduling {{\n  step [\n{body}\n  ]\n}}\n"
    )
    (out / name / "1").mkdir(parents=True)
    _write_config(out / name / "config.pbtxt", ens)
    return out / name


def _engine_batch(c: Any, meta: Dict[str, Any]) -> Tuple[int, int]:
    prof = (meta.get("build_config") or {}).get("batch") or list(c.batch)
    return int(prof[0]), int(prof[-1])


def _triton_type(dtype: str, where: Path) -> str:
    t = _NUMPY_TO_TRITON.get(str(dtype))
    if t is None:
        raise UserError(f"tensor dtype {dtype!r} has no Triton type here", where=where)
    return t


def write_repo(
    model_path: Union[str, Path], out: Union[str, Path], flavour: str, opts: RepoOptions, overwrite: bool = False
) -> Path:
    if flavour == "python":
        return write_python_repo(model_path, out, opts, overwrite)
    if flavour == "tensorrt":
        return write_tensorrt_repo(model_path, out, opts, overwrite)
    raise UserError(f"unknown flavour {flavour!r}", where="--flavour", fix=f"use one of {', '.join(FLAVOURS)}")
