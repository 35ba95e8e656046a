"""nvImageCodec's JPEG decoding on the GPU machine, backend by backend: what the TensorRT GPU-decode path
(``backends/tensorrt/gpu_pre.py``) can get from it. CPython 3.9 compatible, no torch.

For each decoder configuration (nvImageCodec backends x chroma upsampling) and batch size, over the first
``--n`` JPEGs of ``--images``:

- wall ms per batch: the ``decode`` call plus a synchronisation of its CUDA stream (median over batches);
- host CPU ms per batch (this process's user+system time over the same span: the Huffman decoding that the
  hybrid backends do on the CPU, in nvImageCodec's thread pool);
- the same wall with a TensorRT engine (``--engine``) running back to back on another stream, as in the
  streaming runner, where decoding shares the GPU with the model;
- pixels against OpenCV's ``imdecode`` (libjpeg-turbo, the host path): mean |difference| and the share of
  values more than 2 grey levels apart, over the first 8 images.

Writes one JSON file (``--out``); a configuration nvImageCodec refuses is recorded with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import threading
import time
from pathlib import Path

import numpy as np


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def configs(nv):
    kinds = nv.BackendKind
    out = [
        ("default_fancy", None, ":fancy_upsampling=1"),
        ("default", None, ""),
        ("hw_only", [nv.Backend(kinds.HW_GPU_ONLY)], ""),
        ("hw_only_fancy", [nv.Backend(kinds.HW_GPU_ONLY)], ":fancy_upsampling=1"),
        ("gpu_only_fancy", [nv.Backend(kinds.GPU_ONLY)], ":fancy_upsampling=1"),
        ("hybrid_fancy", [nv.Backend(kinds.HYBRID_CPU_GPU)], ":fancy_upsampling=1"),
    ]
    return out


class EngineLoad:
    """A TensorRT engine run back to back on its own stream in a thread (the model beside the decoder)."""

    def __init__(self, path, nonblocking=False):
        from rcnn_deploy.backends.tensorrt.pipelined import NonBlockingStream
        from rcnn_deploy.backends.tensorrt.runtime import TensorRTBackend

        self.be = TensorRTBackend(Path(path))
        if nonblocking:  # the engine's stream does not synchronise with the legacy default stream
            self.be.stream = NonBlockingStream(self.be.cuda.wrapper().handle)
        shape = [int(d) for d in self.be.engine.get_tensor_shape(self.be.input_names[0])]
        prof = self.be.engine.get_tensor_profile_shape(self.be.input_names[0], 0)
        shape[0] = int(prof[2][0]) if shape[0] < 0 else shape[0]
        feed = {self.be.input_names[0]: np.zeros(shape, self.be.tensor_dtype(self.be.input_names[0]))}
        self.be.copy_inputs(feed)
        self.stop = threading.Event()
        self.runs = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            self.be.execute()
            self.be.stream.synchronize()
            self.runs += 1

    def __enter__(self):
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.stop.clear()  # ready for the next ``with``
        self.thread = threading.Thread(target=self._loop, daemon=True)


def time_config(nv, dec, params, datas, batch, stream):
    walls, cpus = [], []
    batches = [datas[i : i + batch] for i in range(0, len(datas) - batch + 1, batch)]
    for b in batches[:2]:  # warm-up: the decoder's buffers grow to these sizes
        dec.decode([nv.CodeStream(d) for d in b], params, cuda_stream=stream.ptr)
        stream.synchronize()
    for b in batches:
        c0, t0 = cpu_s(), time.perf_counter()
        imgs = dec.decode([nv.CodeStream(d) for d in b], params, cuda_stream=stream.ptr)
        stream.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
        cpus.append((cpu_s() - c0) * 1e3)
        if any(im is None for im in imgs):
            raise RuntimeError("a batch image came back None")
    return {
        "batches": len(walls),
        "wall_ms": round(float(np.median(walls)), 2),
        "wall_p90_ms": round(float(np.percentile(walls, 90)), 2),
        "cpu_ms": round(float(np.median(cpus)), 2),
        "images_per_s": round(batch * 1e3 / float(np.median(walls)), 1),
    }


def pixels(nv, dec, params, datas, stream):
    import cv2

    diffs, far = [], []
    imgs = dec.decode([nv.CodeStream(d) for d in datas], params, cuda_stream=stream.ptr)
    stream.synchronize()
    for d, im in zip(datas, imgs):
        gpu = np.asarray(im.cpu())
        host = cv2.cvtColor(cv2.imdecode(d, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        a = np.abs(gpu.astype(np.int16) - host.astype(np.int16))
        diffs.append(float(a.mean()))
        far.append(float((a > 2).mean()))
    return {"mean_abs": round(float(np.mean(diffs)), 4), "share_gt2": round(float(np.mean(far)), 5)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--engine", default=None, help="a TensorRT engine to run beside the decoder (the load rows)")
    ap.add_argument("--threads", type=int, default=0, help="nvImageCodec's max_num_cpu_threads (0: its default)")
    ap.add_argument("--nonblocking", action="store_true", help="the engine (and decode) streams: cudaStreamNonBlocking")
    ap.add_argument("--configs", default=None, help="comma-separated subset of the configurations")
    a = ap.parse_args()
    from nvidia import nvimgcodec as nv  # type: ignore[import-untyped]
    from polygraphy import cuda

    from rcnn_deploy._io import atomic_write_json

    files = sorted(p for p in Path(a.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: a.n]
    datas = [np.fromfile(str(p), dtype=np.uint8) for p in files]
    if a.nonblocking:
        from rcnn_deploy.backends.tensorrt.pipelined import NonBlockingStream

        stream = NonBlockingStream(cuda.wrapper().handle)
    else:
        stream = cuda.Stream()
    doc = {
        "script": "benchmarks/nvjpeg_bench.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "nvimgcodec": str(getattr(nv, "__version__", "?")),
        "images": {"folder": a.images, "count": len(datas)},
        "threads": a.threads,
        "nonblocking_streams": a.nonblocking,
        "configs": [],
    }
    load = EngineLoad(a.engine, a.nonblocking) if a.engine else None
    if load is not None:  # the engine alone: the rate the decoder beside it may take from
        with load:
            r0, t0 = load.runs, time.perf_counter()
            time.sleep(2.0)
            doc["engine_alone_runs_per_s"] = round((load.runs - r0) / (time.perf_counter() - t0), 1)
    params = nv.DecodeParams(apply_exif_orientation=True, color_spec=nv.ColorSpec.RGB, allow_any_depth=False)
    chosen = a.configs.split(",") if a.configs else None
    for name, backends, options in configs(nv):
        if chosen is not None and name not in chosen:
            continue
        row = {"config": name, "options": options}
        try:
            kw = {"options": options, "max_num_cpu_threads": a.threads}
            if backends is not None:
                kw["backends"] = backends
            dec = nv.Decoder(**kw)
            row["pixels"] = pixels(nv, dec, params, datas[:8], stream)
            for b in (int(x) for x in a.batches.split(",")):
                row[f"b{b}"] = time_config(nv, dec, params, datas, b, stream)
                if load is not None:
                    with load:
                        r0 = load.runs
                        t0 = time.perf_counter()
                        row[f"b{b}_beside_engine"] = time_config(nv, dec, params, datas, b, stream)
                        row[f"b{b}_beside_engine"]["engine_runs_per_s"] = round(
                            (load.runs - r0) / (time.perf_counter() - t0), 1
                        )
        except Exception as e:  # noqa: BLE001 - recorded: a backend this machine or build lacks
            row["error"] = f"{type(e).__name__}: {e}"
        doc["configs"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
