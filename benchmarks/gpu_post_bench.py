"""Mask paste + RLE of one image's detections: the host (numpy, ``PastedMasks``) against the device
(``rcnn_deploy.glue.gpu_post.paste_runs``, torch on ``--device``), and two other ways of batching it in torch.

    python benchmarks/gpu_post_bench.py --device cpu --out benchmarks/results/gpu_post_cpu.json
    python benchmarks/gpu_post_bench.py --device cuda --out $OUT/gpu_post_cuda.json

One ``--height x --width`` image (default 1920 x 1080) with ``--detections`` (100) random boxes and random
``M x M`` (28) probabilities, for each paste method and two box-size distributions (``lognormal``: median side
about 120 px, a few large; ``uniform``: sides 20-600 px). Each case is timed ``--repeat`` times (the minimum
and median are reported; on CUDA with a synchronize around each call) for:

  host_counts      PastedMasks.region + rle_counts per detection (what the host does for COCO results before
                   pycocotools compresses the counts; OpenCV's resize for torchvision when installed)
  host_rle         PastedMasks.rle per detection (the compressed COCO strings)
  device_runs      paste_runs alone (masks and boxes already on the device, the runs copied back)
  device_counts    paste_runs + RleMasks.counts of each mask;
                   on CUDA with Triton its default is the Triton kernel (``kernel`` in the row says which ran)
  device_counts_groups  the same with ``kernel=False``: the padded groups and ``bmm`` (the CPU's path)
  device_rle       paste_runs + RleMasks.rle per detection
  ragged_gather    an alternative without padding (regions' pixels in one flat ragged array, a two-tap gather
                   per pixel; see its docstring): the paste and the diff / nonzero only, no positions
  interp_loop      another alternative (torchvision method only): F.interpolate per detection, then diff /
                   nonzero per detection (the paste and the transitions only)
  postprocess_{grid,ragged}_b{1,8}  postprocess_batch (GpuPost's call per batch) on the case as one image's
                   outputs, and 8 copies of it: the grid layout (no synchronisation before the one copy back; the
                   default where the kernel runs, COCO strings made on the device) and the ragged one;
                   mismatched_masks_post_* / mismatched_strings_post_* count masks whose counts / strings
                   differ from the host's; syncs_post_* (CUDA) the synchronising calls torch reports in one call
                   (torch.cuda.set_sync_debug_mode; the grid's explicit stream synchronize is not one of them)

device_counts must give the host's counts: the script checks every mask and records the number that differ
(``mismatched_masks``, ``mismatched_masks_groups``; a pixel within about 1e-6 of the threshold may fall the other
way, see gpu_post's docstring). ``--threads`` sets torch's, OpenCV's and numpy's BLAS CPU threads (on a loaded
machine 1 gives steadier numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
from _tree import tree  # this folder (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_case(rng: np.random.Generator, n: int, h: int, w: int, m: int, sizes: str) -> Dict[str, np.ndarray]:
    if sizes == "lognormal":
        wh = np.exp(rng.normal(np.log(120.0), 0.9, (n, 2)))
    else:
        wh = rng.uniform(20, 600, (n, 2))
    wh = np.clip(wh, 2, [w, h])
    xy = rng.uniform(0, 1, (n, 2)) * ([w, h] - wh)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    # smooth-ish blobs: mask-head-like probabilities (mostly near 0 or 1, a band in between)
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1) - 0.5
    r = rng.uniform(0.2, 0.45, (n, 1, 1))
    logits = 12 * (r - np.sqrt(yy**2 + xx**2)[None]) + rng.normal(0, 1.0, (n, m, m))
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    return {"boxes": boxes, "probs": probs}


def timed(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> Dict[str, float]:
    fn()  # warm-up (allocations, kernels)
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"min_ms": round(1e3 * min(times), 2), "median_ms": round(1e3 * statistics.median(times), 2)}


def ragged_gather(probs: Any, boxes: Any, hw: tuple, method: str, threshold: float, chunk: int = 1 << 22) -> int:
    """The alternative without padding: every region's pixels in one flat ragged array (column-major, one
    always-0 slot after each column), the x pass per region column, the y pass a two-tap gather per pixel (its
    y entry and column offset from cumulative sums), in chunks of ``chunk`` pixels. Returns the number of run
    transitions found (no positions: the time of the paste and the diff / nonzero)."""
    import torch

    from rcnn_deploy.glue.gpu_post import _geometry, _taps

    def excl_cumsum(x: Any) -> Any:
        return torch.cumsum(x, 0) - x

    def segment_ids(lengths: Any, total: int) -> Any:
        seg = torch.repeat_interleave(torch.arange(lengths.shape[0], device=dev), lengths, output_size=total)
        return seg, torch.arange(total, device=dev) - excl_cumsum(lengths).index_select(0, seg)

    dev = probs.device
    n, m = probs.shape[0], probs.shape[-1]
    k, cdtype = m + 2, torch.float64
    hw_t = torch.tensor([hw], device=dev).expand(n, 2)
    regions, (ax_y, ax_x) = _geometry(boxes, hw_t, m, method, cdtype)
    rh = (regions[:, 1] - regions[:, 0]).clamp(min=0)
    rw = (regions[:, 3] - regions[:, 2]).clamp(min=0)
    empty = (rh == 0) | (rw == 0)
    rh, rw = rh.masked_fill(empty, 0), rw.masked_fill(empty, 0)
    ylen = torch.where(empty, 0, rh + 1)
    host = torch.stack([rw, ylen], 1).cpu().numpy()
    rw_h, ylen_h = host[:, 0], host[:, 1]
    ydet, yrow = segment_ids(ylen, int(ylen_h.sum()))
    ypix = regions[:, 0].index_select(0, ydet) + yrow
    y_i, y_w0, y_w1 = _taps(ypix, ax_y[0].index_select(0, ydet), ax_y[1].index_select(0, ydet), method, m, cdtype)
    y_w0 = y_w0.masked_fill(yrow >= rh.index_select(0, ydet), float("nan"))
    cdet, ccol = segment_ids(rw, int(rw_h.sum()))
    xpix = regions[:, 2].index_select(0, cdet) + ccol
    x_i, x_w0, x_w1 = _taps(xpix, ax_x[0].index_select(0, cdet), ax_x[1].index_select(0, cdet), method, m, cdtype)
    padded = torch.zeros((n, k + 1, k + 1), dtype=torch.float32, device=dev)
    padded[:, 1 : m + 1, 1 : m + 1] = probs.float()
    by_col = padded.transpose(1, 2).reshape(n * (k + 1), k + 1)
    row0 = cdet * (k + 1) + x_i
    acol = (by_col.index_select(0, row0) * x_w0[:, None] + by_col.index_select(0, row0 + 1) * x_w1[:, None]).reshape(-1)
    acol1 = acol[1:]
    col_len = ylen.index_select(0, cdet)
    col_start = excl_cumsum(col_len)
    j_first = excl_cumsum(ylen).index_select(0, cdet)
    j_jump = j_first - torch.cat([j_first.new_zeros(1), (j_first + col_len - 1)[:-1]])
    col_len_h = np.repeat(ylen_h, rw_h)
    ends = np.cumsum(col_len_h)
    col_start_h = np.concatenate([[0], ends])
    found, a = 0, 0
    while a < col_len_h.shape[0]:
        b = max(int(np.searchsorted(ends, col_start_h[a] + chunk, side="right")), a + 1)
        p0, p1 = int(col_start_h[a]), int(col_start_h[b])
        starts = col_start[a:b] - p0
        jd = torch.ones(p1 - p0, dtype=torch.int64, device=dev)
        jd[starts] = j_jump[a:b]
        jd[0] = j_first[a]
        j = torch.cumsum(jd, 0)
        bd = torch.zeros(p1 - p0, dtype=torch.int64, device=dev)
        bd[starts] = k + 1
        bd[0] = a * (k + 1)
        at = torch.cumsum(bd, 0) + y_i.index_select(0, j)
        v = y_w0.index_select(0, j) * acol.take(at) + y_w1.index_select(0, j) * acol1.take(at)
        bits = (v >= threshold) if method == "detectron2" else (v > threshold)
        b8 = bits.to(torch.int8)
        step = torch.diff(b8, prepend=b8.new_zeros(1))
        found += int(torch.nonzero(step).shape[0])
        a = b
    return found


def interp_loop(probs: Any, boxes: Any, hw: tuple, threshold: float) -> int:
    """Per detection: torchvision's paste with F.interpolate, then that mask's transitions."""
    import torch
    import torch.nn.functional as F

    from rcnn_deploy.glue.gpu_post import _geometry

    dev = probs.device
    n, m = probs.shape[0], probs.shape[-1]
    hw_t = torch.tensor([hw], device=dev).expand(n, 2)
    regions, ((ey0, h), (ex0, w)) = _geometry(boxes, hw_t, m, "torchvision", torch.float64)
    geo = torch.stack([regions[:, 0], regions[:, 1], regions[:, 2], regions[:, 3], ey0, ex0, h, w], 1).cpu().tolist()
    padded = F.pad(probs, (1, 1, 1, 1))
    found = 0
    for i, (y0, y1, x0, x1, ey, ex, hh, ww) in enumerate(geo):
        if y1 <= y0 or x1 <= x0:
            continue
        full = F.interpolate(padded[i][None, None], size=(hh, ww), mode="bilinear", align_corners=False)[0, 0]
        crop = full[y0 - ey : y1 - ey, x0 - ex : x1 - ex] > threshold
        cols = F.pad(crop.t().to(torch.int8), (0, 1))
        flat = cols.reshape(-1)
        step = torch.diff(flat, prepend=flat.new_zeros(1))
        found += int(torch.nonzero(step).shape[0])
    return found


def run_case(
    data: Dict[str, np.ndarray],
    sizes: str,
    method: str,
    hw: tuple,
    dev: Any,
    sync: Callable[[], None],
    repeat: int,
    max_elements: int,
    fill: float,
    alternatives: bool,
) -> Dict[str, Any]:
    import torch

    from rcnn_deploy.glue.gpu_post import _chunks, _kernel_runs, paste_runs
    from rcnn_deploy.runtime.masks import PastedMasks, rle_counts

    probs_d = torch.from_numpy(data["probs"]).to(dev)
    boxes_d = torch.from_numpy(data["boxes"]).to(dev)
    ref = PastedMasks(data["probs"], data["boxes"], hw, method, 0.5)
    n = len(ref)

    def host_counts() -> list:
        out = []
        for i in range(n):
            r = ref.region(i)
            out.append([hw[0] * hw[1]] if r is None else rle_counts(r[4], r[0], r[2], hw))
        return out

    def device_counts(kernel: Any = None) -> list:
        masks = paste_runs(probs_d, boxes_d, hw, method, 0.5, max_elements, fill, kernel).masks(0, n, hw)
        return [masks.counts(i) for i in range(n)]

    def device_rle() -> list:
        masks = paste_runs(probs_d, boxes_d, hw, method, 0.5, max_elements, fill).masks(0, n, hw)
        return [masks.rle(i) for i in range(n)]

    want, got, got_groups = host_counts(), device_counts(), device_counts(False)
    runs = paste_runs(probs_d, boxes_d, hw, method, 0.5, max_elements, fill)
    rh = np.maximum(runs.regions[:, 1] - runs.regions[:, 0], 0)
    rw = np.maximum(runs.regions[:, 3] - runs.regions[:, 2], 0)
    groups = _chunks(rh, rw, max_elements, fill)
    row: Dict[str, Any] = {
        "sizes": sizes,
        "method": method,
        "region_pixels": int((rh * rw).sum()),
        "mismatched_masks": sum(w != g for w, g in zip(want, got)),
        "kernel": bool(_kernel_runs(dev)),
        "mismatched_masks_groups": sum(w != g for w, g in zip(want, got_groups)),
        "groups": len(groups),
        "padded_pixels": int(sum(len(g) * (rh[g].max() + 1) * rw[g].max() for g in groups)),
        "runs": int(runs.runs.shape[0]),
        "runs_bytes_to_host": int(runs.runs.shape[0] * 2 * 4),
        "probabilities_bytes": int(data["probs"].nbytes),
        "host_counts": timed(host_counts, repeat, sync),
        "host_rle": timed(lambda: [ref.rle(i) for i in range(n)], repeat, sync),
        "device_runs": timed(lambda: paste_runs(probs_d, boxes_d, hw, method, 0.5, max_elements, fill), repeat, sync),
        "device_counts": timed(device_counts, repeat, sync),
        "device_counts_groups": timed(lambda: device_counts(False), repeat, sync),
        "device_rle": timed(device_rle, repeat, sync),
    }
    row.update(postprocess_rows(data, method, hw, dev, sync, repeat, want, [ref.rle(i)["counts"] for i in range(n)]))
    if alternatives:
        row["ragged_gather"] = timed(lambda: ragged_gather(probs_d, boxes_d, hw, method, 0.5), repeat, sync)
        if method == "torchvision":
            row["interp_loop"] = timed(lambda: interp_loop(probs_d, boxes_d, hw, 0.5), repeat, sync)
    return row


def postprocess_rows(
    data: Dict[str, np.ndarray],
    method: str,
    hw: tuple,
    dev: Any,
    sync: Callable[[], None],
    repeat: int,
    want: list,
    strings: list,
) -> Dict[str, Any]:
    """``postprocess_batch`` (what GpuPost runs per batch: boxes back to the image, masks pasted, runs back on the
    host) on the case as one image's padded outputs, at batch 1 and as 8 copies of it: the grid layout (the
    default where the kernel runs: no synchronisation before the one copy back) and the ragged one
    (``GRID_MAX_ELEMENTS = 0``), each mask's counts and COCO RLE string (made on the device in the grid layout)
    checked against the host's (``want``, ``strings``)."""
    import torch

    from rcnn_deploy.glue import gpu_post
    from rcnn_deploy.runtime.preprocess import Letterbox

    n = len(data["boxes"])
    lb = Letterbox.fit(hw[0], hw[1], hw)  # the boxes are in the image's pixels already
    one = {
        "num_detections": torch.tensor([n], dtype=torch.int32),
        "boxes": torch.from_numpy(data["boxes"])[None],
        "scores": torch.linspace(1, 0.05, n)[None],
        "classes": torch.ones((1, n), dtype=torch.int32),
        "masks": torch.from_numpy(data["probs"])[None],
    }
    rows: Dict[str, Any] = {}
    budget = gpu_post.GRID_MAX_ELEMENTS
    try:
        for b in (1, 8):
            outs = {k: v.repeat(b, *([1] * (v.dim() - 1))).to(dev) for k, v in one.items()}
            for layout, limit in (("grid", budget), ("ragged", 0)):
                gpu_post.GRID_MAX_ELEMENTS = limit
                got = gpu_post.postprocess_batch(outs, [lb] * b, method, 0.5)["detections"]
                masks = [d.pasted for d in got]
                rows[f"mismatched_masks_post_{layout}_b{b}"] = sum(
                    sum(w != m.counts(i) for i, w in enumerate(want)) for m in masks
                )
                rows[f"mismatched_strings_post_{layout}_b{b}"] = sum(
                    sum(w != r["counts"] for w, r in zip(strings, m.rles())) for m in masks
                )
                rows[f"strings_on_device_post_{layout}_b{b}"] = all(m.texts is not None for m in masks)
                if dev.type == "cuda":  # synchronising calls torch reports inside one call (the grid's: none)
                    import warnings

                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        torch.cuda.set_sync_debug_mode("warn")
                        try:
                            gpu_post.postprocess_batch(outs, [lb] * b, method, 0.5)
                        finally:
                            torch.cuda.set_sync_debug_mode("default")
                    rows[f"syncs_post_{layout}_b{b}"] = sum("synchroniz" in str(w.message) for w in caught)
                rows[f"postprocess_{layout}_b{b}"] = timed(
                    lambda outs=outs, b=b: gpu_post.postprocess_batch(outs, [lb] * b, method, 0.5), repeat, sync
                )
    finally:
        gpu_post.GRID_MAX_ELEMENTS = budget
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_post_cpu.json"))
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--detections", type=int, default=100)
    ap.add_argument("--mask-size", type=int, default=28)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-elements", type=int, default=None, help="paste_runs' group size (default: its own)")
    ap.add_argument("--min-fill", type=float, default=None, help="paste_runs' min_fill (default: its own by device)")
    ap.add_argument("--no-alternatives", action="store_true", help="skip ragged_gather and interp_loop")
    a = ap.parse_args()

    import torch

    from rcnn_deploy.glue.gpu_post import DEFAULT_MAX_ELEMENTS, DEFAULT_MIN_FILL, MIN_FILL
    from rcnn_deploy.runtime._opencv import opencv

    if a.threads:
        torch.set_num_threads(a.threads)
        cv2 = opencv()
        if cv2 is not None:
            cv2.setNumThreads(a.threads)
        try:  # numpy's BLAS (the host's Detectron2 paste multiplies matrices)
            from threadpoolctl import threadpool_limits

            threadpool_limits(a.threads)
        except ImportError:
            pass
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    hw = (a.height, a.width)
    max_elements = a.max_elements or DEFAULT_MAX_ELEMENTS
    rng = np.random.default_rng(0)
    cases = []
    fill = a.min_fill if a.min_fill is not None else MIN_FILL.get(dev.type, DEFAULT_MIN_FILL)
    for sizes in ("lognormal", "uniform"):
        data = make_case(rng, a.detections, a.height, a.width, a.mask_size, sizes)
        for method in ("torchvision", "detectron2"):
            row = run_case(data, sizes, method, hw, dev, sync, a.repeat, max_elements, fill, not a.no_alternatives)
            print(json.dumps(row), flush=True)
            cases.append(row)
    info = {
        "commit": tree(),  # the tree sent, where device_session.sh set it, else git's
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "opencv": opencv() is not None,
        "image_hw": list(hw),
        "detections": a.detections,
        "mask_size": a.mask_size,
        "repeat": a.repeat,
        "max_elements": max_elements,
        "min_fill": fill,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "cases": cases}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
