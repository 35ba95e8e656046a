"""The sync-free NMS's fixed rounds (``glue.sync_free.fixpoint_rounds``) both ways: a half-precision matrix-vector
product per round ("matmul") against one Triton kernel per round on the suppression matrix packed into bits
("bits", ``glue.nms_triton``), as the CUDA graphs replay them.

    python benchmarks/nms_fixpoint_bench.py --out $OUT/nms_fixpoint_cuda.json            # a GPU
    TRITON_INTERPRET=1 python benchmarks/nms_fixpoint_bench.py --device cpu --quick --out /tmp/n.json

Cases: the shapes the 1344² Mask R-CNN gives them, ``[B, M, M]``: the box head's NMS (M = 3840, TopK's limit)
and the RPN's per-level NMS (B x 5 levels, M = 1000), at batch 1 and 8. The matrix comes from random boxes
(suppression where IoU > 0.5 and the other box scores higher, as ``formulations.nms_fixpoint`` builds it).
Each case and way runs ``--rounds`` rounds plus the convergence round, captured in one CUDA graph (on CUDA;
eagerly elsewhere) and replayed ``--repeat`` times between CUDA events: ``ms`` per call (median of 3 such timings).
``same`` says whether both ways kept the same candidates and gave the same convergence flag (they must).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from _tree import tree  # this folder (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def suppression(b: int, m: int, size: float, seed: int, device: str) -> Any:
    import torch

    from rcnn_deploy.glue.formulations import _pairwise_iou

    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(b, m, 2, generator=g) * size
    half = torch.exp(torch.randn(b, m, 2, generator=g) * 0.6 + 3.5) / 2
    boxes = torch.cat([centre - half, centre + half], -1).to(device)
    scores = torch.rand(b, m, generator=g).to(device)
    rank = torch.arange(m, device=device)
    s_i, s_j = scores.unsqueeze(2), scores.unsqueeze(1)
    above = (s_j > s_i) | ((s_j == s_i) & (rank.view(1, 1, m) < rank.view(1, m, 1)))
    valid = (torch.rand(b, m, generator=g) < 0.9).float().to(device)
    return (_pairwise_iou(boxes) > 0.5) & above, valid


def timed(fn: Callable[[], Any], device: str, repeat: int) -> float:
    import torch

    if device != "cuda":
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) * 1e3 / repeat
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    runs = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / repeat)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rounds", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="small cases (the interpreter on a CPU)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    import rcnn_deploy.glue.sync_free as sf
    from rcnn_deploy._io import atomic_write_json
    from rcnn_deploy.glue import nms_triton

    cases = [(1, 3840, "box head, batch 1"), (8, 3840, "box head, batch 8"), (5, 1000, "RPN levels, batch 1"),
             (40, 1000, "RPN levels, batch 8")]  # fmt: skip
    if a.quick:
        cases = [(1, 200, "quick"), (3, 70, "quick")]
    rows: List[Dict[str, Any]] = []
    for i, (b, m, what) in enumerate(cases):
        s, valid = suppression(b, m, 1344.0, i, a.device)
        row: Dict[str, Any] = {"case": what, "batch_rows": b, "candidates": m, "rounds": a.rounds}
        out: Dict[str, Any] = {}
        for way in sf.SYNC_FREE_FIXPOINTS:
            sf.SYNC_FREE_FIXPOINT = way
            state = sf.SyncFree(a.rounds)

            def call(state: Any = state, way: str = way, s: Any = s, valid: Any = valid, out: Dict = out) -> None:
                state.converged = None
                out[way] = (sf.fixpoint_rounds(s, valid, state), state)

            row[f"{way}_ms"] = round(timed(call, a.device, a.repeat), 4)
        if a.device == "cuda" or nms_triton.available(a.device):
            row["pack_ms"] = round(timed(lambda s=s: nms_triton.pack_bits(s), a.device, a.repeat), 4)
        (k_m, st_m), (k_b, st_b) = out["matmul"], out["bits"]
        row["same"] = bool(torch.equal(k_m, k_b)) and bool(st_m.converged) == bool(st_b.converged)
        row["converged"] = bool(st_b.converged)
        row["kept"] = int(k_b.sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {
        "script": "benchmarks/nms_fixpoint_bench.py",
        "commit": tree(),
        "device": torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "bits_ran": a.device == "cuda" or nms_triton.available(a.device),
        "rows": rows,
    }
    atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
