"""GPU machine: the accuracy / latency table of docs/results.md, measured for the project's own checkpoint.

    python3 benchmarks/results_table.py --work /tmp/rt --out $OUT --deadline-min 9

Everything is measured here, nothing is copied in: the validation split is regenerated (the training recipe's
seed 2, first ``--val-images`` images), the PyTorch deploy model loaded from checkpoints/ is the fp32
reference (TF32 off), and every backend row is scored by the same ``evaluate_detector`` (COCO bbox / segm
mAP) and compared detection by detection with the reference's raw outputs.

Stages, each idempotent (state in --work, so a second call continues where a first ran out of time):
  prepare   validation + calibration images, ONNX exports (GPU, torch)
  build     TensorRT 8.6 engines in parallel lanes (--lanes; each lane builds its engines in order, one
            py39 benchmarks/trt_tool.py process per engine, whole TensorRT log kept in WORK/logs/)
  accuracy  engines over the validation images through one persistent py39 worker (trt_tool.py serve);
            split engines chained by the torch glue on the GPU; ONNX Runtime (CPU) split for comparison.
            At --size on --eval-images images, at --big on --big-eval-images (upscaled) images, each against
            the PyTorch deploy model at the same size. With build, it runs while the lanes build (rows start
            as soon as their engines exist).
  latency   trt_tool.py time: GPU compute (CUDA events, CUDA graph) and host wall per inference, per-layer
            profile of the fused engines; PyTorch deploy model and torchvision eager. Runs after the builds.
  pipeline  the split pipeline's stages: each split engine through the host path and the GPU-resident path
            (py39 benchmarks/trt86_device_io.py: same outputs, wall per call), the glue alone on the GPU and
            the whole ONNX Runtime split pipeline on the CPU (benchmarks/split_glue_time.py); the split
            rows' end-to-end figure is these stages summed.
Results: OUT/results_table.json (rendered into docs/results.md by benchmarks/update_results.py).
The run can outlive a device call: start it with setsid, poll WORK/results_table.json and WORK/driver.log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CKPT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
MODEL = "torchvision-maskrcnn"
PRECISIONS = ("fp32", "fp16", "int8")
TOOL = ROOT / "benchmarks" / "trt_tool.py"
DEVICE_IO = ROOT / "benchmarks" / "trt86_device_io.py"
GLUE = ROOT / "benchmarks" / "split_glue_time.py"
START = time.time()
DEADLINE = [float("inf")]  # the whole run
BUILD_DEADLINE = [float("inf")]  # builds still running then are killed, so the latency stage has the GPU


def left() -> float:
    return DEADLINE[0] - (time.time() - START)


def left_build(a=None) -> float:
    return min(DEADLINE[0], BUILD_DEADLINE[0]) - (time.time() - START)


def log(*a) -> None:
    print(f"[{time.time() - START:6.1f}s]", *a, flush=True)


def variants(size: int, batch: int) -> dict:
    """name -> export kwargs. The fused plugin graph needs a static batch (PyramidROIAlign_TRT)."""
    return {
        "fused_b1": dict(graph="fused", nms="plugin", batch=1),
        f"fused_b{batch}": dict(graph="fused", nms="plugin", batch=batch),
        "split": dict(graph="split", batch=f"1:{batch}"),
    }


# Build lanes run in parallel; engines in one lane are built in order, so a later int8 build reuses the earlier
# one's calibration cache (fused b1 and b8 graphs of one size share tensor names, hence one cache). Engine labels
# may carry build flags after the precision (LABEL_FLAGS: -noglue, -nojit, -oN). Fused int8 engines apply the
# split backbone's calibration cache by layer name (job calib_graph; -selfcal: calibrate the fused graph itself).
# What each past run built, and how long it took, is in benchmarks/results/runs.json and the history section
# of docs/results.md, not here.
DEFAULT_LANES = (
    "{small}/fused_b{b}/fused_int8",
    "{big}/fused_b1/fused_int8",
    "{small}/split/backbone_fp32,{small}/split/box_head_fp32,{small}/split/mask_head_fp32,"
    "{small}/split/backbone_fp16,{small}/split/box_head_fp16,{small}/split/mask_head_fp16,{small}/split/backbone_int8",
)
BIG_CALIB_IMAGES = 16  # calibration images at --big: 16 x 1344² float32 are 347 MB (the config records it)


def lane_engines(a) -> list:
    """The build lanes as lists of engine paths relative to --work."""
    fmt = dict(big=a.big, small=a.size, b=a.batch)
    lanes = [[r.strip() for r in lane.format(**fmt).split(",") if r.strip()] for lane in (a.lanes or DEFAULT_LANES)]
    return [[r if r.endswith(".engine") else r + ".engine" for r in lane] for lane in lanes]


def _dev() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def py39_cmd(*args) -> list:
    """A command line for the TensorRT tools: the interpreter that has TensorRT is ``$PY39`` (a shell snippet,
    e.g. ``PY39='source /tmp/trt86/env.sh && py39'`` on a machine whose TensorRT 8.6 lives in a CPython 3.9
    bundle, as benchmarks/device_results_table.sh sets it), else this Python."""
    py = os.environ.get("PY39") or sys.executable
    return ["bash", "-c", py + " " + " ".join(str(a) for a in args)]


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
            n = len(calib) if size == a.size else min(len(calib), BIG_CALIB_IMAGES)
            np.save(f, np.stack([letterbox(load_rgb(p), (size, size), fill)[0] for p in calib[:n]]))
    # the graphs the lanes build, and the split graph of the ONNX Runtime row
    needed = {tuple(rel.split("/")[:2]) for lane in lane_engines(a) for rel in lane}
    # fused int8 engines apply the split backbone's calibration cache (its graph is parsed for layer names)
    needed |= {
        (sz, "split")
        for lane in lane_engines(a)
        for sz, var, _, lab in map(split_rel, lane)
        if uses_backbone_cache(var, lab)
    }
    if not a.no_onnxruntime:
        needed.add((str(a.size), "split"))
    for size in (a.size, a.big):
        for name, kw in variants(size, a.batch).items():
            d = w / str(size) / name
            if (str(size), name) in needed and not (d / "contract.json").is_file():
                t0 = time.time()
                export_onnx(net, d, height=size, width=size, **kw)
                log(f"export {size} {name}: {time.time() - t0:.1f}s")
    info = {"checkpoint": CKPT.name, "checkpoint_sha256": hashlib.sha256(CKPT.read_bytes()).hexdigest()[:16]}
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run)"
    info["torch"] = str(torch.__version__)
    return info


# ------------------------------------------------------------------------------------------------ build
# build options an engine label may carry after its precision (fused_int8-nojit-o2.engine)
LABEL_FLAGS = {
    "noglue": "fp16/int8 without the fp32-glue rule",
    "nojit": "tactic sources EDGE_MASK_CONVOLUTIONS only (no JIT-compiled convolutions)",
    "fp32pred": "the heads' predictor layers pinned to fp32 too (BuildConfig.fp32_predictors)",
    "selfcal": "fused int8 calibrated on the fused graph itself (default: the split backbone's calibration cache"
    " applied by layer name)",
    "oN": "builder optimization level N (0-5)",
}


def parse_label(label: str) -> tuple:
    """``"int8-nojit-o2"`` -> ("int8", {"fp32_glue": True, "tactic_sources": [...], "opt_level": 2})."""
    prec, *flags = label.split("-")
    opts = {"fp32_glue": True, "fp32_predictors": False, "tactic_sources": None, "opt_level": None, "selfcal": False}
    for f in flags:
        if f == "noglue":
            opts["fp32_glue"] = False
        elif f == "selfcal":
            opts["selfcal"] = True
        elif f == "fp32pred":
            opts["fp32_predictors"] = True
        elif f == "nojit":
            opts["tactic_sources"] = ["EDGE_MASK_CONVOLUTIONS"]
        elif len(f) == 2 and f[0] == "o" and f[1] in "012345":
            opts["opt_level"] = int(f[1])
        else:
            raise ValueError(f"unknown engine label flag {f!r} in {label!r} (known: {', '.join(LABEL_FLAGS)})")
    return prec, opts


def uses_backbone_cache(variant: str, label: str) -> bool:
    """Fused int8 engines apply the split backbone's calibration cache by layer name (one calibration per size,
    quick), unless the label says -selfcal."""
    prec, opts = parse_label(label)
    return variant.startswith("fused") and prec == "int8" and not opts["selfcal"]


def split_rel(rel: str) -> tuple:
    """``"1344/fused_b1/fused_int8-nojit.engine"`` -> ("1344", "fused_b1", "fused", "int8-nojit")."""
    size, variant, fname = rel.split("/")
    stem = fname[: -len(".engine")] if fname.endswith(".engine") else fname
    role, label = stem.rsplit("_", 1)
    return size, variant, role, label


def job_for(a, rel: str) -> dict:
    """A build job from an engine path relative to --work: SIZE/VARIANT/ROLE_PRECISION[-FLAG...].engine."""
    size, variant, role, label = split_rel(rel)
    stem = f"{role}_{label}"
    prec, opts = parse_label(label)
    if prec not in PRECISIONS or variant not in variants(int(size), a.batch):
        raise ValueError(f"not an engine of this table: {rel}")
    d = a.work / size / variant
    fused = variant.startswith("fused")
    b = int(variant[len("fused_b") :]) if fused else 1
    opts.pop("selfcal")  # not a build option: it decides which calibration cache the job uses
    from_backbone = uses_backbone_cache(variant, label)
    split = a.work / size / "split"
    family = "backbone" if from_backbone else ("fused" if fused else role)
    return dict(
        onnx=str(_graph_file(d, role)),
        engine=str(d / f"{stem}.engine"),
        precision=prec,
        **opts,
        calib_graph=str(_graph_file(split, "backbone")) if from_backbone else None,
        batch=[b, b, b] if fused else [1, 1, a.batch],
        rois=[1, 1000, a.batch * 1000],
        workspace_gib=4.0,  # lanes build side by side on one GPU
        # one timing cache per graph: its fp16 timings serve its int8 build. One cache shared by every graph
        # was refused by every build after the first fused one (run 6: "myelinCache.h::deserializeFromBuffer
        # ... The timing cache will not be used!")
        timing_cache=str(d / f"{role}.timing.cache"),
        # a fused graph's backbone layers are the split backbone's (the same shapes at batch 1, the split
        # profile's opt batch): the split backbone's timings start the fused graph's cache
        timing_seed=str(split / "backbone.timing.cache") if fused else None,
        log_info=True,  # build phases and calibration batches with their times, in the build's log
        calib_npy=str(a.work / f"calib_{size}.npy"),
        # one cache per graph family and size: the second int8 build of a family reuses the first's
        calib_cache=str(a.work / size / f"{family}_calib.cache"),
        calib_batch=b if fused else a.batch,  # split: calibrate 8 images per launch (calibration profile)
        size=int(size),
        variant=variant,
        role=role,
        label_precision=label,
    )


def _slug(rel: str) -> str:
    return rel.replace("/", "_").replace(".engine", "")


def builds_running(a) -> bool:
    f = a.work / "builds.running"
    if not f.is_file():
        return False
    try:
        os.kill(int(f.read_text()), 0)
    except (ValueError, OSError):
        return False
    return True


_BACKBONE_FIRST = threading.Lock()


def run_lane(a, lane: list) -> None:
    for rel in lane:
        rec = a.work / "builds" / f"{_slug(rel)}.json"
        try:
            job = job_for(a, rel)
        except Exception as e:  # a bad lane entry: recorded, the lane goes on
            rec.write_text(json.dumps({"engine": rel, "ok": False, "error": repr(e)}))
            continue
        if Path(job["engine"] + ".json").is_file():  # the sidecar is written after the engine
            if not rec.is_file():
                rec.write_text(json.dumps({**job, "ok": True, "skipped": "built by an earlier call"}))
            continue
        if job.get("calib_graph") and not Path(job["calib_cache"]).is_file():
            # the split backbone int8 build (another lane, or earlier in this one) writes the cache; when no lane
            # builds it (a run seeded from .trtcache/ for another checkpoint), this lane builds it first
            backbone = f"{job['size']}/split/backbone_int8.engine"
            if not any(backbone in other for other in lane_engines(a)):
                with _BACKBONE_FIRST:  # two lanes lacking the same cache: one builds it, the other finds it built
                    if not Path(job["calib_cache"]).is_file():
                        log("no lane builds", backbone, "(the calibration cache of", rel + "): building it first")
                        run_lane(a, [backbone])
            writer = a.work / "builds" / f"{_slug(backbone)}.json"
            log("build waits for", job["calib_cache"])
            while not Path(job["calib_cache"]).is_file() and not writer.is_file() and left_build(a) > 60:
                time.sleep(5)
        if left_build(a) < 60:
            rec.write_text(json.dumps({**job, "ok": False, "error": "not built: out of time in this run"}))
            continue
        seed, tc = job.get("timing_seed"), Path(job["timing_cache"])
        if seed and Path(seed).is_file() and not tc.is_file():
            shutil.copyfile(seed, tc)
        jp = a.work / "jobs" / f"{_slug(rel)}.json"
        jp.write_text(json.dumps([job]))
        logf = a.work / "logs" / f"build_{_slug(rel)}.log"
        t0 = time.time()
        log("build start", rel)
        # TensorRT's logger writes to stdout: keep all of it (the reason a build failed is in there)
        with open(logf, "w") as lf:
            proc = subprocess.Popen(
                py39_cmd(TOOL, "build", jp), stdout=lf, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
            while proc.poll() is None:
                if left_build(a) < 0:
                    os.killpg(proc.pid, signal.SIGKILL)  # bash and the py39 builder under it
                    lf.write("\n@@" + json.dumps({"ok": False, "error": "killed at the build deadline"}) + "\n")
                    break
                time.sleep(2)
            proc.wait()
        entry = {**job, "ok": False, "error": f"worker exit {proc.returncode}", "seconds": round(time.time() - t0, 1)}
        for line in logf.read_text(errors="replace").splitlines():
            if line.startswith("@@"):
                entry = {**entry, **json.loads(line[2:])}
                if entry.get("ok"):
                    entry.pop("error", None)
            elif "[E]" in line or "ERROR" in line or "Error Code" in line:
                entry.setdefault("log_errors", []).append(line[:600])
        log(
            "build",
            rel,
            json.dumps({k: entry.get(k) for k in ("ok", "build_seconds", "calibration_batches", "error")})[:600],
        )
        rec.write_text(json.dumps(entry))


def build(a) -> list:
    """Every lane in its own thread; returns the build records of all engines (this run's and earlier)."""
    for sub in ("builds", "jobs", "logs"):
        (a.work / sub).mkdir(exist_ok=True)
    lanes = lane_engines(a)
    marker = a.work / "builds.running"
    marker.write_text(str(os.getpid()))
    try:
        threads = [threading.Thread(target=run_lane, args=(a, lane), daemon=True) for lane in lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        marker.unlink()
    return collect_builds(a)


def collect_builds(a) -> list:
    return (
        [json.loads(f.read_text()) for f in sorted((a.work / "builds").glob("*.json"))]
        if (a.work / "builds").is_dir()
        else []
    )


def split_engine(d: Path, role: str, prec: str) -> Path:
    """Heads of the split int8 variant are the fp16 head engines: their inputs are ROI features, which the
    image calibrator cannot feed (the backbone, nearly all of the FLOPs, is int8)."""
    if prec.split("-")[0] == "int8" and role in ("box_head", "mask_head"):
        prec = "fp16" + prec[len("int8") :]
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


def _padded(run, batch: int):
    """``run`` for a static-batch engine: a short batch padded with copies of its last image, the padding's
    outputs dropped."""

    def call(images):
        k = len(images)
        if k < batch:
            images = np.concatenate([images, np.repeat(images[-1:], batch - k, axis=0)])
        return {name: v[:k] for name, v in run(images).items()}

    return call


def _recording_detector(spec, size: int, run, backend: str, batch: int, fixed: bool):
    from rcnn_deploy.api import Detector

    calls = []
    inner = _padded(run, batch) if fixed else run  # static-batch engines: pad the last batch

    def rec(images):
        out = inner(images)
        calls.append(dict(out))
        return out

    return Detector(spec, (size, size), rec, backend, batch), calls


def _concat(calls) -> dict:
    keys = calls[0].keys()
    return {k: np.concatenate([c[k] for c in calls]) for k in keys}


def score(a, det, calls, ref_outputs=None, max_images=None) -> dict:
    from rcnn_deploy.evaluation.dataset import evaluate_detector
    from rcnn_deploy.evaluation.parity import compare_detections
    from rcnn_deploy.runtime.detections import Detections

    t0 = time.time()
    res = evaluate_detector(
        det, a.work / "val" / "annotations.json", a.work / "val" / "images", max_images=max_images or a.eval_images
    )
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
        row["parity"] = {
            k: d[k]
            for k in (
                "reference_detections",
                "matched",
                "recall",
                "min_box_iou",
                "max_box_abs_diff",
                "max_score_diff",
                "min_mask_iou",
                "mean_mask_iou",
            )
        }
    return row, outputs


def accuracy_plan(a) -> list:
    """(size, backend, variant, precision label) of every accuracy row; the PyTorch reference first per size."""
    S, BIG, B = a.size, a.big, a.batch
    plan = [(S, "pytorch", "eager", "fp32")]
    plan += [(S, "tensorrt", f"fused_b{B}", p) for p in _labels(a, S, f"fused_b{B}")]
    plan += [(S, "tensorrt", "split", p) for p in PRECISIONS]
    if not a.no_onnxruntime:
        plan.append((S, "onnxruntime", "split", "fp32"))
    plan.append((BIG, "pytorch", "eager", "fp32"))
    plan += [(BIG, "tensorrt", "fused_b1", p) for p in _labels(a, BIG, "fused_b1")]
    plan += [(BIG, "tensorrt", "split", p) for p in PRECISIONS]
    return plan


def _labels(a, size: int, variant: str) -> list:
    """Precision labels of a fused variant's rows: the four standard ones, then any other label the lanes build
    (``int8-nojit``, ``fp16-o2``, ...)."""
    labels = ["fp32", "fp16", "int8", "fp16-noglue"]
    for lane in lane_engines(a):
        for rel in lane:
            sz, var, _, label = split_rel(rel)
            if (int(sz), var) == (size, variant) and label not in labels:
                labels.append(label)
    return labels


def row_key(a, size: int, backend: str, variant: str, label: str) -> str:
    key = f"{backend}_{variant}_{label}" if backend != "pytorch" else "pytorch_fp32"
    return key if size == a.size else f"{size}_{key}"


def row_engines(a, size: int, variant: str, label: str) -> list:
    d = a.work / str(size) / variant
    if variant.startswith("fused"):
        return [d / f"fused_{label}.engine"]
    return [split_engine(d, r, label) for r in ("backbone", "box_head", "mask_head")]


def accuracy(a) -> list:
    """Score every planned row whose engines exist; while builds are running, wait for the others."""
    import torch

    from rcnn_deploy.api import Detector
    from rcnn_deploy.contract import Contract
    from rcnn_deploy.glue.split import SplitPieces, onnxruntime_split
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.split import fused_outputs

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows_dir = a.work / "rows"
    rows_dir.mkdir(exist_ok=True)
    net = build_model(MODEL, str(CKPT)).to(_dev()).eval()
    spec, B = net.spec, a.batch
    worker = None

    def done(key: str) -> bool:  # measured by an earlier call (rows that failed are tried again)
        f = rows_dir / f"{key}.json"
        return f.is_file() and "error" not in json.loads(f.read_text())

    def measure(size: int, backend: str, variant: str, label: str) -> dict:
        nonlocal worker
        n_img = a.eval_images if size == a.size else a.big_eval_images
        ref_file = a.work / f"reference_outputs_{size}.npz"
        d = a.work / str(size) / variant
        names = {"pytorch": "PyTorch (deploy model)", "tensorrt": "TensorRT 8.6", "onnxruntime": "ONNX Runtime (CPU)"}
        row = {"backend": names[backend], "graph": variant, "precision": label, "size": size}
        if backend == "pytorch":
            torch_run = Detector.from_module(net, (size, size), device=_dev()).run_padded
            det, calls = _recording_detector(spec, size, torch_run, "pytorch", B, fixed=False)
            r, outputs = score(a, det, calls, max_images=n_img)
            np.savez(ref_file, **outputs)
            return {**row, **r}
        ref = dict(np.load(ref_file))
        if backend == "onnxruntime":
            from rcnn_deploy.glue.split import run_split

            pieces = onnxruntime_split(Contract.load(d), d)
            det, calls = _recording_detector(
                spec, size, lambda im: run_split(pieces, im), "onnxruntime", B, fixed=False
            )
        elif variant.startswith("fused"):
            worker = worker or Worker(a.shm)
            be = EngineBackend(worker, row_engines(a, size, variant, label)[0])
            b = int(variant[len("fused_b") :])
            det, calls = _recording_detector(
                spec, size, lambda im, be=be: fused_outputs(be(images=im)), "tensorrt", b, fixed=True
            )
        else:
            worker = worker or Worker(a.shm)
            pieces = SplitPieces(
                Contract.load(d), *(EngineBackend(worker, e) for e in row_engines(a, size, variant, label))
            )

            def split_run(images, pieces=pieces):
                from rcnn_deploy.glue.pipeline import two_stage

                with torch.no_grad():
                    o = two_stage(pieces, torch.from_numpy(images).to(_dev()), spec)
                return {k: v.cpu().numpy() for k, v in o.items()}

            det, calls = _recording_detector(spec, size, split_run, "tensorrt", B, fixed=False)
        r, _ = score(a, det, calls, ref, max_images=n_img)
        return {**row, **r}

    planned = {str(a.work / r) for lane in lane_engines(a) for r in lane}

    def wanted(item) -> bool:
        if a.rows and row_key(a, *item) not in a.rows:
            return False
        engines = row_engines(a, item[0], item[2], item[3]) if item[1] == "tensorrt" else []
        return all(str(e) in planned or e.is_file() for e in engines)

    pending = [p for p in accuracy_plan(a) if wanted(p)]
    while pending and left() > 45:
        building = builds_running(a)
        waiting = []
        for item in pending:
            size, backend, variant, label = item
            key = row_key(a, *item)
            if done(key):
                continue
            engines = row_engines(a, size, variant, label)
            built = all(Path(f"{e}.json").is_file() for e in engines)  # the sidecar is written last
            if backend == "tensorrt" and not built and building:
                waiting.append(item)
                continue
            if left() < 45:
                waiting.append(item)
                break
            t0 = time.time()
            try:
                row = measure(*item)
            except Exception as e:  # report and continue with the next row
                row = {"backend": backend, "graph": variant, "precision": label, "size": size, "error": repr(e)[-1500:]}
            row["seconds"] = round(time.time() - t0, 1)
            log(
                "accuracy",
                key,
                json.dumps({k: row.get(k) for k in ("bbox_mAP", "segm_mAP", "error")}),
                json.dumps(row.get("parity"))[:400],
            )
            (rows_dir / f"{key}.json").write_text(json.dumps(row))
        pending = waiting
        if pending:
            time.sleep(10)
    if pending:
        log("accuracy: out of time before", [row_key(a, *p) for p in pending])
    if worker is not None:
        worker.close()
    return [json.loads(f.read_text()) for f in sorted(rows_dir.glob("*.json"))]


# ------------------------------------------------------------------------------------------------ latency
def latency(a) -> list:
    """GPU compute per engine (trt_tool.py time) and the PyTorch model's, plus host pre/post-processing."""
    import torch

    from rcnn_deploy.api import Detector
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import find_images

    out, S, B = [], a.size, a.batch
    rng = np.random.default_rng(0)
    for size in (a.big, a.size):
        for name in variants(size, a.batch):
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
                        shape = [
                            b if (k == 0 and dim < 0 and i["name"] == "images") else dim
                            for k, dim in enumerate(i["shape"])
                        ]
                        if i["name"] in ("box_features", "mask_features", "classes"):
                            shape[0] = (1000 if i["name"] == "box_features" else 100) * b
                        if i["name"] == "classes":
                            feed[i["name"]] = np.ones(shape, dtype=np.int32)
                        else:
                            feed[i["name"]] = (
                                rng.standard_normal(shape) * (60 if i["name"] == "images" else 1)
                                + (110 if i["name"] == "images" else 0)
                            ).astype(np.float32)
                    inp, res = a.work / "time_in.npz", a.work / "time_out.json"
                    if res.is_file():
                        res.unlink()
                    np.savez(inp, **feed)
                    extra = ["--profile"] if name.startswith("fused") else []
                    p = subprocess.run(
                        py39_cmd(TOOL, "time", eng, inp, res, "--iterations", 200, *extra),
                        capture_output=True,
                        text=True,
                    )
                    row = (
                        json.loads(res.read_text())
                        if p.returncode == 0 and res.is_file()
                        else {"error": (p.stdout + p.stderr)[-800:]}
                    )
                    row.update({"size": size, "variant": name, "engine": eng.name, "batch": b})  # b images
                    row["build_seconds"] = meta.get("build_seconds")
                    log(
                        "time",
                        json.dumps(
                            {
                                k: row.get(k)
                                for k in (
                                    "size",
                                    "engine",
                                    "batch",
                                    "median_ms",
                                    "p99_ms",
                                    "infer_wall_median_ms",
                                    "layer_groups_ms",
                                    "error",
                                )
                            }
                        )[:700],
                    )
                    out.append(row)
                    (a.work / "latency_partial.json").write_text(json.dumps(out))
    # PyTorch deploy model (fp32, TF32 off) and torchvision's eager model: CUDA events, model only
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = build_model(MODEL, str(CKPT)).to(_dev()).eval()
    for size, b in ((S, 1), (S, B), (a.big, 1), (a.big, B)):
        if left() < 30:
            break
        x = torch.rand(b, 3, size, size, device="cuda") * 255
        out.append(
            {
                "size": size,
                "variant": "pytorch",
                "engine": "deploy model fp32",
                "batch": b,
                **_cuda_time(lambda x=x: net(x)),
            }
        )
    from rcnn_deploy.models.reference import torchvision_reference

    tv = torchvision_reference(net.spec, net.state_dict(), (a.big, a.big)).to(_dev()).eval()
    x = [torch.rand(3, a.big, a.big, device="cuda") for _ in range(1)]
    out.append(
        {
            "size": a.big,
            "variant": "torchvision eager",
            "engine": "torchvision fp32",
            "batch": 1,
            **_cuda_time(lambda: tv(x)),
        }
    )
    # host stages of the end-to-end path (same code for every backend): decode + letterbox, unpad + paste
    ref_file = a.work / f"reference_outputs_{S}.npz"
    if not ref_file.is_file():  # no PyTorch row at --size in this run
        return out
    det = Detector(net.spec, (S, S), lambda im: {}, "host", 1)
    ref = dict(np.load(ref_file))
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


def pipeline(a) -> dict:
    """The split pipeline's stage timings (the ``pipeline`` stage): ``{"device_io": rows, "split_glue": rows}``
    in the formats of trt86_device_io.py and split_glue_time.py; a failed tool leaves an ``error`` entry."""
    out: dict = {"device_io": [], "split_glue": []}
    sizes = [size for size in (a.size, a.big) if any((a.work / str(size) / "split").glob("*.engine"))]
    for size in sizes:
        if left() < 60:
            log("pipeline: out of time before the split engines at", size)
            break
        res = a.work / f"device_io_{size}.json"
        res.unlink(missing_ok=True)  # a file left by an earlier call is not this call's result
        p = subprocess.run(
            py39_cmd(DEVICE_IO, a.work / str(size) / "split", "--out", res), capture_output=True, text=True
        )
        rows = json.loads(res.read_text())["results"] if res.is_file() else []
        if p.returncode != 0:
            rows.append({"size": size, "error": (p.stdout + p.stderr)[-800:]})
        log(
            "device_io",
            size,
            json.dumps(
                [{k: r.get(k) for k in ("engine", "batch", "same_outputs", "device_io_wall_ms", "error")} for r in rows]
            )[:900],
        )
        out["device_io"] += rows
    split_dirs = (
        [str(a.work / str(a.size) / "split")]
        if not a.no_onnxruntime and (a.work / str(a.size) / "split" / "contract.json").is_file()
        else []
    )
    if (sizes or split_dirs) and left() > 60:
        res = a.work / "split_glue.json"
        res.unlink(missing_ok=True)
        args = [sys.executable, GLUE, "--images", a.work / "val" / "images", "--out", res, "--batches", 1, a.batch]
        args += ["--sizes", *(sizes or [a.size])] + (["--onnxruntime", *split_dirs] if split_dirs else [])
        p = subprocess.run([str(x) for x in args], capture_output=True, text=True)
        out["split_glue"] = (
            json.loads(res.read_text())["results"]
            if p.returncode == 0 and res.is_file()
            else [{"error": (p.stdout + p.stderr)[-800:]}]
        )
        log("split_glue", json.dumps(out["split_glue"])[:900])
    return out


def _cuda_time(fn, iterations: int = 30, warmup: int = 5) -> dict:
    """CUDA-event latency of ``fn`` (the same timer ``rcnn-deploy bench`` uses, no CUDA graph)."""
    from rcnn_deploy.runtime.timing import time_torch_cuda

    ts, _, _ = time_torch_cuda(fn, iterations, warmup, cuda_graph=False)
    return {
        "median_ms": float(np.median(ts)),
        "p99_ms": float(np.percentile(ts, 99)),
        "infer_wall_median_ms": float(np.median(ts)),
    }


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
    ap.add_argument("--big-eval-images", type=int, default=50, help="accuracy rows at --big (images upscaled)")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--deadline-min", type=float, default=9.0, help="the whole run")
    ap.add_argument("--build-deadline-min", type=float, default=None, help="kill builds still running then")
    ap.add_argument("--stages", nargs="+", default=["prepare", "build", "accuracy", "latency", "pipeline"])
    ap.add_argument(
        "--lanes", nargs="*", default=None, help="build lanes, each 'SIZE/VARIANT/ROLE_PREC,...' (default: all)"
    )
    ap.add_argument("--rows", nargs="*", default=None, help="only these accuracy rows, e.g. tensorrt_split_int8")
    ap.add_argument("--no-onnxruntime", action="store_true", help="skip the ONNX Runtime (CPU) row")
    a = ap.parse_args()
    DEADLINE[0] = a.deadline_min * 60
    if a.build_deadline_min is not None:
        BUILD_DEADLINE[0] = a.build_deadline_min * 60
    a.work.mkdir(parents=True, exist_ok=True)
    if not a.shm.is_dir():
        a.shm = a.work
    a.out.mkdir(parents=True, exist_ok=True)
    state_file = a.work / "results_table.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}

    def save() -> None:
        state["config"] = {
            "size": a.size,
            "big": a.big,
            "batch": a.batch,
            "eval_images": a.eval_images,
            "big_eval_images": a.big_eval_images,
            "calib_images": a.calib_images,
            "big_calib_images": min(a.calib_images, BIG_CALIB_IMAGES),
        }
        state_file.write_text(json.dumps(state, indent=1))
        (a.out / "results_table.json").write_text(json.dumps(state, indent=1))

    together = "build" in a.stages and "accuracy" in a.stages  # accuracy rows run while the lanes build
    for stage in a.stages:
        if stage == "accuracy" and together:
            continue
        log("stage", "build + accuracy" if stage == "build" and together else stage)
        if stage == "prepare":
            state["info"] = prepare(a)
        elif stage == "build" and together:
            (a.work / "builds.running").write_text(str(os.getpid()))  # before the accuracy loop looks
            t = threading.Thread(target=build, args=(a,), daemon=True)
            t.start()
            state["rows"] = accuracy(a)
            t.join()
            state["builds"] = collect_builds(a)
        elif stage == "build":
            state["builds"] = build(a)
        elif stage == "accuracy":
            state["rows"] = accuracy(a)
        elif stage == "latency":
            state["latency"] = latency(a)
        elif stage == "pipeline":
            state.update(pipeline(a))
        elif stage == "collect":  # a snapshot of a run still going (another process): what is on disk now
            state["builds"] = collect_builds(a)
            rows_dir = a.work / "rows"
            state["rows"] = (
                [json.loads(f.read_text()) for f in sorted(rows_dir.glob("*.json"))] if rows_dir.is_dir() else []
            )
            part = a.work / "latency_partial.json"
            if "latency" not in state and part.is_file():
                state["latency"] = json.loads(part.read_text())
            (a.out / "results_table.json").write_text(json.dumps({**state, "snapshot": True}, indent=1))
            continue
        save()
    log("done")


if __name__ == "__main__":
    main()
