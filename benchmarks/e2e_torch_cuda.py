"""PyTorch on the GPU without TensorRT (issue "PyTorch on the GPU"): the deploy model in fp32 / fp16 / bf16 with one
CUDA graph per batch size, timed alone and end to end through ``Detector.stream``, with parity and mAP checks.

    python3 benchmarks/e2e_torch_cuda.py --checkpoint checkpoints/shapes_maskrcnn_r50fpn.pt --size 1344 \
        --images DIR_OF_1920x1080_JPEGS --val SYNTH_VAL_DIR --out e2e_torch_cuda.json

Rows (one per model, precision and batch):
  gpu_compute_ms   the model alone on a uint8 batch already on the GPU (CUDA-graph replay, or eager with
                   --no-cuda-graph rows), median of 100 after warm-up, CUDA events
  stream           ``Detector.stream`` over the folder (decode + letterbox in worker processes, uint8 upload,
                   graph replay, postprocessing with masks as COCO RLE from box regions, results.jsonl/TSV written):
                   img/s over the whole folder, second of two passes
  latency_ms       batch 1: ``Detector([path])`` per image (decode .. RLE), p50/p90/p99
Parity (``--val``, a synthetic COCO folder at the checkpoint's own size): bbox/segm mAP of the eager fp32 deploy
model and of each graph precision, and the fp32 graph's detections matched against eager's.
Faster R-CNN rows: the checkpoint's box branch as a Faster R-CNN (its mask head dropped), same images.
``--compile MODE`` (phase ``compile``, added by the option): fp16 CUDA-graph rows at batch 1 and 8 with the sync-free
forward through ``torch.compile`` in MODE (``default`` or ``max-autotune-no-cudagraphs``) beside the uncompiled
forward, under ``"compile"`` in the JSON (not ``"rows"``): GPU compute, the compile wall time of the first call,
Dynamo's graphs and graph breaks, kernels per forward (torch.profiler, uncaptured), and parity of the compiled
outputs against the uncompiled ones (padded outputs on one batch; detections on ``--compile-parity-images`` files
matched with ``compare_detections``). A failed compile or capture is an error row with the exception text.
Writes the JSON atomically after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
from _tree import tree  # this folder (on sys.path when run as a script)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


PHASES = (
    "stream", "parity", "precisions", "faster", "gpu_decode", "gpu_post", "gpu_decode_post", "profile", "compile",
    "roi_align",
)  # fmt: skip
from rcnn_deploy.backends.torch_cuda import COMPILE_MODES, GPU_DECODERS  # noqa: E402 (torch is imported lazily)
from rcnn_deploy.glue.roi_align import SYNC_FREE_ROI_ALIGNS  # noqa: E402
from rcnn_deploy.glue.sync_free import SYNC_FREE_FIXPOINTS  # noqa: E402


def commit() -> str:
    """The tree this runs (:func:`_tree.tree`)."""
    return tree() or "unknown"


def gpu_compute(det: Any, batch: int, images: np.ndarray, iterations: int = 100) -> Dict[str, Any]:
    import torch

    model = det.cuda_model
    x = torch.from_numpy(np.ascontiguousarray(images[:batch])).cuda()
    for _ in range(5):
        model(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        model(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    med = float(np.median(times))
    return {
        "gpu_compute_ms": round(med, 3),
        "gpu_compute_p99_ms": round(float(np.percentile(times, 99)), 3),
        "gpu_images_per_s": round(batch * 1000.0 / med, 1),
        "nms_fallbacks": model.fallbacks,
        "replays": model.replays,
    }


PIPELINE_STAGES = ("select_proposals", "multiscale_roi_align", "select_detections")  # glue.pipeline's
NETWORK_STAGES = ("features", "box_head", "mask_head")  # DeployRCNN's methods two_stage calls


@contextlib.contextmanager
def stage_scopes(net: Any) -> Iterator[None]:
    """Each stage ``two_stage`` calls inside a ``record_function("stage: NAME")`` range (the pipeline's functions
    and the network's methods wrapped for the duration; nothing of the package is changed)."""
    from torch.profiler import record_function

    from rcnn_deploy.glue import pipeline

    def scoped(fn: Any, name: str) -> Any:
        def inner(*args: Any, **kwargs: Any) -> Any:
            with record_function("stage: " + name):
                return fn(*args, **kwargs)

        return inner

    saved = {n: getattr(pipeline, n) for n in PIPELINE_STAGES}
    for n, fn in saved.items():
        setattr(pipeline, n, scoped(fn, n))
    for n in NETWORK_STAGES:
        setattr(net, n, scoped(getattr(net, n), n))  # instance attributes shadow the methods
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(pipeline, n, fn)
        for n in NETWORK_STAGES:
            delattr(net, n)


def profile_forward(
    net: Any, x: Any, rounds: int, iterations: int = 3, forward: Optional[Callable[[], Any]] = None
) -> Dict[str, Any]:
    """Where the sync-free forward's time goes: ``torch.profiler`` over ``iterations`` eager runs of the very
    kernels the CUDA graph replays (the graph itself hides them): each stage's time (inclusive, from its
    ``stage_scopes`` range), the top ops by their own time, and the number of kernels per forward. On the CPU
    (a dry run) the CPU time stands in for device time. ``forward``: run this instead of ``net``'s sync-free
    forward, without the stage ranges (a compiled forward: wrapping the net's methods would change what Dynamo
    guards on)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rcnn_deploy.glue.sync_free import sync_free

    cuda = x.is_cuda

    def net_forward() -> None:
        with torch.no_grad(), sync_free(rounds):
            net(x.float() if x.dtype == torch.uint8 else x)

    scopes = stage_scopes(net) if forward is None else contextlib.nullcontext()
    forward = forward or net_forward
    forward()
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with scopes, profile(activities=activities) as prof:
        for _ in range(iterations):
            forward()
        if cuda:
            torch.cuda.synchronize()

    def us(e: Any, own: bool) -> float:
        if cuda:
            name = "self_device_time_total" if own else "device_time_total"
            return float(getattr(e, name, getattr(e, name.replace("device", "cuda"), 0.0)))
        return float(e.self_cpu_time_total if own else e.cpu_time_total)

    events = prof.key_averages()
    stages = {e.key[len("stage: ") :]: us(e, own=False) for e in events if e.key.startswith("stage: ")}
    ops = sorted(
        ((us(e, own=True), e.key, int(e.count)) for e in events if not e.key.startswith("stage: ")), reverse=True
    )
    total = sum(t for t, _, _ in ops)
    kernels = sum(1 for e in prof.events() if cuda and str(getattr(e, "device_type", "")).endswith("CUDA"))

    def ms(v: float) -> float:
        return round(v / 1e3 / iterations, 3)

    return {
        "device": "cuda" if cuda else "cpu",
        "batch": int(x.shape[0]),
        "nms_rounds": rounds,
        "iterations": iterations,
        "ms_per_forward": ms(total),
        "kernels_per_forward": kernels // iterations if cuda else None,
        "stages_ms": {k: ms(v) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "calls_per_forward": c // iterations, "ms_per_forward": ms(t)} for t, k, c in ops[:30]],
    }


def mask_agreement(host: List[Any], gpu: List[Any]) -> Dict[str, Any]:
    """Two detectors' results on the same images, the same model outputs but masks pasted on the host and on the
    GPU: how many images have the same boxes, and of their masks how many have the same COCO RLE string; where
    strings differ, the summed difference of the two masks' areas and their smallest IoU (pycocotools)."""
    from pycocotools import mask as mask_util

    same_boxes = masks = identical = differing_pixels = 0
    min_iou = 1.0
    for h, g in zip(host, gpu):
        if len(h) != len(g) or not np.array_equal(h.boxes, g.boxes):
            continue
        same_boxes += 1
        for i in range(len(h)):
            a, b = h.pasted.rle(i), g.pasted.rle(i)
            masks += 1
            if a == b:
                identical += 1
                continue
            ra, rb = ({"size": r["size"], "counts": r["counts"].encode("ascii")} for r in (a, b))
            differing_pixels += int(abs(int(mask_util.area(ra)) - int(mask_util.area(rb))))
            min_iou = min(min_iou, float(mask_util.iou([ra], [rb], [0])[0, 0]))
    return {"images": len(host), "images_same_boxes": same_boxes, "masks": masks, "masks_identical": identical,
            "area_difference_pixels": differing_pixels, "min_iou_of_differing": round(min_iou, 6)}  # fmt: skip


def precapture(det: Any, batch: int) -> None:
    """Capture ``det``'s CUDA graph for ``batch`` uint8 images here, on the calling (main) thread, rather than in
    the runner's model thread at the first batch (run 16's GPU-decode detector crashed capturing there)."""
    import torch

    det.cuda_model(torch.zeros((batch, 3, *det.input_hw), dtype=torch.uint8, device=det.cuda_model.device))
    torch.cuda.synchronize()


def slots_ab(det: Any, paths: List[str], batch: int, processes: Optional[int], tmp: str, pairs: int) -> List[Any]:
    """``pairs`` pairs of stream passes, the page-locked slots and the copy, alternating which goes first: each
    pass's img/s and GpuBatchModel's host ms per batch by stage."""
    from e2e_trt import _AB_KEEP  # this folder; torch-free
    from e2e_trt import slots_ab as passes

    keep = (*_AB_KEEP, "stage_ms_per_batch")
    return passes(partial(stream_pass, det, paths, batch, processes), tmp, pairs, keep=keep)


def stream_pass(det: Any, paths: List[str], batch: int, processes: Optional[int], out_dir: str) -> Dict[str, Any]:
    """One pass of ``Detector.stream`` writing like ``infer`` (no PNG): the TensorRT benchmark's, shared."""
    from e2e_trt import stream_pass as trt_stream_pass  # this folder; torch-free, for the py39 TensorRT side

    # GpuBatchModel's host seconds by stage, and its GpuLetterbox's (decode call, waits before reusing memory)
    stages = getattr(det.batch_model, "stage_s", None)
    lb_s = getattr(getattr(det.batch_model, "letterbox", None), "host_s", None)
    for d in (stages, lb_s):
        if d is not None:
            d.update(dict.fromkeys(d, 0.0))
    res = trt_stream_pass(det, paths, batch, None, out_dir, processes)
    if stages is not None:  # ms per batch: where submit's time goes (letterbox holds decode and reuse_wait)
        both = {**stages, **(lb_s or {})}
        res["stage_ms_per_batch"] = {k: round(v * 1e3 / max(res["batches"], 1), 2) for k, v in both.items()}
    return res


def latency(det: Any, paths: List[str], n: int) -> Dict[str, Any]:
    from rcnn_deploy.runtime.coco import detections_to_coco
    from rcnn_deploy.runtime.stream import percentiles

    walls, stages = [], getattr(det.batch_model, "stage_s", None)
    for i, p in enumerate(paths[:n]):
        if i == 3 and stages is not None:  # GpuBatchModel's host seconds by stage, over the timed images
            stages.update(dict.fromkeys(stages, 0.0))
        t0 = time.perf_counter()
        d = det([p])[0]
        detections_to_coco(d, 1, det.spec.category_ids, det.spec.label_ids)
        walls.append((time.perf_counter() - t0) * 1e3)
    res = dict(percentiles(walls[3:], (50, 90, 99)), images=len(walls) - 3)
    if stages is not None and len(walls) > 3:  # mean ms per image (finish: waiting for the GPU)
        res["stages_mean_ms"] = {k: round(v * 1e3 / (len(walls) - 3), 3) for k, v in stages.items()}
    return res


def faster_rcnn_from(checkpoint: str) -> Any:
    """The checkpoint's backbone, RPN and box head as a Faster R-CNN (same classes; the mask head dropped)."""
    import torch

    from rcnn_deploy.models.build import build_model

    mask = build_model("torchvision-maskrcnn", checkpoint)
    net = build_model("torchvision-fasterrcnn", None, class_names=list(mask.spec.class_names))
    state = {k: v for k, v in mask.state_dict().items() if "mask_head" not in k and "mask_predictor" not in k}
    net.load_state_dict(state, strict=True)
    net.checkpoint_input_hw = getattr(mask, "checkpoint_input_hw", None)
    net.spec = net.spec.replace(category_ids=mask.spec.category_ids, label_ids=mask.spec.label_ids)
    return net.to(torch.float32)


def main() -> None:
    import torch

    from rcnn_deploy._io import atomic_write_json
    from rcnn_deploy.api import Detector
    from rcnn_deploy.runtime.preprocess import find_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--size", type=int, default=1344)
    ap.add_argument("--images", required=True)
    ap.add_argument("--val", default=None, help="synthetic COCO folder (images/, annotations.json) for mAP")
    ap.add_argument("--out", required=True)
    ap.add_argument("--precisions", default="fp32,fp16,bf16")
    ap.add_argument("--stream-images", type=int, default=256)
    ap.add_argument("--val-images", type=int, default=200)
    ap.add_argument("--processes", type=int, default=max((os.cpu_count() or 2) - 2, 1))
    ap.add_argument("--latency-images", type=int, default=60)
    ap.add_argument(
        "--gpu-decode-processes",
        type=int,
        default=None,
        help="worker processes of the GPU-decode rows (default: the detector's: api.GPU_DECODE_PROCESSES, none "
        "with GPU post-processing)",
    )
    ap.add_argument(
        "--batches",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[8, 1],
        help="the stream, gpu_decode, gpu_post and gpu_decode_post phases' batch sizes, in this order (default 8,1)",
    )
    ap.add_argument(
        "--sample-threads",
        action="store_true",
        help="after each batch-8 stream row, one more pass with thread_sampler.py sampling where the process's "
        "threads sit (its img/s is not a result: the sampler takes the GIL every 2 ms); in the row as thread_samples",
    )
    ap.add_argument(
        "--slots-ab",
        type=int,
        default=0,
        help="host-decode stream rows at batch > 1: this many more pairs of passes, page-locked slots and the copy "
        "(RCNN_DEPLOY_PINNED_SLOTS=1 and 0) alternating which goes first (stream_slots_ab)",
    )
    ap.add_argument("--parity-images", type=int, default=64, help="of --images: GPU against host decode at --size")
    ap.add_argument("--skip-faster", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fp16 only: the model alone and streamed (host decode)")
    ap.add_argument("--nms-rounds", type=int, default=32, help="NMS fixpoint rounds captured first")
    ap.add_argument(
        "--gpu-decoder",
        choices=GPU_DECODERS,
        default="auto",
        help="the JPEG decoder of the GPU-decode rows (auto: nvImageCodec when installed, else torchvision's "
        "decode_jpeg); the rows say which one ran",
    )
    ap.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="also measure the sync-free forward through torch.compile in this mode (phase compile; see above)",
    )
    ap.add_argument("--compile-parity-images", type=int, default=64, help="files for the compiled-vs-uncompiled match")
    ap.add_argument(
        "--stream-compile",
        choices=COMPILE_MODES,
        default=None,
        help="the Mask R-CNN rows of the other phases (stream, gpu_decode, gpu_post) compile the sync-free forward "
        "in this mode (their rows then say 'compile'); it does not add the compile phase",
    )
    ap.add_argument(
        "--roi-align",
        choices=SYNC_FREE_ROI_ALIGNS,
        default=None,
        help="the sync-free ROIAlign of every row but the roi_align phase's (glue.roi_align.SYNC_FREE_ROI_ALIGN; "
        "default: the package's); each row says which one ran",
    )
    ap.add_argument(
        "--post-layout",
        choices=("grid", "ragged"),
        default="grid",
        help="GPU post-processing's layout (glue.gpu_post): grid, the default (one copy back, strings made on the "
        "device), or ragged (the layout before session 23: the host computes regions and taps between "
        "synchronisations), for an A/B on one machine; each GPU-post row says which ran",
    )
    ap.add_argument(
        "--nms-fixpoint",
        choices=SYNC_FREE_FIXPOINTS,
        default=None,
        help="how the sync-free NMS runs its rounds (glue.sync_free.SYNC_FREE_FIXPOINT; default: the package's, "
        "bits since session 24): an A/B on one machine; each row says which ran",
    )
    ap.add_argument(
        "--phases",
        default=",".join(p for p in PHASES if p != "compile"),
        help=f"comma-separated subset of {','.join(PHASES)} (each can run in a process of its own: a crash in one "
        "then loses only its rows; compile needs --compile MODE, which adds it)",
    )
    a = ap.parse_args()
    if a.post_layout == "ragged":
        from rcnn_deploy.glue import gpu_post as gpu_post_mod

        gpu_post_mod.GRID_MAX_ELEMENTS = 0  # no grid fits: postprocess_batch takes the ragged layout
    if a.nms_fixpoint:
        from rcnn_deploy.glue import sync_free as sync_free_mod

        sync_free_mod.SYNC_FREE_FIXPOINT = a.nms_fixpoint
    if a.roi_align:
        from rcnn_deploy.glue import roi_align as roi_align_mod

        roi_align_mod.SYNC_FREE_ROI_ALIGN = a.roi_align
    phases = [p for p in a.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        ap.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if a.quick:
        phases = ["stream"]
    if a.compile and "compile" not in phases:
        phases.append("compile")  # --compile MODE adds the phase to whatever else runs
    if "compile" in phases and not a.compile:
        ap.error("phase compile needs --compile MODE")
    if a.stream_compile and "compile" in phases:
        ap.error("--stream-compile compiles every Mask R-CNN row; the compile phase needs its uncompiled reference")
    import faulthandler

    stacks = open(os.path.splitext(a.out)[0] + ".stacks.txt", "w")  # noqa: SIM115 - open for the whole run
    faulthandler.dump_traceback_later(90, repeat=True, file=stacks)  # where a slow or stuck phase is
    # and where a crash is: run 28b's first stream_compiled pass died of a segmentation fault with no Python stack
    faulthandler.enable(file=stacks, all_threads=True)
    paths = [str(p) for p in find_images(a.images)]
    hw = (a.size, a.size)
    doc: Dict[str, Any] = {
        "script": "benchmarks/e2e_torch_cuda.py",
        "machine": {
            "host": socket.gethostname(),
            "gpu": torch.cuda.get_device_name(0),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "commit": commit(),
        "images": {"folder": a.images, "count": len(paths)},
        "size": a.size,
        "rows": [],
        "parity": {},
    }

    def save() -> None:
        atomic_write_json(a.out, doc)

    probe = Detector.load(a.checkpoint, input_hw=hw)  # host stages only, to letterbox real images
    probe.input_dtype = np.dtype(np.uint8)
    batch_images = probe.preprocess(paths[:8])[0]
    del probe

    def compute_row(
        label: str, make: Any, precision: str, batch: int, graph: bool = True, rows: Optional[List[Any]] = None
    ) -> Any:
        t0 = time.perf_counter()
        det = make(precision, batch, graph)
        from rcnn_deploy.glue import roi_align as roi_align_mod

        row: Dict[str, Any] = {"model": label, "precision": precision, "batch": batch, "cuda_graph": graph}
        row["roi_align"] = roi_align_mod.SYNC_FREE_ROI_ALIGN
        from rcnn_deploy.glue import sync_free as sync_free_mod

        row["nms_fixpoint"] = sync_free_mod.SYNC_FREE_FIXPOINT
        if getattr(det.batch_model, "post", None) is not None:
            row["post_layout"] = a.post_layout
        if a.stream_compile and rows is None and label.startswith("mask_rcnn"):
            row["compile"] = a.stream_compile
        if det.gpu_decode:
            row["gpu_decoder"] = det.batch_model.letterbox.decoder
            if det.batch_model.letterbox.decoder_note:
                row["gpu_decoder_note"] = det.batch_model.letterbox.decoder_note
        row.update(gpu_compute(det, batch, batch_images, iterations=100 if graph else 20))
        row["nms_rounds"] = det.cuda_model.nms_rounds
        row["load_capture_time_s"] = round(time.perf_counter() - t0, 1)
        (doc["rows"] if rows is None else rows).append(row)
        save()
        print(row, flush=True)
        return det, row

    def stream_rows(det: Any, row: Dict[str, Any], key: str, batch: int, processes: Optional[int]) -> None:
        files = paths[: a.stream_images]
        with tempfile.TemporaryDirectory() as tmp:
            stream_pass(det, files, batch, processes, os.path.join(tmp, "warm"))
            row[key] = stream_pass(det, files, batch, processes, os.path.join(tmp, "run"))
            if a.sample_threads and batch > 1:
                from thread_sampler import ThreadSampler  # this folder

                sampler = ThreadSampler().start()
                sampled = stream_pass(det, files, batch, processes, os.path.join(tmp, "sampled"))
                row[key + "_thread_samples"] = dict(sampler.stop(), images_per_s=sampled["images_per_s"])
            if batch > 1 and key == "stream":  # host decode: the input slots the other way (page-locked or copied)
                from e2e_trt import slots_variant_pass  # this folder; torch-free

                variant = slots_variant_pass(lambda d: stream_pass(det, files, batch, processes, d), tmp, row[key])
                if variant is not None:
                    row[variant[0]] = variant[1]
                    if a.slots_ab:
                        row[key + "_slots_ab"] = slots_ab(det, files, batch, processes, tmp, a.slots_ab)
        row[key]["nms_fallbacks_total"] = det.cuda_model.fallbacks
        if batch == 1:
            row[key.replace("stream", "latency") + "_ms"] = latency(det, paths, a.latency_images)
        save()
        print(key, row[key], flush=True)

    def mask_rcnn(
        precision: str,
        batch: int,
        graph: bool,
        gpu_decode: bool = False,
        gpu_post: bool = False,
        compile: Optional[str] = None,
    ) -> Any:
        compile = compile or a.stream_compile
        det = Detector.load(
            a.checkpoint,
            input_hw=hw,
            batch=batch,
            device="cuda",
            precision=precision,
            cuda_graph=graph,
            gpu_decode=gpu_decode,
            gpu_post=gpu_post,
            compile=compile,
            gpu_decoder=a.gpu_decoder,
        )
        det.cuda_model.nms_rounds = a.nms_rounds  # before the first call captures
        return det

    # 1. fp16 (the default GPU precision): the model alone, then end to end with host decode in processes
    if "stream" in phases:
        for batch in a.batches:
            det, row = compute_row("mask_rcnn", mask_rcnn, "fp16", batch)
            stream_rows(det, row, "stream", batch, a.processes)
            del det
            torch.cuda.empty_cache()
    # 2. accuracy: mAP per precision on the validation split, graph vs eager, GPU vs host decode
    if "parity" in phases and a.val:
        parity_rows(a, doc, save)
    # 3. the other precisions and the eager reference, model alone
    if "precisions" in phases:
        for precision in [p for p in a.precisions.split(",") if p != "fp16"]:
            for batch in (8, 1):
                compute_row("mask_rcnn", mask_rcnn, precision, batch)
                torch.cuda.empty_cache()
        for batch in (8, 1):
            compute_row("mask_rcnn", mask_rcnn, "fp32", batch, graph=False)
    # 4. Faster R-CNN (the checkpoint's box branch), fp16
    if "faster" in phases and not a.skip_faster:

        def faster(precision: str, batch: int, graph: bool, gpu_decode: bool = False) -> Any:
            net = faster_rcnn_from(a.checkpoint)
            return Detector.from_module(net, hw, batch, "cuda", precision, graph, gpu_decode)

        for batch in (8, 1):
            det, row = compute_row("faster_rcnn", faster, "fp16", batch)
            stream_rows(det, row, "stream", batch, a.processes)
            del det
    # 5. fp16 end to end with JPEGs decoded on the GPU (nvJPEG): its graph is captured here, on the main thread,
    #    before the stream (run 16's process crashed capturing it in the runner's model thread)
    if "gpu_decode" in phases:
        for batch in a.batches:
            det, row = compute_row("mask_rcnn_gpu_decode", partial(mask_rcnn, gpu_decode=True), "fp16", batch)
            stream_rows(det, row, "stream_gpu_decode", batch, a.gpu_decode_processes)
            del det
            torch.cuda.empty_cache()
    # 6. where the graph's time goes: the same kernels run eagerly under torch.profiler, fp16, batch 1 and 8
    if "profile" in phases:
        doc["profile"] = []
        for batch in (1, 8):
            det = mask_rcnn("fp16", batch, True)
            x = torch.from_numpy(np.ascontiguousarray(batch_images[:batch])).cuda()
            doc["profile"].append(profile_forward(det.cuda_model.net, x, det.cuda_model.nms_rounds))
            save()
            print("profile", json.dumps(doc["profile"][-1])[:2000], flush=True)
            del det
            torch.cuda.empty_cache()
    # 7. fp16 with the masks pasted and run-length encoded on the GPU (glue.gpu_post), host decode in processes and
    #    then GPU decode too: only boxes, scores, classes and RLE runs come back to the host
    if "gpu_post" in phases or "gpu_decode_post" in phases:
        rows = (("mask_rcnn_gpu_post", False, a.processes), ("mask_rcnn_gpu_decode_post", True, a.gpu_decode_processes))
        for label, gd, procs in rows if "gpu_post" in phases else rows[1:]:  # gpu_decode_post: GPU decode only
            for batch in a.batches:
                make = partial(mask_rcnn, gpu_decode=gd, gpu_post=True)
                det, row = compute_row(label, make, "fp16", batch)
                stream_rows(det, row, "stream", batch, procs)
                del det
                torch.cuda.empty_cache()
    # 8. torch.compile of the sync-free forward (--compile MODE): fp16 graphs, batch 1 and 8, beside the uncompiled
    if "compile" in phases and a.compile:
        compile_rows(a, doc, save, mask_rcnn, compute_row, batch_images, paths)
    # 9. the sync-free forward's multi-level ROIAlign: every box on every level ("levels") against one call over the
    #    levels stacked as images ("stacked", the default since session 15), fp16 graphs, and their padded outputs
    if "roi_align" in phases:
        roi_align_rows(doc, save, mask_rcnn, compute_row, batch_images)


def roi_align_rows(doc: Dict[str, Any], save: Any, mask_rcnn: Any, compute_row: Any, images: Any) -> None:
    """Phase ``roi_align``: per batch (8, 1) the fp16 CUDA-graph model with each sync-free ROIAlign
    (``glue.roi_align.SYNC_FREE_ROI_ALIGN``), timed like the other rows, and the stacked and Triton ones' padded
    outputs against the per-level one's on the same batch (``parity_padded_vs_levels``)."""
    import torch

    from rcnn_deploy.glue import roi_align as roi_align_mod

    sec: Dict[str, Any] = {"rows": []}
    doc["roi_align"] = sec
    default = roi_align_mod.SYNC_FREE_ROI_ALIGN
    try:
        for batch in (8, 1):
            x = torch.from_numpy(np.ascontiguousarray(images[:batch])).cuda()
            outs = {}
            for mode in ("levels", "stacked", "triton"):
                roi_align_mod.SYNC_FREE_ROI_ALIGN = mode
                try:
                    det, _ = compute_row("mask_rcnn", mask_rcnn, "fp16", batch, rows=sec["rows"])
                except Exception as e:  # noqa: BLE001 - a mode that fails is recorded, the others still run
                    sec["rows"].append({"roi_align": mode, "batch": batch, "error": f"{type(e).__name__}: {e}"})
                    save()
                    continue
                outs[mode] = {k: v.cpu().numpy() for k, v in det.cuda_model(x).items()}
                if mode != "levels" and "levels" in outs:
                    sec["rows"][-1]["parity_padded_vs_levels"] = padded_parity(outs["levels"], outs[mode])
                del det
                torch.cuda.empty_cache()
            save()
    finally:
        roi_align_mod.SYNC_FREE_ROI_ALIGN = default


def padded_parity(ref: Dict[str, Any], out: Dict[str, Any]) -> Dict[str, Any]:
    """Two forwards' padded outputs (host arrays) on the same batch, before any host postprocessing: whether they
    are identical, and their detections matched with ``compare_detections`` (by class and box IoU, not by slot:
    fp16 scores that tie or swap reorder the slots; masks as 28x28 probabilities thresholded at 0.5)."""
    from rcnn_deploy.evaluation.parity import compare_detections
    from rcnn_deploy.runtime.detections import Detections

    rep = compare_detections(Detections.from_padded(ref), Detections.from_padded(out), pasted_masks=False)
    res: Dict[str, Any] = {"identical": all(np.array_equal(ref[k], out[k]) for k in ref)}
    res.update({k: v for k, v in rep.to_dict().items() if k != "unmatched"})
    res["unmatched"] = len(rep.unmatched)
    return res


def dynamo_counts() -> Dict[str, Any]:
    """Dynamo's process-wide counters: graphs compiled and graph breaks (by reason)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "breaks": dict(counters["graph_break"])}


def compile_rows(
    a: Any, doc: Dict[str, Any], save: Any, mask_rcnn: Any, compute_row: Any, images: Any, paths: List[str]
) -> None:
    """The ``compile`` phase: per batch (1, 8) the uncompiled fp16 CUDA-graph model and the compiled one, each timed
    like the other rows (``gpu_compute``), the compiled one's compile time and Dynamo counts, both forwards' kernels
    per forward (torch.profiler over the uncaptured sync-free forward), and the compiled outputs against the
    uncompiled ones. Each compiled model starts from a reset Dynamo and, unless TORCHINDUCTOR_CACHE_DIR is set, an
    empty Inductor cache (a cold compile, what a first run pays)."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
    try:
        from torch._dynamo.variables.misc import ContextVarVariable  # noqa: F401

        contextvar_traced = True
    except ImportError:  # before PyTorch 2.14: every sync_free.active() breaks the graph
        contextvar_traced = False
    sec: Dict[str, Any] = {
        "mode": a.compile,
        "inductor_cache_dir": os.environ["TORCHINDUCTOR_CACHE_DIR"],
        "dynamo_traces_contextvar_get": contextvar_traced,
        "rows": [],
    }
    doc["compile"] = sec
    save()
    for batch in (1, 8):
        compile_batch(a, sec, save, mask_rcnn, compute_row, images, paths[: a.compile_parity_images], batch)


def kernels_per_forward(model: Any, x: Any) -> Dict[str, Any]:
    """``model``'s (a CudaGraphModel) sync-free forward, compiled or not, uncaptured under torch.profiler."""
    prof = profile_forward(model.net, x, model.nms_rounds, forward=lambda: model.forward(x, model.nms_rounds))
    out = {k: prof[k] for k in ("kernels_per_forward", "ms_per_forward")}
    out["top_ops"] = prof["top_ops"][:10]
    return out


def compile_batch(
    a: Any, sec: Dict[str, Any], save: Any, mask_rcnn: Any, compute_row: Any, images: Any, files: List[str], batch: int
) -> None:
    """One batch size of :func:`compile_rows`."""
    import traceback

    import torch

    from rcnn_deploy.evaluation.parity import compare_detections

    x = torch.from_numpy(np.ascontiguousarray(images[:batch])).cuda()
    ref_det, ref_row = compute_row("mask_rcnn", mask_rcnn, "fp16", batch, rows=sec["rows"])
    ref_row["compile"] = None
    ref_row["profile"] = kernels_per_forward(ref_det.cuda_model, x)
    ref_out = {k: v.cpu().numpy() for k, v in ref_det.cuda_model(x).items()}
    save()
    torch._dynamo.reset()
    before = dynamo_counts()
    t0 = time.perf_counter()
    try:
        det, row = compute_row("mask_rcnn", partial(mask_rcnn, compile=a.compile), "fp16", batch, rows=sec["rows"])
    except Exception as e:  # noqa: BLE001 - recorded, and the benchmark goes on
        err: Dict[str, Any] = {"model": "mask_rcnn", "precision": "fp16", "batch": batch, "cuda_graph": True}
        err["compile"] = a.compile
        err["error"] = f"{type(e).__name__}: {e}"[:4000]
        err["traceback"] = traceback.format_exc()[-6000:]
        err["seconds_before_error"] = round(time.perf_counter() - t0, 1)
        sec["rows"].append(err)
        save()
        print("compile error", err["error"][:2000], flush=True)
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return
    model = det.cuda_model
    after = dynamo_counts()
    row["compile"] = a.compile
    row["compile_first_call_s"] = dict(model.forward.compile_seconds)  # trace + compile + first run, per shape
    row["dynamo"] = {
        "graphs": after["graphs"] - before["graphs"],
        "graph_breaks": sum(after["breaks"].values()) - sum(before["breaks"].values()),
        "break_reasons": [k[:300] for k in after["breaks"]][:5],
    }
    row["speedup_vs_uncompiled"] = round(ref_row["gpu_compute_ms"] / row["gpu_compute_ms"], 3)
    save()
    print("compiled", row, flush=True)

    def padded() -> Dict[str, Any]:
        return padded_parity(ref_out, {k: v.cpu().numpy() for k, v in model(x).items()})

    def on_files() -> Dict[str, Any]:
        return parity_of(ref_det, det, files, compare_detections)

    for name, fn in (
        ("profile", lambda: kernels_per_forward(model, x)),
        ("parity_padded", padded),
        ("parity_images", on_files),
    ):
        try:
            row[name] = fn()
        except Exception as e:  # noqa: BLE001 - recorded in the row
            row[name] = {"error": f"{type(e).__name__}: {e}"[:4000]}
        save()
        print(name, json.dumps(row[name])[:1500], flush=True)
    torch.cuda.empty_cache()


def parity_of(ref: Any, cand: Any, files: List[str], compare: Any) -> Dict[str, Any]:
    """Two detectors' detections on ``files``, matched (the parity phase's helper and report)."""
    spec = ref.spec
    rep = compare(ref(files), cand(files), nms_iou=spec.box_nms_thresh, max_detections=spec.detections_per_img)
    out = {k: v for k, v in rep.to_dict().items() if k != "unmatched"}
    out["unmatched"] = len(rep.unmatched)
    return out


def decode_diff(paths: List[str], decoder: str = "torchvision") -> Dict[str, Any]:
    """Pixels of a GPU decoder (``"torchvision"``: nvJPEG through ``decode_jpeg`` on CUDA; ``"nvimgcodec"``:
    nvImageCodec as ``GpuLetterbox`` runs it) against the host decoder (``load_rgb``) on the same files, and on
    the same pictures re-encoded without chroma subsampling (4:4:4): if the second differs much less, the
    decoders' chroma upsampling (libjpeg-turbo's "fancy" triangular filter against nvJPEG's) is the difference.
    Run 17 measured torchvision-decoded detections matching only 91 % of the host-decoded ones."""
    import io

    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from rcnn_deploy.runtime.preprocess import load_rgb

    nvimg = None
    if decoder == "nvimgcodec":
        from rcnn_deploy.backends.nvimgcodec import NvImageCodec

        nvimg = NvImageCodec()

    def gpu_decode(b: bytes) -> np.ndarray:
        if nvimg is not None:
            stream = torch.cuda.current_stream()
            (img,) = nvimg.decode([np.frombuffer(b, dtype=np.uint8)], stream.cuda_stream)
            return torch.as_tensor(img, device="cuda").cpu().numpy()
        t = decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB, device="cuda")
        return t.permute(1, 2, 0).cpu().numpy()

    def diffs(blobs: List[bytes]) -> Dict[str, Any]:
        d = []
        for b in blobs:
            host = load_rgb(b).astype(np.int16)
            d.append(np.abs(gpu_decode(b).astype(np.int16) - host))
        a = np.concatenate([x.reshape(-1) for x in d])
        return {
            "max": int(a.max()),
            "mean": round(float(a.mean()), 4),
            "over_2": round(float((a > 2).mean()), 5),
            "over_16": round(float((a > 16).mean()), 5),
            "identical": round(float((a == 0).mean()), 5),
        }

    from pathlib import Path

    from PIL import JpegImagePlugin

    raw = [Path(p).read_bytes() for p in paths]
    s444 = []
    for b in raw:
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).convert("RGB").save(buf, "JPEG", quality=95, subsampling=0)
        s444.append(buf.getvalue())
    sampling = JpegImagePlugin.get_sampling(Image.open(io.BytesIO(raw[0])))  # 0: 4:4:4, 1: 4:2:2, 2: 4:2:0
    return {
        "decoder": decoder,
        "images": len(raw),
        "source_subsampling": sampling,
        "as_saved": diffs(raw),
        "reencoded_444": diffs(s444),
    }


def parity_rows(a: Any, doc: Dict[str, Any], save: Any) -> None:
    """mAP on the synthetic validation set at the checkpoint's size, and graph-vs-eager detections."""
    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.nvimgcodec import available as nvimgcodec_available
    from rcnn_deploy.evaluation.dataset import evaluate_detector
    from rcnn_deploy.evaluation.parity import compare_detections
    from rcnn_deploy.runtime.preprocess import find_images

    ann = os.path.join(a.val, "annotations.json")
    images = os.path.join(a.val, "images")
    par: Dict[str, Any] = {"val": a.val}
    variants = [("graph_fp16", "fp16", True), ("graph_fp32", "fp32", True), ("eager_fp32", "fp32", False)]
    variants += [(f"graph_{p}", p, True) for p in a.precisions.split(",") if p not in ("fp16", "fp32")]
    for name, precision, graph in variants:
        det = Detector.load(a.checkpoint, batch=8, device="cuda", precision=precision, cuda_graph=graph)
        r = evaluate_detector(det, ann, images, max_images=a.val_images)
        par[name] = {
            "bbox_AP": round(r["metrics"]["bbox"]["AP"], 4),
            "segm_AP": round(r["metrics"].get("segm", {}).get("AP", float("nan")), 4),
            "images": r["images"],
            "nms_fallbacks": det.cuda_model.fallbacks if graph else None,
        }
        print(name, par[name], flush=True)
        doc["parity"] = par
        save()
    paths = [str(p) for p in find_images(images)][: a.val_images]
    # fp32 meaning IEEE fp32 on both sides: PyTorch lets cuDNN convolutions use TF32 by default, and run 17's
    # comparison (TF32 allowed) had a few matched pairs far apart (min box IoU 0.64, score difference 0.09). Since
    # session 13 the fp32 model turns TF32 off itself (backends.torch_cuda.ieee_fp32); said here too for clarity.
    from rcnn_deploy.backends.torch_cuda import ieee_fp32, tf32_allowed

    ieee_fp32("fp32")
    par["graph_fp32_vs_eager_fp32_tf32"] = tf32_allowed()
    eager = Detector.load(a.checkpoint, batch=8, device="cuda", precision="fp32", cuda_graph=False)
    graph = Detector.load(a.checkpoint, batch=8, device="cuda", precision="fp32", cuda_graph=True)
    spec = eager.spec
    rep = compare_detections(
        eager(paths), graph(paths), nms_iou=spec.box_nms_thresh, max_detections=spec.detections_per_img
    )
    par["graph_fp32_vs_eager_fp32"] = {k: v for k, v in rep.to_dict().items() if k != "unmatched"}
    par["graph_fp32_vs_eager_fp32"]["unmatched"] = len(rep.unmatched)
    doc["parity"] = par
    save()
    print(par["graph_fp32_vs_eager_fp32"], flush=True)
    jpg = a.val.rstrip("/") + "_jpg"
    # last: the GPU-decode detector's first capture crashed the process in run 16
    if os.path.isdir(jpg):  # GPU decode + letterbox against the host path, on JPEGs
        jann, jimages = os.path.join(jpg, "annotations.json"), os.path.join(jpg, "images")
        par["decode_pixels_nvjpeg_vs_host"] = decode_diff([str(p) for p in find_images(jimages)][:20])
        print("decode pixels", par["decode_pixels_nvjpeg_vs_host"], flush=True)
        save()
        if nvimgcodec_available():  # the decoder GpuLetterbox's "auto" takes when it is installed (session 18)
            for key, folder in (("val_jpg", jimages), ("images", a.images)):
                par[f"decode_pixels_nvimgcodec_vs_host_{key}"] = decode_diff(
                    [str(p) for p in find_images(folder)][:20], "nvimgcodec"
                )
                print("decode pixels nvimgcodec", key, par[f"decode_pixels_nvimgcodec_vs_host_{key}"], flush=True)
                save()
        for name, gd in (("host_decode_fp16", False), ("gpu_decode_fp16", True)):
            det = Detector.load(
                a.checkpoint, batch=8, device="cuda", precision="fp16", gpu_decode=gd, gpu_decoder=a.gpu_decoder
            )
            precapture(det, 8)
            r = evaluate_detector(det, jann, jimages, max_images=a.val_images)
            par[name] = {
                "bbox_AP": round(r["metrics"]["bbox"]["AP"], 4),
                "segm_AP": round(r["metrics"].get("segm", {}).get("AP", float("nan")), 4),
                "images": r["images"],
            }
            print(name, par[name], flush=True)
        jpaths = [str(p) for p in find_images(jimages)][: a.val_images]
        host = Detector.load(a.checkpoint, batch=8, device="cuda", precision="fp16")
        gpu = Detector.load(
            a.checkpoint, batch=8, device="cuda", precision="fp16", gpu_decode=True, gpu_decoder=a.gpu_decoder
        )
        precapture(gpu, 8)
        rep = compare_detections(host(jpaths), gpu(jpaths))
        par["gpu_decode_vs_host_decode_fp16"] = {k: v for k, v in rep.to_dict().items() if k != "unmatched"}
        par["gpu_decode_vs_host_decode_fp16"]["unmatched"] = len(rep.unmatched)
        par["gpu_decode_vs_host_decode_fp16"]["gpu_decoder"] = gpu.batch_model.letterbox.decoder
        doc["parity"] = par
        save()
        # masks pasted and RLE-encoded on the GPU (glue.gpu_post: the Triton kernel where it runs) against the
        # host's paste of the same model's outputs: mask by mask, and the mAP
        post = Detector.load(
            a.checkpoint, batch=8, device="cuda", precision="fp16", gpu_decode=True, gpu_post=True,
            gpu_decoder=a.gpu_decoder,
        )  # fmt: skip
        precapture(post, 8)
        par["gpu_post_vs_host_post_fp16"] = mask_agreement(gpu(jpaths), post(jpaths))
        r = evaluate_detector(post, jann, jimages, max_images=a.val_images)
        par["gpu_decode_gpu_post_fp16"] = {
            "bbox_AP": round(r["metrics"]["bbox"]["AP"], 4),
            "segm_AP": round(r["metrics"].get("segm", {}).get("AP", float("nan")), 4),
            "images": r["images"],
        }
        print("gpu post", par["gpu_post_vs_host_post_fp16"], par["gpu_decode_gpu_post_fp16"], flush=True)
        save()
        del host, gpu, post
        # the same on the benchmark's 1920x1080 JPEGs at the benchmark's size (--size): the letterbox resamples too
        # (host: OpenCV; GPU: F.interpolate in float32 up to session 17, OpenCV's arithmetic in int32 since), as in
        # e2e_trt.py's e2e_images rows
        big = (a.size, a.size)
        bpaths = [str(p) for p in find_images(a.images)][: a.parity_images]
        host = Detector.load(a.checkpoint, input_hw=big, batch=8, device="cuda", precision="fp16")
        gpu = Detector.load(
            a.checkpoint,
            input_hw=big,
            batch=8,
            device="cuda",
            precision="fp16",
            gpu_decode=True,
            gpu_decoder=a.gpu_decoder,
        )
        precapture(gpu, 8)
        rep = compare_detections(host(bpaths), gpu(bpaths))
        key = f"gpu_decode_vs_host_decode_fp16_images_{a.size}"
        par[key] = {k: v for k, v in rep.to_dict().items() if k != "unmatched"}
        par[key]["unmatched"] = len(rep.unmatched)
        par[key]["gpu_decoder"] = gpu.batch_model.letterbox.decoder
        save()
        print(key, json.dumps(par[key])[:400], flush=True)
        bann = os.path.join(os.path.dirname(a.images.rstrip("/")), "annotations.json")
        if os.path.isfile(bann):  # COCO mAP of both on those images (the synthetic set's own annotations)
            for name, det in (("host_decode", host), ("gpu_decode", gpu)):
                r = evaluate_detector(det, bann, a.images, max_images=a.parity_images)
                par[f"{name}_fp16_images_{a.size}"] = {
                    "bbox_AP": round(r["metrics"]["bbox"]["AP"], 4),
                    "segm_AP": round(r["metrics"].get("segm", {}).get("AP", float("nan")), 4),
                    "images": r["images"],
                }
                print(name, par[f"{name}_fp16_images_{a.size}"], flush=True)
            save()


if __name__ == "__main__":
    main()
