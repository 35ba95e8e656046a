"""The torch-free GPU mask paste (``backends/tensorrt/paste.py``) on a real model's masks, without TensorRT: the
project's checkpoint runs in PyTorch on the GPU (fp32 and fp16) over a folder of JPEGs at 1344^2; each image's
padded outputs go through :class:`KernelPaste` (masks uploaded with the CUDA runtime, pasted by the NVRTC-compiled
kernel) with the host-paste check on, and every image whose RLE strings differ from the host paste's, or that
went to the host paste (a column of more row changes than the kernel keeps), is saved (``case_*.npz``: the padded
outputs, the image size) for debugging on a CPU with the kernel's C++ build (``tests/test_trt_paste.py``'s).

    python benchmarks/paste_kernel_real.py --images DIR --checkpoint CKPT --out DIR [--limit 32]

Written after issue 17's first GPU run of the kernel path (run 35), whose counts of equal strings inside the
TensorRT process were too low (a race in the counters, since fixed) and where about 10 % of the images went to the
host paste: the kernel on real masks, without TensorRT.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paste_kernel_check import cudart, gpu_name  # noqa: E402

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.backends.tensorrt.paste import KernelPaste  # noqa: E402


def main():
    import ctypes

    import torch

    from rcnn_deploy.api import Detector, HostStages

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=32)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(a.images, "*.jpg")))[: a.limit]
    lib = cudart()
    doc = {"script": "benchmarks/paste_kernel_real.py", "commit": os.environ.get("RCNN_DEPLOY_TREE", "?"),
           "machine": {"gpu": gpu_name()}, "images": len(files), "rows": []}  # fmt: skip
    captured = []
    orig = HostStages.detections_for

    def spy(self, lb, outputs, name=""):
        captured.append((lb, {k: np.array(v) for k, v in outputs.items()}))
        return orig(self, lb, outputs, name)

    HostStages.detections_for = spy
    for precision in ("fp32", "fp16"):
        captured.clear()
        det = Detector.from_torch("torchvision-maskrcnn", a.checkpoint, input_hw=(1344, 1344), device="cuda",
                                  precision=precision)  # fmt: skip
        with torch.inference_mode():
            for f in files:
                det([f])
        for dtype in (np.float32, np.float16):
            paste = KernelPaste(lib, det.spec.mask_paste, det.spec.mask_threshold)
            stream = ctypes.c_void_p()
            assert lib.cudaStreamCreate(ctypes.byref(stream)) == 0
            row = {"model": precision, "masks_dtype": np.dtype(dtype).name, "saved": []}
            paste.check_host = True
            for k, (lb, out) in enumerate(captured):
                o = dict(out)
                o["masks"] = np.ascontiguousarray(o["masks"].astype(dtype))
                dev = ctypes.c_void_p()
                assert lib.cudaMalloc(ctypes.byref(dev), ctypes.c_size_t(o["masks"].nbytes)) == 0
                assert lib.cudaMemcpy(dev, ctypes.c_void_p(o["masks"].ctypes.data), ctypes.c_size_t(o["masks"].nbytes),
                                      1) == 0  # fmt: skip
                before = (paste.checked, paste.identical, paste.host_pasted)
                paste(o, dev.value, stream.value, [lb])
                lib.cudaFree(dev)
                after = (paste.checked, paste.identical, paste.host_pasted)
                if after[0] - before[0] != after[1] - before[1] or after[2] != before[2]:
                    name = f"case_{precision}_{row['masks_dtype']}_{k}.npz"
                    np.savez_compressed(os.path.join(a.out, name), hw=np.array([lb.orig_h, lb.orig_w]), **o)
                    row["saved"].append(name)
            row.update(masks=paste.checked, identical_rle=paste.identical, host_pasted_images=paste.host_pasted,
                       method=paste.method)  # fmt: skip
            paste.close()
            lib.cudaStreamDestroy(stream)
            doc["rows"].append(row)
            print(row, flush=True)
            atomic_write_json(os.path.join(a.out, "paste_kernel_real.json"), doc)


if __name__ == "__main__":
    main()
