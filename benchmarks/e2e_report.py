"""docs/e2e.md from the end-to-end benchmark results in benchmarks/results/e2e/ (the renderer is
``rcnn_deploy.reports.e2e``; one row = one run of one script on one named machine and commit).

    python benchmarks/e2e_report.py            # rewrites docs/e2e.md
    python benchmarks/e2e_report.py --check    # exit 1 when docs/e2e.md is not current
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rcnn_deploy.reports.e2e import render  # noqa: E402

DOC = ROOT / "docs" / "e2e.md"


def main() -> None:
    text = render(ROOT)
    if "--check" in sys.argv:
        sys.exit(0 if DOC.is_file() and DOC.read_text() == text else 1)
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
