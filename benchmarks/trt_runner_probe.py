"""Where a TensorRT GPU-decode stream's time goes (CPython 3.9 + TensorRT 8.6 on the GPU machine, no torch):
the same batch-8 engine measured with less and less of the pipeline around it.

    py39 benchmarks/trt_runner_probe.py --engine out/b8/model_fp16.engine --images DIR --out probe.json

Rows (each over 4 passes of the folder's JPEGs, after a warm-up pass):
  model_only_slotsS     ``TensorRTGpuDecodeModel.submit`` fed the files' bytes (read beforehand), S batches in
                        flight: nvImageCodec decode + letterbox engine + model engine + download, nothing else
                        (the engine run replayed from a CUDA graph per slot, the default)
  model_only_slotsS_nograph  the same with ``cuda_graph=False``: the engine enqueued from the host every batch
  stream_procsP         ``Detector.stream`` without a per-image function (no RLE, no files written): the runner
                        with postprocessing in P worker processes (0: threads)
  stream_writer_procsP  the same with e2e_trt.py's writer (TSV + COCO RLE per image), as ``stream_gpu_decode_repeat``
  model_only_slots3_blocking, stream_writer_procsP_blocking  with ``blocking_wait=True``: the threads waiting for a
                        batch sleep on a blocking-sync event instead of spinning in cudaStreamSynchronize
  (the stream rows also give ``cpu_s_by_thread``: this process's CPU by thread, and the worker processes', from
  thread_cpu.py)
  stream_writer_procsP_switch05ms  the writer stream with ``sys.setswitchinterval(0.0005)`` (default 5 ms)
  handover_procsP       (``--handover P,...``: only these rows and model_only_slots3) the stream without
                        per-image work, postprocessing in P worker processes (0: threads), with how late a 0.5 ms
                        sleep wakes in this process (``gil_lag``) and the slot threads' per-batch step times
  writer_procsP[_VARIANT]  (``--writer P,...``, ``--writer-variants``: only these rows) the writer stream with P
                        worker processes; variants: blocking-sync waits, 4 stream threads, 4 slots (4 processes)
  latency_b1_graph, latency_b1_nograph  with ``--latency-engine`` (a batch-1 engine): ``e2e_trt.latency`` with GPU
                        decoding, CUDA graphs on and off (p50/p90/p99 ms per image to COCO results with RLE masks,
                        and to the Detections), each from a detector of its own made after the last was closed;
                        ``to_rle_split_ms``: each image's RLE in 4 pieces over 3 worker processes

Run 20 ran these measurements as inline ``py39 -c`` commands with this code, before it was a file.
"""

import argparse
import gc
import glob
import json
import os
import sys
import tempfile
import threading
import time
from collections import deque

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from thread_cpu import ThreadCPU  # noqa: E402

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.runtime.stream import StreamStats  # noqa: E402


def writer_pass(det, files, repeat, tmp, procs, workers=None):
    """The writer stream (``e2e_trt.stream_pass``) once over ``files`` to warm up, then ``repeat`` times: its row."""
    import e2e_trt

    b = det.batch_model.hi
    e2e_trt.stream_pass(det, files, b, workers, os.path.join(tmp, "w"), procs)
    return e2e_trt.stream_pass(det, files * repeat, b, workers, os.path.join(tmp, "r"), procs)


def model_only(engine, files, slots, repeat, cuda_graph=True, blocking_wait=False):
    det = Detector.from_engine(engine, gpu_decode=True, slots=slots, cuda_graph=cuda_graph, blocking_wait=blocking_wait)
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
    row["blocking_wait"] = blocking_wait
    row["cuda_graph"] = m.cuda_graph  # False when asked for, or when the capture failed (graph_error says why)
    if m.graph_error:
        row["graph_error"] = m.graph_error
    m.close()
    del det, m
    gc.collect()
    return row


def latency_rows(engine, files, n):
    """Batch-1 latency with GPU decoding, CUDA graphs on and off (``e2e_trt.latency``)."""
    import e2e_trt

    out = {}
    for graph in (True, False):
        det = Detector.from_engine(engine, gpu_decode=True, cuda_graph=graph)
        for f in files[:8]:  # warm-up: the first runs of a batch size capture its graph
            det([f])
        rle, to_det = e2e_trt.latency(det, files[:n])
        out["latency_b1_graph" if graph else "latency_b1_nograph"] = {
            "to_rle_ms": rle,
            "to_detections_ms": to_det,
            "cuda_graph": det.batch_model.cuda_graph,
            "graph_error": det.batch_model.graph_error,
        }
        if graph:  # each image's RLE in 4 pieces, 3 of them in worker processes
            out["latency_b1_graph"]["to_rle_split_ms"] = e2e_trt.split_rle_latency(det, files[:n], 4)
        print(out, flush=True)
        det.batch_model.close()
        del det
        gc.collect()
    return out


def stream_rows(engine, files, processes, repeat, slots):
    det = Detector.from_engine(engine, gpu_decode=True, slots=slots)
    b = det.batch_model.hi
    out = {}
    for procs in processes:
        for _ in range(2):  # the first pass warms up (and starts the processes, which the detector keeps)
            st = StreamStats()
            pool = det.__dict__.get("_worker_pools", {}).get(procs)
            by_thread = ThreadCPU(pool.pids() if pool is not None else ())
            cpu_by_thread = None
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            ok = 0
            for i, r in enumerate(det.stream(files * repeat, batch=b, processes=procs, stats=st), 1):
                ok += r.ok
                if i == len(files) * repeat:  # the stream's threads are still up
                    cpu_by_thread = by_thread.stop()
            dt = time.perf_counter() - t0
        out[f"stream_procs{procs}"] = {
            "images": ok,
            "seconds": round(dt, 3),
            "images_per_s": round(ok / dt, 1),
            "main_cpu_s": round(time.process_time() - cpu0, 3),  # this process, all threads
            "cpu_s_by_thread": cpu_by_thread,
        }
        print(out, flush=True)
    import e2e_trt

    with tempfile.TemporaryDirectory() as tmp:
        for procs in processes:
            out[f"stream_writer_procs{procs}"] = writer_pass(det, files, repeat, tmp, procs)
            print(out, flush=True)
        # the same with a 0.5 ms GIL switch interval (Python's default is 5 ms): a thread that has work for the
        # model (the runner's loop, a slot's enqueue) waits less for one running Python code
        procs = max(processes)
        old = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            rep = e2e_trt.stream_pass(det, files * repeat, b, None, os.path.join(tmp, "s"), procs)
        finally:
            sys.setswitchinterval(old)
        out[f"stream_writer_procs{procs}_switch05ms"] = dict(rep, switch_interval_s=0.0005)
        print(out, flush=True)
    det.stop_workers()
    det.batch_model.close()
    del det
    gc.collect()
    # the same writer stream with the callers sleeping on blocking-sync events instead of spinning
    procs = max(processes)
    det = Detector.from_engine(engine, gpu_decode=True, slots=slots, blocking_wait=True)
    with tempfile.TemporaryDirectory() as tmp:
        rep = writer_pass(det, files, repeat, tmp, procs)
        out[f"stream_writer_procs{procs}_blocking"] = dict(rep, blocking_wait=True)
    print(out, flush=True)
    det.stop_workers()
    det.batch_model.close()
    return out


class GilLag(threading.Thread):
    """How late a 0.5 ms sleep wakes up in this process (waiting for the GIL, and for a core): a thread that
    sleeps and measures until :meth:`stop`."""

    def __init__(self):
        super().__init__(daemon=True)
        self.lags = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.perf_counter()
            time.sleep(0.0005)
            self.lags.append(time.perf_counter() - t - 0.0005)

    def stop(self):
        self.halt.set()
        self.join()
        a = np.array(self.lags) * 1e3
        q = np.percentile(a, [50, 90, 99]) if a.size else [0.0, 0.0, 0.0]
        return {
            "samples": int(a.size),
            "p50_ms": round(float(q[0]), 3),
            "p90_ms": round(float(q[1]), 3),
            "p99_ms": round(float(q[2]), 3),
            "max_ms": round(float(a.max()), 3) if a.size else 0.0,
            "share_over_1ms": round(float((a > 1).mean()), 4) if a.size else 0.0,
        }


def timed_steps(model):
    """Wraps the GPU-decode model's per-batch steps (in the slot threads) to record each call's seconds."""
    rec = {"prepare_on_device": [], "enqueue_model": []}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                rec[name].append(time.perf_counter() - t)

        return timed

    model._prepare_on_device = wrap("prepare_on_device", model._prepare_on_device)
    model._enqueue_model = wrap("enqueue_model", model._enqueue_model)
    return rec


def handover_rows(engine, files, processes, repeat, slots=3):
    """``Detector.stream`` without per-image work, postprocessing in P worker processes (0: threads; given
    explicitly, so the runner's default does not apply), each pass measured with :class:`GilLag` and the slot
    threads' per-batch steps (:func:`timed_steps`): whether handing batches to processes slows the GPU-decode
    slots in this process."""
    det = Detector.from_engine(engine, gpu_decode=True, slots=slots)
    b = det.batch_model.hi
    rec = timed_steps(det.batch_model)
    out = {}
    for procs in processes:
        for _ in range(2):  # the first pass warms up (and starts the processes)
            for v in rec.values():
                del v[:]
            st = StreamStats()
            lag = GilLag()
            lag.start()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            ok = sum(r.ok for r in det.stream(files * repeat, batch=b, processes=procs, stats=st))
            dt = time.perf_counter() - t0
            gil = lag.stop()
        steps = {}
        for name, v in rec.items():
            a = np.array(v) * 1e3
            steps[name] = {
                "calls": int(a.size),
                "p50_ms": round(float(np.median(a)), 3),
                "p90_ms": round(float(np.percentile(a, 90)), 3),
            }
        out[f"handover_procs{procs}"] = {
            "images": ok,
            "seconds": round(dt, 3),
            "images_per_s": round(ok / dt, 1),
            "main_cpu_s": round(time.process_time() - cpu0, 3),
            "model_wait_s": round(st.model_wait_s, 3),
            "model_starved_s": round(st.starved_s, 3),
            "gil_lag": gil,
            "slot_steps": steps,
        }
        print(json.dumps(out[f"handover_procs{procs}"]), flush=True)
        det.stop_workers()
    det.batch_model.close()
    return out


WRITER_VARIANTS = {  # name -> (Detector.from_engine keywords, stream worker threads)
    "blocking": ({"blocking_wait": True}, None),
    "workers4": ({}, 4),
    "slots4": ({"slots": 4}, None),
}


def writer_rows(engine, files, processes, repeat, variants=(), variant_procs=4):
    """The writer stream (``e2e_trt.stream_pass``: TSV + COCO RLE per image, as the GPU-decode rows of e2e_trt.py)
    with P worker processes for each P (``writer_procsP``, one detector), then each of ``variants``
    (:data:`WRITER_VARIANTS`) with ``variant_procs`` processes, each from a detector of its own."""
    out = {}
    runs = [("", {}, None, p) for p in processes] + [(v, *WRITER_VARIANTS[v], variant_procs) for v in variants]
    det, made = None, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw, workers, procs in runs:
            if det is None or made != name:
                if det is not None:
                    det.stop_workers()
                    det.batch_model.close()
                    del det
                    gc.collect()
                det, made = Detector.from_engine(engine, gpu_decode=True, **kw), name
            rep = writer_pass(det, files, repeat, tmp, procs, workers)
            key = f"writer_procs{procs}" + (f"_{name}" if name else "")
            out[key] = rep
            print(key, json.dumps(rep), flush=True)
            det.stop_workers()
    if det is not None:
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
    ap.add_argument("--nograph-slots", default="3", help="model_only rows without CUDA graphs at these slot counts")
    ap.add_argument("--latency-engine", default=None, help="a batch-1 engine: the latency rows, graphs on and off")
    ap.add_argument("--latency-images", type=int, default=100)
    ap.add_argument(
        "--handover",
        default=None,
        help="only model_only_slots3 and the handover_procsP rows for these process counts (e.g. 0,2,4,14)",
    )
    ap.add_argument("--writer", default=None, help="only the writer_procsP rows for these process counts")
    ap.add_argument("--writer-variants", default="", help=f"with --writer: also {','.join(WRITER_VARIANTS)}")
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.images, "*.jpg")))
    doc = {"script": "benchmarks/trt_runner_probe.py", "engine": a.engine, "images": len(files), "rows": {}}
    if a.writer:
        variants = [v for v in a.writer_variants.split(",") if v]
        doc["rows"].update(writer_rows(a.engine, files, [int(x) for x in a.writer.split(",")], a.repeat, variants))
        atomic_write_json(a.out, doc)
        return
    if a.handover:
        doc["rows"]["model_only_slots3"] = model_only(a.engine, files, 3, a.repeat)
        atomic_write_json(a.out, doc)
        procs = [int(x) for x in a.handover.split(",")]
        doc["rows"].update(handover_rows(a.engine, files, procs, a.repeat))
        atomic_write_json(a.out, doc)
        return
    for s in (int(x) for x in a.slots.split(",")):
        doc["rows"][f"model_only_slots{s}"] = model_only(a.engine, files, s, a.repeat)
        atomic_write_json(a.out, doc)
        print(doc["rows"], flush=True)
    for s in (int(x) for x in a.nograph_slots.split(",") if x):
        doc["rows"][f"model_only_slots{s}_nograph"] = model_only(a.engine, files, s, a.repeat, cuda_graph=False)
        atomic_write_json(a.out, doc)
    doc["rows"]["model_only_slots3_blocking"] = model_only(a.engine, files, 3, a.repeat, blocking_wait=True)
    atomic_write_json(a.out, doc)
    procs = [int(x) for x in a.processes.split(",")]
    doc["rows"].update(stream_rows(a.engine, files, procs, a.repeat, 3))
    atomic_write_json(a.out, doc)
    if a.latency_engine:  # last: run 20's batch-1 process died making a second detector of one engine
        doc["latency_engine"] = a.latency_engine
        doc["rows"].update(latency_rows(a.latency_engine, files, a.latency_images))
        atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
