"""The letterbox resamplers' pixels against each other (CPU), on the same decoded JPEGs:

* ``host``: ``letterbox()``, OpenCV's uint8 INTER_LINEAR (fixed point), what the host path feeds the model;
* ``graph``: the TensorRT GPU-decode path's letterbox graph up to session 17 (``letterbox_graph(..., "float")``,
  run here by ONNX Runtime: gathers and lerps in float32, rounded half to even);
* ``graph_opencv``: its graph since session 18 (``"opencv"``: OpenCV's integer arithmetic in exact float32);
* ``torch``: ``F.interpolate`` bilinear in float32, rounded (``GpuLetterbox`` up to session 17; since then it
  does OpenCV's arithmetic in int32 where the host has OpenCV).

    python benchmarks/letterbox_pixels.py DIR N out.json   # DIR: data synth ... --image-format jpg

Why: on the H200 the PyTorch GPU-decode path matched 99.2 % of the host path's detections on the 1920x1080 JPEGs
and the TensorRT one 97.4 %, with decoders whose pixels are Pillow's to 99.97 % (run 25). The float letterboxes
differ from the host's on about an eighth of the values; the opencv graph on none."""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max": int(d.max()), "mean": round(float(d.mean()), 5), "identical": round(float((d == 0).mean()), 5)}


def main() -> None:
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from rcnn_deploy._io import atomic_write_json
    from rcnn_deploy.export.letterbox_graph import letterbox_graph
    from rcnn_deploy.runtime._opencv import opencv
    from rcnn_deploy.runtime.preprocess import Letterbox, find_images, letterbox, letterbox_taps, load_rgb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=1344)
    a = ap.parse_args()
    hw, fill = (a.size, a.size), (124.0, 116.0, 104.0)
    graphs = {
        r: ort.InferenceSession(
            letterbox_graph(hw, fill, np.uint8, r).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        for r in ("float", "opencv")
    }
    names = ("host_vs_graph", "host_vs_torch", "graph_vs_torch", "host_vs_graph_opencv")
    pairs: dict = {k: [] for k in names}
    files = [str(p) for p in find_images(a.images)][: a.n]
    for f in files:
        rgb = load_rgb(f)
        h, w = rgb.shape[:2]
        host, _ = letterbox(rgb, hw, fill, dtype=np.uint8)
        out = {}
        for r, sess in graphs.items():
            out[r] = sess.run(None, dict(raw=rgb[None], **letterbox_taps([(h, w)], hw, (h, w), r)))[0][0]
        rh, rw = Letterbox.fit(h, w, hw).size_in(hw)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        r = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False).round_().clamp_(0, 255)
        tv = host.copy()
        tv[:, :rh, :rw] = r.to(torch.uint8)[0].numpy()
        region = (slice(None), slice(0, rh), slice(0, rw))  # the image's pixels, not the padding
        compared = {
            "host_vs_graph": (host, out["float"]),
            "host_vs_torch": (host, tv),
            "graph_vs_torch": (out["float"], tv),
            "host_vs_graph_opencv": (host, out["opencv"]),
        }
        for key, (p, q) in compared.items():
            pairs[key].append(stats(p[region], q[region]))
    summary = {
        k: {
            "max": max(s["max"] for s in v),
            "mean": round(float(np.mean([s["mean"] for s in v])), 5),
            "identical": round(float(np.mean([s["identical"] for s in v])), 5),
        }
        for k, v in pairs.items()
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    doc = {
        "script": "benchmarks/letterbox_pixels.py",
        "machine": f"{platform.platform()}, {platform.python_version()}",
        "commit": commit.strip(),
        "opencv": opencv() is not None,
        "images": len(files),
        "size": a.size,
        "summary": summary,
        "per_image": pairs,
    }
    atomic_write_json(a.out, doc)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
