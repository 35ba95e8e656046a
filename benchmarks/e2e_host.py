"""How many images per second the streaming runner's host stages sustain on a machine, and the runner end to end
with the PyTorch deploy model on the GPU (python3 + torch; no TensorRT needed).

    python3 benchmarks/e2e_host.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt --size 1344 \
        --images DIR --out e2e_host.json [--processes 0,8,14] [--batch 8]

Rows:
  host capacity   the real decode + letterbox (uint8) and the real postprocessing (boxes back to the image, masks
                  as COCO RLE from box regions) with the model replaced by REPLAYED outputs: the deploy model's
                  real outputs for the first 16 images, returned again in turn, so the model costs nothing. This
                  measures the host side alone (what the GPU engine must not wait for); it is not an end-to-end
                  number. One row per --processes value (0 = worker threads only).
  torch e2e       the same runner with the PyTorch deploy model (fp32, eager) on CUDA: a real end-to-end figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


class Replay:
    """A BatchModel returning recorded outputs in turn (picklable, cheap): the host stages alone."""

    def __init__(self, outputs: List[Dict[str, np.ndarray]], hi: int) -> None:
        self.outputs, self.lo, self.hi, self.k = outputs, 1, hi, 0

    def submit(self, images: List[np.ndarray]) -> Any:
        picked = []
        for _ in images:
            picked.append(self.outputs[self.k % len(self.outputs)])
            self.k += 1
        out = {key: np.concatenate([p[key] for p in picked]) for key in picked[0]}
        return lambda: out

    def close(self) -> None:
        pass


def run(det: Any, paths: List[str], batch: int, processes: int) -> Dict[str, Any]:
    from rcnn_deploy.runtime.coco import CocoEntries
    from rcnn_deploy.runtime.stream import StreamStats

    stats = StreamStats()
    n_det = n_ok = 0
    for r in det.stream(paths, batch=batch, per_image=CocoEntries(det.spec), processes=processes, stats=stats):
        n_ok += r.ok
        n_det += len(r.extra) if r.ok else 0
    return {
        "processes": processes,
        "batch": batch,
        "images": len(paths),
        "ok": n_ok,
        "detections_per_image": round(n_det / max(n_ok, 1), 1),
        "seconds": round(stats.seconds, 3),
        "images_per_s": round(len(paths) / stats.seconds, 1),
    }


def main() -> None:
    import torch

    from rcnn_deploy._io import atomic_write_json
    from rcnn_deploy.api import Detector
    from rcnn_deploy.runtime.preprocess import find_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--processes", default="0,8,14")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--torch-images", type=int, default=64)
    a = ap.parse_args()
    paths = [str(p) for p in find_images(a.images)]
    det = Detector.load(a.checkpoint, input_hw=(a.size, a.size), device=a.device, batch=a.batch)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: Dict[str, Any] = {
        "script": "benchmarks/e2e_host.py",
        "machine": {
            "host": socket.gethostname(),
            "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
            "cpus": os.cpu_count(),
        },
        "commit": commit,
        "images": {"folder": a.images, "count": len(paths)},
        "rows": [],
    }
    # the real model's outputs for the first 16 images (uint8-graph letterbox: the same bytes a uint8 engine gets)
    recorded = []
    for i in range(0, 16, a.batch):
        arr, _ = det.preprocess(paths[i : i + a.batch])
        outs = det.run_padded(arr)
        recorded += [{k: v[j : j + 1] for k, v in outs.items()} for j in range(len(arr))]
    t0 = time.perf_counter()
    if a.torch_images > 0:  # 0: the host capacity rows only (a CPU machine, say)
        what = f"torch e2e: PyTorch deploy model fp32 eager on {a.device}, {a.torch_images} images"
        row = dict(run(det, paths[: a.torch_images], a.batch, 0), what=what)
        doc["rows"].append(row)
        print(json.dumps(row), flush=True)
    replay = Detector(det.spec, det.input_hw, det._run, "replay", a.batch)
    replay.input_dtype = np.dtype(np.uint8)
    replay.batch_model = Replay(recorded, a.batch)  # type: ignore[assignment]
    for n in (int(v) for v in a.processes.split(",")):
        row = dict(run(replay, paths, a.batch, n), what="host capacity: model replaced by replayed real outputs")
        doc["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(a.out, doc)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
