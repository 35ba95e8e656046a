"""The CPU path against torchvision's eager model: img/s and latency at 384² and 800², batch 1, N threads, and the
bbox/segm mAP of the fp32 and int8 CPU builds; writes JSON into benchmarks/results/cpu/ and renders docs/cpu.md.

    python benchmarks/cpu_bench.py              # full mode (≤ 10 min on an idle 2-core machine)
    python benchmarks/cpu_bench.py --quick      # 384² only, fewer images and iterations (a smoke run)
    python benchmarks/cpu_bench.py --render     # only re-render docs/cpu.md from the JSON

Data, exports and builds go to ``--work`` (default runs/cpu_bench) and are reused by the next run with the same
image counts; ``--fresh`` rebuilds them (do that after changing the code).

Everything comes from the project's checkpoint (checkpoints/shapes_maskrcnn_r50fpn.pt) and the synthetic set:
per size, ``rcnn-deploy data synth`` writes calibration images (seed 1, the training seed) and evaluation images
(seed 2, the validation seed), ``rcnn-deploy export --graph fused --nms onnx`` exports the graph, and
``rcnn-deploy build --target onnxruntime`` makes the fp32 and int8 CPU builds. Timed, on the same letterboxed
images, round-robin (so a load spike hits every engine alike):

* ``torchvision eager``: torchvision.models.detection's MaskRCNN R50-FPN with the checkpoint's weights, sized so
  the input is not resized, called as torchvision runs it (transform, heads, postprocess, mask paste);
* ``ORT fused (export)``: the exported fused graph as ``rcnn-deploy export`` writes it (ONNX Runtime defaults);
* ``ORT fp32 (CPU build)`` and ``ORT int8 (CPU build)``: the CPU builds with the backend's tuned session.

ORT rows give the graph alone (*model*) and the whole call (*end-to-end*: letterbox + graph + boxes mapped back +
masks pasted, ``Detector`` on an RGB array), torchvision's eager call includes its own postprocess and paste.
Each row names the machine, the commit and this script; the JSON has the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_json, atomic_write_text  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
RESULTS = ROOT / "benchmarks" / "results" / "cpu"
DOC = ROOT / "docs" / "cpu.md"
SCRIPT = "benchmarks/cpu_bench.py"
BEGIN, END = "<!-- cpu-bench:begin -->", "<!-- cpu-bench:end -->"
MODES = {  # per mode: sizes, timed iterations per size, calibration images per size, eval images (at 384)
    "full": {"sizes": [384, 800], "iterations": {384: 8, 800: 4}, "calib": {384: 48, 800: 24}, "eval": 100},
    "quick": {"sizes": [384], "iterations": {384: 3}, "calib": {384: 12}, "eval": 24},
}


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["vnni"] = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        pass
    from rcnn_deploy.backends.onnxruntime import physical_cores

    info["physical_cores"] = physical_cores()
    import onnxruntime
    import torch
    import torchvision

    info.update(onnxruntime=onnxruntime.__version__, torch=torch.__version__, torchvision=torchvision.__version__)
    return info


def commit() -> Dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "rcnn_deploy.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")


def load() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prepare(size: int, work: Path, n_calib: int, n_eval: int, log: Callable[[str], None]) -> Dict[str, Path]:
    """Data, export and the two CPU builds for one input size (reused when already in ``work`` with the same
    image counts)."""
    d = work / f"{size}_calib{n_calib}_val{n_eval}"
    paths = {
        "calib": d / "calib",
        "val": d / "val",
        "export": d / "export",
        "fp32": d / "cpu_fp32",
        "int8": d / "cpu_int8",
    }
    size_args = ["--height", str(size), "--width", str(size)]
    steps = [
        ("calib", ["data", "synth", "-o", str(paths["calib"]), "-n", str(n_calib), *size_args, "--seed", "1"]),
        ("val", ["data", "synth", "-o", str(paths["val"]), "-n", str(n_eval), *size_args, "--seed", "2"]),
    ]
    for key, args in steps:
        if not (paths[key] / "annotations.json").is_file():
            log(f"{size}: synthetic {key} images")
            cli(*args)
    onnx = paths["export"] / "torchvision-maskrcnn_fused_onnx.onnx"
    if not onnx.is_file():
        log(f"{size}: export (fused, --nms onnx)")
        cli("export", "-m", "torchvision-maskrcnn", "-w", str(CHECKPOINT), "--height", str(size), "--width",
            str(size), "--graph", "fused", "--nms", "onnx", "-o", str(paths["export"]))  # fmt: skip
    for prec in ("fp32", "int8"):
        if not (paths[prec] / "contract.json").is_file():
            log(f"{size}: CPU build {prec}")
            extra = ["--calib-input", str(paths["calib"] / "images"), "--calib-images", str(n_calib)]
            cli("build", str(onnx), "--target", "onnxruntime", "-o", str(paths[prec]), "--precision", prec,
                *(extra if prec == "int8" else []))  # fmt: skip
    return paths


def timings(size: int, paths: Dict[str, Path], threads: int, iterations: int) -> List[Dict[str, Any]]:
    """Round-robin latency of every engine on the same images; returns one row per engine (ms samples)."""
    import onnxruntime as ort
    import torch

    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from rcnn_deploy.contract import Contract
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.models.reference import torchvision_reference
    from rcnn_deploy.runtime.preprocess import find_images, letterbox, load_rgb, rgb_fill

    torch.set_num_threads(threads)
    net = build_model("torchvision-maskrcnn", str(CHECKPOINT))
    ref = torchvision_reference(net.spec, net.state_dict(), (size, size))
    del net
    fill = rgb_fill(ref_spec(paths).pixel_mean, ref_spec(paths).channel_order)
    rgbs = [load_rgb(p) for p in find_images(paths["val"] / "images")[: max(iterations, 4)]]
    arrays = [letterbox(im, (size, size), fill)[0][None] for im in rgbs]

    c = Contract.load(paths["export"])
    opts = ort.SessionOptions()  # the export as it comes, ONNX Runtime's defaults (the "before")
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    plain = ort.InferenceSession(str(paths["export"] / c.graphs[0].file), opts, providers=["CPUExecutionProvider"])
    os.environ["RCNN_DEPLOY_ORT_THREADS"] = str(threads)
    builds = {p: Detector.load(paths[p]) for p in ("fp32", "int8")}
    graphs = {p: OnnxRuntimeBackend(paths[p] / Contract.load(paths[p]).graphs[0].file, threads=threads) for p in builds}

    def tv(i: int) -> None:
        with torch.no_grad():
            ref([torch.from_numpy(arrays[i][0]) / 255.0])

    def e2e(p: str) -> Callable[[int], None]:
        def run(i: int) -> None:
            d = builds[p]([rgbs[i]])[0]
            if d.masks is not None:
                np.asarray(d.masks)  # pasted masks, as torchvision's call pastes them

        return run

    engines: Dict[str, Callable[[int], None]] = {
        "torchvision eager": tv,
        "ORT fused (export)": lambda i: plain.run(None, {"images": arrays[i]}),
        "ORT fp32 (CPU build)": lambda i: graphs["fp32"](images=arrays[i]),
        "ORT fp32 (CPU build), end-to-end": e2e("fp32"),
        "ORT int8 (CPU build)": lambda i: graphs["int8"](images=arrays[i]),
        "ORT int8 (CPU build), end-to-end": e2e("int8"),
    }
    samples: Dict[str, List[float]] = {k: [] for k in engines}
    for fn in engines.values():  # warm-up
        fn(0)
    for it in range(iterations):
        i = it % len(arrays)
        for name, fn in engines.items():
            t = time.perf_counter()
            fn(i)
            samples[name].append((time.perf_counter() - t) * 1000)
    # the CPU fp32 build must give the export's outputs (it only restructures where work is done)
    diffs = []
    for a in arrays[:3]:
        ya = plain.run(None, {"images": a})
        yb = graphs["fp32"](images=a)
        diffs.append(
            max(float(np.abs(x.astype(np.float64) - yb[o.name]).max()) for x, o in zip(ya, plain.get_outputs()))
        )
    rows = []
    for name, ms in samples.items():
        rows.append({
            "engine": name,
            "size": size,
            "batch": 1,
            "threads": threads,
            "median_ms": round(float(np.median(ms)), 1),
            "mean_ms": round(float(np.mean(ms)), 1),
            "min_ms": round(float(np.min(ms)), 1),
            "img_per_s": round(1000.0 / float(np.median(ms)), 2),
            "samples_ms": [round(x, 1) for x in ms],
        })  # fmt: skip
    base = next(r for r in rows if r["engine"] == "torchvision eager")["median_ms"]
    for r in rows:
        r["speedup_vs_torchvision"] = round(base / r["median_ms"], 2)
        r["fp32_build_max_abs_diff_vs_export"] = max(diffs) if r["engine"].startswith("ORT fp32") else None
    return rows


def ref_spec(paths: Dict[str, Path]) -> Any:
    from rcnn_deploy.contract import Contract

    return Contract.load(paths["export"]).spec


def accuracy(paths: Dict[str, Path], work: Path) -> Dict[str, Any]:
    """``rcnn-deploy eval`` of the fp32 and int8 CPU builds on the validation images."""
    out: Dict[str, Any] = {}
    for prec in ("fp32", "int8"):
        f = work / f"eval_{prec}.json"
        cli("eval", str(paths[prec]), "--annotations", str(paths["val"] / "annotations.json"), "--images",
            str(paths["val"] / "images"), "--backend", "onnxruntime", "-o", str(f))  # fmt: skip
        m = json.loads(f.read_text())
        metrics = m.get("metrics", m)
        out[prec] = {k: {s: metrics[k][s] for s in ("AP", "AP50", "AP75")} for k in ("bbox", "segm") if k in metrics}
    out["drop"] = {k: round(out["fp32"][k]["AP"] - out["int8"][k]["AP"], 4) for k in out["fp32"] if k in out["int8"]}
    return out


def render(result: Dict[str, Any]) -> str:
    m, c = result["machine"], result["commit"]
    where = f"{m.get('cpu', '?')}, {m['physical_cores']} cores ({m['hostname']})"
    run = f"machine {where}; commit {c['sha'][:10]}{' (dirty)' if c['dirty'] else ''}; script `{result['script']}`"
    lines = [
        BEGIN,
        f"Mode `{result['mode']}`, {result['threads']} threads, batch 1; load average before {result['load_before']},"
        f" after {result['load_after']} (1/5/15 min; > {m['physical_cores']} means other work shared the cores,"
        " so the numbers are pessimistic and noisier). Every row: " + run + ".",
        "",
        *summary(result),
        "",
        "| size | engine | median ms | min ms | img/s | × torchvision eager |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["timings"]:
        lines.append(
            f"| {r['size']}² | {r['engine']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['img_per_s']:.2f} |"
            f" {r['speedup_vs_torchvision']:.2f} |"
        )
    diffs = {
        r["size"]: r["fp32_build_max_abs_diff_vs_export"]
        for r in result["timings"]
        if r.get("fp32_build_max_abs_diff_vs_export") is not None
    }
    if diffs:
        lines += [
            "",
            "The fp32 CPU build against the export, same inputs, largest absolute difference over every output: "
            + ", ".join(f"{d:g} at {s}²" for s, d in diffs.items())
            + ".",
        ]
    a = result.get("accuracy")
    if a:
        lines += [
            "",
            f"Accuracy on {result['eval_images']} synthetic validation images at {result['eval_size']}² (seed 2),"
            f" `rcnn-deploy eval --backend onnxruntime`, int8 calibrated on {result['calib_images']['384']}"
            " synthetic training-seed images:",
            "",
            "| build | bbox mAP | bbox AP50 | segm mAP | segm AP50 |",
            "|---|---|---|---|---|",
        ]
        for prec in ("fp32", "int8"):
            b, s = a[prec]["bbox"], a[prec]["segm"]
            lines.append(f"| {prec} | {b['AP']:.4f} | {b['AP50']:.4f} | {s['AP']:.4f} | {s['AP50']:.4f} |")
        lines.append(f"| drop | {a['drop']['bbox']:.4f} | | {a['drop']['segm']:.4f} | |")
    lines.append(END)
    return "\n".join(lines)


def summary(result: Dict[str, Any]) -> List[str]:
    """The targets (≥ 2x torchvision eager at every size, int8 mAP drop ≤ 0.01), met or not, from the numbers."""
    out = []
    for size in sorted({r["size"] for r in result["timings"]}):
        rows = {r["engine"]: r for r in result["timings"] if r["size"] == size}
        parts = []
        for prec in ("fp32", "int8"):
            x = rows[f"ORT {prec} (CPU build)"]["speedup_vs_torchvision"]
            e2e = rows[f"ORT {prec} (CPU build), end-to-end"]["speedup_vs_torchvision"]
            parts.append(f"{prec} {x:.2f}x (end-to-end {e2e:.2f}x, {'meets' if x >= 2 else 'misses'} ≥ 2x)")
        out.append(f"- {size}²: " + "; ".join(parts) + ".")
    a = result.get("accuracy")
    if a:
        worst = max(a["drop"].values())
        out.append(
            f"- int8 mAP drop: bbox {a['drop']['bbox']:+.4f}, segm {a['drop']['segm']:+.4f} "
            f"({'meets' if worst <= 0.01 else 'misses'} ≤ 0.01; a negative drop is calibration noise, not a gain)."
        )
    return ["Against the targets (model-only speed-up over torchvision eager, median latency):", "", *out]


def write_doc(result: Dict[str, Any]) -> None:
    text = DOC.read_text() if DOC.is_file() else f"# CPU\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(DOC, head + render(result) + tail)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="384² only, fewer images and iterations (a smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cpu_bench", help="data, exports and builds (reused)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="JSON file (default benchmarks/results/cpu/)")
    ap.add_argument("--render", action="store_true", help="only re-render docs/cpu.md from the JSON")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/cpu.md")
    ap.add_argument("--fresh", action="store_true", help="delete --work first (rebuild data, exports and builds)")
    a = ap.parse_args(argv)
    mode = "quick" if a.quick else "full"
    out = a.output or RESULTS / f"cpu_bench_{mode}.json"
    if a.render:
        write_doc(json.loads(out.read_text()))
        print(f"rendered {DOC} from {out}")
        return
    cfg = MODES[mode]
    if a.fresh and a.work.is_dir():
        import shutil

        shutil.rmtree(a.work)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f} s] {msg}", flush=True)

    result: Dict[str, Any] = {
        "script": SCRIPT,
        "mode": mode,
        "threads": a.threads,
        "machine": machine(),
        "commit": commit(),
        "load_before": load(),
        "calib_images": {str(s): cfg["calib"][s] for s in cfg["sizes"]},
        "eval_images": cfg["eval"],
        "eval_size": 384,
        "timings": [],
    }
    for size in cfg["sizes"]:
        n_eval = cfg["eval"] if size == 384 else max(cfg["iterations"][size], 4)
        paths = prepare(size, a.work, cfg["calib"][size], n_eval, log)
        log(f"{size}: timing ({cfg['iterations'][size]} round-robin iterations, {a.threads} threads)")
        result["timings"] += timings(size, paths, a.threads, cfg["iterations"][size])
        if size == 384:
            log("384: rcnn-deploy eval of the fp32 and int8 builds")
            result["accuracy"] = accuracy(paths, paths["val"].parent)
    result["load_after"] = load()
    result["wall_seconds"] = round(time.time() - t0, 1)
    for r in result["timings"]:
        r["machine"] = f"{result['machine'].get('cpu', '?')} ({result['machine']['hostname']})"
        r["commit"] = result["commit"]["sha"]
        r["script"] = SCRIPT
    atomic_write_json(out, result)
    log(f"wrote {out}")
    if not a.no_doc:
        write_doc(result)
        log(f"rendered {DOC}")
    for r in result["timings"]:
        print(f"{r['size']}² {r['engine']:36s} {r['median_ms']:9.1f} ms  {r['speedup_vs_torchvision']:.2f}x")
    if "accuracy" in result:
        print("mAP drop fp32 -> int8:", result["accuracy"]["drop"])


if __name__ == "__main__":
    main()
