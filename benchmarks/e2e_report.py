"""docs/e2e.md from the end-to-end benchmark results in benchmarks/results/e2e/ (one row = one run of one script
on one named machine and commit).

    python benchmarks/e2e_report.py            # rewrites docs/e2e.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "e2e"
DOC = ROOT / "docs" / "e2e.md"


def _load(name: str) -> list:
    return [(p, json.loads(p.read_text())) for p in sorted(RESULTS.glob(name))]


def render() -> str:
    lines = [
        "# End to end: images in, COCO results out",
        "",
        "Written by `benchmarks/e2e_report.py` from `benchmarks/results/e2e/*.json`; do not edit by hand.",
        "Mask R-CNN R50-FPN at 1344², the project's checkpoint, 256 synthetic 1920×1080 JPEGs, the streaming runner",
        "writing TSV + COCO results with RLE masks (no PNG). Each row is one run of the named script.",
        "",
        "| file | script | machine | commit | engine | batch | GPU compute ms | GPU img/s | streamed img/s |"
        " detections | host stages ms (decode / letterbox / postprocess+RLE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load("e2e_trt_*.json"):
        m = d["machine"]
        for e in d["engines"]:
            s, st = e.get("stream", {}), e.get("stages", {})
            lines.append(
                f"| {p.name} | {d['script']} | {m.get('gpu')}, {m.get('cpus')} CPUs, Python {m.get('python')} | "
                f"{d.get('commit_note', d.get('commit'))} | {e['trt']} fp16, {e['input_dtype']} input | {e['batch']} | "
                f"{e['gpu_compute_ms']:.2f} | {e['gpu_images_per_s']} | {s.get('images_per_s')} | "
                f"{s.get('detections')} | {st.get('decode_ms', 0):.1f} / {st.get('letterbox_ms', 0):.1f} / "
                f"{st.get('postprocess_rle_ms', 0):.1f} |"
            )
    lines += [
        "",
        "| file | script | machine | commit | model | images | img/s | latency p50 / p90 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load("e2e_torchvision_*.json"):
        m, q = d["machine"], d["latency_ms"]
        commit = d.get("commit_note", d.get("commit"))
        lines.append(
            f"| {p.name} | {d['script']} | {m.get('gpu')}, {m.get('cpus')} CPUs | {commit} | {d['model']} | "
            f"{d['images']} | {d['images_per_s']} | {q['p50']:.0f} / {q['p90']:.0f} / {q['p99']:.0f} |"
        )
    lines += [
        "",
        "`benchmarks/e2e_host.py` (python3 + torch on the GPU machine): the streaming runner's host stages with the",
        "model replaced by replayed real outputs (a host-capacity figure, not end to end), threads only vs worker",
        "processes, and the runner with the PyTorch deploy model (fp32 eager, CUDA). Seconds include starting the",
        "worker processes.",
        "",
        "| file | machine | commit | row | processes | batch | images | detections / image | img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load("e2e_host_*.json"):
        m = d["machine"]
        commit = d.get("commit_note", d.get("commit"))
        for r in d["rows"]:
            lines.append(
                f"| {p.name} | {m.get('gpu')}, {m.get('cpus')} CPUs | {commit} | {r['what']} | {r['processes']} | "
                f"{r['batch']} | {r['images']} | {r['detections_per_image']} | {r['images_per_s']} |"
            )
    mem = ROOT / "benchmarks" / "results" / "memory_cpu.json"
    if mem.is_file():
        d = json.loads(mem.read_text())
        lines += [
            "",
            f"Peak host memory (`benchmarks/memory_bench.py`, {d['machine']['platform']}, commit {d['commit']}): one "
            f"{d['photo_hw'][1]}×{d['photo_hw'][0]} JPEG, {d['detections']} detections, ONNX Runtime at "
            f"{d['input_hw'][0]}²:",
            "",
            "| case | peak RSS MiB | above the model-only process MiB |",
            "|---|---|---|",
        ]
        for k, v in d["peak_rss_mib"].items():
            lines.append(f"| {k} | {v} | {d.get('above_model_mib', {}).get(k, '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.is_file() and DOC.read_text() == text else 1)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
