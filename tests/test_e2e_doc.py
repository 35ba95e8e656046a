"""docs/e2e.md is what ``rcnn_deploy.reports.e2e`` renders from the committed results (never edited by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from rcnn_deploy.reports.e2e import render

ROOT = Path(__file__).resolve().parents[1]


def _e2e_writer(tmp_path):
    """``write(name, doc)``: a result file in ``tmp_path``'s benchmarks/results/e2e, with script, machine, commit."""
    results = tmp_path / "benchmarks" / "results" / "e2e"
    results.mkdir(parents=True)
    machine = {"gpu": "GPU", "cpus": 16, "python": "3.9", "torch": "2"}

    def write(name, doc):
        (results / name).write_text(json.dumps({"script": "s", "machine": machine, "commit": "c", **doc}))

    return write


def test_e2e_doc_matches_the_results():
    assert (ROOT / "docs" / "e2e.md").read_text() == render(ROOT), "run: python benchmarks/e2e_report.py"


def test_every_memory_result_file_renders_its_rows(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    rows = {"infer": 1.5, "infer-no-png": 2.5, "dense-masks": 3.5, "model-only": 4.5}
    for size, dirty in ((384, False), (1344, True)):
        doc = {
            "script": "benchmarks/memory_bench.py",
            "machine": {"platform": "Linux-test", "cpus": 2},
            "commit": f"c{size}",
            "dirty": dirty,
            "photo_hw": [4000, 6000],
            "input_hw": [size, size],
            "detections": 100,
            "peak_rss_mib": {k: v + size for k, v in rows.items()},
            "above_model_mib": {k: v - 4.5 for k, v in rows.items()},
        }
        (results / f"memory_cpu_{size}.json").write_text(json.dumps(doc))
    (results / "memory_cpu.json").write_text("not read")  # the old single file is not rendered
    text = render(tmp_path)
    for size in (384, 1344):
        lines = [line for line in text.splitlines() if line.startswith(f"| memory_cpu_{size}.json |")]
        assert len(lines) == len(rows), text
        for line, (case, v) in zip(lines, rows.items()):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[4:] == [f"{size}×{size}", case, str(v + size), str(v - 4.5)], cells
            assert cells[2] == f"c{size}" + (" (uncommitted changes)" if size == 1344 else ""), cells


def test_targets_compare_the_latest_session_with_its_own_torchvision_baseline(tmp_path):
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 320.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    write(
        "e2e_trt_run98_b8.json",
        {
            "engines": [
                {
                    "engine": "e",
                    "batch": 8,
                    "trt": "t",
                    "input_dtype": "uint8",
                    "gpu_compute_ms": 1.0,
                    "gpu_images_per_s": 8000,
                    "stream": dict(stream, images_per_s=1.0),
                }
            ]
        },
    )  # an older session: not in the targets
    write(
        "e2e_trt_run99b_b8.json",
        {
            "engines": [
                {
                    "engine": "e",
                    "batch": 8,
                    "trt": "t",
                    "input_dtype": "uint8",
                    "gpu_compute_ms": 20.0,
                    "gpu_images_per_s": 400,
                    "stream": stream,
                }
            ]
        },
    )
    write(
        "e2e_trt_run99b_b1.json",
        {
            "engines": [
                {
                    "engine": "e",
                    "batch": 1,
                    "trt": "t",
                    "input_dtype": "uint8",
                    "gpu_compute_ms": 5.0,
                    "gpu_images_per_s": 200,
                    "stream": stream,
                    "latency_ms": {"p50": 12.5, "p99": 20.0},
                }
            ]
        },
    )
    write(
        "e2e_torchvision_run98.json",
        {"model": "tv", "images": 64, "images_per_s": 100.0, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}},
    )
    write(
        "e2e_torchvision_run99a.json",
        {"model": "tv", "images": 64, "images_per_s": 20.0, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}},
    )
    text = render(tmp_path)
    targets = text.split("## Targets (issues 17 and 19)")[1].split("\n## ")[0]
    assert "TensorRT, session run99; baseline 20.0 img/s (e2e_torchvision_run99a.json)" in targets
    targets = targets.split("TensorRT, session run99")[1]
    b8 = "| TensorRT fp16 b8 end to end ≥ 300 img/s (host decode) | 320 img/s | yes | e2e_trt_run99b_b8.json |"
    assert b8 in targets
    # 320 / 20, not / 100 (run98)
    assert "| TensorRT end to end ≥ 15× torchvision (host decode) | 16 × | yes |" in targets
    b1 = "| TensorRT b1 end-to-end latency ≤ 12 ms median (host decode, RLE masks) | 12.5 ms | no |"
    assert b1 in targets
    assert "run98" not in targets.split("| target |")[1]


def test_the_decoders_pixel_comparison_renders_when_a_parity_run_measured_it(tmp_path):
    results = tmp_path / "benchmarks" / "results" / "e2e"
    results.mkdir(parents=True)
    stats = {"max": 40, "mean": 0.9, "over_2": 0.05, "over_16": 0.001}
    doc = {
        "machine": {"gpu": "GPU", "cpus": 16, "torch": "2"},
        "commit": "c",
        "rows": [],
        "parity": {
            "decode_pixels_nvjpeg_vs_host": {
                "images": 20,
                "source_subsampling": 2,
                "as_saved": stats,
                "reencoded_444": dict(stats, max=1, mean=0.01),
            }
        },
    }
    (results / "e2e_torch_cuda_parity_run99.json").write_text(json.dumps(doc))
    text = render(tmp_path)
    assert "| e2e_torch_cuda_parity_run99.json | 20 | 2 | 40 / 0.9 / 0.05 / 0.001 | 1 / 0.01 / 0.05 / 0.001 |" in text


def test_each_stacks_targets_come_from_its_own_latest_session(tmp_path):
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 120.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    engine = {"engine": "e", "batch": 8, "trt": "t", "input_dtype": "uint8", "gpu_compute_ms": 20.0}
    write("e2e_trt_run99_b8.json", {"engines": [dict(engine, gpu_images_per_s=400, stream=stream)]})
    row = {"model": "mask_rcnn", "precision": "fp16", "cuda_graph": True, "batch": 8, "gpu_compute_ms": 80.0}
    row.update(gpu_images_per_s=100, nms_rounds=96, stream=dict(stream, images_per_s=60.0))
    write("e2e_torch_cuda_run97.json", {"rows": [row]})
    tv = {"model": "tv", "images": 64, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}}
    write("e2e_torchvision_run97.json", dict(tv, images_per_s=3.0))
    write("e2e_torchvision_run99.json", dict(tv, images_per_s=4.0))
    targets = render(tmp_path).split("## Targets (issues 17 and 19)")[1].split("\n## ")[0]
    trt, torch = targets.split("PyTorch, session run97; baseline 3.0 img/s (e2e_torchvision_run97.json):")
    assert "TensorRT, session run99; baseline 4.0 img/s (e2e_torchvision_run99.json):" in trt
    assert "| TensorRT end to end ≥ 15× torchvision (host decode) | 30 × | yes |" in trt  # 120 / 4
    assert "| PyTorch b8 end to end ≥ 250 img/s | 60 img/s | no | e2e_torch_cuda_run97.json |" in torch
    assert "| PyTorch end to end ≥ 10× torchvision | 20 × | yes |" in torch  # 60 / 3
