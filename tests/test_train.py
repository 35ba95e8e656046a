"""Training: CPU smoke test (loss decreases, checkpoint reloads and exports), the checkpoint format, and the
project's own trained checkpoint (real detections on synthetic validation images)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rcnn_deploy.models.checkpoint import (  # noqa: E402
    checkpoint_state_dict,
    dequantize_per_channel,
    quantize_per_channel,
    save_checkpoint,
)
from rcnn_deploy.tools.demo import DEFAULT_CHECKPOINT  # noqa: E402


def test_per_channel_int8_round_trip_error_is_within_half_a_step():
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.01, 3.0, 16).view(-1, 1, 1, 1)
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    err = (dequantize_per_channel(q, scale) - w).abs().amax(dim=(1, 2, 3))
    assert torch.all(err <= scale / 2 + 1e-7)


def test_checkpoint_keeps_metadata_and_small_tensors_exact(tmp_path):
    sd = {"a.weight": torch.randn(64, 128), "a.bias": torch.randn(64), "bn.num_batches_tracked": torch.tensor(3)}
    p = save_checkpoint(
        tmp_path / "c.pt",
        sd,
        model="torchvision-maskrcnn",
        class_names=["__background__", "x"],
        category_ids=[0, 7],
        input_hw=(256, 320),
        meta={"note": "test"},
    )
    obj = torch.load(p, weights_only=True)
    assert obj["class_names"] == ["__background__", "x"] and obj["input_hw"] == [256, 320]
    out = checkpoint_state_dict(obj, str(p))
    assert set(out) == {"a.weight", "a.bias"}
    assert torch.equal(out["a.bias"], sd["a.bias"])  # small tensors are stored as they are
    assert (out["a.weight"] - sd["a.weight"]).abs().max() < sd["a.weight"].abs().max() / 127


# the tiny training runs' options (128² images, a few CPU iterations)
TINY = ["--height", "128", "--width", "128", "--batch", "2", "--workers", "0", "--device", "cpu"]
TINY += ["--lr", "0.01", "--warmup-iters", "2", "--compress", "int8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app
    from rcnn_deploy.data.synth import generate_synthetic_coco

    d = tmp_path_factory.mktemp("train")
    ann = generate_synthetic_coco(d / "train", 4, 128, 128, seed=1)
    val = generate_synthetic_coco(d / "val", 2, 128, 128, seed=2)
    ck = d / "tiny.pt"
    args = ["train", "--images", str(d / "train" / "images"), "--annotations", str(ann), "-o", str(ck), *TINY]
    args += ["--epochs", "3", "--max-iters", "6", "--val-annotations", str(val)]
    torch.manual_seed(0)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return d, ck


@pytest.mark.full
def test_train_smoke_loss_decreases_and_checkpoint_reloads_and_exports(tiny_run):
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.build import build_model

    d, ck = tiny_run
    summary = json.loads((d / "tiny.pt.summary.json").read_text())
    losses = [h["loss"] for h in summary["validation"]]
    assert summary["iterations"] == 6 and len(losses) == 3
    assert losses[-1] < losses[0], losses
    assert all("val" in h and "bbox" in h["val"] for h in summary["validation"])  # mAP every epoch
    net = build_model("torchvision-maskrcnn", str(ck))
    assert net.spec.class_names[1:] == ("circle", "square", "triangle", "ellipse", "star", "ring", "cross")
    assert net.checkpoint_input_hw == (128, 128)
    c = export_onnx(net, d / "export", height=128, width=128, graph="fused", nms="onnx")
    assert (d / "export" / c.graph_for("fused").file).is_file()
    # the resumable state continues where it stopped
    state = torch.load(d / "tiny.pt.state.pt", weights_only=True)
    assert state["iteration"] == 6


@pytest.mark.full
def test_train_resumes_and_fine_tunes(tiny_run):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    d, ck = tiny_run
    base = ["train", "--images", str(d / "train" / "images"), "--annotations", str(d / "train" / "annotations.json")]
    base += TINY
    # resume: continues at iteration 6 of the first run and stops at 8
    r = CliRunner().invoke(
        app,
        base
        + ["-o", str(d / "resumed.pt"), "--epochs", "4", "--max-iters", "8", "--resume", str(d / "tiny.pt.state.pt")],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((d / "resumed.pt.summary.json").read_text())["iterations"] == 8
    # fine-tune: starts from the trained weights, so its first losses are below a fresh start's
    r = CliRunner().invoke(
        app, base + ["-o", str(d / "tuned.pt"), "--epochs", "1", "--max-iters", "2", "--init", str(ck)]
    )
    assert r.exit_code == 0, r.output
    first_fresh = json.loads((d / "tiny.pt.summary.json").read_text())["validation"][0]["loss"]
    first_tuned = json.loads((d / "tuned.pt.summary.json").read_text())["validation"][0]["loss"]
    assert first_tuned < first_fresh, (first_tuned, first_fresh)


def test_train_reports_bad_input_clearly(tmp_path):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    r = CliRunner().invoke(
        app,
        ["train", "--images", str(tmp_path), "--annotations", str(tmp_path / "no.json"), "-o", str(tmp_path / "x.pt")],
    )
    assert r.exit_code == 2 and "does not exist" in " ".join(r.output.split())


@pytest.mark.full
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="project checkpoint not in this checkout")
def test_project_checkpoint_is_small_and_detects_shapes(tmp_path):
    """The committed checkpoint (recipes/train_shapes.sh) finds the shapes of unseen validation images."""
    from rcnn_deploy.api import Detector
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.evaluation.dataset import evaluate_detector

    assert DEFAULT_CHECKPOINT.stat().st_size <= 60 * 2**20
    ann = generate_synthetic_coco(tmp_path / "val", 8, 384, 384, seed=2)
    det = Detector.load(DEFAULT_CHECKPOINT, batch=2)  # the file names its model and input size
    assert det.input_hw == (384, 384)
    res = evaluate_detector(det, ann, tmp_path / "val" / "images")
    # A trained model, not noise (random weights score ~0). The accuracy itself is measured on 200 images on
    # the GPU (bbox AP 0.778 / AP50 0.924 after training); these 8 images gave AP50 0.85 when this was written.
    assert res["metrics"]["bbox"]["AP50"] > 0.7, res["metrics"]["bbox"]
    assert res["metrics"]["segm"]["AP50"] > 0.6, res["metrics"]["segm"]
    assert np.isfinite(res["metrics"]["bbox"]["AP"])
