"""docs/results.md and the README's results table are regenerated from the committed GPU results, never
edited by hand: re-rendering them from benchmarks/results/results_table_run*.json changes nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _update_results():
    spec = importlib.util.spec_from_file_location("update_results", ROOT / "benchmarks" / "update_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_doc_is_the_rendering_of_the_committed_json():
    mod = _update_results()
    runs = sorted((ROOT / "benchmarks" / "results").glob("results_table_run*.json"))
    assert runs, "no committed results"
    text = mod.render(mod.merge([json.loads(p.read_text()) for p in runs]))
    assert (ROOT / "docs" / "results.md").read_text() == text
    table = text[text.index("## Accuracy") : text.index("## Whole")].split("\n", 2)[2].strip()
    assert table in (ROOT / "README.md").read_text()


def test_merge_keeps_measurements_and_converts_roi_batches():
    mod = _update_results()
    a = {"rows": [{"backend": "TensorRT 8.6", "graph": "split", "precision": "int8", "error": "x was not built"}],
         "latency": [{"size": 384, "variant": "split", "engine": "box_head_fp16.engine", "batch": 8000,
                      "median_ms": 1.0}]}
    b = {"rows": [{"backend": "TensorRT 8.6", "graph": "split", "precision": "int8", "bbox_mAP": 0.7}],
         "latency": []}
    m = mod.merge([a, b])
    assert m["rows"] == b["rows"]  # a measurement replaces a failure
    assert m["latency"][0]["batch"] == 8  # 1000 ROIs per image for the box head
    assert mod.merge([b, a])["rows"] == b["rows"]  # ... and a later failure does not replace it
