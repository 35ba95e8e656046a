"""docs/results.md and the README's results tables, rendered from the committed GPU runs in benchmarks/results/.

Inputs (nothing is typed in by hand): ``results_table_run<N>.json`` (benchmarks/results_table.py on the GPU
machine: accuracy rows, latency rows, engine builds, the split pipeline's stages), ``device_io_run<N>.json`` and
``split_glue_run<N>.json`` (benchmarks/trt86_device_io.py, benchmarks/split_glue_time.py), ``nms_bench_*.json``,
``fp16_sensitivity_*.json`` and ``runs.json`` (per run: the commit it measured, its session, what it did).

The rule that keeps the tables trustworthy: **every row is one run's measurement**, named by its run number,
the GPU that run recorded and the commit it measured. Where several runs measured the same thing, the current
tables show the latest successful one; a derived figure (a Δ against the PyTorch reference, an end-to-end sum of
stages, three split engines summed) is only formed from parts of the same run, never across runs. Every run's
complete record, failures included, is in the History section of docs/results.md.

    from rcnn_deploy.reports.results import render_results, readme_blocks
    text = render_results(Path("benchmarks/results"))      # docs/results.md
    blocks = readme_blocks(text)                            # README marker name -> table
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

ROLES = ("backbone", "box_head", "mask_head")
PRECISIONS = ("fp32", "fp16", "int8")
NAMES = {"pytorch": "PyTorch (deploy model)", "tensorrt": "TensorRT 8.6", "onnxruntime": "ONNX Runtime (CPU)"}
RUN_COLUMN = "run · GPU · commit"
CURRENT_RPN_NMS = "per level"  # the fused graphs' RPN NMS layout of the current code; "one set" is history
#: README marker name -> the docs/results.md heading whose table it repeats.
README_BLOCKS = {
    "results-accuracy": "## Accuracy at the training size",
    "results-latency": "## Latency at the training size",
    "results-big": "## Latency at the large size",
}


# --------------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One results_table_run<N>.json with its runs.json entry; entries annotated with ``run`` and ``size``."""

    number: int
    file: str
    gpu: str  # as the run recorded it (info.gpu)
    commit: Optional[str]  # runs.json "commit"; None where the run did not record it
    meta: Dict[str, Any]
    config: Dict[str, Any]
    info: Dict[str, Any]
    rows: List[Dict[str, Any]] = field(default_factory=list)  # accuracy
    latency: List[Dict[str, Any]] = field(default_factory=list)
    builds: List[Dict[str, Any]] = field(default_factory=list)
    device_io: List[Dict[str, Any]] = field(default_factory=list)  # split engines: host path vs GPU-resident
    glue: List[Dict[str, Any]] = field(default_factory=list)  # the split glue alone, and ONNX Runtime's pipeline

    @property
    def label(self) -> str:
        """``9 · H200 · 79ced75``: the run column of every table."""
        return f"{self.number} · {short_gpu(self.gpu)} · {self.commit or 'commit not recorded'}"

    def host(self, size: int) -> Optional[Tuple[float, float]]:
        """This run's host stages at ``size`` (decode + letterbox, unpad + mask paste), medians in ms."""
        got = {r["engine"]: r.get("median_ms") for r in self.latency if r["variant"] == "host" and r["size"] == size}
        pre, post = got.get("preprocess"), got.get("postprocess")
        if pre is None or post is None:
            return None
        return pre, post


def short_gpu(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100 80GB HBM3``."""
    return re.sub(r"^NVIDIA\s+", "", str(name or "GPU not recorded"))


def run_number(name: str) -> int:
    """``results_table_run10.json`` -> 10 (runs sort by this number, not by name: run10 comes after run9)."""
    m = re.search(r"run(\d+)", name)
    return int(m.group(1)) if m else 0


def _batch(r: Dict[str, Any]) -> int:
    """Images per call. The first run stored trt_tool's leading dimension for head engines (ROIs: 1000 per image
    for the box head, 100 for the mask head); convert those to images."""
    b = int(r.get("batch", 1))
    eng = str(r.get("engine", ""))
    if eng.startswith("box_head") and b >= 1000:
        return b // 1000
    if eng.startswith("mask_head") and b >= 100:
        return b // 100
    return b


def _fused(r: Dict[str, Any]) -> bool:
    return str(r.get("graph", r.get("variant", ""))).startswith("fused")


def make_run(state: Dict[str, Any], name: str, meta: Dict[str, Any]) -> Run:
    """One run's file, its entries labelled: run number, size, the RPN NMS layout of its fused graphs (from
    runs.json; runs newer than runs.json measured the current graphs), display backend names, batches in images."""
    number = run_number(name)
    config, info = state.get("config", {}), state.get("info", {})
    size = config.get("size", 384)
    layout = meta.get("rpn_nms", CURRENT_RPN_NMS)
    run = Run(number, name, info.get("gpu", ""), meta.get("commit"), meta, config, info)
    for part in ("rows", "latency", "builds"):
        for r in state.get(part, []):
            r = dict(r, run=number)
            r["size"] = r.get("size") or size
            r["rpn_nms"] = layout if _fused(r) else None
            if part == "rows":
                b = r.get("backend")
                r["backend"] = NAMES.get(b, b) if isinstance(b, str) else b
            if part == "latency":
                r["batch"] = _batch(r)
            getattr(run, part).append(r)
    run.device_io = [dict(r, run=number) for r in state.get("device_io", []) if "error" not in r]
    run.glue = [dict(r, run=number) for r in state.get("split_glue", []) if "error" not in r]
    return run


def load_runs(res: Path) -> List[Run]:
    """Every committed run of ``res`` in run order, with the split pipeline files of the same run number."""
    meta_file = res / "runs.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    files = sorted(res.glob("results_table_run*.json"), key=lambda p: run_number(p.name))
    runs = {run_number(p.name): make_run(json.loads(p.read_text()), p.name, meta.get(p.name, {})) for p in files}
    for prefix, part in (("device_io", "device_io"), ("split_glue", "glue")):
        for p in sorted(res.glob(f"{prefix}_run*.json")):
            run = runs.get(run_number(p.name))
            if run is None:
                raise ValueError(f"{p.name} has no results_table_run{run_number(p.name)}.json to name its machine")
            rows = [dict(r, run=run.number) for r in json.loads(p.read_text())["results"] if "error" not in r]
            getattr(run, part).extend(rows)
    return [runs[n] for n in sorted(runs)]


# ---------------------------------------------------------------------------------------------- selection


def _ok(r: Dict[str, Any]) -> bool:
    return "error" not in r and r.get("ok", True) and not r.get("skipped")


def _is_reference(r: Dict[str, Any]) -> bool:
    return str(r.get("backend")).startswith("PyTorch")


def with_delta(row: Dict[str, Any], run: Run) -> Dict[str, Any]:
    """``row`` with Δ bbox / Δ segm against the PyTorch row of the same run, size and images (none: no Δ)."""
    ref = next(
        (
            r
            for r in run.rows
            if _is_reference(r) and _ok(r) and (r["size"], r.get("images")) == (row["size"], row.get("images"))
        ),
        None,
    )
    out = dict(row)
    if ref is not None and not _is_reference(row):
        out["d_bbox"] = row["bbox_mAP"] - ref["bbox_mAP"]
        if row.get("segm_mAP") is not None and ref.get("segm_mAP") is not None:
            out["d_segm"] = row["segm_mAP"] - ref["segm_mAP"]
    return out


def latest(runs: Sequence[Run], part: str, key: Any, keep: Any = None) -> List[Tuple[Dict[str, Any], Run]]:
    """The latest successful entry of ``part`` per ``key(entry)`` over the runs (failures never replace a
    measurement and are left to the history); ``keep`` filters entries first. In first-seen order."""
    chosen: Dict[Any, Tuple[Dict[str, Any], Run]] = {}
    for run in runs:
        for r in getattr(run, part):
            if _ok(r) and (keep is None or keep(r)):
                chosen[key(r)] = (r, run)
    return list(chosen.values())


def _current(r: Dict[str, Any]) -> bool:
    """Measured on the current graphs: not a fused graph with the old one-set RPN NMS."""
    return r.get("rpn_nms") in (None, CURRENT_RPN_NMS)


def split_engines(prec: str) -> List[str]:
    """The split graph's three engine files of a precision: int8 is the backbone, the heads run fp16
    (results_table.split_engine's rule)."""
    return [f"{role}_{'fp16' if prec == 'int8' and role != 'backbone' else prec}.engine" for role in ROLES]


def split_sum(run: Run, size: int, prec: str, batch: int) -> Optional[Dict[str, Any]]:
    """The three split engines of one run at ``size``/``batch``, summed (None unless this run timed all three)."""
    parts = []
    for name in split_engines(prec):
        found = [
            r
            for r in run.latency
            if _ok(r) and (r["size"], r["variant"], r["engine"], r["batch"]) == (size, "split", name, batch)
        ]
        if not found:
            return None
        parts.append(found[-1])
    built = [p.get("build_seconds") for p in parts]
    return {
        "median_ms": sum(p["median_ms"] for p in parts),
        "build_seconds": sum(built) if all(b is not None for b in built) else None,
    }


def split_pipeline(run: Run, size: int, prec: str, batch: int) -> Optional[Dict[str, Any]]:
    """The GPU-resident split pipeline of one run, stages summed: the three engines' calls through the host and
    on the GPU, plus the glue alone (None unless this run timed all four)."""
    engines = {(r["size"], r["engine"], r["batch"]): r for r in run.device_io}
    parts = [engines.get((size, n, batch)) for n in split_engines(prec)]
    glue = [r for r in run.glue if r.get("backend") != "onnxruntime-cpu" and (r["size"], r["batch"]) == (size, batch)]
    if not all(parts) or not glue:
        return None
    found = cast(List[Dict[str, Any]], parts)  # all found (checked above)
    g = glue[-1]["glue_median_ms"]
    return {
        "glue_ms": g,
        "device_ms": sum(p["device_io_wall_ms"] for p in found) + g,
        "host_ms": sum(p["host_io_wall_ms"] for p in found) + g,
    }


# ---------------------------------------------------------------------------------------------- rendering


def _f(v: Optional[float], nd: int = 2, dash: str = "—") -> str:
    return dash if v is None else f"{v:.{nd}f}"


def _graph(r: Dict[str, Any]) -> str:
    return f"{r['graph']}, RPN NMS {r['rpn_nms']}" if r.get("rpn_nms") else str(r["graph"])


def _order(backend: str) -> int:
    for i, k in enumerate(("PyTorch", "ONNX Runtime", "TensorRT")):
        if backend.startswith(k):
            return i
    return 3


def _prec_order(p: Optional[str]) -> int:
    return PRECISIONS.index(p) if p in PRECISIONS else 3


def accuracy_table(runs: Sequence[Run], size: int) -> List[str]:
    """Q: does each deployed backend keep the PyTorch model's accuracy at ``size``? One row per backend, graph
    and precision: the latest run that scored it, Δ against that run's own PyTorch row on the same images."""
    picked = latest(
        runs,
        "rows",
        key=lambda r: (r["backend"], r.get("graph"), r.get("precision"), r.get("rpn_nms")),
        keep=lambda r: r["size"] == size and _current(r),
    )
    picked.sort(key=lambda p: (_order(p[0]["backend"]), p[0].get("graph") != "split", _prec_order(p[0]["precision"])))
    out = [
        f"| backend | graph | precision | images | bbox mAP | segm mAP | Δ bbox | Δ segm | matched | {RUN_COLUMN} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, run in picked:
        r = with_delta(r, run)
        par = r.get("parity") or {}
        matched = f"{par['matched']}/{par['reference_detections']}" if par else "—"
        out.append(
            f"| {r['backend']} | {_graph(r)} | {r['precision']} | {r.get('images')} | {r['bbox_mAP']:.4f} "
            f"| {_f(r.get('segm_mAP'), 4)} | {_f(r.get('d_bbox'), 4)} | {_f(r.get('d_segm'), 4)} | {matched} "
            f"| {run.label} |"
        )
    return out


def _latency_name(r: Dict[str, Any]) -> Tuple[str, str, str]:
    """(model, graph, precision) of a latency entry."""
    if r["variant"] == "pytorch":
        return "PyTorch deploy model (eager)", "—", "fp32"
    if r["variant"] == "torchvision eager":
        return "torchvision maskrcnn_resnet50_fpn (eager)", "—", "fp32"
    prec = r["engine"].split("_", 1)[-1].replace(".engine", "") if r["engine"].endswith(".engine") else "fp32"
    return "TensorRT 8.6", _graph({"graph": r["variant"], "rpn_nms": r.get("rpn_nms")}), prec


def latency_table(runs: Sequence[Run], size: int) -> List[str]:
    """Q: how fast is the whole model at ``size``? One row per model, graph, precision and batch: the latest
    run that timed it. End-to-end (batch 1) adds the host stages timed by that same run; split rows sum the
    three engines of one run (the glue between them is not included: see the split pipeline section)."""
    picked = latest(
        runs,
        "latency",
        key=lambda r: (r["variant"], r["engine"], r["batch"], r.get("rpn_nms")),
        keep=lambda r: r["size"] == size and r["variant"] not in ("host", "split") and _current(r),
    )
    kinds = {"pytorch": 0, "torchvision eager": 1}
    picked.sort(
        key=lambda p: (
            kinds.get(p[0]["variant"], 2),
            p[0]["variant"],
            _prec_order(_latency_name(p[0])[2]),
            p[0]["batch"],
        )
    )
    out = [
        "| model | graph | precision | batch | GPU compute median (ms) | p99 (ms) | end-to-end (ms) | img/s "
        f"| build (s) | {RUN_COLUMN} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, run in picked:
        model, graph, prec = _latency_name(r)
        host = run.host(size) if r["batch"] == 1 else None
        wall = r.get("infer_wall_median_ms")
        e2e = host[0] + wall + host[1] if host and wall is not None else None
        out.append(
            f"| {model} | {graph} | {prec} | {r['batch']} | {r['median_ms']:.2f} | {_f(r.get('p99_ms'))} | {_f(e2e)} "
            f"| {r['batch'] * 1000.0 / r['median_ms']:.0f} | {_f(r.get('build_seconds'), 1)} | {run.label} |"
        )
    batches = sorted({r["batch"] for run in runs for r in run.latency if r["variant"] == "split" and r["size"] == size})
    for prec in PRECISIONS:
        for b in batches:
            found = [(s, run) for run in runs for s in [split_sum(run, size, prec, b)] if s is not None]
            if not found:
                continue
            s, run = found[-1]
            out.append(
                f"| TensorRT 8.6 | split, 3 engines summed¹ | {prec} | {b} | {s['median_ms']:.2f} | — | — "
                f"| {b * 1000.0 / s['median_ms']:.0f} | {_f(s['build_seconds'], 1)} | {run.label} |"
            )
    return out


LATENCY_NOTES = [
    "GPU compute: median and p99 per call. TensorRT rows: 200 CUDA-event-timed runs with CUDA-graph replay,"
    " inputs already on the GPU (like `trtexec --noDataTransfers`); PyTorch and torchvision rows: CUDA events"
    " around eager calls on GPU-resident inputs. End-to-end (batch 1): host decode + letterbox, copy in + execute"
    " + copy out, unpad + mask paste: the medians of the three stages as that same run timed them, summed (—:"
    " that run did not time its host stages at this size). img/s: batch × 1000 / GPU compute median. In the"
    " split graphs only the backbone is int8 (the heads run fp16).",
    "",
    "¹ The split graph's three engines (backbone at batch b, box head on 1000·b ROIs, mask head on 100·b ROIs)"
    " as one run timed them, their medians summed, and their build times summed; the glue between them (NMS,"
    " ROIAlign, in torch on the GPU) is not included, so this is not the whole model's time (docs/results.md's"
    " split pipeline section has the whole of it).",
]


def layer_profile(runs: Sequence[Run], size: int) -> List[str]:
    picked = latest(
        runs,
        "latency",
        key=lambda r: (r["engine"], r["batch"], r.get("rpn_nms")),
        keep=lambda r: r["size"] == size and bool(r.get("layer_groups_ms")) and _current(r),
    )
    out = []
    for r, run in picked:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["layer_groups_ms"].items())
        out.append(f"- {r['engine']} batch {r['batch']} (run {run.label}): {parts}.")
    return out


def split_pipeline_tables(runs: Sequence[Run]) -> List[str]:
    """Each split engine through the host path and the GPU-resident path (latest run per engine), and the
    whole split pipeline per call from one run's engines and glue."""
    engines = latest(runs, "device_io", key=lambda r: (r["size"], r["engine"], r["batch"]))
    if not engines:
        return []
    engines.sort(key=lambda p: (p[0]["size"], ROLES.index(p[0]["role"]), p[0]["engine"], p[0]["batch"]))
    out = [
        f"| size | engine | batch | outputs (MiB) | host I/O (ms) | device I/O (ms) | same outputs | {RUN_COLUMN} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, run in engines:
        same = "yes" if r.get("same_outputs") else f"no (max diff {r.get('max_abs_diff')})"
        out.append(
            f"| {r['size']} | {r['engine']} | {r['batch']} | {r['output_mbytes']:.1f} | {r['host_io_wall_ms']:.2f} "
            f"| {r['device_io_wall_ms']:.2f} | {same} | {run.label} |"
        )
    out += [
        "",
        "The whole split pipeline per call, one run's stages summed: the three engines plus the glue"
        " (`benchmarks/split_glue_time.py`: the glue alone in torch on the GPU, the network outputs replayed, with"
        " the image upload and the outputs' download; host decode and mask paste not included).",
        "",
        "| size | precision | batch | glue (ms) | engines through the host + glue (ms) | GPU-resident (ms) "
        f"| img/s GPU-resident | {RUN_COLUMN} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sizes = sorted({r["size"] for run in runs for r in run.device_io})
    batches = sorted({r["batch"] for run in runs for r in run.device_io})
    for size in sizes:
        for prec in PRECISIONS:
            for b in batches:
                found = [(p, run) for run in runs for p in [split_pipeline(run, size, prec, b)] if p is not None]
                if found:
                    p, run = found[-1]
                    out.append(
                        f"| {size} | {prec} | {b} | {p['glue_ms']:.2f} | {p['host_ms']:.2f} | {p['device_ms']:.2f} "
                        f"| {b * 1000.0 / p['device_ms']:.0f} | {run.label} |"
                    )
    ort = latest(
        runs, "glue", key=lambda r: (r["size"], r["batch"]), keep=lambda r: r.get("backend") == "onnxruntime-cpu"
    )
    if ort:
        out += [
            "",
            "The whole split pipeline in ONNX Runtime on the GPU machine's CPU (`split_glue_time.py --onnxruntime`):",
            "",
            f"| size | batch | wall median (ms) | img/s | {RUN_COLUMN} |",
            "|---|---|---|---|---|",
        ]
        for r, run in sorted(ort, key=lambda p: (p[0]["size"], p[0]["batch"])):
            ms = r["wall_median_ms"]
            out.append(f"| {r['size']} | {r['batch']} | {ms:.2f} | {r['batch'] * 1000.0 / ms:.1f} | {run.label} |")
    return out


def nms_bench_table(res: Path) -> List[str]:
    rows = []
    for p in sorted(res.glob("nms_bench_*.json")):
        data = json.loads(p.read_text())
        gpu = data.get("info", {}).get("gpu", "?")
        for r in data["results"]:
            rows.append({"backend": f"TensorRT 8.6 EfficientNMS_TRT ({gpu})", **r, "file": p.name})
    if not rows:
        return []
    out = [
        "## The RPN NMS alone",
        "",
        "`benchmarks/nms_bench.py`: the RPN's NMS alone, on the real candidates of the checkpoint's RPN for"
        " synthetic validation images. TensorRT rows: the plugin lowering built like the engines (fp16 flags,"
        " fp32 glue), GPU compute timed the same way. ONNX Runtime rows (`--onnxruntime`, this repository's"
        " CPU machine): the tensor lowering (the fixpoint Loop that TensorRT-RTX and plugin-free TensorRT"
        " build), host wall time of a run, median of 3. *Proposals as eager* = proposals equal (IoU > 0.99)"
        " to one of torchvision's batched NMS over the levels, over that NMS's proposals. Each row is one file's.",
        "",
        "| backend | input | batch | candidates per image | layout | median (ms) | p99 (ms) | proposals as eager "
        "| file |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r.get("vs_eager") or {}
        same = f"{v['matched']}/{v['reference']}" if v else "—"
        layout = {"one_set": "one set (all levels)", "per_level": "per level"}.get(r["layout"], r["layout"])
        out.append(
            f"| {r['backend']} | {r['size']}² | {r['batch']} | {r['candidates']} | {layout} "
            f"| {_f(r.get('median_ms'))} | {_f(r.get('p99_ms'))} | {same} | `{r['file']}` |"
        )
    return out


def sensitivity_tables(res: Path) -> List[str]:
    """The fp16 emulation on the CPU (benchmarks/fp16_sensitivity.py), one section per results file."""
    out: List[str] = []
    for p in sorted(res.glob("fp16_sensitivity_*.json")):
        data = json.loads(p.read_text())
        rows = data["rows"]
        ref = next((r for r in rows if r["variant"] == "fp32"), None)
        out += [
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
        out.append("")
    return out


def why_failed(row: Dict[str, Any], builds: Sequence[Dict[str, Any]]) -> str:
    """A failed accuracy row, explained by its engines' build records (same run) when that is the reason."""
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


def history(run: Run) -> List[str]:
    """One run's complete record: every accuracy row (failures explained), latency entry and engine build.
    (Runs before big_calib_images was recorded calibrated on the first 16 images at the large size.)"""
    cfg = run.config
    big_calib = cfg.get("big_calib_images", min(cfg.get("calib_images", 16), 16))
    out = [
        f"### Run {run.number} (`{run.file}`)",
        "",
        f"GPU {run.gpu or 'not recorded'}; commit {run.commit or 'not recorded'};"
        f" session {run.meta.get('session', '?')}; input {cfg.get('size', '?')}² and {cfg.get('big', '?')}²,"
        f" batch {cfg.get('batch', '?')}; int8 calibration images {cfg.get('calib_images', '?')} at"
        f" {cfg.get('size', '?')}², {big_calib} at {cfg.get('big', '?')}²."
        f" {run.meta.get('note', '')}",
        "",
    ]
    if run.rows:
        out += [
            "| backend | size | graph | precision | images | bbox mAP | segm mAP | Δ bbox | Δ segm | matched |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(
            run.rows, key=lambda r: (-r["size"], _order(str(r["backend"])), _prec_order(r.get("precision")))
        ):
            if "error" in r:
                out.append(
                    f"| {r['backend']} | {r['size']} | {_graph(r)} | {r['precision']} "
                    f"| {why_failed(r, run.builds)} ||||||"
                )
                continue
            d = with_delta(r, run)
            par = r.get("parity") or {}
            matched = f"{par['matched']}/{par['reference_detections']}" if par else "—"
            out.append(
                f"| {r['backend']} | {r['size']} | {_graph(r)} | {r['precision']} | {r.get('images')} "
                f"| {r['bbox_mAP']:.4f} | {_f(r.get('segm_mAP'), 4)} | {_f(d.get('d_bbox'), 4)} "
                f"| {_f(d.get('d_segm'), 4)} | {matched} |"
            )
        out.append("")
    if run.latency:
        out += [
            "| size | variant | engine / stage | batch | median (ms) | p99 (ms) | wall median (ms) | build (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in run.latency:
            variant = _graph({"graph": r["variant"], "rpn_nms": r.get("rpn_nms")})
            if "error" in r:
                out.append(f"| {r['size']} | {variant} | {r['engine']} | {r['batch']} | error: {r['error'][:100]} ||||")
                continue
            out.append(
                f"| {r['size']} | {variant} | {r['engine']} | {r['batch']} | {_f(r.get('median_ms'))} "
                f"| {_f(r.get('p99_ms'))} | {_f(r.get('infer_wall_median_ms'))} | {_f(r.get('build_seconds'), 1)} |"
            )
        out.append("")
    if run.builds:
        out += [
            "| size | graph | engine | precision | ok | build (s) | calibration batches |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in run.builds:
            cal = b.get("calibration_batches")
            cal = "—" if cal is None else (f"{cal} (cache reused)" if cal == 0 else str(cal))
            if b.get("calib_graph") and b.get("ok"):  # int8 from the split backbone's calibration cache
                cal = f"0 (the split backbone's cache: {b.get('int8_ranges', '?')} tensor ranges)"
            status = "yes" if b.get("ok") else f"no: {str(b.get('error', ''))[:100]}"
            graph = _graph({"graph": b["variant"], "rpn_nms": b.get("rpn_nms")})
            out.append(
                f"| {b['size']} | {graph} | {b['role']} | {b.get('label_precision') or b['precision']} | {status} "
                f"| {_f(b.get('build_seconds'), 1)} | {cal} |"
            )
        out.append("")
    if run.device_io:
        out += ["| size | engine | batch | host I/O (ms) | device I/O (ms) |", "|---|---|---|---|---|"]
        out += [
            f"| {r['size']} | {r['engine']} | {r['batch']} | {_f(r.get('host_io_wall_ms'))} "
            f"| {_f(r.get('device_io_wall_ms'))} |"
            for r in run.device_io
        ]
        out.append("")
    if run.glue:
        out += ["| size | batch | what | median (ms) |", "|---|---|---|---|"]
        for r in run.glue:
            cpu = r.get("backend") == "onnxruntime-cpu"
            what = "ONNX Runtime split pipeline (CPU)" if cpu else "split glue (torch, GPU)"
            out.append(
                f"| {r['size']} | {r['batch']} | {what} | {_f(r['wall_median_ms'] if cpu else r['glue_median_ms'])} |"
            )
        out.append("")
    return out


def parity_history(res: Path, meta: Dict[str, Any]) -> List[str]:
    """Session 1's parity check with random weights (trt86_verify.json, trt86_latency.json), if committed."""
    verify, latency = res / "trt86_verify.json", res / "trt86_latency.json"
    if not verify.is_file():
        return []
    m = meta.get(verify.name, {})
    out = [
        f"### Parity of every graph variant with random weights (session {m.get('session', '?')})",
        "",
        f"`{verify.name}`, `{latency.name}`: GPU {m.get('gpu', 'not recorded')}; commit"
        f" {m.get('commit') or 'not recorded'}. {m.get('note', '')}. The weights are random, so these rows test"
        " agreement, not accuracy (the accuracy tables above judge precision by mAP on trained weights).",
        "",
        "| input | graph | TensorRT 8.6 precision | detections matched | min box IoU | max score diff | min mask IoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in json.loads(verify.read_text()):
        if "error" in r:
            out.append(f"| {r['size']}² | {r['variant']} | {r['precision']} | error: {str(r['error'])[:100]} ||||")
            continue
        out.append(
            f"| {r['size']}² | {r['variant']} | {r['precision']} | {r['matched']}/{r['reference_detections']} "
            f"| {r['min_box_iou']:.4f} | {r['max_score_diff']:.1e} | {r['min_mask_iou']:.4f} |"
        )
    if latency.is_file():
        out += [
            "",
            "| input | graph | precision | batch | GPU compute median (ms) | p99 (ms) | img/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in json.loads(latency.read_text()):
            what = "whole model" if r["graph"] == "fused" else "backbone+FPN+RPN head only"
            out.append(
                f"| {r['size']}² | {r['variant']}, {what} | {r['precision']} | {r['batch']} | {r['median_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['batch'] * 1000 / r['median_ms']:.0f} |"
            )
    return out + [""]


def end_to_end_sections(res: Path) -> List[str]:
    """The end-to-end targets, GPU serving and Ray tables of docs/e2e.md (``rcnn_deploy.reports.e2e``, from
    ``res/e2e``), repeated here so that this page has every GPU result; docs/e2e.md has the details."""
    from .e2e import ray_section, serve_section, targets_section

    e2e = res / "e2e"
    parts = targets_section(e2e) + serve_section(e2e) + ray_section(e2e)
    if not parts:
        return []
    head = ["## End to end, serving and Ray (from `benchmarks/results/e2e/`; details in docs/e2e.md)", ""]
    # one heading level down: these are subsections here
    return head + [("#" + line if line.startswith("## ") else line) for line in parts[1:]] + [""]


def render_results(res: Path) -> str:
    """docs/results.md from the committed files of ``res`` (benchmarks/results)."""
    runs = load_runs(res)
    if not runs:
        raise ValueError(f"no results_table_run*.json in {res}")
    main = [r for r in runs if r.config.get("size") == 384 and r.config.get("big") == 1344] or runs
    cfg, info = main[-1].config, main[-1].info
    S, BIG = cfg.get("size", 384), cfg.get("big", 1344)
    out = [
        "# Results",
        "",
        "Generated by `python benchmarks/update_results.py` (the renderer is `rcnn_deploy.reports.results`) from the"
        " JSON in `benchmarks/results/`, which the GPU machine wrote: `results_table_run*.json`"
        " (`benchmarks/results_table.py`), `device_io_run*.json` / `split_glue_run*.json`"
        " (`benchmarks/trt86_device_io.py`, `benchmarks/split_glue_time.py`), `nms_bench_*.json`"
        " (`benchmarks/nms_bench.py`) and `runs.json` (the commit each run measured). Do not edit by hand.",
        "",
        "**Every row is one run's measurement**; the last column names the run, the GPU it recorded and the commit"
        " it measured. Where several runs measured the same entry the current tables show the latest successful"
        " one, and a figure made of parts (a Δ against PyTorch, an end-to-end sum, split engines summed) is only"
        " formed within one run. Older measurements, failures and build records are under *History*.",
        "",
        f"- Model: `checkpoints/{info.get('checkpoint', '?')}` (sha256 {info.get('checkpoint_sha256', '?')}…),"
        f" Mask R-CNN R50-FPN trained by `recipes/train_shapes.sh` at {S}×{S}; TensorRT 8.6.0 (CPython 3.9);"
        f" PyTorch {info.get('torch', '?')}.",
        f"- Accuracy: COCO mAP@[.5:.95] on the first {cfg.get('eval_images', '?')} images of the synthetic"
        " validation split (seed 2); Δ = row minus the PyTorch fp32 reference of the same run on the same images."
        " *matched* = reference detections found by the row (same class, box IoU ≥ 0.5).",
        "- *RPN NMS per level*: the fused graphs run one NMS per FPN level side by side, merged by score (the same"
        " proposals as torchvision's batched NMS). Runs 1–3 measured the earlier *one set* layout (one EfficientNMS"
        " over all levels' candidates); those rows are history.",
        "- int8: entropy calibration on training-split images (seed 1), letterboxed up at the large size; each"
        " run's image counts are in its History entry. In the split graphs only the backbone is int8 (the heads take"
        " ROI features the image calibrator cannot feed; they run fp16).",
        "",
        README_BLOCKS["results-accuracy"] + f" ({S}×{S})",
        "",
        *accuracy_table(runs, S),
        "",
        f"## Accuracy at {BIG}×{BIG}",
        "",
        f"The validation images letterboxed (upscaled) to {BIG}×{BIG}; the checkpoint was trained at {S}, so the"
        " absolute mAP is low: what counts is the difference to PyTorch on the same images.",
        "",
        *accuracy_table(runs, BIG),
        "",
        README_BLOCKS["results-latency"] + f" ({S}×{S})",
        "",
        *latency_table(runs, S),
        "",
        *LATENCY_NOTES,
        "",
        README_BLOCKS["results-big"] + f" ({BIG}×{BIG})",
        "",
        *latency_table(runs, BIG),
        "",
        *LATENCY_NOTES,
        "",
    ]
    profile = layer_profile(runs, BIG)
    if profile:
        out += [
            f"## Where the fused engines' time goes at {BIG}×{BIG}",
            "",
            "Per-layer profile, ms per inference; profiled runs serialise the layers, so the sum exceeds the median.",
            "",
            *profile,
            "",
        ]
    pipe = split_pipeline_tables(runs)
    if pipe:
        out += [
            "## The split pipeline: engine I/O through the host or on the GPU",
            "",
            "`benchmarks/trt86_device_io.py` (TensorRT 8.6): each split engine called through the host path"
            " (`TensorRTBackend.infer`: copy the inputs in, execute, copy the outputs out) and through the"
            " GPU-resident path (`infer_device` on caller-owned device memory and the caller's stream, what the"
            " split runtime does with torch CUDA tensors); wall clock per call, median of 30. *Same outputs*: both"
            " paths' outputs bitwise equal. On the GPU machine TensorRT 8.6 (CPython 3.9) and torch live in separate"
            " processes, so the split pipeline has not run end to end in one process there.",
            "",
            *pipe,
            "",
        ]
    nms = nms_bench_table(res)
    if nms:
        out += [*nms, ""]
    out += sensitivity_tables(res)
    out += end_to_end_sections(res)
    out += [
        "## History",
        "",
        "Every run as it was recorded, oldest first: its accuracy rows (failures with their reason), latency"
        " entries, engine builds and split pipeline stages.",
        "",
        "| run | file | GPU | commit | session |",
        "|---|---|---|---|---|",
        *[
            f"| {r.number} | `{r.file}` | {r.gpu or '—'} | {r.commit or 'not recorded'} "
            f"| {r.meta.get('session', '—')} |"
            for r in runs
        ],
        "",
    ]
    for run in runs:
        out += history(run)
    meta_file = res / "runs.json"
    out += parity_history(res, json.loads(meta_file.read_text()) if meta_file.is_file() else {})
    return "\n".join(out).rstrip("\n") + "\n"


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading ...`` section of ``text`` (up to the next ``## ``)."""
    start = text.index("\n" + heading) + 1
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)].split("\n", 2)[2].strip()


def readme_blocks(text: str) -> Dict[str, str]:
    """The README's generated blocks (marker name -> content), cut from docs/results.md's text."""
    return {name: _section(text, heading) for name, heading in README_BLOCKS.items()}


def replace_blocks(readme: str, blocks: Dict[str, str]) -> str:
    """``readme`` with the content between each ``<!-- NAME:begin -->`` / ``<!-- NAME:end -->`` pair replaced;
    raises ValueError when a marker is missing (the README must show every table)."""
    for name, block in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in readme or end not in readme:
            raise ValueError(f"README has no {begin} ... {end} markers")
        readme = readme[: readme.index(begin) + len(begin)] + "\n" + block + "\n" + readme[readme.index(end) :]
    return readme
