"""Peak host memory (RSS) of ``rcnn-deploy infer`` on one large photo with 100 detections (issue "End-to-end
runtime": at most 1 GiB for a 6000x4000 image at any input size up to 1344^2).

    python benchmarks/memory_bench.py [--size 384] [--photo-hw 4000 6000] [--out FILE]

writes benchmarks/results/memory_cpu_<size>.json unless --out says otherwise (docs/e2e.md renders every
memory_cpu_*.json: ``python benchmarks/e2e_report.py``).

Exports the project's checkpoint (fused graph, ONNX Runtime) with the detection score threshold at 0 so the
model returns its full 100 detections, writes one synthetic photo as a JPEG, then runs each case in a fresh
process and reads its peak RSS (``ru_maxrss`` of the child):
  infer             the CLI as a user runs it (TSV, PNG visualisation, COCO RLE masks from box regions)
  infer-no-png      the same without the visualisation
  dense-masks       the Python API reading ``Detections.masks`` (the full [N, H, W] bool array, made on demand):
                    what every run paid before masks became lazy
  model-only        the backend loaded and run once on a 64x64 image: the model's own share, subtracted in
                    ``above_model_mib`` (each row's peak minus the model-only row's: the pipeline's share)

The commit recorded is the HEAD of the repository the script lives in, with ``dirty`` true when tracked files
differ from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"

MODEL_ONLY = """
import sys
import numpy as np
from rcnn_deploy.api import Detector
d = Detector.load(sys.argv[1])
d([np.zeros((64, 64, 3), np.uint8)])
"""

DENSE = """
import sys
from rcnn_deploy.api import Detector
d = Detector.load(sys.argv[1])([sys.argv[2]])[0]
print(len(d), d.masks.shape, d.masks.nbytes)
"""


def child_peak(cmd: list) -> dict:
    """Run ``cmd`` in a fresh process; its exit code and peak RSS in MiB (Linux reports ru_maxrss in KiB)."""
    code = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': p.returncode, 'peak_rss_mib': round(r.ru_maxrss / 1024, 1), "
        "'tail': (p.stdout + p.stderr)[-300:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *map(str, cmd)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="result file (default: benchmarks/results/memory_cpu_<size>.json)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--photo-hw", type=int, nargs=2, default=(4000, 6000))
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cli = [sys.executable, "-m", "rcnn_deploy.cli"]

    def sh(args: list) -> None:
        subprocess.run([str(x) for x in args], check=True, env=env, capture_output=True)

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sh([*cli, "export", "-m", "torchvision-maskrcnn", "-w", CKPT, "--height", a.size, "--width", a.size]
           + ["--graph", "fused", "--second-nms-score-threshold", "0", "-o", t / "export"])  # fmt: skip
        h, w = a.photo_hw
        sh([*cli, "data", "synth", "-o", t / "photo", "-n", "1", "--height", h, "--width", w]
           + ["--image-format", "jpg", "--min-objects", "12", "--max-objects", "20"])  # fmt: skip
        photo = next((t / "photo" / "images").iterdir())
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
        rows = {}
        rows["infer"] = child_peak([*cli, "infer", t / "export", photo, "-o", t / "out1"])
        rows["infer-no-png"] = child_peak([*cli, "infer", t / "export", photo, "-o", t / "out2", "--no-visualize"])
        rows["dense-masks"] = child_peak([sys.executable, "-c", DENSE, t / "export", photo])
        rows["model-only"] = child_peak([sys.executable, "-c", MODEL_ONLY, t / "export"])
        results = json.loads((t / "out1" / "results.json").read_text())
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    base = rows["model-only"]["peak_rss_mib"]
    doc = {
        "script": "benchmarks/memory_bench.py",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "commit": commit,
        "dirty": bool(dirty.stdout.strip()),
        "photo_hw": [h, w],
        "input_hw": [a.size, a.size],
        "detections": len(results),
        "peak_rss_mib": {k: v["peak_rss_mib"] for k, v in rows.items()},
        # above the model-only process (the backend loaded and run once on a 64x64 image): the pipeline's share
        "above_model_mib": {k: round(v["peak_rss_mib"] - base, 1) for k, v in rows.items()},
        "exit_codes": {k: v["rc"] for k, v in rows.items()},
    }
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"memory_cpu_{a.size}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
