"""docs/e2e.md from the end-to-end benchmark results in ``benchmarks/results/e2e/`` (one row = one run of one
script on one named machine and commit). ``benchmarks/e2e_report.py`` writes it; a test checks it is current."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


def _load(results: Path, pattern: str) -> List[Tuple[Path, Any]]:
    return [(p, json.loads(p.read_text())) for p in sorted(results.glob(pattern))]


def _commit(d: Any) -> str:
    return str(d.get("commit_note", d.get("commit")))


def _opencv(machine: Any) -> str:
    if "opencv" not in machine:
        return "not recorded"
    return str(machine["opencv"]) if machine["opencv"] else "no (numpy fallbacks)"


def _starved(stream: Any) -> str:
    """How long the model waited for decoded input, against the stream's whole time (host-bound when close)."""
    if not stream or "model_starved_s" not in stream:
        return "—"
    return f"{stream['model_starved_s']:.2f} / {stream['seconds']:.2f}"


def _repeat(e: Any) -> str:
    """The pass over the folder repeated (``e2e_trt.py --repeat``: the worker processes' start-up amortised)."""
    r = e.get("stream_repeat")
    return f"{r['images_per_s']} ({r['images']} images)" if r else "—"


def _latency(q: Any) -> str:
    return f"{q['p50']:.1f} / {q['p99']:.1f}" if q else "—"


def _compiled(row: Dict[str, Any]) -> str:
    """A torch row's note that its sync-free forward ran through torch.compile (``--stream-compile``)."""
    note = f" (torch.compile {row['compile']})" if row.get("compile") else ""
    if row.get("gpu_decoder"):
        note += f", JPEGs decoded by {_GPU_DECODER_NAMES.get(row['gpu_decoder'], row['gpu_decoder'])}"
    return note


def render(root: Path) -> str:
    """The whole docs/e2e.md for the repository at ``root``."""
    results = root / "benchmarks" / "results" / "e2e"
    lines = [
        "# End to end: images in, COCO results out",
        "",
        "Written by `benchmarks/e2e_report.py` from `benchmarks/results/e2e/*.json`; do not edit by hand.",
        "Mask R-CNN R50-FPN at 1344², the project's checkpoint, 256 synthetic 1920×1080 JPEGs, the streaming runner",
        "writing TSV + COCO results with RLE masks (no PNG). Each row is one run of the named script.",
        "",
        "## TensorRT 8.6 (`benchmarks/e2e_trt.py`, CPython 3.9, no torch)",
        "",
        "| file | script | machine | commit | OpenCV in the process | engine | batch | GPU compute ms | GPU img/s |"
        " streamed img/s | repeated pass img/s | model starved s / stream s | batch-1 latency p50 / p99 ms |"
        " batch-1 latency to Detections p50 / p99 ms | detections |"
        " host stages ms (decode / letterbox / postprocess+RLE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_trt_*.json"):
        m = d["machine"]
        for e in d["engines"]:
            for view in _trt_views(e, m):
                s, st = view["stream"], view["stages"]
                host = (
                    f"{st.get('decode_ms', 0):.1f} / {st.get('letterbox_ms', 0):.1f} / "
                    f"{st.get('postprocess_rle_ms', 0):.1f}"
                    if st
                    else "—"
                )
                r = view["repeat"]
                rep = f"{r['images_per_s']} ({r['images']} images)" if r else "—"
                lines.append(
                    f"| {p.name} | {d['script']} | {m.get('gpu')}, {m.get('cpus')} CPUs, Python {m.get('python')} | "
                    f"{_commit(d)} | {_opencv(m)} | {view['what']} | {e['batch']} | "
                    f"{e['gpu_compute_ms']:.2f} | {e['gpu_images_per_s']} | {s.get('images_per_s')} | {rep} | "
                    f"{_starved(s)} | {_latency(view['latency'])} | "
                    f"{_latency(view['latency_detections'])} | {s.get('detections')} | {host} |"
                )
    lines += _trt_gpu_decode_parity(results) + _kernel_paste_section(results) + _decoder_section(results)
    lines += _probe_section(results)
    lines += [
        "",
        "## PyTorch on the GPU, no TensorRT (`benchmarks/e2e_torch_cuda.py`)",
        "",
        "The deploy model with fp16 layers (fp32 glue), channels_last, one CUDA graph per batch size, sync-free NMS",
        "(`nms rounds` fixpoint rounds captured); GPU compute on a uint8 batch already on the GPU (CUDA events,",
        "median); streamed = `Detector.stream` with decode + letterbox + postprocessing in worker processes.",
        "",
        "| file | machine | commit | model | precision | batch | nms rounds | GPU compute ms | GPU img/s |"
        " streamed img/s (processes) | model starved s / stream s | batch-1 latency p50 / p99 ms |"
        " NMS fallbacks in the stream |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_torch_cuda_*.json"):
        m = d["machine"]
        for r in d["rows"]:
            s = r.get("stream", r.get("stream_gpu_decode", {}))
            streamed = f"{s['images_per_s']} ({s['processes']})" if s else "not run"
            lat = r.get("latency_ms", r.get("latency_gpu_decode_ms"))
            lines.append(
                f"| {p.name} | {m.get('gpu')}, {m.get('cpus')} CPUs, torch {m.get('torch')} | {_commit(d)} | "
                f"{r['model']}{_compiled(r)} | {r['precision']}{'' if r['cuda_graph'] else ', eager'} | {r['batch']} | "
                f"{r.get('nms_rounds', 'adaptive')} | {r['gpu_compute_ms']:.2f} | {r['gpu_images_per_s']} | "
                f"{streamed} | {_starved(s)} | {_latency(lat)} | {s.get('nms_fallbacks_total', '')} |"
            )
    lines += [
        "",
        "## torchvision's own eager model (`benchmarks/e2e_torchvision.py`), the baseline",
        "",
        "| file | script | machine | commit | model | images | img/s | latency p50 / p90 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_torchvision_*.json"):
        m, q = d["machine"], d["latency_ms"]
        lines.append(
            f"| {p.name} | {d['script']} | {m.get('gpu')}, {m.get('cpus')} CPUs | {_commit(d)} | {d['model']} | "
            f"{d['images']} | {d['images_per_s']} | {q['p50']:.0f} / {q['p90']:.0f} / {q['p99']:.0f} |"
        )
    lines += _compile_section(results) + _roi_align_section(results)
    lines += _parity_section(results) + targets_section(results) + _gpu_post_section(results)
    lines += _nms_fixpoint_section(results)
    lines += serve_section(results) + ray_section(results)
    lines += [
        "",
        "## Host stages alone (`benchmarks/e2e_host.py`)",
        "",
        "python3 + torch on the GPU machine: the streaming runner's host stages with the model replaced by replayed",
        "real outputs (a host-capacity figure, not end to end), threads only vs worker processes, and the runner",
        "with the PyTorch deploy model (fp32 eager, CUDA). Seconds include starting the worker processes.",
        "",
        "| file | machine | commit | row | processes | batch | images | detections / image | img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in _load(results, "e2e_host_*.json"):
        m = d["machine"]
        for r in d["rows"]:
            lines.append(
                f"| {p.name} | {m.get('gpu')}, {m.get('cpus')} CPUs | {_commit(d)} | {r['what']} | {r['processes']} | "
                f"{r['batch']} | {r['images']} | {r['detections_per_image']} | {r['images_per_s']} |"
            )
    mems = sorted(_load(root / "benchmarks" / "results", "memory_cpu_*.json"), key=lambda pd: tuple(pd[1]["input_hw"]))
    if mems:
        lines += [
            "",
            "## Peak host memory (`benchmarks/memory_bench.py`)",
            "",
            "`rcnn-deploy infer` on one synthetic 6000×4000 JPEG with 100 detections (the export's score threshold at",
            "0), ONNX Runtime on the CPU, each case in a fresh process (its `ru_maxrss`): `infer` writes TSV, COCO RLE",
            "and the PNG; `infer-no-png` the same without the PNG; `dense-masks` reads the Python API's dense",
            "`[N, H, W]` bool masks; `model-only` loads the backend and runs one 64×64 image. Above the model-only",
            "process: the row's peak minus the model-only row's (the pipeline's own share).",
            "",
            "| file | machine | commit | photo | input | case | peak RSS MiB | above the model-only process MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p, d in mems:
            m = d["machine"]
            commit = _commit(d) + (" (uncommitted changes)" if d.get("dirty") else "")
            photo = f"{d['photo_hw'][1]}×{d['photo_hw'][0]}, {d['detections']} detections"
            size = f"{d['input_hw'][0]}×{d['input_hw'][1]}"
            for k, v in d["peak_rss_mib"].items():
                lines.append(
                    f"| {p.name} | {m['platform']}, {m['cpus']} CPUs | {commit} | {photo} | {size} | {k} | {v} | "
                    f"{d.get('above_model_mib', {}).get(k, '')} |"
                )
    streams = _load(root / "benchmarks" / "results" / "cpu", "cpu_stream_*.json")
    if streams:
        lines += [
            "",
            "## Streamed against sequential on the CPU (`benchmarks/cpu_stream.py`)",
            "",
            "The same work per image on both paths (decode a 1920×1080 JPEG, letterbox, the model at batch 1, boxes",
            "back to the image, masks as COCO RLE, a TSV; a picture too where the row names its format): `sequential`",
            "one image after another on one thread, `streamed` through `Detector.stream` (with *replicas* > 1, that",
            "many ONNX Runtime sessions sharing the cores run images side by side; the sequential path keeps one",
            "session with every core). Best of two alternating passes each; results checked equal. *model alone*: the",
            "model without the host stages on the same letterboxed images, one session one image after another",
            "against the streamed path's sessions side by side (where the file has it): what overlap can gain when",
            "the model is nearly all of the time.",
            "",
            "| file | machine | commit | model | input | images | picture | streamed replicas | load before passes |"
            " sequential img/s | streamed img/s | streamed / sequential | same results |"
            " model alone img/s: one session / side by side (ratio) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p, d in streams:
            m, best = d["machine"], d["best"]
            lines.append(
                f"| {p.name} | {m['platform']}, {m['cpus']} CPUs | {_commit(d)} | ONNX Runtime, {d['model']} | "
                f"{d['input_hw'][0]}² | {d['images']} | {_picture(d)} | "
                f"{d.get('streamed_replicas', 1)} | {', '.join(str(x) for x in d['load_average_before_each_pass'])} | "
                f"{best['sequential']['images_per_s']} | {best['streamed']['images_per_s']} | {d['speedup']} | "
                f"{d['same_results']} | {_model_only(d.get('model_only'))} |"
            )
    return "\n".join(lines) + "\n"


def _trt_views(e: Dict[str, Any], m: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The streamed configurations of one engine's entry in an e2e_trt file: host decode, GPU decode, and each
    ``--gpu-decode-variants`` entry with masks pasted by the CUDA kernel (``gpu_post``, since session 28): its
    label (``what``, ``how`` for the targets), stream pass, repeated pass, host stages and batch-1 latencies."""
    base = f"{e['trt']} fp16, {e['input_dtype']} input"
    dec = f"nvImageCodec {m.get('nvimgcodec', '?')}"
    views = []
    for gpu in (False, True):
        k = "_gpu_decode" if gpu else ""
        s = e.get("stream" + k, {})
        if gpu and not s:
            continue
        what = base
        if gpu:
            what += f", JPEGs decoded + letterboxed on the GPU ({dec}"
            if e.get("gpu_decode_slots"):
                what += f", {e.get('gpu_decode_backend')} decoder, {e['gpu_decode_slots']} slots"
            what += ")"
        views.append(
            dict(
                what=what,
                how="GPU decode" if gpu else "host decode",
                stream=s,
                host=not gpu,
                repeat=e.get("stream" + k + "_repeat"),
                stages={} if gpu else e.get("stages", {}),
                latency=e.get("latency" + k + "_ms"),
                latency_detections=e.get("latency" + k + "_detections_ms"),
                splits=[v for key, v in e.items() if key.startswith("latency" + k + "_split_rle")],
            )
        )
    for v in e.get("gpu_decode_variants") or []:
        s = v.get("stream") or v.get("stream_repeat")
        if not v.get("gpu_post") or not s:
            continue
        on_host = v["backend"] == "host"
        how = ("host decode" if on_host else "GPU decode") + ", masks pasted by the CUDA kernel"
        if on_host:
            where = f", {v.get('processes')} processes"
        else:
            where = f", JPEGs decoded + letterboxed on the GPU ({dec}, {v['backend']} decoder, {v['slots']} slots)"
        views.append(
            dict(
                what=base + where + ", masks pasted on the GPU (CUDA kernel)",
                how=how,
                stream=s,
                host=False,
                repeat=v.get("stream_repeat"),
                stages={},
                latency=v.get("latency_ms"),
                latency_detections=v.get("latency_detections_ms"),
                splits=[],
            )
        )
    return views


def _picture(d: Dict[str, Any]) -> str:
    """The picture a cpu_stream row wrote per image: none, or its format (files before --vis-format wrote PNG; auto
    is JPEG for these JPEG inputs)."""
    if not d["visualize"]:
        return "no"
    return {"auto": "JPEG (auto)", "jpg": "JPEG", "png": "PNG", None: "PNG"}[d.get("vis_format")]


def _model_only(m: Any) -> str:
    if not m:
        return "—"
    return f"{m['one_session_images_per_s']} / {m['side_by_side_images_per_s']} ({m['ratio']})"


def _table(rows: List[str], header: str, *prose: str) -> List[str]:
    """A part of the page: ``prose`` (its heading first, if it has one), a blank line and a table of ``rows``
    under ``header`` (a markdown header row); nothing when there are no rows."""
    if not rows:
        return []
    return ["", *prose, "", header, "|" + "---|" * (header.count("|") - 1), *rows]


def _ap(entry: Any) -> str:
    return f"{entry['bbox_AP']:.4f} / {entry['segm_AP']:.4f}" if entry else "—"


def _parity_section(results: Path) -> List[str]:
    """``e2e_torch_cuda.py --phases parity``: mAP per precision and decode path, and graph-vs-eager detections."""
    files = [(p, d) for p, d in _load(results, "e2e_torch_cuda_*.json") if d.get("parity")]
    if not files:
        return []
    lines = [
        "",
        "## PyTorch on the GPU: accuracy and parity (`benchmarks/e2e_torch_cuda.py --phases parity`)",
        "",
        "The synthetic validation split at the checkpoint's 384² (the first `images`), COCO mAP@[.5:.95] bbox / segm;",
        "Δ against the CUDA-graph fp32 row of the same file. The decode rows run on the same split saved as JPEGs",
        "(host: Pillow/OpenCV on the CPU; GPU: nvJPEG through torchvision's `decode_jpeg` up to session 17, then",
        "nvImageCodec where the comparisons below say so), so they differ from the PNG rows by the JPEG compression",
        "too. The `_images_1344` rows: the benchmark's 1920×1080 JPEGs at 1344² (the letterbox resamples as well).",
        "",
        "| file | commit | row | images | bbox / segm mAP | Δ bbox / Δ segm vs graph fp32 | NMS fallbacks |",
        "|---|---|---|---|---|---|---|",
    ]
    for p, d in files:
        par = d["parity"]
        ref = par.get("graph_fp32")
        big = [k[len("gpu_decode_fp16") :] for k in par if k.startswith("gpu_decode_fp16_images_")]
        names = ["eager_fp32", "graph_fp32", "graph_fp16", "graph_bf16", "host_decode_fp16", "gpu_decode_fp16"]
        names += ["gpu_decode_gpu_post_fp16"]  # since session 20: masks pasted and RLE-encoded on the GPU too
        names += [f"{side}_decode_fp16{b}" for b in big for side in ("host", "gpu")]
        for name in names:
            e = par.get(name)
            if not e:
                continue
            delta = "—"
            if ref and "decode_fp16" not in name and name != "graph_fp32":
                delta = f"{e['bbox_AP'] - ref['bbox_AP']:+.4f} / {e['segm_AP'] - ref['segm_AP']:+.4f}"
            host_name = name.replace("gpu_decode", "host_decode")
            if name == "gpu_decode_gpu_post_fp16" and par.get("gpu_decode_fp16"):
                h = par["gpu_decode_fp16"]
                delta = f"{e['bbox_AP'] - h['bbox_AP']:+.4f} / {e['segm_AP'] - h['segm_AP']:+.4f} (vs host post)"
            elif name.startswith("gpu_decode_fp16") and par.get(host_name):
                h = par[host_name]
                delta = f"{e['bbox_AP'] - h['bbox_AP']:+.4f} / {e['segm_AP'] - h['segm_AP']:+.4f} (vs host decode)"
            fb = e.get("nms_fallbacks")
            lines.append(
                f"| {p.name} | {_commit(d)} | {name} | {e['images']} | {_ap(e)} | {delta} | "
                f"{'—' if fb is None else fb} |"
            )
    lines += [
        "",
        "Detections matched between two paths (same class, box IoU ≥ 0.5; `rcnn_deploy.evaluation.parity`):",
        "",
        "| file | comparison | reference / candidate detections | matched | recall | min box IoU | max score Δ |"
        " mean / min mask IoU | unmatched |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in files:
        compared = [k for k in d["parity"] if k.startswith("gpu_decode_vs_host_decode_fp16")]
        for name in ["graph_fp32_vs_eager_fp32", *compared]:
            r = d["parity"].get(name)
            if not r:
                continue
            tf32 = d["parity"].get(name + "_tf32")
            label = name + ("" if tf32 is None else f" (TF32 {'on' if tf32 else 'off'})")
            if r.get("gpu_decoder"):
                label += f" ({_GPU_DECODER_NAMES.get(r['gpu_decoder'], r['gpu_decoder'])})"
            lines.append(
                f"| {p.name} | {label} | {r['reference_detections']} / {r['candidate_detections']} | {r['matched']} | "
                f"{r['recall']:.4f} | {r['min_box_iou']:.3f} | {r['max_score_diff']:.3f} | "
                f"{r['mean_mask_iou']:.4f} / {r['min_mask_iou']:.3f} | {r['unmatched']} |"
            )
    key = "gpu_post_vs_host_post_fp16"
    post = [(p, d["parity"][key]) for p, d in files if key in d["parity"]]
    if post:
        lines += [
            "",
            "Masks pasted, thresholded and RLE-encoded on the GPU (`glue.gpu_post`, the Triton paste kernel) against",
            "the host's paste of the same model outputs (the GPU-decode fp16 detector with and without `gpu_post`, the",
            "384² JPEG split): images whose boxes are the same, and of their masks how many COCO RLE strings are",
            "identical; where not, the pixels of area that differ and the smallest mask IoU:",
            "",
            "| file | images | same boxes | masks | identical RLE | area Δ pixels | min IoU where different |",
            "|---|---|---|---|---|---|---|",
        ]
        for p, q in post:
            lines.append(
                f"| {p.name} | {q['images']} | {q['images_same_boxes']} | {q['masks']} | {q['masks_identical']} | "
                f"{q['area_difference_pixels']} | {q['min_iou_of_differing']} |"
            )
    pixels = [(p, k, v) for p, d in files for k, v in d["parity"].items() if k.startswith("decode_pixels_")]
    if pixels:
        lines += [
            "",
            "GPU decoders against the host decoder (Pillow), pixel by pixel (|difference| in grey levels over every",
            "channel of the first 20 JPEGs of a folder, as saved and re-encoded without chroma subsampling; `nvjpeg`:",
            "torchvision's `decode_jpeg` on CUDA; `nvimgcodec_vs_host_val_jpg` / `_images`: nvImageCodec on the 384²",
            "split / the 1920×1080 benchmark JPEGs):",
            "",
            "| file | comparison | images | source subsampling (0: 4:4:4, 2: 4:2:0) |"
            " as saved: max / mean / > 2 / > 16 | identical | 4:4:4: max / mean / > 2 / > 16 |",
            "|---|---|---|---|---|---|---|",
        ]
        for p, k, q in pixels:
            a, b = q["as_saved"], q["reencoded_444"]
            same = f"{a['identical']:.5f}" if "identical" in a else "—"
            lines.append(
                f"| {p.name} | {k[len('decode_pixels_') :]} | {q['images']} | {q['source_subsampling']} | "
                f"{a['max']} / {a['mean']} / {a['over_2']} / {a['over_16']} | {same} | "
                f"{b['max']} / {b['mean']} / {b['over_2']} / {b['over_16']} |"
            )
    return lines


def _run_of(path: Path) -> str:
    """``e2e_trt_run17b_b8.json`` -> ``run17``: the session a result file belongs to (its machines' letters dropped)."""
    for part in path.stem.split("_"):
        if part.startswith("run") and len(part) > 3:
            return part[:3] + "".join(c for c in part[3:] if c.isdigit())
    return ""


def _trt_gpu_decode_parity(results: Path) -> List[str]:
    rows = []
    for p, d in _load(results, "e2e_trt_*.json"):
        for e in d["engines"]:
            par = e.get("gpu_decode_parity")
            if not par:
                continue
            ap = ""
            if "host_decode_AP" in par and "gpu_decode_AP" in par:
                h, g = par["host_decode_AP"], par["gpu_decode_AP"]
                ap = f"{h['bbox_AP']:.4f} / {g['bbox_AP']:.4f} (segm {h['segm_AP']:.4f} / {g['segm_AP']:.4f})"
            for name, r in par.items():
                if not isinstance(r, dict) or "matched" not in r:
                    continue
                rows.append(
                    f"| {p.name} | {e['batch']} | {name} | {r['images']} | {r['matched']} / "
                    f"{r['reference_detections']} | {r['recall']:.3f} | {r['mean_mask_iou']:.3f} | "
                    f"{r['mean_score_diff']:.4f} | {ap if name != 'e2e_images' else '—'} |"
                )
    return _table(
        rows,
        "| file | batch | images | n | matched / host detections | recall | mean mask IoU | mean score diff |"
        " bbox AP host / GPU |",
        "GPU decode against the host path, same engine (`gpu_decode_parity`: `evaluation.parity.compare_detections`,",
        "host-decoded detections as the reference; bbox AP host / GPU on the annotated JPEG split). The decoders",
        "differ (nvJPEG's IDCT and chroma upsampling against libjpeg-turbo's) and so do the resamplers (the",
        "letterbox engine samples as the numpy reference in fp32; the host path uses OpenCV's 11-bit fixed point).",
    )


def _kernel_paste_section(results: Path) -> List[str]:
    """The torch-free GPU mask paste: e2e_trt.py's ``:post`` variants (RLE strings against the host paste of the same
    outputs, detections against the host path) and paste_kernel_check.py (the kernel alone on a GPU)."""
    rows = []
    for p, d in _load(results, "e2e_trt_*.json"):
        for e in d["engines"]:
            for v in e.get("gpu_decode_variants") or []:
                if not v.get("gpu_post"):
                    continue
                chk, par = v.get("kernel_paste_check") or {}, v.get("parity_e2e_images") or {}
                how = f"{v['backend']}:{v['slots']}" + (f" — {v['error']}" if v.get("error") else "")
                rle = f"{chk['identical_rle']} / {chk['masks']} ({chk['host_pasted_images']})" if chk else "—"
                det = f"{par['matched']} / {par['reference_detections']}" if par else "—"
                rows.append(f"| {p.name} | e2e_trt.py variant {how} | {e['batch']} | {rle} | {det} | — | — |")
    for p, d in _load(results, "paste_kernel_check*.json"):
        for r in d["rows"]:
            if r.get("error"):
                rows.append(f"| {p.name} | {r['method']} {r['dtype']} — {r['error']} | {r['images']} | — | — | — | — |")
                continue
            rows.append(
                f"| {p.name} | {r['method']} {r['dtype']}, {r['n']} masks an image | {r['images']} | "
                f"{r['identical_rle']} / {r['masks']} ({r['host_pasted_images']}) | — | {r['paste_ms']} | "
                f"{r['host_ms']} |"
            )
    return _table(
        rows,
        "| file | what | batch (images) | RLE strings equal to the host paste's / masks (images pasted on the host) |"
        " detections matched / host path's | GPU paste ms (a batch, strings included) | host paste + RLE ms |",
        "Masks pasted by the torch-free CUDA kernel (`backends/tensorrt/paste.py`) against the host paste",
        "(`PastedMasks`) of the same outputs; an image with a column of more row changes than the kernel keeps",
        "(16 in run 35, 32 since) is pasted on the host. Run 35's e2e_trt.py counts of equal strings are too low:",
        "its waiters' threads lost updates of the counters (fixed in 389e6dd); its matched column compares the",
        "masks themselves (mask IoU in the parity table above).",
    )


def _compile_section(results: Path) -> List[str]:
    rows = []
    for p, d in _load(results, "e2e_torch_cuda_*.json"):
        c = d.get("compile")
        if not c:
            continue
        by_batch: Dict[int, Dict[str, Any]] = {}
        for r in c["rows"]:
            by_batch.setdefault(r["batch"], {})["compiled" if r.get("compile") else "eager"] = r
        for b, pair in sorted(by_batch.items()):
            u, k = pair.get("eager"), pair.get("compiled")
            if not (u and k) or "gpu_compute_ms" not in u or "gpu_compute_ms" not in k:  # an error row
                continue
            pi = k.get("parity_images", {})
            first = next(iter(k.get("compile_first_call_s", {}).values()), float("nan"))
            rows.append(
                f"| {p.name} | {_commit(d)} | {c['mode']} | fp16 | {b} | {u['gpu_compute_ms']:.2f} | "
                f"{k['gpu_compute_ms']:.2f} | {k.get('speedup_vs_uncompiled', '—')} | "
                f"{u.get('profile', {}).get('kernels_per_forward', '—')} / "
                f"{k.get('profile', {}).get('kernels_per_forward', '—')} | {first:.0f} | "
                f"{k.get('dynamo', {}).get('graph_breaks', '—')} | "
                f"{pi.get('matched', '—')} / {pi.get('reference_detections', '—')} |"
            )
    return _table(
        rows,
        "| file | commit | mode | precision | batch | uncompiled ms | compiled ms | speed-up | kernels / forward |"
        " compile s | graph breaks | matched / reference |",
        "## torch.compile of the sync-free forward (`e2e_torch_cuda.py --phases compile --compile MODE`)",
        "",
        "The same model uncompiled and compiled (Inductor, its own CUDA graphs off), each replayed in one CUDA graph;",
        "GPU compute ms (median); kernels per forward from torch.profiler over the uncaptured forward; the cold",
        "compile's first call; matched = the compiled model's detections against the uncompiled one's on 64 images.",
    )


def _roi_align_section(results: Path) -> List[str]:
    """The sync-free forward's multi-level ROIAlign, per level against stacked (e2e_torch_cuda.py phase roi_align)."""
    rows = []
    for p, d in _load(results, "e2e_torch_cuda_*.json"):
        for r in (d.get("roi_align") or {}).get("rows", []):
            par = r.get("parity_padded_vs_levels")
            match = f"{par['matched']} / {par['reference_detections']}" if par else "—"
            if par and par.get("identical"):
                match += " (outputs identical)"
            elif par:  # the largest differences of the matched detections' boxes and scores
                match += f" (max box Δ {par['max_box_abs_diff']:.3g} px, score Δ {par['max_score_diff']:.2g})"
            rows.append(
                f"| {p.name} | {_commit(d)} | {r['roi_align']} | {r['precision']} | {r['batch']} | "
                f"{r['gpu_compute_ms']:.2f} | {match} |"
            )
    return _table(
        rows,
        "| file | commit | ROIAlign | precision | batch | GPU compute ms | matched / reference |",
        "## The sync-free ROIAlign (`e2e_torch_cuda.py --phases roi_align`)",
        "",
        "The fp16 CUDA-graph model (uncompiled) with each multi-level ROIAlign of the sync-free forward: `levels`",
        "pools every box on every FPN level and keeps its own; `stacked` pools each box once from the levels stacked",
        "as images; `triton` is one Triton kernel that pools each box from its own level in place",
        "(`glue.roi_align_triton`; torchvision's arithmetic, multiply-adds contracted differently). GPU compute ms",
        "(median); matched: that model's padded outputs against the per-level one's, same batch.",
    )


def _latest_run(files: List[Tuple[Path, Any]]) -> str:
    return max((_run_of(p) for p, _ in files), key=lambda r: int(r[3:] or 0), default="")


def targets_section(results: Path) -> List[str]:
    """The issues' end-to-end targets (1344², 1920×1080 JPEGs): the TensorRT ones from the latest session that ran
    TensorRT, the PyTorch ones from the latest that ran PyTorch, each against torchvision in that session."""
    trt = _load(results, "e2e_trt_*.json")
    torch = [(p, d) for p, d in _load(results, "e2e_torch_cuda_*.json") if d.get("rows") or d.get("compile")]
    tv = _load(results, "e2e_torchvision_*.json")
    lines = [
        "",
        "## Targets (issues 17 and 19)",
        "",
        "Each stack's targets from the latest session that measured it, and where that session ran no torchvision",
        "baseline, also from the latest that did (PyTorch's GPU-decode parity from the latest that ran the parity",
        "step: the file names it). *Met* compares the measured figure with the issue's target;",
        "× torchvision divides streamed img/s by torchvision's eager model end to end in the same session (same 256",
        "images: `data synth` with the same seed on each machine of the session). *page-locked slots*: the worker",
        "processes' input slots registered with `cudaHostRegister` and uploaded from (`RCNN_DEPLOY_PINNED_SLOTS=1`;",
        "the default until session 26); *copied slots*: copied into the model's pinned buffer (the default since).",
        "*median of N A/B passes*: the same stream pass repeated, the two ways alternating which went first.",
    ]
    blocks = 0

    def row(out: List[str], what: str, value: float, unit: str, ok: bool, p: Path) -> None:
        out.append(f"| {what} | {f'{value:g} {unit}'.strip()} | {'yes' if ok else 'no'} | {p.name} |")

    tv_runs = {_run_of(p) for p, _ in tv}
    for stack, run, files, last, why in _target_blocks(trt, torch, tv_runs):
        tv_run = [(p, d) for p, d in tv if _run_of(p) == run]
        base: Optional[float] = float(tv_run[-1][1]["images_per_s"]) if tv_run else None
        baseline = f"baseline {base} img/s ({tv_run[-1][0].name})" if tv_run else "torchvision not run in this session"
        here = [(p, d) for p, d in files if _run_of(p) == run]
        gpus = sorted(
            {str((d.get("machine") or {}).get("gpu")) for _, d in here if (d.get("machine") or {}).get("gpu")}
        )
        on = f" on {', '.join(gpus)}" if gpus else ""
        out = [
            "",
            f"{stack}, session {run}{on}{why}; {baseline}:",
            "",
            "| target | measured | met | file |",
            "|---|---|---|---|",
        ]
        if stack == "TensorRT":
            _trt_targets(here, base, out, row)
        else:
            _torch_targets(here, base, out, row)
        if stack == "PyTorch" and last:
            parity = [(p, d) for p, d in _load(results, "e2e_torch_cuda_*.json") if d.get("parity")]
            par_run = _latest_run(parity)  # the latest session that ran the parity step (its files name it)
            _torch_parity_targets([(p, d) for p, d in parity if _run_of(p) == par_run], out, row)
        lines += out
        blocks += 1
    return lines if blocks else []


def _target_blocks(
    trt: List[Tuple[Path, Any]], torch: List[Tuple[Path, Any]], tv_runs: Any
) -> List[Tuple[str, str, List[Tuple[Path, Any]], bool, str]]:
    """(stack, session, its files, whether it is the stack's last block, why it is shown beside the latest): each
    stack's latest session; where that one ran no torchvision baseline, also the latest one that did (its ×
    torchvision and the rest); where it measured no batch-1 latency, also the latest one that did (the latency
    targets)."""
    blocks = []
    for stack, files in (("TensorRT", trt), ("PyTorch", torch)):
        run = _latest_run(files)
        if not run:
            continue
        runs = [(run, "")]
        if run not in tv_runs:
            runs += [(_latest_run([(p, d) for p, d in files if _run_of(p) in tv_runs]), "")]
        if not any(_run_of(p) == run and _has_b1_latency(d) for p, d in files):
            latency = _latest_run([(p, d) for p, d in files if _has_b1_latency(d)])
            if latency not in [r for r, _ in runs]:
                runs += [(latency, " (the latest session that measured batch-1 latency)")]
        runs = [(r, why) for r, why in runs if r]
        for i, (r, why) in enumerate(runs):
            blocks.append((stack, r, files, i == len(runs) - 1, why))
    return blocks


def _has_b1_latency(d: Any) -> bool:
    """Whether a result file has batch-1 latency rows (a TensorRT engine or a PyTorch row of batch 1)."""
    rows = (d.get("engines") or []) + (d.get("rows") or [])
    return any(r.get("batch") == 1 and any(k.startswith("latency") for k in r) for r in rows)


def _trt_targets(files: List[Tuple[Path, Any]], base: Optional[float], out: List[str], row: Any) -> None:
    for p, d in files:
        for e in d["engines"]:
            par = e.get("gpu_decode_parity") or {}
            dec = f"nvImageCodec {d.get('machine', {}).get('nvimgcodec', '?')}"
            for key, where in (("e2e_images", "1920×1080 JPEGs"), ("val_jpg", "384² JPEG split")):
                if par.get(key):
                    _parity_target_rows("TensorRT", f"{dec}, {where}, b{e['batch']}", par[key], None, None, out, row, p)
            if par.get("host_decode_AP") and par.get("gpu_decode_AP"):
                how = f"{dec}, 384² JPEG split, b{e['batch']}"
                _parity_target_rows("TensorRT", how, None, par["host_decode_AP"], par["gpu_decode_AP"], out, row, p)
            for view in _trt_views(e, d.get("machine", {})):
                s, how, host = view["repeat"] or view["stream"], view["how"], view["host"]  # the longer pass
                passes = [(s, _slots(s) if host else "")] + [
                    (e[v], _slots(e[v])) for v in _SLOT_VARIANTS if host and e.get(v)
                ]
                passes += [({"images_per_s": ips}, f", {way}") for ips, way in _ab_medians(e) if host]
                for one, slots in passes if e["batch"] == 8 and s else []:
                    ips, how_s = one["images_per_s"], f"{how}{slots}"
                    row(out, f"TensorRT fp16 b8 end to end ≥ 300 img/s ({how_s})", ips, "img/s", ips >= 300, p)
                    if base:
                        x = round(ips / base, 1)
                        row(out, f"TensorRT end to end ≥ 15× torchvision ({how_s})", x, "×", ips / base >= 15, p)
                lat = view["latency"]
                if e["batch"] == 1 and lat:
                    q = round(lat["p50"], 1)  # shown rounded, judged unrounded
                    row(out, f"TensorRT b1 end-to-end latency ≤ 12 ms median ({how}, RLE masks)", q, "ms",
                        lat["p50"] <= 12, p)  # fmt: skip
                    for split in view[
                        "splits"
                    ]:  # latency_split_rle_ms, then latency_split_rle_p8_ms, ... (other parts)
                        q = round(split["p50"], 1)
                        what = f"RLE in {split['parts']} pieces over worker processes"
                        row(out, f"TensorRT b1 end-to-end latency ≤ 12 ms median ({how}, {what})", q, "ms",
                            split["p50"] <= 12, p)  # fmt: skip
                    det = view["latency_detections"]
                    if det:
                        q = round(det["p50"], 1)
                        row(out, f"TensorRT b1 latency to Detections (lazy masks; {how})", q, "ms", det["p50"] <= 12, p)


#: the stream pass again with the input slots the other way (benchmarks/e2e_trt.py slots_variant_pass)
_SLOT_VARIANTS = ("stream_copy_slots", "stream_pinned_slots")


def _ab_medians(row: Dict[str, Any]) -> List[Tuple[float, str]]:
    """``--slots-ab`` (e2e_torch_cuda.py, e2e_trt.py): the median img/s of each way's passes, with its label."""
    out = []
    for mode in ("pinned", "copy"):
        ab = [x["images_per_s"] for x in row.get("stream_slots_ab") or [] if x["mode"] == mode]
        if ab:
            way = "page-locked slots" if mode == "pinned" else "copied slots"
            out.append((round(statistics.median(ab), 1), f"{way}, median of {len(ab)} A/B passes"))
    return out


def _slots(stream: Dict[str, Any]) -> str:
    """How a host-decode stream pass handed its inputs over, where its file says (since session 26)."""
    if "pinned_slots" not in stream:
        return ""
    return ", page-locked slots" if stream["pinned_slots"] else ", copied slots"


def _parity_target_rows(
    stack: str, how: str, match: Any, host: Any, gpu: Any, out: List[str], row: Any, p: Path
) -> None:
    """Issue 19's GPU-decode parity targets: ≥ 99 % of the host path's detections matched, mAP within 0.001."""
    if match:
        pct = round(100.0 * match["matched"] / max(match["reference_detections"], 1), 2)
        row(out, f"{stack} GPU decode ≥ 99 % of host-decode detections matched ({how})", pct, "%", pct >= 99, p)
    if host and gpu:
        for kind in ("bbox", "segm"):
            d = round(abs(gpu[f"{kind}_AP"] - host[f"{kind}_AP"]), 4)
            row(out, f"{stack} GPU decode {kind} mAP within 0.001 of host decode ({how})", d, "", d <= 0.001, p)


def _torch_parity_targets(files: List[Tuple[Path, Any]], out: List[str], row: Any) -> None:
    for p, d in files:
        par = d["parity"]
        for key in sorted(k for k in par if k.startswith("gpu_decode_vs_host_decode_fp16")):
            m = par[key]
            suffix = key[len("gpu_decode_vs_host_decode_fp16") :]
            where = f"1920×1080 JPEGs at {suffix.rsplit('_', 1)[-1]}²" if suffix else "384² JPEG split"
            dec = _GPU_DECODER_NAMES.get(m.get("gpu_decoder", "torchvision"), "?")
            how = f"{dec}, {where}"
            host, gpu = par.get(f"host_decode_fp16{suffix}"), par.get(f"gpu_decode_fp16{suffix}")
            _parity_target_rows("PyTorch", how, m, host, gpu, out, row, p)


def _torch_targets(files: List[Tuple[Path, Any]], base: Optional[float], out: List[str], row: Any) -> None:
    for p, d in files:
        if not d.get("compile"):
            continue
        for r in d["compile"]["rows"]:
            if r.get("compile") and r["batch"] == 1:
                what = f"PyTorch fp16 b1 GPU compute ≤ 8 ms (torch.compile {d['compile']['mode']})"
                row(out, what, r["gpu_compute_ms"], "ms", r["gpu_compute_ms"] <= 8, p)
    for p, d in files:
        for r in d.get("rows", []):
            if r["model"] not in _TORCH_E2E or r["precision"] != "fp16" or not r["cuda_graph"]:
                continue
            label = _TORCH_E2E[r["model"]]
            if r.get("gpu_decoder"):  # rows since session 18 say which decoder ran (before: torchvision's)
                label = label.replace("GPU decode", f"GPU decode ({_GPU_DECODER_NAMES.get(r['gpu_decoder'], '?')})")
            s = r.get("stream") or r.get("stream_gpu_decode") or {}
            parts = [label] if label else []
            if r.get("compile"):
                parts.append(f"torch.compile {r['compile']}")
            if r.get("roi_align") not in (None, "stacked"):  # the rows say which sync-free ROIAlign ran
                parts.append(f"ROIAlign {r['roi_align']}")
            if r.get("post_layout"):  # GPU-post rows since session 23 say which layout ran
                parts.append(f"{r['post_layout']} post")
            if r.get("nms_fixpoint"):  # rows since session 24 say how the NMS rounds ran
                parts.append(f"NMS rounds {r['nms_fixpoint']}")
            if s and r["batch"] == 8:
                parts.append(f"{s['processes']} worker processes" if s.get("processes") else "threads")
            how = f" ({', '.join(parts)})" if parts else ""
            if r["batch"] == 1:
                what = f"PyTorch fp16 b1 GPU compute ≤ 8 ms{how}"
                row(out, what, r["gpu_compute_ms"], "ms", r["gpu_compute_ms"] <= 8, p)
                lat = r.get("latency_ms") or r.get("latency_gpu_decode_ms")
                if lat:
                    q = round(lat["p50"], 1)  # shown rounded, judged unrounded
                    row(out, f"PyTorch b1 end-to-end latency ≤ 12 ms median{how}", q, "ms", lat["p50"] <= 12, p)
            if r["batch"] == 8 and s:
                host = "gpu_decode" not in r["model"]  # (GPU decoding has no input slots)
                passes = [(s["images_per_s"], _slots(s) if host else "")]
                passes += [(r[v]["images_per_s"], _slots(r[v])) for v in _SLOT_VARIANTS if r.get(v)]
                passes += [(ips, f", {way}") for ips, way in _ab_medians(r)]
                for ips, slots in passes:
                    how_s = f" ({', '.join(parts)}{slots})" if parts else f" ({slots[2:]})" if slots else ""
                    row(out, f"PyTorch b8 end to end ≥ 250 img/s{how_s}", ips, "img/s", ips >= 250, p)
                    if base:
                        x = round(ips / base, 1)
                        row(out, f"PyTorch end to end ≥ 10× torchvision{how_s}", x, "×", ips / base >= 10, p)


# the e2e_torch_cuda.py row models that run Mask R-CNN end to end, and how they differ from the plain one
_TORCH_E2E = {
    "mask_rcnn": "",
    "mask_rcnn_gpu_post": "GPU post",
    "mask_rcnn_gpu_decode": "GPU decode",
    "mask_rcnn_gpu_decode_post": "GPU decode + post",
}
_GPU_DECODER_NAMES = {"nvimgcodec": "nvImageCodec", "torchvision": "torchvision decode_jpeg"}


def _decoder_section(results: Path) -> List[str]:
    """nvImageCodec's decoders alone and beside the engine (benchmarks/nvjpeg_bench.py)."""
    rows = []
    for p, d in _load(results, "nvjpeg_bench_*.json"):
        for c in d["configs"]:
            if "error" in c:
                rows.append(f"| {p.name} | {c['config']} | error: {c['error'][:80]} |||||||")
                continue

            def ms(key: str, c: Any = c) -> str:
                r = c.get(key)
                return f"{r['wall_ms']:.2f} / {r['cpu_ms']:.1f}" if r else "—"

            px = c.get("pixels", {})
            rows.append(
                f"| {p.name} | {c['config']} | {'yes' if d.get('nonblocking_streams') else 'no'} | {ms('b1')} | "
                f"{ms('b1_beside_engine')} | {ms('b8')} | {ms('b8_beside_engine')} | "
                f"{c.get('b8_beside_engine', {}).get('engine_runs_per_s', '—')} | "
                f"{px.get('mean_abs', '—')} / {px.get('share_gt2', '—')} |"
            )
    return _table(
        rows,
        "| file | config | non-blocking streams | b1 ms (wall / CPU) | b1 beside the engine | b8 ms |"
        " b8 beside the engine | engine runs/s beside b8 | pixels vs OpenCV |",
        "## nvImageCodec's JPEG decoders on the GPU machine (`benchmarks/nvjpeg_bench.py`, CPython 3.9)",
        "",
        "Per configuration (nvImageCodec backends; `_fancy`: `:fancy_upsampling=1`), batches of 1 and 8 of the",
        "1920×1080 JPEGs: wall ms per batch (the decode call and a stream synchronisation) / the process's CPU ms over",
        "it, alone and with the batch-8 fused engine running back to back on another stream (its runs per second",
        "then); pixels against OpenCV's decoder: mean |difference| / share of values more than 2 grey levels apart.",
    )


def _probe_section(results: Path) -> List[str]:
    """Where a TensorRT GPU-decode stream's time goes (benchmarks/trt_runner_probe.py)."""
    rows = []
    for p, d in _load(results, "trt_runner_probe_*.json"):
        for name, r in d["rows"].items():
            graph = {True: "yes", False: "no"}.get(r.get("cuda_graph"), "—")
            cpu = f"{r['main_cpu_s']} / {r['seconds']}" if "main_cpu_s" in r else "—"
            if "to_rle_ms" in r:  # a batch-1 latency row
                lat = f"{r['to_rle_ms']['p50']:.2f} / {r['to_detections_ms']['p50']:.2f}"
                rows.append(f"| {p.name} | {name} | — | {graph} | {cpu} | {lat} |")
                if "to_rle_split_ms" in r:
                    split = r["to_rle_split_ms"]
                    what = f"{name}, RLE in {split['parts']} pieces"
                    rows.append(f"| {p.name} | {what} | — | {graph} | — | {split['p50']:.2f} / — |")
            else:
                rows.append(f"| {p.name} | {name} | {r['images_per_s']} | {graph} | {cpu} | — |")
    return _table(
        rows,
        "| file | row | img/s | CUDA graph | calling process CPU s / wall s | b1 p50 ms to RLE / to Detections |",
        "## Where the TensorRT GPU-decode stream's time goes (`benchmarks/trt_runner_probe.py`)",
        "",
        "The batch-8 fused fp16 engine with GPU decoding, 4 passes over the 256 JPEGs: `model_only_slotsS`: the",
        "model's `submit` fed the files' bytes, S batches in flight (decode, letterbox engine, model engine,",
        "download; `_nograph`: the engine enqueued from the host instead of replayed from a CUDA graph);",
        "`stream_procsP`: `Detector.stream` without per-image work, postprocessing in P worker processes",
        "(0: threads); `stream_writer_*`: with the TSV + COCO RLE writer (as the GPU-decode rows above);",
        "`_blocking`: the waiting threads sleep on blocking-sync events; `_switch05ms`: a 0.5 ms GIL switch interval;",
        "`handover_procsP` (run 24): `stream_procsP` again, with how late a 0.5 ms sleep woke in the calling process",
        "and the decode threads' batch steps timed (in the file); `writer_procsP[_variant]`: the writer stream with P",
        "processes (variants: blocking-sync waits, 4 stream threads, 4 slots);",
        "`latency_b1_*`: the batch-1 engine with GPU decoding, one image at a time, CUDA graphs on and off (RLE in",
        "pieces: `detections_to_coco(executor=)` over 3 worker processes). CUDA graph: — where the file predates",
        "them (run 20). The calling process's CPU counts all its threads, not the worker processes'.",
    )


def _gpu_post_section(results: Path) -> List[str]:
    files = _load(results, "gpu_post_cuda_*.json")
    if not files:
        return []
    lines = [
        "",
        "## Mask paste + COCO RLE on the GPU (`benchmarks/gpu_post_bench.py --device cuda`)",
        "",
        "One 1920×1080 image with 100 detections (random boxes, random 28×28 probabilities), ms per image",
        "(median of the repeats): the host path (numpy/OpenCV, one thread) against `glue.gpu_post.paste_runs` on",
        "the GPU: *GPU runs* is the call alone (runs copied back), *GPU counts* adds each mask's COCO counts on",
        "the host one call per mask, `+ RLE` each mask's compressed string; *groups* is the padded-groups `bmm`",
        "path (the paste kernel's fallback) where the row has one; *kernel*: whether the Triton paste kernel ran.",
        "*Mismatched*: masks whose counts differ from the host's.",
        "",
        "| file | boxes | paste | kernel | host counts | host RLE | GPU runs | GPU counts | GPU counts, groups |"
        " GPU + RLE | ragged gather (GPU) | mismatched |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in files:
        for c in d["cases"]:

            def ms(k: str, c: Any = c) -> str:
                return f"{c[k]['median_ms']:.1f}" if k in c else "—"

            kernel = {True: "yes", False: "no"}.get(c.get("kernel"), "—")  # rows before session 20: none
            lines.append(
                f"| {p.name} | {c['sizes']} | {c['method']} | {kernel} | {ms('host_counts')} | {ms('host_rle')} | "
                f"{ms('device_runs')} | {ms('device_counts')} | {ms('device_counts_groups')} | {ms('device_rle')} | "
                f"{ms('ragged_gather')} | {c['mismatched_masks']} |"
            )
    return lines + _post_batch_lines(files)


def _post_batch_lines(files: List[Tuple[Path, Any]]) -> List[str]:
    """gpu_post_bench.py's postprocess_batch rows (since session 23): both layouts at batch 1 and 8."""
    keys = [f"postprocess_{lay}_b{b}" for b in (1, 8) for lay in ("grid", "ragged")]  # the columns' order
    rows = []
    for p, d in files:
        for c in d["cases"]:
            if not any(k in c for k in keys):
                continue
            times = " | ".join(f"{c[k]['median_ms']:.2f}" if k in c else "—" for k in keys)
            mism = f"{c.get('mismatched_masks_post_grid_b1', '—')} / {c.get('mismatched_strings_post_grid_b1', '—')}"
            syncs = f"{c.get('syncs_post_grid_b1', '—')} / {c.get('syncs_post_grid_b8', '—')}"
            rows.append(f"| {p.name} | {c['sizes']} | {c['method']} | {times} | {mism} | {syncs} |")
    return _table(
        rows,
        "| file | boxes | paste | grid b1 | ragged b1 | grid b8 | ragged b8 | mismatched (grid b1: counts / strings) |"
        " syncs (grid b1 / b8) |",
        "`postprocess_batch` (`GpuPost`'s call per batch: boxes back to the image, every mask pasted and encoded, one",
        "copy back) on the case as one image's outputs and as 8 copies of it, ms per call (median): the *grid* layout",
        "(no synchronisation before the one copy back, COCO strings made on the device) and the *ragged* one (the",
        "host computes regions and taps between synchronisations). *Mismatched*: masks whose counts / strings differ",
        "from the host's; *syncs*: synchronising calls torch reported inside one grid call.",
    )


def _nms_fixpoint_section(results: Path) -> List[str]:
    rows = [
        f"| {p.name} | {d.get('device', '?')} | {_commit(d)} | {r['case']} | {r['batch_rows']} × {r['candidates']} | "
        f"{r['rounds']} | {r['matmul_ms']} | {r['bits_ms']} | {r.get('pack_ms', '—')} | "
        f"{'yes' if r['same'] else '**no**'} |"
        for p, d in _load(results, "nms_fixpoint_cuda_*.json")
        for r in d["rows"]
    ]
    return _table(
        rows,
        "| file | machine | commit | case | matrices × candidates | rounds | matmul ms | bits ms | of it pack ms |"
        " same |",
        "## The sync-free NMS rounds (`benchmarks/nms_fixpoint_bench.py`)",
        "",
        "The fixed rounds of the CUDA-graph forward's NMS (`glue.sync_free.fixpoint_rounds`) on the model's shapes at",
        "1344²: *matmul*, a half-precision matrix-vector product per round (before session 24), against *bits*, the",
        "suppression matrix packed into bits once (*pack*) and one Triton kernel per round (`glue.nms_triton`); the",
        "rounds plus the convergence round captured in one CUDA graph, ms per call. *Same*: both kept the same",
        "candidates and gave the same convergence flag.",
    )


def serve_section(results: Path) -> List[str]:
    files = _load(results, "serve_bench_gpu_*.json")
    if not files:
        return []
    lines = [
        "",
        "## Serving on the GPU (`benchmarks/serve_bench.py`, Triton 2.51 Python backend)",
        "",
        "`rcnn-deploy serve` on the GPU machine, HTTP clients on the same host sending 1920×1080 JPEGs; served",
        "img/s and latency per concurrency, the batch sizes Triton formed, and the same `Detector` in the client's",
        "process for comparison. The TensorRT rows serve the fused fp16 engine from CPython 3.9 (`--server-python`:",
        "`python -m rcnn_deploy.serve`, the 3.9 backend stub); their last column is the engine's own GPU rate from",
        "`e2e_trt.py` in the same session.",
        "",
        "| file | commit | model | concurrency | requests | errors | img/s | p50 / p99 ms | batches formed |"
        " in-process img/s (b1 / b8) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in files:
        ip = d.get("in_process", {})
        local = (
            f"{ip.get('batch1', {}).get('throughput_img_s', '—')} / {ip.get('batch8', {}).get('throughput_img_s', '—')}"
        )
        if "engine_own" in ip:  # served from another interpreter: the engine's own rate from e2e_trt.py instead
            local = "; ".join(
                f"engine alone b{e['batch']}: {e['gpu_images_per_s']}" for e in ip["engine_own"].get("engines", [])
            )
        elif "skipped" in ip:
            local = "not run"
        for r in d["served"].values():
            lat = f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}" if "p50_ms" in r else "—"
            batches = ", ".join(f"{k}×{v}" for k, v in r.get("server_batches", {}).items())
            lines.append(
                f"| {p.name} | {_commit(d)} | {d.get('note', '')} | {r['concurrency']} | {r['requests']} | "
                f"{r['errors']} | {r['throughput_img_s']} | {lat} | {batches} | {local} |"
            )
        if d.get("outcome"):
            lines.append(f"| {p.name} | outcome: {d['outcome']} ||||||||| ")
    return lines


def ray_section(results: Path) -> List[str]:
    files = _load(results, "ray_bench_gpu*.json")
    if not files:
        return []
    lines = [
        "",
        "## Ray on one GPU (`benchmarks/ray_bench.py`)",
        "",
        "`rcnn-deploy infer` locally against `rcnn-deploy infer --ray` (one actor given the GPU) on the same",
        "images and model; whole-command img/s (Python and Ray start-up, model load, merge included), Ray Data",
        "execution only, and the steady rate after the first result. *Identical*: results.json equal to the local",
        "run's, and summary.json apart from timings.",
        "",
        "| file | commit | model | images | local img/s | Ray config | Ray img/s (command / execution / steady) |"
        " first result s | per worker | exactly once | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, d in files:
        local: Dict[str, Any] = next((r for r in d["runs"] if r["run"] == "local"), {})
        model = f"{d.get('backend')} on {d.get('local_device') or 'cpu'}, {d['image_size'][0]}², batch {d.get('batch')}"
        recheck = d.get("identical_to_local_rechecked")
        for r in d["runs"]:
            if r["run"] == "local":
                continue
            same = r.get("identical_to_local")
            if recheck is not None:
                same = f"{recheck['value']} (rechecked; recorded {same})"
            workers = ", ".join(f"{k}: {v}" for k, v in r.get("per_worker", {}).items())
            lines.append(
                f"| {p.name} | {_commit(d)} | {model} | {d['images']} | {local.get('img_per_s')} | {r['run']} | "
                f"{r['img_per_s']} / {r['execution_img_per_s']} / {r['steady_img_per_s']} | {r['first_result_s']} | "
                f"{workers} | {r['exactly_once']['ok']} | {same} |"
            )
    return lines
