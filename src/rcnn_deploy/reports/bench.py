"""The reports of ``rcnn-deploy bench``: its rows (:class:`BenchRow`), the machine it ran on, the speed-up over
torchvision, and three renderings of one run: ``bench.md`` (:func:`render_markdown`), the console table
(:func:`print_table`) and ``latency_hist.png`` (:func:`draw_histograms`). Pure functions of the rows and the
bench.json document; rich and Pillow are imported inside the functions that draw."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

MODE_TITLES = {
    "model": "model-only",
    "end-to-end": "end-to-end",
    "streamed": "streamed",
    "baseline": "baseline",
}


@dataclass
class BenchRow:
    mode: str  # "model" | "end-to-end" | "baseline"
    engine: str  # "onnxruntime" | "torch" | "tensorrt" | "torchvision-eager"
    batch: int
    timing: str  # "host" | "cuda-events" | "cuda-graph"
    samples_ms: List[float]
    stats: Any  # LatencyStats
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{MODE_TITLES[self.mode]} · {self.engine} ({self.timing})"

    def to_dict(self) -> Dict[str, Any]:
        d = {"mode": self.mode, "engine": self.engine, "batch": self.batch, "timing": self.timing}
        d.update(self.stats.to_dict())
        d.update(self.extra)
        d["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return d


def machine_info(device: str, target_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Platform, CPU, library versions (of the libraries this process imported) and the GPU when used."""
    import numpy as np

    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "rcnn_deploy": _own_version(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
            info["cuda"] = torch.version.cuda
    tv = sys.modules.get("torchvision")
    if tv is not None:
        info["torchvision"] = tv.__version__
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    if target_info:
        for k in ("tensorrt", "gpu"):
            if target_info.get(k) and k not in info:
                info[k] = target_info[k]
    return info


def _cpu_name() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _own_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("rcnn-deploy")
    except Exception:  # not installed as a distribution
        return None


def speedups(rows: Sequence[BenchRow]) -> List[Dict[str, Any]]:
    """Per batch: baseline mean / model-only mean (and end-to-end when timed)."""
    out = []
    base = {r.batch: r for r in rows if r.mode == "baseline"}
    for r in rows:
        if r.mode != "model" or r.batch not in base:
            continue
        b = base[r.batch]
        d: Dict[str, Any] = {
            "batch": r.batch,
            "baseline_mean_ms": round(b.stats.mean_ms, 4),
            "model_mean_ms": round(r.stats.mean_ms, 4),
            "speedup_model": round(b.stats.mean_ms / r.stats.mean_ms, 3) if r.stats.mean_ms > 0 else None,
        }
        e2e = [e for e in rows if e.mode == "end-to-end" and e.batch == r.batch]
        if e2e and e2e[0].stats.mean_ms > 0:
            d["end_to_end_mean_ms"] = round(e2e[0].stats.mean_ms, 4)
            d["speedup_end_to_end"] = round(b.stats.mean_ms / e2e[0].stats.mean_ms, 3)
        out.append(d)
    return out


def render_markdown(doc: Dict[str, Any], rows: Sequence[BenchRow]) -> str:
    from ..runtime.timing import markdown_table

    m, s, mach = doc["model"], doc["settings"], doc["machine"]
    h, w = m["input_hw"]
    lines = [
        "# rcnn-deploy bench",
        "",
        f"- model: `{m['path']}` ({m['name']}, backend {m['backend']}, device {m['device']})",
        f"- input: {h}x{w}; batches {', '.join(str(b) for b in s['batches'])}; "
        f"{s['iterations']} timed iterations after {s['warmup']} warm-up",
        f"- machine: {mach.get('cpu') or mach['machine']} ({mach['cpu_count']} CPUs), {mach['platform']}"
        + (f"; GPU {mach['gpu']}" if mach.get("gpu") else ""),
        "- versions: "
        + ", ".join(f"{k} {mach[k]}" for k in ("torch", "torchvision", "onnxruntime", "tensorrt") if mach.get(k)),
    ]
    if s.get("images"):
        im = s["images"]
        lines.append(f"- end-to-end images: {im['source']} ({im['count']} files)")
    lines += ["", "## Latency", "", markdown_table([(r.label, r.stats) for r in rows])]
    lines += [
        "- model-only: the model call on a preprocessed batch (`Detector.run_padded`; on a GPU with cuda-events / "
        "cuda-graph timing the input is already on the device, like `trtexec --noDataTransfers`).",
        "- end-to-end: decode image files + letterbox + model + postprocess (box mapping, mask paste into the "
        "original image), host wall time.",
    ]
    if any(r.mode == "baseline" for r in rows):
        lines.append(
            "- baseline: torchvision's eager model with the same weights at the same input size, called as "
            "torchvision runs it (its transform, heads, postprocess and mask paste at input size)."
        )
    if doc.get("speedup"):
        lines += ["", "## Speed-up vs torchvision eager (mean latency)", ""]
        lines += ["| batch | torchvision ms | model-only ms | speed-up | end-to-end ms | speed-up |"]
        lines += ["| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for d in doc["speedup"]:
            e2e = d.get("end_to_end_mean_ms")
            lines.append(
                f"| {d['batch']} | {d['baseline_mean_ms']:.2f} | {d['model_mean_ms']:.2f} | "
                f"{_x(d['speedup_model'])} | {'' if e2e is None else f'{e2e:.2f}'} | "
                f"{_x(d.get('speedup_end_to_end'))} |"
            )
    e2e_rows = [r for r in rows if r.mode == "end-to-end" and "stages_mean_ms" in r.extra]
    if e2e_rows:
        lines += ["", "## End-to-end stages (mean ms per call)", ""]
        lines += ["| batch | decode + preprocess | model | postprocess | detections / image |"]
        lines += ["| ---: | ---: | ---: | ---: | ---: |"]
        for r in e2e_rows:
            st = r.extra["stages_mean_ms"]
            lines.append(
                f"| {r.batch} | {st['decode_preprocess_ms']:.2f} | {st['infer_ms']:.2f} | "
                f"{st['postprocess_ms']:.2f} | {r.extra['detections_per_image']} |"
            )
    if doc.get("warnings"):
        lines += ["", "## Notes", ""] + [f"- {w}" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.1f}" if v < 10000 else f"{v:.0f}"


def _x(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.2f}x"


def draw_histograms(rows: Sequence[BenchRow], path: Path) -> Path:
    """``latency_hist.png``: one latency histogram per row (median green, p99 red), drawn with Pillow."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from .._io import atomic_write

    pw, ph, cols = 460, 230, 2
    n_rows = max(1, math.ceil(len(rows) / cols))
    img = Image.new("RGB", (pw * min(cols, max(1, len(rows))), ph * n_rows), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, r in enumerate(rows):
        ox, oy = (i % cols) * pw, (i // cols) * ph
        left, right, top, bottom = ox + 50, ox + pw - 15, oy + 28, oy + ph - 32
        a = np.asarray(r.samples_ms, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        bins = int(min(40, max(5, a.size // 3)))
        counts, edges = np.histogram(a, bins=bins, range=(lo, hi))
        peak = max(1, int(counts.max()))
        draw.text((ox + 8, oy + 6), f"{r.label}, batch {r.batch} (n={a.size})", fill="black", font=font)
        draw.line([(left, bottom), (right, bottom)], fill="black")
        draw.line([(left, top), (left, bottom)], fill="black")
        bw = (right - left) / bins
        for k, c in enumerate(counts):
            if c:
                x0 = left + k * bw
                draw.rectangle([x0 + 1, bottom - (bottom - top) * c / peak, x0 + bw - 1, bottom], fill=(70, 110, 180))

        def xpos(v: float, left: float = left, right: float = right, lo: float = lo, hi: float = hi) -> float:
            return left + (right - left) * (v - lo) / (hi - lo)

        for v, colour in ((r.stats.median_ms, (0, 150, 0)), (r.stats.p99_ms, (200, 0, 0))):
            x = xpos(v)
            draw.line([(x, top), (x, bottom)], fill=colour, width=2)
        draw.text((left, bottom + 4), f"{lo:.2f}", fill="black", font=font)
        draw.text((right - 40, bottom + 4), f"{hi:.2f} ms", fill="black", font=font)
        draw.text(
            (left + 60, bottom + 16),
            f"median {r.stats.median_ms:.2f}  p99 {r.stats.p99_ms:.2f}  mean {r.stats.mean_ms:.2f} ms",
            fill="black",
            font=font,
        )
        draw.text((ox + 8, top), str(peak), fill="black", font=font)
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


def print_table(console: Any, rows: Sequence[BenchRow], doc: Dict[str, Any]) -> None:
    """The console summary: one table row per bench row, then one :func:`speedup_line` per batch."""
    from rich import box
    from rich.table import Table

    m = doc["model"]
    h, w = m["input_hw"]
    show_timing = any(r.timing != "host" for r in rows)
    table = Table(title=f"{m['name']} · {m['backend']} · {h}x{w} · {m['device']} · latency in ms", box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    table.add_column("b", justify="right")
    if show_timing:
        table.add_column("timing")
    for col in ("mean", "p50", "p90", "p99", "max", "img/s"):
        table.add_column(col, justify="right")
    for r in rows:
        s = r.stats
        tp = "inf" if not math.isfinite(s.throughput) else f"{s.throughput:.1f}"
        run = MODE_TITLES[r.mode] if r.engine == m["backend"] else r.engine
        cells = [run, str(r.batch)] + ([r.timing.replace("cuda-", "")] if show_timing else [])
        cells += [_ms(v) for v in (s.mean_ms, s.median_ms, s.p90_ms, s.p99_ms, s.max_ms)] + [tp]
        table.add_row(*cells)
    console.print(table)
    for d in doc.get("speedup", []):
        console.print(speedup_line(d))


def versus(ratio: float, other: str = "torchvision eager") -> str:
    """How a speed-up ``ratio`` (the other's mean latency / ours) reads: "1.52x faster than torchvision eager",
    "as fast as ..." at exactly 1, "slower than ... (0.80x of its speed)" below."""
    if ratio > 1:
        return f"{_x(ratio)} faster than {other}"
    if ratio == 1:
        return f"as fast as {other}"
    return f"slower than {other} ({_x(ratio)} of its speed)"


def speedup_line(d: Dict[str, Any]) -> str:
    """One entry of bench.json's ``speedup`` list as a sentence, e.g. "batch 8: 1.52x faster than torchvision
    eager (model-only), end-to-end slower than torchvision eager (0.90x of its speed)"."""
    text = f"batch {d['batch']}: "
    text += versus(d["speedup_model"]) if d.get("speedup_model") is not None else "no model-only speed-up"
    text += " (model-only)"
    if d.get("speedup_end_to_end") is not None:
        text += f", end-to-end {versus(d['speedup_end_to_end'])}"
    return text
