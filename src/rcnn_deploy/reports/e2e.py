"""docs/e2e.md from the end-to-end benchmark results in ``benchmarks/results/e2e/`` (one row = one run of one
script on one named machine and commit). ``benchmarks/e2e_report.py`` writes it; a test checks it is current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Tuple


def _load(results: Path, pattern: str) -> List[Tuple[Path, Any]]:
    return [(p, json.loads(p.read_text())) for p in sorted(results.glob(pattern))]


def _commit(d: Any) -> str:
    return str(d.get("commit_note", d.get("commit")))


def render(root: Path) -> str:
    """The whole docs/e2e.md for the repository at ``root``."""
    results = root / "benchmarks" / "results" / "e2e"
    lines = [
        "# End to end: images in, COCO results out",
        "",
        "Written by `benchmarks/e2e_report.py` from `benchmarks/results/e2e/*.json`; do not edit by hand.",
        "Mask R-CNN R50-FPN at 1344², the project's checkpoint, 256 synthetic 1920×1080 JPEGs, the streaming runner",
        "writing TSV + COCO results with RLE masks (no PNG). Each row is one run of the named script.",
        "",
        "## TensorRT 8.6 (`benchmarks/e2e_trt.py`, CPython 3.9, no torch)",
        "",
        "| file | script | machine | commit | engine | batch | GPU compute ms | GPU img/s | streamed img/s |"
        " detections | host stages ms (decode / letterbox / postprocess+RLE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_trt_*.json"):
        m = d["machine"]
        for e in d["engines"]:
            s, st = e.get("stream", {}), e.get("stages", {})
            lines.append(
                f"| {p.name} | {d['script']} | {m.get('gpu')}, {m.get('cpus')} CPUs, Python {m.get('python')} | "
                f"{_commit(d)} | {e['trt']} fp16, {e['input_dtype']} input | {e['batch']} | "
                f"{e['gpu_compute_ms']:.2f} | {e['gpu_images_per_s']} | {s.get('images_per_s')} | "
                f"{s.get('detections')} | {st.get('decode_ms', 0):.1f} / {st.get('letterbox_ms', 0):.1f} / "
                f"{st.get('postprocess_rle_ms', 0):.1f} |"
            )
    lines += [
        "",
        "## PyTorch on the GPU, no TensorRT (`benchmarks/e2e_torch_cuda.py`)",
        "",
        "The deploy model with fp16 layers (fp32 glue), channels_last, one CUDA graph per batch size, sync-free NMS",
        "(`nms rounds` fixpoint rounds captured); GPU compute on a uint8 batch already on the GPU (CUDA events,",
        "median); streamed = `Detector.stream` with decode + letterbox + postprocessing in worker processes.",
        "",
        "| file | machine | commit | model | precision | batch | nms rounds | GPU compute ms | GPU img/s |"
        " streamed img/s (processes) | NMS fallbacks in the stream |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_torch_cuda_*.json"):
        m = d["machine"]
        for r in d["rows"]:
            s = r.get("stream", {})
            streamed = f"{s['images_per_s']} ({s['processes']})" if s else "not run"
            lines.append(
                f"| {p.name} | {m.get('gpu')}, {m.get('cpus')} CPUs, torch {m.get('torch')} | {_commit(d)} | "
                f"{r['model']} | {r['precision']}{'' if r['cuda_graph'] else ', eager'} | {r['batch']} | "
                f"{r.get('nms_rounds', 'adaptive')} | {r['gpu_compute_ms']:.2f} | {r['gpu_images_per_s']} | "
                f"{streamed} | {s.get('nms_fallbacks_total', '')} |"
            )
    lines += [
        "",
        "## torchvision's own eager model (`benchmarks/e2e_torchvision.py`), the baseline",
        "",
        "| file | script | machine | commit | model | images | img/s | latency p50 / p90 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_torchvision_*.json"):
        m, q = d["machine"], d["latency_ms"]
        lines.append(
            f"| {p.name} | {d['script']} | {m.get('gpu')}, {m.get('cpus')} CPUs | {_commit(d)} | {d['model']} | "
            f"{d['images']} | {d['images_per_s']} | {q['p50']:.0f} / {q['p90']:.0f} / {q['p99']:.0f} |"
        )
    lines += [
        "",
        "## Host stages alone (`benchmarks/e2e_host.py`)",
        "",
        "python3 + torch on the GPU machine: the streaming runner's host stages with the model replaced by replayed",
        "real outputs (a host-capacity figure, not end to end), threads only vs worker processes, and the runner",
        "with the PyTorch deploy model (fp32 eager, CUDA). Seconds include starting the worker processes.",
        "",
        "| file | machine | commit | row | processes | batch | images | detections / image | img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_host_*.json"):
        m = d["machine"]
        for r in d["rows"]:
            lines.append(
                f"| {p.name} | {m.get('gpu')}, {m.get('cpus')} CPUs | {_commit(d)} | {r['what']} | {r['processes']} | "
                f"{r['batch']} | {r['images']} | {r['detections_per_image']} | {r['images_per_s']} |"
            )
    mems = sorted(_load(root / "benchmarks" / "results", "memory_cpu_*.json"), key=lambda pd: tuple(pd[1]["input_hw"]))
    if mems:
        lines += [
            "",
            "## Peak host memory (`benchmarks/memory_bench.py`)",
            "",
            "`rcnn-deploy infer` on one synthetic 6000×4000 JPEG with 100 detections (the export's score threshold at",
            "0), ONNX Runtime on the CPU, each case in a fresh process (its `ru_maxrss`): `infer` writes TSV, COCO RLE",
            "and the PNG; `infer-no-png` the same without the PNG; `dense-masks` reads the Python API's dense",
            "`[N, H, W]` bool masks; `model-only` loads the backend and runs one 64×64 image. Above the model-only",
            "process: the row's peak minus the model-only row's (the pipeline's own share).",
            "",
            "| file | machine | commit | photo | input | case | peak RSS MiB | above the model-only process MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p, d in mems:
            m = d["machine"]
            commit = _commit(d) + (" (uncommitted changes)" if d.get("dirty") else "")
            photo = f"{d['photo_hw'][1]}×{d['photo_hw'][0]}, {d['detections']} detections"
            size = f"{d['input_hw'][0]}×{d['input_hw'][1]}"
            for k, v in d["peak_rss_mib"].items():
                lines.append(
                    f"| {p.name} | {m['platform']}, {m['cpus']} CPUs | {commit} | {photo} | {size} | {k} | {v} | "
                    f"{d.get('above_model_mib', {}).get(k, '')} |"
                )
    streams = _load(root / "benchmarks" / "results" / "cpu", "cpu_stream_*.json")
    if streams:
        lines += [
            "",
            "## Streamed against sequential on the CPU (`benchmarks/cpu_stream.py`)",
            "",
            "The same work per image on both paths (decode a 1920×1080 JPEG, letterbox, the model at batch 1, boxes",
            "back to the image, masks as COCO RLE, a TSV; a PNG too where the row says so): `sequential` one image",
            "after another on one thread, `streamed` through `Detector.stream`. Best of two alternating passes each;",
            "results checked equal.",
            "",
            "| file | machine | commit | model | input | images | PNG | load before passes | sequential img/s |"
            " streamed img/s | streamed / sequential | same results |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p, d in streams:
            m, best = d["machine"], d["best"]
            lines.append(
                f"| {p.name} | {m['platform']}, {m['cpus']} CPUs | {_commit(d)} | ONNX Runtime, {d['model']} | "
                f"{d['input_hw'][0]}² | {d['images']} | {'yes' if d['visualize'] else 'no'} | "
                f"{', '.join(str(x) for x in d['load_average_before_each_pass'])} | "
                f"{best['sequential']['images_per_s']} | {best['streamed']['images_per_s']} | {d['speedup']} | "
                f"{d['same_results']} |"
            )
    return "\n".join(lines) + "\n"
