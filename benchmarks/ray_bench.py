"""The same images through a local ``rcnn-deploy infer`` and through ``rcnn-deploy infer --ray`` (N workers).

    python benchmarks/ray_bench.py -o benchmarks/results/ray_bench_cpu.json          # CPU: export, 1 and 2 actors
    python benchmarks/ray_bench.py --size 800 --images 512 --engine --configs 1x1,2x0.5 \\
        -o benchmarks/results/ray_bench_gpu1.json                                   # one GPU, TensorRT fp16

Without ``--model`` the shipped checkpoint (checkpoints/shapes_maskrcnn_r50fpn.pt) is exported at ``--size``
(fused graph, ONNX NMS) and run by ONNX Runtime, or, with ``--engine``, exported with the plugin-free tensor NMS
and built into a TensorRT fp16 engine of batch ``--batch`` (``rcnn-deploy build``). Without ``--image-dir``,
``--images`` synthetic images are generated.

Each run is the command itself in a subprocess, timed end to end (Python start, model load, Ray start-up
included): ``img_per_s = images / wall_s``. For Ray runs the driver's own figures from ``shards/run.json`` are
kept too: ``execution_img_per_s`` (the Ray Data execution, actor start-up included) and ``steady_img_per_s``
(after the first result arrived), and the images each worker ran. ``exactly_once``: every image id appears in
exactly one finished shard and once in the merged results.json; ``identical_to_local``: results.json and
summary.json equal the local run's. ``configs``: ``WORKERSxGPUS_PER_WORKER`` (default ``1x0,2x0`` without a GPU,
``1x1`` with one). The machine (CPU, GPU, load average before and after), the commit and the versions are
recorded with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from _tree import sent_tree  # this folder (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"


def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "rcnn_deploy.cli", *args]


def _env() -> Dict[str, str]:
    src = str(ROOT / "src")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p))


def _run(cmd: List[str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); its wall time in seconds; raises with the log's tail on failure."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n" + log.read_text()[-3000:])
    return wall


def _sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _gpus() -> List[str]:
    out = _sh("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine() -> Dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    versions: Dict[str, str] = {"python": platform.python_version()}
    for mod in ("ray", "onnxruntime", "torch", "tensorrt", "numpy"):
        with contextlib.suppress(Exception):  # absent or broken: not recorded
            versions[mod] = __import__(mod).__version__
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(mem / 1024**3, 1),
        "gpus": _gpus(),
        "versions": versions,
    }


def commit() -> Dict[str, Any]:
    # on a device machine git's copy does not follow local commits: the tree the session sent says which ran
    return {
        "sha": _sh("git", "rev-parse", "HEAD"),
        "dirty": bool(_sh("git", "status", "--porcelain", "--", "src")),
        "tree_sent": sent_tree(),
    }


def prepare_model(a: argparse.Namespace, work: Path) -> Tuple[str, Optional[str]]:
    """``(model path, backend)``: ``--model`` as given, else the shipped checkpoint exported (and built)."""
    if a.model:
        return a.model, a.backend
    export = work / "export"
    _run(
        _cli("export", "-m", "torchvision-maskrcnn", "-w", str(CKPT), "--height", str(a.size), "--width", str(a.size))
        + ["--batch", f"1:{a.batch}", "--graph", "fused", "--nms", "tensor" if a.engine else "onnx", "-o", str(export)],
        work / "export.log",
    )
    if not a.engine:
        return str(export), None
    onnx = export / json.loads((export / "contract.json").read_text())["graphs"][0]["file"]
    engine = export / "model_fp16.engine"
    b = a.batch  # the engine's minimum batch is the batch the runtime runs (Detector.from_engine)
    _run(
        _cli("build", str(onnx), "-o", str(engine), "--precision", "fp16", "--batch", f"{b}:{b}:{b}"),
        work / "build.log",
    )
    return str(engine), "tensorrt"


def prepare_images(a: argparse.Namespace, work: Path) -> Path:
    if a.image_dir:
        return Path(a.image_dir)
    data = work / "data"
    _run(
        _cli("data", "synth", "-o", str(data), "-n", str(a.images), "--height", str(a.size), "--width", str(a.size)),
        work / "synth.log",
    )
    return data / "images"


def exactly_once(out: Path, n: int) -> Dict[str, Any]:
    """Each of the ``n`` image ids in exactly one shard manifest, the merged results' ids among them, each
    image's entries in one block (as produced)."""
    ids: Counter = Counter()
    for m in sorted((out / "shards").glob("[0-9]*.json")):
        ids.update(r["image_id"] for r in json.loads(m.read_text())["images"])
    results = json.loads((out / "results.json").read_text())
    order = [r["image_id"] for r in results]
    blocks = [i for k, i in enumerate(order) if k == 0 or order[k - 1] != i]
    ok = (
        sorted(ids) == list(range(1, n + 1))
        and all(c == 1 for c in ids.values())
        and len(blocks) == len(set(blocks))
        and set(blocks) <= set(ids)
    )
    return {"ok": ok, "ids_in_shards": len(ids), "ids_more_than_once": sum(c > 1 for c in ids.values())}


#: summary.json keys that are timings, different in any two runs
TIMING_KEYS = ("seconds", "time_s", "images_per_s")


def _same_results(a: Path, b: Path) -> bool:
    """results.json byte-for-byte as JSON, and summary.json apart from its timings (until session 13 the timings
    were compared too, so ``identical_to_local`` could only be true when they happened to agree)."""
    if json.loads((a / "results.json").read_text()) != json.loads((b / "results.json").read_text()):
        return False
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    untimed = [{k: v for k, v in s.items() if k not in TIMING_KEYS} for s in (sa, sb)]
    return untimed[0] == untimed[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", required=True, help="JSON file to write")
    p.add_argument("--model", help="export directory or engine (default: export the shipped checkpoint)")
    p.add_argument("--backend", help="backend for --model (default: from the path)")
    p.add_argument("--size", type=int, default=320, help="export size and synthetic image size (default 320)")
    p.add_argument("--engine", action="store_true", help="build a TensorRT fp16 engine of the export (GPU)")
    p.add_argument("--image-dir", help="images to run (default: generate --images synthetic ones)")
    p.add_argument("--images", type=int, default=32, help="synthetic images to generate (default 32)")
    p.add_argument("--batch", type=int, default=2, help="images per model call (default 2)")
    p.add_argument("--configs", help="Ray runs, comma-separated WORKERSxGPUS (default 1x0,2x0; with a GPU 1x1)")
    p.add_argument("--work", help="working folder to keep (default: a temporary one, removed)")
    p.add_argument(
        "--device",
        help="the local run's --device (e.g. cuda for a checkpoint on the PyTorch GPU backend; Ray's actors take "
        "cuda when Ray gives them a GPU)",
    )
    a = p.parse_args()

    gpus = _gpus()
    configs = a.configs or ("1x1" if gpus else "1x0,2x0")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="ray_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        images = prepare_images(a, work)
        n = len([f for f in images.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")])
        model, backend = prepare_model(a, work)
        extra = ["--batch", str(a.batch)] + (["--backend", backend] if backend else [])
        if str(model).endswith((".pt", ".pth", ".pkl")):  # a checkpoint runs at --size
            extra += ["--height", str(a.size), "--width", str(a.size)]
        local_extra = ["--device", a.device] if a.device else []
        load = [os.getloadavg()[0]]
        local = work / "local"
        wall = _run(_cli("infer", model, str(images), "-o", str(local), *extra, *local_extra), work / "local.log")
        rows: List[Dict[str, Any]] = [{"run": "local", "wall_s": round(wall, 2), "img_per_s": round(n / wall, 3)}]
        print(f"local: {n} images in {wall:.1f} s = {n / wall:.3f} img/s", flush=True)
        for cfg in configs.split(","):
            w, g = cfg.lower().split("x")
            out = work / f"ray_{w}x{g}"
            cmd = _cli("infer", model, str(images), "-o", str(out), *extra, "--ray", "--workers", w)
            wall = _run(cmd + ["--gpus-per-worker", g], work / f"ray_{w}x{g}.log")
            run = json.loads((out / "shards" / "run.json").read_text())
            same = _same_results(out, local)
            rows.append(
                {
                    "run": f"ray {w} workers x {g} GPU",
                    "workers": int(w),
                    "gpus_per_worker": float(g),
                    "wall_s": round(wall, 2),
                    "img_per_s": round(n / wall, 3),
                    "execution_s": run["wall_s"],
                    "execution_img_per_s": run["img_per_s"],
                    "first_result_s": run["first_result_s"],
                    "steady_img_per_s": run["steady_img_per_s"],
                    "per_worker": run["workers"],
                    "duplicates_dropped": run["duplicates_dropped"],
                    "exactly_once": exactly_once(out, n),
                    "identical_to_local": same,
                    "shards": run["shards"],
                    "shard_size": run["shard_size"],
                }
            )
            print(
                f"ray {cfg}: {n / wall:.3f} img/s end to end, {run['img_per_s']} in the execution, steady "
                f"{run['steady_img_per_s']}; per worker {run['workers']}; exactly once "
                f"{rows[-1]['exactly_once']['ok']}; identical to local {same}",
                flush=True,
            )
        load.append(os.getloadavg()[0])
        result = {
            "benchmark": "ray_bench",
            "machine": machine(),
            "commit": commit(),
            "load_average_1min": {"before": round(load[0], 2), "after": round(load[1], 2)},
            "model": model
            if a.model
            else f"{CKPT.name} exported at {a.size} (fused, {'tensor' if a.engine else 'onnx'} NMS)",
            "backend": backend or "from the model path",
            "local_device": a.device,
            "engine": bool(a.engine),
            "images": n,
            "image_size": None if a.image_dir else [a.size, a.size],
            "batch": a.batch,
            "runs": rows,
            "notes": "img_per_s: images / wall time of the whole command (Python start, model load, Ray start-up "
            "included); execution_img_per_s: Ray Data execution only (actor start-up included); "
            "steady_img_per_s: after the first result",
        }
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {a.out}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
