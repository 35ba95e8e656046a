"""Which part of the network costs mAP in fp16? An emulation on the CPU, to choose what the GPU should measure.

    python benchmarks/fp16_sensitivity.py --out benchmarks/results/fp16_sensitivity_cpu.json

The PyTorch deploy model of checkpoints/ with fp16 *storage* emulated in chosen module groups: their weights
rounded to fp16, and every convolution / linear layer's input and output rounded to fp16 (arithmetic stays
fp32, like TensorRT's fp16 kernels with fp32 accumulation; TensorRT's own kernel choice, fusions and any fp16
accumulation are not modelled). Scored like benchmarks/results_table.py: COCO mAP on the first --images images
of the synthetic validation split (seed 2, 384²), against the same model in fp32. Variants: fp32; the network
(every group) emulated; the same with the multi-level ROIAlign's ROI boxes in fp16 too (what a ROIAlign plugin
running in fp16 gets; its features are fp16 already: the FPN convolutions' outputs); the same with both NMS (RPN and
detections) taking and returning fp16 boxes and scores, as EfficientNMS_TRT in fp16 does; --leave-one-out:
every group but one (which group kept in fp32 recovers the most).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CKPT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
GROUPS = (
    "backbone.body",
    "backbone.fpn",
    "rpn.head",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_head",
    "roi_heads.mask_predictor",
)


def emulate_fp16(net, groups) -> list:
    """Round the groups' weights to fp16 and hook their layers to round inputs and outputs; returns the hooks."""
    import torch

    def rnd(x):
        return x.half().float() if torch.is_tensor(x) and x.is_floating_point() else x

    hooks = []
    for g in groups:
        mod = net.get_submodule(g)
        for m in mod.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                with torch.no_grad():
                    for p in m.parameters(recurse=False):
                        p.copy_(rnd(p))
                hooks.append(m.register_forward_pre_hook(lambda _m, args: tuple(rnd(a) for a in args)))
                hooks.append(m.register_forward_hook(lambda _m, _args, out: rnd(out)))
    return hooks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/fp16_sensitivity"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fp16_sensitivity_cpu.json")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--val-images", type=int, default=500, help="the split results_table.py generates")
    ap.add_argument("--leave-one-out", action="store_true", help="also: every network group but one in fp16")
    a = ap.parse_args()

    import torch

    from rcnn_deploy.api import Detector
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.evaluation.dataset import evaluate_detector
    from rcnn_deploy.models.build import build_model

    torch.set_num_threads(os.cpu_count() or 2)
    val = a.work / "val"
    if not (val / "annotations.json").is_file():
        generate_synthetic_coco(val, a.val_images, a.size, a.size, seed=2, workers=max((os.cpu_count() or 2) - 1, 1))
    # (name, network groups in fp16, glue op in fp16: None | "boxes" (ROIAlign's) | "nms")
    variants = [("fp32", (), None), ("fp16 network", GROUPS, None)]
    variants += [("fp16 network, ROIAlign boxes fp16", GROUPS, "boxes")]
    variants += [("fp16 network, NMS fp16", GROUPS, "nms")]
    if a.leave_one_out:
        variants += [(f"fp16 but {g} fp32", tuple(x for x in GROUPS if x != g), None) for g in GROUPS]
    rows = json.loads(a.out.read_text())["rows"] if a.out.is_file() else []
    done = {r["variant"] for r in rows}
    from rcnn_deploy.glue.emulate import fp16_glue

    for name, groups, roi in variants:
        if name in done:
            continue
        net = build_model("torchvision-maskrcnn", str(CKPT)).eval()
        emulate_fp16(net, groups)
        det = Detector.from_module(net, (a.size, a.size), batch=4)
        t0 = time.time()
        # ROIAlign's boxes / both NMS (RPN and detections) fp16-rounded, as fp16 plugins see them
        with fp16_glue(nms=roi == "nms", roi_boxes=roi == "boxes"):
            res = evaluate_detector(det, val / "annotations.json", val / "images", max_images=a.images)
        row = {
            "variant": name,
            "fp16_groups": list(groups),
            "glue_fp16": roi,
            "bbox_mAP": res["metrics"]["bbox"]["AP"],
            "segm_mAP": res["metrics"]["segm"]["AP"],
            "images": res["images"],
            "seconds": round(time.time() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        info = {"what": " ".join(__doc__.split("\n\n")[2].split()), "checkpoint": CKPT.name, "size": a.size}
        info["torch"] = torch.__version__
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
