"""docs/e2e.md is what ``rcnn_deploy.reports.e2e`` renders from the committed results (never edited by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from rcnn_deploy.reports.e2e import render

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_doc_matches_the_results():
    assert (ROOT / "docs" / "e2e.md").read_text() == render(ROOT), "run: python benchmarks/e2e_report.py"


def test_every_memory_result_file_renders_its_rows(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    rows = {"infer": 1.5, "infer-no-png": 2.5, "dense-masks": 3.5, "model-only": 4.5}
    for size, dirty in ((384, False), (1344, True)):
        doc = {
            "script": "benchmarks/memory_bench.py",
            "machine": {"platform": "Linux-test", "cpus": 2},
            "commit": f"c{size}",
            "dirty": dirty,
            "photo_hw": [4000, 6000],
            "input_hw": [size, size],
            "detections": 100,
            "peak_rss_mib": {k: v + size for k, v in rows.items()},
            "above_model_mib": {k: v - 4.5 for k, v in rows.items()},
        }
        (results / f"memory_cpu_{size}.json").write_text(json.dumps(doc))
    (results / "memory_cpu.json").write_text("not read")  # the old single file is not rendered
    text = render(tmp_path)
    for size in (384, 1344):
        lines = [line for line in text.splitlines() if line.startswith(f"| memory_cpu_{size}.json |")]
        assert len(lines) == len(rows), text
        for line, (case, v) in zip(lines, rows.items()):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[4:] == [f"{size}×{size}", case, str(v + size), str(v - 4.5)], cells
            assert cells[2] == f"c{size}" + (" (uncommitted changes)" if size == 1344 else ""), cells
