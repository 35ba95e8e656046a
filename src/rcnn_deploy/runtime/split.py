"""The deploy model's names for a fused graph's outputs (numpy only; Python 3.9 compatible).

The split-graph pipeline (three backends with the torch glue between them) is :mod:`rcnn_deploy.glue.split`.
"""

from __future__ import annotations

from typing import Dict

import numpy as np


def fused_outputs(out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Rename a fused graph's outputs (``detection_*``) to the deploy model's names."""
    return {k.replace("detection_", ""): v for k, v in out.items()}
