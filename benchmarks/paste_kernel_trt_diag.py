"""Issue 17's kernel mask paste inside the TensorRT 8.6 process, checked where run 35 saw it differ: for each
image through ``Detector.from_engine(engine, gpu_post="kernel")`` (CPython 3.9, no torch), right after the kernel
ran, the engine's mask probabilities are read back from the device buffer the kernel read and compared, byte for
byte, with the host copy the host paste uses; each mask's RLE string is compared with the host paste's
(``check_host``). Images where either differs are saved (``case_*.npz``: the host outputs, the device masks, the
image size) for debugging on a CPU with the kernel's C++ build.

    py39 benchmarks/paste_kernel_trt_diag.py --engine E --images DIR --out DIR [--limit 32] [--slots 1]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.backends.tensorrt.paste import KernelPaste  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--slots", type=int, default=None)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(a.images, "*.jpg")))[: a.limit]
    rows = []
    original_call = KernelPaste.__call__
    one_at_a_time = threading.Lock()  # the per-call counts below are read around the call

    def traced(self, out, masks_ptr, stream, letterboxes, key=None):
        with one_at_a_time:
            return _traced(self, out, masks_ptr, stream, letterboxes, key)

    def _traced(self, out, masks_ptr, stream, letterboxes, key):
        masks = out["masks"]
        dev = np.empty(masks.shape, masks.dtype)
        status = self.lib.cudaMemcpy(ctypes.c_void_p(dev.ctypes.data), ctypes.c_void_p(masks_ptr),
                                     ctypes.c_size_t(dev.nbytes), 2)  # fmt: skip
        before = (self.checked, self.identical, self.host_pasted)
        got = original_call(self, out, masks_ptr, stream, letterboxes, key)
        after = np.empty(masks.shape, masks.dtype)
        self.lib.cudaMemcpy(ctypes.c_void_p(after.ctypes.data), ctypes.c_void_p(masks_ptr),
                            ctypes.c_size_t(after.nbytes), 2)  # fmt: skip
        row = {"copy_status": int(status), "device_equals_host_before": bool(np.array_equal(dev, masks)),
               "device_equals_host_after": bool(np.array_equal(after, masks)), "dtype": masks.dtype.name,
               "shape": list(masks.shape), "masks": self.checked - before[0],
               "identical_rle": self.identical - before[1], "host_pasted": self.host_pasted - before[2]}  # fmt: skip
        n = [int(x) for x in np.asarray(out["num_detections"]).reshape(-1)]
        row["num_detections"] = n
        row["first_differing_slot"] = next((int(j) for j in range(max(n) if n else 0)
                                            if not np.array_equal(dev[0, j], masks[0, j])), None)  # fmt: skip
        if not (row["device_equals_host_before"] and row["masks"] == row["identical_rle"] and not row["host_pasted"]):
            name = f"case_{len(rows)}.npz"
            np.savez_compressed(os.path.join(a.out, name), device_masks=dev,
                                hw=np.array([[lb.orig_h, lb.orig_w] for lb in letterboxes]),
                                **{k: v for k, v in out.items()})  # fmt: skip
            row["saved"] = name
        rows.append(row)
        print(row, flush=True)
        return got

    KernelPaste.__call__ = traced
    kw = {} if a.slots is None else {"slots": a.slots}
    det = Detector.from_engine(a.engine, gpu_post="kernel", **kw)
    det.batch_model.post.check_host = True
    for f in files:
        det([f])
    # the same images again through the streaming runner (slots in flight together)
    seq = len(rows)
    list(det.stream(files))
    doc = {"script": "benchmarks/paste_kernel_trt_diag.py", "engine": a.engine, "images": len(files),
           "sequential_rows": seq, "rows": rows,
           "summary": {"device_equals_host": sum(r["device_equals_host_before"] for r in rows),
                       "masks": sum(r["masks"] for r in rows), "identical_rle": sum(r["identical_rle"] for r in rows),
                       "host_pasted": sum(r["host_pasted"] for r in rows), "calls": len(rows)}}  # fmt: skip
    atomic_write_json(os.path.join(a.out, "paste_kernel_trt_diag.json"), doc)
    print(doc["summary"])


if __name__ == "__main__":
    main()
