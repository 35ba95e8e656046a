"""COCO results from detections (numpy only; Python 3.9 compatible).

``detections_to_coco`` turns a :class:`~rcnn_deploy.runtime.detections.Detections` (original-image
coordinates, pasted masks) into COCO results entries; :class:`CocoEntries` is the streaming runner's
per-image function that does it for each image as it is processed.

Scoring those results (COCO mAP, ground-truth checks, a detector over a dataset, one backend against another)
is :mod:`rcnn_deploy.evaluation`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .detections import Detections
from .masks import PastedMasks


def detections_to_coco(
    det: Detections,
    image_id: int,
    category_ids: Sequence[int],
    label_ids: Sequence[int],
    executor: Any = None,
    parts: int = 4,
) -> List[Dict[str, Any]]:
    """COCO results for one image: bbox as ``[x, y, w, h]``, category id through the model's label map,
    RLE ``segmentation`` when the detections carry pasted (image-sized) masks. ``executor`` (worker processes)
    and ``parts``: the masks' RLE is made in up to ``parts`` pieces in parallel
    (:meth:`~rcnn_deploy.runtime.masks.PastedMasks.rles`): one image's lowest latency where cores are idle."""
    index = {int(lid): i for i, lid in enumerate(label_ids) if i > 0}
    rles: Optional[List[Dict[str, Any]]] = None
    if isinstance(det.pasted, PastedMasks):  # RLE from each mask's box region, all masks at once: no image arrays
        rles = det.pasted.rles(executor, parts)
    elif det.pasted is not None:  # runs made elsewhere (the GPU post-processing)
        rles = det.pasted.rles()
    elif det.masks is not None and det.masks.ndim == 3 and len(det):
        from pycocotools import mask as mask_util

        enc = mask_util.encode(np.asfortranarray(det.masks.transpose(1, 2, 0).astype(np.uint8)))
        rles = [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in enc]
    out = []
    for i, (b, s, c) in enumerate(zip(det.boxes, det.scores, det.classes)):
        c = int(c)
        if c not in index:
            raise ValueError(f"detection label {c} is not one of the model's labels {sorted(index)}")
        entry: Dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[index[c]]),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        if rles is not None:
            entry["segmentation"] = rles[i]
        out.append(entry)
    return out


class CocoEntries:
    """The streaming runner's per-image function: an image's COCO results (picklable). The image id is the
    item's dataset id, else its 1-based position."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, r: Any) -> List[Dict[str, Any]]:
        image_id = r.item.image_id if r.item.image_id is not None else r.index + 1
        return detections_to_coco(r.detections, image_id, self.spec.category_ids, self.spec.label_ids)
