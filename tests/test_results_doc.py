"""docs/results.md and the README's results tables are regenerated from the committed GPU runs, never edited by
hand: re-rendering them from benchmarks/results/ with the package renderer (rcnn_deploy.reports.results, the one
benchmarks/update_results.py calls) changes nothing. And every row is one run's measurement, named by its run,
GPU and commit: a later failure never hides a measurement, and sums / differences never mix runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from rcnn_deploy.reports.results import (
    README_BLOCKS,
    RUN_COLUMN,
    readme_blocks,
    render_results,
    replace_blocks,
    run_number,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _table_rows(block: str) -> List[List[str]]:
    """The data rows of the markdown table(s) in ``block`` as lists of cells (header and rule skipped)."""
    rows = []
    for line in block.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [r for r in rows if r[-1] != RUN_COLUMN]


def test_results_doc_and_readme_are_the_rendering_of_the_committed_json() -> None:
    text = render_results(RESULTS)
    assert (ROOT / "docs" / "results.md").read_text() == text
    readme = (ROOT / "README.md").read_text()
    blocks = readme_blocks(text)
    assert set(blocks) == set(README_BLOCKS)
    for name, block in blocks.items():
        assert f"<!-- {name}:begin -->\n{block}\n<!-- {name}:end -->" in readme, name
    assert replace_blocks(readme, blocks) == readme


def test_every_readme_row_is_one_run_on_a_named_gpu_and_commit() -> None:
    meta = json.loads((RESULTS / "runs.json").read_text())
    runs = {run_number(name): m for name, m in meta.items()}
    gpus = {
        run_number(p.name): json.loads(p.read_text())["info"]["gpu"] for p in RESULTS.glob("results_table_run*.json")
    }
    readme = (ROOT / "README.md").read_text()
    for name in README_BLOCKS:
        block = readme.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]
        rows = _table_rows(block)
        assert rows, name
        for row in rows:
            m = re.fullmatch(r"(\d+) · (.+) · (\w+)", row[-1])  # one run number, never "9, 10"
            assert m, row
            n = int(m.group(1))
            assert m.group(2) == gpus[n].replace("NVIDIA ", "") and m.group(3) == runs[n]["commit"], row


# ------------------------------------------------------------------------------------- the rules, on toy runs


def _write(res: Path, runs: Dict[int, Dict[str, Any]], commits: Optional[Dict[int, str]] = None) -> Path:
    res.mkdir(parents=True, exist_ok=True)
    meta = {}
    for n, state in runs.items():
        state = {"info": {"gpu": f"NVIDIA GPU{n}"}, "config": {"size": 384, "big": 1344, "batch": 8}, **state}
        (res / f"results_table_run{n}.json").write_text(json.dumps(state))
        meta[f"results_table_run{n}.json"] = {"session": n, "commit": (commits or {}).get(n, f"c{n}"), "note": ""}
    (res / "runs.json").write_text(json.dumps(meta))
    return res


def _block(res: Path, name: str) -> List[List[str]]:
    return _table_rows(readme_blocks(render_results(res))[name])


REF = {"backend": "pytorch", "graph": "eager", "precision": "fp32", "size": 384, "images": 9, "bbox_mAP": 0.5}
ROW = {"backend": "tensorrt", "graph": "split", "precision": "fp16", "size": 384, "images": 9, "bbox_mAP": 0.4}


def test_latest_measurement_wins_and_a_later_failure_does_not_hide_it(tmp_path: Path) -> None:
    failed = dict(ROW, error="x was not built")
    del failed["bbox_mAP"]
    res = _write(
        tmp_path,
        {
            9: {"rows": [REF, ROW]},
            10: {"rows": [REF, dict(ROW, bbox_mAP=0.45)]},  # run 10 after run 9 (not a name sort)
            11: {"rows": [failed]},
        },
    )
    rows = {r[0]: r for r in _block(res, "results-accuracy")}
    assert rows["TensorRT 8.6"][4] == "0.4500" and rows["TensorRT 8.6"][-1] == "10 · GPU10 · c10"
    assert rows["TensorRT 8.6"][6] == "-0.0500"
    text = render_results(res)
    assert "### Run 11" in text and "not measured: device time ran out before this row" in text  # history keeps it


def test_delta_is_against_the_same_runs_reference_only(tmp_path: Path) -> None:
    res = _write(tmp_path, {3: {"rows": [REF]}, 4: {"rows": [dict(ROW, bbox_mAP=0.45)]}})  # run 4: no reference
    rows = {r[0]: r for r in _block(res, "results-accuracy")}
    assert rows["TensorRT 8.6"][-1] == "4 · GPU4 · c4" and rows["TensorRT 8.6"][6] == "—"  # not 0.45 - run 3's 0.5
    assert rows["PyTorch (deploy model)"][-1] == "3 · GPU3 · c3"


def _lat(variant: str, engine: str, batch: int, ms: float, **kw: Any) -> Dict[str, Any]:
    return {"size": 384, "variant": variant, "engine": engine, "batch": batch, "median_ms": ms, **kw}


def _host(pre: float, post: float) -> List[Dict[str, Any]]:
    return [_lat("host", "preprocess", 1, pre), _lat("host", "postprocess", 1, post)]


def test_end_to_end_adds_only_the_same_runs_host_stages(tmp_path: Path) -> None:
    engine = _lat("fused_b1", "fused_fp16.engine", 1, 2.0, infer_wall_median_ms=3.0)
    res = _write(tmp_path / "a", {9: {"latency": _host(9.0, 5.0)}, 10: {"latency": [engine]}})
    (row,) = _block(res, "results-latency")
    assert row[4] == "2.00" and row[6] == "—" and row[-1] == "10 · GPU10 · c10"  # run 9's host stages not borrowed
    res = _write(tmp_path / "b", {9: {"latency": _host(9.0, 5.0)}, 10: {"latency": [engine] + _host(7.0, 4.0)}})
    (row,) = _block(res, "results-latency")
    assert row[6] == "14.00"  # 7 + 3 + 4, all run 10's


def test_split_engines_are_summed_only_within_one_run(tmp_path: Path) -> None:
    parts = [_lat("split", f"{r}_fp16.engine", 1, ms) for r, ms in (("backbone", 1.0), ("box_head", 0.25))]
    mask = _lat("split", "mask_head_fp16.engine", 1, 0.5)
    res = _write(tmp_path / "a", {5: {"latency": parts}, 6: {"latency": [mask]}})
    assert _block(res, "results-latency") == []  # three engines from two runs: no row
    res = _write(tmp_path / "b", {5: {"latency": parts}, 6: {"latency": [mask]}, 7: {"latency": parts + [mask]}})
    (row,) = _block(res, "results-latency")
    assert row[1].startswith("split, 3 engines summed") and row[4] == "1.75" and row[-1] == "7 · GPU7 · c7"


def test_old_rpn_nms_layout_and_missing_commits_are_said_so(tmp_path: Path) -> None:
    old = dict(ROW, graph="fused_b8", bbox_mAP=0.3)
    res = _write(tmp_path, {1: {"rows": [REF, old]}}, commits={1: ""})
    meta = json.loads((res / "runs.json").read_text())
    meta["results_table_run1.json"].update(commit=None, rpn_nms="one set")
    (res / "runs.json").write_text(json.dumps(meta))
    rows = _block(res, "results-accuracy")
    assert [r[0] for r in rows] == ["PyTorch (deploy model)"]  # the one-set fused row is history only
    assert rows[0][-1] == "1 · GPU1 · commit not recorded"
    assert "fused_b8, RPN NMS one set" in render_results(res).split("## History")[1]


def test_replace_blocks_refuses_a_readme_without_the_markers() -> None:
    assert replace_blocks("a <!-- x:begin -->\nold\n<!-- x:end --> b", {"x": "new"}) == (
        "a <!-- x:begin -->\nnew\n<!-- x:end --> b"
    )
    with pytest.raises(ValueError, match="x:begin"):
        replace_blocks("no markers", {"x": "new"})
