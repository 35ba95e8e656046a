"""Issue 17's CPU target (streamed >= 1.3x sequential, ONNX Runtime at 384^2 on the 2-core machine) asks what the
model itself gives when images run side by side. This measures the model alone (letterboxed arrays decoded
beforehand, no host stages) in four layouts over the same images: one session with 2 threads at batch 1 (the
sequential path's) and at batch 2, and two 1-thread sessions side by side (the streamed path's replicas) at batch 1
and at batch 2. Each layout twice; images per second.

    python benchmarks/cpu_model_layouts.py --model DIR --images DIR --out FILE

``--model``: a ``rcnn-deploy build --target onnxruntime`` directory whose graph takes batches of 1 and 2 (export
with ``--batch 1:2``). ``cpu_stream.py`` measures the whole paths; this only the model's share.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
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
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from rcnn_deploy.backends.onnxruntime import session_options

    det = Detector.load(a.model, backend="onnxruntime")
    onnx = a.model / Contract.load(a.model).graphs[0].file
    arrays = []
    for i, p in enumerate(find_images(a.images)):
        prepared = det.prepare(Item(i, str(p), path=p))
        assert prepared.error is None, prepared.error
        arrays.append(prepared.array)

    def session(threads: int):  # the runtime's own settings (backends/onnxruntime.py), only the threads differ
        return ort.InferenceSession(str(onnx), session_options(ort, threads), providers=["CPUExecutionProvider"])

    name = session(1).get_inputs()[0].name

    def run(s, batch: int, items: list) -> None:
        for i in range(0, len(items), batch):
            b = np.stack(items[i : i + batch])
            if len(b) < batch:  # a short last batch repeats its first image
                b = np.concatenate([b, b[: batch - len(b)]])
            s.run(None, {name: b})

    def rate(fn, *args) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return round(len(arrays) / (time.perf_counter() - t0), 3)

    def side_by_side(sessions: list, batch: int) -> None:
        ts = [threading.Thread(target=run, args=(s, batch, arrays[k::2])) for k, s in enumerate(sessions)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    rows: dict = {}
    for _ in range(2):
        one = session(2)
        for batch in (1, 2):
            run(one, batch, arrays[:batch])  # warm-up
            rows.setdefault(f"one_session_2_threads_batch{batch}", []).append(rate(run, one, batch, arrays))
        for batch in (1, 2):
            two = [session(1), session(1)]
            for s in two:
                run(s, batch, arrays[:batch])
            rows.setdefault(f"two_1_thread_sessions_batch{batch}", []).append(rate(side_by_side, two, batch))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    doc = {
        "script": "benchmarks/cpu_model_layouts.py",
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "commit": head.stdout.strip(),
        "model": str(a.model.name),
        "onnxruntime": ort.__version__,
        "images": len(arrays),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "images_per_s": rows,
    }
    atomic_write_json(a.out, doc)
    print(doc)


if __name__ == "__main__":
    main()
