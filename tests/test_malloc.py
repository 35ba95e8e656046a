"""rcnn_deploy.runtime._malloc: glibc's mmap threshold fixed, so large freed blocks leave the process (each case in
a fresh interpreter: the setting is process-wide and made once)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# The pattern that strands memory under glibc's dynamic threshold: one 16 MiB block freed (the threshold rises
# to 16 MiB), then 24 blocks of 4 MiB from the heap, all freed but the last (it holds the heap's top, so
# nothing is trimmed). With a fixed 1 MiB threshold each 4 MiB block is a mapping, unmapped when freed.
PATTERN = """
import json, re, sys
from rcnn_deploy.errors import UserError
from rcnn_deploy.runtime._malloc import fixed_mmap_threshold
try:
    applied = fixed_mmap_threshold()
except UserError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
import numpy as np

def rss():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\\s+(\\d+)", f.read()).group(1)) / 1024

big = np.ones(16 << 20, np.uint8)
del big
blocks = [np.ones(4 << 20, np.uint8) for _ in range(24)]
before = rss()
del blocks[:-1]
print(json.dumps({"applied": applied, "again": fixed_mmap_threshold(), "released_mib": before - rss()}))
"""


def _run(env_value: Optional[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("RCNN_DEPLOY_MMAP_THRESHOLD", None)
    if env_value is not None:
        env["RCNN_DEPLOY_MMAP_THRESHOLD"] = env_value
    out = subprocess.run([sys.executable, "-c", PATTERN], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_large_blocks_leave_the_process() -> None:
    fixed = _run(None)
    assert fixed["applied"] == 1 << 20 and fixed["again"] == 1 << 20
    assert fixed["released_mib"] > 80, fixed  # 23 x 4 MiB given back
    left_alone = _run("0")  # glibc's own dynamic threshold: the freed blocks stay in the heap
    assert left_alone["applied"] is None
    assert left_alone["released_mib"] < 20, left_alone


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_threshold_from_the_environment() -> None:
    assert _run(str(4 << 20))["applied"] == 4 << 20
    assert "RCNN_DEPLOY_MMAP_THRESHOLD: must be a whole number of bytes" in _run("1M")["error"]
    assert "glibc refused an mmap threshold" in _run(str(1 << 40))["error"]
