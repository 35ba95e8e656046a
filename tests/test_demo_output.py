"""The demo's output, without running a model: progress lines when stderr is not a terminal, the summary's labels
say what they count, and the checkpoint is found as package data (torch-free)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

import rcnn_deploy
from rcnn_deploy.tools.demo import DEFAULT_CHECKPOINT, SHOW_IMAGES, SHOW_SCORE, _print_summary, _Steps


def test_steps_print_a_line_per_step_when_not_a_terminal() -> None:
    buf = io.StringIO()
    steps = _Steps(Console(file=buf, force_terminal=False, width=60), total=2)
    with steps("a", "generating 8 synthetic images with a long description that is wider than the console"):
        steps.note("4/8 images")
    with steps("b", "benchmark"):
        pass
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[1/2] generating 8 synthetic images with a long description that is wider than the console ..."
    assert lines[1].strip() == "4/8 images"
    assert re.fullmatch(r"\[1/2\] generating .* console: \d+\.\d s \(CPU \d+\.\d s\)", lines[2]), lines[2]
    assert lines[3] == "[2/2] benchmark ..." and lines[4].startswith("[2/2] benchmark: ")
    assert set(steps.seconds) == {"a", "b"} and set(steps.cpu_seconds) == {"a", "b"}


def test_summary_labels_say_what_they_count() -> None:
    stats = {"median_ms": 12.5, "count": 3}
    summary = {
        "model": "torchvision-maskrcnn",
        "images": 8,
        "backend": "onnxruntime",
        "metrics": {"bbox": {"AP": 0.7, "AP50": 0.85, "AP75": 0.78}},
        "score_floor": 0.05,
        "detections_per_image": 22.25,
        "show_score": SHOW_SCORE,
        "shown_images": SHOW_IMAGES,
        "shown_per_image": 5.25,
        "bench": {"model_only": stats, "end_to_end": {"median_ms": 20.0, "count": SHOW_IMAGES}},
        "eval_images_per_s": 1.5,
        "seconds": {"total": 61.0},
        "outputs": {"infer": "runs/demo/infer", "results": "runs/demo/results.json", "export": "runs/demo/export"},
    }
    buf = io.StringIO()
    _print_summary(summary, Console(file=buf, force_terminal=False, width=200))
    text = buf.getvalue()
    assert re.search(r"score >= 0\.05 \(mAP scores all\)\s*│\s*22\.2", text), text
    assert re.search(rf"score >= {SHOW_SCORE:g} \(drawn, {SHOW_IMAGES} images\)\s*│\s*5\.2", text), text
    assert f"PNG + TSV of {SHOW_IMAGES} images" in text and "COCO results of all 8 images" in text
    assert "median ms of 3" in text and f"median ms of {SHOW_IMAGES}" in text


def test_checkpoint_is_package_data() -> None:
    package = Path(rcnn_deploy.__file__).resolve().parent
    assert DEFAULT_CHECKPOINT.resolve().parent == package / "checkpoints"
    assert DEFAULT_CHECKPOINT.is_file() and DEFAULT_CHECKPOINT.stat().st_size > 2**20
