"""The code that runs under real TensorRT 8.6 on the GPU machine (CPython 3.9, numpy, no torch) stays that way:
the TensorRT tools and every project module they import load with torch blocked, and parse as Python 3.9. So do
the serving module and what the python flavour's model.py loads, which serve a TensorRT 8.6 engine from 3.9."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = [
    "benchmarks/trt_tool.py",
    "benchmarks/trt86_device_io.py",
    "benchmarks/e2e_trt.py",
    "benchmarks/thread_cpu.py",
    "benchmarks/trt_runner_probe.py",
    "benchmarks/nvjpeg_bench.py",
]

PROBE = """
import importlib.util, json, sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
sys.path.insert(0, {src!r})
for i, tool in enumerate({tools!r}):
    spec = importlib.util.spec_from_file_location(f"tool{{i}}", tool)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import rcnn_deploy.backends.tensorrt.runtime, rcnn_deploy.backends.tensorrt.calibrator, rcnn_deploy.contract
import rcnn_deploy.backends.tensorrt.pipelined, rcnn_deploy.api, rcnn_deploy.runtime.writers
import rcnn_deploy.backends.tensorrt.gpu_pre, rcnn_deploy.evaluation.parity, rcnn_deploy.backends.tensorrt.paste
import rcnn_deploy.evaluation.dataset
import rcnn_deploy.serve.__main__, rcnn_deploy.serve.server, rcnn_deploy.serve.contract  # served from CPython 3.9
mods = [m for n, m in sys.modules.items() if n.startswith("rcnn_deploy") and getattr(m, "__file__", None)]
print(json.dumps(sorted(m.__file__ for m in mods)))
"""


def test_tensorrt_side_imports_without_torch_and_parses_as_python39():
    tools = [str(ROOT / t) for t in TOOLS]
    code = PROBE.format(src=str(ROOT / "src"), tools=tools)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    files = json.loads(p.stdout.strip().splitlines()[-1]) + tools
    assert any(f.endswith("runtime.py") for f in files) and any(f.endswith("builder.py") for f in files)
    assert any(f.endswith("stream.py") for f in files) and any(f.endswith("pipelined.py") for f in files)
    assert any(f.endswith("contract.py") for f in files)  # the runtimes check graphs and engines against it
    assert any(f.endswith("cuda_rtc.py") for f in files)  # the mask paste kernel's NVRTC / driver calls
    assert any(f.endswith("__main__.py") for f in files)  # python -m rcnn_deploy.serve (device_serve.sh bench_trt)
    for f in files:
        ast.parse(Path(f).read_text(), filename=f, feature_version=(3, 9))
