"""docs/e2e.md is what ``rcnn_deploy.reports.e2e`` renders from the committed results (never edited by hand)."""

from __future__ import annotations

from pathlib import Path

from rcnn_deploy.reports.e2e import render

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_doc_matches_the_results():
    assert (ROOT / "docs" / "e2e.md").read_text() == render(ROOT), "run: python benchmarks/e2e_report.py"
