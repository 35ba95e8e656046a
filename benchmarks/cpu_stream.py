"""The streaming runner against the sequential path on this CPU machine (issue "End-to-end runtime": ONNX Runtime at
384², streamed >= 1.3x the sequential path's img/s on the 2-core CPU machine).

    python benchmarks/cpu_stream.py --out benchmarks/results/cpu/cpu_stream.json [--images DIR] [-n 24]
        [--size 384] [--model export|cpu-build|cpu-int8] [--visualize [--vis-format auto|png|jpg]]

Both paths do the same work per image and write the same files: decode the JPEG, letterbox, run the model (batch 1),
boxes back to the image, masks as COCO RLE from their box regions, a TSV per image (with --visualize a picture too,
as ``infer`` draws it by default: JPEG for these JPEGs unless --vis-format png).
  sequential  one image after another on the calling thread: ``Detector.prepare`` -> ``run_padded`` ->
              ``detections_for`` -> the writer (what the runtime did before the streaming runner)
  streamed    ``Detector.stream`` (decode + letterbox in worker threads, the model on its own thread, post-processing
              and writing in workers, results in input order)
Each path runs twice over the folder, alternating (sequential, streamed, sequential, streamed); the best of each is
reported with the machine's load average, and the files each wrote are checked equal (same detections).

``model_only`` is the ceiling the host stages leave aside: the model alone on the same letterboxed images (decoded
once, beforehand), one session with every core one image after another (``one_session``) against the streamed
path's sessions side by side, one image each (``side_by_side``; with --replicas 1 the same one session).
When the model is nearly all of the time, ``model_only``'s ratio plus the share of the host stages is about the most
any overlap can give on these cores.

The images are 1920x1080 JPEGs made by ``rcnn-deploy data synth`` (seed 3) unless --images names a folder; the
model is the project's checkpoint exported at --size (``export``: the fused ONNX graph as exported; ``cpu-build``:
``rcnn-deploy build --target onnxruntime``; ``cpu-int8``: the same with int8, calibrated on 16 of the images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.runtime.preprocess import find_images  # noqa: E402
from rcnn_deploy.runtime.sources import Item  # noqa: E402
from rcnn_deploy.runtime.stream import StreamResult, StreamStats  # noqa: E402
from rcnn_deploy.runtime.writers import InferWriter  # noqa: E402

CLI = [sys.executable, "-m", "rcnn_deploy.cli"]


def sh(args: list) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def commit() -> str:
    """HEAD, and which files of src/ and this script differ from it (the tree that ran)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src", "benchmarks/cpu_stream.py"], capture_output=True, text=True, cwd=ROOT
    )
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    return out.stdout.strip() + (f" (modified: {', '.join(changed)})" if changed else "")


def make_model(work: Path, size: int, kind: str, images: Path) -> Path:
    ckpt = ROOT / "src" / "rcnn_deploy" / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
    export = work / "export"
    # a CPU build starts from the fused graph with ONNX Runtime's NonMaxSuppression (docs/cpu.md)
    nms = [] if kind == "export" else ["--nms", "onnx"]
    sh([*CLI, "export", "-m", "torchvision-maskrcnn", "-w", ckpt, "--height", size, "--width", size]
       + ["--graph", "fused", *nms, "-o", export])  # fmt: skip
    if kind == "export":
        return export
    build = work / kind
    extra = ["--precision", "int8", "--calib-input", images, "--calib-images", "16"] if kind == "cpu-int8" else []
    sh([*CLI, "build", export / "torchvision-maskrcnn_fused_onnx.onnx", "--target", "onnxruntime", "-o", build, *extra])
    return build


def sequential(det: Detector, paths: list, out: Path, visualize: bool, vis_format: str) -> dict:
    writer = InferWriter(
        out, det.spec, backend=det.backend, visualize=visualize, total=len(paths), vis_format=vis_format
    )
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        prepared = det.prepare(Item(i, str(p), path=p), keep_image=visualize)
        assert prepared.error is None, prepared.error
        outputs = det.run_padded(prepared.array[None])
        d = det.detections_for(prepared.letterbox, outputs, prepared.item.name)
        r = StreamResult(prepared.item, detections=d, image=prepared.image)
        r.extra = writer.per_image(r)
        writer.add(r)
    seconds = time.perf_counter() - t0
    writer.close()
    return {"seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 3)}


def streamed(det: Detector, paths: list, out: Path, visualize: bool, vis_format: str) -> dict:
    writer = InferWriter(
        out, det.spec, backend=det.backend, visualize=visualize, total=len(paths), vis_format=vis_format
    )
    stats = StreamStats()
    t0 = time.perf_counter()
    for r in det.stream([str(p) for p in paths], batch=1, keep_images=visualize, per_image=writer.per_image,
                        stats=stats, return_masks=False):  # fmt: skip
        assert r.ok, r.error
        writer.add(r)
    seconds = time.perf_counter() - t0
    writer.close(stats)
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(len(paths) / seconds, 3),
        "model_wait_s": round(stats.model_wait_s, 3),
        "model_starved_s": round(stats.starved_s, 3),
    }


def model_only(det: Detector, det_streamed: Detector, paths: list) -> dict:
    """The model alone (no decode, post-processing or writing): images per second of one session, one image after
    another, and of the streamed path's model (its replicas side by side), over the same letterboxed arrays."""
    arrays = []
    for i, p in enumerate(paths):
        prepared = det.prepare(Item(i, str(p), path=p))
        assert prepared.error is None, prepared.error
        arrays.append(prepared.array)
    t0 = time.perf_counter()
    for a in arrays:
        det.run_padded(a[None])
    one = time.perf_counter() - t0
    model = det_streamed.batch_model
    side = one
    if model is not None:  # replicas: a ReplicatedModel, which queues the images for its copies
        t0 = time.perf_counter()
        waits = [model.submit([a]) for a in arrays]
        for w in waits:
            w()
        side = time.perf_counter() - t0
    return {
        "one_session_images_per_s": round(len(arrays) / one, 3),
        "side_by_side_images_per_s": round(len(arrays) / side, 3),
        "ratio": round(one / side, 3),
    }


def same_results(a: Path, b: Path) -> bool:
    ra, rb = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    key = ("image_id", "category_id", "bbox", "score", "segmentation")
    return [[r.get(k) for k in key] for r in ra] == [[r.get(k) for k in key] for r in rb]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=Path)
    ap.add_argument("-n", type=int, default=24, help="images (made when --images is not given)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--model", choices=("export", "cpu-build", "cpu-int8"), default="export")
    ap.add_argument("--visualize", action="store_true", help="both paths also write a picture per image")
    ap.add_argument("--vis-format", default="auto", choices=("auto", "png", "jpg"), help="the pictures' format")
    ap.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="the streamed path's ONNX Runtime sessions (Detector.load(replicas=N): the cores shared out among N "
        "sessions run images side by side); the sequential path keeps one session with every core",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = a.images
        if images is None:
            sh([*CLI, "data", "synth", "-o", work / "photos", "-n", a.n, "--height", 1080, "--width", 1920]
               + ["--image-format", "jpg", "--seed", 3])  # fmt: skip
            images = work / "photos" / "images"
        paths = find_images(images)[: a.n]
        model = make_model(work, a.size, a.model, images)
        det = Detector.load(str(model), backend="onnxruntime")
        det(paths[:1])  # warm-up: the session's first run allocates its arena
        det_streamed = det
        if a.replicas > 1:
            det_streamed = Detector.load(str(model), backend="onnxruntime", replicas=a.replicas)
            list(det_streamed.stream([str(p) for p in paths[: a.replicas]], batch=1))  # every session's warm-up
        runs: dict = {"sequential": [], "streamed": []}
        load = []
        for rep in range(2):
            for name, fn, d in (("sequential", sequential, det), ("streamed", streamed, det_streamed)):
                load.append(os.getloadavg()[0])
                runs[name].append(fn(d, paths, work / f"{name}{rep}", a.visualize, a.vis_format))
                print(name, rep, runs[name][-1], flush=True)
        load.append(os.getloadavg()[0])
        ceiling = model_only(det, det_streamed, paths)
        print("model_only", ceiling, flush=True)
        best = {k: max(v, key=lambda r: r["images_per_s"]) for k, v in runs.items()}
        doc = {
            "script": "benchmarks/cpu_stream.py",
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "commit": commit(),
            "model": a.model,
            "input_hw": [a.size, a.size],
            "images": len(paths),
            "image_hw": [1080, 1920] if a.images is None else None,
            "visualize": a.visualize,
            "vis_format": a.vis_format if a.visualize else None,
            "streamed_replicas": a.replicas,
            "load_average_before_each_pass": [round(x, 2) for x in load],
            "runs": runs,
            "best": best,
            "speedup": round(best["streamed"]["images_per_s"] / best["sequential"]["images_per_s"], 3),
            "same_results": same_results(work / "sequential0", work / "streamed0"),
            "model_only": ceiling,
        }
    atomic_write_json(Path(a.out), doc)
    print(json.dumps({k: doc[k] for k in ("best", "speedup", "same_results", "model_only")}, indent=1))


if __name__ == "__main__":
    main()
