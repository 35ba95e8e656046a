"""End-to-end throughput and latency of a fused TensorRT engine through the streaming runner, in the TensorRT
process itself (the GPU machine's CPython 3.9 + TensorRT 8.6: no torch), as a user of that stack runs it.

    py39 benchmarks/e2e_trt.py --engine out/b8.engine [--engine out/b1.engine] --images DIR --out e2e_trt.json

Per engine (its batch is the engine's optimization profile's largest):
  gpu_compute_ms    the engine alone, input already on the GPU, CUDA-graph replay (median of 200)
  stream            ``Detector.stream`` over the folder: decode + letterbox in worker threads, batches into pinned
                    buffers, double-buffered upload/compute/download, postprocessing (boxes back to the image,
                    masks as COCO RLE from box regions, TSV per image): img/s over the whole folder, twice (the
                    first pass warms the page cache and the engine and starts the worker processes, which the
                    detector keeps), the second reported; ``main_cpu_s``: this process's CPU time in the pass
  latency           batch-1 engines: ``Detector([path])`` one image at a time, wall per image (p50/p90/p99) to
                    the COCO results with RLE masks (``latency_ms``) and to the Detections; ``latency_split_rle_ms``:
                    the RLE made in ``--split-rle`` pieces over worker processes (``detections_to_coco(executor=)``)
  stages            single-thread host stage costs per image (decode, letterbox, postprocess) for reference

With ``--gpu-decode`` (nvImageCodec importable): the same stream / latency rows with the JPEGs decoded by nvJPEG
and letterboxed by the export's letterbox engine on the GPU (``Detector.from_engine(gpu_decode=True)``), and
``gpu_decode_parity``: its detections against the host-decoded ones (``--parity-images`` of the folder, and of
``--parity-dir`` when given: ``rcnn_deploy.evaluation.parity.compare_detections``; with annotations there, both
paths' COCO AP). ``--gpu-decode-variants BACKEND:SLOTS,...`` (default ``default:3``): the first is the GPU-decode
row above; each further one (another nvImageCodec backend, ``gpu_pre.DECODE_BACKENDS``, or slot count) adds its
stream / latency rows to ``gpu_decode_variants``, and its parity against the host on ``--parity-images`` of the
folder. The GPU-decode rows of an engine run in a child process of this script (its host-decode detector closed
first; the host detections and AP they compare with are computed before and handed over): run 20's batch-1
process died deserializing the engine a second time beside the host-decode detector. The GPU-decode rows use
``--gpu-decode-processes`` worker processes (default: what ``Detector.stream`` starts for GPU decoding, at most
``api.GPU_DECODE_PROCESSES``; ``--processes`` is the host-decode rows'; both were 14 up to run 23).

Writes the JSON atomically after each engine (a killed run keeps what it measured).
"""

import argparse
import contextlib
import gc
import json
import os
import pickle
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # thread_cpu.py beside this file

from _tree import tree  # this folder (on sys.path when run as a script)
from thread_cpu import ThreadCPU  # noqa: E402

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.runtime._opencv import opencv  # noqa: E402
from rcnn_deploy.runtime.preprocess import find_images, letterbox, load_rgb  # noqa: E402
from rcnn_deploy.runtime.stream import StreamStats, percentiles  # noqa: E402
from rcnn_deploy.runtime.writers import InferWriter  # noqa: E402


def commit():
    return tree()  # the tree sent (benchmarks/device_session.sh), else git's


def gpu_name():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return None


def stream_pass(det, paths, batch, workers, out_dir, processes=None):
    writer = InferWriter(out_dir, det.spec, backend=det.backend, visualize=False, total=len(paths))
    stats = StreamStats()
    n_ok = n_det = 0
    files = [str(p) for p in paths]
    per_image = writer.per_image
    procs = det.stream_processes(processes)  # what det.stream takes for None
    pool = det.__dict__.get("_worker_pools", {}).get(procs)
    by_thread = ThreadCPU(pool.pids() if pool is not None else ())  # the pool's workers when kept from a last pass
    cpu_by_thread = None
    cpu0 = time.process_time()
    stream = det.stream(
        files, batch=batch, workers=workers, per_image=per_image, stats=stats, processes=processes, return_masks=False
    )  # as infer runs it
    for i, r in enumerate(stream, 1):
        writer.add(r)
        n_ok += r.ok
        n_det += len(r.detections) if r.ok else 0
        if i == len(files):  # the last result: the stream's threads are still up (they end with the generator)
            cpu_by_thread = by_thread.stop()
    summary = writer.close(stats)
    main_cpu = time.process_time() - cpu0
    return {
        "images": len(paths),
        "ok": n_ok,
        "detections": n_det,
        "seconds": round(stats.seconds, 3),
        "images_per_s": round(len(paths) / stats.seconds, 1),
        "batches": stats.batches,
        "failures": len(summary["failures"]),
        "processes": procs,  # the worker processes the stream used (its default where none was given)
        "model_submit_s": round(stats.model_submit_s, 3),
        "model_wait_s": round(stats.model_wait_s, 3),
        "model_starved_s": round(stats.starved_s, 3),
        # CPU seconds of this process (all its threads; not the worker processes') over the pass: near
        # "seconds" means the calling process is what limits the stream
        "main_cpu_s": round(main_cpu, 3),
        # the model uploaded straight from the page-locked shared-memory slots (runtime.stream.host_inputs_pinned)
        "pinned_slots": stats.pinned_slots,
        # the same by thread of this process (thread_cpu.py), and the worker processes' (kept from the warm pass)
        "cpu_s_by_thread": cpu_by_thread,
    }


@contextlib.contextmanager
def slots_way(pinned):
    """Streams started inside page-lock their input slots (``pinned``) or copy them (``RCNN_DEPLOY_PINNED_SLOTS``)."""
    os.environ["RCNN_DEPLOY_PINNED_SLOTS"] = "1" if pinned else "0"
    try:
        yield
    finally:
        os.environ.pop("RCNN_DEPLOY_PINNED_SLOTS", None)


def slots_variant_pass(run_pass, tmp, ref):
    """``ref``: a stream pass written to ``tmp/run``. The same pass again, ``run_pass(out_dir)``, the other way round
    for the input slots (``RCNN_DEPLOY_PINNED_SLOTS``: page-locked and uploaded from, or copied on the model thread,
    the default), written to ``tmp/variant``; with whether its COCO results equal ``ref``'s entry for entry. Returns
    (key, row), or None when the model took the slots neither way (no worker processes, or GPU decoding)."""
    pinned = not ref.get("pinned_slots")
    with slots_way(pinned):
        row = run_pass(os.path.join(tmp, "variant"))
    if bool(row.get("pinned_slots")) != pinned:
        return None
    with open(os.path.join(tmp, "run", "results.json")) as f:
        want = json.load(f)
    with open(os.path.join(tmp, "variant", "results.json")) as f:
        got = json.load(f)
    same = sum(x == y for x, y in zip(want, got))
    row["results_equal_to_stream"] = {"entries": len(want), "variant_entries": len(got), "equal": same}
    return ("stream_pinned_slots" if pinned else "stream_copy_slots"), row


_AB_KEEP = ("images_per_s", "pinned_slots", "model_submit_s", "model_wait_s", "main_cpu_s", "model_starved_s")


def slots_ab(run_pass, tmp, pairs, keep=_AB_KEEP):
    """``pairs`` pairs of stream passes, ``run_pass(out_dir)``, with the input slots page-locked and copied,
    alternating which goes first (``--slots-ab`` here and in e2e_torch_cuda.py): each pass's img/s and where its
    time went (``keep``: the pass's keys kept)."""
    out = []
    for i in range(pairs):
        for mode in ("pinned", "copy") if i % 2 == 0 else ("copy", "pinned"):
            with slots_way(mode == "pinned"):
                r = run_pass(os.path.join(tmp, f"ab{i}_{mode}"))
            out.append(dict({k: r.get(k) for k in keep}, pair=i, mode=mode))
            print("slots_ab", out[-1], flush=True)
    return out


def stage_costs(det, paths, n=16):
    dec, lbx, post = [], [], []
    for p in paths[:n]:
        t0 = time.perf_counter()
        rgb = load_rgb(p)
        t1 = time.perf_counter()
        a, lb = letterbox(rgb, det.input_hw, det.fill, dtype=det.input_dtype, resize=det.spec.resize)
        t2 = time.perf_counter()
        dec.append((t1 - t0) * 1e3)
        lbx.append((t2 - t1) * 1e3)
    # postprocess: one image's outputs -> detections with RLE masks
    from rcnn_deploy.runtime.coco import detections_to_coco
    from rcnn_deploy.runtime.sources import Item

    prepared = det.prepare(Item(0, str(paths[0]), path=paths[0]))
    outs = det.batch_model.submit([prepared.array])() if det.batch_model else det.run_padded(prepared.array[None])
    for _ in range(n):
        t0 = time.perf_counter()
        d = det.detections_for(prepared.letterbox, outs, prepared.item.name)
        detections_to_coco(d, 1, det.spec.category_ids, det.spec.label_ids)
        post.append((time.perf_counter() - t0) * 1e3)
    return {
        "decode_ms": float(np.median(dec)),
        "letterbox_ms": float(np.median(lbx)),
        "postprocess_rle_ms": float(np.median(post)),
        "detections_in_postprocess_image": int(outs["num_detections"].reshape(-1)[0]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", action="append", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--latency-images", type=int, default=100)
    ap.add_argument(
        "--split-rle",
        default="4",
        help="batch-1 engines: also latency_split_rle_ms, each image's RLE in this many pieces over worker "
        "processes; a comma-separated list (4,8) adds latency_split_rle_p8_ms and so on for the others",
    )
    ap.add_argument("--processes", type=int, default=None, help="worker processes (default: the runner's)")
    ap.add_argument(
        "--gpu-decode-processes",
        type=int,
        default=None,
        help="worker processes of the GPU-decode rows (default: the runner's for GPU decoding, GPU_DECODE_PROCESSES)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="also time a pass over the folder this many times in a row (row 'stream_repeat'): a longer run, "
        "less of it in the stream's start and end (since session 16 the worker processes are started by the "
        "warm-up pass and kept by the detector; before, each stream() call started its own)",
    )
    ap.add_argument(
        "--sample-threads",
        action="store_true",
        help="engines of batch > 1: one more host-decode pass with thread_sampler.py sampling where this process's "
        "threads sit (stream_thread_samples; its img/s is not a result: the sampler takes the GIL every 2 ms)",
    )
    ap.add_argument(
        "--slots-ab",
        type=int,
        default=0,
        help="engines of batch > 1: this many more pairs of host-decode passes, the input slots page-locked and "
        "copied (RCNN_DEPLOY_PINNED_SLOTS=1 and 0), alternating which goes first (stream_slots_ab)",
    )
    ap.add_argument("--gpu-decode", action="store_true", help="also the rows with JPEGs decoded on the GPU")
    ap.add_argument(
        "--gpu-decode-variants",
        default="default:3",
        help="nvImageCodec backend:slots pairs, comma-separated; the first fills the gpu_decode rows; a third "
        "field 'post' (default:3:post) pastes the masks on the GPU with the torch-free CUDA kernel "
        "(gpu_post='kernel'; its masks also checked against the host paste of the same outputs on the parity images); "
        "backend 'host' (host:2:post): the JPEGs decoded on the host (--processes worker processes) instead",
    )
    ap.add_argument("--parity-images", type=int, default=64)
    ap.add_argument("--gpu-decode-child", default=None, help=argparse.SUPPRESS)  # internal: see gpu_decode_in_child
    ap.add_argument("--host-processes", type=int, default=None, help=argparse.SUPPRESS)  # the child's host: variants
    ap.add_argument("--parity-dir", default=None, help="a COCO-format folder (images/, annotations.json) for parity")
    a = ap.parse_args()
    paths = find_images(a.images)
    if a.gpu_decode_child:  # the GPU-decode rows of one engine, in a process of their own
        with open(a.gpu_decode_child, "rb") as f:
            ref = pickle.load(f)
        row, doc = {}, {"machine": {}}
        try:
            gpu_decode_rows(a, a.engine[0], ref, paths, row, doc)
        except Exception as e:  # noqa: BLE001 - recorded in the parent's row
            row["gpu_decode_error"] = f"{type(e).__name__}: {e}"
        atomic_write_json(a.out, {"row": row, "nvimgcodec": doc["machine"].get("nvimgcodec")})
        return
    doc = {
        "script": "benchmarks/e2e_trt.py",
        "machine": {
            "host": socket.gethostname(),
            "gpu": gpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # the host stages' resize and mask paste use OpenCV when this process has it, numpy otherwise
            "opencv": getattr(opencv(), "__version__", None),
        },
        "commit": commit(),
        "images": {"folder": a.images, "count": len(paths), "size": list(load_rgb(paths[0]).shape[:2])},
        "engines": [],
    }
    for engine in a.engine:
        det = Detector.from_engine(engine)
        hi = det.batch_model.hi
        row = {"engine": os.path.basename(engine), "batch": hi, "input_dtype": str(det.input_dtype)}
        row["trt"] = det.engine.trt.name + " " + det.engine.trt.version
        feed = {"images": np.zeros((hi, 3, *det.input_hw), det.input_dtype)}
        times = det.engine.time_gpu(feed, iterations=200, warmup=20, cuda_graph=True)
        row["gpu_compute_ms"] = float(np.median(times))
        row["gpu_compute_p99_ms"] = float(np.percentile(times, 99))
        row["gpu_images_per_s"] = round(hi * 1000.0 / row["gpu_compute_ms"], 1)
        det = Detector.from_engine(engine)  # fresh contexts after time_gpu's capture
        row.update(stream_rows(a, det, paths))
        row["stages"] = stage_costs(det, paths)
        graph_note(row, det.batch_model, "")
        doc["engines"].append(row)
        atomic_write_json(a.out, doc)
        print(json.dumps(row), flush=True)
        if a.gpu_decode:
            try:
                ref = host_reference(a, det, paths)
                det.stop_workers()
                det.batch_model.close()
                del det
                gc.collect()
                gpu_decode_in_child(a, engine, ref, row, doc)
            except Exception as e:  # noqa: BLE001 - recorded: the host rows above stand
                row["gpu_decode_error"] = f"{type(e).__name__}: {e}"
            atomic_write_json(a.out, doc)
            print(json.dumps({k: v for k, v in row.items() if "gpu_decode" in k}), flush=True)


def stream_rows(a, det, paths, single=True):
    """A warm-up pass over the folder, then ``stream`` (one pass; with ``single``, or when there is no
    ``--repeat``) and ``stream_repeat`` (``--repeat`` passes in a row); batch-1 engines also ``latency_ms`` and
    ``latency_detections_ms``."""
    hi = det.batch_model.hi
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        stream_pass(det, paths, hi, a.workers, os.path.join(tmp, "warm"), a.processes)
        if single or a.repeat <= 1:
            out["stream"] = stream_pass(det, paths, hi, a.workers, os.path.join(tmp, "run"), a.processes)
            if hi > 1:  # the input slots the other way (page-locked or copied), same pass
                variant = slots_variant_pass(
                    lambda d: stream_pass(det, paths, hi, a.workers, d, a.processes), tmp, out["stream"]
                )
                if variant is not None:
                    out[variant[0]] = variant[1]
            if hi > 1 and getattr(a, "slots_ab", 0):
                out["stream_slots_ab"] = slots_ab(lambda d: stream_pass(det, paths, hi, a.workers, d, a.processes),
                                                  tmp, a.slots_ab)  # fmt: skip
            if hi > 1 and getattr(a, "sample_threads", False):
                from thread_sampler import ThreadSampler  # this folder

                sampler = ThreadSampler().start()
                sampled = stream_pass(det, paths, hi, a.workers, os.path.join(tmp, "sampled"), a.processes)
                out["stream_thread_samples"] = dict(sampler.stop(), images_per_s=sampled["images_per_s"])
        if a.repeat > 1:  # the same files again: per-image outputs are rewritten with the same bytes
            many = list(paths) * a.repeat
            rep = stream_pass(det, many, hi, a.workers, os.path.join(tmp, "rep"), a.processes)
            out["stream_repeat"] = dict(rep, repeat=a.repeat)
    if hi == 1:
        det.stop_workers()  # the latency rows without the stream's idle worker processes (run 22 had them)
        out["latency_ms"], out["latency_detections_ms"] = latency(det, paths[: a.latency_images])
        for i, parts in enumerate(int(x) for x in str(a.split_rle).split(",") if x):
            if parts > 1:
                key = "latency_split_rle_ms" if i == 0 else f"latency_split_rle_p{parts}_ms"
                out[key] = split_rle_latency(det, paths[: a.latency_images], parts)
    return out


def graph_note(row, model, prefix):
    """Whether the rows' engine runs were replayed from CUDA graphs (``Detector.from_engine``'s default), and why
    not when a capture failed."""
    row[prefix + "cuda_graph"] = model.cuda_graph
    if model.graph_error:
        row[prefix + "graph_error"] = model.graph_error


def parity_row(reference, det, files):
    """``det``'s detections on ``files`` against the host path's (``compare_detections``), unmatched counted."""
    from rcnn_deploy.evaluation.parity import compare_detections

    rep = compare_detections(reference, det(files))
    d = {k: v for k, v in rep.to_dict().items() if k != "unmatched"}
    d["unmatched"] = len(rep.unmatched)
    return d


def latency(det, paths, split=None):
    """Batch-1 wall per image: to the COCO results with RLE masks, and to the Detections (masks lazy). With
    ``split`` (``(executor, parts)``: worker processes), the RLE is made in ``parts`` pieces, all but one in
    the executor (``detections_to_coco(executor=, parts=)``)."""
    from rcnn_deploy.runtime.coco import detections_to_coco

    executor, parts = split if split else (None, 1)
    walls, to_det = [], []
    model = det.batch_model
    stages = getattr(model, "stage_s", None)  # the batch model's host seconds by stage (TensorRT models)
    before = None
    for i, p in enumerate(paths):
        if i == 3 and stages is not None:  # after the three warm-up images the percentiles leave out
            before = dict(stages)
        t0 = time.perf_counter()
        d = det([str(p)])[0]
        t1 = time.perf_counter()
        detections_to_coco(d, 1, det.spec.category_ids, det.spec.label_ids, executor=executor, parts=parts)
        walls.append((time.perf_counter() - t0) * 1e3)
        to_det.append((t1 - t0) * 1e3)
    n = len(walls) - 3
    rle = dict(percentiles(walls[3:], (50, 90, 99)), images=n)
    if before is not None and n > 0:  # mean host ms per image in each stage of the model (stage_s)
        rle["model_stage_ms"] = {k: round((stages[k] - before[k]) / n * 1e3, 3) for k in before}
    return rle, dict(percentiles(to_det[3:], (50, 90, 99)), images=n)


def split_rle_latency(det, paths, parts):
    """``latency`` with each image's RLE in ``parts`` pieces over ``parts - 1`` worker processes (started and
    warmed before the timing, ended after): ``latency_split_rle_ms``."""
    from rcnn_deploy.runtime.stream import WorkerPool

    pool = WorkerPool(parts - 1)
    try:
        ex = pool.executor()
        list(ex.map(abs, range(4 * parts)))  # the processes are up (and have imported numpy) before the timing
        rle, _ = latency(det, paths, (ex, parts))
    finally:
        pool.close()
    return dict(rle, parts=parts)


def parity_sets(a, paths):
    """(name, files) of the GPU-decode parity: the first ``--parity-images`` of the folder and of ``--parity-dir``."""
    sets = [("e2e_images", [str(p) for p in paths[: a.parity_images]])]
    if a.parity_dir:
        files = [str(p) for p in find_images(os.path.join(a.parity_dir, "images"))][: a.parity_images]
        sets.append((os.path.basename(a.parity_dir.rstrip("/")), files))
    return sets


def host_reference(a, host_det, paths):
    """The host path's detections on the parity sets and its COCO AP on ``--parity-dir``: what the GPU-decode
    rows compare against, computed here so that they can run in a process of their own."""
    ref = {"detections": {name: host_det(files) for name, files in parity_sets(a, paths)}, "AP": None}
    ann = os.path.join(a.parity_dir, "annotations.json") if a.parity_dir else None
    if ann and os.path.isfile(ann):
        ref["AP"] = coco_ap(host_det, ann, a)
    return ref


def coco_ap(det, ann, a):
    from rcnn_deploy.evaluation.dataset import evaluate_detector

    r = evaluate_detector(det, ann, os.path.join(a.parity_dir, "images"), max_images=a.parity_images)
    return {
        "bbox_AP": round(r["metrics"]["bbox"]["AP"], 4),
        "segm_AP": round(r["metrics"].get("segm", {}).get("AP", float("nan")), 4),
        "images": r["images"],
    }


def gpu_decode_in_child(a, engine, ref, row, doc):
    """The GPU-decode rows of ``engine`` in a fresh process (this script with ``--gpu-decode-child``): run 20's
    batch-1 process died (SIGSEGV) deserializing the engine a second time beside the host-decode detector.
    A child that dies leaves ``gpu_decode_error`` and the host rows."""
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, out = os.path.join(tmp, "ref.pkl"), os.path.join(tmp, "child.json")
        with open(ref_path, "wb") as f:
            pickle.dump(ref, f)
        cmd = [sys.executable, os.path.abspath(__file__), "--engine", engine, "--images", a.images, "--out", out]
        cmd += ["--gpu-decode", "--gpu-decode-child", ref_path, "--repeat", str(a.repeat)]
        cmd += ["--latency-images", str(a.latency_images), "--parity-images", str(a.parity_images)]
        cmd += ["--split-rle", str(a.split_rle)]
        cmd += ["--gpu-decode-variants", a.gpu_decode_variants]
        flags = (("--processes", a.gpu_decode_processes), ("--workers", a.workers), ("--parity-dir", a.parity_dir),
                 ("--host-processes", a.processes))  # fmt: skip
        for flag, value in flags:
            if value is not None:
                cmd += [flag, str(value)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(out):
            row["gpu_decode_error"] = f"the GPU-decode process exited with {proc.returncode}: {proc.stderr[-1500:]}"
            return
        with open(out) as f:
            got = json.load(f)
    row.update(got["row"])
    doc["machine"]["nvimgcodec"] = got.get("nvimgcodec")


def parse_variants(text):
    """``backend:slots[:post]`` entries -> ``(backend, slots, post)``."""
    out = []
    for part in text.split(","):
        backend, slots, post = (part.strip().split(":") + ["", ""])[:3]
        if post not in ("", "post"):
            raise SystemExit(f"--gpu-decode-variants: {part!r}: the third field is 'post' or nothing")
        out.append((backend or "default", int(slots or 3), post == "post"))
    return out


def gpu_decode_variant(a, engine, ref, paths, backend, slots, post=False):
    """A further GPU-decode configuration: its stream rows, batch-1 latency and parity on the folder; with
    ``post``, the masks pasted by the CUDA kernel (``gpu_post="kernel"``) and, on the parity images, each mask's
    RLE string compared with the host paste's of the same outputs (``kernel_paste_check``)."""
    v = {"backend": backend, "slots": slots}
    try:
        gpu = backend != "host"  # host: decoded on the host, in the host rows' worker processes
        det = Detector.from_engine(engine, gpu_decode=gpu, gpu_decode_backend=backend if gpu else "default",
                                   slots=slots, gpu_post="kernel" if post else False)  # fmt: skip
        if post:
            v["gpu_post"] = "kernel"
        if not gpu:
            a = argparse.Namespace(**dict(vars(a), processes=a.host_processes))
            v["processes"] = a.processes
        v.update(stream_rows(a, det, paths, single=False))
        files = [str(p) for p in paths[: a.parity_images]]
        paste = det.batch_model.post
        if paste is not None:
            v["kernel_host_pasted_images"] = paste.host_pasted  # over all the passes above
            paste.check_host, paste.checked, paste.identical, paste.host_pasted = True, 0, 0, 0
        v["parity_e2e_images"] = parity_row(ref["detections"]["e2e_images"], det, files)
        if paste is not None:
            v["kernel_paste_check"] = {"masks": paste.checked, "identical_rle": paste.identical,
                                       "host_pasted_images": paste.host_pasted, "images": len(files)}  # fmt: skip
        det.batch_model.close()
    except Exception as e:  # noqa: BLE001 - recorded: a backend this GPU or nvImageCodec build lacks
        v["error"] = f"{type(e).__name__}: {e}"
    return v


def gpu_decode_rows(a, engine, ref, paths, row, doc):
    variants = parse_variants(a.gpu_decode_variants)
    backend, slots, _ = variants[0]
    t0 = time.perf_counter()
    # builds the letterbox engine on first use
    det = Detector.from_engine(engine, gpu_decode=True, gpu_decode_backend=backend, slots=slots)
    row["gpu_decode_setup_s"] = round(time.perf_counter() - t0, 2)
    row["gpu_decode_backend"], row["gpu_decode_slots"] = backend, slots
    # which nvJPEG the decoder loaded: the first libnvjpeg.so.N on LD_LIBRARY_PATH (device_e2e.sh sets it)
    libs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d and os.path.isdir(d)]
    found = [f for d in libs for f in sorted(os.listdir(d)) if f.startswith("libnvjpeg.so.")]
    nvjpeg = f", nvJPEG {found[0].rsplit('.', 1)[-1]}" if found else ""
    doc["machine"]["nvimgcodec"] = f"{det.batch_model.decoder.version}{nvjpeg}"
    for key, value in stream_rows(a, det, paths).items():  # stream -> stream_gpu_decode, latency_ms -> ...
        row[key.replace("stream", "stream_gpu_decode").replace("latency", "latency_gpu_decode")] = value
    graph_note(row, det.batch_model, "gpu_decode_")
    par = {}
    for name, files in parity_sets(a, paths):
        par[name] = parity_row(ref["detections"][name], det, files)
        print("gpu decode parity", name, json.dumps(par[name])[:400], flush=True)
    if ref.get("AP") is not None:
        par["host_decode_AP"] = ref["AP"]
        par["gpu_decode_AP"] = coco_ap(det, os.path.join(a.parity_dir, "annotations.json"), a)
    row["gpu_decode_parity"] = par
    det.batch_model.close()
    for backend, slots, post in variants[1:]:
        v = gpu_decode_variant(a, engine, ref, paths, backend, slots, post)
        row.setdefault("gpu_decode_variants", []).append(v)
        atomic_write_json(a.out, doc)
        print("gpu decode variant", json.dumps(v)[:600], flush=True)


if __name__ == "__main__":
    main()
