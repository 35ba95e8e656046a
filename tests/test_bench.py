"""``rcnn-deploy bench`` and the latency statistics behind it. No assertion here is about speed: speed goals
belong in benchmarks (bench.json / bench.md), never in timed unit tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import List

import numpy as np
import pytest

from rcnn_deploy.runtime.timing import STAT_COLUMNS, LatencyStats, markdown_table, time_callable

# ------------------------------------------------------------------------------------------ LatencyStats


def test_latency_stats_match_numpy_on_known_samples() -> None:
    rng = random.Random(0)
    samples = [rng.uniform(5.0, 50.0) for _ in range(37)] + [120.0]  # one outlier for the tail percentiles
    s = LatencyStats.from_samples(samples, batch=4)
    a = np.asarray(samples)
    assert s.count == 38 and s.batch == 4
    assert s.min_ms == pytest.approx(a.min()) and s.max_ms == pytest.approx(a.max())
    assert s.mean_ms == pytest.approx(a.mean()) and s.median_ms == pytest.approx(np.median(a))
    assert s.std_ms == pytest.approx(a.std())
    for q, got in ((90, s.p90_ms), (95, s.p95_ms), (99, s.p99_ms)):
        assert got == pytest.approx(np.percentile(a, q))
    assert s.min_ms <= s.median_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms


def test_latency_stats_exact_percentiles_and_order_independence() -> None:
    samples = [float(v) for v in range(1, 101)]  # 1..100 ms
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    s = LatencyStats.from_samples(shuffled, batch=1)
    assert (s.min_ms, s.median_ms, s.max_ms) == (1.0, 50.5, 100.0)
    assert s.p90_ms == pytest.approx(90.1) and s.p95_ms == pytest.approx(95.05) and s.p99_ms == pytest.approx(99.01)
    assert s == LatencyStats.from_samples(samples, batch=1)


def test_throughput_is_batch_times_1000_over_mean() -> None:
    s = LatencyStats.from_samples([10.0, 20.0, 30.0], batch=8)
    assert s.mean_ms == 20.0 and s.throughput == pytest.approx(8 * 1000.0 / 20.0)
    assert LatencyStats.from_samples([4.0], batch=1).throughput == pytest.approx(250.0)
    d = s.to_dict()
    assert d["throughput"] == pytest.approx(400.0) and d["count"] == 3 and d["batch"] == 8
    json.dumps(d)  # plain JSON types
    assert LatencyStats.from_samples([0.0, 0.0], batch=1).to_dict()["throughput"] is None  # inf is not JSON


@pytest.mark.parametrize(
    ("samples", "batch"), [([], 1), ([1.0, float("nan")], 1), ([1.0, -2.0], 1), ([1.0], 0), ([[1.0]], 1)]
)
def test_latency_stats_rejects_bad_input(samples: list, batch: int) -> None:
    with pytest.raises(ValueError):
        LatencyStats.from_samples(samples, batch)


def test_markdown_table_has_every_column_and_row() -> None:
    a = LatencyStats.from_samples([10.0, 12.0, 14.0], batch=1)
    b = LatencyStats.from_samples([30.0, 31.0], batch=8)
    md = markdown_table([("model-only · onnxruntime", a), ("end|to|end", b)])
    lines = md.strip().splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run"] + [h for h, _, _ in STAT_COLUMNS]
    for h in ("min ms", "mean ms", "median ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "img/s", "batch", "n"):
        assert h in header
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert all(line.count("|") == lines[0].count("|") for line in lines[:3])  # the escaped '|' keeps its cell
    assert "model-only · onnxruntime | 1 | 3 | 10.00 | 12.00 | 12.00 |" in lines[2]
    assert lines[2].endswith("| 83.3 |")  # 1 * 1000 / 12
    assert "end\\|to\\|end | 8 | 2 |" in lines[3] and lines[3].endswith("| 262.3 |")  # 8 * 1000 / 30.5


def test_time_callable_warms_up_syncs_and_reports_each_call() -> None:
    calls: List[str] = []
    samples = time_callable(
        lambda: calls.append("fn"),
        iterations=3,
        warmup=2,
        sync=lambda: calls.append("sync"),
        on_iteration=lambda: calls.append("step"),
    )
    assert len(samples) == 3 and all(s >= 0.0 for s in samples)
    assert calls == ["fn", "step"] * 2 + ["sync"] + ["fn", "sync", "step"] * 3
    with pytest.raises(ValueError):
        time_callable(lambda: None, iterations=0)
    with pytest.raises(ValueError):
        time_callable(lambda: None, iterations=1, warmup=-1)


def test_bench_batches_use_the_shared_parser() -> None:
    from rcnn_deploy.errors import UserError
    from rcnn_deploy.tools.args import parse_int_list

    assert parse_int_list("1,8, 16,8") == [1, 8, 16]
    assert parse_int_list("4") == [4]
    for bad in ("", "0", "1,x", "-2", ","):
        with pytest.raises(UserError, match="--batch"):
            parse_int_list(bad)


def test_speedup_line_says_slower_when_the_ratio_is_below_one() -> None:
    from rcnn_deploy.reports.bench import speedup_line

    fast = speedup_line({"batch": 8, "speedup_model": 1.52, "speedup_end_to_end": 1.1})
    assert fast == (
        "batch 8: 1.52x faster than torchvision eager (model-only), end-to-end 1.10x faster than torchvision eager"
    )
    slow = speedup_line({"batch": 1, "speedup_model": 0.8, "speedup_end_to_end": 0.5})
    assert "faster" not in slow
    assert slow.startswith("batch 1: slower than torchvision eager (0.80x of its speed) (model-only)")
    assert slow.endswith("end-to-end slower than torchvision eager (0.50x of its speed)")
    mixed = speedup_line({"batch": 2, "speedup_model": 2.0, "speedup_end_to_end": 0.9})
    assert "2.00x faster than" in mixed and "end-to-end slower than torchvision eager (0.90x" in mixed
    assert speedup_line({"batch": 1, "speedup_model": 1.0}) == "batch 1: as fast as torchvision eager (model-only)"


def test_synthetic_bench_images_are_the_synthetic_datasets_pixels(tmp_path: Path) -> None:
    """One generator: the bench's images are the images of ``generate_synthetic_coco`` (no annotations)."""
    pytest.importorskip("pycocotools")
    from PIL import Image

    from rcnn_deploy.data.synth import generate_synthetic_coco, write_synthetic_images

    paths = write_synthetic_images(tmp_path / "bench", 2, 64, 96, seed=3, image_format="png")
    generate_synthetic_coco(tmp_path / "coco", 2, height=64, width=96, seed=3)
    assert [p.name for p in paths] == ["000000.png", "000001.png"]
    for p in paths:
        with Image.open(p) as a, Image.open(tmp_path / "coco" / "images" / p.name) as b:
            assert a.size == (96, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="image_format"):
        write_synthetic_images(tmp_path / "x", 1, 64, 64, image_format="gif")


# ------------------------------------------------------------------------------------------------ CLI


def _cli():  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    return CliRunner(), app


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the test console's width


@pytest.fixture(scope="module")
def setup(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A 320x320 Mask R-CNN export (batch 1:2) of the confident test weights and its checkpoint. Few proposals
    and detections keep every timed call short; the spec travels in contract.json, so the torchvision baseline
    uses the same settings."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torchvision")
    pytest.importorskip("onnx_graphsurgeon")  # export_onnx's graph hygiene
    from rcnn_deploy import get_spec
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import confident_state_dict

    spec = get_spec("torchvision-maskrcnn", rpn_pre_nms_top_n=100, rpn_post_nms_top_n=50, detections_per_img=10)
    model = DeployRCNN(spec)
    sd = confident_state_dict(model, seed=0)
    root = tmp_path_factory.mktemp("bench")
    ckpt = root / "model.pth"
    torch.save(sd, ckpt)
    export_onnx(model, root / "export", height=320, width=320, batch="1:2", graph="fused", nms="onnx")
    return root, ckpt


def test_bench_help_lists_options_and_examples() -> None:
    runner, app = _cli()
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0, res.output
    out = _flat(res.output)
    for opt in ("--batch", "--iterations", "--warmup", "--cuda-graph", "--baseline", "--histogram", "--output"):
        assert opt in out
    assert "Examples" in out and "rcnn-deploy bench out/" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "1,x"], "comma-separated positive integers"),
        (["--baseline", "detectron2"], "choose torchvision"),
        (["--histogram"], "pass -o DIR"),
        (["--device", "tpu"], "use cpu, cuda or cuda:N"),
        (["--baseline", "torchvision"], "pass --weights"),
        (["--backend", "tflite"], "use onnxruntime or tensorrt"),
        (["--backend", "torch"], "--backend torch runs a checkpoint"),
    ],
)
def test_bench_rejects_bad_options_before_loading(tmp_path: Path, args: List[str], message: str) -> None:
    runner, app = _cli()
    res = runner.invoke(app, ["bench", str(tmp_path)] + args)  # tmp_path: an (empty) directory = an export
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in _flat(res.output)


def test_bench_checkpoint_without_model_and_missing_export_say_how_to_fix(tmp_path: Path) -> None:
    runner, app = _cli()
    res = runner.invoke(app, ["bench", str(tmp_path / "model.pth")])
    assert res.exit_code == 2 and "--model" in _flat(res.output)
    res = runner.invoke(app, ["bench", str(tmp_path)])  # a directory without contract.json
    assert res.exit_code == 2 and "rcnn-deploy export" in _flat(res.output)


@pytest.mark.full
def test_bench_tensorrt_backend_wants_a_split_export(setup) -> None:  # type: ignore[no-untyped-def]
    root, ckpt = setup
    runner, app = _cli()
    res = runner.invoke(app, ["bench", str(root / "export"), "--backend", "tensorrt"])  # a fused export
    assert res.exit_code == 2 and "runs as its engine file" in _flat(res.output), res.output
    res = runner.invoke(app, ["bench", str(ckpt), "-m", "torchvision-maskrcnn", "--backend", "tensorrt"])
    assert res.exit_code == 2 and "needs an export directory" in _flat(res.output), res.output


@pytest.mark.full
def test_bench_export_end_to_end_and_torchvision_baseline(setup) -> None:  # type: ignore[no-untyped-def]
    root, ckpt = setup
    out = root / "bench"
    runner, app = _cli()
    args = ["bench", str(root / "export"), "--iterations", "2", "--warmup", "1", "--batch", "1,2"]
    args += ["--baseline", "torchvision", "--weights", str(ckpt), "-o", str(out), "--histogram"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output

    doc = json.loads((out / "bench.json").read_text())
    assert doc["schema"] == "rcnn-deploy/bench/1"
    assert doc["model"]["backend"] == "onnxruntime" and doc["model"]["input_hw"] == [320, 320]
    assert doc["model"]["batch_range"] == [1, 2] and doc["model"]["name"] == "torchvision-maskrcnn"
    m = doc["machine"]
    assert {"platform", "cpu_count", "python", "torch", "onnxruntime"} <= set(m) and "gpu" not in m
    assert doc["settings"]["batches"] == [1, 2] and doc["settings"]["iterations"] == 2
    assert doc["settings"]["images"] == {"source": "synthetic", "count": 2, "size_hw": [480, 640], "format": "jpg"}
    rows = {(r["mode"], r["batch"]): r for r in doc["results"]}
    assert set(rows) == {(mode, b) for mode in ("model", "end-to-end", "streamed", "baseline") for b in (1, 2)}
    assert rows[("baseline", 1)]["engine"] == "torchvision-eager" and rows[("model", 2)]["engine"] == "onnxruntime"
    for r in doc["results"]:
        assert r["count"] == 2 and len(r["samples_ms"]) == 2 and r["timing"] == "host"
        for k in ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "throughput"):
            assert r[k] > 0
        assert r["min_ms"] <= r["median_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput"] == pytest.approx(r["batch"] * 1000.0 / r["mean_ms"])
    e2e = rows[("end-to-end", 2)]
    assert set(e2e["stages_mean_ms"]) == {"decode_preprocess_ms", "infer_ms", "postprocess_ms"}
    assert e2e["detections_per_image"] > 0  # masks were pasted: the confident weights detect something
    streamed = rows[("streamed", 2)]  # the streaming runner: throughput, latency under load, same detections
    assert streamed["images_per_s"] > 0 and streamed["latency_ms"]["p50"] > 0
    assert streamed["detections_per_image"] == e2e["detections_per_image"]
    assert [d["batch"] for d in doc["speedup"]] == [1, 2] and all(d["speedup_model"] > 0 for d in doc["speedup"])

    md = (out / "bench.md").read_text()
    for text in ("| run | batch | n | min ms | mean ms | median ms | p90 ms | p95 ms | p99 ms | max ms | img/s |",
                 "model-only · onnxruntime", "end-to-end · onnxruntime", "baseline · torchvision-eager",
                 "Speed-up vs torchvision eager", "End-to-end stages"):  # fmt: skip
        assert text in md
    assert md.count("baseline · torchvision-eager (host) |") == 2

    from PIL import Image

    with Image.open(out / "latency_hist.png") as im:
        assert im.format == "PNG" and im.width > 0 and im.height > 0
    from rcnn_deploy.reports.bench import speedup_line

    for d in doc["speedup"]:  # the console says what each number says: "slower than" below 1, never "faster"
        line = speedup_line(d)
        assert line in _flat(res.output)
        model_part, _, end_to_end_part = line.partition(" (model-only)")
        assert ("faster than" in model_part) == (d["speedup_model"] > 1), line
        assert d["speedup_end_to_end"] is not None  # this run has end-to-end rows
        assert ("faster than" in end_to_end_part) == (d["speedup_end_to_end"] > 1), line


@pytest.mark.full
def test_bench_checkpoint_runs_the_torch_backend(setup) -> None:  # type: ignore[no-untyped-def]
    root, ckpt = setup
    out = root / "bench_torch"
    runner, app = _cli()
    args = ["bench", str(ckpt), "-m", "torchvision-maskrcnn", "--height", "320", "--width", "320"]
    args += ["--batch", "1", "--iterations", "1", "--warmup", "0", "--no-end-to-end", "--no-cuda-graph", "-o", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "bench.json").read_text())
    assert doc["model"]["backend"] == "torch" and doc["model"]["kind"] == "checkpoint"
    assert [(r["mode"], r["batch"], r["count"]) for r in doc["results"]] == [("model", 1, 1)]
    assert not (out / "latency_hist.png").exists() and "End-to-end stages" not in (out / "bench.md").read_text()
