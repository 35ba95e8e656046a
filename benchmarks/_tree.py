"""The tree a benchmark ran, for its results file: ``RCNN_DEPLOY_TREE`` where a device session sets it
(benchmarks/device_session.sh, from what benchmarks/device_prep_here.sh wrote on the development machine: the
device's git copy does not follow local commits), else git's short HEAD. Imports nothing heavy and parses on
CPython 3.9 (the TensorRT 8.6 process imports it too)."""

from __future__ import annotations

import os
import subprocess
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sent_tree() -> Optional[str]:
    """What the device session recorded as the tree it sent, or None outside one."""
    return os.environ.get("RCNN_DEPLOY_TREE") or None


def tree() -> Optional[str]:
    """:func:`sent_tree`, else git's short HEAD of this repository (None without git)."""
    sent = sent_tree()
    if sent:
        return sent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return None
    return out.stdout.strip() or None
