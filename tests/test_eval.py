"""COCO evaluation: known answers (faster-coco-eval and pycocotools), ``evaluate_detector``, ``rcnn-deploy eval``
and the reference mAP of ``rcnn-deploy compare`` (CPU; ONNX Runtime and PyTorch)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

pytest.importorskip("pycocotools")
pytest.importorskip("faster_coco_eval")

from pycocotools import mask as mask_util  # noqa: E402

from rcnn_deploy.data.synth import generate_synthetic_coco  # noqa: E402
from rcnn_deploy.evaluation.coco import METRIC_NAMES, evaluate_coco  # noqa: E402
from rcnn_deploy.evaluation.dataset import evaluate_detector  # noqa: E402
from rcnn_deploy.evaluation.reference import reference_ground_truth, reference_map  # noqa: E402
from rcnn_deploy.runtime.detections import Detections  # noqa: E402

LIBRARIES = ("faster-coco-eval", "pycocotools")
H = W = 128


# ------------------------------------------------------------------------------------------- hand-made cases
def _rle(x: int, y: int, w: int, h: int) -> Dict[str, Any]:
    m = np.zeros((H, W), np.uint8)
    m[y : y + h, x : x + w] = 1
    r = mask_util.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def _polygon(x: int, y: int, w: int, h: int) -> List[List[int]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]  # pycocotools rasterises it to exactly w * h pixels


def _gt(anns: List[Dict[str, Any]], num_images: int = 2) -> Dict[str, Any]:
    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in range(1, num_images + 1)]
    for k, a in enumerate(anns, start=1):
        a.update(id=k, iscrowd=0, area=a["bbox"][2] * a["bbox"][3])
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def _det(image_id: int, cat: int, x: int, y: int, w: int, h: int, score: float) -> Dict[str, Any]:
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": [x, y, w, h],
        "score": score,
        "segmentation": _rle(x, y, w, h),
    }


def _hand_made_gt() -> Dict[str, Any]:
    # every object is "medium" (32^2 < area < 96^2); polygon and RLE ground-truth masks
    return _gt(
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "segmentation": _polygon(10, 10, 50, 50)},
            {"image_id": 1, "category_id": 2, "bbox": [70, 60, 50, 50], "segmentation": _polygon(70, 60, 50, 50)},
            {"image_id": 2, "category_id": 1, "bbox": [20, 30, 40, 60], "segmentation": _rle(20, 30, 40, 60)},
        ]
    )


@pytest.mark.parametrize("library", LIBRARIES)
def test_known_answer_false_positive_and_partial_overlap(library):
    """Category 1: two objects found, plus a false positive scored above both: precision 0, 1/2, 2/3 at recall
    0, 1/2, 1 -> interpolated precision 2/3 at every recall -> AP 2/3 at every IoU threshold.
    Category 2: one box of IoU 0.72 (50x36 inside 50x50): a match at IoU 0.50 .. 0.70 (5 of the 10
    thresholds), none at 0.75 .. 0.95 -> AP 1/2, AP50 1, AP75 0.
    Mean over the two categories: AP 7/12, AP50 5/6, AP75 1/3. AR100: (1 + 1/2) / 2 = 3/4; AR1 (top-1 per image
    and category: the false positive hides the second category-1 object): (1/2 + 1/2) / 2 = 1/2."""
    results = [
        _det(1, 1, 10, 10, 50, 50, 0.9),
        _det(1, 2, 70, 60, 50, 36, 0.8),
        _det(2, 1, 20, 30, 40, 60, 0.7),
        _det(2, 1, 80, 80, 40, 40, 0.95),  # false positive, highest score
    ]
    out = evaluate_coco(_hand_made_gt(), results, library=library)
    expected = {"AP": 7 / 12, "AP50": 5 / 6, "AP75": 1 / 3, "APs": -1, "APm": 7 / 12, "APl": -1}
    expected.update({"AR1": 1 / 2, "AR10": 3 / 4, "AR100": 3 / 4, "ARs": -1, "ARm": 3 / 4, "ARl": -1})
    for iou_type in ("bbox", "segm"):  # the masks are the boxes' rectangles: the same answer
        assert out[iou_type] == pytest.approx(expected, abs=1e-9), (iou_type, out[iou_type])


@pytest.mark.parametrize("library", LIBRARIES)
def test_known_answer_area_ranges_and_101_point_interpolation(library):
    """One category: a small object found (score 0.9), a large one missed. Recall reaches 1/2 at precision 1:
    COCO's 101-point interpolation gives precision 1 at recall 0, 0.01, ..., 0.50 and 0 above -> AP 51/101.
    APs 1 (the small one is found), APl 0 (the large one is not), APm undefined (-1: no medium object)."""
    gt = _gt(
        [
            {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "segmentation": _rle(5, 5, 20, 20)},
            {"image_id": 1, "category_id": 1, "bbox": [20, 20, 100, 100], "segmentation": _rle(20, 20, 100, 100)},
        ],
        num_images=1,
    )
    out = evaluate_coco(gt, [_det(1, 1, 5, 5, 20, 20, 0.9)], library=library)
    for iou_type in ("bbox", "segm"):
        m = out[iou_type]
        assert m["AP"] == pytest.approx(51 / 101, abs=1e-9) and m["AP50"] == pytest.approx(51 / 101, abs=1e-9)
        assert m["APs"] == pytest.approx(1.0) and m["APl"] == 0.0 and m["APm"] == -1.0
        assert m["AR100"] == pytest.approx(0.5) and m["ARs"] == pytest.approx(1.0) and m["ARl"] == 0.0


@pytest.mark.parametrize("library", LIBRARIES)
def test_known_answer_all_perfect_and_nothing(library):
    gt = _hand_made_gt()
    perfect = [
        _det(a["image_id"], a["category_id"], *a["bbox"], score=0.5 + 0.1 * k) for k, a in enumerate(gt["annotations"])
    ]
    out = evaluate_coco(gt, perfect, library=library)
    for iou_type in ("bbox", "segm"):
        assert out[iou_type]["AP"] == pytest.approx(1.0) and out[iou_type]["AR100"] == pytest.approx(1.0)
    assert evaluate_coco(gt, [], library=library)["bbox"]["AP"] == 0.0
    # restricted to image 2 (only its one category-1 object, found): AP 1; category 2 has no object there
    half = evaluate_coco(gt, perfect, library=library, image_ids=[2])
    assert half["bbox"]["AP"] == pytest.approx(1.0)


def _jittered_results(gt: Dict[str, Any], seed: int) -> List[Dict[str, Any]]:
    """Ground truth with noise: boxes and masks shifted, random scores, some objects dropped, false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        img = next(i for i in gt["images"] if i["id"] == a["image_id"])
        dx, dy = (int(v) for v in rng.integers(-6, 7, size=2))
        m = np.roll(mask_util.decode(a["segmentation"]), (dy, dx), axis=(0, 1))
        r = mask_util.encode(np.asfortranarray(m))
        x, y, w, h = a["bbox"]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.integers(1, 8))
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": cat,
                "bbox": [x + dx, y + dy, w * float(rng.uniform(0.8, 1.2)), h * float(rng.uniform(0.8, 1.2))],
                "score": float(rng.uniform(0.05, 1.0)),
                "segmentation": {"size": [img["height"], img["width"]], "counts": r["counts"].decode("ascii")},
            }
        )
        if rng.random() < 0.3:  # a false positive somewhere else
            fx, fy = (float(v) for v in rng.uniform(0, 60, size=2))
            fp = dict(out[-1], bbox=[fx, fy, 30.0, 25.0], score=float(rng.uniform(0.05, 1.0)))
            fp["segmentation"] = _rle(int(fx), int(fy), 30, 25)
            out.append(fp)
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    generate_synthetic_coco(root, num_images=4, height=H, width=W, seed=3)
    return root


def test_faster_coco_eval_and_pycocotools_agree_on_a_random_case(synth):
    gt = json.loads((synth / "annotations.json").read_text())
    results = _jittered_results(gt, seed=0)
    a = evaluate_coco(gt, results, library="faster-coco-eval")
    b = evaluate_coco(gt, results, library="pycocotools")
    assert set(a) == set(b) == {"bbox", "segm"}
    for t in a:
        assert a[t] == pytest.approx(b[t], abs=1e-9), t
        assert 0.05 < a[t]["AP"] < 0.95  # a non-trivial case
    assert list(a["bbox"]) == list(METRIC_NAMES)


@pytest.mark.parametrize("library", LIBRARIES)
def test_results_equal_to_the_ground_truth_give_ap_one(synth, library):
    gt = json.loads((synth / "annotations.json").read_text())
    results = [
        {k: a[k] for k in ("image_id", "category_id", "bbox", "segmentation")} | {"score": 1.0}
        for a in gt["annotations"]
    ]
    out = evaluate_coco(gt, results, library=library)
    for t in ("bbox", "segm"):
        # every defined number is 1 but AR1 (one detection per image and category: some images hold two objects
        # of one class)
        defined = {k: v for k, v in out[t].items() if v >= 0 and k != "AR1"}
        assert defined["AP"] == pytest.approx(1.0) and defined == pytest.approx({k: 1.0 for k in defined}), out[t]
        assert 0 < out[t]["AR1"] <= 1


# ---------------------------------------------------------------------------------------- evaluate_detector
class _OracleDetector:
    """Returns the ground truth of whichever synthetic image it is given (found by pixel hash): AP must be 1."""

    def __init__(self, root: Path, batch: int):
        from rcnn_deploy import get_spec
        from rcnn_deploy.runtime.preprocess import load_rgb

        self.spec = get_spec("torchvision-maskrcnn")  # label == COCO category id (0..90)
        self.batch = batch
        self.calls: List[int] = []
        gt = json.loads((root / "annotations.json").read_text())
        self.by_hash = {}
        for im in gt["images"]:
            anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
            rgb = load_rgb(root / "images" / im["file_name"])
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
            masks = np.stack([mask_util.decode(a["segmentation"]).astype(bool) for a in anns])
            det = Detections(
                boxes,
                np.linspace(0.9, 0.5, len(anns)).astype(np.float32),
                np.array([a["category_id"] for a in anns], np.int32),
                masks,
            )
            self.by_hash[hashlib.sha1(rgb.tobytes()).hexdigest()] = det

    def __call__(self, images: List[np.ndarray]) -> List[Detections]:
        assert len(images) <= self.batch
        self.calls.append(len(images))
        return [self.by_hash[hashlib.sha1(np.asarray(im).tobytes()).hexdigest()] for im in images]

    def stream(self, items, per_image=None, processes=None):
        """The Detector.stream interface: the streaming runner with this oracle as the model."""
        from rcnn_deploy.runtime.preprocess import load_rgb
        from rcnn_deploy.runtime.stream import BatchModel, Prepared, run_stream

        keys = list(self.by_hash)

        def prepare(it):
            try:
                return Prepared(it, it.load(load_rgb), None)
            except ValueError as e:
                return Prepared(it, error=str(e))

        def run(batch: np.ndarray):
            found = self(list(batch))
            return {"key": np.array([[keys.index(next(k for k, v in self.by_hash.items() if v is d))] for d in found])}

        def post(p, outs):
            return self.by_hash[keys[int(outs["key"][0, 0])]]

        return run_stream(items, prepare, BatchModel(run, 1, self.batch), post, batch=self.batch, per_image=per_image)


def test_evaluate_detector_batches_skips_broken_images_and_scores_the_rest(synth, tmp_path):
    oracle = _OracleDetector(synth, batch=2)
    out = evaluate_detector(oracle, synth / "annotations.json", synth / "images")
    assert oracle.calls == [2, 2] and out["images"] == 4 and out["skipped"] == []
    assert out["metrics"]["bbox"]["AP"] == pytest.approx(1.0) and out["metrics"]["segm"]["AP"] == pytest.approx(1.0)

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    (data / "images" / "000001.png").write_bytes(b"\x89PNG garbage")
    (data / "images" / "000002.png").unlink()
    skipped: List[str] = []
    progress: List[int] = []
    oracle.calls.clear()
    out = evaluate_detector(
        oracle,
        data / "annotations.json",
        data / "images",
        library="pycocotools",
        progress=lambda done, total: progress.append(done),
        on_skip=lambda path, reason: skipped.append(path),
    )
    assert [s["file_name"] for s in out["skipped"]] == ["000001.png", "000002.png"]
    assert "cannot read image" in out["skipped"][0]["error"] and "not found" in out["skipped"][1]["error"]
    assert skipped == [str(data / "images" / n) for n in ("000001.png", "000002.png")]
    assert out["images"] == 2 and out["image_ids"] == [1, 4] and oracle.calls == [2] and progress[-1] == 4
    # the skipped images' objects do not count as missed: only the images that ran are evaluated
    assert out["metrics"]["bbox"]["AP"] == pytest.approx(1.0) and out["library"] == "pycocotools"
    out = evaluate_detector(oracle, data / "annotations.json", data / "images", max_images=1, iou_types=("bbox",))
    assert out["images"] == 1 and set(out["metrics"]) == {"bbox"}


def test_evaluate_detector_errors_say_what_to_do(synth, tmp_path):
    oracle = _OracleDetector(synth, batch=1)
    with pytest.raises(FileNotFoundError, match="folder the annotations' file_name"):
        evaluate_detector(oracle, synth / "annotations.json", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="none of the 4 images could be evaluated.*not found"):
        evaluate_detector(oracle, synth / "annotations.json", tmp_path / "empty")
    gt = json.loads((synth / "annotations.json").read_text())
    gt["categories"] = [{"id": 1000, "name": "x"}]
    with pytest.raises(ValueError, match="category ids"):
        evaluate_detector(oracle, gt, synth / "images")
    with pytest.raises(FileNotFoundError, match="annotations file not found"):
        evaluate_detector(oracle, tmp_path / "missing.json", synth / "images")


# ---------------------------------------------------------------------------------------------- reference mAP
def _dets(boxes, classes, scores=None, image_hw=None) -> Detections:  # type: ignore[no-untyped-def]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    scores = np.linspace(0.9, 0.6, n) if scores is None else scores
    masks = None
    if image_hw is not None:
        masks = np.zeros((n, *image_hw), bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            masks[k, y1:y2, x1:x2] = True
    return Detections(boxes, np.asarray(scores, np.float32), np.asarray(classes, np.int32), masks)


def test_reference_map_is_one_for_identical_detections_and_known_when_perturbed():
    refs = [
        _dets([[10, 10, 60, 60], [70, 60, 120, 110]], [3, -1], image_hw=(H, W)),  # Detectron2-style label -1
        _dets([[20, 30, 60, 90]], [3], image_hw=(H, W)),
        _dets(np.zeros((0, 4)), [], image_hw=(H, W)),
    ]
    for lib in LIBRARIES:
        same = reference_map(refs, refs, library=lib)
        assert set(same) == {"bbox", "segm"}
        assert same["bbox"]["AP"] == pytest.approx(1.0) and same["segm"]["AP"] == pytest.approx(1.0)
    # label -1's box shrunk to IoU 0.72 -> that category scores 1/2 (see the hand-made case), label 3 still 1
    cands = [_dets([[10, 10, 60, 60], [70, 60, 120, 96]], [3, -1], image_hw=(H, W)), refs[1], refs[2]]
    out = reference_map(refs, cands)
    assert out["bbox"]["AP"] == pytest.approx(0.75) and out["bbox"]["AP50"] == pytest.approx(1.0)
    assert out["segm"]["AP"] == pytest.approx(0.75)
    assert reference_map(refs, [_dets(np.zeros((0, 4)), [], image_hw=(H, W))] * 3)["bbox"]["AP"] == 0.0
    empty = [_dets(np.zeros((0, 4)), [])] * 2
    assert reference_map(empty, empty)["bbox"]["AP"] == -1.0  # nothing to score: undefined
    boxes_only = [_dets(d.boxes, d.classes) for d in refs]
    assert set(reference_map(boxes_only, boxes_only)) == {"bbox"}
    gt, cat = reference_ground_truth(refs)
    assert (
        cat == {-1: 1, 3: 2} and len(gt["annotations"]) == 3 and gt["images"][0] == {"id": 1, "height": H, "width": W}
    )
    assert gt["annotations"][0]["area"] == 50 * 50 and gt["annotations"][0]["iscrowd"] == 0
    with pytest.raises(ValueError, match="same images"):
        reference_map(refs, refs[:2])


# ------------------------------------------------------------------------------------------------- commands
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from rcnn_deploy.cli import app  # noqa: E402

SIZE = 160


@pytest.fixture(scope="module")
def models(tv_mask_model, tmp_path_factory):
    from PIL import Image

    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.testing import calibration_images

    model, sd = tv_mask_model
    root = tmp_path_factory.mktemp("eval_models")
    generate_synthetic_coco(root / "data", num_images=3, height=128, width=192, seed=5)
    (root / "calib").mkdir()  # images like the recipe's calibration batch (see test_tools.py)
    for i, im in enumerate(calibration_images(1, SIZE, SIZE, seed=7)):
        Image.fromarray(im.permute(1, 2, 0).round().byte().numpy()).save(root / "calib" / f"c{i}.png")
    (root / "calib" / "broken.png").write_bytes(b"\x89PNG broken")
    ckpt = root / "model.pth"
    torch.save(sd, ckpt)
    export_onnx(model, root / "export", height=SIZE, width=SIZE, batch="1:2", graph="fused", nms="onnx")
    return root, ckpt


def _has(res, text: str) -> bool:  # type: ignore[no-untyped-def]
    """``text`` in the command's output, ignoring whitespace (rich wraps long lines)."""
    return "".join(text.split()) in "".join(res.output.split())


def _check_metrics(metrics: Dict[str, Dict[str, float]]) -> None:
    assert set(metrics) == {"bbox", "segm"}
    for values in metrics.values():
        assert list(values) == list(METRIC_NAMES)
        assert all(v == -1.0 or 0.0 <= v <= 1.0 for v in values.values())


@pytest.mark.full
def test_eval_command_onnxruntime_writes_the_metrics_json(models):
    root, _ = models
    out = root / "map_ort.json"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(root / "export"),
            "--annotations",
            str(root / "data" / "annotations.json"),
            "--batch",
            "2",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert all(_has(res, col) for col in ("AP50", "AP75", "APs", "APm", "APl", "bbox", "segm"))
    summary = json.loads(out.read_text())
    assert summary["backend"] == "onnxruntime" and summary["images"] == 3 and summary["skipped"] == []
    assert summary["model"] == str(root / "export") and summary["library"] in LIBRARIES
    assert summary["images_dir"] == str(root / "data" / "images") and summary["detections"] > 0
    _check_metrics(summary["metrics"])


@pytest.mark.full
def test_eval_command_torch_checkpoint_skips_a_broken_image(models, tmp_path):
    root, ckpt = models
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    (data / "images" / "000001.png").write_bytes(b"\x89PNG this is not an image")
    out = tmp_path / "map.json"
    args = ["eval", str(ckpt), "-m", "torchvision-maskrcnn", "--height", str(SIZE), "--width", str(SIZE)]
    args += ["-a", str(data / "annotations.json"), "--images", str(data / "images"), "--library", "pycocotools"]
    res = CliRunner().invoke(app, args + ["-o", str(out)])
    assert res.exit_code == 0, res.output
    assert _has(res, "skipped") and _has(res, "000001.png: cannot read image") and _has(res, "1 of 3 images skipped")
    summary = json.loads(out.read_text())
    assert summary["backend"] == "torch" and summary["images"] == 2 and summary["library"] == "pycocotools"
    assert [s["file_name"] for s in summary["skipped"]] == ["000001.png"]
    _check_metrics(summary["metrics"])


@pytest.mark.full
def test_eval_command_errors_say_what_to_do(models, tmp_path):
    root, _ = models
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(root / "export"), "-a", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and _has(res, "not found")
    ann = tmp_path / "annotations.json"
    shutil.copy(root / "data" / "annotations.json", ann)
    res = runner.invoke(app, ["eval", str(root / "export"), "-a", str(ann)])  # no images/ beside it
    assert res.exit_code == 2 and _has(res, "pass --images DIR")
    (tmp_path / "images").mkdir()
    res = runner.invoke(app, ["eval", str(root / "export"), "-a", str(ann)])  # every image missing
    assert res.exit_code == 1 and _has(res, "none of the 3 images could be evaluated")
    res = runner.invoke(app, ["eval", str(root / "export"), "-a", str(ann), "--library", "cocoapi"])
    assert res.exit_code == 2 and _has(res, "use faster-coco-eval or pycocotools")
    res = runner.invoke(app, ["eval", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output


@pytest.mark.full
def test_compare_reference_map_is_one_for_the_same_model_and_gates_a_perturbed_one(models, tv_mask_model, tmp_path):
    root, ckpt = models
    runner = CliRunner()
    checkpoint = ["-m", "torchvision-maskrcnn", "--height", str(SIZE), "--width", str(SIZE)]
    args = ["--weights", str(ckpt), "--images", str(root / "calib")] + checkpoint
    report = tmp_path / "same.json"
    res = runner.invoke(app, ["compare", str(ckpt), *args, "--report", str(report)])  # candidate == reference
    assert res.exit_code == 0, res.output
    assert _has(res, "bbox AP vs reference") and _has(res, "1 of 2 images skipped")
    rep = json.loads(report.read_text())
    assert rep["images"] == [str(root / "calib" / "c0.png")] and rep["skipped"][0]["image"].endswith("broken.png")
    assert rep["report"]["reference_detections"] > 0
    assert rep["report"]["reference_map"]["bbox"]["AP"] == pytest.approx(1.0)
    assert rep["checks"]["bbox mAP vs reference >= 0.95"] is True

    _, sd = tv_mask_model
    bad = {k: v.clone() for k, v in sd.items()}
    bias = bad["roi_heads.box_predictor.cls_score.bias"]
    bias += torch.linspace(-2, 2, bias.numel())
    torch.save(bad, tmp_path / "bad.pth")
    report = tmp_path / "bad.json"
    relaxed = ["--min-recall", "0", "--min-box-iou", "0", "--max-score-diff", "1", "--min-mask-iou", "0"]
    res = runner.invoke(app, ["compare", str(tmp_path / "bad.pth"), *args, *relaxed, "--report", str(report)])
    assert res.exit_code == 1, res.output  # only the mAP check can fail
    assert "FAILED" in res.output
    rep = json.loads(report.read_text())
    assert rep["report"]["reference_map"]["bbox"]["AP"] < 0.9, rep["report"]["reference_map"]
    assert [k for k, ok in rep["checks"].items() if not ok] == ["bbox mAP vs reference >= 0.95"]
