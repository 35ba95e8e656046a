"""Host JPEG decoding: ``load_rgb`` (simplejpeg, strict) against Pillow alone and OpenCV, on a folder of photos.

    python benchmarks/decode_bench.py --images DIR --out benchmarks/results/cpu/decode_bench.json [-n 16]

Per decoder, the median and minimum ms per image over ``--repeat`` passes of the first ``-n`` files (each read into
memory first, so the disk is not timed), and whether its pixels equal Pillow's on every file. With no ``--images``
it makes 16 1920x1080 JPEGs with ``rcnn-deploy data synth`` (seed 3, 4-12 objects each: the end-to-end benchmarks'
settings) in a temporary folder. One thread each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.runtime import preprocess  # noqa: E402


def pillow_only(data: bytes) -> np.ndarray:
    saved = sys.modules.get("simplejpeg")
    sys.modules["simplejpeg"] = None  # type: ignore[assignment]  # import simplejpeg -> ImportError
    try:
        return preprocess.load_rgb(data)
    finally:
        if saved is None:
            del sys.modules["simplejpeg"]
        else:
            sys.modules["simplejpeg"] = saved


def opencv(data: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.images
        if folder is None:
            folder = os.path.join(tmp, "data")
            cmd = [sys.executable, "-m", "rcnn_deploy.cli", "data", "synth", "-o", folder, "-n", str(a.n)]
            cmd += ["--height", "1080", "--width", "1920", "--image-format", "jpg", "--seed", "3"]
            cmd += ["--min-objects", "4", "--max-objects", "12"]
            subprocess.run(cmd, check=True, capture_output=True)
            folder = os.path.join(folder, "images")
        files = preprocess.find_images(folder)[: a.n]
        datas = [Path(f).read_bytes() for f in files]
    decoders = {"load_rgb (simplejpeg)": preprocess.load_rgb, "Pillow (load_rgb without simplejpeg)": pillow_only}
    decoders["OpenCV imdecode + BGR->RGB"] = opencv
    reference = [pillow_only(d) for d in datas]
    rows = {}
    for name, fn in decoders.items():
        same = all(np.array_equal(fn(d), r) for d, r in zip(datas, reference))
        per_image = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            for d in datas:
                fn(d)
            per_image.append((time.perf_counter() - t0) * 1e3 / len(datas))
        rows[name] = {
            "median_ms": round(statistics.median(per_image), 2),
            "min_ms": round(min(per_image), 2),
            "same_pixels_as_pillow": same,
        }
        print(name, rows[name], flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        sha = commit.stdout.strip() or None
    except OSError:
        sha = None
    shape = list(reference[0].shape) if reference else None
    folder = a.images or "data synth seed 3, 4-12 objects (temporary)"
    import simplejpeg
    from PIL import Image

    atomic_write_json(
        a.out,
        {
            "script": "benchmarks/decode_bench.py",
            "commit": sha,
            "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "versions": {"simplejpeg": simplejpeg.__version__, "pillow": Image.__version__, "opencv": cv2.__version__},
            "images": {"count": len(datas), "shape": shape, "folder": folder},
            "load_average_before": list(os.getloadavg()),
            "decoders": rows,
        },
    )


if __name__ == "__main__":
    main()
