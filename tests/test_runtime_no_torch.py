"""Every module of ``rcnn_deploy.runtime`` imports with torch unimportable (it runs beside TensorRT on Python 3.9
without torch)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "src" / "rcnn_deploy" / "runtime"
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(RUNTIME)]))

PROBE = """
import importlib, json, sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
sys.path.insert(0, {src!r})
failed = {{}}
for name in {modules!r}:
    try:
        importlib.import_module("rcnn_deploy.runtime." + name)
    except Exception as e:
        failed[name] = f"{{type(e).__name__}}: {{e}}"
import rcnn_deploy.evaluation.coco, rcnn_deploy.evaluation.ground_truth, rcnn_deploy.evaluation.parity
import rcnn_deploy.evaluation.reference, rcnn_deploy.evaluation.dataset
loaded = sorted(n for n, m in sys.modules.items() if n.startswith("rcnn_deploy") and m is not None)
print(json.dumps({{"failed": failed, "loaded": loaded}}))
"""


def test_every_runtime_module_imports_without_torch() -> None:
    assert {"coco", "split", "stream", "preprocess", "masks"} <= set(MODULES)
    code = PROBE.format(src=str(ROOT / "src"), modules=MODULES)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]
    assert "rcnn_deploy.glue" not in out["loaded"]  # nothing of the torch side came along
    for name in MODULES:
        src = (RUNTIME / f"{name}.py").read_text()
        ast.parse(src, filename=name, feature_version=(3, 9))
