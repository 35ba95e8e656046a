"""Render docs/results.md (and the README's results table) from benchmarks/results/: results_table_run*.json
(written on the GPU machine by benchmarks/results_table.py), nms_bench_run*.json (benchmarks/nms_bench.py) and
runs.json (what each run measured). Nothing here is typed in by hand: every number comes from those files.

    python benchmarks/update_results.py [--results benchmarks/results] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("backbone", "box_head", "mask_head")


def _f(v, nd=2, dash="—"):
    return dash if v is None else f"{v:.{nd}f}"


NAMES = {"pytorch": "PyTorch (deploy model)", "tensorrt": "TensorRT 8.6", "onnxruntime": "ONNX Runtime (CPU)"}


def _fused(r: dict) -> bool:
    return str(r.get("graph", r.get("variant", ""))).startswith("fused")


def annotate(state: dict, name: str, meta: dict) -> dict:
    """One run's file, its entries labelled: run number, the RPN NMS layout of its fused graphs (from
    runs.json), size, display backend name; accuracy rows get their Δ against the PyTorch row of the same
    size and images (this run's, else another run's: the validation images are the same deterministic ones)."""
    run = _run_number(name)
    layout = meta.get("rpn_nms", "per level")  # runs newer than runs.json measured the current graphs
    size = state.get("config", {}).get("size", 384)
    out = {k: state.get(k, {}) for k in ("info", "config")}
    for part in ("rows", "latency", "builds"):
        out[part] = []
        for r in state.get(part, []):
            r = dict(r, run=run)
            r["size"] = r.get("size") or size
            r["rpn_nms"] = layout if _fused(r) else None
            if part == "rows":
                r["backend"] = NAMES.get(r.get("backend"), r.get("backend"))
            if part == "latency":
                r["batch"] = _batch(r)
            out[part].append(r)
    return out


def _run_number(name: str) -> int:
    """``results_table_run10.json`` -> 10 (files sort by this number, not by name: run10 comes after run9)."""
    return int("".join(c for c in name.split("run")[-1] if c.isdigit()) or 0)


def merge(states: list) -> dict:
    """Later runs add what earlier ones lacked: accuracy rows by (size, backend, graph, precision, RPN NMS),
    latency rows by (size, variant, engine, batch, RPN NMS), builds by (size, graph, role, precision, RPN NMS);
    a measured entry replaces a failed one and is never replaced by a failure. The host stages (decode +
    letterbox, unpad + mask paste) are kept per run: an end-to-end figure adds the host stages of the run
    that timed the engine."""
    out: dict = {"rows": [], "latency": [], "builds": []}
    # Δ against the PyTorch row of the same size and images (the validation images are deterministic, so
    # another run's reference serves a run that has none; the latest one wins)
    refs = {}
    for st in states:
        for r in st.get("rows", []):
            if str(r.get("backend")).startswith("PyTorch") and "error" not in r:
                refs[(r["size"], r.get("images"))] = r
    for st in states:
        for r in st.get("rows", []):
            ref = refs.get((r.get("size"), r.get("images")))
            if ref is not None and not str(r.get("backend")).startswith("PyTorch") and "error" not in r:
                r["d_bbox"] = r["bbox_mAP"] - ref["bbox_mAP"]
                if r.get("segm_mAP") is not None and ref.get("segm_mAP") is not None:
                    r["d_segm"] = r["segm_mAP"] - ref["segm_mAP"]

    def row_key(r: dict) -> tuple:  # references on other images are other measurements
        images = r.get("images") if str(r.get("backend")).startswith("PyTorch") else None
        return (r.get("size"), r.get("backend"), r.get("graph"), r.get("precision"), r.get("rpn_nms"), images)

    keys = {
        "rows": row_key,
        "latency": lambda r: (
            r.get("size"),
            r.get("variant"),
            r.get("engine"),
            _batch(r),
            r.get("rpn_nms"),
            r.get("run") if r.get("variant") == "host" else None,
        ),
        "builds": lambda r: (
            r.get("size"),
            r.get("variant"),
            r.get("role"),
            r.get("label_precision"),
            r.get("rpn_nms"),
        ),
    }
    for st in states:
        for k in ("info", "config"):
            out.setdefault(k, st.get(k, {}))
        for part, key in keys.items():
            index = {key(r): i for i, r in enumerate(out[part])}
            for r in st.get(part, []):
                r = dict(r, batch=_batch(r)) if part == "latency" else r
                ok = "error" not in r and r.get("ok", True) and not r.get("skipped")
                if key(r) not in index:
                    index[key(r)] = len(out[part])
                    out[part].append(r)
                elif ok or part == "builds":  # a later build record says what happened last
                    out[part][index[key(r)]] = r
    return out


def _runs(parts: list) -> str:
    """The run column of a row summed from several engines: every run it draws on (engines of one split graph
    may have been timed by different runs)."""
    return ", ".join(str(r) for r in sorted({p["run"] for p in parts}))


def _lat(lat, size, variant, engine, batch, layout=None):
    for r in lat:
        same = (r["size"], r["variant"], r["engine"], _batch(r)) == (size, variant, engine, batch)
        if same and r.get("rpn_nms") == layout:
            return r if "error" not in r else None
    return None


def _why(row: dict, builds: list) -> str:
    """A failed accuracy row, explained by its engines' build records when that is the reason."""
    if "was not built" not in row["error"]:
        return "error: " + row["error"][:160]
    mine = [
        b
        for b in builds
        if (b.get("size"), b.get("variant"), b.get("label_precision"), b.get("rpn_nms"))
        == (row["size"], row["graph"], row["precision"], row.get("rpn_nms"))
    ]
    failed = [b for b in mine if not b.get("ok") and "out of time" not in str(b.get("error", ""))]
    if failed:
        b = failed[0]
        internal = [e for e in b.get("log_errors", []) if "Internal Error" in e]
        if internal and "killed" in str(b.get("error")):  # the build failed, then its fallback build was killed
            where = re.search(r"\[([\w.:]+)\] Error Code \d+: Internal Error \((.*?)\s*\)", internal[0])
            what = f"{where.group(2).rstrip('. ')} in {where.group(1)}" if where else internal[0][-120:]
            return (
                f"not measured: the {b['role']} engine build failed (TensorRT internal error: {what}); the retry"
                f" without the glue rule was killed, {b.get('seconds', 0):.0f} s after the start"
            )
        if "killed" in str(b.get("error")):
            secs = b.get("seconds", 0)
            return f"not measured: the {b['role']} engine build was still running after {secs:.0f} s (killed)"
        return f"engine build failed ({b['role']}: {str(b.get('error', ''))[:90]})"
    return "not measured: device time ran out before this row"


def _split_engines(prec: str) -> list:
    """The split graph's three engine files of a precision row: int8 is the backbone, the heads run fp16
    (results_table.split_engine's rule)."""
    return [f"{role}_{'fp16' if prec == 'int8' and role != 'backbone' else prec}.engine" for role in ROLES]


def _sort(rows: list) -> list:
    order = {"PyTorch": 0, "ONNX Runtime": 1, "TensorRT": 2}
    prec_order = {"fp32": 0, "fp16": 1, "int8": 2}
    return sorted(
        rows,
        key=lambda r: (
            min(v for k, v in order.items() if r.get("backend", "").startswith(k) or v == 2),
            r.get("graph") != "split",
            prec_order.get(r.get("precision"), 3),
            r.get("run", 0),
        ),
    )


def _graph(r: dict) -> str:
    return f"{r['graph']}, RPN NMS {r['rpn_nms']}" if r.get("rpn_nms") else r["graph"]


def _delta(r: dict, key: str) -> str:
    return _f(r.get(key), 4)


def load_split_io(res: Path) -> dict:
    """The split pipeline's stage timings: device_io_run*.json (benchmarks/trt86_device_io.py: each split engine
    through the host path and the GPU-resident path) and split_glue_run*.json (benchmarks/split_glue_time.py:
    the glue alone on the GPU; the whole split pipeline in ONNX Runtime on the CPU), or the same rows in a
    results_table_run*.json (its ``pipeline`` stage); each row labelled with its run, later runs replacing
    earlier rows of the same key."""
    out: dict = {"engines": {}, "glue": {}, "onnxruntime": {}}
    sources = []  # (run, prefix, rows): the tools' own files, and the pipeline stage of results_table.py
    for prefix in ("device_io", "split_glue"):
        for p in res.glob(f"{prefix}_run*.json"):
            sources.append((_run_number(p.name), prefix, json.loads(p.read_text())["results"]))
    for p in res.glob("results_table_run*.json"):
        state = json.loads(p.read_text())
        sources += [(_run_number(p.name), k, state[k]) for k in ("device_io", "split_glue") if state.get(k)]
    for run, prefix, rows in sorted(sources, key=lambda s: s[0]):
        for r in rows:
            if "error" in r:  # a tool that failed: its log says why; no timing to show
                continue
            r = dict(r, run=run)
            if prefix == "device_io":
                out["engines"][(r["size"], r["engine"], r["batch"])] = r
            elif r.get("backend") == "onnxruntime-cpu":
                out["onnxruntime"][(r["size"], r["batch"])] = r
            else:
                out["glue"][(r["size"], r["batch"])] = r
    return out


def split_pipeline(split_io: dict, size: int, prec: str, batch: int) -> dict | None:
    """The GPU-resident split pipeline's wall time per call, stages summed: the three engines' device-path
    calls + the glue (None unless all four were measured)."""
    parts = [split_io["engines"].get((size, n, batch)) for n in _split_engines(prec)]
    glue = split_io["glue"].get((size, batch))
    if not all(parts) or glue is None:
        return None
    return {
        "device_ms": sum(p["device_io_wall_ms"] for p in parts) + glue["glue_median_ms"],
        "host_ms": sum(p["host_io_wall_ms"] for p in parts) + glue["glue_median_ms"],
        "glue_ms": glue["glue_median_ms"],
        "runs": [glue] + parts,
    }


def render(
    state: dict, runs_meta: dict | None = None, nms_bench: list | None = None, split_io: dict | None = None
) -> str:
    split_io = split_io or {"engines": {}, "glue": {}, "onnxruntime": {}}
    cfg, info = state.get("config", {}), state.get("info", {})
    S, BIG, B = cfg.get("size", 384), cfg.get("big", 1344), cfg.get("batch", 8)
    lat = state.get("latency", [])
    hosts: dict = {}  # run -> {"preprocess": ms, "postprocess": ms}
    for r in sorted((r for r in lat if r.get("variant") == "host"), key=lambda r: r["run"]):
        hosts.setdefault(r["run"], {})[r["engine"]] = r["median_ms"]

    def e2e_of(x: dict | None, wall: float | None = None):
        """Host stages + the model's wall time (``wall``, else the engine's copy-in/execute/copy-out), the
        host stages from the run that timed the model (else the latest run that timed them)."""
        if not x or not hosts:
            return None
        host = hosts.get(x["run"]) or hosts[max(hosts)]
        if host.get("preprocess") is None or host.get("postprocess") is None:
            return None
        return host["preprocess"] + (x["infer_wall_median_ms"] if wall is None else wall) + host["postprocess"]

    rows = _sort(state.get("rows", []))
    out = [
        "# Results",
        "",
        "Generated by `benchmarks/update_results.py` from `benchmarks/results/results_table_run*.json`, which",
        "`benchmarks/results_table.py` wrote on the GPU machine (one file per device call sequence; where two",
        "runs measured the same entry of the same graph, the later one is shown), `device_io_run*.json` /",
        "`split_glue_run*.json` (`benchmarks/trt86_device_io.py`, `benchmarks/split_glue_time.py`: the split",
        "pipeline's stages, run N's) and `nms_bench_*.json` (`benchmarks/nms_bench.py`). Do not edit by hand.",
        "The *run* column names the files a row comes from (latency columns come from the latest run that timed",
        "that engine, so a row can name several runs):",
        "",
    ]
    for name, meta in (runs_meta or {}).items():
        out.append(f"- run {name.split('run')[-1].split('.')[0]} (`{name}`): {meta.get('note', '')}.")
    out += [
        "",
        f"- TensorRT 8.6.0 (CPython 3.9); PyTorch {info.get('torch', '?')}.",
        f"- Model: `checkpoints/{info.get('checkpoint', '?')}` (sha256 {info.get('checkpoint_sha256', '?')}…),"
        f" Mask R-CNN R50-FPN trained by `recipes/train_shapes.sh`; input {S}×{S}.",
        f"- Accuracy: COCO mAP@[.5:.95] on the first {cfg.get('eval_images', '?')} images of the synthetic"
        " validation split (seed 2); Δ = row minus the PyTorch fp32 reference on the same images. *matched* = reference"
        " detections found by the row (same class, box IoU ≥ 0.5).",
        "- *RPN NMS one set*: the fused graph's RPN NMS ran as one EfficientNMS over all levels' candidates (the"
        " plugin considers at most 4096 of them); *per level*: one NMS per FPN level side by side, merged by score"
        " (the same proposals as torchvision's batched NMS; see the section on the RPN NMS alone).",
        "- Latency: median of 200 CUDA-event-timed runs with CUDA-graph replay (GPU compute, inputs already on"
        " the GPU, like `trtexec --noDataTransfers`). *End-to-end* = host decode + letterbox, plus copy in +"
        " execute + copy out, plus unpad + mask paste: medians of each stage, summed.",
        # runs 1-9 wrote no big_calib_images into their config; they calibrated on 16 images at --big
        f"- int8: entropy calibration on {cfg.get('calib_images', '?')} training-split images (seed 1) at {S}², the"
        f" first {cfg.get('big_calib_images', 16)} of them (letterboxed up) at {cfg.get('big', '?')}². In the split"
        " graphs only the backbone is int8 (the heads take ROI features the image calibrator cannot feed; they"
        " run fp16).",
        "",
        f"## Accuracy and latency at {S}×{S}",
        "",
        f"| backend | graph | precision | GPU compute b1 (ms) | end-to-end b1 (ms) | throughput b{B} (img/s) "
        "| bbox mAP | segm mAP | Δ bbox | Δ segm | matched | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("size") != S:
            continue
        prec, graph = r.get("precision"), r.get("graph")
        if "error" in r:
            out.append(
                f"| {r['backend']} | {_graph(r)} | {prec} | {_why(r, state.get('builds', []))} ||||||||| {r['run']} |"
            )
            continue
        b1 = e2e = thr = None
        note, runs = "", str(r["run"])
        if r["backend"].startswith("PyTorch"):
            x1, x8 = _lat(lat, S, "pytorch", "deploy model fp32", 1), _lat(lat, S, "pytorch", "deploy model fp32", B)
            b1 = x1 and x1["median_ms"]
            e2e = e2e_of(x1)
            thr = x8 and B * 1000.0 / x8["median_ms"]
            runs = _runs([r] + [x for x in (x1, x8) if x])
        elif r["backend"].startswith("TensorRT") and graph.startswith("fused"):
            x1 = _lat(lat, S, "fused_b1", f"fused_{prec}.engine", 1, r.get("rpn_nms"))
            x8 = _lat(lat, S, f"fused_b{B}", f"fused_{prec}.engine", B, r.get("rpn_nms"))
            b1 = x1 and x1["median_ms"]
            e2e = e2e_of(x1)
            thr = x8 and B * 1000.0 / x8["median_ms"]
            runs = _runs([r] + [x for x in (x1, x8) if x])
        elif r["backend"].startswith("TensorRT"):
            names = _split_engines(prec)
            parts1 = [_lat(lat, S, "split", n, 1) for n in names]
            parts8 = [_lat(lat, S, "split", n, B) for n in names]
            b1 = sum(p["median_ms"] for p in parts1) if all(parts1) else None
            thr = B * 1000.0 / sum(p["median_ms"] for p in parts8) if all(parts8) else None
            note = "¹"
            pipe = split_pipeline(split_io, S, prec, 1)
            e2e = pipe and e2e_of(pipe["runs"][0], pipe["device_ms"])
            runs = _runs([r] + [p for p in parts1 + parts8 + (pipe["runs"] if pipe else []) if p])
        elif r["backend"].startswith("ONNX Runtime"):
            x1, x8 = split_io["onnxruntime"].get((S, 1)), split_io["onnxruntime"].get((S, B))
            e2e = x1 and e2e_of(x1, x1["wall_median_ms"])
            thr = x8 and B * 1000.0 / x8["wall_median_ms"]  # the whole split pipeline on the CPU, per batch
            runs = _runs([r] + [x for x in (x1, x8) if x])
        par = r.get("parity") or {}
        matched = f"{par['matched']}/{par['reference_detections']}" if par else "—"
        mark = lambda v, n=note: n if v else ""  # noqa: E731
        out.append(
            f"| {r['backend']} | {_graph(r)} | {prec} | {_f(b1)}{mark(b1)} | {_f(e2e or None)}{mark(e2e)} "
            f"| {_f(thr, 0)}{mark(thr)} | {r['bbox_mAP']:.4f} | {_f(r.get('segm_mAP'), 4)} "
            f"| {_delta(r, 'd_bbox')} | {_delta(r, 'd_segm')} | {matched} | {runs} |"
        )
    out += [
        "",
        "¹ Split graphs: GPU compute = the three engines' GPU compute summed (backbone at batch b, box head on"
        " 1000·b ROIs, mask head on 100·b ROIs), the glue between them (NMS, ROIAlign in torch on the GPU) not"
        " included. End-to-end = the GPU-resident split runtime's stages summed: each engine's zero-copy call"
        " (`TensorRTBackend.infer_device`, timed by `benchmarks/trt86_device_io.py` in the TensorRT 8.6 process),"
        " the glue with the image upload and output download (`benchmarks/split_glue_time.py`, torch), and the"
        " host stages. On the GPU machine TensorRT 8.6 (CPython 3.9) and torch live in separate processes, so"
        " the split pipeline has not run end to end in one process there (see *The split pipeline* below).",
        "The ONNX Runtime row runs on the GPU machine's CPU: its end-to-end is the whole split pipeline in ONNX"
        " Runtime (`split_glue_time.py --onnxruntime`) plus the host stages, its throughput that pipeline's"
        f" wall time at batch {B}.",
        f"The fused rows' mAP comes from the batch-{B} engine; GPU compute b1 from the batch-1 engine of the same"
        " graph.",
        "",
        f"## Accuracy at {BIG}×{BIG}",
        "",
        f"The validation images letterboxed (upscaled) to {BIG}×{BIG}; the checkpoint was trained at {S}, so the"
        " absolute mAP is low: what counts is the difference to PyTorch on the same images.",
        "",
        "| backend | graph | precision | images | bbox mAP | segm mAP | Δ bbox | Δ segm | matched | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("size") != BIG:
            continue
        if "error" in r:
            out.append(
                f"| {r['backend']} | {_graph(r)} | {r['precision']} | {_why(r, state.get('builds', []))} "
                f"|||||| {r['run']} |"
            )
            continue
        par = r.get("parity") or {}
        matched = f"{par['matched']}/{par['reference_detections']}" if par else "—"
        out.append(
            f"| {r['backend']} | {_graph(r)} | {r['precision']} | {r.get('images')} | {r['bbox_mAP']:.4f} "
            f"| {_f(r.get('segm_mAP'), 4)} | {_delta(r, 'd_bbox')} | {_delta(r, 'd_segm')} | {matched} | {r['run']} |"
        )
    out += [
        "",
        f"## Whole Mask R-CNN at {BIG}×{BIG} (issue 4 targets)",
        "",
        "| model | precision | batch | GPU compute median (ms) | p99 (ms) | img/s | build (s) | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = {"pytorch": 0, "torchvision eager": 1}
    for r in sorted(lat, key=lambda r: (kinds.get(r["variant"], 2), r["batch"], r["engine"], r["run"])):
        if r["size"] != BIG or r["variant"] == "split":
            continue
        name = {
            "pytorch": "PyTorch deploy model (eager)",
            "torchvision eager": "torchvision maskrcnn_resnet50_fpn (eager)",
        }.get(r["variant"], f"TensorRT fused ({r['variant']}, RPN NMS {r.get('rpn_nms')})")
        prec = r["engine"].split("_")[-1].replace(".engine", "") if r["engine"].endswith(".engine") else "fp32"
        if "error" in r:
            out.append(f"| {name} | {prec} | {r['batch']} | error ||||| {r['run']} |")
            continue
        out.append(
            f"| {name} | {prec} | {r['batch']} | {r['median_ms']:.2f} | {_f(r.get('p99_ms'))} "
            f"| {r['batch'] * 1000.0 / r['median_ms']:.0f} | {_f(r.get('build_seconds'), 1)} | {r['run']} |"
        )
    for prec in ("fp32", "fp16", "int8"):
        for b in (1, B):
            names = _split_engines(prec)
            parts = [_lat(lat, BIG, "split", n, b) for n in names]
            if not all(parts):
                continue
            ms = sum(p["median_ms"] for p in parts)
            built = [p.get("build_seconds") for p in parts]
            out.append(
                f"| TensorRT split, 3 engines summed² | {prec} | {b} | {ms:.2f} | — | {b * 1000.0 / ms:.0f} "
                f"| {_f(sum(built) if all(built) else None, 1)} | {_runs(parts)} |"
            )
    out += [
        "",
        "² The split graphs' three engines (backbone at batch b, box head on 1000·b ROIs, mask head on 100·b ROIs;"
        " int8: the backbone int8, the heads fp16), their medians summed; the glue between them (NMS, ROIAlign,"
        " in torch on the GPU) is not included, so this is not the whole model's time. Build: the three summed.",
    ]
    groups = [r for r in lat if r["size"] == BIG and r.get("layer_groups_ms")]
    if groups:
        out += [
            "",
            "Where the fused engines' time goes (per-layer profile, ms per inference; profiled runs serialise the"
            " layers, so the sum exceeds the median):",
            "",
        ]
        for r in groups:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["layer_groups_ms"].items())
            out.append(f"- {r['engine']} batch {r['batch']}, RPN NMS {r.get('rpn_nms')} (run {r['run']}): {parts}.")
    if split_io["engines"]:
        out += [
            "",
            "## The split pipeline: engine I/O through the host or on the GPU",
            "",
            "`benchmarks/trt86_device_io.py` (TensorRT 8.6, H200): each split engine called through the host path"
            " (`TensorRTBackend.infer`: copy the inputs in, execute, copy the outputs out) and through the"
            " GPU-resident path (`infer_device` on caller-owned device memory and the caller's stream, what the"
            " split runtime does with torch CUDA tensors); wall clock per call, median of 30. *Same outputs*:"
            " both paths' outputs bitwise equal. Box head inputs: 1000 ROIs per image, mask head 100; the heads' host"
            " cost is mostly their ROI-feature inputs (the box head's are 49 MiB per image).",
            "",
            "| size | engine | batch | outputs (MiB) | host I/O (ms) | device I/O (ms) | same outputs | run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (size, eng, b), r in sorted(
            split_io["engines"].items(), key=lambda kv: (kv[0][0], ROLES.index(kv[1]["role"]), kv[0][2])
        ):
            same = "yes" if r.get("same_outputs") else f"no (max diff {r.get('max_abs_diff')})"
            out.append(
                f"| {size} | {eng} | {b} | {r['output_mbytes']:.1f} | {r['host_io_wall_ms']:.2f} "
                f"| {r['device_io_wall_ms']:.2f} | {same} | {r['run']} |"
            )
        out += [
            "",
            "The whole split pipeline per call, stages summed: the three engines plus the glue"
            " (`benchmarks/split_glue_time.py`: the glue alone in torch on the GPU, the network outputs replayed,"
            " with the image upload and the outputs' download; host decode and mask paste not included).",
            "",
            "| size | precision | batch | glue (ms) | engines through the host + glue (ms) | GPU-resident (ms) "
            "| img/s GPU-resident | run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for size in sorted({k[0] for k in split_io["engines"]}):
            for prec in ("fp32", "fp16", "int8"):
                for b in sorted({k[2] for k in split_io["engines"]}):
                    pipe = split_pipeline(split_io, size, prec, b)
                    if pipe:
                        out.append(
                            f"| {size} | {prec} | {b} | {pipe['glue_ms']:.2f} | {pipe['host_ms']:.2f} "
                            f"| {pipe['device_ms']:.2f} | {b * 1000.0 / pipe['device_ms']:.0f} "
                            f"| {_runs(pipe['runs'])} |"
                        )
    if nms_bench:
        out += [
            "",
            "## The RPN NMS alone",
            "",
            "`benchmarks/nms_bench.py`: the RPN's NMS alone, on the real candidates of the checkpoint's RPN for"
            " synthetic validation images. TensorRT rows: the plugin lowering built like the engines (fp16 flags,"
            " fp32 glue), GPU compute timed the same way. ONNX Runtime rows (`--onnxruntime`, this repository's"
            " CPU machine): the tensor lowering (the fixpoint Loop that TensorRT-RTX and plugin-free TensorRT"
            " build), host wall time of a run, median of 3. *Proposals as eager* = proposals equal (IoU > 0.99)"
            " to one of torchvision's batched NMS over the levels, over that NMS's proposals.",
            "",
            "| backend | input | batch | candidates per image | layout | median (ms) | p99 (ms) | proposals as eager |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in nms_bench:
            v = r.get("vs_eager") or {}
            same = f"{v['matched']}/{v['reference']}" if v else "—"
            layout = {"one_set": "one set (all levels)", "per_level": "per level"}.get(r["layout"], r["layout"])
            out.append(
                f"| {r['backend']} | {r['size']}² | {r['batch']} | {r['candidates']} | {layout} "
                f"| {_f(r.get('median_ms'))} | {_f(r.get('p99_ms'))} | {same} |"
            )
    out += [
        "",
        "## Engine builds",
        "",
        "| size | graph | engine | precision | ok | build (s) | calibration batches | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in state.get("builds", []):
        cal = b.get("calibration_batches")
        cal = "—" if cal is None else (f"{cal} (cache reused)" if cal == 0 else str(cal))
        if b.get("calib_graph") and b.get("ok"):  # int8 from the split backbone's calibration cache
            cal = f"0 (the split backbone's cache: {b.get('int8_ranges', '?')} tensor ranges)"
        status = "yes" if b.get("ok") else f"no: {str(b.get('error', ''))[:100]}"
        graph = f"{b['variant']}, RPN NMS {b['rpn_nms']}" if b.get("rpn_nms") else b["variant"]
        out.append(
            f"| {b['size']} | {graph} | {b['role']} | {b.get('label_precision') or b['precision']} | {status} "
            f"| {_f(b.get('build_seconds'), 1)} "
            f"| {cal} | {b['run']} |"
        )
    return "\n".join(out) + "\n"


def load(res: Path) -> tuple:
    """Every committed run of ``res`` (annotated, in run order), runs.json and the NMS benchmark rows."""
    meta_file = res / "runs.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    files = sorted(res.glob("results_table_run*.json"), key=lambda p: _run_number(p.name))
    states = [annotate(json.loads(p.read_text()), p.name, meta.get(p.name, {})) for p in files]
    bench = []
    for p in sorted(res.glob("nms_bench_*.json")):
        data = json.loads(p.read_text())
        gpu = data.get("info", {}).get("gpu", "?")
        for r in data["results"]:
            bench.append({"backend": f"TensorRT 8.6 EfficientNMS_TRT ({gpu})", **r, "file": p.name})
    return states, {p.name: meta.get(p.name, {}) for p in files}, bench


def render_sensitivity(res: Path) -> str:
    """The fp16 emulation on the CPU (benchmarks/fp16_sensitivity.py), if its results file exists."""
    out = []
    for p in sorted(res.glob("fp16_sensitivity_*.json")):
        data = json.loads(p.read_text())
        rows = data["rows"]
        ref = next((r for r in rows if r["variant"] == "fp32"), None)
        out += [
            "",
            f"## fp16 sensitivity, emulated on the CPU (`{p.name}`)",
            "",
            f"`benchmarks/fp16_sensitivity.py`, input {data['info'].get('size')}²: {data['info'].get('what', '')}"
            " Not TensorRT: which rounding moves the mAP, and by how much.",
            "",
            "| variant | images | bbox mAP | segm mAP | Δ bbox | Δ segm |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            d_b = r["bbox_mAP"] - ref["bbox_mAP"] if ref and r is not ref else None
            d_s = r["segm_mAP"] - ref["segm_mAP"] if ref and r is not ref else None
            out.append(
                f"| {r['variant']} | {r['images']} | {r['bbox_mAP']:.4f} | {r['segm_mAP']:.4f} "
                f"| {_f(d_b, 4)} | {_f(d_s, 4)} |"
            )
    return "\n".join(out) + ("\n" if out else "")


def rendered(res: Path) -> str:
    states, meta, bench = load(res)
    return render(merge(states), meta, bench, load_split_io(res)) + render_sensitivity(res)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)].split("\n", 2)[2].strip()


README_BLOCKS = {"results-table": "## Accuracy and latency", "results-big": "## Whole Mask R-CNN"}


def readme_blocks(text: str) -> dict:
    """The README's generated blocks (marker name -> content): the accuracy/latency table at the training size
    and the whole-model table at the large size, cut from docs/results.md."""
    return {name: _section(text, heading) for name, heading in README_BLOCKS.items()}


def _batch(r: dict) -> int:
    """Images per run. The first results_table.py run stored trt_tool's leading dimension for head engines
    (ROIs: 1000 per image for the box head, 100 for the mask head); convert those to images."""
    b = int(r.get("batch", 1))
    eng = str(r.get("engine", ""))
    if eng.startswith("box_head") and b >= 1000:
        return b // 1000
    if eng.startswith("mask_head") and b >= 100:
        return b // 100
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    a = ap.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    text = rendered(a.results)
    a.out.write_text(text)
    print(f"wrote {a.out} from {a.results}")
    if a.readme.is_file():
        readme = a.readme.read_text()
        for name, block in readme_blocks(text).items():
            begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
            if begin in readme and end in readme:
                readme = readme[: readme.index(begin) + len(begin)] + "\n" + block + "\n" + readme[readme.index(end) :]
        a.readme.write_text(readme)
        print(f"updated {a.readme}")


if __name__ == "__main__":
    main()
