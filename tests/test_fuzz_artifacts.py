"""Damaged artifacts, every one run through the CLI: 0 uncaught exceptions, 0 hangs, 0 silent wrong results.

One tiny Mask R-CNN export (64 x 64, fused graph, ONNX Runtime) is made once; then each case damages one
artifact and runs ``rcnn-deploy infer`` (contracts, ONNX graphs, engine sidecars) or ``rcnn-deploy export``
(weight files) in-process under a per-case time limit. Each case must end in one of:

* a clear error: exit status 2 and an ``error:`` line that names the damaged file;
* harmless: exit 0 with exactly the undamaged export's detections;
* changed as asked: exit 0 with other detections, only for the contract fields the runtime reads on purpose
  (class names and ids, mask threshold and paste, the letterbox fill colour = pixel mean);
* accepted, undetectable: a weight file of a format without checksums (Detectron2 .pkl, legacy .pth) whose
  tensor bytes changed: the load cannot tell, the export runs (said so in the report);
* passed every check before deserialization: engine cases whose sidecar damage is harmless; the engine bytes
  here are a stand-in (TensorRT cannot deserialize engines without a GPU), so such a case ends in the
  runtime's own "could not deserialize" error, itself a clear error.

Anything else (a traceback, a hang, other detections after a harmless-looking edit, an error that does not
name the file) fails the test. A flipped byte in a graph must be refused by its sha256.

A kill test SIGKILLs ``rcnn-deploy export`` subprocesses at every named point of the export writer
(``RCNN_DEPLOY_EXPORT_CRASH_AT``) and at timed moments: the output directory is always the old complete
export or the new complete one, with no temporary files inside.

When all of the module's tests ran, it writes docs/reliability/artifacts.md (atomically).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import pickle
import platform
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from rcnn_deploy._io import atomic_write_text  # noqa: E402
from rcnn_deploy.cli import app  # noqa: E402
from rcnn_deploy.contract import Contract, verify_graph_file  # noqa: E402

pytestmark = pytest.mark.full  # the slow tier (see pyproject's pytest config)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability" / "artifacts.md"
HW = 64
CASE_LIMIT_S = 120.0  # per case: a weights case that is accepted runs a whole export
RUNNER = CliRunner(env={"COLUMNS": "100000"})  # no line wrapping: an error line stays one line

# Contract fields the runtime reads on purpose at inference: editing them may change the output.
RUNTIME_FIELDS = ("spec.class_names", "spec.label_ids", "spec.category_ids", "spec.mask_threshold")
RUNTIME_FIELDS += ("spec.mask_paste", "spec.pixel_mean")

CLEAR, HARMLESS, CHANGED, UNDETECTABLE, DESERIALIZE = (
    "clear error",
    "harmless",
    "changed as asked",
    "accepted, undetectable",
    "passed checks (stopped at deserialization)",
)
UNCAUGHT, HANG, UNCLEAR, SILENT = "uncaught exception", "hang", "error not naming the file", "silent wrong result"
GOOD = (CLEAR, HARMLESS, CHANGED, UNDETECTABLE, DESERIALIZE)


@dataclass
class Case:
    category: str
    name: str
    target: Path  # the damaged file: a clear error names it
    outcome: str = ""
    message: str = ""
    seconds: float = 0.0
    peak_mb: Optional[float] = None
    size: Optional[int] = None


REPORT: Dict[str, Any] = {}


# ------------------------------------------------------------------------------------------------ running
class _Timeout(BaseException):
    pass


def _invoke(args: List[str], limit: float = CASE_LIMIT_S) -> Tuple[Any, float]:
    """The CLI in-process under a SIGALRM time limit: (result or None after a hang, seconds)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    t0 = time.perf_counter()
    try:
        res = RUNNER.invoke(app, args, catch_exceptions=True)
    except _Timeout:
        res = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return res, time.perf_counter() - t0


def _judge(case: Case, res: Any, seconds: float, same_output: Optional[Callable[[], bool]] = None) -> None:
    """Classify one CLI result (see the module docstring)."""
    case.seconds = seconds
    if res is None:
        case.outcome, case.message = HANG, f"no result after {CASE_LIMIT_S:.0f} s"
        return
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        case.outcome = UNCAUGHT
        case.message = f"{type(res.exception).__name__}: {str(res.exception)[:300]}"
        return
    errors = [ln.strip() for ln in res.output.splitlines() if ln.strip().startswith("error:")]
    if res.exit_code == 2 and errors:
        case.message = errors[0]
        case.outcome = CLEAR if str(case.target) in errors[0] else UNCLEAR
        return
    if res.exit_code == 0:
        if same_output is None or same_output():
            case.outcome = HARMLESS
        else:
            case.outcome = CHANGED if any(case.name.split(" ", 1)[-1].startswith(f) for f in RUNTIME_FIELDS) else SILENT
        return
    case.outcome = UNCAUGHT
    case.message = f"exit {res.exit_code}: {res.output.strip()[-300:]}"


def _record(category: str, cases: List[Case]) -> None:
    REPORT[category] = cases
    bad = [c for c in cases if c.outcome not in GOOD]
    assert not bad, "\n".join(f"{c.name}: {c.outcome}: {c.message}" for c in bad[:20])


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def kit(tv_mask_model, tmp_path_factory):
    """The tiny export, two images and the undamaged run's detections."""
    from PIL import Image

    from rcnn_deploy import get_spec
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import calibration_images

    _, sd = tv_mask_model
    root = tmp_path_factory.mktemp("fuzz")
    # few proposals and detections: each ONNX Runtime run takes well under a second at 64 x 64
    spec = get_spec("torchvision-maskrcnn", rpn_pre_nms_top_n=50, rpn_post_nms_top_n=50, detections_per_img=5)
    net = DeployRCNN(spec)
    net.load_state_dict(sd)
    export = root / "export"
    contract = export_onnx(net, export, height=HW, width=HW, batch=1, graph="fused", nms="onnx")
    images = root / "images"
    images.mkdir()
    for i, (h, w) in enumerate(((48, 64), (64, 40))):
        rgb = calibration_images(1, h, w, seed=11 + i)[0].permute(1, 2, 0).to(torch.uint8).numpy()
        Image.fromarray(rgb).save(images / f"im{i}.png")
    res, _ = _invoke(["infer", str(export), str(images), "-o", str(root / "baseline")])
    assert res is not None and res.exit_code == 0, res.output if res else "hang"
    baseline = json.loads((root / "baseline" / "results.json").read_text())
    assert len(baseline) > 0, "the undamaged export detects nothing: the comparison would be empty"
    return {"root": root, "export": export, "contract": contract, "images": images, "baseline": baseline}


def _results_equal(kit: Dict[str, Any], out: Path) -> Callable[[], bool]:
    return lambda: json.loads((out / "results.json").read_text()) == kit["baseline"]


def _copy_export(kit: Dict[str, Any], dest: Path) -> Path:
    """A damageable copy: the graphs hard-linked (never written by contract cases), contract.json copied."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in kit["export"].iterdir():
        if p.suffix == ".onnx":
            os.link(p, dest / p.name)
        else:
            shutil.copy2(p, dest / p.name)
    return dest


def _infer(kit: Dict[str, Any], model_path: Path, case: Case, work: Path) -> None:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    res, dt = _invoke(["infer", str(model_path), str(kit["images"]), "-o", str(out)])
    _judge(case, res, dt, _results_equal(kit, out))


# ------------------------------------------------------------------------------------------------ contracts
def _parent(d: Any, path: str) -> Tuple[Any, Any]:
    """The container holding ``path`` (``graphs[0].inputs[1].shape``) and its last key / index."""
    tokens: List[Any] = []
    for part in path.split("."):
        name, *idx = part.replace("]", "").split("[")
        if name:
            tokens.append(name)
        tokens += [int(i) for i in idx]
    for t in tokens[:-1]:
        d = d[t]
    return d, tokens[-1]


def _set(path: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(d: Dict[str, Any]) -> None:
        c, k = _parent(d, path)
        c[k] = copy.deepcopy(value)

    return edit


def _delete(path: str) -> Callable[[Dict[str, Any]], None]:
    def edit(d: Dict[str, Any]) -> None:
        c, k = _parent(d, path)
        del c[k]

    return edit


def _contract_cases(base: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """(name, edit): edit is a function on the parsed contract, or bytes for the whole file."""
    cases: List[Tuple[str, Any]] = []
    top = ["format_version", "model", "graph", "nms", "input_hw", "batch", "spec", "graphs", "opset"]
    top += ["producer", "notes"]
    for k in top:
        cases.append((f"delete {k}", _delete(k)))
    for k in ("role", "file", "sha256", "size", "inputs", "outputs"):
        cases.append((f"delete graphs[0].{k}", _delete(f"graphs[0].{k}")))
    for k in ("name", "shape", "dtype"):
        cases.append((f"delete graphs[0].inputs[0].{k}", _delete(f"graphs[0].inputs[0].{k}")))
        cases.append((f"delete graphs[0].outputs[1].{k}", _delete(f"graphs[0].outputs[1].{k}")))
    spec_deletes = ["name", "flavour", "masks", "class_names", "label_ids", "category_ids", "channel_order"]
    spec_deletes += ["pixel_mean", "pixel_std", "detections_per_img", "mask_roi_size", "mask_threshold"]
    spec_deletes += ["rpn_post_nms_top_n", "box_weights"]
    for k in spec_deletes:
        cases.append((f"delete spec.{k}", _delete(f"spec.{k}")))
    cases.append(("delete graphs[0]", lambda d: d["graphs"].pop(0)))
    cases.append(("delete spec.class_names[5]", lambda d: d["spec"]["class_names"].pop(5)))
    bad_values: List[Any] = ["x", None, [], {}, 1.5, True, -7, float("nan")]
    typed = [
        "format_version",
        "model",
        "graph",
        "nms",
        "input_hw",
        "input_hw[0]",
        "batch",
        "batch[1]",
        "spec",
        "spec.masks",
        "spec.class_names",
        "spec.class_names[3]",
        "spec.pixel_mean",
        "spec.pixel_mean[1]",
        "spec.anchor_sizes",
        "spec.detections_per_img",
        "spec.box_score_thresh",
        "spec.roi_levels",
        "graphs",
        "graphs[0]",
        "graphs[0].file",
        "graphs[0].sha256",
        "graphs[0].size",
        "graphs[0].inputs",
        "graphs[0].inputs[0].shape",
        "graphs[0].inputs[0].shape[2]",
        "graphs[0].outputs[0].dtype",
        "opset",
        "notes",
        "producer",
    ]
    for i, path in enumerate(typed):
        for j in (i % len(bad_values), (i + 3) % len(bad_values)):
            v = bad_values[j]
            cases.append((f"type {path} = {json.dumps(v)}", _set(path, v)))
    g0 = base["graphs"][0]
    ranges: List[Tuple[str, Any]] = [
        ("format_version", 1),
        ("format_version", 3),
        ("format_version", 0),
        ("model", "torchvision-fasterrcnn"),
        ("model", "detectron2-maskrcnn"),
        ("model", "yolo"),
        ("graph", "split"),
        ("nms", "plugin"),
        ("nms", "bogus"),
        ("input_hw", [0, 64]),
        ("input_hw", [65, 64]),
        ("input_hw", [320, 320]),
        ("input_hw", [64 * 4096, 64]),
        ("input_hw", [64, 64, 3]),
        ("batch", [0, 1]),
        ("batch", [2, 1]),
        ("batch", [1, 10**9]),
        ("batch", [4, 4]),
        ("opset", 1000),
        ("spec.box_score_thresh", 2.0),
        ("spec.mask_threshold", -0.5),
        ("spec.pixel_std", [0, 1, 1]),
        ("spec.pixel_mean", [1, 2]),
        ("spec.detections_per_img", 0),
        ("spec.detections_per_img", 10**9),
        ("spec.detections_per_img", 100),
        ("spec.class_names", []),
        ("spec.class_names", ["__background__"]),
        ("spec.channel_order", "BRG"),
        ("spec.flavour", "detectron2"),
        ("spec.masks", False),
        ("spec.name", "torchvision-fasterrcnn"),
        ("spec.mask_roi_size", 10**6),
        ("spec.anchor_sizes", [[32.0], [64.0, 1.0]]),
        ("spec.roi_levels", [5, 2]),
        ("spec.unknown_field", 1),
        ("extra_top_level", "x"),
        ("graphs[0].file", "../escape.onnx"),
        ("graphs[0].file", "/etc/passwd"),
        ("graphs[0].file", "missing.onnx"),
        ("graphs[0].file", "contract.json"),
        ("graphs[0].role", "backbone"),
        ("graphs[0].sha256", "abc"),
        ("graphs[0].sha256", "0" * 64),
        ("graphs[0].sha256", g0["sha256"].upper()),
        ("graphs[0].size", 1),
        ("graphs[0].size", g0["size"] + 1),
        ("graphs[0].size", 10**15),
        ("graphs[0].inputs[0].shape", [1, 3, 32, 32]),
        ("graphs[0].inputs[0].shape", [1, 3, HW, HW, 1]),
        ("graphs[0].inputs[0].dtype", "float16"),
        ("graphs[0].inputs[0].name", "pixels"),
        ("graphs[0].outputs[1].shape", ["batch", 5, 4]),
        ("graphs[0].outputs[1].name", "detection_scores"),
        ("graphs", [g0, g0]),
    ]
    for path, v in ranges:
        cases.append((f"range {path} = {json.dumps(v)[:40]}", _set(path, v)))
    cases.append(
        (
            "consistent input_hw + shape 32x32",
            lambda d: (_set("input_hw", [32, 32])(d), _set("graphs[0].inputs[0].shape", [1, 3, 32, 32])(d)),
        )
    )
    # edits that must not change the output (fused graphs carry thresholds and sizes themselves) or that change
    # it because the runtime reads the field
    harmless: List[Tuple[str, Any]] = [
        ("producer", "hand-edited"),
        ("notes", {"comment": "edited by hand"}),
        ("spec.box_score_thresh", 0.3),
        ("spec.class_names[1]", "human"),
        ("spec.mask_threshold", 0.9),
        ("spec.category_ids[1]", 1000),
        ("spec.pixel_mean", [0.0, 255.0, 0.0]),
    ]
    for path, v in harmless:
        cases.append((f"edit {path} = {json.dumps(v)[:40]}", _set(path, v)))
    text = json.dumps(base, indent=2).encode()
    for frac in (0.0, 0.01, 0.1, 0.33, 0.5, 0.75, 0.9, 0.999):
        cases.append((f"truncate contract.json at {frac:.1%}", text[: int(len(text) * frac)]))
    cases.append(("contract.json: binary garbage", bytes(range(256)) * 4))
    cases.append(("contract.json: not UTF-8", text.replace(b"torchvision", b"torch\xffvision", 1)))
    cases.append(("contract.json: a JSON list", b"[1, 2, 3]"))
    cases.append(("contract.json: nested 100000 deep", b"[" * 100000 + b"]" * 100000))
    cases.append(("contract.json: 5000-digit opset", text.replace(b'"opset": 17', b'"opset": ' + b"9" * 5000)))
    cases.append(("contract.json: NaN pixel mean", text.replace(b'"pixel_mean": [', b'"pixel_mean": [NaN, ', 1)))
    cases.append(
        ("contract.json: Infinity threshold", text.replace(b'"mask_threshold": 0.5', b'"mask_threshold": Infinity'))
    )
    cases.append(("contract.json: byte flip in a key", text.replace(b'"graphs"', b'"grapHs"')))
    return cases


def test_damaged_contracts_through_infer(kit, tmp_path) -> None:
    base = json.loads((kit["export"] / "contract.json").read_text())
    work = tmp_path / "c"
    d = _copy_export(kit, work / "export")
    target = d / "contract.json"
    cases = []
    for name, edit in _contract_cases(base):
        if isinstance(edit, bytes):
            target.write_bytes(edit)
        else:
            damaged = copy.deepcopy(base)
            edit(damaged)
            target.write_text(json.dumps(damaged, indent=2))
        case = Case("contract.json", name, target)
        _infer(kit, d, case, work)
        cases.append(case)
    _record("contract.json", cases)
    zeros = _find(cases, 'range graphs[0].sha256 = "0000')
    assert zeros.outcome == CLEAR and "sha256" in zeros.message  # a wrong digest refuses the graph
    v1 = _find(cases, "range format_version = 1")
    assert v1.outcome == CLEAR and "re-export" in v1.message
    assert "graphs[0].inputs[0].shape" in _find(cases, "delete graphs[0].inputs[0].shape").message  # the field path
    assert "input_hw" in _find(cases, "range input_hw = [320, 320]").message
    assert _find(cases, "edit producer").outcome == HARMLESS


def _find(cases: List[Case], prefix: str) -> Case:
    return next(c for c in cases if c.name.startswith(prefix))


# ------------------------------------------------------------------------------------------------ ONNX graphs
def test_damaged_onnx_through_infer(kit, tmp_path) -> None:
    rng = np.random.default_rng(7)
    graph = kit["export"] / kit["contract"].graphs[0].file
    data = graph.read_bytes()
    n = len(data)
    variants: List[Tuple[str, Optional[bytes]]] = []
    for cut in (0, 1, 16, 4096, n // 10, n // 2, n - 4096, n - 1):
        variants.append((f"truncate to {cut} bytes", data[:cut]))
    variants.append(("append 1 byte", data + b"\x00"))
    variants.append(("append 4 KiB", data + bytes(4096)))
    for pos in sorted(int(p) for p in rng.integers(0, n, 22)):
        b = bytearray(data)
        b[pos] ^= 0xFF
        variants.append((f"byte flip at {pos}", bytes(b)))
    for pos in sorted(int(p) for p in rng.integers(0, n, 4)):
        b = bytearray(data)
        b[pos] ^= 1 << int(pos % 8)
        variants.append((f"bit flip at {pos}", bytes(b)))
    b = bytearray(data)
    b[n // 3 : n // 3 + 64] = bytes(64)
    variants.append(("64 bytes zeroed", bytes(b)))
    tiny = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["images"], ["num_detections"])],
            "tiny",
            [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, HW, HW])],
            [onnx.helper.make_tensor_value_info("num_detections", onnx.TensorProto.FLOAT, [1, 3, HW, HW])],
        )
    ).SerializeToString()
    variants.append(("replaced by another valid ONNX", tiny))
    variants.append(("deleted", None))
    work = tmp_path / "o"
    d = _copy_export(kit, work / "export")
    target = d / graph.name
    cases = []
    for name, content in variants:
        target.unlink(missing_ok=True)
        if content is not None:
            target.write_bytes(content)
        case = Case("ONNX graph", name, target)
        _infer(kit, d, case, work)
        cases.append(case)
    # a directory where the graph should be
    target.unlink(missing_ok=True)
    target.mkdir()
    case = Case("ONNX graph", "a directory instead of the file", target)
    _infer(kit, d, case, work)
    cases.append(case)
    _record("ONNX graph", cases)
    flips = [c for c in cases if "flip" in c.name or "zeroed" in c.name]
    assert flips and all(c.outcome == CLEAR and "sha256" in c.message for c in flips), [
        (c.name, c.message) for c in flips if "sha256" not in c.message
    ]


# ------------------------------------------------------------------------------------------------ engine sidecars
def test_damaged_engine_sidecars_through_infer(kit, tmp_path) -> None:
    pytest.importorskip("tensorrt_rtx")
    from rcnn_deploy.backends.tensorrt.builder import BuildConfig, engine_sidecar
    from rcnn_deploy.backends.tensorrt.compat import load_trt

    trt = load_trt()
    work = tmp_path / "s"
    d = _copy_export(kit, work / "export")
    g = kit["contract"].graphs[0]
    engine = d / "model.engine"
    # A stand-in for the engine's bytes: TensorRT cannot deserialize any engine without a GPU, and every
    # check under test here runs before deserialization, on the sidecar, the file's digest and the contract.
    blob = b"rcnn-deploy stand-in engine bytes\n" + bytes(range(256)) * 64
    engine.write_bytes(blob)
    inputs = [{"name": t.name, "shape": list(t.shape), "dtype": "DataType.FLOAT"} for t in g.inputs]
    outputs = [{"name": t.name, "shape": list(t.shape), "dtype": "DataType.FLOAT"} for t in g.outputs]
    side = engine_sidecar(engine, blob, d / g.file, trt, BuildConfig(precision="fp16"), inputs, outputs)
    side_path = Path(str(engine) + ".json")
    variants: List[Tuple[str, Any]] = []
    for k in list(side):
        variants.append((f"delete {k}", _delete(k)))
    for k, v in [
        ("trt", "tensorrt" if trt.name != "tensorrt" else "tensorrt_rtx"),
        ("trt_version", "8.6.1"),
        ("trt_version", 10),
        ("sidecar_version", 1),
        ("engine_sha256", "0" * 64),
        ("engine_sha256", "xyz"),
        ("engine_size", len(blob) + 1),
        ("engine_size", -1),
        ("onnx_sha256", "1" * 64),
        ("compute_capability", "0.1"),
        ("compute_capability", 9),
        ("precision", "fp8"),
        ("build_config", []),
        ("build_config.batch", [1, 1]),
        ("build_config.batch", [1, 2, 4]),
        ("build_config.batch", [4, 2, 1]),
        ("inputs", []),
        ("inputs[0].shape", [1, 3, 320, 320]),
        ("inputs[0].shape", "1x3x64x64"),
        ("inputs[0].name", "pixels"),
        ("outputs", None),
        ("gpu", "NVIDIA H100"),
        ("build_seconds", "slow"),
    ]:
        variants.append((f"set {k} = {json.dumps(v)[:40]}", _set(k, v)))
    text = json.dumps(side, indent=2).encode()
    for frac in (0.0, 0.5, 0.95):
        variants.append((f"truncate sidecar at {frac:.0%}", text[: int(len(text) * frac)]))
    variants.append(("sidecar: binary garbage", bytes(range(256))))
    variants.append(("sidecar: a JSON list", b"[]"))
    cases = []
    for name, edit in [("undamaged", None), *variants, ("no sidecar", "missing")]:
        engine.write_bytes(blob)
        if edit == "missing":
            side_path.unlink()
        elif isinstance(edit, bytes):
            side_path.write_bytes(edit)
        else:
            damaged = copy.deepcopy(side)
            if edit is not None:
                edit(damaged)
            side_path.write_text(json.dumps(damaged, indent=2))
        case = Case("engine sidecar", name, engine)
        _infer(kit, engine, case, work)
        if case.outcome == UNCLEAR and str(side_path) in case.message:
            case.outcome = CLEAR  # the sidecar file is named (the engine path is its prefix)
        if case.outcome == CLEAR and "could not deserialize" in case.message:
            case.outcome = DESERIALIZE
        cases.append(case)
    for name, content in (
        ("engine truncated", blob[: len(blob) // 2]),
        ("engine byte flip", blob[:100] + b"X" + blob[101:]),
    ):
        side_path.write_text(json.dumps(side, indent=2))
        engine.write_bytes(content)
        case = Case("engine sidecar", name, engine)
        _infer(kit, engine, case, work)
        cases.append(case)
    _record("engine sidecar", cases)
    assert _find(cases, "undamaged").outcome == DESERIALIZE  # every check passes on the undamaged sidecar
    flip = _find(cases, "engine byte flip")
    assert "sha256" in flip.message and "rcnn-deploy build" in flip.message
    assert "was built with" in _find(cases, 'set trt_version = "8.6.1"').message
    assert "another export" in _find(cases, "set inputs[0].shape = [1, 3, 320, 320]").message


# ------------------------------------------------------------------------------------------------ weights
def _patch_zip(src: Path, dst: Path, patch: Callable[[str, bytes], bytes]) -> None:
    """Rewrite a torch zip with ``patch(name, data)`` applied to each record (CRCs recomputed)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            out.writestr(info.filename, patch(info.filename, z.read(info)))


def _record_span(path: Path, needle: str) -> Tuple[int, int]:
    """(offset, length) of the first zip record whose name contains ``needle``."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if needle in i.filename)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


@pytest.fixture(scope="module")
def weight_files(tv_faster_model, tmp_path_factory):
    from rcnn_deploy import get_spec
    from rcnn_deploy.models.checkpoint import save_checkpoint
    from rcnn_deploy.models.weights import save_detectron2_pkl

    _, sd = tv_faster_model
    sd = {k: v for k, v in sd.items() if v.is_floating_point()}
    d = tmp_path_factory.mktemp("weights")
    spec = get_spec("torchvision-fasterrcnn")
    files = {
        "zip .pth": d / "tv.pth",
        "legacy .pth": d / "legacy.pth",
        "rcnn-deploy checkpoint": d / "ckpt.pt",
        "Detectron2 .pkl": d / "d2.pkl",
    }
    torch.save(sd, files["zip .pth"])
    torch.save(sd, files["legacy .pth"], _use_new_zipfile_serialization=False)
    save_checkpoint(
        files["rcnn-deploy checkpoint"],
        sd,
        model="torchvision-fasterrcnn",
        class_names=spec.class_names,
        category_ids=spec.category_ids,
        input_hw=(HW, HW),
        compress="int8",
    )
    save_detectron2_pkl(files["Detectron2 .pkl"], sd)
    return d, files, sd


def _weights_variants(files: Dict[str, Path], sd: Dict[str, Any], d: Path) -> List[Tuple[str, str, Any]]:
    """(format, case name, writer(dst)) for every damaged weight file."""
    out: List[Tuple[str, str, Any]] = []

    def from_bytes(data: bytes) -> Callable[[Path], None]:
        return lambda dst: dst.write_bytes(data)

    for fmt, path in files.items():
        data = path.read_bytes()
        n = len(data)
        for cut in (0, 1, 100, n // 10, n // 2, n - 1):
            out.append((fmt, f"truncate to {cut} bytes", (lambda c, b=data: lambda dst: dst.write_bytes(b[:c]))(cut)))
    # flipped tensor bytes: caught by the zip records' CRC-32s
    for fmt in ("zip .pth", "rcnn-deploy checkpoint"):
        path = files[fmt]
        data = path.read_bytes()
        for needle, frac in (("/data/0", 0.5), ("/data/1", 0.1), ("data.pkl", 0.5)):
            off, length = _record_span(path, needle)
            pos = off + int(length * frac)
            b = bytearray(data)
            b[pos] ^= 0x55
            out.append((fmt, f"byte flip in record {needle} (offset {pos})", from_bytes(bytes(b))))
    data = files["zip .pth"].read_bytes()
    b = bytearray(data)
    b[-30] ^= 0xFF  # inside the end-of-central-directory record
    out.append(("zip .pth", "byte flip in the zip directory", from_bytes(bytes(b))))
    # bytes torch never reads: the alignment padding of a record's local header ("harmless")
    with zipfile.ZipFile(files["zip .pth"]) as z:
        info = next(i for i in z.infolist() if "/data/0" in i.filename)
    b = bytearray(data)
    b[info.header_offset + 30 + len(info.filename) + 4 + 8] ^= 0xFF
    out.append(("zip .pth", "byte flip in a record's alignment padding", from_bytes(bytes(b))))
    # formats without checksums: a flipped byte in tensor data cannot be detected
    for fmt in ("Detectron2 .pkl", "legacy .pth"):
        data = files[fmt].read_bytes()
        b = bytearray(data)
        pos = int(len(b) * 0.6)
        b[pos] ^= 0x01  # lowest mantissa bit of some weight: a finite value, slightly changed
        out.append((fmt, f"bit flip in tensor data (offset {pos})", from_bytes(bytes(b))))
        b = bytearray(data)
        b[40] ^= 0xFF
        out.append((fmt, "byte flip in the pickle header", from_bytes(bytes(b))))
    # NaN / Inf weights
    name = "roi_heads.box_head.fc6.weight"
    for fmt, bad in (("zip .pth", float("nan")), ("legacy .pth", float("inf")), ("Detectron2 .pkl", float("-inf"))):
        sd2 = dict(sd)
        t = sd2[name].clone()
        t.view(-1)[12345] = bad
        sd2[name] = t

        def write(dst: Path, fmt: str = fmt, t: Any = t) -> None:
            if fmt == "Detectron2 .pkl":  # (the converter refuses non-finite weights itself)
                from rcnn_deploy.models.weights import torchvision_to_detectron2

                model = torchvision_to_detectron2(sd)
                model["roi_heads.box_head.fc1.weight"] = t.numpy()
                with open(dst, "wb") as f:
                    pickle.dump({"model": model, "__author__": "fuzz"}, f, protocol=2)
            else:
                torch.save({**sd, name: t}, dst, _use_new_zipfile_serialization=(fmt == "zip .pth"))

        out.append((fmt, f"{bad} in {name}", write))
    ck = torch.load(files["rcnn-deploy checkpoint"], weights_only=True)
    ck["int8"][next(iter(ck["int8"]))]["scale"][3] = float("nan")
    out.append(("rcnn-deploy checkpoint", "NaN in an int8 scale", lambda dst, ck=ck: torch.save(ck, dst)))
    ck2 = torch.load(files["rcnn-deploy checkpoint"], weights_only=True)
    ck2["class_names"] = 7
    out.append(("rcnn-deploy checkpoint", "class_names edited to a number", lambda dst, ck=ck2: torch.save(ck, dst)))
    # huge declared sizes
    out.append(("Detectron2 .pkl", "96-byte pickle declaring 3.4 GB of bytes", from_bytes(_pkl_binbytes8())))
    out.append(("Detectron2 .pkl", "pickle declaring a 4 GB numpy array", from_bytes(_pkl_huge_array())))
    out.append(("Detectron2 .pkl", "pickle declaring a 3.4 GB string", from_bytes(_pkl_binunicode8())))
    out.append(("Detectron2 .pkl", "object-dtype numpy array", from_bytes(_pkl_object_array())))
    out.append(("Detectron2 .pkl", "pickle calling os.system", from_bytes(b"cos\nsystem\n(S'true'\ntR.")))
    small = d / "small.pth"
    torch.save({"roi_heads.box_predictor.cls_score.weight": torch.randn(10, 10)}, small)
    big = struct.pack("<i", 2_000_000_000)
    out.append(
        (
            "zip .pth",
            "storage numel declared 2e9 (valid CRCs)",
            lambda dst: _patch_zip(
                small, dst, lambda n, b: b.replace(b"K\x64t", b"J" + big + b"t") if n.endswith("data.pkl") else b
            ),
        )
    )
    legacy_small = d / "legacy_small.pth"
    torch.save(
        {"roi_heads.box_predictor.cls_score.weight": torch.randn(3, 4)},
        legacy_small,
        _use_new_zipfile_serialization=False,
    )
    lb = legacy_small.read_bytes()
    out.append(("legacy .pth", "storage numel declared 2e9", from_bytes(lb.replace(b"K\x0cN", b"J" + big + b"N", 1))))

    def huge_directory_size(dst: Path) -> None:
        raw = bytearray(small.read_bytes())
        cd = raw.rfind(b"PK\x01\x02")  # the last central-directory entry: patch its uncompressed size
        raw[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFF0)
        dst.write_bytes(bytes(raw))

    out.append(("zip .pth", "zip directory declaring a 4 GB record", huge_directory_size))
    return out


def _pkl_binbytes8() -> bytes:
    data = b"\x80\x04\x8e" + struct.pack("<Q", 3_400_000_000)
    return data + b"\x00" * (96 - len(data))


def _pkl_binunicode8() -> bytes:
    return b"\x80\x04\x8d" + struct.pack("<Q", 3_400_000_000) + b"abc"


class _HugeArray:
    """Pickles as numpy's own array reconstruction call, declaring a 4 GB array (and no data)."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (1 << 32,), b"b"))


def _pkl_huge_array() -> bytes:
    return pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": _HugeArray()}}, protocol=2)


def _pkl_object_array() -> bytes:
    a = np.array([1, "x"], dtype=object)
    return pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": a}}, protocol=2)


HUGE = ("3.4 GB", "4 GB", "2e9")


def _loaded(path: Path, fmt: str) -> Dict[str, Any]:
    from rcnn_deploy.models.weights import load_checkpoint

    flavour = "detectron2" if fmt == "Detectron2 .pkl" else "torchvision"
    return load_checkpoint(path, flavour, masks=False).state_dict


def test_damaged_weights_through_export(weight_files, tmp_path) -> None:
    d, files, sd = weight_files
    work = tmp_path / "w"
    work.mkdir()
    pristine: Dict[str, Dict[str, Any]] = {}
    cases = []
    for fmt, name, write in _weights_variants(files, sd, d):
        target = work / f"damaged{files[fmt].suffix}"
        target.unlink(missing_ok=True)
        write(target)
        model = "detectron2-fasterrcnn" if fmt == "Detectron2 .pkl" else "torchvision-fasterrcnn"
        out = work / "export"
        shutil.rmtree(out, ignore_errors=True)
        args = ["export", "-m", model, "-w", str(target), "--height", str(HW), "--width", str(HW)]
        args += ["--graph", "split", "-o", str(out)]
        case = Case("weights", f"{fmt}: {name}", target, size=target.stat().st_size)
        huge = any(h in name for h in HUGE)
        if huge:
            tracemalloc.start()
        try:
            res, dt = _invoke(args)
        finally:
            if huge:
                case.peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
                tracemalloc.stop()
        _judge(case, res, dt)
        if case.outcome == HARMLESS:  # the export ran: the weights it read, against the undamaged file's
            if fmt not in pristine:
                pristine[fmt] = _loaded(files[fmt], fmt)
            got = _loaded(target, fmt)
            same = got.keys() == pristine[fmt].keys() and all(torch.equal(got[k], pristine[fmt][k]) for k in got)
            if not same:
                case.outcome = UNDETECTABLE if fmt in ("Detectron2 .pkl", "legacy .pth") else SILENT
        cases.append(case)
        target.unlink(missing_ok=True)
    _record("weights", cases)
    for c in cases:
        if any(h in c.name for h in HUGE):  # refused before anything is allocated
            assert c.outcome == CLEAR and c.peak_mb is not None and c.peak_mb < 64 and c.seconds < 10, c
    crc = [c for c in cases if c.name.startswith("zip .pth: byte flip in record /data/")]
    assert crc and all("CRC-32" in c.message for c in crc)
    nan = _find(cases, "zip .pth: nan in roi_heads.box_head.fc6.weight")
    assert "non-finite" in nan.message and "roi_heads.box_head.fc6.weight" in nan.message


# ------------------------------------------------------------------------------------------------ kill test
def _export_cmd(out: Path, point: Optional[str] = None, fallback: bool = False) -> Tuple[List[str], Dict[str, str]]:
    code = "from rcnn_deploy.cli import main; main()"
    if fallback:  # the non-Linux path: rename the old export aside, the new one into place
        code = "import rcnn_deploy.export.staging as s; s._exchange = lambda a, b: False; " + code
    args = [sys.executable, "-c", code, *_export_args(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RCNN_DEPLOY_EXPORT_CRASH_AT", None)
    if point:
        env["RCNN_DEPLOY_EXPORT_CRASH_AT"] = point
    return args, env


def _state(out: Path, user_file: str) -> Tuple[str, str]:
    """Load ``out`` as a user would: which complete export it holds ("old" / "new"), or what is wrong."""
    missing = not out.exists()
    try:
        c = Contract.load(out)  # (renames back an old export that a killed exporter had set aside)
        for g in c.graphs:
            verify_graph_file(out / g.file)
    except Exception as e:  # the state is what is reported
        return "incomplete", str(e)[:200]
    note = "the old export set aside was renamed back on load" if missing else ""
    names = sorted(p.name for p in out.iterdir())
    hidden = [n for n in names if n.startswith(".")]
    if hidden:
        return "temporary files inside", ", ".join(hidden)
    beside = ["letterbox.onnx"] if c.graph == "fused" and c.spec.resize == "torchvision" else []  # export writes it
    expected = sorted(["contract.json", user_file, *(g.file for g in c.graphs), *beside])
    if names != expected:
        return "unexpected files", ", ".join(sorted(set(names) ^ set(expected)))
    if (out / user_file).read_text() != "keep me":
        return "user file lost", ""
    if c.model == "torchvision-maskrcnn" and c.input_hw == (HW, HW):
        return "old", note
    if c.model == "torchvision-fasterrcnn" and c.input_hw == (96, 96):
        return "new", note
    return "neither old nor new", f"{c.model} {c.input_hw}"


def _export_args(out: Path) -> List[str]:
    return [
        "export",
        "-m",
        "torchvision-fasterrcnn",
        "--height",
        "96",
        "--width",
        "96",
        "--graph",
        "split",
        "-o",
        str(out),
    ]


def test_killed_export_leaves_old_or_new_export(kit, tmp_path) -> None:
    from rcnn_deploy.export.staging import CRASH_POINTS

    user_file = "notes.txt"

    def job(name: str, point: Optional[str], how: str, fallback: bool = False, delay: float = 0.0) -> Dict[str, Any]:
        out = tmp_path / name.replace(" ", "_").replace("%", "") / "out"
        _copy_export(kit, out)
        (out / user_file).write_text("keep me")
        return {"point": name, "how": how, "out": out, "cmd": _export_cmd(out, point, fallback), "delay": delay}

    # a complete run over the old export alone (its time sets the timed kill's delay), then one run killed at
    # each named point of the writer, four processes at a time, then one run alone killed at 80 % of that time
    waves: List[List[Dict[str, Any]]] = [[job("complete run", None, "-")], []]
    for point in CRASH_POINTS:
        fallback = point == "old_aside"  # the point exists only where directories are not swapped atomically
        waves[1].append(job(point, point, "crash hook" + (" (fallback renames)" if fallback else ""), fallback))
    rows: List[Tuple[Any, ...]] = []
    while waves:
        pending, running = waves.pop(0), []
        while pending or running:
            for r in list(running):
                p = r["proc"]
                if r["delay"] and p.poll() is None and time.perf_counter() - r["start"] >= r["delay"]:
                    p.send_signal(signal.SIGKILL)
                if p.poll() is None:
                    continue
                running.remove(r)
                secs = time.perf_counter() - r["start"]
                state, detail = _state(r["out"], user_file)
                code = "killed" if p.returncode == -signal.SIGKILL else f"exit {p.returncode}"
                if p.returncode not in (0, -signal.SIGKILL):
                    detail = (r["out"].parent / "stderr.txt").read_text()[-300:]
                left = sum(q.name.startswith(".") for q in r["out"].parent.iterdir())
                detail = detail or (f"left beside it: {left}" if left else "")
                rows.append((r["point"], r["how"], code, state, detail, secs))
                if r["point"] == "complete run":
                    assert p.returncode == 0, detail
                    waves.append([job("80% of the complete run", None, "SIGKILL after a delay", delay=0.8 * secs)])
            while pending and len(running) < 4:  # each holds a model and its graphs in memory
                r = pending.pop(0)
                args, env = r["cmd"]
                with open(r["out"].parent / "stderr.txt", "w") as log:  # (a pipe nobody reads could block it)
                    r["proc"] = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
                r["start"] = time.perf_counter()
                running.append(r)
            time.sleep(0.1)
    # the next export (in-process) over a killed one clears what the killed process left beside the directory
    out = tmp_path / "old_aside" / "out"
    res, dt = _invoke(_export_args(out))
    left = sorted(q.name for q in out.parent.iterdir() if q.name.startswith("."))
    code = "exit " + (str(res.exit_code) if res is not None else "hang")
    rows.append(("export again after a kill", "in-process", code, *_state(out, user_file), dt))
    REPORT["kill"] = [(*r, left if r[0] == "export again after a kill" else None) for r in rows]
    bad = [r for r in rows if r[3] not in ("old", "new")]
    assert not bad, bad
    assert res is not None and res.exit_code == 0 and not left, (res.output[-1000:] if res else "hang", left)
    by = {r[0]: r[3] for r in rows}
    assert by["complete run"] == "new" and by["swapped"] == "new"
    assert by["staged"] == by["graph_partial"] == by["graphs_written"] == by["contract_written"] == "old"
    assert by["old_aside"] == "old"  # the set-aside old export is renamed back when the directory is loaded


# ------------------------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module", autouse=True)
def _write_report():
    t0 = time.perf_counter()
    yield
    sections = ("contract.json", "ONNX graph", "engine sidecar", "weights", "kill")
    if all(s in REPORT for s in sections):
        atomic_write_text(DOC, _report(time.perf_counter() - t0))


def _clean(text: str) -> str:
    import tempfile

    tmp = str(Path(tempfile.gettempdir()).resolve())
    text = text.replace(tmp, "<tmp>").replace(str(ROOT), "<repo>")
    import re

    text = re.sub(r"<tmp>/pytest-of-[^/]+/pytest-\d+/", "<tmp>/", text)
    return text.replace("|", "\\|")


def _report(seconds: float) -> str:
    cats = ("contract.json", "ONNX graph", "engine sidecar", "weights")
    cols = (CLEAR, HARMLESS, CHANGED, UNDETECTABLE, DESERIALIZE, UNCAUGHT, HANG, UNCLEAR, SILENT)
    all_cases = [c for k in cats for c in REPORT[k]]
    lines = [
        "# Damaged artifacts through the CLI",
        "",
        "Written by `tests/test_fuzz_artifacts.py` (do not edit: the test rewrites it on every full run). "
        f"Last run: {datetime.date.today().isoformat()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {len(all_cases)} damaged artifacts + {len(REPORT['kill'])} export runs of the "
        f"kill test in {seconds:.0f} s.",
        "",
        "Each case damages one artifact of a 64 x 64 Mask R-CNN export (fused graph, ONNX Runtime) or one weight "
        "file, runs `rcnn-deploy infer` (contracts, graphs, engines) or `rcnn-deploy export -w` (weights) in-process"
        f" with a {CASE_LIMIT_S:.0f} s limit, and classifies the result:",
        "",
        f"* **{CLEAR}**: exit 2, one `error:` line naming the damaged file;",
        f"* **{HARMLESS}**: exit 0 with exactly the undamaged export's detections (results.json);",
        f"* **{CHANGED}**: exit 0, other detections, after an edit of a field the runtime reads on purpose "
        f"({', '.join(RUNTIME_FIELDS)});",
        f"* **{UNDETECTABLE}**: changed tensor bytes in a weight format without checksums (Detectron2 .pkl, legacy "
        ".pth): nothing can tell them from the original; the export runs;",
        f"* **{DESERIALIZE}**: engine cases whose sidecar edit is harmless: every check passed and the run reached "
        "TensorRT's deserialization, which fails here (a CPU-only machine, and the engine bytes are a stand-in), "
        "with a clear error;",
        f"* failures: **{UNCAUGHT}**, **{HANG}**, **{UNCLEAR}**, **{SILENT}** (exit 0, other detections after a "
        "harmless-looking edit). The test fails on any of them.",
        "",
        "## Summary",
        "",
        "| artifact | cases | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for k in cats:
        cs = REPORT[k]
        lines.append(f"| {k} | {len(cs)} | " + " | ".join(str(sum(c.outcome == o for c in cs)) for o in cols) + " |")
    lines.append(
        f"| **all** | **{len(all_cases)}** | "
        + " | ".join(f"**{sum(c.outcome == o for c in all_cases)}**" for o in cols)
        + " |"
    )
    lines += ["", "## Representative errors", ""]
    picks = [
        ("contract.json", "delete graphs[0].inputs[0].shape"),
        ("contract.json", "range input_hw = [320, 320]"),
        ("contract.json", "range format_version = 1"),
        ("contract.json", "truncate contract.json at 50.0%"),
        ("ONNX graph", "truncate to 4096 bytes"),
        ("ONNX graph", next(c.name for c in REPORT["ONNX graph"] if c.name.startswith("byte flip"))),
        ("engine sidecar", 'set trt_version = "8.6.1"'),
        ("engine sidecar", "set inputs[0].shape = [1, 3, 320, 320]"),
        ("engine sidecar", "engine byte flip"),
        ("weights", "Detectron2 .pkl: 96-byte pickle declaring 3.4 GB of bytes"),
        (
            "weights",
            next(c.name for c in REPORT["weights"] if c.name.startswith("zip .pth: byte flip in record /data/")),
        ),
        ("weights", "zip .pth: nan in roi_heads.box_head.fc6.weight"),
        ("weights", "legacy .pth: storage numel declared 2e9"),
    ]
    by = {(c.category, c.name): c for c in all_cases}
    for cat, name in picks:
        c = by.get((cat, name))
        if c is not None:
            lines.append(f"* {cat}, *{_clean(name)}*: `{_clean(c.message)}`")
    lines += [
        "",
        "## Kill test",
        "",
        "`rcnn-deploy export` (Faster R-CNN, 96 x 96, split) over a complete Mask R-CNN 64 x 64 export holding a "
        "file of the user's, SIGKILLed at each named point of the writer (`RCNN_DEPLOY_EXPORT_CRASH_AT`) or after "
        "a delay; then the directory is loaded and every graph checked against its sha256.",
        "",
        "| kill point | how | process | directory holds | note | ",
        "|---|---|---|---|---|",
    ]
    for point, how, code, state, detail, secs, left in REPORT["kill"]:
        note = _clean(detail) if detail else ""
        if left is not None:
            note = f"leftovers beside it after this export: {len(left)}"
        if secs:
            note = (note + "; " if note else "") + f"{secs:.0f} s"
        lines.append(f"| {point} | {how} | {code} | {state} export | {note} |")
    lines += ["", "## Weights: memory and time of the huge-declared-size cases", ""]
    lines += ["| case | file bytes | traced peak (MB) | seconds | outcome |", "|---|---:|---:|---:|---|"]
    for c in REPORT["weights"]:
        if c.peak_mb is not None:
            lines.append(f"| {_clean(c.name)} | {c.size} | {c.peak_mb:.2f} | {c.seconds:.2f} | {c.outcome} |")
    lines += ["", "## Every case", "", "| artifact | case | outcome | s | message |", "|---|---|---|---:|---|"]
    for c in all_cases:
        msg = _clean(c.message)
        msg = msg if len(msg) <= 220 else msg[:217] + "..."
        lines.append(f"| {c.category} | {_clean(c.name)} | {c.outcome} | {c.seconds:.2f} | {msg} |")
    return "\n".join(lines) + "\n"
