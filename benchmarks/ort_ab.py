"""Two ONNX Runtime builds of one model, the model alone, on the same letterboxed images, alternating (A, B, A, B, ...)
so that the machine's drift hits both; and whether their outputs are bit for bit the same.

    python benchmarks/ort_ab.py --a OLD_BUILD --b NEW_BUILD --images DIR --out results.json [-n 24] [--rounds 3]
        [--threads 2] [--note TEXT]

``--a`` / ``--b``: export or ``rcnn-deploy build --target onnxruntime`` directories (contract.json and one fused
graph) with the same input. Each round runs every image once through A, then once through B (one session each,
``--threads`` intra-op threads); ms per image per round, and the median, are written to ``--out``. Use it to measure
a change to the CPU build (``export/ort_cpu.py``): build A with the code before it, B with the code after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.contract import Contract  # noqa: E402
from rcnn_deploy.runtime.preprocess import find_images  # noqa: E402
from rcnn_deploy.runtime.sources import Item  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, type=Path)
    ap.add_argument("--b", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    import onnxruntime as ort

    from rcnn_deploy.backends.onnxruntime import session_options

    det = Detector.load(str(a.a), backend="onnxruntime")
    paths = find_images(a.images)[: a.n]
    inputs = []
    for i, p in enumerate(paths):
        prepared = det.prepare(Item(i, str(p), path=p))
        assert prepared.error is None, prepared.error
        inputs.append(prepared.array[None])
    sessions, names = {}, {}
    for key, d in (("a", a.a), ("b", a.b)):
        c = Contract.load(d)
        graph = d / c.graphs[0].file
        sessions[key] = ort.InferenceSession(str(graph), session_options(ort, a.threads), ["CPUExecutionProvider"])
        names[key] = {"dir": str(d), "graph": graph.name, "notes": c.notes.get("cpu", {}).get("rewrite")}
    feed = sessions["a"].get_inputs()[0].name
    same = True
    for x in inputs:  # also the warm-up
        out_a, out_b = (sessions[k].run(None, {feed: x}) for k in ("a", "b"))
        same = same and all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(out_a, out_b))
    ms: dict = {"a": [], "b": []}
    load = []
    for _ in range(a.rounds):
        for key in ("a", "b"):
            load.append(round(os.getloadavg()[0], 2))
            t0 = time.perf_counter()
            for x in inputs:
                sessions[key].run(None, {feed: x})
            ms[key].append(round((time.perf_counter() - t0) / len(inputs) * 1e3, 1))
    doc = {
        "script": "benchmarks/ort_ab.py",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "onnxruntime": ort.__version__,
        "note": a.note,
        "images": len(inputs),
        "input_shape": list(inputs[0].shape),
        "threads": a.threads,
        "builds": names,
        "ms_per_image": ms,
        "median_ms": {k: statistics.median(v) for k, v in ms.items()},
        "b_over_a": round(statistics.median(ms["b"]) / statistics.median(ms["a"]), 3),
        "outputs_bit_identical": same,
        "load_average_before_each_pass": load,
    }
    atomic_write_json(a.out, doc)
    print({k: doc[k] for k in ("median_ms", "b_over_a", "outputs_bit_identical")})


if __name__ == "__main__":
    main()
