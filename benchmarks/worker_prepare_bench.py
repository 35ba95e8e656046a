"""A streaming worker process's prepare step (decode + letterbox of one image into its shared-memory slot), both ways.

    python benchmarks/worker_prepare_bench.py --out benchmarks/results/cpu/worker_prepare_bench.json [--images DIR]

``new array + copy``: ``HostStages.prepare(item)`` letterboxes into a new ``[3, H, W]`` array, which the worker then
copies into its slot (what ``runtime.stream._worker_prepare`` did before session 25); ``into the slot``:
``HostStages.prepare(item, out=slot)`` letterboxes straight into the slot (what it does now). The same slot is
reused image after image, as a worker's slots are. Per way, ms per image (minimum and median over ``--repeat``
passes of the files, ways alternating), and whether both left the same bytes in the slot for every image. One
thread (OpenCV's too), as each worker process runs. With no ``--images`` it makes 24 1920x1080 JPEGs with
``rcnn-deploy data synth`` (seed 3: the end-to-end benchmarks' images) in a temporary folder; ``--size`` is the
model input (1344: the issues' targets), uint8 (the exports' ``--input-dtype uint8``).

Run on a code version without ``out=`` it times the first way only (for a before/after on one machine).
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
from _tree import tree  # this folder (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import HostStages  # noqa: E402
from rcnn_deploy.config import get_spec  # noqa: E402
from rcnn_deploy.runtime._opencv import opencv  # noqa: E402
from rcnn_deploy.runtime.preprocess import find_images  # noqa: E402
from rcnn_deploy.runtime.sources import Item  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=Path)
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    cv2 = opencv()
    if cv2 is not None:
        cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        images = a.images
        if images is None:
            cmd = [sys.executable, "-m", "rcnn_deploy.cli", "data", "synth", "-o", f"{tmp}/photos", "-n", str(a.n)]
            cmd += ["--height", "1080", "--width", "1920", "--image-format", "jpg", "--seed", "3"]
            subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
            images = Path(tmp) / "photos" / "images"
        paths = find_images(images)[: a.n]
        hw = (a.size, a.size)
        stages = HostStages(get_spec("torchvision-maskrcnn"), hw, (0.0, 0.0, 0.0), "uint8", None, False)
        slot = np.empty((3, *hw), dtype=np.uint8)
        items = [Item(i, str(p), path=Path(p)) for i, p in enumerate(paths)]

        def copied(it: Item) -> None:
            p = stages.prepare(it)
            assert p.error is None, p.error
            slot[...] = p.array

        def into(it: Item) -> None:
            p = stages.prepare(it, out=slot)  # type: ignore[call-arg]  # absent before session 25
            assert p.error is None, p.error
            if p.array is not slot:
                slot[...] = p.array

        ways: Dict[str, Callable[[Item], None]] = {"new array + copy": copied}
        if "out" in inspect.signature(stages.prepare).parameters:
            ways["into the slot"] = into
        same = True
        if len(ways) == 2:
            for it in items:
                copied(it)
                ref = slot.copy()
                into(it)
                same = same and bool(np.array_equal(ref, slot))
        times: Dict[str, List[float]] = {k: [] for k in ways}
        for fn in ways.values():  # warm-up: the first images and the buffers
            for it in items[:3]:
                fn(it)
        for _ in range(a.repeat):
            for name, fn in ways.items():
                t0 = time.perf_counter()
                for it in items:
                    fn(it)
                times[name].append((time.perf_counter() - t0) * 1e3 / len(items))
    doc: Dict[str, Any] = {
        "script": "benchmarks/worker_prepare_bench.py",
        "commit": tree(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "images": len(paths),
        "image_hw": [1080, 1920] if a.images is None else None,
        "input_hw": list(hw),
        "repeat": a.repeat,
        "ms_per_image": {
            k: {"min": round(min(v), 2), "median": round(statistics.median(v), 2)} for k, v in times.items()
        },
        "same_slot_bytes": same if len(ways) == 2 else None,
    }
    atomic_write_json(a.out, doc)
    print(doc)


if __name__ == "__main__":
    main()
