"""The split pipeline's glue alone on the GPU: what `run_split` costs besides its three engines.

    python benchmarks/split_glue_time.py --images DIR --out split_glue.json [--sizes 384 1344] [--batches 1 8]
        [--onnxruntime SPLIT_EXPORT_DIR ...]

The glue is `two_stage` with the engines replaced by the checkpoint's own network outputs for the same images
(computed once, then replayed), so the proposal and detection NMS see real candidates: images to the GPU,
anchor decoding, RPN NMS per level, multi-level ROIAlign twice, detection NMS, the outputs back to the host.
Timed with torch.cuda.synchronize around each call (wall clock, median). With the GPU-resident split runtime
(`TensorRTBackend.infer_device`) an image costs this plus each engine's device-path time
(benchmarks/trt86_device_io.py) plus the host's decode / letterbox and mask paste. With --onnxruntime, the
whole split pipeline in ONNX Runtime on the CPU (the results table's ONNX Runtime row) is timed too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CKPT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"


class Replay:
    """``NetworkPieces`` that return recorded network outputs (the engines' part costs nothing here)."""

    def __init__(self, net, images):
        import torch

        with torch.no_grad():
            self.f = net.features(images)
            self.net, self.box, self.mask = net, None, None

    def features(self, images):
        return self.f

    def box_head(self, x):
        if self.box is None:
            self.box = self.net.box_head(x)
        return self.box

    def mask_head(self, x, classes):
        if self.mask is None:
            self.mask = self.net.mask_head(x, classes)
        return self.mask


def _cycle(paths: list, n: int) -> list:
    return [paths[i % len(paths)] for i in range(n)]


def main() -> None:
    import torch

    from rcnn_deploy.glue.pipeline import two_stage
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import find_images, letterbox, load_rgb, rgb_fill

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[384, 1344])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument(
        "--onnxruntime",
        type=Path,
        nargs="*",
        default=[],
        help="split export directories: also time the whole split pipeline in ONNX Runtime on the CPU (batch 1 and"
        " the largest --batches)",
    )
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = build_model("torchvision-maskrcnn", str(CKPT)).to(dev).eval()
    fill = rgb_fill(net.spec.pixel_mean, net.spec.channel_order)
    paths = _cycle(sorted(find_images(a.images)), max(a.batches))  # repeated when the folder has fewer
    rows = []
    for size in a.sizes:
        lb = np.stack([letterbox(load_rgb(p), (size, size), fill)[0] for p in paths]).astype(np.float32)
        for b in a.batches:
            host = np.ascontiguousarray(lb[:b])
            pieces = Replay(net, torch.from_numpy(host).to(dev))
            anchors = net.anchors((size, size), torch.device(dev))

            def glue(host=host, pieces=pieces, anchors=anchors):
                with torch.no_grad():
                    out = two_stage(pieces, torch.from_numpy(host).to(dev), net.spec, anchors)
                    return {k: v.cpu().numpy() for k, v in out.items()}

            ref = glue()
            times = []
            for i in range(a.iterations + 3):
                if dev == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                glue()
                if dev == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:
                    times.append((time.perf_counter() - t0) * 1000.0)
            row = {
                "size": size,
                "batch": b,
                "glue_median_ms": float(np.median(times)),
                "glue_p90_ms": float(np.percentile(times, 90)),
                "detections": int(ref["num_detections"].sum()),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    for d in a.onnxruntime:  # the ONNX Runtime (CPU) row: engines and glue on the CPU, host wall per call
        from rcnn_deploy.contract import Contract
        from rcnn_deploy.glue.split import onnxruntime_split, run_split

        c = Contract.load(d)
        pieces = onnxruntime_split(c, d, ["CPUExecutionProvider"])
        for b in sorted({1, max(a.batches)}):  # batch 1 (end-to-end column) and the table's batch (throughput)
            x = np.stack([letterbox(load_rgb(p), c.input_hw, fill)[0] for p in _cycle(paths, b)]).astype(np.float32)
            times = []
            for i in range(6 if b > 1 else 8):
                t0 = time.perf_counter()
                run_split(pieces, x)
                if i >= 2:
                    times.append((time.perf_counter() - t0) * 1000.0)
            row = {
                "size": c.input_hw[0],
                "batch": b,
                "backend": "onnxruntime-cpu",
                "wall_median_ms": float(np.median(times)),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__}
    a.out.write_text(json.dumps({"info": info, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
