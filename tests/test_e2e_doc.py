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


def _targets(root):
    """The targets section of the page rendered from ``root``'s results."""
    return render(root).split("## Targets (issues 17 and 19)")[1].split("\n## ")[0]


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
    assert "TensorRT, session run99 on GPU; baseline 20.0 img/s (e2e_torchvision_run99a.json)" in targets
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
    doc["parity"]["decode_pixels_nvimgcodec_vs_host_images"] = {
        "decoder": "nvimgcodec",
        "images": 20,
        "source_subsampling": 2,
        "as_saved": dict(stats, max=1, mean=0.0003, over_2=0.0, over_16=0.0, identical=0.99974),
        "reencoded_444": dict(stats, max=0, mean=0.0, over_2=0.0, over_16=0.0, identical=1.0),
    }
    (results / "e2e_torch_cuda_parity_run99.json").write_text(json.dumps(doc))
    text = render(tmp_path)
    assert (
        "| e2e_torch_cuda_parity_run99.json | nvjpeg_vs_host | 20 | 2 | 40 / 0.9 / 0.05 / 0.001 | — | 1 / 0.01" in text
    )
    assert (
        "| e2e_torch_cuda_parity_run99.json | nvimgcodec_vs_host_images | 20 | 2 | 1 / 0.0003 / 0.0 / 0.0 | 0.99974 | "
        "0 / 0.0 / 0.0 / 0.0 |" in text
    )


def test_gpu_decode_parity_targets_render_for_both_stacks(tmp_path):
    """Issue 19's GPU-decode parity bars (≥ 99 % matched, mAP within 0.001) in the targets section: PyTorch's from
    the parity file of its latest session (each comparison, named by decoder and image set), TensorRT's from the
    engines' gpu_decode_parity."""
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 120.0, "processes": 8, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    full = {  # what compare_detections reports besides the counts
        "images": 64,
        "candidate_detections": 1000,
        "min_box_iou": 0.5,
        "max_score_diff": 0.4,
        "mean_score_diff": 0.002,
        "mean_mask_iou": 0.99,
        "min_mask_iou": 0.0,
        "unmatched": 20,
    }
    par = {
        "e2e_images": dict(full, matched=974, reference_detections=1000, recall=0.974),
        "host_decode_AP": {"bbox_AP": 0.3466, "segm_AP": 0.3048},
        "gpu_decode_AP": {"bbox_AP": 0.3440, "segm_AP": 0.3045},
    }
    engine = {"engine": "e", "batch": 8, "trt": "t", "input_dtype": "uint8", "gpu_compute_ms": 20.0}
    engine.update(gpu_images_per_s=400, stream=stream, gpu_decode_parity=par)
    write("e2e_trt_run99_b8.json", {"engines": [engine], "machine": {"nvimgcodec": "0.9.0"}})
    row = {"model": "mask_rcnn", "precision": "fp16", "cuda_graph": True, "batch": 8, "gpu_compute_ms": 80.0}
    row.update(gpu_images_per_s=100, nms_rounds=96, stream=dict(stream, images_per_s=60.0))
    write("e2e_torch_cuda_run99a.json", {"rows": [row]})
    match = dict(full, matched=995, reference_detections=1000, recall=0.995, gpu_decoder="nvimgcodec")
    parity = {
        "gpu_decode_vs_host_decode_fp16_images_1344": match,
        "host_decode_fp16_images_1344": {"bbox_AP": 0.6630, "segm_AP": 0.5805, "images": 64},
        "gpu_decode_fp16_images_1344": {"bbox_AP": 0.6629, "segm_AP": 0.5800, "images": 64},
    }
    write("e2e_torch_cuda_parity_run99b.json", {"rows": [], "parity": parity})
    tv = {"model": "tv", "images": 64, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}}
    write("e2e_torchvision_run99a.json", dict(tv, images_per_s=4.0))
    targets = _targets(tmp_path)
    trt, torch = targets.split("PyTorch, session run99")
    assert (
        "| TensorRT GPU decode ≥ 99 % of host-decode detections matched (nvImageCodec 0.9.0, 1920×1080 JPEGs, b8) "
        "| 97.4 % | no | e2e_trt_run99_b8.json |" in trt
    )
    assert (
        "| TensorRT GPU decode bbox mAP within 0.001 of host decode (nvImageCodec 0.9.0, 384² JPEG split, b8) " in trt
    )
    assert "| 0.0026 | no |" in trt and "| 0.0003 | yes |" in trt  # bbox, segm
    assert (
        "| PyTorch GPU decode ≥ 99 % of host-decode detections matched (nvImageCodec, 1920×1080 JPEGs at 1344²) "
        "| 99.5 % | yes | e2e_torch_cuda_parity_run99b.json |" in torch
    )
    assert "| 0.0001 | yes | e2e_torch_cuda_parity_run99b.json |" in torch  # bbox
    assert "| 0.0005 | yes | e2e_torch_cuda_parity_run99b.json |" in torch  # segm


def test_each_stacks_targets_come_from_its_own_latest_session(tmp_path):
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 120.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    engine = {"engine": "e", "batch": 8, "trt": "t", "input_dtype": "uint8", "gpu_compute_ms": 20.0}
    write("e2e_trt_run99_b8.json", {"engines": [dict(engine, gpu_images_per_s=400, stream=stream)]})
    row = {"model": "mask_rcnn", "precision": "fp16", "cuda_graph": True, "batch": 8, "gpu_compute_ms": 80.0}
    row.update(gpu_images_per_s=100, nms_rounds=96, stream=dict(stream, images_per_s=60.0))
    # a median just over the target is shown rounded (12 ms) but judged unrounded: not met
    b1 = dict(row, batch=1, gpu_compute_ms=5.0, gpu_images_per_s=200, latency_ms={"p50": 12.04, "p99": 20.0})
    write("e2e_torch_cuda_run97.json", {"rows": [row, b1]})
    tv = {"model": "tv", "images": 64, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}}
    write("e2e_torchvision_run97.json", dict(tv, images_per_s=3.0))
    write("e2e_torchvision_run99.json", dict(tv, images_per_s=4.0))
    targets = _targets(tmp_path)
    trt, torch = targets.split("PyTorch, session run97 on GPU; baseline 3.0 img/s (e2e_torchvision_run97.json):")
    assert "TensorRT, session run99 on GPU; baseline 4.0 img/s (e2e_torchvision_run99.json):" in trt
    assert "| TensorRT end to end ≥ 15× torchvision (host decode) | 30 × | yes |" in trt  # 120 / 4
    assert (
        "| PyTorch b8 end to end ≥ 250 img/s (14 worker processes) | 60 img/s | no | e2e_torch_cuda_run97.json |"
        in torch
    )
    assert "| PyTorch end to end ≥ 10× torchvision (14 worker processes) | 20 × | yes |" in torch  # 60 / 3
    assert "| PyTorch b1 end-to-end latency ≤ 12 ms median | 12 ms | no | e2e_torch_cuda_run97.json |" in torch


def test_targets_say_how_host_decode_handed_over_its_slots_and_take_parity_from_its_latest_session(tmp_path):
    """Since session 26 a host-decode stream pass says whether the input slots were page-locked or copied, and the
    benchmarks run the other way too (a variant pass; PyTorch's --slots-ab pairs): each gets its target rows,
    labelled; GPU-decode rows have no slots. PyTorch's parity rows come from the latest session that ran parity,
    also when a later session ran only the throughput steps."""
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 280.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    engine = {"engine": "e", "batch": 8, "trt": "t", "input_dtype": "uint8", "gpu_compute_ms": 20.0}
    engine.update(gpu_images_per_s=400, stream=dict(stream, pinned_slots=False))
    engine.update(stream_pinned_slots=dict(stream, images_per_s=270.0, pinned_slots=True))
    engine.update(stream_gpu_decode=dict(stream, images_per_s=300.0, pinned_slots=False))
    write("e2e_trt_run99_b8.json", {"engines": [engine]})
    row = {"model": "mask_rcnn", "precision": "fp16", "cuda_graph": True, "batch": 8, "gpu_compute_ms": 25.0}
    row.update(gpu_images_per_s=300, nms_rounds=96, stream=dict(stream, images_per_s=240.0, pinned_slots=False))
    row["stream_pinned_slots"] = dict(stream, images_per_s=200.0, pinned_slots=True)
    row["stream_slots_ab"] = [
        {"mode": m, "pair": i // 2, "images_per_s": v}
        for i, (m, v) in enumerate([("pinned", 210.0), ("copy", 230.0), ("copy", 250.0), ("pinned", 190.0)])
    ]
    gd = dict(row, model="mask_rcnn_gpu_decode", gpu_decoder="nvimgcodec", stream={})
    gd = {k: v for k, v in gd.items() if not k.startswith("stream")}
    gd["stream_gpu_decode"] = dict(stream, images_per_s=245.0, processes=8, pinned_slots=False)
    write("e2e_torch_cuda_run99.json", {"rows": [row, gd]})
    match = {"matched": 995, "reference_detections": 1000, "recall": 0.995, "gpu_decoder": "nvimgcodec"}
    match.update(images=64, candidate_detections=1000, min_box_iou=0.5, max_score_diff=0.4, mean_score_diff=0.002)
    match.update(mean_mask_iou=0.99, min_mask_iou=0.0, unmatched=5)
    write("e2e_torch_cuda_parity_run98.json", {"rows": [], "parity": {"gpu_decode_vs_host_decode_fp16": match}})
    tv = {"model": "tv", "images": 64, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}}
    write("e2e_torchvision_run99.json", dict(tv, images_per_s=2.5))
    targets = _targets(tmp_path)
    trt, torch = targets.split("PyTorch, session run99")
    assert "| TensorRT fp16 b8 end to end ≥ 300 img/s (host decode, copied slots) | 280 img/s | no |" in trt
    assert "| TensorRT fp16 b8 end to end ≥ 300 img/s (host decode, page-locked slots) | 270 img/s | no |" in trt
    assert "| TensorRT fp16 b8 end to end ≥ 300 img/s (GPU decode) | 300 img/s | yes |" in trt
    assert "| PyTorch b8 end to end ≥ 250 img/s (14 worker processes, copied slots) | 240 img/s | no |" in torch
    assert "| PyTorch b8 end to end ≥ 250 img/s (14 worker processes, page-locked slots) | 200 img/s | no |" in torch
    assert (
        "| PyTorch b8 end to end ≥ 250 img/s (14 worker processes, copied slots, median of 2 A/B passes) "
        "| 240 img/s | no |" in torch
    )
    assert "(14 worker processes, page-locked slots, median of 2 A/B passes) | 200 img/s |" in torch
    assert "| PyTorch b8 end to end ≥ 250 img/s (GPU decode (nvImageCodec), 8 worker processes) | 245 img/s |" in torch
    assert (
        "| PyTorch GPU decode ≥ 99 % of host-decode detections matched (nvImageCodec, 384² JPEG split) | 99.5 % | yes "
        "| e2e_torch_cuda_parity_run98.json |" in torch
    )


def test_a_latest_session_without_torchvision_gets_its_block_and_the_last_one_with_a_baseline_too(tmp_path):
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 240.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    row = {"model": "mask_rcnn", "precision": "fp16", "cuda_graph": True, "batch": 8, "gpu_compute_ms": 25.0}
    row.update(gpu_images_per_s=300, nms_rounds=96, stream=stream)
    b1 = dict(row, batch=1, gpu_compute_ms=5.0, gpu_images_per_s=200, latency_ms={"p50": 10.0, "p99": 20.0})
    write("e2e_torch_cuda_run97.json", {"rows": [row, b1]})
    write("e2e_torch_cuda_run98.json", {"rows": [dict(row, stream=dict(stream, images_per_s=270.0))]})
    tv = {"model": "tv", "images": 64, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}}
    write("e2e_torchvision_run97.json", dict(tv, images_per_s=3.0))
    targets = _targets(tmp_path)
    new, old = targets.split("PyTorch, session run97 on GPU; baseline 3.0 img/s (e2e_torchvision_run97.json):")
    assert "PyTorch, session run98 on GPU; torchvision not run in this session:" in new
    assert "| PyTorch b8 end to end ≥ 250 img/s (14 worker processes) | 270 img/s | yes | e2e_torch_cuda_run98" in new
    assert "torchvision |" not in new.split("session run98")[1]  # no × rows without a baseline
    assert "| PyTorch end to end ≥ 10× torchvision (14 worker processes) | 80 × | yes |" in old  # 240 / 3
    assert "| PyTorch b1 end-to-end latency ≤ 12 ms median | 10 ms | yes | e2e_torch_cuda_run97.json |" in old


def test_a_latest_session_without_batch_1_latency_also_shows_the_last_one_that_measured_it(tmp_path):
    """Run 33 built only the batch-8 engine: the batch-1 latency targets (not met) stay in the table, from the latest
    session that measured them. The thread-sampled pass is no target row (the sampler takes the GIL every 2 ms);
    e2e_trt.py --slots-ab passes give the median of each way."""
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 280.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    engine = {"engine": "e", "batch": 8, "trt": "t", "input_dtype": "uint8", "gpu_compute_ms": 20.0}
    engine.update(gpu_images_per_s=400, stream=dict(stream, pinned_slots=False))
    b1 = dict(engine, batch=1, gpu_compute_ms=5.0, latency_ms={"p50": 14.3, "p99": 30.0})
    write("e2e_trt_run98_b1.json", {"engines": [b1]})
    write("e2e_trt_run98_b8.json", {"engines": [engine]})
    sampled = {"samples": 10, "seconds": 1.0, "threads": {}, "images_per_s": 304.0}
    ab = [
        {"mode": m, "pair": i // 2, "images_per_s": v} for i, (m, v) in enumerate([("pinned", 310.0), ("copy", 290.0)])
    ]
    write("e2e_trt_run99_b8.json", {"engines": [dict(engine, stream_thread_samples=sampled, stream_slots_ab=ab)]})
    tv = {"model": "tv", "images": 64, "latency_ms": {"p50": 1, "p90": 2, "p99": 3}}
    write("e2e_torchvision_run98.json", dict(tv, images_per_s=2.0))
    write("e2e_torchvision_run99.json", dict(tv, images_per_s=4.0))
    targets = _targets(tmp_path)
    new, old = targets.split(
        "TensorRT, session run98 on GPU (the latest session that measured batch-1 latency); baseline 2.0 img/s"
    )
    assert "TensorRT, session run99 on GPU; baseline 4.0 img/s (e2e_torchvision_run99.json):" in new
    assert "latency" not in new
    assert "304" not in new
    assert (
        "| TensorRT fp16 b8 end to end ≥ 300 img/s (host decode, page-locked slots, median of 1 A/B passes) "
        "| 310 img/s | yes | e2e_trt_run99_b8.json |" in new
    )
    assert "| TensorRT fp16 b8 end to end ≥ 300 img/s (host decode, copied slots, median of 1 A/B passes) | 290" in new
    assert "| TensorRT b1 end-to-end latency ≤ 12 ms median (host decode, RLE masks) | 14.3 ms | no |" in old


def test_kernel_paste_variants_get_table_rows_and_targets(tmp_path):
    """``--gpu-decode-variants ...:post`` (masks pasted by the torch-free CUDA kernel): each such variant is a row of
    the TensorRT table and is judged against the batch-8 and batch-1 targets; variants without it are not rows."""
    write = _e2e_writer(tmp_path)
    stream = {"images_per_s": 310.0, "processes": 14, "detections": 5, "model_starved_s": 0.1, "seconds": 1.0}
    lat = {"p50": 11.0, "p90": 12.0, "p99": 13.0, "images": 97}
    engine = {"engine": "e", "trt": "t", "input_dtype": "uint8", "gpu_compute_ms": 1.0, "gpu_images_per_s": 800}
    check = {"masks": 440, "identical_rle": 439, "host_pasted_images": 1, "images": 64}
    parity = {"images": 64, "matched": 3850, "reference_detections": 3885, "recall": 0.99, "mean_mask_iou": 0.9,
              "mean_score_diff": 0.002}  # fmt: skip
    variants = [
        {"backend": "default", "slots": 2, "stream": dict(stream, images_per_s=1.0)},  # no kernel paste: no row
        {
            "backend": "default",
            "slots": 3,
            "gpu_post": "kernel",
            "stream": stream,
            "latency_ms": lat,
            "kernel_paste_check": check,
            "parity_e2e_images": parity,
        },  # fmt: skip
        {
            "backend": "host",
            "slots": 2,
            "processes": 14,
            "gpu_post": "kernel",
            "stream": dict(stream, images_per_s=290.0),
        },
    ]
    for batch in (8, 1):
        e = dict(engine, batch=batch, stream=dict(stream, images_per_s=100.0), gpu_decode_variants=variants)
        write(f"e2e_trt_run97_b{batch}.json", {"engines": [e]})
    text = render(tmp_path)
    rows = [line for line in text.splitlines() if "masks pasted on the GPU (CUDA kernel)" in line]
    assert len(rows) == 4 and not any("| 1.0 |" in r for r in rows), rows  # two variants x two engines
    assert any("14 processes" in r for r in rows) and any("default decoder, 3 slots" in r for r in rows)
    targets = _targets(tmp_path)
    kernel = [line for line in targets.splitlines() if "masks pasted by the CUDA kernel" in line]
    assert any("≥ 300 img/s (GPU decode, masks pasted by the CUDA kernel)" in t and "310 img/s" in t for t in kernel)
    assert any("≥ 300 img/s (host decode, masks pasted by the CUDA kernel)" in t and "290 img/s" in t for t in kernel)
    assert any("≤ 12 ms median (GPU decode, masks pasted by the CUDA kernel, RLE masks)" in t for t in kernel)
    checks = [line for line in text.splitlines() if "variant default:3" in line]
    assert len(checks) == 2 and all("| 439 / 440 (1) | 3850 / 3885 |" in line for line in checks), checks


def test_paste_kernel_check_rows(tmp_path):
    write = _e2e_writer(tmp_path)
    ok = {"method": "torchvision", "dtype": "float16", "images": 8, "n": 55, "masks": 440, "identical_rle": 440,
          "host_pasted_images": 0, "paste_ms": 1.25, "host_ms": 9.5}  # fmt: skip
    bad = {"method": "detectron2", "dtype": "float32", "images": 1, "n": 55, "error": "CudaRtcError: no"}
    write("paste_kernel_check_run97.json", {"rows": [ok, bad]})
    lines = [line for line in render(tmp_path).splitlines() if line.startswith("| paste_kernel_check_run97.json |")]
    assert lines[0].endswith("| torchvision float16, 55 masks an image | 8 | 440 / 440 (0) | — | 1.25 | 9.5 |")
    assert "detectron2 float32 — CudaRtcError: no" in lines[1]
