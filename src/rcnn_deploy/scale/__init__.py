"""Scale out: batch inference and evaluation on Ray Data (``pip install 'rcnn-deploy[ray]'``).

``RayDetector`` is a Detector as a Ray Data callable class for your own pipeline (``ds.map_batches``);
``infer_on_ray`` / ``eval_on_ray`` are what ``rcnn-deploy infer/eval --ray`` run (sharded, resumable, each input exactly
once). Importing this package does not import Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayDetector", "RunReport", "eval_on_ray", "infer_on_ray"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import ray_infer as _m

        return getattr(_m, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
