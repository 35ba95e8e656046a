"""Every module of ``rcnn_deploy.runtime`` imports with torch unimportable (it runs beside TensorRT on Python 3.9
without torch), and the names that moved out of it (to ``rcnn_deploy.evaluation`` and ``rcnn_deploy.glue.split``)
still resolve from their old modules, to the same objects."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

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
from rcnn_deploy.runtime.coco import evaluate_detector, reference_map  # moved names, through the old module
loaded = sorted(n for n, m in sys.modules.items() if n.startswith("rcnn_deploy") and m is not None)
print(json.dumps({{"failed": failed, "loaded": loaded}}))
"""


def test_every_runtime_module_imports_without_torch() -> None:
    assert {"coco", "parity", "split", "stream", "preprocess", "masks"} <= set(MODULES)
    code = PROBE.format(src=str(ROOT / "src"), modules=MODULES)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]
    assert "rcnn_deploy.glue" not in out["loaded"]  # nothing of the torch side came along
    for name in MODULES:
        src = (RUNTIME / f"{name}.py").read_text()
        ast.parse(src, filename=name, feature_version=(3, 9))


def test_torch_side_names_of_runtime_split_fail_without_torch_only_when_used() -> None:
    code = "\n".join(
        [
            "import sys",
            "sys.modules['torch'] = None",
            f"sys.path.insert(0, {str(ROOT / 'src')!r})",
            "import rcnn_deploy.runtime.split as s",
            "print(sorted(s.fused_outputs({'detection_boxes': 1, 'num_detections': 2})))",
            "try:",
            "    s.SplitPieces",
            "except ImportError:",
            "    print('ImportError')",
        ]
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[:2] == ["['boxes', 'num_detections']", "ImportError"]


def test_moved_names_resolve_from_their_old_modules_to_the_same_objects() -> None:
    pytest.importorskip("torch")
    import importlib

    import rcnn_deploy.runtime.coco as old_coco
    import rcnn_deploy.runtime.parity as old_parity
    import rcnn_deploy.runtime.split as old_split

    moved = {(old_coco, n): m for n, m in old_coco._MOVED.items()}
    moved.update({(old_split, n): m for n, m in old_split._MOVED.items()})
    moved.update({(old_parity, n): "rcnn_deploy.evaluation.parity" for n in old_parity._MOVED})
    assert len(moved) == 13 + 6 + 5  # every public name that moved out of the three
    for (old, name), module in moved.items():
        obj = getattr(importlib.import_module(module), name)
        assert getattr(old, name) is obj, (old.__name__, name)
        if callable(obj):
            assert obj.__module__ == module, (name, obj.__module__)  # defined there, not re-exported
    for old in (old_coco, old_parity, old_split):
        with pytest.raises(AttributeError, match="no_such_name"):
            old.__getattr__("no_such_name")
