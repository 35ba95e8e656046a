"""Where one image's end-to-end time goes (batch 1, PyTorch on CUDA): the Detector that
``e2e_torch_cuda.py``'s ``gpu_decode_post`` rows build (fp16 CUDA graph, GPU decode + letterbox, GPU post,
optionally compiled), called on one JPEG at a time as its latency row does. Writes, under ``--out-dir``:

* ``latency.json``: wall ms per image (p50/p90/p99) and the model's host stages (``GpuBatchModel.stage_s``);
* ``cprofile.txt``: cProfile of the same loop, by own time and by cumulative time;
* ``torch_profile.txt`` + ``trace.json.gz``: torch.profiler (CPU + CUDA) of a few images.

A diagnostic, not a results table: its numbers go into notes, the tables come from ``e2e_torch_cuda.py``."""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _tree import tree  # noqa: E402 - this folder (on sys.path when run as a script)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--compile", default="default", help="torch.compile mode, or 'none'")
    ap.add_argument("--images-timed", type=int, default=60)
    ap.add_argument("--nms-rounds", type=int, default=96)
    ap.add_argument("--post-layout", choices=("grid", "ragged"), default="grid",
                    help="GPU post-processing's layout (e2e_torch_cuda.py --post-layout)")  # fmt: skip
    from rcnn_deploy.glue import sync_free

    ap.add_argument("--nms-fixpoint", choices=sync_free.SYNC_FREE_FIXPOINTS, default="bits",
                    help="how the sync-free NMS runs its rounds (e2e_torch_cuda.py --nms-fixpoint)")  # fmt: skip
    a = ap.parse_args()
    sync_free.SYNC_FREE_FIXPOINT = a.nms_fixpoint
    if a.post_layout == "ragged":
        from rcnn_deploy.glue import gpu_post

        gpu_post.GRID_MAX_ELEMENTS = 0  # no grid fits: postprocess_batch takes the ragged layout

    import torch

    from rcnn_deploy.api import Detector
    from rcnn_deploy.runtime.coco import detections_to_coco
    from rcnn_deploy.runtime.preprocess import find_images
    from rcnn_deploy.runtime.stream import percentiles

    os.makedirs(a.out_dir, exist_ok=True)
    paths = [str(p) for p in find_images(a.images)]
    det = Detector.load(
        a.checkpoint, input_hw=(a.size, a.size), batch=1, device="cuda", precision="fp16", cuda_graph=True,
        gpu_decode=True, gpu_post=True, compile=None if a.compile == "none" else a.compile,
    )  # fmt: skip
    det.cuda_model.nms_rounds = a.nms_rounds

    def one(p: str) -> None:
        d = det([p])[0]
        detections_to_coco(d, 1, det.spec.category_ids, det.spec.label_ids)

    t0 = time.perf_counter()
    for p in paths[:5]:
        one(p)
    torch.cuda.synchronize()
    doc = {"commit": tree(), "load_and_warm_s": round(time.perf_counter() - t0, 1), "images": len(paths),
           "post_layout": a.post_layout, "nms_fixpoint": a.nms_fixpoint}  # fmt: skip
    stages = det.batch_model.stage_s
    stages.update(dict.fromkeys(stages, 0.0))
    walls = []
    for p in paths[5 : 5 + a.images_timed]:
        t = time.perf_counter()
        one(p)
        walls.append((time.perf_counter() - t) * 1e3)
    doc["wall_ms"] = percentiles(walls, (50, 90, 99))
    doc["stages_mean_ms"] = {k: round(v * 1e3 / len(walls), 3) for k, v in stages.items()}
    print(json.dumps(doc), flush=True)

    pr = cProfile.Profile()
    pr.enable()
    for p in paths[5 : 5 + a.images_timed]:
        one(p)
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(60)
    Path(a.out_dir, "cprofile.txt").write_text(s.getvalue())

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for p in paths[100:110]:
            one(p)
        torch.cuda.synchronize()
    tables = [
        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=50),
        prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40),
    ]
    Path(a.out_dir, "torch_profile.txt").write_text("\n\n".join(tables))
    trace = Path(a.out_dir, "trace.json")
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as f, gzip.open(str(trace) + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    trace.unlink()
    Path(a.out_dir, "latency.json").write_text(json.dumps(doc, indent=1))
    print("done", flush=True)


if __name__ == "__main__":
    main()
