"""Host post-processing of one image: padded model outputs -> Detections -> COCO results with RLE masks.

    python benchmarks/post_bench.py --out benchmarks/results/post_bench_cpu_after.json

What ``benchmarks/e2e_trt.py``'s ``stage_costs`` times on a real engine's outputs (``postprocess_rle_ms``)::

    d = stages.detections_for(letterbox, outputs, name)  # boxes to the original image, PastedMasks (lazy)
    detections_to_coco(d, 1, spec.category_ids, spec.label_ids)  # one RLE string per mask

here on synthetic outputs, so it needs no model and runs anywhere: a ``--width x --height`` image (1920 x 1080)
letterboxed into ``--input`` (800 x 1344), ``--detections`` (100) random boxes and random ``M x M`` (28)
mask-head-like probabilities (fixed ``--seed``), for each paste method (torchvision's, Detectron2's) and two
box-size distributions (``lognormal``: median side about 120 px, a few large; ``uniform``: sides 20-600 px).
Each case runs once to warm up, then ``--repeat`` times; the median and minimum are reported in ms per image
(``detections_for_median_ms``: the lazy Detections alone, timed separately).
``results_sha256`` digests the COCO results (JSON) of each case, so runs of two versions of the code can be
checked for identical output. ``--threads`` (default 1: the e2e runner uses one process per core) limits
OpenCV's and numpy's BLAS threads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import HostStages  # noqa: E402
from rcnn_deploy.config import get_spec  # noqa: E402
from rcnn_deploy.runtime._opencv import opencv  # noqa: E402
from rcnn_deploy.runtime.coco import detections_to_coco  # noqa: E402
from rcnn_deploy.runtime.preprocess import Letterbox  # noqa: E402

SPECS = {"torchvision": "torchvision-maskrcnn", "detectron2": "detectron2-maskrcnn"}


def commit() -> Dict[str, Any]:
    def git(*args: str) -> Optional[str]:
        try:
            p = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        except OSError:
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    mine = ["src/rcnn_deploy/runtime/masks.py", "src/rcnn_deploy/runtime/coco.py", "benchmarks/post_bench.py"]
    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": git("status", "--porcelain", "--", *mine) or ""}


def machine(threads: Optional[int]) -> Dict[str, Any]:
    cv2 = opencv()
    try:
        from importlib.metadata import version

        coco_version: Optional[str] = version("pycocotools")
    except Exception:  # not installed
        coco_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": getattr(cv2, "__version__", None),
        "pycocotools": coco_version,
        "threads": threads,
    }


def make_outputs(
    rng: np.random.Generator, n: int, lb: Letterbox, input_hw: List[int], m: int, sizes: str, n_labels: int
) -> Dict[str, np.ndarray]:
    """One image's padded outputs (batch 1, ``n`` detections padded to ``n + 7``) in input pixels."""
    h, w = lb.orig_h, lb.orig_w
    if sizes == "lognormal":
        wh = np.exp(rng.normal(np.log(120.0), 0.9, (n, 2)))
    else:
        wh = rng.uniform(20, 600, (n, 2))
    wh = np.clip(wh, 2, [w, h])
    # a few boxes stick out of the image (clipped by boxes_to_original, as a model's are)
    xy = rng.uniform(-0.05, 1.05, (n, 2)) * ([w, h] - wh)
    boxes = np.concatenate([xy, xy + wh], 1)
    rh, rw = lb.resized_hw
    boxes = boxes * np.array([rw / w, rh / h] * 2)  # original -> input pixels
    # smooth-ish blobs: mask-head-like probabilities (mostly near 0 or 1, a band in between)
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1) - 0.5
    r = rng.uniform(0.2, 0.45, (n, 1, 1))
    logits = 12 * (r - np.sqrt(yy**2 + xx**2)[None]) + rng.normal(0, 1.0, (n, m, m))
    probs = 1 / (1 + np.exp(-logits))
    pad = n + 7
    out = {
        "num_detections": np.array([n], dtype=np.int32),
        "boxes": np.zeros((1, pad, 4), np.float32),
        "scores": np.zeros((1, pad), np.float32),
        "classes": np.zeros((1, pad), np.int32),
        "masks": np.zeros((1, pad, m, m), np.float32),
    }
    out["boxes"][0, :n] = boxes
    out["scores"][0, :n] = np.sort(rng.uniform(0.05, 1.0, n))[::-1]
    out["classes"][0, :n] = rng.integers(1, n_labels, n)
    out["masks"][0, :n] = probs
    return out


def run_case(method: str, sizes: str, a: argparse.Namespace) -> Dict[str, Any]:
    spec = get_spec(SPECS[method])
    input_hw = [int(v) for v in a.input.split("x")]
    lb = Letterbox.fit(a.height, a.width, (input_hw[0], input_hw[1]))
    stages = HostStages(spec, (input_hw[0], input_hw[1]), (0.0, 0.0, 0.0), "float32", None, False)
    rng = np.random.default_rng(a.seed)
    labels = [lid for lid in spec.label_ids[1:]]
    outs = make_outputs(rng, a.detections, lb, input_hw, a.mask_size, sizes, len(labels))
    outs["classes"][0, : a.detections] = np.asarray(labels)[outs["classes"][0, : a.detections] - 1]

    def once() -> List[Dict[str, Any]]:
        d = stages.detections_for(lb, outs, "synthetic")
        return detections_to_coco(d, 1, spec.category_ids, spec.label_ids)

    results = once()  # warm-up
    times, lazy = [], []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        once()
        t1 = time.perf_counter()
        stages.detections_for(lb, outs, "synthetic")
        lazy.append(1e3 * (time.perf_counter() - t1))
        times.append(1e3 * (t1 - t0))
    d = stages.detections_for(lb, outs, "synthetic")
    region_pixels = 0
    for i in range(len(d)):
        r = d.pasted.region(i) if d.pasted is not None else None
        if r is not None:
            region_pixels += (r[1] - r[0]) * (r[3] - r[2])
    digest = hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()
    return {
        "method": method,
        "sizes": sizes,
        "detections": a.detections,
        "region_pixels": int(region_pixels),
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "detections_for_median_ms": round(statistics.median(lazy), 3),  # of that: the lazy Detections alone
        "results_sha256": digest,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--input", default="800x1344", help="the model input HxW the outputs are in")
    ap.add_argument("--detections", type=int, default=100)
    ap.add_argument("--mask-size", type=int, default=28)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="OpenCV / BLAS threads (0: leave the defaults)")
    ap.add_argument("--methods", default="torchvision,detectron2")
    ap.add_argument("--sizes", default="lognormal,uniform")
    ap.add_argument("--note", default=None, help="free text stored in the JSON (e.g. 'before')")
    a = ap.parse_args()
    threads = a.threads or None
    if threads:
        cv2 = opencv()
        if cv2 is not None:
            cv2.setNumThreads(threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
        except ImportError:
            pass
    doc: Dict[str, Any] = {
        "script": "benchmarks/post_bench.py",
        "note": a.note,
        "machine": machine(threads),
        "commit": commit(),
        "image_hw": [a.height, a.width],
        "input_hw": a.input,
        "mask_size": a.mask_size,
        "repeat": a.repeat,
        "seed": a.seed,
        "cases": [],
    }
    for method in a.methods.split(","):
        for sizes in a.sizes.split(","):
            row = run_case(method, sizes, a)
            doc["cases"].append(row)
            print(json.dumps(row), flush=True)
    atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
