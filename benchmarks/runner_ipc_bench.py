"""The streaming runner's own ceiling: images per second with a model that costs nothing, so what is left is the
runner (its loop, its futures, the hand-over of outputs to worker processes and of results back) and the
per-image postprocessing. CPU only; no model, no files.

    python benchmarks/runner_ipc_bench.py --out runner_ipc.json [--processes 0,2] [--images 512]

Each image is a 1920x1080 picture letterboxed to 1344x1344 (nothing is decoded: ``prepare`` returns a tiny
array), the model returns the same padded outputs each batch (100 slots, ``--detections`` real ones, boxes of
log-normal sizes, 28x28 masks that are smooth blobs), ``postprocess`` is the detector's own
(``HostStages.postprocess``: boxes back to the image, masks pasted lazily) and, with ``--rle``, each image's COCO
results with RLE masks are made in the worker (``CocoEntries``, what ``infer``/``eval`` do).

Per row: img/s over the run, and the calling process's CPU seconds per image (its loop, the executor's threads
and the (un)pickling there): with worker processes that process is the part that does not scale with the cores.
This is what run 20 found on the GPU machine (TensorRT, GPU decode, batch 8): 331 img/s with worker threads and
no per-image work, 207 with 14 worker processes, against 337-349 img/s for the model alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


class InstantModel:
    """A BatchModel whose outputs are ready at once (the same padded outputs for every batch)."""

    def __init__(self, outputs: Dict[str, np.ndarray], hi: int) -> None:
        self.outputs, self.lo, self.hi = outputs, 1, hi

    def submit(self, images: List[np.ndarray]) -> Any:
        k = len(images)
        out = {key: v[:k] for key, v in self.outputs.items()}
        return lambda: out

    def close(self) -> None:
        pass


def padded_outputs(batch: int, detections: int, input_hw: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 100
    side = np.clip(rng.lognormal(np.log(120), 0.6, size=(batch, n, 2)), 8, input_hw * 0.8)
    xy = rng.uniform(0, 1, size=(batch, n, 2)) * (input_hw * 0.56 - side)  # inside the 1920x1080 picture's band
    boxes = np.concatenate([xy, xy + side], axis=-1).astype(np.float32)
    boxes[..., 1::2] += input_hw * 0.22  # the letterbox's top band
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    centre = rng.uniform(9, 19, size=(batch, n, 2, 1, 1)).astype(np.float32)
    radius = rng.uniform(5, 12, size=(batch, n, 1, 1)).astype(np.float32)
    d2 = (yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2
    masks = (1.0 / (1.0 + np.exp((np.sqrt(d2) - radius) / 1.5))).astype(np.float32)
    return {
        "num_detections": np.full((batch, 1), detections, dtype=np.int32),
        "boxes": boxes,
        "scores": np.sort(rng.uniform(0.05, 1.0, size=(batch, n)).astype(np.float32), axis=1)[:, ::-1].copy(),
        "classes": rng.integers(1, 3, size=(batch, n)).astype(np.int32),
        "masks": masks,
    }


class Prepare:
    """The cheapest prepare (picklable): the letterbox of a 1920x1080 picture and, as the model input, ``nbytes``
    bytes standing for the JPEG file that a GPU-decoding model takes (what ``HostStages.prepare`` gives it)."""

    def __init__(self, input_hw: int, nbytes: int) -> None:
        self.input_hw, self.nbytes = input_hw, nbytes

    def __call__(self, item: Any) -> Any:
        from rcnn_deploy.runtime.preprocess import Letterbox
        from rcnn_deploy.runtime.stream import Prepared

        lb = Letterbox.fit(1080, 1920, (self.input_hw, self.input_hw))
        return Prepared(item, np.zeros(self.nbytes, np.uint8), lb)


def one_run(
    stages: Any, model: Any, n: int, batch: int, processes: int, per_image: Any, prepare: Any, writer: Any = None
) -> Dict:
    from rcnn_deploy.runtime.sources import Item
    from rcnn_deploy.runtime.stream import StreamStats, run_stream

    items = [Item(i, f"image{i}.jpg", array=np.zeros((1, 1, 3), np.uint8)) for i in range(n)]
    stats = StreamStats()
    c0, t0 = time.process_time(), time.perf_counter()
    ok = dets = 0
    for r in run_stream(
        items,
        prepare,
        model,
        stages.postprocess,
        batch=batch,
        depth=3,
        per_image=per_image,
        stats=stats,
        processes=processes,
        prepare_in_processes=False,
    ):
        ok += r.ok
        dets += len(r.detections) if r.ok and r.detections is not None else 0
        if writer is not None:
            writer.add(r)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "processes": processes,
        "images": n,
        "ok": ok,
        "detections": dets,
        "seconds": round(wall, 3),
        "images_per_s": round(ok / wall, 1),
        "caller_cpu_ms_per_image": round(cpu * 1e3 / max(ok, 1), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--processes", default="0,2")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--detections", type=int, default=55)
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument(
        "--rle",
        default="no,yes,writer,infer",
        help="rows without per-image work (no), with COCO RLE results per image (yes), and/or with infer's writer "
        "(writer: TSV + COCO RLE per image in the workers, results.jsonl in the calling process; infer: the same "
        "with the masks not sent back, as infer runs it)",
    )
    ap.add_argument("--jpeg-bytes", type=int, default=400_000, help="the size of each image's encoded bytes")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    from rcnn_deploy._io import atomic_write_json
    from rcnn_deploy.api import HostStages
    from rcnn_deploy.config import get_spec
    from rcnn_deploy.runtime.coco import CocoEntries

    spec = get_spec("torchvision-maskrcnn", class_names=["a", "b", "c"])
    stages = HostStages(spec, (a.size, a.size), (0.0, 0.0, 0.0), "uint8", None, False)
    model = InstantModel(padded_outputs(a.batch, a.detections, a.size, 0), a.batch)
    prepare = Prepare(a.size, a.jpeg_bytes)
    doc: Dict[str, Any] = {
        "script": "benchmarks/runner_ipc_bench.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": a.note,
        "batch": a.batch,
        "detections_per_image": a.detections,
        "jpeg_bytes": a.jpeg_bytes,
        "rows": [],
    }
    import tempfile

    from rcnn_deploy.runtime.stream import DropMasksAfter
    from rcnn_deploy.runtime.writers import InferWriter

    for rle in a.rle.split(","):
        for procs in (int(p) for p in a.processes.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                writer = None
                if rle in ("writer", "infer"):
                    writer = InferWriter(Path(tmp), spec, backend="none", visualize=False, total=a.images)
                per_image = CocoEntries(spec) if rle == "yes" else writer.per_image if writer else None
                if rle == "infer":  # as infer runs it: Detector.stream(return_masks=False)
                    per_image = DropMasksAfter(per_image)
                warm = 2 * a.batch * max(procs, 1)
                one_run(stages, model, warm, a.batch, procs, per_image, prepare, writer)  # warm-up
                row = one_run(stages, model, a.images, a.batch, procs, per_image, prepare, writer)
                if writer is not None:
                    writer.close()
            row["per_image"] = {
                "no": None,
                "yes": "CocoEntries",
                "writer": "InferWriter",
                "infer": "InferWriter, masks not sent back",
            }[rle]
            doc["rows"].append(row)
            print(json.dumps(row), flush=True)
    atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
