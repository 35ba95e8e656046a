"""What ``rcnn-deploy infer`` writes, in one place, for the local runner and the Ray runner alike (numpy + Pillow;
Python 3.9 compatible, no torch).

Per image (:class:`ImageOutputs`): ``NAME.tsv`` (:func:`~rcnn_deploy.runtime.visualize.write_tsv`), ``NAME.jpg``
or ``NAME.png`` (:func:`~rcnn_deploy.runtime.visualize.draw`, unless ``visualize=False``; ``vis_format``) and the
image's COCO results entries (:func:`coco_entries`: :func:`~rcnn_deploy.runtime.coco.detections_to_coco` plus
``file_name``). Per run:
``results.json`` (every entry, image id order) and ``summary.json`` (:func:`infer_summary`), written by
:func:`write_run_outputs`. An unreadable image is recorded with :func:`failure_record`.

    outputs = ImageOutputs(out_dir, det.spec, visualize=True, score_threshold=None)
    results, failures = [], []
    for image_id, path in enumerate(paths, start=1):            # image ids: 1-based index in find_images order
        try:
            rgb = load_rgb(path)
        except ValueError as e:
            failures.append(failure_record(path, e))
            continue
        results += outputs.write(image_id, path, rgb, det([rgb])[0])
    write_run_outputs(out_dir, results, infer_summary(len(paths), failures, len(results), det.backend))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .._io import atomic_write_json
from ..config import ModelSpec
from .detections import Detections
from .sources import frame_fields, frame_stem
from .visualize import DRAW_THRESHOLD, draw, picture_suffix, write_tsv

PathLike = Union[str, Path]


def coco_entries(det: Detections, spec: ModelSpec, image_id: int, file_name: Optional[str] = None) -> List[dict]:
    """The image's COCO results entries (bbox, score, category id, RLE mask when the detections carry pasted
    masks); ``file_name`` is added to each entry when given (``infer`` does, ``eval`` does not)."""
    from .coco import detections_to_coco

    entries = detections_to_coco(det, image_id, spec.category_ids, spec.label_ids)
    return entries if file_name is None else [dict(r, file_name=file_name) for r in entries]


class ImageOutputs:
    """Writes one image's ``STEM.tsv`` and its picture (``STEM.jpg`` or ``STEM.png``, ``vis_format``: see
    :func:`~rcnn_deploy.runtime.visualize.picture_suffix`) into ``output`` and returns its COCO results entries.

    ``score_threshold`` (``infer --nms-threshold``) drops detections below it before anything is written; the
    picture draws those scoring at least ``draw_threshold`` (``infer --draw-threshold``)."""

    def __init__(
        self,
        output: PathLike,
        spec: ModelSpec,
        *,
        visualize: bool = True,
        score_threshold: Optional[float] = None,
        draw_threshold: float = DRAW_THRESHOLD,
        vis_format: str = "auto",
    ) -> None:
        picture_suffix(None, vis_format)  # refuses an unknown format at once
        self.output = Path(output)
        self.spec = spec
        self.visualize, self.vis_format = visualize, vis_format
        self.score_threshold, self.draw_threshold = score_threshold, draw_threshold
        self.output.mkdir(parents=True, exist_ok=True)

    def write(
        self,
        image_id: int,
        path: PathLike,
        rgb: np.ndarray,
        det: Detections,
        frame: Optional[int] = None,
        time_s: Optional[float] = None,
    ) -> List[dict]:
        """``frame``/``time_s``: ``path`` is a video and this is that frame. As in a local ``infer`` of a video,
        the files are ``STEM_000123.tsv``, no PNG is drawn, and each entry also has ``frame`` and ``time_s``."""
        path = Path(path)
        if self.score_threshold is not None:
            det = det.above(self.score_threshold)
        spec = self.spec
        stem = path.stem if frame is None else frame_stem(path.stem, frame)
        write_tsv(self.output / f"{stem}.tsv", det, spec.class_names, spec.label_ids)
        if self.visualize and frame is None:
            drawn = det.above(self.draw_threshold)
            picture = self.output / f"{stem}{picture_suffix(path, self.vis_format)}"
            draw(rgb, drawn, spec.class_names, spec.label_ids, picture)
        entries = coco_entries(det, spec, image_id, path.name)
        if frame is not None:
            entries = [dict(e, **frame_fields(frame, time_s)) for e in entries]
        return entries


def failure_record(path: PathLike, error: Union[str, BaseException]) -> Dict[str, str]:
    """An unreadable image as ``summary.json``'s ``failures`` lists it."""
    return {"image": str(path), "error": str(error)}


def infer_summary(
    images: int,
    failures: Sequence[Dict[str, Any]],
    detections: int,
    backend: str,
    seconds: Optional[float] = None,
) -> Dict[str, Any]:
    """``summary.json`` of a complete ``infer`` run, with the keys the local streaming run writes
    (:class:`~rcnn_deploy.runtime.writers.InferWriter`): images found and processed, written, failures (in input
    order), detections, backend, complete, and the run's seconds and img/s when given."""
    summary: Dict[str, Any] = {
        "images": images,
        "processed": images,
        "written": images - len(failures),
        "failures": list(failures),
        "detections": detections,
        "backend": backend,
        "complete": True,
    }
    if seconds is not None:
        summary.update(seconds=round(seconds, 3), images_per_s=round(images / seconds, 2) if seconds > 0 else None)
    return summary


def write_run_outputs(output: PathLike, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> None:
    """``results.json`` (COCO results, image id order) and ``summary.json``, each written atomically."""
    output = Path(output)
    atomic_write_json(output / "results.json", list(results))
    atomic_write_json(output / "summary.json", summary)
