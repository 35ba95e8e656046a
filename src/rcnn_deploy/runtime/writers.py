"""What ``infer`` writes for a stream of results, and how it never loses them (numpy + Pillow).

Per image (in the runner's worker threads): ``NAME.tsv`` (class, label, score, box in original pixels) and
``NAME.jpg`` or ``NAME.png`` (the visualisation; ``vis_format``: by default JPEG for a JPEG image, else PNG), drawn
on the image decoded again from its file when the run did not keep the pixels (``infer`` does not, so a photo is
not held through the model while others decode; the second decode is drawn on in place). In input order (the
caller's thread): one line per image appended and flushed to ``results.jsonl`` as it finishes, so whatever was
done is on disk even if the run is killed; at the end, also after Ctrl-C or an error, ``results.json`` (COCO
results) and ``summary.json`` (counts, failures, how far the run got, img/s) are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._io import atomic_write_json
from ..config import ModelSpec
from .coco import detections_to_coco
from .preprocess import load_rgb
from .sources import frame_stem
from .stream import StreamResult, StreamStats
from .visualize import DRAW_THRESHOLD, draw, picture_suffix, render, write_tsv


def output_stem(r: StreamResult) -> str:
    """File stem for an image's outputs: the image's stem; ``STEM_000123`` for frame 123 of a video."""
    it = r.item
    if it.frame is not None and it.path is not None:
        return frame_stem(it.path.stem, it.frame)
    if it.path is not None:
        return it.path.stem
    return it.name.replace("[", "_").replace("]", "").replace("/", "_")


class InferWriter:
    """Writes a run's outputs into ``output``; ``per_image`` is the runner's per-image hook, ``add`` is called
    with each result in order, ``close`` finishes the run (idempotent)."""

    def __init__(
        self,
        output: Path,
        spec: ModelSpec,
        *,
        backend: str,
        visualize: bool = True,
        score_threshold: Optional[float] = None,
        draw_threshold: float = DRAW_THRESHOLD,
        render_frames: bool = False,
        total: Optional[int] = None,
        max_pixels: Optional[int] = None,
        vis_format: str = "auto",
    ) -> None:
        """``max_pixels``: the pixel limit an image file is decoded again with for its picture (None: the default,
        as the detector's ``max_pixels``); ``vis_format``: the pictures' format
        (:data:`~rcnn_deploy.runtime.visualize.VIS_FORMATS`)."""
        picture_suffix(None, vis_format)  # refuses an unknown format before anything is written
        self.output, self.spec, self.backend = Path(output), spec, backend
        self.max_pixels, self.vis_format = max_pixels, vis_format
        self.visualize, self.score_threshold, self.render_frames = visualize, score_threshold, render_frames
        self.total, self.draw_threshold = total, draw_threshold
        self.output.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.output / "results.jsonl", "w", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self.coco_texts: List[str] = []  # each written image's COCO entries as the JSON its worker made
        self.detections = 0
        self.failures: List[Dict[str, Any]] = []
        self.seen = 0
        self.closed = False

    def __getstate__(self) -> Dict[str, Any]:
        """What a worker process needs for :meth:`per_image` (not the run's open file or its records)."""
        state = dict(self.__dict__)
        state.update(jsonl=None, coco_texts=[], failures=[])
        return state

    def per_image(self, r: StreamResult) -> Dict[str, Any]:
        """Runs in a worker: per-image files and COCO entries (``result.extra``: ``coco_json``, the entries as
        a JSON array, made here so that the caller's thread, which every image passes through, only writes it;
        ``detections``, their number; ``frame``, the rendered video frame)."""
        extra: Dict[str, Any] = {"coco_json": "[]", "detections": 0, "frame": None}
        if not r.ok or r.detections is None:
            return extra
        d = r.detections
        if self.score_threshold is not None:
            d = d.above(self.score_threshold)
            r.detections = d
        image_id = r.item.image_id if r.item.image_id is not None else r.index + 1
        meta = r.item.meta()
        file_name = r.item.path.name if r.item.path is not None else r.item.name
        entries = [
            dict(e, file_name=file_name, **{k: v for k, v in meta.items() if k != "image"})
            for e in detections_to_coco(d, image_id, self.spec.category_ids, self.spec.label_ids)
        ]
        extra.update(coco_json=json.dumps(entries), detections=len(entries))
        stem = output_stem(r)
        write_tsv(self.output / f"{stem}.tsv", d, self.spec.class_names, self.spec.label_ids)
        if self.render_frames or self.visualize:
            drawn = d.above(self.draw_threshold)  # the picture shows the confident detections; the files keep all
            image, ours = self._picture(r)
            if image is not None and self.render_frames:
                extra["frame"] = render(image, drawn, self.spec.class_names, self.spec.label_ids)
            elif image is not None and self.visualize:
                # a photo decoded from its file is not needed past this point: drawn on in place
                suffix = picture_suffix(r.item.path, self.vis_format, frame=r.item.frame is not None)
                picture = self.output / f"{stem}{suffix}"
                draw(image, drawn, self.spec.class_names, self.spec.label_ids, picture, inplace=ours)
        return extra

    def _picture(self, r: StreamResult) -> Tuple[Optional[np.ndarray], bool]:
        """The image to draw on and whether it may be drawn on in place (only a decode of its own): the pixels
        the run kept (the caller may still read ``r.image``), else the item's own pixels (a video frame, a
        caller's array: :meth:`Item.load`), else its file decoded again."""
        item = r.item
        if r.image is not None:
            return r.image, False
        if item.array is None and item.path is None:
            return None, False
        return item.load(self._decode), item.array is None

    def _decode(self, path: Path) -> np.ndarray:
        if self.max_pixels is None:
            return load_rgb(path)
        return load_rgb(path, max_pixels=self.max_pixels)

    def add(self, r: StreamResult) -> None:
        """In input order: record the image and append its line to results.jsonl (flushed)."""
        self.seen += 1
        line: Dict[str, Any] = dict(r.item.meta(), image_id=r.item.image_id or r.index + 1)
        if r.ok:
            extra = r.extra or {}
            results, n = str(extra.get("coco_json", "[]")), int(extra.get("detections", 0))
            self.coco_texts.append(results)
            self.detections += n
            line.update(detections=n)
            # the line json.dumps(dict(line, results=entries)) would write, with the worker's JSON of the entries
            text = json.dumps(line)[:-1] + ', "results": ' + results + "}"
        else:
            self.failures.append({"image": r.name, "error": r.error})
            line.update(error=r.error)
            text = json.dumps(line)
        self.jsonl.write(text + "\n")
        self.jsonl.flush()
        r.image = None  # the decoded pixels are not needed past this point

    @property
    def coco(self) -> List[Dict[str, Any]]:
        """Every written image's COCO results entries, in input order (what results.json holds)."""
        return [e for text in self.coco_texts for e in json.loads(text)]

    def close(self, stats: Optional[StreamStats] = None, stopped: Optional[str] = None) -> Dict[str, Any]:
        """Write results.json and summary.json atomically (also after an interrupted run)."""
        if not self.closed:
            self.jsonl.close()
            self.closed = True
        atomic_write_json(self.output / "results.json", self.coco)  # parsed back: the same file as ever
        summary: Dict[str, Any] = {
            "images": self.total if self.total is not None else self.seen,
            "processed": self.seen,
            "written": self.seen - len(self.failures),
            "failures": self.failures,
            "detections": self.detections,
            "backend": self.backend,
            "complete": stopped is None and (self.total is None or self.seen == self.total),
        }
        if stopped is not None:
            summary["stopped"] = stopped
        if stats is not None:
            summary.update(seconds=round(stats.seconds, 3), images_per_s=round(stats.images_per_s, 2))
            summary["time_s"] = {
                "model_submit": round(stats.model_submit_s, 3),
                "model_wait": round(stats.model_wait_s, 3),
                "model_starved": round(stats.starved_s, 3),
            }
        atomic_write_json(self.output / "summary.json", summary)
        return summary
