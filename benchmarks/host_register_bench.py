"""Upload bandwidth of the streaming runner's input slots, three ways (device machine, PyTorch + CUDA): from the
shared-memory slots page-locked with ``cudaHostRegister`` (``runtime.stream.host_inputs_pinned``), from a
``torch`` pinned batch after a host copy into it (the way before), and from pageable memory; plus what
registering and unregistering the slots cost. Writes JSON (``--out``)."""

from __future__ import annotations

import argparse
import json
import platform
import time
from multiprocessing import shared_memory

import numpy as np
import torch
from _tree import tree  # this folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument("--slots", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dev = torch.device("cuda")
    shape = (a.slots, 3, a.size, a.size)
    shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
    slots = np.ndarray(shape, np.uint8, buffer=shm.buf)
    slots[...] = np.random.default_rng(0).integers(0, 255, shape[1:], dtype=np.uint8)
    out = torch.empty((a.batch, 3, a.size, a.size), dtype=torch.uint8, device=dev)
    stream = torch.cuda.Stream(dev)
    cudart = torch.cuda.cudart()
    res: dict = {
        "script": "benchmarks/host_register_bench.py",
        "tree": tree(),
        "device": torch.cuda.get_device_name(dev),
        "host": platform.node(),
        "slots": a.slots,
        "batch": a.batch,
        "bytes_per_batch": a.batch * int(np.prod(shape[1:])),
    }

    def timed(upload) -> dict:
        walls, gpus = [], []
        for r in range(a.reps + 3):
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            first = (r * a.batch) % (a.slots - a.batch)
            t0 = time.perf_counter()
            with torch.cuda.stream(stream):
                e0.record(stream)
                upload(first)
                e1.record(stream)
            t1 = time.perf_counter()
            e1.synchronize()
            if r >= 3:
                walls.append((t1 - t0) * 1e3)
                gpus.append(e0.elapsed_time(e1))
        gb = res["bytes_per_batch"] / 1e9
        return {
            "host_ms_median": round(float(np.median(walls)), 3),
            "gpu_ms_median": round(float(np.median(gpus)), 3),
            "gb_per_s": round(gb / (float(np.median(gpus)) / 1e3), 1),
        }

    pinned = torch.empty((a.batch, 3, a.size, a.size), dtype=torch.uint8, pin_memory=True)
    view = pinned.numpy()

    def copy_then_upload(first: int) -> None:
        for i in range(a.batch):
            np.copyto(view[i], slots[first + i])
            out[i].copy_(pinned[i], non_blocking=True)

    def pageable(first: int) -> None:
        for i in range(a.batch):
            out[i].copy_(torch.from_numpy(slots[first + i]), non_blocking=True)

    res["pinned_copy"] = timed(copy_then_upload)
    res["pageable"] = timed(pageable)
    base = slots.ctypes.data
    t0 = time.perf_counter()
    status = cudart.cudaHostRegister(base, slots.nbytes, 0)
    res["register_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    res["register_status"] = str(status)
    res["registered"] = timed(pageable)  # the same calls, now from page-locked memory
    t0 = time.perf_counter()
    cudart.cudaHostUnregister(base)
    res["unregister_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    shm.unlink()  # (closed at exit: the arrays above still view it)
    print(json.dumps(res, indent=1))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
