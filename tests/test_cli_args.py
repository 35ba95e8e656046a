"""Argument checks at the CLI boundary (rcnn_deploy.tools.args), output file modes under the umask, and the COCO
ground-truth checks eval runs before the model. Everything here is fast: no model is built or run."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from typer.testing import CliRunner

from rcnn_deploy import get_spec
from rcnn_deploy._io import atomic_write_bytes, atomic_write_json
from rcnn_deploy.cli import app
from rcnn_deploy.errors import UserError
from rcnn_deploy.evaluation.ground_truth import check_ground_truth, load_ground_truth, validate_ground_truth

ROOT = Path(__file__).resolve().parents[1]
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the test console's width


def _invoke(args: List[str]) -> Any:
    # a wide console: rich wraps at the width, and a wrap inside a long temp path would split it (COLUMNS is
    # what rich reads when it is not on a terminal)
    return CliRunner().invoke(app, args, env={"COLUMNS": "1000"})


def _assert_user_error(res: Any, option: str, *texts: str) -> None:
    """Exit 2, one ``error:`` line naming ``option``, no traceback."""
    out = _flat(res.output)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert f"error: {option}:" in out, res.output
    for t in texts:
        assert t in out, (t, res.output)


@pytest.fixture()
def place(tmp_path: Path) -> Path:
    """A folder with a plain file ``afile``, a JPEG ``photo.jpg`` and an empty export-like folder ``export``."""
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "photo.jpg").write_bytes(JPEG)
    (tmp_path / "export").mkdir()
    return tmp_path


# ----------------------------------------------------------------------------------------- bad arguments
EXPORT = ["export", "-m", "torchvision-maskrcnn"]


@pytest.mark.parametrize(
    ("args", "option", "text"),
    [
        (EXPORT + ["--first-nms-score-threshold", "nan", "-o", "out"], "--first-nms-score-threshold", "got nan"),
        (EXPORT + ["--first-nms-score-threshold", "-0.5", "-o", "out"], "--first-nms-score-threshold", "0 and 1"),
        (EXPORT + ["--second-nms-score-threshold", "1.5", "-o", "out"], "--second-nms-score-threshold", "0 and 1"),
        (EXPORT + ["--second-nms-score-threshold", "inf", "-o", "out"], "--second-nms-score-threshold", "got inf"),
        (EXPORT + ["--max-detections", "-5", "-o", "out"], "--max-detections", ">= 1, got -5"),
        (EXPORT + ["--max-detections", "0", "-o", "out"], "--max-detections", ">= 1, got 0"),
        (EXPORT + ["--height", "100", "-o", "out"], "--height", "multiple of 32"),
        (EXPORT + ["--width", "0", "-o", "out"], "--width", "multiple of 32"),
        (EXPORT + ["--batch", "4:2", "-o", "out"], "--batch", "1 <= MIN <= MAX"),
        (EXPORT + ["--batch", "0", "-o", "out"], "--batch", "1 <= MIN <= MAX"),
        (EXPORT + ["--batch", "1:2:4", "-o", "out"], "--batch", "N or MIN:MAX"),
        (EXPORT + ["--graph", "joined", "-o", "out"], "--graph", "choose split or fused"),
        (EXPORT + ["--nms", "fast", "-o", "out"], "--nms", "choose onnx, tensor or plugin"),
        (["export", "-m", "yolo", "-o", "out"], "--model", "choose torchvision-maskrcnn"),
        (EXPORT + ["-o", "afile"], "--output", "exists and is not a directory"),
        (EXPORT + ["-o", "afile/sub"], "--output", "is a file, not a directory"),
        (["infer", "export", "images", "-o", "out", "--nms-threshold", "nan"], "--nms-threshold", "got nan"),
        (["infer", "export", "images", "-o", "out", "--nms-threshold", "2"], "--nms-threshold", "0 and 1"),
        (["infer", "export", "images", "-o", "out", "--mask-threshold", "-0.1"], "--mask-threshold", "0 and 1"),
        (["infer", "export", "images", "-o", "out", "--vis-format", "gif"], "--vis-format", "choose auto, png or jpg"),
        (["infer", "export", "images", "-o", "out", "--batch", "0"], "--batch", ">= 1, got 0"),
        (["infer", "export", "images", "-o", "out", "--backend", "foo"], "--backend", "torch, onnxruntime or tensorrt"),
        (["infer", "export", "images", "-o", "out", "--height", "33"], "--height", "try 32"),
        (["infer", "export", "images", "-o", "out", "-m", "resnet"], "--model", "choose"),
        (["infer", "export", "images", "-o", "afile"], "--output", "exists and is not a directory"),
        (["compare", "export", "--images", "i", "--min-map", "1.01"], "--min-map", "0 and 1"),
        (["compare", "export", "--images", "i", "--min-recall", "nan"], "--min-recall", "got nan"),
        (["compare", "export", "--images", "i", "--min-box-iou", "-1"], "--min-box-iou", "0 and 1"),
        (["compare", "export", "--images", "i", "--min-mask-iou", "7"], "--min-mask-iou", "0 and 1"),
        (["compare", "export", "--images", "i", "--max-score-diff", "nan"], "--max-score-diff", "got nan"),
        (["compare", "export", "--images", "i", "--backend", "tf"], "--backend", "torch, onnxruntime or tensorrt"),
        (["compare", "export", "--images", "i", "--report", "export"], "--report", "is a directory"),
        (["eval", "export", "-a", "photo.jpg"], "--annotations", "photo.jpg is a JPEG image"),
        (["eval", "export", "-a", "missing.json"], "--annotations", "missing.json does not exist"),
        (["eval", "export", "-a", "export"], "--annotations", "is not a file"),
        (["eval", "export", "-a", "afile", "--batch", "0"], "--batch", ">= 1, got 0"),
        (["eval", "export", "-a", "afile", "--max-images", "0"], "--max-images", ">= 1, got 0"),
        (["eval", "export", "-a", "afile", "--backend", "foo"], "--backend", "torch, onnxruntime or tensorrt"),
        (["eval", "export", "-a", "afile", "-o", "export"], "--output", "is a directory"),
        (["bench", "export", "-o", "afile"], "--output", "exists and is not a directory"),
        (["bench", "export", "--batch", "1,8,0"], "--batch", "comma-separated positive integers"),
        (["bench", "export", "--batch", "1,,x"], "--batch", "comma-separated positive integers"),
        (["bench", "export", "--iterations", "0"], "--iterations", ">= 1, got 0"),
        (["bench", "export", "--warmup", "-1"], "--warmup", ">= 0, got -1"),
        (["bench", "export", "--device", "tpu"], "--device", "use cpu, cuda or cuda:N"),
        (["bench", "export", "--backend", "foo"], "--backend", "onnxruntime or tensorrt (an export), torch"),
        (["bench", "export", "--baseline", "yolo"], "--baseline", "choose torchvision"),
        (["demo", "-o", "afile"], "--output", "exists and is not a directory"),
        (["demo", "-o", "out", "-n", "0"], "--images", ">= 1, got 0"),
        (["demo", "-o", "out", "--iterations", "0"], "--iterations", ">= 1, got 0"),
        (["demo", "-o", "out", "--size", "500"], "--size", "try 512"),
        (["demo", "-o", "out", "--backend", "tflite"], "--backend", "choose auto, tensorrt, onnxruntime or torch"),
        (["build", "m.onnx", "-o", "export"], "--output", "is a directory"),
        (["build", "m.onnx", "-o", "e.engine", "--batch", "8:4"], "--batch", "1 <= MIN <= OPT <= MAX"),
        (["build", "m.onnx", "-o", "e.engine", "--precision", "fp8"], "--precision", "choose fp32, fp16, int8 or best"),
        (["build", "m.onnx", "-o", "e.engine", "--workspace", "0"], "--workspace", "> 0"),
        (["build", "m.onnx", "-o", "e.engine", "--opt-level", "6"], "--opt-level", "from 0 to 5"),
        (["build", "m.onnx", "-o", "e.engine", "--calib-images", "0"], "--calib-images", ">= 1"),
        (["build", "m.onnx", "-o", "e.engine", "--calib-batch", "0"], "--calib-batch", ">= 1"),
        (["build", "m.onnx", "-o", "e.engine", "--trt", "onnx"], "--trt", "choose tensorrt or tensorrt_rtx"),
        (["train", "--images", "missing", "--annotations", "afile", "-o", "m.pt"], "--images", "does not exist"),
        (["train", "--images", "export", "--annotations", "photo.jpg", "-o", "m.pt"], "--annotations", "JPEG"),
        (["train", "--images", "export", "--annotations", "afile", "-o", "export"], "--output", "is a directory"),
        (["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--lr", "nan"], "--lr", "> 0"),
        (["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--epochs", "0"], "--epochs", ">= 1"),
        (["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--batch", "0"], "--batch", ">= 1"),
        (
            ["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "-m", "detectron2-maskrcnn"],
            "--model",
            "torchvision-fasterrcnn",
        ),  # noqa: E501
        (
            ["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--optimizer", "adam"],
            "--optimizer",
            "sgd or adamw",
        ),  # noqa: E501
        (
            ["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--compress", "zip"],
            "--compress",
            "int8, fp16 or none",
        ),  # noqa: E501
        (
            ["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--device", "gpu"],
            "--device",
            "auto, cpu, cuda",
        ),  # noqa: E501
        (
            ["train", "--images", "export", "--annotations", "afile", "-o", "m.pt", "--workers", "-1"],
            "--workers",
            ">= 0",
        ),  # noqa: E501
        (["data", "synth", "-o", "afile"], "--out-dir", "exists and is not a directory"),
        (["data", "synth", "-o", "d", "--workers", "0"], "--workers", ">= 1, got 0"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(place: Path, monkeypatch, args: List[str], option: str, text: str):
    monkeypatch.chdir(place)
    res = _invoke(args)
    _assert_user_error(res, option, text)
    assert not (place / "out").exists() and not (place / "d").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["-n", "0"], "num_images must be >= 1"),
        (["--height", "10"], "height must be >= 64"),
        (["--width", "9000"], "width must be <= 8192"),
        (["--min-objects", "5", "--max-objects", "2"], "min_objects (5) must be <= max_objects (2)"),
        (["--image-format", "gif"], "image_format must be one of"),
    ],
)
def test_data_synth_checks_its_numbers_before_writing(place: Path, monkeypatch, args: List[str], text: str) -> None:
    """data synth leaves these to the generator's own checks (their messages name the parameter), which run
    before anything is written."""
    monkeypatch.chdir(place)
    res = _invoke(["data", "synth", "-o", "d"] + args)
    assert res.exit_code == 2 and "Traceback" not in res.output and text in _flat(res.output), res.output
    assert not (place / "d").exists()


def test_backend_message_lists_every_backend(place: Path, monkeypatch) -> None:
    monkeypatch.chdir(place)
    for cmd in (["infer", "export", "images", "-o", "out"], ["eval", "export", "-a", "afile"]):
        res = _invoke(cmd + ["--backend", "foo"])
        _assert_user_error(res, "--backend", "'foo' is not a known backend; choose torch, onnxruntime or tensorrt")
        assert "not an export directory" not in res.output


def test_good_arguments_pass_the_checks(place: Path, monkeypatch) -> None:
    """The callbacks accept the valid edge values (0 and 1, batch 1, MIN:MAX) and get out of the way: the
    command then fails later, on the empty export folder, for that reason and no other."""
    monkeypatch.chdir(place)
    args = ["infer", "export", "photo.jpg", "-o", "new/out", "--nms-threshold", "0", "--mask-threshold", "1"]
    res = _invoke(args + ["--batch", "1", "--backend", "onnxruntime"])
    assert res.exit_code == 2 and "contract.json" in _flat(res.output), res.output
    assert "--nms-threshold" not in res.output and "--output" not in res.output


def test_export_help_names_all_three_nms_variants() -> None:
    res = _invoke(["export", "--help"])
    assert res.exit_code == 0
    out = _flat(res.output.replace("\u2502", " "))  # the help table's column borders
    assert (
        "onnx (standard ONNX ops)" in out and "tensor (plain tensor ops" in out and "plugin (TensorRT plugins)" in out
    )


# ------------------------------------------------------------------------------- -o checked before heavy work
def test_bench_output_file_is_refused_before_the_model_loads(place: Path, monkeypatch) -> None:
    import rcnn_deploy.tools.bench as bench

    def no_load(*a: Any, **k: Any) -> None:
        raise AssertionError("bench loaded the model before checking -o")

    monkeypatch.setattr(bench, "_load_target", no_load)
    res = _invoke(["bench", str(place / "export"), "-o", str(place / "afile"), "--iterations", "1000"])
    _assert_user_error(res, "--output", "afile exists and is not a directory")


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "{d}/export", "-o", "{d}/afile"],
        ["infer", "{d}/export", "{d}/photo.jpg", "-o", "{d}/afile"],
        ["export", "-m", "torchvision-maskrcnn", "-o", "{d}/afile"],
        ["demo", "-o", "{d}/afile"],
    ],
)
def test_output_file_refused_in_a_fresh_process_without_importing_torch(place: Path, args: List[str]) -> None:
    """A real process: exit 2 on -o naming a file, with neither torch nor onnxruntime ever imported."""
    argv = [a.format(d=place) for a in args]
    code = (
        "import sys\n"
        "from rcnn_deploy.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('RESULT', code, 'torch' in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "RESULT 2 False False", p.stdout + p.stderr
    assert "error: --output:" in _flat(p.stdout + p.stderr) and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------ file modes
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture()
def umask():  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask, mask: int, file_mode: int, dir_mode: int) -> None:
    umask(mask)
    out = atomic_write_json(tmp_path / "new" / "sub" / "a.json", {"a": 1})
    assert (
        _mode(out) == file_mode and _mode(tmp_path / "new") == dir_mode and _mode(tmp_path / "new" / "sub") == dir_mode
    )
    existing = tmp_path / "b.bin"
    existing.write_bytes(b"old")
    existing.chmod(0o640)
    atomic_write_bytes(existing, b"new")  # a replaced file gets the default mode too, like any new output
    assert existing.read_bytes() == b"new" and _mode(existing) == file_mode
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(
    importlib.util.find_spec("pycocotools") is None, reason="data synth encodes its masks with pycocotools ([eval])"
)
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_cli_outputs_honour_the_umask(tmp_path: Path, umask, mask: int, file_mode: int, dir_mode: int) -> None:
    pytest.importorskip("PIL")
    umask(mask)
    out = tmp_path / "data"
    res = _invoke(["data", "synth", "-o", str(out), "-n", "2", "--height", "64", "--width", "64"])
    assert res.exit_code == 0, res.output
    dirs = [out, out / "images"]
    files = [out / "annotations.json", *sorted((out / "images").iterdir())]
    assert len(files) == 3
    assert {str(d): oct(_mode(d)) for d in dirs} == {str(d): oct(dir_mode) for d in dirs}
    assert {str(f): oct(_mode(f)) for f in files} == {str(f): oct(file_mode) for f in files}


# ---------------------------------------------------------------------------------------- eval ground truth
def _gt(categories: List[Dict[str, Any]], anns: List[Dict[str, Any]] | None = None) -> Dict[str, Any]:
    if anns is None:
        anns = [{"id": 1, "image_id": 1, "category_id": categories[0]["id"], "bbox": [1, 2, 3, 4], "area": 12.0}]
    return {"images": [{"id": 1, "file_name": "a.png"}], "annotations": anns, "categories": categories}


def test_load_ground_truth_names_the_file_and_the_problem(tmp_path: Path) -> None:
    cases = {
        "photo.json": (JPEG, "is a JPEG image"),
        "latin1.json": ('{"name": "caf\xe9"}'.encode("latin-1"), "not a UTF-8 text file"),
        "empty.json": (b"  \n", "is empty"),
        "broken.json": (b'{"images": [}', "is not valid JSON (line 1, column 13"),
        "results.json": (b'[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]', "results file"),
        "null.json": (
            json.dumps({"images": [], "annotations": None, "categories": []}).encode(),
            "'annotations' is null",
        ),
        "nokey.json": (json.dumps({"images": [], "annotations": []}).encode(), "has no 'categories' list"),
        "notlist.json": (json.dumps({"images": {}, "annotations": [], "categories": []}).encode(), "must be a list"),
    }
    for name, (data, text) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as e:
            load_ground_truth(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and text in str(e.value), (name, str(e.value))
    with pytest.raises(FileNotFoundError, match="annotations file not found"):
        load_ground_truth(tmp_path / "missing.json")
    with pytest.raises(UserError, match="is a directory"):
        load_ground_truth(tmp_path)
    good = _gt([{"id": 1, "name": "a"}])
    (tmp_path / "good.json").write_text("\ufeff" + json.dumps(good))  # a BOM is fine
    assert load_ground_truth(tmp_path / "good.json") == good


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (
            lambda g: g["images"].append({"file_name": "b.png"}),
            "1 of the 2 'images' entries are malformed; the first, images[1], has no 'id'",
        ),  # noqa: E501
        (lambda g: g["images"].append({"id": "7"}), "has 'id' '7', not an integer"),
        (lambda g: g["categories"].append(3), "categories[1], is a JSON number, not an object"),
        (lambda g: g["annotations"][0].pop("bbox"), "annotations[0], has no 'bbox'"),
        (lambda g: g["annotations"][0].update(bbox=[1, 2, 3]), "not [x, y, width, height]"),
        (lambda g: g["annotations"][0].update(bbox=[1, 2, 3, float("nan")]), "not [x, y, width, height]"),
        (lambda g: g["annotations"][0].update(category_id=None), "has no 'category_id'"),
        (lambda g: g["annotations"][0].pop("id"), "has no 'id'"),
    ],
)
def test_malformed_entries_are_reported_with_their_index(change, text: str) -> None:  # type: ignore[no-untyped-def]
    gt = _gt([{"id": 1, "name": "a"}])
    change(gt)
    with pytest.raises(UserError, match="malformed") as e:
        check_ground_truth(gt, "gt.json")
    assert str(e.value).startswith("gt.json: ") and text in str(e.value), str(e.value)


def test_no_shared_category_is_an_error_naming_both_sets() -> None:
    spec = get_spec("torchvision-fasterrcnn", ["__background__", "cat", "dog"])  # category ids 1, 2
    gt = _gt([{"id": 1000, "name": "circle"}, {"id": 1001, "name": "square"}])
    with pytest.raises(UserError) as e:
        validate_ground_truth(gt, spec, "shapes.json", warn=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("shapes.json: none of the model's category ids") and "every AP would be 0" in msg
    assert "1 cat, 2 dog" in msg and "1000 circle, 1001 square" in msg


def test_partial_overlap_other_names_and_missing_masks_warn() -> None:
    seen: List[str] = []
    spec = get_spec("torchvision-maskrcnn", ["__background__", "circle", "square"])  # ids 1, 2; masks
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]},
        {"id": 3, "image_id": 1, "category_id": 9, "bbox": [0, 0, 4, 4]},
    ]
    cats = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "star"}]
    notes = validate_ground_truth(_gt(cats, anns), spec, "shapes.json", warn=seen.append)
    assert notes == seen and len(notes) == 3, notes
    assert "1 annotations have category ids that its 'categories' does not list (9)" in notes[0]
    assert "the model predicts 1 of the 2 categories of shapes.json" in notes[1] and "3 star" in notes[1]
    assert "2 of the 3 annotations of shapes.json have no 'segmentation'" in notes[2]

    coco = get_spec("torchvision-maskrcnn")  # COCO: id 1 is person, 2 bicycle ...
    notes = validate_ground_truth(_gt(cats[:2], anns[:1]), coco, "shapes.json", warn=lambda m: None)
    assert len(notes) == 1 and "expect an mAP near 0" in notes[0]
    assert "id 1: 'person' in the model, 'circle' there" in notes[0]

    placeholder = get_spec("torchvision-fasterrcnn", ["__background__", "class_1", "class_2"])
    assert validate_ground_truth(_gt(cats[:2]), placeholder, warn=lambda m: None) == []  # nothing to compare
    same = get_spec("torchvision-fasterrcnn", ["__background__", "Circle", "square"])
    assert validate_ground_truth(_gt(cats[:2]), same, warn=lambda m: None) == []


def test_pycocotools_fields_are_checked_before_the_run() -> None:
    from rcnn_deploy.evaluation.coco import check_library_fields

    gt = _gt([{"id": 1, "name": "a"}])  # no iscrowd
    check_library_fields(gt, "faster-coco-eval", "gt.json")
    with pytest.raises(UserError, match=r"gt.json: 1 of the 1 annotations have no 'iscrowd'.*faster-coco-eval"):
        check_library_fields(gt, "pycocotools", "gt.json")


# ------------------------------------------------------------------------------ eval: checks before the model
class _NoModel:
    """Stands in for a loaded model in the eval command: has the spec the checks read and records any call.
    The eval command must refuse bad annotations without ever calling it."""

    backend = "test-double"
    batch = 1

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.calls = 0

    def __call__(self, images: List[Any]) -> List[Any]:
        from rcnn_deploy.runtime.detections import Detections

        self.calls += 1
        import numpy as np

        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))] * len(images)

    def stream(self, items: Any, per_image: Any = None, processes: Any = None) -> Any:
        """Detector.stream's interface: every item "detected" with nothing, counted as calls."""
        from rcnn_deploy.runtime.stream import StreamResult

        for it in items:
            r = StreamResult(it, detections=self([None])[0])
            r.extra = per_image(r) if per_image is not None else None
            yield r


@pytest.fixture()
def shapes(tmp_path: Path) -> Path:
    pytest.importorskip("pycocotools")
    from rcnn_deploy.data.synth import generate_synthetic_coco

    return generate_synthetic_coco(tmp_path / "shapes", 2, 64, 64, seed=3)


def _patch_detector(monkeypatch, spec: Any) -> List[_NoModel]:  # type: ignore[no-untyped-def]
    import rcnn_deploy.tools.detector as detector

    made: List[_NoModel] = []

    def load(*a: Any, **k: Any) -> _NoModel:
        made.append(_NoModel(spec))
        return made[-1]

    monkeypatch.setattr(detector, "load_detector", load)
    return made


def test_eval_null_annotations_fail_before_the_model_loads(shapes: Path, monkeypatch) -> None:
    made = _patch_detector(monkeypatch, get_spec("torchvision-maskrcnn"))
    gt = json.loads(shapes.read_text())
    gt["annotations"] = None
    bad = shapes.with_name("null.json")
    bad.write_text(json.dumps(gt))
    res = _invoke(["eval", "export", "-a", str(bad), "--images", str(shapes.parent / "images")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"{bad}: 'annotations' is null" in _flat(res.output) and made == []


def test_eval_refuses_a_model_of_other_categories_before_running_it(shapes: Path, monkeypatch) -> None:
    made = _patch_detector(monkeypatch, get_spec("torchvision-fasterrcnn", ["__background__", "cat", "dog"]))
    gt = json.loads(shapes.read_text())
    for c in gt["categories"]:
        c["id"] += 100
    for a in gt["annotations"]:
        a["category_id"] += 100
    other = shapes.with_name("other.json")
    other.write_text(json.dumps(gt))
    res = _invoke(["eval", "export", "-a", str(other), "--images", str(shapes.parent / "images")])
    out = _flat(res.output)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"error: {other}: none of the model's category ids (1 cat, 2 dog)" in out and "101 " in out
    assert len(made) == 1 and made[0].calls == 0


def test_eval_warns_before_the_run_when_class_names_differ(shapes: Path, monkeypatch) -> None:
    pytest.importorskip("faster_coco_eval")
    made = _patch_detector(monkeypatch, get_spec("torchvision-maskrcnn"))  # COCO classes on the shapes set
    res = _invoke(["eval", "export", "-a", str(shapes), "--library", "faster-coco-eval"])
    out = _flat(res.output)
    assert res.exit_code == 0, res.output
    assert "warning: the model's classes are not the categories of" in out and "expect an mAP near 0" in out
    assert out.index("expect an mAP near 0") < out.index("COCO mAP of export")
    assert made[0].calls == 2


# ------------------------------------------------------------------------------ the checks match the library
def test_size_rule_is_config_input_size() -> None:
    from rcnn_deploy.config import InputSize
    from rcnn_deploy.tools import args

    for v in range(-40, 1400):
        try:
            InputSize(v, 32)
            library_ok = True
        except ValueError:
            library_ok = False
        try:
            args.input_size(None, None, v)  # type: ignore[arg-type]
            cli_ok = True
        except UserError:
            cli_ok = False
        assert cli_ok == library_ok, v


def test_cli_name_lists_match_the_modules_that_use_them() -> None:
    """The commands keep their own copies (the real lists live in modules that import torch or numpy, which
    ``rcnn-deploy --help`` must not load); they must not drift."""
    pytest.importorskip("torch")
    from rcnn_deploy.backends.tensorrt import builder
    from rcnn_deploy.models import checkpoint
    from rcnn_deploy.tools import args, build, demo, train
    from rcnn_deploy.train import engine

    assert set(build.PRECISIONS) == set(builder.PRECISIONS)
    assert set(train.TRAINABLE) == set(engine.TRAINABLE_MODELS) and set(train.OPTIMIZERS) == set(engine.OPTIMIZERS)
    assert set(train.COMPRESSIONS) == set(checkpoint.COMPRESSIONS)
    assert set(demo.BACKENDS) == {"auto", *args.BACKENDS}


def test_parsers_of_lists_and_ranges() -> None:
    from rcnn_deploy.tools.args import parse_batch_range, parse_int_list

    assert parse_int_list("1,8, 16,8") == [1, 8, 16] and parse_int_list("4") == [4]
    for bad in ("", "0", "1,x", "-2", ",", "1.5"):
        with pytest.raises(UserError, match="comma-separated positive integers"):
            parse_int_list(bad)
    assert parse_batch_range("4") == (4, 4) and parse_batch_range("1:8") == (1, 8)
    assert parse_batch_range("2", opt=True) == (2, 2, 2) and parse_batch_range("1:8", opt=True) == (1, 8, 8)
    assert parse_batch_range("1:4:8", opt=True) == (1, 4, 8)
    for bad, opt in (("1:4:8", False), ("0:2", False), ("a", False), ("8:4:16", True), ("1:2:3:4", True)):
        with pytest.raises(UserError):
            parse_batch_range(bad, opt=opt)
