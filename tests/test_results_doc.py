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
    res = ROOT / "benchmarks" / "results"
    assert sorted(res.glob("results_table_run*.json")), "no committed results"
    text = mod.rendered(res)
    assert (ROOT / "docs" / "results.md").read_text() == text
    readme = (ROOT / "README.md").read_text()
    for name, block in mod.readme_blocks(text).items():
        assert f"<!-- {name}:begin -->\n{block}\n<!-- {name}:end -->" in readme, name


def test_merge_keeps_measurements_and_converts_roi_batches():
    mod = _update_results()
    a = {
        "rows": [{"backend": "tensorrt", "graph": "split", "precision": "int8", "error": "x was not built"}],
        "latency": [
            {"size": 384, "variant": "split", "engine": "box_head_fp16.engine", "batch": 8000, "median_ms": 1.0}
        ],
    }
    b = {
        "rows": [{"backend": "TensorRT 8.6", "graph": "split", "precision": "int8", "bbox_mAP": 0.7, "images": 9}],
        "latency": [],
    }
    a, b = mod.annotate(a, "results_table_run1.json", {}), mod.annotate(b, "results_table_run2.json", {})
    m = mod.merge([a, b])
    assert m["rows"] == b["rows"]  # a measurement replaces a failure (the error row's backend name normalised)
    assert m["latency"][0]["batch"] == 8  # 1000 ROIs per image for the box head
    assert mod.merge([b, a])["rows"] == b["rows"]  # ... and a later failure does not replace it


def test_fused_rows_of_another_rpn_nms_layout_stay_apart_and_deltas_use_the_same_images():
    mod = _update_results()
    ref = {"backend": "pytorch", "graph": "eager", "precision": "fp32", "size": 1344, "images": 50, "bbox_mAP": 0.5}
    old = {"backend": "tensorrt", "graph": "fused_b1", "precision": "fp16", "size": 1344, "images": 50, "bbox_mAP": 0.4}
    ref30 = dict(ref, images=30, bbox_mAP=0.6)
    new = dict(old, images=30, bbox_mAP=0.55)
    m = mod.merge(
        [
            mod.annotate({"rows": [ref, old]}, "results_table_run3.json", {"rpn_nms": "one set"}),
            mod.annotate({"rows": [ref30, new]}, "results_table_run4.json", {"rpn_nms": "per level"}),
        ]
    )
    fused = sorted((r["rpn_nms"], round(r["d_bbox"], 6)) for r in m["rows"] if r["graph"] == "fused_b1")
    assert fused == [("one set", -0.1), ("per level", -0.05)]
    assert len([r for r in m["rows"] if r["graph"] == "eager"]) == 2  # both references, on their images


def test_runs_sort_by_number_and_end_to_end_adds_the_same_runs_host_stages():
    mod = _update_results()
    fused = {"backend": "tensorrt", "graph": "fused_b8", "precision": "fp16", "size": 384, "images": 9, "bbox_mAP": 0.7}

    def host(pre, post):
        return [
            {"size": 384, "variant": "host", "engine": "preprocess", "batch": 1, "median_ms": pre},
            {"size": 384, "variant": "host", "engine": "postprocess", "batch": 1, "median_ms": post},
        ]

    engine = {"size": 384, "variant": "fused_b1", "engine": "fused_fp16.engine", "batch": 1, "median_ms": 2.0}
    run9 = {"rows": [fused], "latency": host(9.0, 5.0)}
    run10 = {"rows": [], "latency": host(7.0, 4.0) + [dict(engine, infer_wall_median_ms=3.0)]}
    names = ["results_table_run10.json", "results_table_run9.json"]  # as a name sort lists them
    assert [mod._run_number(n) for n in sorted(names, key=mod._run_number)] == [9, 10]
    run11 = {"rows": [], "latency": host(20.0, 20.0)}  # a later run that timed the host stages, not the engine
    states = [mod.annotate(run9, names[1], {}), mod.annotate(run10, names[0], {})]
    state = mod.merge(states + [mod.annotate(run11, "results_table_run11.json", {})])
    row = next(line for line in mod.render(state).splitlines() if line.startswith("| TensorRT 8.6 | fused_b8"))
    # GPU compute 2.00 from run 10; end-to-end = run 10's host stages (7 + 4) + its wall time (3), not run 11's
    assert "| 2.00 | 14.00 |" in row and row.endswith("| 9, 10 |"), row


def test_split_end_to_end_sums_the_gpu_resident_stages(tmp_path):
    mod = _update_results()
    split = {"backend": "tensorrt", "graph": "split", "precision": "fp16", "size": 384, "images": 9, "bbox_mAP": 0.7}
    host = [
        {"size": 384, "variant": "host", "engine": n, "batch": 1, "median_ms": ms}
        for n, ms in (("preprocess", 5.0), ("postprocess", 3.0))
    ]
    engines = [
        {"size": 384, "engine": f"{r}_fp16.engine", "role": r, "batch": 1, "same_outputs": True, "output_mbytes": 1.0,
         "host_io_wall_ms": 10.0, "device_io_wall_ms": ms}
        for r, ms in (("backbone", 1.0), ("box_head", 0.25), ("mask_head", 0.5))
    ]  # fmt: skip
    (tmp_path / "device_io_run12.json").write_text(json.dumps({"results": engines}))
    glue = [{"size": 384, "batch": 1, "glue_median_ms": 2.25}]
    (tmp_path / "split_glue_run12.json").write_text(json.dumps({"results": glue}))
    io = mod.load_split_io(tmp_path)
    state = mod.merge([mod.annotate({"rows": [split], "latency": host}, "results_table_run11.json", {})])
    text = mod.render(state, split_io=io)
    row = next(line for line in text.splitlines() if line.startswith("| TensorRT 8.6 | split | fp16"))
    assert "| 12.00¹ |" in row and row.endswith("| 11, 12 |"), row  # 5 + (1 + 0.25 + 0.5 + 2.25) + 3
    assert "| 384 | fp16 | 1 | 2.25 | 32.25 | 4.00 | 250 | 12 |" in text  # host path: 3 x 10 + 2.25
