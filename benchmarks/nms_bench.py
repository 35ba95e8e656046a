"""GPU machine: the RPN's NMS as TensorRT 8.6 runs it, one set of N*G candidates versus one NMS per FPN level.

    python3 benchmarks/nms_bench.py --work /tmp/nb --out $OUT [--sizes 1344 384] [--batches 1 8]

The candidates are the real ones: the project checkpoint's RPN on synthetic validation images (letterboxed to
each size), captured at the call into ``nms_padded``. For each size, batch and layout the script exports the
NMS alone (``PluginLowering``: EfficientNMS_TRT, and for the per-level layout the Pad/TopK merge around it),
builds it like the engines (fp16 flags, fp32-glue rule, the bundle's tactic sources), times it with
``trt_tool.py time`` (CUDA events, CUDA graph) and compares its proposals with the eager NMS (torchvision's
batched NMS over the levels). Results: OUT/nms_bench.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import CKPT, MODEL, TOOL, py39_cmd  # noqa: E402


def capture_rpn_nms(net, images):
    """The deploy model's RPN NMS call for ``images`` (``glue.stages.RpnNms``: candidates, scores, parameters)."""
    import torch

    from rcnn_deploy.glue.pipeline import split_levels
    from rcnn_deploy.glue.stages import rpn_nms_inputs, spec_anchors

    hw = (int(images.shape[-2]), int(images.shape[-1]))
    with torch.no_grad():
        x = torch.from_numpy(images).to(next(net.parameters()).device)
        _, objectness, deltas = net.features(x)
        anchors = spec_anchors(net.spec, hw, x.device)
        return rpn_nms_inputs(
            split_levels(objectness, net.spec, hw), split_levels(deltas, net.spec, hw), anchors, hw, net.spec
        )


def rpn_case(net, images) -> tuple:
    """The RPN NMS call for ``images``: its arguments, the eager result (torchvision's batched NMS over the
    levels) and the graph inputs as numpy."""
    from rcnn_deploy.glue.nms import nms_eager

    call = capture_rpn_nms(net, images)
    out = nms_eager(call.boxes, call.scores, call.valid, call.iou_threshold, call.max_out)
    ref = {"boxes": out[0].cpu().numpy(), "count": out[3].cpu().numpy()}
    feed = {
        "boxes": call.boxes.cpu().numpy(),
        "scores": call.scores.cpu().numpy(),
        "valid_f": call.valid.float().cpu().numpy(),
    }
    return call, ref, feed


def export_nms(path: Path, call, blocked: bool, image_hw, lowering: str = "plugin") -> None:
    """The RPN's NMS alone as an ONNX graph: ``blocked`` = per level (as exported models run it now), else one
    set over all levels (as they ran it before: one EfficientNMS, or one fixpoint over all candidates)."""
    from torch import nn

    from rcnn_deploy.export import export_module
    from rcnn_deploy.export.lowering import make_lowering
    from rcnn_deploy.glue.formulations import nms_fixpoint
    from rcnn_deploy.glue.nms import nms_padded

    iou, max_out, score_thr = call.iou_threshold, call.max_out, call.score_threshold
    blocks = call.group_blocks if blocked else None
    low = make_lowering(lowering, tuple(image_hw))

    class RpnNMS(nn.Module):
        def forward(self, boxes, scores, valid_f):  # type: ignore[no-untyped-def]
            valid = valid_f > 0.5
            if getattr(low, "traced", False) and blocks is None:  # the fixpoint over all N candidates at once
                b, s, _, c = nms_fixpoint(boxes, scores, valid, iou, max_out, low.max_candidates, True)
            else:
                b, s, _, c = nms_padded(boxes, scores, valid, iou, max_out, score_thr, group_blocks=blocks)
            return b, s, c

    feed = (call.boxes.cpu(), call.scores.cpu(), call.valid.float().cpu())
    names = (["boxes", "scores", "valid_f"], ["proposals", "proposal_scores", "count"])
    export_module(RpnNMS(), feed, path, *names, lowering=low, opset=17)


def onnxruntime_tensor_rows(net, a, images_for) -> list:
    """CPU: the tensor lowering (fixpoint Loop, what TensorRT-RTX / plugin-free TensorRT build) of both
    layouts in ONNX Runtime, timed and compared with the eager NMS."""
    import onnxruntime as ort

    rows = []
    for size in a.sizes:
        call, ref, feed = rpn_case(net, images_for(size)[:1])
        for layout in ("one_set", "per_level"):
            path = a.work / f"nms_tensor_{size}_{layout}.onnx"
            export_nms(path, call, layout == "per_level", (size, size), "tensor")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            times, out = [], None
            for _ in range(3):
                t0 = time.perf_counter()
                out = sess.run(None, feed)
                times.append((time.perf_counter() - t0) * 1000)
            row = {
                "size": size,
                "batch": 1,
                "layout": layout,
                "candidates": int(call.scores.shape[1]),
                "blocks": list(call.group_blocks),
                "backend": "onnxruntime cpu (2 threads), tensor lowering",
                "median_ms": float(np.median(times)),
                "vs_eager": agreement(ref, {"boxes": out[0], "count": out[2].reshape(-1)}),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def agreement(ref, got) -> dict:
    """Proposals of ``got`` that equal (IoU > 0.99) a reference proposal of the same image, over the reference's."""
    from rcnn_deploy.evaluation.parity import box_iou

    out = {"reference": 0, "matched": 0, "count_ref": [], "count_got": []}
    for i in range(ref["boxes"].shape[0]):
        nr, ng = int(ref["count"][i]), int(got["count"][i])
        out["count_ref"].append(nr)
        out["count_got"].append(ng)
        if nr and ng:
            iou = box_iou(ref["boxes"][i, :nr], got["boxes"][i, :ng])
            out["matched"] += int((iou.max(axis=1) > 0.99).sum())
        out["reference"] += nr
    return out


def main() -> None:
    import torch

    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import find_images, letterbox, load_rgb, rgb_fill

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/nb"))
    ap.add_argument("--out", type=Path, default=Path("runs/nms_bench"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1344, 384])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--onnxruntime", action="store_true", help="CPU only: the tensor lowering in ONNX Runtime")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = build_model(MODEL, str(CKPT)).to(dev).eval()
    if not (a.work / "val" / "annotations.json").is_file():
        generate_synthetic_coco(a.work / "val", max(a.batches), 384, 384, seed=2)
    paths = sorted(find_images(a.work / "val" / "images"))
    fill = rgb_fill(net.spec.pixel_mean, net.spec.channel_order)

    def images_for(size: int) -> np.ndarray:
        return np.stack([letterbox(load_rgb(p), (size, size), fill)[0] for p in paths[: max(a.batches)]])

    if a.onnxruntime:
        rows = onnxruntime_tensor_rows(net, a, images_for)
        (a.out / "nms_bench_onnxruntime.json").write_text(
            json.dumps({"info": {"gpu": "none"}, "results": rows}, indent=1)
        )
        return
    jobs, cases = [], []
    for size in a.sizes:
        imgs = images_for(size)
        for b in a.batches:
            call, ref, feed = rpn_case(net, imgs[:b])
            inp = a.work / f"in_{size}_b{b}.npz"
            np.savez(inp, **feed)
            for layout in ("one_set", "per_level"):
                onnx_path = a.work / f"nms_{size}_b{b}_{layout}.onnx"
                export_nms(onnx_path, call, layout == "per_level", (size, size))
                eng = a.work / f"nms_{size}_b{b}_{layout}.engine"
                jobs.append(
                    {
                        "onnx": str(onnx_path),
                        "engine": str(eng),
                        "precision": "fp16",
                        "batch": [b, b, b],
                        "workspace_gib": 1.0,
                        "fp32_glue": True,
                    }
                )
                cases.append(
                    {
                        "size": size,
                        "batch": b,
                        "layout": layout,
                        "engine": eng,
                        "input": inp,
                        "ref": ref,
                        "candidates": int(call.scores.shape[1]),
                        "blocks": list(call.group_blocks),
                    }
                )
    jp = a.work / "jobs.json"
    jp.write_text(json.dumps(jobs))
    t0 = time.time()
    p = subprocess.run(py39_cmd(TOOL, "build", jp), capture_output=True, text=True)
    build_log = (p.stdout + p.stderr)[-4000:]
    print(f"built {len(jobs)} engines in {time.time() - t0:.0f}s", flush=True)
    results = []
    for c in cases:
        row = {k: c[k] for k in ("size", "batch", "layout", "candidates", "blocks")}
        eng = c["engine"]
        if not eng.is_file():
            row["error"] = "not built"
            results.append(row)
            continue
        tj, outp = a.work / "t.json", a.work / "o.npz"
        subprocess.run(py39_cmd(TOOL, "time", eng, c["input"], tj, "--iterations", 200), capture_output=True, text=True)
        if tj.is_file():
            t = json.loads(tj.read_text())
            row.update({k: t[k] for k in ("median_ms", "p99_ms", "min_ms", "cuda_graph")})
            tj.unlink()
        subprocess.run(py39_cmd(TOOL, "run", eng, c["input"], outp), capture_output=True, text=True)
        if outp.is_file():
            o = dict(np.load(outp))
            row["vs_eager"] = agreement(c["ref"], {"boxes": o["proposals"], "count": o["count"].reshape(-1)})
            outp.unlink()
        print(json.dumps(row), flush=True)
        results.append(row)
    info = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none", "build_log_tail": build_log}
    (a.out / "nms_bench.json").write_text(json.dumps({"info": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
