"""The torch-free GPU mask paste (``backends/tensorrt/paste.py``) on a real GPU, without TensorRT: masks uploaded
with the CUDA runtime (ctypes), pasted by :class:`KernelPaste` (NVRTC-compiled kernel, driver-API launch), every
mask's COCO RLE string compared with the host paste's (``PastedMasks``) of the same probabilities, and the time of
one batch's paste (host plan + upload + kernel + download + runs: ``paste_ms``; the kernel's share alone is not
separated) against the host paste + RLE of the same masks (``host_ms``).

    python benchmarks/paste_kernel_check.py --out paste_kernel_check.json [--repeat 50]

Cases: mask-head-like probabilities (a smooth blob, few crossings per column) on 1920x1080 images, 55 and 100
masks with lognormal box sizes around 120 px, both paste methods, float32 and float16 masks, a batch of 8 images.
Needs a CUDA GPU, libcudart (``RCNN_DEPLOY_CUDART`` or found like NVRTC: on the loader's path or in an ``nvidia``
pip package) and NVRTC (``RCNN_DEPLOY_NVRTC``; see ``backends/cuda_rtc.py``). Runs under CPython 3.9 too.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.backends.cuda_rtc import find_nvrtc  # noqa: E402
from rcnn_deploy.backends.tensorrt.paste import KernelPaste  # noqa: E402
from rcnn_deploy.runtime.masks import PastedMasks  # noqa: E402
from rcnn_deploy.runtime.preprocess import Letterbox  # noqa: E402


def cudart():
    path = os.environ.get("RCNN_DEPLOY_CUDART")
    if not path:
        for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
            try:
                return ctypes.CDLL(name)
            except OSError:
                pass
        found = [f for p in sys.path for f in sorted(glob.glob(os.path.join(p, "nvidia/*/lib/libcudart.so.1[23]")))]
        if not found:
            raise SystemExit("no libcudart found: set RCNN_DEPLOY_CUDART")
        path = found[0]
    return ctypes.CDLL(path)


def gpu_name():
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        return q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    except OSError:
        return None


def probs_like_mask_head(rng, n, m=28):
    """A smooth blob per mask, mostly near 0 or 1 (a trained mask head's look), a little noise."""
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1) - 0.5
    r = rng.uniform(0.2, 0.45, (n, 1, 1))
    logits = 12 * (r - np.sqrt(yy**2 + xx**2)[None]) + rng.normal(0, 0.3, (n, m, m))
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def batch(rng, images, n, slots=100, hw=(1080, 1920), input_hw=(1344, 1344)):
    """Padded outputs of ``images`` images with ``n`` detections each (boxes in the letterboxed input)."""
    lb = Letterbox.fit(hw[0], hw[1], input_hw)
    out = {
        "boxes": np.zeros((images, slots, 4), np.float32),
        "scores": np.ones((images, slots), np.float32),
        "classes": np.ones((images, slots), np.int32),
        "num_detections": np.full((images, 1), n, np.int32),
        "masks": np.zeros((images, slots, 28, 28), np.float32),
    }
    for i in range(images):
        cx, cy = rng.uniform(0, hw[1], n), rng.uniform(0, hw[0], n)
        side = np.exp(rng.normal(np.log(120), 0.6, (n, 2)))
        b = np.stack([cx - side[:, 0] / 2, cy - side[:, 1] / 2, cx + side[:, 0] / 2, cy + side[:, 1] / 2], 1)
        out["boxes"][i, :n] = np.clip(b, 0, [hw[1], hw[0], hw[1], hw[0]]) * lb.scale
        out["masks"][i, :n] = probs_like_mask_head(rng, n)
    return out, [lb] * images


def check(lib, case, repeat):
    rng = np.random.default_rng(case["seed"])
    out, lbs = batch(rng, case["images"], case["n"])
    out["masks"] = out["masks"].astype(case["dtype"])
    host_masks = np.ascontiguousarray(out["masks"])
    dev = ctypes.c_void_p()
    assert lib.cudaMalloc(ctypes.byref(dev), ctypes.c_size_t(host_masks.nbytes)) == 0
    assert lib.cudaMemcpy(dev, ctypes.c_void_p(host_masks.ctypes.data), ctypes.c_size_t(host_masks.nbytes), 1) == 0
    stream = ctypes.c_void_p()
    assert lib.cudaStreamCreate(ctypes.byref(stream)) == 0
    paste = KernelPaste(lib, case["method"])
    try:
        paste.check_host = True
        got = paste(dict(out), dev.value, stream.value, lbs)
        row = dict(case, dtype=np.dtype(case["dtype"]).name, masks=paste.checked, identical_rle=paste.identical,
                   host_pasted_images=paste.host_pasted, finite=bool(got["finite"].all()))  # fmt: skip
        paste.check_host = False
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = paste(dict(out), dev.value, stream.value, lbs)
            for d in r["detections"]:
                d.pasted.rles()  # the strings too: what detections_to_coco asks for
            times.append((time.perf_counter() - t0) * 1e3)
        host = []
        for _ in range(max(3, repeat // 5)):
            t0 = time.perf_counter()
            for i, lb in enumerate(lbs):
                k = case["n"]
                boxes = lb.boxes_to_original(out["boxes"][i, :k])
                PastedMasks(out["masks"][i, :k].astype(np.float32), boxes, (lb.orig_h, lb.orig_w), case["method"],
                            0.5).rles()  # fmt: skip
            host.append((time.perf_counter() - t0) * 1e3)
        row.update(paste_ms=round(statistics.median(times), 3), paste_p90_ms=round(float(np.percentile(times, 90)), 3),
                   host_ms=round(statistics.median(host), 3), arch=paste.module.arch)  # fmt: skip
        return row
    finally:
        paste.close()
        lib.cudaStreamDestroy(stream)
        lib.cudaFree(dev)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    lib = cudart()
    cases = []
    for method in ("torchvision", "detectron2"):
        for dtype in (np.float32, np.float16):
            cases.append({"method": method, "dtype": dtype, "images": 1, "n": 55, "seed": 1})
    cases.append({"method": "torchvision", "dtype": np.float32, "images": 1, "n": 100, "seed": 2})
    cases.append({"method": "torchvision", "dtype": np.float32, "images": 8, "n": 55, "seed": 3})
    doc = {"script": "benchmarks/paste_kernel_check.py", "commit": os.environ.get("RCNN_DEPLOY_TREE", "?"),
           "machine": {"host": platform.node(), "gpu": gpu_name(), "cpus": os.cpu_count(),
                       "python": platform.python_version()},
           "nvrtc": find_nvrtc(), "rows": []}  # fmt: skip
    for case in cases:
        try:
            row = check(lib, case, a.repeat)
        except Exception as e:  # noqa: BLE001 - recorded, the other cases go on
            row = dict(case, dtype=np.dtype(case["dtype"]).name, error=f"{type(e).__name__}: {e}")
        doc["rows"].append(row)
        print(row, flush=True)
        atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
