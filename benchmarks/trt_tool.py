"""TensorRT worker for the GPU machine's CPython 3.9 + TensorRT 8.6 (no torch there).

    py39 benchmarks/trt_tool.py build JOBS.json            # build engines (list of jobs), write build report
    py39 benchmarks/trt_tool.py run ENGINE IN.npz OUT.npz   # run an engine on named inputs
    py39 benchmarks/trt_tool.py time ENGINE IN.npz OUT.json [--iterations N]  # GPU latency (CUDA events)
    py39 benchmarks/trt_tool.py serve                       # persistent: one JSON request per stdin line

The torch side (benchmarks/trt86_verify.py) exports graphs, runs the PyTorch reference and the glue between
split engines, and calls this script for everything TensorRT.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from rcnn_deploy.backends.tensorrt.builder import BuildConfig, build_engine  # noqa: E402
from rcnn_deploy.backends.tensorrt.compat import load_trt  # noqa: E402

# our TensorRT 8.6 bundle stubs cuBLAS / cuDNN: only TensorRT's own kernels may be used
TACTICS = ["EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"]
# dry runs of the harness on a machine without TensorRT: RCNN_TRT=tensorrt_rtx (plugin-free graphs, fp32)
TRT_NAME = os.environ.get("RCNN_TRT", "tensorrt")


def layer_group(name):
    """Which part of the model an engine layer's time belongs to (names carry the ONNX module paths)."""
    if "Reformat" in name or "reformat" in name:
        return "reformat"
    for plugin in ("PyramidROIAlign", "EfficientNMS"):
        if plugin in name:
            return plugin
    if "ForeignNode" in name:
        return "myelin region"
    parts = set(name.replace("+", " ").replace("(", " ").replace(")", " ").replace("/", " ").split())
    if parts & {"box_head", "box_predictor", "mask_head", "mask_predictor"}:
        return "heads"
    if parts & {"backbone", "body", "fpn"} or "rpn/head" in name:
        return "backbone+rpn head"
    return "glue"


def cmd_build(jobs_path):
    with open(jobs_path) as f:
        jobs = json.load(f)
    trt = load_trt(TRT_NAME)
    report = []
    for job in jobs:
        cfg = BuildConfig(
            precision=job.get("precision", "fp32"),
            batch=tuple(job.get("batch", (1, 1, 1))),
            rois=tuple(job.get("rois", (1, 1000, 2000))),
            workspace_gib=job.get("workspace_gib", 8.0),
            timing_cache=job.get("timing_cache"),
            tactic_sources=job.get("tactic_sources") or TACTICS,
            opt_level=job.get("opt_level"),
            fp32_glue=job.get("fp32_glue", True),
            fp32_predictors=job.get("fp32_predictors", False),
            # int8 from another graph's calibration cache (the split backbone's), applied by layer name
            int8_ranges_graph=job.get("calib_graph"),
            int8_ranges_cache=job.get("calib_cache") if job.get("calib_graph") else None,
            log_info=job.get("log_info", False),
        )
        calibrator = None
        if os.path.isfile(job["engine"]) and os.path.isfile(job["engine"] + ".json"):
            print("@@" + json.dumps({"engine": job["engine"], "ok": True, "skipped": "already built"}), flush=True)
            continue
        t0 = time.time()
        print("=== build " + job["engine"], file=sys.stderr, flush=True)
        try:
            if cfg.precision in ("int8", "best") and not cfg.int8_ranges_graph:
                from rcnn_deploy.backends.tensorrt.calibrator import make_calibrator

                calibrator = make_calibrator(trt, job["calib_npy"], job["calib_cache"], job.get("calib_batch", 1))
            side = build_engine(job["onnx"], job["engine"], cfg, trt, calibrator)
            entry = {"engine": job["engine"], "ok": True, "build_seconds": side["build_seconds"]}
            if side.get("int8_ranges"):  # ranges applied from another graph's calibration cache
                entry["int8_ranges"] = side["int8_ranges"]
            if calibrator is not None:  # 0 batches: an existing calibration cache was reused
                entry["calibration_batches"] = calibrator.batches_used
        except Exception as e:  # keep building the others; the report says what failed
            entry = {"engine": job["engine"], "ok": False, "error": str(e)[-2000:], "seconds": time.time() - t0}
        print("@@" + json.dumps(entry), flush=True)
        report.append(entry)
    with open(jobs_path.replace(".json", "_report.json"), "w") as f:
        json.dump(report, f, indent=1)


def cmd_run(engine, inp, out):
    from rcnn_deploy.backends.tensorrt.runtime import TensorRTBackend

    be = TensorRTBackend(engine, load_trt(TRT_NAME))
    feed = dict(np.load(inp))
    res = be.infer(feed)
    np.savez(out, **res)


def cmd_time(engine, inp, out, iterations, cuda_graph=True, profile=False):
    from rcnn_deploy.backends.tensorrt.runtime import TensorRTBackend

    be = TensorRTBackend(engine, load_trt(TRT_NAME))
    feed = dict(np.load(inp))
    graph_error = None
    try:
        times = np.array(be.time_gpu(feed, iterations=iterations, warmup=20, cuda_graph=cuda_graph))
    except RuntimeError as e:  # capture refused (a plugin that syncs, say): time plain launches instead
        if not cuda_graph:
            raise
        graph_error, cuda_graph = str(e), False
        be = TensorRTBackend(engine, load_trt(TRT_NAME))
        times = np.array(be.time_gpu(feed, iterations=iterations, warmup=20, cuda_graph=False))
    walls = []
    for _ in range(max(iterations // 5, 10)):  # host view: copy in, execute, copy out, synchronise
        t0 = time.perf_counter()
        be.infer(feed)
        walls.append((time.perf_counter() - t0) * 1000.0)
    stats = {
        "infer_wall_median_ms": float(np.median(walls)),
        "engine": os.path.basename(engine),
        "batch": int(next(iter(feed.values())).shape[0]),
        "iterations": iterations,
        "cuda_graph": cuda_graph,
        "cuda_graph_error": graph_error,
        "median_ms": float(np.median(times)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "p90_ms": float(np.percentile(times, 90)),
        "p99_ms": float(np.percentile(times, 99)),
        "max_ms": float(times.max()),
    }
    if profile:  # after timing: a profiler attached to the context serialises the layers
        layers = be.profile_layers(feed, iterations=20)
        groups = {}
        for name, ms in layers.items():
            g = layer_group(name)
            groups[g] = groups.get(g, 0.0) + ms
        stats["profile_sum_ms"] = float(sum(layers.values()))
        stats["layer_groups_ms"] = {k: round(v, 4) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
        top = sorted(layers.items(), key=lambda kv: -kv[1])[:40]
        stats["top_layers_ms"] = [[name[:300], round(ms, 4)] for name, ms in top]
    with open(out, "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats), flush=True)


def cmd_serve():
    """Answer ``{"engine", "in", "out"}`` requests (one JSON per stdin line) with ``@@{"ok", "seconds"}``
    lines, keeping every engine loaded: the torch side drives the split glue and dataset runs through it."""
    from rcnn_deploy.backends.tensorrt.runtime import TensorRTBackend

    trt = load_trt(TRT_NAME)
    engines = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            be = engines.get(req["engine"])
            if be is None:
                be = engines[req["engine"]] = TensorRTBackend(req["engine"], trt)
            feed = dict(np.load(req["in"]))
            t0 = time.perf_counter()
            res = be.infer(feed)
            dt = time.perf_counter() - t0
            np.savez(req["out"], **res)
            reply = {"ok": True, "seconds": dt}
        except Exception as e:  # report, keep serving
            reply = {"ok": False, "error": repr(e)[-2000:]}
        sys.stdout.write("@@" + json.dumps(reply) + "\n")
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("jobs")
    r = sub.add_parser("run")
    r.add_argument("engine")
    r.add_argument("inp")
    r.add_argument("out")
    t = sub.add_parser("time")
    t.add_argument("engine")
    t.add_argument("inp")
    t.add_argument("out")
    t.add_argument("--iterations", type=int, default=200)
    t.add_argument("--no-cuda-graph", action="store_true")
    t.add_argument("--profile", action="store_true", help="also per-layer times (IProfiler), grouped")
    sub.add_parser("serve")
    a = ap.parse_args()
    if a.cmd == "build":
        cmd_build(a.jobs)
    elif a.cmd == "run":
        cmd_run(a.engine, a.inp, a.out)
    elif a.cmd == "serve":
        cmd_serve()
    else:
        cmd_time(a.engine, a.inp, a.out, a.iterations, not a.no_cuda_graph, a.profile)


if __name__ == "__main__":
    main()
