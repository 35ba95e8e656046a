"""The README's main command, from a clean checkout: rcnn-deploy demo on the project's own checkpoint."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from rcnn_deploy.tools.demo import DEFAULT_CHECKPOINT, pick_backend  # noqa: E402


def test_pick_backend_validates_names():
    assert pick_backend("torch") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        pick_backend("tensorflow")


@pytest.mark.full
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="project checkpoint not in this checkout")
def test_demo_runs_end_to_end_with_real_detections(tmp_path):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "-o", str(out), "-n", "4", "--iterations", "1", "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["backend"] == "onnxruntime" and s["input_hw"] == [384, 384]
    assert s["metrics"]["bbox"]["AP50"] > 0.7, s["metrics"]  # a trained model, not noise
    assert (out / "infer" / "000000.png").is_file() and (out / "infer" / "000000.tsv").is_file()
    assert s["bench"]["model_only"]["median_ms"] > 0
    assert json.loads((out / "results.json").read_text())
