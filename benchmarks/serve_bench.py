"""Served throughput and latency of ``rcnn-deploy serve`` (a real Triton Inference Server) against the same
``Detector`` in-process, on a folder of images; writes one JSON (machine, commit, numbers).

    python benchmarks/serve_bench.py runs/fused --images data/val/images -o benchmarks/results/serve_bench_gpu.json
    python benchmarks/serve_bench.py runs/fused/model_fp16.engine --max-batch 8 --instances 2   # a GPU machine

Steps: start ``rcnn-deploy serve MODEL_PATH`` on free ports of 127.0.0.1 (its own process; stopped with
SIGINT at the end); for each concurrency (default 1 and 16) that many client threads, each with its own
connection, send single-image requests (encoded bytes, round-robin over the images) until the level's request
count is reached; latency is per request on the client (send to full response), throughput is requests over
the level's wall time; the server's own statistics give the batch sizes it executed. Then, with the server
stopped, the same model through ``Detector`` in this process (decode included, as the server does it) at
batch 1 and at ``--max-batch``. Without ``--images``, synthetic images are generated (``--image-size``).

``--server-python CMD`` serves from another interpreter: the python-flavour repository is written here (as
``rcnn-deploy serve`` would) and ``CMD -m rcnn_deploy.serve REPO`` runs the server, so the model runs in that
interpreter's Python-backend stub. This is how a TensorRT 8.6 engine is served on the GPU machine, where TensorRT
exists only in CPython 3.9 (benchmarks/device_serve.sh bench_trt). The in-process comparison is then skipped
(this process cannot load the engine); ``--engine-own JSON`` copies the engine's own numbers from an
``e2e_trt.py`` result of the same session into the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from _tree import sent_tree  # this folder (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.serve import contract as C  # noqa: E402
from rcnn_deploy.serve.server import free_port  # noqa: E402


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["gpus"] = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    return info


def commit() -> Dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    # on a device machine git's copy does not follow local commits: the tree the session sent says which ran
    return {
        "sha": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "tree_sent": sent_tree(),
    }


def load_images(folder: Path, limit: int) -> List[bytes]:
    from rcnn_deploy.runtime.preprocess import find_images

    return [p.read_bytes() for p in find_images(folder)[:limit]]


def percentiles(ms: List[float]) -> Dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "mean_ms": round(float(a.mean()), 2),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def batch_stats(url: str, model: str) -> Dict[int, int]:
    import tritonclient.http as http

    c = http.InferenceServerClient(url)
    try:
        stats = c.get_inference_statistics(model)["model_stats"][0]
    finally:
        c.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def run_level(url: str, model: str, images: List[bytes], concurrency: int, requests: int) -> Dict[str, Any]:
    import tritonclient.http as http

    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(k: int) -> None:
        c = http.InferenceServerClient(url, connection_timeout=600.0, network_timeout=600.0)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                data = np.array([[images[i % len(images)]]], dtype=object)
                inp = http.InferInput(C.INPUT, [1, 1], "BYTES")
                inp.set_data_from_numpy(data)
                t0 = time.perf_counter()
                try:
                    res = c.infer(model, [inp])
                    res.as_numpy(C.NUM_DETECTIONS)
                    err = None
                except Exception as e:  # noqa: BLE001
                    err = f"{type(e).__name__}: {e}"
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if err:
                        errors.append(err)
                    else:
                        latencies.append(dt)
        finally:
            c.close()

    before = batch_stats(url, model)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = batch_stats(url, model)
    batches = {b: after.get(b, 0) - before.get(b, 0) for b in sorted(after) if after.get(b, 0) > before.get(b, 0)}
    out: Dict[str, Any] = {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "wall_s": round(wall, 3),
        "throughput_img_s": round(len(latencies) / wall, 3),
        "server_batches": {str(b): n for b, n in batches.items()},
    }
    out.update(percentiles(latencies) if latencies else {})
    if errors:
        out["first_errors"] = errors[:3]
    return out


def in_process(args: argparse.Namespace, images: List[bytes]) -> Dict[str, Any]:
    from rcnn_deploy.api import Detector

    det = Detector.load(args.model_path, backend=args.backend, device=args.device)
    res: Dict[str, Any] = {"backend": det.backend, "input_hw": list(det.input_hw)}
    for batch in sorted({1, args.max_batch}):
        det.batch = batch
        n = max(args.inprocess_images, batch)
        work = [images[i % len(images)] for i in range(n)]
        det([C.decode_image(b) for b in work[:batch]])  # warm-up
        per_call: List[float] = []
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            t1 = time.perf_counter()
            det([C.decode_image(b) for b in work[i : i + batch]])
            per_call.append((time.perf_counter() - t1) * 1000)
        wall = time.perf_counter() - t0
        res[f"batch{batch}"] = {
            "images": n,
            "wall_s": round(wall, 3),
            "throughput_img_s": round(n / wall, 3),
            **{k.replace("_ms", "_ms_per_call"): v for k, v in percentiles(per_call).items()},
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_path", help="What rcnn-deploy serve / Detector.load take (export dir, engine, checkpoint).")
    ap.add_argument("--images", type=Path, help="Folder of images (default: synthetic ones).")
    ap.add_argument("--num-images", type=int, default=16, help="Images used (synthetic ones generated).")
    ap.add_argument("--image-size", default="240x320", help="Synthetic images' HxW.")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--requests", type=int, default=0, help="Requests per level (default: 8 x concurrency, >= 16).")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--device", default="cpu", help="Detector device (torch model / split glue).")
    ap.add_argument("--inprocess-images", type=int, default=16)
    ap.add_argument("--tritonserver", default=None)
    ap.add_argument(
        "--server-python",
        default=None,
        help="Interpreter (a command) that runs the server: python -m rcnn_deploy.serve REPO.",
    )
    ap.add_argument(
        "--engine-own",
        type=Path,
        default=None,
        help="With --server-python: an e2e_trt.py result whose engine-alone numbers are copied in.",
    )
    ap.add_argument("--note", default="", help="Free text kept in the JSON (how the model was made, say).")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "serve_bench.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    synthetic = args.images is None
    if synthetic:
        from rcnn_deploy.data.synth import generate_synthetic_coco

        h, w = (int(v) for v in args.image_size.lower().split("x"))
        generate_synthetic_coco(tmp / "synth", num_images=args.num_images, height=h, width=w, seed=11)
        args.images = tmp / "synth" / "images"
    images = load_images(args.images, args.num_images)
    levels = [int(c) for c in args.concurrency.split(",")]
    ports = [free_port() for _ in range(3)]
    if args.server_python:  # the repository written here, served by the other interpreter's stub
        from rcnn_deploy.serve.repository import RepoOptions, write_python_repo

        opts = RepoOptions(
            max_batch=args.max_batch,
            instances=args.instances,
            backend=args.backend,
            max_queue_delay_us=args.max_queue_delay_us,
            device=args.device,
            link=True,
        )
        write_python_repo(args.model_path, tmp / "repo", opts)
        cmd = [*args.server_python.split(), "-m", "rcnn_deploy.serve", str(tmp / "repo"), "--address", "127.0.0.1"]
    else:
        cmd = [sys.executable, "-m", "rcnn_deploy.cli", "serve", str(args.model_path), "--address", "127.0.0.1"]
        cmd += ["--max-batch", str(args.max_batch), "--instances", str(args.instances)]
        cmd += ["--max-queue-delay-us", str(args.max_queue_delay_us), "--device", args.device]
        if args.backend:
            cmd += ["--backend", args.backend]
    cmd += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    if args.tritonserver:
        cmd += ["--tritonserver", args.tritonserver]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = tmp / "serve.log"
    url, model = f"127.0.0.1:{ports[0]}", "rcnn_detector"
    served: Dict[str, Any] = {}
    t_start = time.perf_counter()
    with open(log, "wb") as out:
        # its own process group, signalled as a whole: a --server-python wrapper script passes the signal on
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"rcnn-deploy serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() - t_start > 900:
                raise SystemExit(f"not ready after 900 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        ready_s = time.perf_counter() - t_start
        print(f"serving after {ready_s:.1f} s; warm-up", flush=True)
        run_level(url, model, images, 1, args.warmup)
        for c in levels:
            n = args.requests or max(8 * c, 16)
            r = run_level(url, model, images, c, n)
            served[f"concurrency{c}"] = r
            print(json.dumps(r), flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if args.server_python:
        local: Dict[str, Any] = {"skipped": f"the model runs in {args.server_python}, not in this process"}
        if args.engine_own:
            own = json.loads(args.engine_own.read_text())
            local["engine_own"] = {
                "source": str(args.engine_own),
                "engines": [
                    {k: row.get(k) for k in ("engine", "batch", "gpu_compute_ms", "gpu_images_per_s")}
                    for row in own.get("engines", [])
                ],
            }
    else:
        print("in-process Detector", flush=True)
        local = in_process(args, images)
    print(json.dumps(local), flush=True)
    result = {
        "benchmark": "serve_bench",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "commit": commit(),
        "model_path": str(args.model_path),
        "note": args.note,
        "images": {
            "folder": str(args.images),
            "count": len(images),
            "synthetic": str(args.images).startswith(str(tmp)),
        },
        "server": {
            "max_batch": args.max_batch,
            "instances": args.instances,
            "max_queue_delay_us": args.max_queue_delay_us,
            "protocol": "http",
            "server_python": args.server_python or sys.executable,
            "ready_after_s": round(ready_s, 2),
            "serve_exit_status": proc.returncode,
        },
        "served": served,
        "in_process": local,
    }
    atomic_write_json(args.output, result)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
