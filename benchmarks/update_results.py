"""Regenerate docs/results.md and the README's results tables from the committed runs in benchmarks/results/
(the renderer is rcnn_deploy.reports.results; tests/test_results_doc.py checks both files equal its output).

    python benchmarks/update_results.py [--results benchmarks/results] [--out docs/results.md] [--readme README.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy._io import atomic_write_text  # noqa: E402
from rcnn_deploy.reports.results import readme_blocks, render_results, replace_blocks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    a = ap.parse_args()
    text = render_results(a.results)
    atomic_write_text(a.out, text)
    print(f"wrote {a.out} from {a.results}")
    atomic_write_text(a.readme, replace_blocks(a.readme.read_text(), readme_blocks(text)))
    print(f"updated {a.readme}")


if __name__ == "__main__":
    main()
