"""Where a TensorRT GPU-decode stream's time goes (CPython 3.9 + TensorRT 8.6 on the GPU machine, no torch):
the same batch-8 engine measured with less and less of the pipeline around it.

    py39 benchmarks/trt_runner_probe.py --engine out/b8/model_fp16.engine --images DIR --out probe.json

Rows (each over 4 passes of the folder's JPEGs, after a warm-up pass):
  model_only_slotsS     ``TensorRTGpuDecodeModel.submit`` fed the files' bytes (read beforehand), S batches in
                        flight: nvImageCodec decode + letterbox engine + model engine + download, nothing else
  stream_procsP         ``Detector.stream`` without a per-image function (no RLE, no files written): the runner
                        with postprocessing in P worker processes (0: threads)
  stream_writer_procsP  the same with e2e_trt.py's writer (TSV + COCO RLE per image), as ``stream_gpu_decode_repeat``

Run 20 ran these measurements as inline ``py39 -c`` commands with this code, before it was a file.
"""

import argparse
import glob
import os
import sys
import tempfile
import time
from collections import deque

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.runtime.stream import StreamStats  # noqa: E402


def model_only(engine, files, slots, repeat):
    det = Detector.from_engine(engine, gpu_decode=True, slots=slots)
    m = det.batch_model
    datas = [np.fromfile(f, dtype=np.uint8) for f in files]
    b = m.hi
    batches = [datas[i : i + b] for i in range(0, len(datas) - b + 1, b)]
    row = None
    for _ in range(2):  # the first pass warms up
        q = deque()
        n = 0
        t0 = time.perf_counter()
        for _ in range(repeat):
            for batch in batches:
                if len(q) >= slots:
                    q.popleft()()
                    n += 1
                q.append(m.submit(batch))
        while q:
            q.popleft()()
            n += 1
        dt = time.perf_counter() - t0
        row = {"batches": n, "seconds": round(dt, 3), "images_per_s": round(n * b / dt, 1)}
    m.close()
    return row


def stream_rows(engine, files, processes, repeat, slots):
    det = Detector.from_engine(engine, gpu_decode=True, slots=slots)
    b = det.batch_model.hi
    out = {}
    for procs in processes:
        for _ in range(2):  # the first pass warms up (and starts the processes)
            st = StreamStats()
            t0 = time.perf_counter()
            ok = 0
            for r in det.stream(files * repeat, batch=b, processes=procs, stats=st):
                ok += r.ok
            dt = time.perf_counter() - t0
        out[f"stream_procs{procs}"] = {"images": ok, "seconds": round(dt, 3), "images_per_s": round(ok / dt, 1)}
        print(out, flush=True)
    import e2e_trt

    with tempfile.TemporaryDirectory() as tmp:
        for procs in processes:
            e2e_trt.stream_pass(det, files, b, None, os.path.join(tmp, "w"), procs)
            rep = e2e_trt.stream_pass(det, files * repeat, b, None, os.path.join(tmp, "r"), procs)
            out[f"stream_writer_procs{procs}"] = rep
            print(out, flush=True)
    det.batch_model.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--slots", default="2,3")
    ap.add_argument("--processes", default="0,14")
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.images, "*.jpg")))
    doc = {"script": "benchmarks/trt_runner_probe.py", "engine": a.engine, "images": len(files), "rows": {}}
    for s in (int(x) for x in a.slots.split(",")):
        doc["rows"][f"model_only_slots{s}"] = model_only(a.engine, files, s, a.repeat)
        atomic_write_json(a.out, doc)
        print(doc["rows"], flush=True)
    procs = [int(x) for x in a.processes.split(",")]
    doc["rows"].update(stream_rows(a.engine, files, procs, a.repeat, 3))
    atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
