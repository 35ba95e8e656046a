"""GPU machine: the accuracy / latency table of docs/results.md, measured for the project's own checkpoint.

    python3 benchmarks/results_table.py --work /tmp/rt --out $OUT --deadline-min 9

Everything is measured here, nothing is copied in: the validation split is regenerated (the training recipe's
seed 2, first ``--val-images`` images), the PyTorch deploy model loaded from checkpoints/ is the fp32
reference (TF32 off), and every backend row is scored by the same ``evaluate_detector`` (COCO bbox / segm
mAP) and compared detection by detection with the reference's raw outputs.

Stages, each idempotent (state in --work, so a second call continues where a first ran out of time):
  prepare   validation + calibration images, reference mAP and PyTorch latency, ONNX exports (GPU, torch)
  build     TensorRT 8.6 engines (py39 benchmarks/trt_tool.py build, one job per process, log kept)
  accuracy  engines over the validation images through one persistent py39 worker (trt_tool.py serve);
            split engines chained by the torch glue on the GPU; ONNX Runtime (CPU) split for comparison
  latency   trt_tool.py time: GPU compute (CUDA events, CUDA graph) and host wall per inference
Results: OUT/results_table.json (rendered into docs/results.md by benchmarks/update_results.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CKPT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
MODEL = "torchvision-maskrcnn"
PRECISIONS = ("fp32", "fp16", "int8")
TOOL = ROOT / "benchmarks" / "trt_tool.py"
START = time.time()
DEADLINE = [float("inf")]


def left() -> float:
    return DEADLINE[0] - (time.time() - START)


def log(*a) -> None:
    print(f"[{time.time() - START:6.1f}s]", *a, flush=True)


def variants(size: int, small: int, batch: int) -> dict:
    """name -> export kwargs. The fused plugin graph needs a static batch (PyramidROIAlign_TRT)."""
    v = {"fused_b1": dict(graph="fused", nms="plugin", batch=1), f"fused_b{batch}": dict(graph="fused", nms="plugin", batch=batch)}
    if size == small:
        v["split"] = dict(graph="split", batch=f"1:{batch}")
    return v


def _dev() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def py39_cmd(*args) -> list:
    return ["bash", "-c", "source /tmp/trt86/env.sh && py39 " + " ".join(str(a) for a in args)]


# ------------------------------------------------------------------------------------------------ prepare
def prepare(a) -> dict:
    import torch

    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import find_images, letterbox, load_rgb, rgb_fill

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    w, jobs = a.work, max((os.cpu_count() or 2) - 2, 1)
    if not (w / "val" / "annotations.json").is_file():
        generate_synthetic_coco(w / "val", a.val_images, a.size, a.size, seed=2, workers=jobs)
        generate_synthetic_coco(w / "calib", a.calib_images, a.size, a.size, seed=1, workers=jobs)
    net = build_model(MODEL, str(CKPT)).to(_dev()).eval()
    fill = rgb_fill(net.spec.pixel_mean, net.spec.channel_order)
    calib = sorted(find_images(w / "calib" / "images"))
    for size in (a.size, a.big):
        f = w / f"calib_{size}.npy"
        if not f.is_file():
            n = len(calib) if size == a.size else min(len(calib), 16)
            np.save(f, np.stack([letterbox(load_rgb(p), (size, size), fill)[0] for p in calib[:n]]))
    for size in (a.size, a.big):
        for name, kw in variants(size, a.size, a.batch).items():
            d = w / str(size) / name
            if not (d / "contract.json").is_file():
                t0 = time.time()
                export_onnx(net, d, height=size, width=size, **kw)
                log(f"export {size} {name}: {time.time() - t0:.1f}s")
    info = {"checkpoint": CKPT.name, "checkpoint_sha256": hashlib.sha256(CKPT.read_bytes()).hexdigest()[:16]}
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run)"
    info["torch"] = str(torch.__version__)
    return info


# ------------------------------------------------------------------------------------------------ build
def build(a) -> list:
    jobs = []
    for size in (a.size, a.big):
        calib_npy = str(a.work / f"calib_{size}.npy")
        for name in variants(size, a.size, a.batch):
            d = a.work / str(size) / name
            b = a.batch if name == f"fused_b{a.batch}" else 1
            precs = PRECISIONS if size == a.size else ("fp16", "int8")
            if size == a.big and name != "fused_b1":
                precs = ("fp16",)
            for prec in precs:
                roles = ("backbone", "box_head", "mask_head") if name == "split" else ("fused",)
                for role in roles:
                    if split_engine(d, role, prec).name != f"{role}_{prec}.engine":
                        continue  # the split int8 variant runs the fp16 head engines
                    p = prec
                    jobs.append(
                        dict(
                            onnx=str(_graph_file(d, role)),
                            engine=str(d / f"{role}_{prec}.engine"),
                            precision=p,
                            batch=[b, b, b] if name.startswith("fused") else [1, 1, a.batch],
                            rois=[1, 1000, a.batch * 1000],
                            timing_cache=str(a.work / "timing.cache"),
                            calib_npy=calib_npy,
                            # one cache per graph family: the second fused build at a size reuses the first's
                            calib_cache=str(a.work / str(size) / f"{'fused' if role == 'fused' else role}_calib.cache"),
                            calib_batch=b,
                            size=size,
                            variant=name,
                            role=role,
                            label_precision=prec,
                        )
                    )
    report = []
    log_path = a.work / "build.log"
    if a.builds:
        jobs = [j for j in jobs if str(Path(j["engine"]).relative_to(a.work)) in a.builds]
        jobs.sort(key=lambda j: a.builds.index(str(Path(j["engine"]).relative_to(a.work))))
    else:
        jobs.sort(key=lambda j: (j["size"] != a.size, j["variant"] == "fused_b1", j["label_precision"]))
    for job in jobs:
        if Path(job["engine"]).is_file():
            report.append({**job, "ok": True, "skipped": "built by an earlier call"})
            continue
        if left() < 60:
            report.append({**job, "ok": False, "error": "not built: out of time in this call"})
            continue
        jp = a.work / "job.json"
        jp.write_text(json.dumps([job]))
        # TensorRT's logger writes to stdout: keep all of it (the reason a build failed is in there)
        p = subprocess.run(py39_cmd(TOOL, "build", jp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with open(log_path, "a") as lf:
            lf.write(p.stdout)
        entry = {**job, "ok": False, "error": f"worker exit {p.returncode}"}
        for line in p.stdout.splitlines():
            if line.startswith("@@"):
                entry = {**job, **json.loads(line[2:])}
            elif line.startswith("[E]") or "ERROR" in line:
                entry.setdefault("log_errors", []).append(line[:500])
        log("build", Path(job["engine"]).relative_to(a.work), json.dumps({k: entry.get(k) for k in ("ok", "build_seconds", "calibration_batches", "error")})[:600])
        report.append(entry)
    return report


def split_engine(d: Path, role: str, prec: str) -> Path:
    """Heads of the split int8 variant are the fp16 head engines: their inputs are ROI features, which the
    image calibrator cannot feed (the backbone, nearly all of the FLOPs, is int8)."""
    if prec == "int8" and role in ("box_head", "mask_head"):
        prec = "fp16"
    return d / f"{role}_{prec}.engine"


def _graph_file(d: Path, role: str) -> Path:
    from rcnn_deploy.contract import Contract

    return d / Contract.load(d).graph_for(role).file


# ------------------------------------------------------------------------------------------------ accuracy
class Worker:
    """The persistent py39 TensorRT worker (trt_tool.py serve)."""

    def __init__(self, shm: Path):
        self.p = subprocess.Popen(py39_cmd(TOOL, "serve"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.shm = shm
        self.n = 0

    def __call__(self, engine: Path, feed: dict) -> dict:
        self.n += 1
        inp, out = self.shm / f"in{self.n % 2}.npz", self.shm / f"out{self.n % 2}.npz"
        np.savez(inp, **feed)
        self.p.stdin.write(json.dumps({"engine": str(engine), "in": str(inp), "out": str(out)}) + "\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("the TensorRT worker exited")
            if line.startswith("@@"):
                break
        reply = json.loads(line[2:])
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return dict(np.load(out))

    def close(self) -> None:
        try:
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()


class EngineBackend:
    """Backend-shaped (``be(**feed) -> dict``) view of one engine in the worker."""

    def __init__(self, worker: Worker, engine: Path):
        self.worker, self.engine = worker, engine
        if not engine.is_file():
            raise FileNotFoundError(f"{engine} was not built")

    def __call__(self, **feed):
        return self.worker(self.engine, feed)


def _recording_detector(spec, size: int, run, backend: str, batch: int, fixed: bool):
    from rcnn_deploy.api import Detector, _fixed_batch

    calls = []
    inner = _fixed_batch(run, batch, batch) if fixed else run  # static-batch engines: pad the last batch

    def rec(images):
        out = inner(images)
        calls.append(dict(out))
        return out

    return Detector(spec, (size, size), rec, backend, batch), calls


def _concat(calls) -> dict:
    keys = calls[0].keys()
    return {k: np.concatenate([c[k] for c in calls]) for k in keys}


def score(a, det, calls, ref_outputs=None) -> dict:
    from rcnn_deploy.runtime.coco import evaluate_detector
    from rcnn_deploy.runtime.detections import Detections
    from rcnn_deploy.runtime.parity import compare_detections

    t0 = time.time()
    res = evaluate_detector(det, a.work / "val" / "annotations.json", a.work / "val" / "images", max_images=a.eval_images)
    row = {
        "bbox_mAP": res["metrics"]["bbox"]["AP"],
        "segm_mAP": res["metrics"].get("segm", {}).get("AP"),
        "metrics": res["metrics"],
        "images": res["images"],
        "eval_seconds": round(time.time() - t0, 1),
    }
    outputs = _concat(calls)
    n = res["images"]
    outputs = {k: v[:n] for k, v in outputs.items()}
    if ref_outputs is not None:
        rep = compare_detections(
            Detections.from_padded(ref_outputs), Detections.from_padded(outputs), pasted_masks=False
        )
        d = rep.to_dict()
        row["parity"] = {k: d[k] for k in ("reference_detections", "matched", "recall", "min_box_iou", "max_box_abs_diff", "max_score_diff", "min_mask_iou", "mean_mask_iou")}
    return row, outputs


def accuracy(a) -> list:
    import torch

    from rcnn_deploy.contract import Contract
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.split import SplitPieces, fused_outputs, onnxruntime_split, run_split

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows_dir = a.work / "rows"
    rows_dir.mkdir(exist_ok=True)
    net = build_model(MODEL, str(CKPT)).to(_dev()).eval()
    spec, S, B = net.spec, a.size, a.batch

    from rcnn_deploy.api import Detector

    torch_run = Detector.from_module(net, (S, S), device=_dev()).run_padded

    ref_file = a.work / "reference_outputs.npz"
    rows = []
    def done(key: str) -> bool:  # measured by an earlier call (rows that failed are tried again)
        f = rows_dir / f"{key}.json"
        return f.is_file() and "error" not in json.loads(f.read_text())

    if not done("pytorch_fp32") or not ref_file.is_file():
        det, calls = _recording_detector(spec, S, torch_run, "pytorch", B, fixed=False)
        row, outputs = score(a, det, calls)
        np.savez(ref_file, **outputs)
        (rows_dir / "pytorch_fp32.json").write_text(json.dumps({"backend": "PyTorch (deploy model)", "graph": "eager", "precision": "fp32", **row}))
    ref = dict(np.load(ref_file))
    worker = None
    plan = [("tensorrt", f"fused_b{B}", p) for p in PRECISIONS] + [("tensorrt", "split", p) for p in PRECISIONS]
    plan.append(("onnxruntime", "split", "fp32"))
    for backend, variant, prec in plan:
        key = f"{backend}_{variant}_{prec}"
        if a.rows and key not in a.rows:
            continue
        if done(key):
            continue
        if left() < 45:
            log("accuracy: out of time before", key)
            break
        d = a.work / str(S) / variant
        row = {"backend": "TensorRT 8.6" if backend == "tensorrt" else "ONNX Runtime (CPU)", "graph": variant, "precision": prec}
        try:
            t0 = time.time()
            if backend == "onnxruntime":
                pieces = onnxruntime_split(Contract.load(d), d)
                det, calls = _recording_detector(spec, S, lambda im: run_split(pieces, im), "onnxruntime", B, fixed=False)
            elif variant.startswith("fused"):
                worker = worker or Worker(a.shm)
                be = EngineBackend(worker, d / f"fused_{prec}.engine")
                det, calls = _recording_detector(spec, S, lambda im, be=be: fused_outputs(be(images=im)), "tensorrt", B, fixed=True)
            else:
                worker = worker or Worker(a.shm)
                c = Contract.load(d)
                engines = (split_engine(d, r, prec) for r in ("backbone", "box_head", "mask_head"))
                pieces = SplitPieces(c, *(EngineBackend(worker, e) for e in engines))

                def split_run(images, pieces=pieces):
                    from rcnn_deploy.glue.pipeline import two_stage

                    with torch.no_grad():
                        o = two_stage(pieces, torch.from_numpy(images).to(_dev()), spec)
                    return {k: v.cpu().numpy() for k, v in o.items()}

                det, calls = _recording_detector(spec, S, split_run, "tensorrt", B, fixed=False)
            r, _ = score(a, det, calls, ref)
            row.update(r)
            row["seconds"] = round(time.time() - t0, 1)
        except Exception as e:  # report and continue with the next row
            row["error"] = repr(e)[-1500:]
        log("accuracy", key, json.dumps({k: row.get(k) for k in ("bbox_mAP", "segm_mAP", "error")}), json.dumps(row.get("parity"))[:400])
        (rows_dir / f"{key}.json").write_text(json.dumps(row))
    if worker is not None:
        worker.close()
    for f in sorted(rows_dir.glob("*.json")):
        rows.append(json.loads(f.read_text()))
    return rows


# ------------------------------------------------------------------------------------------------ latency
def latency(a) -> list:
    """GPU compute per engine (trt_tool.py time) and the PyTorch model's, plus host pre/post-processing."""
    import torch

    from rcnn_deploy.api import Detector
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import find_images

    out, S, B = [], a.size, a.batch
    rng = np.random.default_rng(0)
    for size in (a.size, a.big):
        for name in variants(size, a.size, a.batch):
            d = a.work / str(size) / name
            for eng in sorted(d.glob("*.engine")):
                if left() < 20:
                    log("latency: out of time before", eng)
                    break
                meta = json.loads(Path(str(eng) + ".json").read_text())
                bs = [B] if name == f"fused_b{B}" else ([1] if name == "fused_b1" else [1, B])
                for b in bs:
                    feed = {}
                    for i in meta["inputs"]:
                        shape = [b if (k == 0 and dim < 0 and i["name"] == "images") else dim for k, dim in enumerate(i["shape"])]
                        if i["name"] in ("box_features", "mask_features", "classes"):
                            shape[0] = (1000 if i["name"] == "box_features" else 100) * b
                        if i["name"] == "classes":
                            feed[i["name"]] = np.ones(shape, dtype=np.int32)
                        else:
                            feed[i["name"]] = (rng.standard_normal(shape) * (60 if i["name"] == "images" else 1) + (110 if i["name"] == "images" else 0)).astype(np.float32)
                    inp, res = a.work / "time_in.npz", a.work / "time_out.json"
                    np.savez(inp, **feed)
                    p = subprocess.run(py39_cmd(TOOL, "time", eng, inp, res, "--iterations", 200), capture_output=True, text=True)
                    row = json.loads(res.read_text()) if p.returncode == 0 else {"error": p.stderr[-800:]}
                    row.update({"size": size, "variant": name, "engine": eng.name, "batch": b})  # b images
                    row["build_seconds"] = meta.get("build_seconds")
                    log("time", json.dumps({k: row.get(k) for k in ("size", "engine", "batch", "median_ms", "p99_ms", "infer_wall_median_ms", "error")})[:400])
                    out.append(row)
    # PyTorch deploy model (fp32, TF32 off) and torchvision's eager model: CUDA events, model only
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = build_model(MODEL, str(CKPT)).to(_dev()).eval()
    for size, b in ((S, 1), (S, B), (a.big, 1)):
        x = torch.rand(b, 3, size, size, device="cuda") * 255
        out.append({"size": size, "variant": "pytorch", "engine": "deploy model fp32", "batch": b, **_cuda_time(lambda: net(x))})
    from rcnn_deploy.models.reference import torchvision_reference

    tv = torchvision_reference(net.spec, net.state_dict(), (a.big, a.big)).to(_dev()).eval()
    x = [torch.rand(3, a.big, a.big, device="cuda") for _ in range(1)]
    out.append({"size": a.big, "variant": "torchvision eager", "engine": "torchvision fp32", "batch": 1, **_cuda_time(lambda: tv(x))})
    # host stages of the end-to-end path (same code for every backend): decode + letterbox, unpad + paste
    det = Detector(net.spec, (S, S), lambda im: {}, "host", 1)
    ref = dict(np.load(a.work / "reference_outputs.npz"))
    paths = sorted(find_images(a.work / "val" / "images"))[:50]
    pre, post = [], []
    for i, pth in enumerate(paths):
        t0 = time.perf_counter()
        _, lbs = det.preprocess([str(pth)])
        t1 = time.perf_counter()
        det.postprocess({k: v[i : i + 1] for k, v in ref.items()}, lbs)
        t2 = time.perf_counter()
        pre.append((t1 - t0) * 1000)
        post.append((t2 - t1) * 1000)
    out.append({"size": S, "variant": "host", "engine": "preprocess", "batch": 1, "median_ms": float(np.median(pre))})
    out.append({"size": S, "variant": "host", "engine": "postprocess", "batch": 1, "median_ms": float(np.median(post))})
    return out


def _cuda_time(fn, iterations: int = 30, warmup: int = 5) -> dict:
    """CUDA-event latency of ``fn`` (the same timer ``rcnn-deploy bench`` uses, no CUDA graph)."""
    from rcnn_deploy.tools.bench import time_torch_cuda

    ts, _, _ = time_torch_cuda(fn, iterations, warmup, cuda_graph=False)
    return {"median_ms": float(np.median(ts)), "p99_ms": float(np.percentile(ts, 99)), "infer_wall_median_ms": float(np.median(ts))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/rt"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/results")))
    ap.add_argument("--shm", type=Path, default=Path("/dev/shm"))
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--big", type=int, default=1344)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--deadline-min", type=float, default=9.0)
    ap.add_argument("--stages", nargs="+", default=["prepare", "build", "accuracy", "latency"])
    ap.add_argument("--builds", nargs="*", default=None, help="only these engines, e.g. 384/split/backbone_int8.engine")
    ap.add_argument("--rows", nargs="*", default=None, help="only these accuracy rows, e.g. tensorrt_split_int8")
    a = ap.parse_args()
    DEADLINE[0] = a.deadline_min * 60
    a.work.mkdir(parents=True, exist_ok=True)
    if not a.shm.is_dir():
        a.shm = a.work
    a.out.mkdir(parents=True, exist_ok=True)
    state_file = a.work / "results_table.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    for stage in a.stages:
        log("stage", stage)
        if stage == "prepare":
            state["info"] = prepare(a)
        elif stage == "build":
            state["builds"] = build(a)
        elif stage == "accuracy":
            state["rows"] = accuracy(a)
        elif stage == "latency":
            state["latency"] = latency(a)
        state["config"] = {"size": a.size, "big": a.big, "batch": a.batch, "eval_images": a.eval_images, "calib_images": a.calib_images}
        state_file.write_text(json.dumps(state, indent=1))
        (a.out / "results_table.json").write_text(json.dumps(state, indent=1))
    log("done")


if __name__ == "__main__":
    main()
