"""infer / compare commands and the Detector API on the synthetic set (CPU; ONNX Runtime and PyTorch)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from typer.testing import CliRunner  # noqa: E402

from rcnn_deploy.cli import app  # noqa: E402
from rcnn_deploy.data.synth import generate_synthetic_coco  # noqa: E402
from rcnn_deploy.export import export_onnx  # noqa: E402

pytestmark = pytest.mark.full  # the slow tier (see pyproject's pytest config)


@pytest.fixture(scope="module")
def setup(tv_mask_model, tmp_path_factory):
    model, sd = tv_mask_model
    root = tmp_path_factory.mktemp("tools")
    generate_synthetic_coco(root / "data", num_images=3, height=200, width=300, seed=1)
    (root / "data" / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    # parity checks use images like the recipe's calibration batch: on out-of-distribution images the random
    # "confident" weights saturate scores at ~1.0, and near-ties make any two backends disagree by design
    from PIL import Image

    from rcnn_deploy.models.testing import calibration_images

    (root / "calib").mkdir()
    for i, im in enumerate(calibration_images(3, 256, 256, seed=7)):
        Image.fromarray(im.permute(1, 2, 0).round().byte().numpy()).save(root / "calib" / f"c{i}.png")
    ckpt = root / "model.pth"
    torch.save(sd, ckpt)
    export_onnx(model, root / "export", height=256, width=256, batch="1:2", graph="fused", nms="onnx")
    return root, ckpt


def test_infer_writes_tsv_png_and_coco_json_and_skips_broken_image(setup):
    root, _ = setup
    out = root / "infer"
    res = CliRunner().invoke(app, ["infer", str(root / "export"), str(root / "data" / "images"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["written"] == 3 and summary["failures"][0]["image"].endswith("broken.png")
    results = json.loads((out / "results.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
    tsv = (out / "000000.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["class", "label", "score", "x1", "y1", "x2", "y2"] and len(tsv) > 1
    assert (out / "000000.png").is_file()
    for r in results:  # boxes are in original image coordinates (300 x 200)
        x, y, w, h = r["bbox"]
        assert x >= 0 and x + w <= 300.01 and y >= 0 and y + h <= 200.01


def test_detector_api_onnxruntime_matches_torch_checkpoint(setup):
    from rcnn_deploy.api import Detector

    root, ckpt = setup
    images = sorted((root / "calib").glob("*.png"))
    ort_det = Detector.load(root / "export")
    torch_det = Detector.load(ckpt, model="torchvision-maskrcnn", input_hw=(256, 256))
    a, b = ort_det(images), torch_det(images)
    from rcnn_deploy.evaluation.parity import compare_detections

    spec = torch_det.spec
    rep = compare_detections(b, a, nms_iou=spec.box_nms_thresh, max_detections=spec.detections_per_img)
    assert rep.reference_detections > 0 and rep.recall_with_ties == 1.0 and not rep.unmatched, rep.explained
    assert rep.min_mask_iou > 0.95
    assert a[0].masks.shape[1:] == (256, 256) and a[0].masks.dtype == bool
    synth = ort_det([root / "data" / "images" / "000000.png"])[0]
    assert synth.masks.shape[1:] == (200, 300)  # pasted into the original image


def test_compare_passes_then_fails_on_a_perturbed_model(setup, tv_mask_model):
    root, ckpt = setup
    runner = CliRunner()
    args = [
        "compare",
        str(root / "export"),
        "--weights",
        str(ckpt),
        "--images",
        str(root / "calib"),
    ]
    res = runner.invoke(app, args + ["--report", str(root / "parity.json")])
    assert res.exit_code == 0, res.output
    parity = json.loads((root / "parity.json").read_text())["report"]
    assert parity["recall_with_ties"] == 1.0 and not parity["unmatched"], parity["explained"]
    model, sd = tv_mask_model
    bad = {k: v.clone() for k, v in sd.items()}
    bad["roi_heads.box_predictor.cls_score.bias"] += torch.linspace(
        -2, 2, bad["roi_heads.box_predictor.cls_score.bias"].numel()
    )
    model.load_state_dict(bad)
    try:
        export_onnx(model, root / "bad", height=256, width=256, batch=1, graph="fused", nms="onnx")
    finally:
        model.load_state_dict(sd)
    res = runner.invoke(app, ["compare", str(root / "bad")] + args[2:])
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.output
