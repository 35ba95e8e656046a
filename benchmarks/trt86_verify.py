"""GPU machine: export Mask R-CNN graphs, build them with real TensorRT 8.6, run them through the project's
runtime and compare with the PyTorch deploy model (issue 3's verification; issue 4 reuses the stages).

Stages (each fits one device call; state lives in --work, which survives while the machine stays up):
    python3 benchmarks/trt86_verify.py export --work /tmp/rd --sizes 1344 800
    python3 benchmarks/trt86_verify.py build  --work /tmp/rd --sizes 1344 --precisions fp32
    python3 benchmarks/trt86_verify.py run    --work /tmp/rd --sizes 1344 800 --out $OUT

torch runs under the machine's python3; TensorRT under $PY39 (benchmarks/trt_tool.py; see py39()), called as a
subprocess. Split engines are chained by the same glue the deploy model uses (glue.pipeline.two_stage) on
the GPU, exchanging tensors with the TensorRT worker through .npz files (slow, but exact: this script checks
agreement, it does not time the split pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BATCH = 2
VARIANTS = {  # name -> export kwargs (PyramidROIAlign_TRT needs a static batch)
    "fused_plugin": dict(graph="fused", nms="plugin", batch=BATCH),
    "fused_tensor": dict(graph="fused", nms="tensor", batch=f"1:{BATCH}"),
    "split": dict(graph="split", batch=f"1:{BATCH}"),
}
MODEL = "torchvision-maskrcnn"
ROLES = ("backbone", "box_head", "mask_head")


def py39(*args: str) -> subprocess.CompletedProcess:
    """Run a TensorRT tool with the interpreter that has TensorRT: ``$PY39`` (a shell snippet, e.g.
    ``PY39='source /tmp/trt86/env.sh && py39'`` where TensorRT 8.6 lives in a CPython 3.9 bundle), else this
    Python."""
    cmd = (os.environ.get("PY39") or sys.executable) + " " + " ".join(str(a) for a in args)
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)


def model_and_images(size: int):

    from rcnn_deploy import get_spec
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import calibration_images, confident_state_dict

    net = DeployRCNN(get_spec(MODEL))
    confident_state_dict(net, seed=0)
    return net, calibration_images(BATCH, size, size, seed=7)


def stage_export(work: Path, sizes):
    import torch

    from rcnn_deploy.export import export_onnx

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for size in sizes:
        net, images = model_and_images(size)
        net = net.to(dev)
        d = work / str(size)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "images.npy", images.numpy())
        with torch.no_grad():
            ref = {k: v.cpu().numpy() for k, v in net(images.to(dev)).items()}
        np.savez(d / "reference.npz", **ref)
        for name, kw in VARIANTS.items():
            t0 = time.time()
            export_onnx(net, d / name, height=size, width=size, **kw)
            print(f"export {size} {name}: {time.time() - t0:.1f}s", flush=True)


def stage_build(work: Path, sizes, precisions, variants):
    from rcnn_deploy.contract import Contract

    jobs = []
    for size in sizes:
        for name in variants:
            d = work / str(size) / name
            c = Contract.load(d)
            for prec in precisions:
                for g in c.graphs:
                    jobs.append(
                        dict(
                            onnx=str(d / g.file),
                            engine=str(d / f"{g.role}_{prec}.engine"),
                            precision=prec,
                            batch=[1, BATCH, BATCH],
                            rois=[1, 1000, BATCH * 1000],
                            timing_cache=str(work / "timing.cache"),
                            calib_npy=str(work / str(size) / "images.npy"),
                            calib_cache=str(d / "calib.cache"),
                        )
                    )
    path = work / f"jobs_{'_'.join(map(str, sizes))}_{'_'.join(precisions)}_{'_'.join(variants)}.json"
    path.write_text(json.dumps(jobs, indent=1))
    p = py39(ROOT / "benchmarks" / "trt_tool.py", "build", path)
    print(p.stdout[-6000:], p.stderr[-3000:], flush=True)


class OrtStandIn:
    """Local dry run of the run stage (no GPU): the ONNX file behind an engine path, in ONNX Runtime."""

    def __init__(self, engine: Path, work: Path):
        from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend
        from rcnn_deploy.contract import Contract

        role = engine.name.split("_")[0] if not engine.name.startswith("box_") else "box_head"
        role = "mask_head" if engine.name.startswith("mask_") else role
        c = Contract.load(engine.parent)
        self.be = OnnxRuntimeBackend(engine.parent / c.graph_for(role).file, ["CPUExecutionProvider"])

    def __call__(self, **feed):
        return self.be(**feed)


class SubprocessTRT:
    """Backend-shaped adapter: runs one engine in the py39 TensorRT worker per call."""

    def __init__(self, engine: Path, work: Path):
        self.engine, self.work = engine, work
        meta = json.loads(Path(str(engine) + ".json").read_text())
        self.input_names = [i["name"] for i in meta["inputs"]]
        self.output_names = [o["name"] for o in meta["outputs"]]

    def __call__(self, **feed):
        inp, out = self.work / "call_in.npz", self.work / "call_out.npz"
        np.savez(inp, **feed)
        p = py39(ROOT / "benchmarks" / "trt_tool.py", "run", self.engine, inp, out)
        if p.returncode != 0:
            raise RuntimeError(f"TensorRT worker failed on {self.engine.name}:\n{p.stderr[-3000:]}")
        return dict(np.load(out))


def stage_run(work: Path, sizes, precisions, variants, out_dir: Path, engine_cls=None):
    import torch

    from rcnn_deploy.contract import Contract
    from rcnn_deploy.evaluation.parity import compare_detections
    from rcnn_deploy.glue.pipeline import two_stage
    from rcnn_deploy.glue.split import SplitPieces
    from rcnn_deploy.runtime.detections import Detections
    from rcnn_deploy.runtime.split import fused_outputs

    engine_cls = engine_cls or SubprocessTRT
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for size in sizes:
        d = work / str(size)
        images = np.load(d / "images.npy")
        ref = dict(np.load(d / "reference.npz"))
        for name in variants:
            c = Contract.load(d / name)
            for prec in precisions:
                row = {"size": size, "variant": name, "precision": prec}
                try:
                    t0 = time.time()
                    if c.graph == "fused":
                        eng = d / name / f"fused_{prec}.engine"
                        out = fused_outputs(engine_cls(eng, work)(images=images))
                    else:
                        eng = {r: engine_cls(d / name / f"{r}_{prec}.engine", work) for r in ROLES}
                        pieces = SplitPieces(c, eng["backbone"], eng["box_head"], eng["mask_head"])
                        with torch.no_grad():
                            res = two_stage(pieces, torch.from_numpy(images).to(dev), c.spec)
                        out = {k: v.cpu().numpy() for k, v in res.items()}
                    row["seconds"] = round(time.time() - t0, 1)
                    rep = compare_detections(
                        Detections.from_padded(ref), Detections.from_padded(out), pasted_masks=False
                    )
                    row.update({k: v for k, v in rep.to_dict().items() if k != "unmatched"})
                    row["unmatched"] = len(rep.unmatched)
                except Exception as e:  # report and continue with the next engine
                    row["error"] = str(e)[-1500:]
                print(json.dumps(row), flush=True)
                rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trt86_verify.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| size | variant | precision | ref dets | matched | min box IoU | max box diff (px) | max score diff "
        "| min mask IoU (28x28) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['variant']} | {r['precision']} | error: {r['error'][:80]} |||||")
            continue
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['precision']} | {r['reference_detections']} | {r['matched']} "
            f"| {r['min_box_iou']:.4f} | {r['max_box_abs_diff']:.3f} | {r['max_score_diff']:.2e} "
            f"| {r['min_mask_iou'] if r['min_mask_iou'] is None else round(r['min_mask_iou'], 4)} |"
        )
    (out_dir / "trt86_verify.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stage_time(work: Path, sizes, precisions, variants, out_dir: Path, batches=(1, 2)):
    """GPU compute latency of every built fused engine and of the split backbone (CUDA events, CUDA graph)."""
    rows = []
    for size in sizes:
        d = work / str(size)
        images = np.load(d / "images.npy")
        for name in variants:
            for prec in precisions:
                role = "backbone" if name == "split" else "fused"
                eng = d / name / f"{role}_{prec}.engine"
                if not eng.is_file():
                    continue
                for b in batches:
                    inp = work / "time_in.npz"
                    np.savez(inp, images=np.concatenate([images] * b)[:b])
                    res = work / "time_out.json"
                    args = ["time", eng, inp, res, "--iterations", 200]
                    p = py39(ROOT / "benchmarks" / "trt_tool.py", *args)
                    if p.returncode != 0:  # e.g. a Loop with a data-dependent condition cannot be graph-captured
                        p = py39(ROOT / "benchmarks" / "trt_tool.py", *args, "--no-cuda-graph")
                    row = {"size": size, "variant": name, "graph": role, "precision": prec, "batch": b}
                    if p.returncode == 0:
                        row.update(json.loads(res.read_text()))
                    else:
                        row["error"] = p.stderr[-1500:]
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trt86_latency.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| size | variant | graph | precision | batch | median ms | p99 ms | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['variant']} | {r['graph']} | {r['precision']} | {r['batch']} | error |||")
        else:
            ips = r["batch"] * 1000.0 / r["median_ms"]
            lines.append(
                f"| {r['size']} | {r['variant']} | {r['graph']} | {r['precision']} | {r['batch']} "
                f"| {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {ips:.0f} |"
            )
    (out_dir / "trt86_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["export", "build", "run", "time"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rd"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1344, 800])
    ap.add_argument("--precisions", nargs="+", default=["fp32"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/trt86")))
    ap.add_argument("--ort-stand-in", action="store_true", help="dry run on a CPU machine: ORT instead of TRT")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.stage == "export":
        stage_export(a.work, a.sizes)
    elif a.stage == "build":
        stage_build(a.work, a.sizes, a.precisions, a.variants)
    elif a.stage == "time":
        stage_time(a.work, a.sizes, a.precisions, a.variants, a.out)
    else:
        stage_run(a.work, a.sizes, a.precisions, a.variants, a.out, OrtStandIn if a.ort_stand_in else None)


if __name__ == "__main__":
    main()
