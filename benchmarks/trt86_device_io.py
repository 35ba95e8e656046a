"""The split engines' zero-copy path on real TensorRT (GPU machine, CPython 3.9 + TensorRT 8.6, no torch).

    py39 benchmarks/trt86_device_io.py SPLIT_DIR [SPLIT_DIR ...] --out device_io.json [--batches 1 8]

For every engine of each split export directory (``*.engine`` built by benchmarks/results_table.py or
``rcnn-deploy build``) and batch: runs the host path (``TensorRTBackend.infer``: copy in, execute, copy out)
and the device path (``infer_device`` on caller-owned device buffers and a caller's stream, what the split
runtime does with torch CUDA tensors), checks that both give the same outputs, that bad device inputs get
their specific errors, and times both (wall clock per call, median): the host path's extra time is what
moving the feature maps through host memory costs.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from rcnn_deploy.backends.tensorrt.compat import load_trt  # noqa: E402
from rcnn_deploy.backends.tensorrt.runtime import DeviceTensor, TensorRTBackend  # noqa: E402

TRT_NAME = os.environ.get("RCNN_TRT", "tensorrt")
ROIS = {"box_head": 1000, "mask_head": 100}  # ROIs per image the heads see (the contract's pooler counts)


def role_of(engine):
    name = os.path.basename(engine)
    return next((r for r in ("backbone", "box_head", "mask_head") if name.startswith(r)), None)


def make_feed(be, role, batch, size, rng):
    """Inputs of realistic range: images 0-255; ROI features ~N(0, 1); classes in 1..num_classes-1."""
    feed = {}
    for name in be.input_names:
        shape = list(be.engine.get_tensor_shape(name))
        lead = batch if role == "backbone" else ROIS[role] * batch
        shape = [lead] + [int(d) for d in shape[1:]]
        dtype = be.tensor_dtype(name)
        if name == "images":
            feed[name] = rng.uniform(0, 255, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            feed[name] = rng.integers(1, 4, size=shape).astype(dtype)
        else:
            feed[name] = rng.standard_normal(shape).astype(dtype)
    return feed


def device_run(be, cuda, feed, stream):
    """infer_device on fresh device buffers; returns (outputs on the host, the buffers, a launch function)."""
    ins, bufs = {}, []
    for name, arr in feed.items():
        buf = cuda.DeviceArray(shape=arr.shape, dtype=arr.dtype)
        buf.copy_from(arr, stream=stream)
        bufs.append(buf)
        ins[name] = DeviceTensor(buf.ptr, arr.shape, arr.dtype)
    outs, host = {}, {}
    for name, shape in be.output_shapes({n: a.shape for n, a in feed.items()}).items():
        buf = cuda.DeviceArray(shape=shape, dtype=be.tensor_dtype(name))
        bufs.append(buf)
        outs[name] = DeviceTensor(buf.ptr, shape, be.tensor_dtype(name))
        host[name] = (buf, np.empty(shape, dtype=be.tensor_dtype(name)))

    def launch():
        be.infer_device(ins, outs, stream.ptr)
        stream.synchronize()

    launch()
    for buf, arr in host.values():
        buf.copy_to(arr, stream=stream)
    stream.synchronize()
    return {n: a for n, (_, a) in host.items()}, bufs, ins, outs, launch


def expect_error(fn, kind, words):
    try:
        fn()
    except kind as e:
        return words in str(e)
    return False


def wall_ms(fn, n):
    for _ in range(3):
        fn()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(t))


def check(be, cuda, feed, iterations):
    """Host path vs device path on one input: same outputs, the device path's input checks, wall times."""
    row = {}
    ref = be.infer(feed)
    stream = cuda.Stream()  # not the backend's own stream: the caller's
    got, bufs, ins, outs, launch = device_run(be, cuda, feed, stream)
    try:
        row["same_outputs"] = all(np.array_equal(ref[n], got[n]) for n in ref)
        row["max_abs_diff"] = max(float(np.max(np.abs(ref[n].astype(np.float64) - got[n]))) for n in ref)
        row["outputs"] = {n: list(v.shape) for n, v in got.items()}
        row["output_mbytes"] = round(sum(v.nbytes for v in got.values()) / 2**20, 2)
        name, out0 = next(iter(ins)), next(iter(outs))
        wrong = dict(ins, **{name: DeviceTensor(ins[name].ptr, ins[name].shape, np.dtype(np.float64))})
        small = dict(outs, **{out0: DeviceTensor(outs[out0].ptr, (1,), outs[out0].dtype)})
        row["wrong_dtype_error"] = expect_error(
            lambda: be.infer_device(wrong, outs, stream.ptr), TypeError, "cast it first"
        )
        row["wrong_shape_error"] = expect_error(lambda: be.infer_device(ins, small, stream.ptr), ValueError, "needs")
        row["host_io_wall_ms"] = wall_ms(lambda: be.infer(feed), iterations)
        row["device_io_wall_ms"] = wall_ms(launch, iterations)
    finally:
        for b in bufs:
            b.free()
        stream.free()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iterations", type=int, default=30)
    a = ap.parse_args()
    trt = load_trt(TRT_NAME)
    from polygraphy import cuda

    rng = np.random.default_rng(0)
    results = []
    info = {"trt": trt.name, "trt_version": trt.version}
    for d in a.dirs:
        size = int(os.path.basename(os.path.dirname(os.path.abspath(d))))
        for engine in sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".engine")):
            role = role_of(engine)
            if role is None:
                continue
            be = TensorRTBackend(engine, trt)
            prof = be.meta.get("build_config", {}).get("batch") or [1, 1, 1]
            for batch in a.batches:
                if not prof[0] <= batch <= prof[-1]:
                    continue
                row = {"size": size, "engine": os.path.basename(engine), "role": role, "batch": batch}
                try:
                    row.update(check(be, cuda, make_feed(be, role, batch, size, rng), a.iterations))
                except Exception as e:  # report, go on with the next engine
                    row["error"] = repr(e)[-1000:]
                print(json.dumps(row), flush=True)
                results.append(row)
                write(a.out, {"info": info, "results": results})  # after every row: a killed run keeps its rows
            be.close()


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
