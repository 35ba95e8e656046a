"""docs/e2e.md is what benchmarks/e2e_report.py renders from the committed results (never edited by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_doc_matches_the_results():
    spec = importlib.util.spec_from_file_location("e2e_report", ROOT / "benchmarks" / "e2e_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "e2e.md").read_text() == mod.render(), "run: python benchmarks/e2e_report.py"
