"""The baseline beside ``e2e_trt.py``: torchvision's own eager Mask R-CNN end to end on the same images, the way a
torchvision user runs it (decode with Pillow, tensor to the GPU, ``model([img])`` with the model's own resize to
the input size and mask paste, masks thresholded and copied back, COCO RLE with pycocotools), one image at a time.

    python3 benchmarks/e2e_torchvision.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt --size 1344 \
        --images DIR --out e2e_torchvision.json [--images-limit 64]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import numpy as np
from _tree import tree  # this folder (on sys.path when run as a script)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main() -> None:
    import torch
    from PIL import Image
    from pycocotools import mask as mask_util

    from rcnn_deploy._io import atomic_write_json
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.models.reference import torchvision_reference
    from rcnn_deploy.runtime.preprocess import find_images
    from rcnn_deploy.runtime.stream import percentiles

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images-limit", type=int, default=64)
    a = ap.parse_args()
    net = build_model("torchvision-maskrcnn", a.checkpoint)
    model = torchvision_reference(net.spec, net.state_dict(), (a.size, a.size)).cuda().eval()
    paths = find_images(a.images)[: a.images_limit]

    def once(p) -> int:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
        x = torch.from_numpy(rgb).cuda().permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            o = model([x])[0]
        masks = (o["masks"][:, 0] > 0.5).to(torch.uint8).cpu().numpy()
        o = {k: v.cpu() for k, v in o.items() if k != "masks"}
        mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        return len(o["scores"])

    for p in paths[:3]:
        once(p)
    torch.cuda.synchronize()
    walls, dets = [], 0
    t_all = time.perf_counter()
    for p in paths:
        t0 = time.perf_counter()
        dets += once(p)
        walls.append((time.perf_counter() - t0) * 1e3)
    total = time.perf_counter() - t_all
    commit = tree()  # the tree sent (set by device_session.sh), else git's
    doc = {
        "script": "benchmarks/e2e_torchvision.py",
        "machine": {"host": socket.gethostname(), "gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count()},
        "commit": commit,
        "torch": torch.__version__,
        "model": f"torchvision MaskRCNN R50-FPN eager fp32, min_size=max_size={a.size}",
        "images": len(paths),
        "detections": dets,
        "latency_ms": percentiles(walls, (50, 90, 99)),
        "images_per_s": round(len(paths) / total, 2),
    }
    atomic_write_json(a.out, doc)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
