"""Batch inference and COCO evaluation on Ray Data: resumable, each input exactly once in the merged results.

The pipeline (``rcnn-deploy infer/eval --ray``, or :func:`infer_on_ray` / :func:`eval_on_ray`)::

    work items (image id, path), one block per shard --> decode (CPU tasks, Pillow) --> model (actor pool:
    one Detector.load per actor, one GPU per actor where the cluster has GPUs) --> driver: shard commit --> merge

* **Plan.** The inputs are listed once on the driver (``find_images`` order, or a list file's order; ``eval``:
  the annotations' order; a video frame by frame, every ``stride``-th, so its shards are frame ranges) and cut
  into contiguous *shards*. ``shards/plan.json`` records the list, the shard
  size and the settings that change the results, so ``--resume`` can refuse a different job.
* **Workers.** Actors run :class:`RayDetector` (the public callable class for a user's own Ray pipeline); the
  command's subclass also writes each image's ``NAME.tsv`` / picture (``rcnn_deploy.runtime.sinks``,
  exactly as the local ``infer``) and returns the image's COCO results entries as JSON lines (text the driver
  stores without parsing).
* **Shards.** The driver collects rows per shard; a shard whose images have all arrived is committed: its COCO
  results as JSON lines (``shards/NNNNN.jsonl``, one entry per line), then its manifest (``shards/NNNNN.json``:
  every image's id, worker, entry count or error). Both are written atomically, the manifest last, so a shard
  is finished exactly when its manifest exists and agrees with its JSON lines.
* **Exactly once.** Every image belongs to exactly one shard. A row that arrives twice (Ray re-runs a killed
  actor's task) is dropped by image id; per-image files are rewritten atomically with the same bytes. The merge
  checks that every planned image appears in exactly one finished shard and that each shard's JSON lines hold
  exactly the entries its manifest counts, and refuses to write results otherwise.
* **Resume.** ``resume=True`` keeps the finished shards of the same plan and runs only the others.
* **Merge.** ``results.json`` (image id order, each image's entries as produced) and ``summary.json``, the same
  files a local ``infer`` writes; ``eval`` scores the merged results with ``evaluate_coco``.

Ray is imported lazily; ``pip install 'rcnn-deploy[ray]'``. Inputs and the output directory must be visible
under the same paths to every node (a shared filesystem) on a multi-node cluster; see docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np

from .._io import atomic_write_json, atomic_write_text
from ..errors import UserError
from ..runtime.visualize import DRAW_THRESHOLD

PathLike = Union[str, Path]
#: ``progress(done, total, per_worker_counts)``, called on the driver as results arrive.
Progress = Callable[[int, int, Mapping[str, int]], None]

SHARDS_DIR = "shards"
PLAN_FILE = "plan.json"
RUN_FILE = "run.json"
PLAN_FORMAT = 1
LIST_SUFFIXES = (".txt", ".lst", ".list")
#: Logical CPUs a model actor asks for, and a decode task (a different amount keeps Ray Data from fusing decoding
#: into the actors: decoding runs in its own CPU tasks).
ACTOR_CPUS = 1.0
DECODE_CPUS = 0.5
#: A local Ray instance's object store (bytes): enough to stream decoded images, small enough for a laptop.
LOCAL_OBJECT_STORE = 2 * 1024**3


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class WorkItem:
    """One input: ``index`` its 0-based position in the input order, ``path`` as listed (what reports show),
    ``file`` the absolute path workers read, ``name`` its COCO ``file_name``; ``height``/``width`` the size
    the annotations expect (``eval``; 0 = unchecked); ``frame``/``time_s`` for one frame of a video."""

    index: int
    image_id: int
    path: str
    file: str
    name: str
    height: int = 0
    width: int = 0
    frame: int = -1  # a video's frame (``file`` is the video, ``path`` is ``VIDEO#FRAME``); -1: an image file
    time_s: float = 0.0  # that frame's timestamp


@dataclass
class Plan:
    """The job: the inputs in order, cut into contiguous shards of ``shard_size``, and the settings that change
    the results (a resumed run must have the same)."""

    mode: str  # "infer" | "eval"
    items: List[WorkItem]
    shard_size: int
    settings: Dict[str, Any]

    def shards(self) -> List[List[WorkItem]]:
        s = self.shard_size
        return [self.items[i : i + s] for i in range(0, len(self.items), s)]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "mode": self.mode,
            "shard_size": self.shard_size,
            "settings": self.settings,
            "items": [asdict(it) for it in self.items],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        return cls(
            mode=str(d["mode"]),
            items=[WorkItem(**it) for it in d["items"]],
            shard_size=int(d["shard_size"]),
            settings=dict(d["settings"]),
        )

    def same_job(self, other: Plan) -> Optional[str]:
        """None when ``other`` is the same job (inputs, settings); else what differs."""
        if self.mode != other.mode:
            return f"it was an {other.mode} run"
        if self.settings != other.settings:
            diff = sorted(
                k for k in set(self.settings) | set(other.settings) if self.settings.get(k) != other.settings.get(k)
            )
            return f"its settings differ ({', '.join(diff)})"
        mine = [(it.image_id, it.file, it.frame) for it in self.items]
        theirs = [(it.image_id, it.file, it.frame) for it in other.items]
        if mine != theirs:
            return f"its inputs differ ({len(theirs)} images then, {len(mine)} now)"
        return None


def list_inputs(source: PathLike) -> List[Path]:
    """``infer``'s inputs: an image, a folder, a glob (``find_images``), a video file, or a list file (``.txt``/
    ``.lst``/``.list``: one image or video path per line, relative to the list's folder; blank lines and ``#``
    comments skipped)."""
    from ..runtime.preprocess import find_images
    from ..runtime.sources import is_video

    p = Path(source)
    if is_video(p):
        if not p.is_file():
            raise UserError("video file does not exist", where=p, fix="check the path")
        return [p]
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        files = [Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines if ln and not ln.startswith("#")]
        if not files:
            raise UserError("the list file names no images", where=p, fix="write one image path per line")
        return files
    try:
        return find_images(source)
    except FileNotFoundError as e:
        raise UserError(str(e), fix="pass an image, a folder of images, a glob or a list file (.txt)") from None


def infer_items(paths: Sequence[Path], stride: int = 1) -> List[WorkItem]:
    """Image ids are the 1-based position in the input order (as the local ``infer``). A video contributes every
    ``stride``-th frame, listed here on the driver (:func:`~rcnn_deploy.runtime.sources.video_frame_list`), so
    that shards are frame ranges of the video and each frame is one work item: exactly once and ``--resume``
    hold per frame as per image."""
    from ..runtime.sources import is_video, video_frame_list

    items: List[WorkItem] = []
    for p in paths:
        file, name = str(Path(p).resolve()), Path(p).name
        if is_video(p):
            for frame, t in video_frame_list(Path(p), stride):
                i = len(items)
                items.append(WorkItem(i, i + 1, f"{p}#{frame}", file, name, frame=frame, time_s=t))
        else:
            items.append(WorkItem(index=len(items), image_id=len(items) + 1, path=str(p), file=file, name=name))
    return items


def eval_items(gt: Mapping[str, Any], images_dir: Path, max_images: Optional[int] = None) -> List[WorkItem]:
    """The annotations' images in their order (the first ``max_images``); ids from the annotations."""
    entries = list(gt["images"])[: max_images or None]
    if not entries:
        raise UserError("the annotations list no images; nothing to evaluate")
    ids = Counter(int(e["id"]) for e in entries)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise UserError(f"image ids {dup[:5]} appear more than once in the annotations", fix="give each image one id")
    root = images_dir.resolve()
    out = []
    for i, e in enumerate(entries):
        name = str(e.get("file_name") or "")
        out.append(
            WorkItem(
                index=i,
                image_id=int(e["id"]),
                path=str(images_dir / name),
                file=str(root / name),
                name=name,
                height=int(e.get("height") or 0),
                width=int(e.get("width") or 0),
            )
        )
    return out


def default_shard_size(images: int, workers: int, batch: int) -> int:
    """About four shards per worker (resume granularity, load balance), 1..256 images, at least one batch."""
    return max(1, batch, min(256, math.ceil(images / (4 * max(workers, 1)))))


# ------------------------------------------------------------------------------------------ the shard store
@dataclass
class ImageRecord:
    """One image's outcome, as the driver receives it."""

    index: int
    image_id: int
    worker: str
    lines: str = ""  # the image's COCO results entries, one JSON object per line, each line ending in "\n"
    detections: int = 0  # how many lines
    error: Optional[str] = None

    @classmethod
    def from_entries(cls, index: int, image_id: int, worker: str, entries: Sequence[Mapping[str, Any]]) -> ImageRecord:
        return cls(index, image_id, worker, json_lines(entries), len(entries))

    def manifest(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"index": self.index, "image_id": self.image_id, "worker": self.worker}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["detections"] = self.detections
        return d


def json_lines(entries: Sequence[Mapping[str, Any]]) -> str:
    """One JSON object per line (what a shard's ``.jsonl`` holds)."""
    return "".join(json.dumps(e) + "\n" for e in entries)


@dataclass
class Merged:
    """The finished shards put together in plan order."""

    results: List[Dict[str, Any]]
    records: List[Dict[str, Any]]  # one manifest record per planned image, plan order
    backend: str
    workers: Dict[str, int]  # images per worker over every shard (resumed ones included)


class ShardStore:
    """``ROOT/plan.json``, ``ROOT/NNNNN.jsonl`` + ``ROOT/NNNNN.json`` per finished shard, ``ROOT/run.json``."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    def jsonl(self, k: int) -> Path:
        return self.root / f"{k:05d}.jsonl"

    def manifest(self, k: int) -> Path:
        return self.root / f"{k:05d}.json"

    # --------------------------------------------------------------------------------------------- start
    def start(self, plan: Plan, resume: bool) -> Tuple[Plan, List[int]]:
        """Record ``plan`` (or, resuming, check it against the recorded one and keep that one's shard size);
        return the plan to run and the indices of the shards already finished."""
        recorded = self._recorded_plan() if resume else None
        if recorded is not None:
            why = plan.same_job(recorded)
            if why is not None:
                raise UserError(
                    f"--resume found a different job in {self.root}: {why}",
                    where=self.root / PLAN_FILE,
                    fix="resume with the same inputs and options, or run without --resume to start over",
                )
            plan = recorded
            self._remove_partial_writes()
            done = [k for k, items in enumerate(plan.shards()) if self.finished(k, items)]
            return plan, done
        self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / PLAN_FILE, plan.to_dict())
        return plan, []

    def _recorded_plan(self) -> Optional[Plan]:
        p = self.root / PLAN_FILE
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if d.get("format") != PLAN_FORMAT:
                raise ValueError(f"plan format {d.get('format')!r}")
            return Plan.from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"cannot read the recorded plan ({e})", where=p, fix="run without --resume to start over"
            ) from None

    def clear(self) -> None:
        """Remove this store's own files (a fresh run): the plan, shards and run report; nothing else."""
        if not self.root.is_dir():
            return
        self._remove_partial_writes()
        for f in self.root.iterdir():
            own = f.name in (PLAN_FILE, RUN_FILE) or (f.suffix in (".json", ".jsonl") and f.stem.isdigit())
            if own and f.is_file():
                f.unlink()

    def _remove_partial_writes(self) -> None:
        """Temporary files of atomic writes a killed run left behind (``.NNNNN.json.*.tmp``)."""
        if self.root.is_dir():
            for f in self.root.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    f.unlink()

    # ---------------------------------------------------------------------------------------------- shards
    def finished(self, k: int, items: Sequence[WorkItem]) -> bool:
        """The shard's manifest exists, lists exactly ``items`` and its JSON lines hold the entries it counts."""
        try:
            man = json.loads(self.manifest(k).read_text(encoding="utf-8"))
            entries = self._read_jsonl(k)
        except (OSError, ValueError):
            return False
        return self._consistent(man, entries, items) is None

    def commit(self, k: int, records: Sequence[ImageRecord], backend: str) -> None:
        """Write the shard's JSON lines, then (the commit point) its manifest."""
        records = sorted(records, key=lambda r: r.index)
        atomic_write_text(self.jsonl(k), "".join(r.lines for r in records if r.error is None))
        entries = sum(r.detections for r in records if r.error is None)
        atomic_write_json(
            self.manifest(k),
            {"shard": k, "backend": backend, "entries": entries, "images": [r.manifest() for r in records]},
        )

    def _read_jsonl(self, k: int) -> List[Dict[str, Any]]:
        text = self.jsonl(k).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line]

    @staticmethod
    def _consistent(
        man: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], items: Sequence[WorkItem]
    ) -> Optional[str]:
        recs = man.get("images", [])
        if [r.get("image_id") for r in recs] != [it.image_id for it in items]:
            return "its images are not the plan's"
        per_image = Counter(int(e["image_id"]) for e in entries)
        for r in recs:
            want = 0 if "error" in r else int(r.get("detections", -1))
            if per_image.get(int(r["image_id"]), 0) != want:
                return f"image {r['image_id']} has {per_image.get(int(r['image_id']), 0)} entries, manifest says {want}"
        if sum(per_image.values()) != len(entries) or set(per_image) - {it.image_id for it in items}:
            return "its JSON lines hold entries of other images"
        return None

    # ---------------------------------------------------------------------------------------------- merge
    def merge(self, plan: Plan) -> Merged:
        """Put the finished shards together; raises RuntimeError unless every planned image is in exactly one."""
        results: List[Dict[str, Any]] = []
        records: List[Dict[str, Any]] = []
        backends = set()
        workers: Counter = Counter()
        for k, items in enumerate(plan.shards()):
            man = json.loads(self.manifest(k).read_text(encoding="utf-8"))
            entries = self._read_jsonl(k)
            why = self._consistent(man, entries, items)
            if why is not None:
                raise RuntimeError(f"shard {k} ({self.manifest(k)}) is inconsistent: {why}")
            by_image: Dict[int, List[Dict[str, Any]]] = {}
            for e in entries:
                by_image.setdefault(int(e["image_id"]), []).append(e)
            for r in man["images"]:
                results += by_image.get(int(r["image_id"]), [])
                records.append(r)
                workers[r["worker"]] += 1
            backends.add(man.get("backend", ""))
        seen = Counter(int(r["image_id"]) for r in records)
        planned = [it.image_id for it in plan.items]
        if sorted(seen) != sorted(planned) or any(n != 1 for n in seen.values()):
            raise RuntimeError(
                f"exactly-once check failed: {len(planned)} planned images, {len(seen)} distinct in the shards, "
                f"{sum(n > 1 for n in seen.values())} more than once"
            )
        return Merged(results, records, ",".join(sorted(b for b in backends if b)), dict(workers))


class ShardCollector:
    """The driver's side of exactly once: takes result rows in any order, keeps the first row of each planned
    image (a second one, from a task Ray re-ran, is counted in ``duplicates`` and dropped), and commits a shard
    to the store as soon as all its images are in."""

    def __init__(self, store: ShardStore, pending: Mapping[int, Sequence[WorkItem]]) -> None:
        self.store = store
        self.pending: Dict[int, frozenset] = {k: frozenset(it.image_id for it in items) for k, items in pending.items()}
        self.got: Dict[int, Dict[int, ImageRecord]] = {k: {} for k in self.pending}
        self.committed: set = set()
        self.workers: Counter = Counter()
        self.duplicates = 0
        self.received = 0
        self.backend = ""

    def add(self, shard: int, record: ImageRecord, backend: str) -> bool:
        """Take one row; False when it was dropped (a duplicate). Raises on a row of no pending image."""
        if shard in self.committed or record.image_id in self.got.get(shard, {}):
            self.duplicates += 1
            return False
        if record.image_id not in self.pending.get(shard, ()):
            raise RuntimeError(
                f"a worker returned image id {record.image_id} for shard {shard}, which does not hold it"
            )
        if record.error is None and record.lines.count("\n") != record.detections:
            raise RuntimeError(f"image {record.image_id}: {record.detections} detections but other JSON lines")
        self.got[shard][record.image_id] = record
        self.backend = self.backend or backend
        self.workers[record.worker] += 1
        self.received += 1
        if len(self.got[shard]) == len(self.pending[shard]):
            self.store.commit(shard, list(self.got.pop(shard).values()), self.backend)
            self.committed.add(shard)
        return True

    def missing(self) -> int:
        """Planned images with no row yet."""
        return sum(len(self.pending[k]) - len(v) for k, v in self.got.items())


# ----------------------------------------------------------------------------------------- the Ray workers
def _as_rgb(image: Any) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from what Ray hands over (gray ``[H, W]`` and RGBA are converted as Pillow's
    ``convert('RGB')`` does)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB image, got shape {a.shape}")
    return np.ascontiguousarray(a.astype(np.uint8, copy=False))


def _worker_label() -> str:
    label = f"{socket.gethostname()}:{os.getpid()}"
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            gpus = ray.get_gpu_ids()
            if gpus:
                label += ":gpu" + ",".join(str(g) for g in gpus)
    return label


def _gpu_assigned() -> bool:
    with contextlib.suppress(Exception):
        import ray

        return ray.is_initialized() and bool(ray.get_gpu_ids())
    return False


class RayDetector:
    """A :class:`~rcnn_deploy.api.Detector` as a Ray Data callable class: one model load per actor, then
    ``__call__`` on each batch of rows.

        import ray
        from rcnn_deploy.scale import RayDetector

        ds = ray.data.read_images("photos/", mode="RGB", include_paths=True)        # columns: image, path
        ds = ds.map_batches(RayDetector, fn_constructor_kwargs={"model_path": "runs/fused", "batch": 8},
                            batch_size=8, compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1)  # 0 on CPUs
        ds.write_parquet("detections/")

    Input rows need an ``image_column`` (``[H, W, 3]`` uint8 RGB; gray and RGBA are converted) or, without it, a
    ``path_column`` of image files. Output rows keep the input columns (the image only with ``keep_image``) and
    add ``num_detections``, ``boxes`` ``[N, 4]`` float32 (x1, y1, x2, y2, original pixels), ``scores`` ``[N]``,
    ``classes`` ``[N]`` (model labels) and ``coco``: the image's COCO results entries as a JSON string (RLE
    masks for Mask R-CNN; ``image_id`` from an ``id_column`` when the rows have one, else 0).

    ``model_path``, ``model``, ``input_hw``, ``backend``, ``batch``: as :meth:`Detector.load`. ``device``:
    default ``cuda`` when Ray gave the actor a GPU, else ``cpu``. ``score_threshold`` drops detections below it.
    """

    def __init__(
        self,
        model_path: str,
        *,
        model: Optional[str] = None,
        input_hw: Optional[Tuple[int, int]] = None,
        backend: Optional[str] = None,
        batch: int = 1,
        device: Optional[str] = None,
        mask_threshold: Optional[float] = None,
        score_threshold: Optional[float] = None,
        image_column: str = "image",
        path_column: str = "path",
        id_column: str = "image_id",
        keep_image: bool = False,
    ) -> None:
        from ..api import Detector

        if device is None:
            device = "cuda" if _gpu_assigned() else "cpu"
        hw = cast(Tuple[int, int], tuple(input_hw)) if input_hw is not None else None
        self.detector = Detector.load(model_path, model=model, input_hw=hw, backend=backend, batch=batch, device=device)
        if mask_threshold is not None:
            self.detector.spec = self.detector.spec.replace(mask_threshold=mask_threshold)
        self.score_threshold = score_threshold
        self.image_column, self.path_column, self.id_column = image_column, path_column, id_column
        self.keep_image = keep_image
        self.worker = _worker_label()

    def detect(self, images: Sequence[Any]) -> List[Any]:
        """Detections (``rcnn_deploy.runtime.detections.Detections``) of each image, ``batch`` per model call."""
        if not len(images):
            return []
        dets = self.detector([_as_rgb(im) for im in images])
        if self.score_threshold is not None:
            dets = [d.above(self.score_threshold) for d in dets]
        return dets

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        from ..runtime.preprocess import load_rgb
        from ..runtime.sinks import coco_entries

        if self.image_column in batch:
            images = list(batch[self.image_column])
        elif self.path_column in batch:
            images = [load_rgb(str(p)) for p in batch[self.path_column]]
        else:
            raise KeyError(f"rows need an {self.image_column!r} or a {self.path_column!r} column; got {list(batch)}")
        dets = self.detect(images)
        ids = batch.get(self.id_column)
        spec = self.detector.spec
        out: Dict[str, Any] = {k: v for k, v in batch.items() if self.keep_image or k != self.image_column}
        out["num_detections"] = np.array([len(d) for d in dets], dtype=np.int64)
        out["boxes"] = [np.asarray(d.boxes, np.float32).reshape(-1, 4) for d in dets]
        out["scores"] = [np.asarray(d.scores, np.float32) for d in dets]
        out["classes"] = [np.asarray(d.classes, np.int32) for d in dets]
        out["coco"] = np.array(
            [json.dumps(coco_entries(d, spec, int(ids[i]) if ids is not None else 0)) for i, d in enumerate(dets)],
            dtype=object,
        )
        return out


def _decode_item(it: Mapping[str, Any], mode: str, videos: Dict[str, Any]) -> np.ndarray:
    """One work item's RGB pixels: a video frame (``videos`` keeps each video's open reader), an ``eval`` image
    checked against the annotations' file and size as the local eval checks it, or an image file."""
    from ..runtime.preprocess import load_rgb
    from ..runtime.sources import FrameReader, Item

    frame = int(it.get("frame", -1))
    if frame >= 0:
        if it["file"] not in videos:
            videos[it["file"]] = FrameReader(Path(it["file"]))
        return cast(np.ndarray, videos[it["file"]].read(frame))
    if mode == "eval":
        hw = (int(it["height"]), int(it["width"])) if it["height"] and it["width"] else None
        name = it["file"] if it["name"] else f"image id {it['image_id']} (no file_name in the annotations)"
        return Item(0, name, path=Path(it["file"]) if it["name"] else None, expect_hw=hw).load(load_rgb)
    return load_rgb(it["file"])


def _decode_shards(batch: Dict[str, np.ndarray], mode: str) -> Dict[str, Any]:
    """CPU task: a batch of shard rows (``shard``, ``items``: the shard's work items as JSON) -> one row per image
    with its decoded ``image`` (an unreadable one gets a 1x1 placeholder and its ``error``). A shard's video
    frames are a range of one video (or of a few), each video opened once."""
    keys = ("index", "image_id", "shard", "path", "image", "error", "frame", "time_s")
    cols: Dict[str, List[Any]] = {k: [] for k in keys}
    videos: Dict[str, Any] = {}
    try:
        for k, items in zip(batch["shard"], batch["items"]):
            for it in json.loads(str(items)):
                frame = int(it.get("frame", -1))
                try:
                    rgb, err = _decode_item(it, mode, videos), ""
                except ValueError as e:
                    rgb, err = np.zeros((1, 1, 3), np.uint8), str(e)
                cols["index"].append(it["index"])
                cols["image_id"].append(it["image_id"])
                cols["shard"].append(int(k))
                cols["path"].append(it["file"] if frame >= 0 else it["path"])
                cols["image"].append(rgb)
                cols["error"].append(err)
                cols["frame"].append(frame)
                cols["time_s"].append(float(it.get("time_s", 0.0)))
    finally:
        for reader in videos.values():
            reader.close()
    out: Dict[str, Any] = {k: np.array(cols[k], dtype=np.int64) for k in ("index", "image_id", "shard", "frame")}
    out["time_s"] = np.array(cols["time_s"], dtype=np.float64)
    out["path"] = np.array(cols["path"], dtype=object)
    out["error"] = np.array(cols["error"], dtype=object)
    out["image"] = cols["image"]
    return out


class _ShardWorker(RayDetector):
    """The commands' actor: ``infer`` also writes each image's TSV / picture (``ImageOutputs``); every row comes back
    with its COCO results entries (JSON lines) and their count, the worker's label and the backend."""

    def __init__(
        self,
        model_path: str,
        *,
        mode: str,
        output: Optional[str],
        visualize: bool,
        score_threshold: Optional[float],
        draw_threshold: float = DRAW_THRESHOLD,
        vis_format: str = "auto",
        **load: Any,
    ) -> None:
        super().__init__(model_path, **load)
        self.mode = mode
        self.outputs = None
        if mode == "infer":
            from ..runtime.sinks import ImageOutputs

            assert output is not None  # infer writes each image's files (the plan gives its folder)
            self.outputs = ImageOutputs(
                output,
                self.detector.spec,
                visualize=visualize,
                score_threshold=score_threshold,
                draw_threshold=draw_threshold,
                vis_format=vis_format,
            )

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
        from ..runtime.sinks import coco_entries

        n = len(batch["index"])
        errors = [str(e) for e in batch["error"]]
        ok = [i for i in range(n) if not errors[i]]
        rgbs = {i: _as_rgb(batch["image"][i]) for i in ok}
        coco = [""] * n
        counts = np.zeros(n, np.int64)
        for i, d in zip(ok, self.detect([rgbs[i] for i in ok])):
            image_id = int(batch["image_id"][i])
            if self.outputs is not None:
                frame = int(batch["frame"][i]) if "frame" in batch else -1
                at = (frame, float(batch["time_s"][i])) if frame >= 0 else (None, None)
                entries = self.outputs.write(image_id, str(batch["path"][i]), rgbs[i], d, *at)
            else:
                entries = coco_entries(d, self.detector.spec, image_id)
            coco[i] = json_lines(entries)
            counts[i] = len(entries)
        return {
            "index": batch["index"],
            "image_id": batch["image_id"],
            "shard": batch["shard"],
            "error": np.array(errors, dtype=object),
            "detections": counts,
            "coco": np.array(coco, dtype=object),
            "worker": np.array([self.worker] * n, dtype=object),
            "backend": np.array([self.detector.backend] * n, dtype=object),
        }


# ---------------------------------------------------------------------------------------------- the driver
@dataclass
class RunReport:
    """What a Ray run did. ``processed``: images run this time (resumed shards excluded); ``workers``: images
    per worker this time; ``img_per_s``: processed / ``wall_s`` (the Ray execution, actor start-up included);
    ``steady_img_per_s``: after the first result arrived; ``duplicates_dropped``: rows Ray delivered twice."""

    images: int
    shards: int
    shard_size: int
    shards_resumed: int
    processed: int
    wall_s: float
    first_result_s: Optional[float]
    img_per_s: float
    steady_img_per_s: Optional[float]
    workers: Dict[str, int]
    duplicates_dropped: int
    exactly_once: bool
    backend: str
    num_workers: int
    gpus_per_worker: float
    cluster: Dict[str, float]
    address: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class _RunStats:
    wall_s: float = 0.0
    first_result_s: Optional[float] = None
    first_rows: int = 0  # rows of the first batch that arrived (excluded from the steady-state rate)
    workers: Dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


@contextlib.contextmanager
def ray_session(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Iterator[str]:
    """Use the Ray instance this process is already connected to; else connect to ``address`` (a cluster; default
    the ``RAY_ADDRESS`` environment variable, which ``ray job submit`` and KubeRay's RayJob set), or start a local
    instance (``num_cpus`` logical CPUs, an object store of at most 2 GiB, no dashboard); what was started or
    connected here is shut down on exit. Yields a description of the instance."""
    try:
        import ray
    except ImportError as e:
        raise UserError("--ray needs Ray Data", fix="pip install 'rcnn-deploy[ray]' (ray[data])") from e
    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        where = address
    else:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=_local_object_store(),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        where = "local"
    try:
        yield where
    finally:
        ray.shutdown()


def _local_object_store() -> int:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(min(LOCAL_OBJECT_STORE, max(300 * 1024**2, total // 8)))
    return 300 * 1024**2


def local_num_cpus(workers: Optional[int]) -> int:
    """Logical CPUs for a local instance: the machine's, and at least one per model actor plus one for
    decoding (declared explicitly; on a small machine Ray would otherwise leave no CPU for the decode tasks)."""
    return max(os.cpu_count() or 1, int(math.ceil((workers or 1) * ACTOR_CPUS + 1)))


def resolve_workers(workers: Optional[int], gpus_per_worker: Optional[float]) -> Tuple[int, float, Dict[str, float]]:
    """``(workers, gpus_per_worker, cluster resources)``: one GPU per actor where the cluster has GPUs, CPU
    actors otherwise; by default as many actors as the GPUs allow (CPU-only: one)."""
    import ray

    res = {
        k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory", "object_store_memory")
    }
    gpus = res.get("GPU", 0.0)
    g = (1.0 if gpus >= 1 else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    if g < 0:
        raise UserError(f"--gpus-per-worker {g} is negative", fix="pass 0 (CPU actors), a fraction or 1")
    if g > 0 and gpus < g:
        raise UserError(
            f"--gpus-per-worker {g:g} but the Ray cluster has {gpus:g} GPUs",
            fix="pass --gpus-per-worker 0 to run CPU actors, or connect to a cluster with GPUs (--ray-address)",
        )
    if workers is None:
        workers = max(1, int(gpus // g)) if g > 0 else 1
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least one", fix="pass --workers 1 or more")
    if g > 0 and workers * g > gpus + 1e-9:
        raise UserError(
            f"{workers} workers x {g:g} GPUs need {workers * g:g} GPUs; the Ray cluster has {gpus:g}",
            fix="pass fewer --workers or a smaller --gpus-per-worker",
        )
    cpus = res.get("CPU", 0.0)
    if workers * ACTOR_CPUS + DECODE_CPUS > cpus + 1e-9:
        raise UserError(
            f"{workers} workers need {workers * ACTOR_CPUS + DECODE_CPUS:g} CPUs (one per actor, plus decoding); "
            f"the Ray cluster has {cpus:g}",
            fix="pass fewer --workers",
        )
    return workers, g, res


def _run_plan(
    plan: Plan,
    store: ShardStore,
    done: Sequence[int],
    *,
    model_path: str,
    load: Dict[str, Any],
    output: Optional[str],
    visualize: bool,
    score_threshold: Optional[float],
    draw_threshold: float,
    workers: int,
    gpus_per_worker: float,
    batch: int,
    progress: Optional[Progress],
    vis_format: str = "auto",
) -> _RunStats:
    """Run the shards not in ``done``; commit each as its last image arrives."""
    import ray

    shards = plan.shards()
    collector = ShardCollector(store, {k: items for k, items in enumerate(shards) if k not in set(done)})
    total = len(plan.items)
    base = sum(len(shards[k]) for k in done)
    if progress is not None:
        progress(base, total, {})
    stats = _RunStats()
    if not collector.pending:
        return stats
    # one row, and one block, per shard: a decode task reads one shard and the actor task that follows runs it (or
    # a batch of it), so results come back, and shards are committed, as shards finish
    rows = [{"shard": k, "items": json.dumps([asdict(it) for it in shards[k]])} for k in sorted(collector.pending)]
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = progress is None  # ours when the caller shows one, else Ray's
    t0 = time.perf_counter()
    try:
        ds: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        # ray types a map_batches function as one-argument; fn_kwargs passes _decode_shards's `mode`
        ds = ds.map_batches(
            _decode_shards,  # type: ignore[arg-type]
            batch_size=1,
            fn_kwargs={"mode": plan.mode},
            num_cpus=DECODE_CPUS,
        )
        remote: Dict[str, Any] = {"num_cpus": ACTOR_CPUS}
        if gpus_per_worker > 0:
            remote["num_gpus"] = gpus_per_worker
        ds = ds.map_batches(
            _ShardWorker,
            fn_constructor_args=(model_path,),
            fn_constructor_kwargs=dict(
                load,
                mode=plan.mode,
                output=output,
                visualize=visualize,
                score_threshold=score_threshold,
                draw_threshold=draw_threshold,
                vis_format=vis_format,
            ),
            batch_size=batch,
            compute=ray.data.ActorPoolStrategy(size=workers),
            **remote,
        )
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if stats.first_result_s is None:
                stats.first_result_s = time.perf_counter() - t0
                stats.first_rows = len(b["index"])
            for i in range(len(b["index"])):
                err = str(b["error"][i])
                rec = ImageRecord(
                    int(b["index"][i]),
                    int(b["image_id"][i]),
                    str(b["worker"][i]),
                    lines=str(b["coco"][i]),
                    detections=int(b["detections"][i]),
                    error=err or None,
                )
                collector.add(int(b["shard"][i]), rec, str(b["backend"][i]))
            if progress is not None:
                progress(base + collector.received, total, dict(collector.workers))
    finally:
        ctx.enable_progress_bars = saved
    stats.wall_s = time.perf_counter() - t0
    missing = collector.missing()
    if missing:
        raise RuntimeError(f"Ray finished without results for {missing} images of {len(collector.pending)} shards")
    stats.workers = dict(collector.workers)
    stats.duplicates = collector.duplicates
    return stats


def _report(
    plan: Plan,
    done: Sequence[int],
    run: _RunStats,
    merged: Merged,
    workers: int,
    g: float,
    res: Dict[str, float],
    where: str,
) -> RunReport:
    wall, first = run.wall_s, run.first_result_s
    processed = sum(run.workers.values())
    steady = None
    if first is not None and wall > first and processed > run.first_rows:
        steady = round((processed - run.first_rows) / (wall - first), 4)
    return RunReport(
        images=len(plan.items),
        shards=len(plan.shards()),
        shard_size=plan.shard_size,
        shards_resumed=len(done),
        processed=processed,
        wall_s=round(wall, 3),
        first_result_s=None if first is None else round(first, 3),
        img_per_s=round(processed / wall, 4) if wall > 0 else 0.0,
        steady_img_per_s=steady,
        workers=run.workers,
        duplicates_dropped=run.duplicates,
        exactly_once=True,  # merge() raised otherwise
        backend=merged.backend,
        num_workers=workers,
        gpus_per_worker=g,
        cluster=res,
        address=where,
    )


def _load_kwargs(
    model: Optional[str],
    input_hw: Optional[Tuple[int, int]],
    backend: Optional[str],
    batch: int,
    mask_threshold: Optional[float],
) -> Dict[str, Any]:
    return {
        "model": model,
        "input_hw": None if input_hw is None else list(input_hw),
        "backend": backend,
        "batch": batch,
        "mask_threshold": mask_threshold,
    }


def infer_on_ray(
    model_path: PathLike,
    source: PathLike,
    output: PathLike,
    *,
    model: Optional[str] = None,
    input_hw: Optional[Tuple[int, int]] = None,
    backend: Optional[str] = None,
    batch: int = 1,
    score_threshold: Optional[float] = None,
    mask_threshold: Optional[float] = None,
    visualize: bool = True,
    vis_format: str = "auto",
    draw_threshold: float = DRAW_THRESHOLD,
    workers: Optional[int] = None,
    gpus_per_worker: Optional[float] = None,
    address: Optional[str] = None,
    resume: bool = False,
    shard_size: Optional[int] = None,
    stride: int = 1,
    progress: Optional[Progress] = None,
) -> Tuple[Dict[str, Any], RunReport]:
    """``rcnn-deploy infer --ray``: the outputs a local ``infer`` writes into ``output`` (per-image TSV / picture,
    ``results.json``, ``summary.json``), computed on Ray; ``output/shards/`` keeps the shards (``--resume``)
    and ``run.json`` (the :class:`RunReport`). Video inputs are split into frame ranges (every ``stride``-th
    frame; the shards are ranges of one video). Returns ``(summary, report)``."""
    if batch < 1:
        raise UserError(f"--batch {batch}: need at least 1", fix="pass --batch 1 or more")
    if stride < 1:
        raise UserError(f"stride must be >= 1, got {stride}", where="--stride")
    paths = list_inputs(source)
    _check_model_path(model_path, model, backend)
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = ShardStore(out / SHARDS_DIR)
    settings = {
        "model_path": str(Path(model_path).resolve()),
        "model": model,
        "backend": backend,
        "input_hw": None if input_hw is None else list(input_hw),
        "score_threshold": score_threshold,
        "mask_threshold": mask_threshold,
        "visualize": visualize,
        "vis_format": vis_format,
        "draw_threshold": draw_threshold,
        "stride": stride,
    }
    with ray_session(address, local_num_cpus(workers)) as where:
        n, g, res = resolve_workers(workers, gpus_per_worker)
        items = infer_items(paths, stride)
        plan = Plan("infer", items, shard_size or default_shard_size(len(items), n, batch), settings)
        plan, done = store.start(plan, resume)
        run = _run_plan(
            plan,
            store,
            done,
            model_path=str(model_path),
            load=_load_kwargs(model, input_hw, backend, batch, mask_threshold),
            output=str(out),
            visualize=visualize,
            vis_format=vis_format,
            score_threshold=score_threshold,
            draw_threshold=draw_threshold,
            workers=n,
            gpus_per_worker=g,
            batch=batch,
            progress=progress,
        )
    from ..runtime.sinks import failure_record, infer_summary, write_run_outputs

    merged = store.merge(plan)
    by_index = {it.index: it for it in plan.items}
    failures = [failure_record(by_index[r["index"]].path, r["error"]) for r in merged.records if "error" in r]
    summary = infer_summary(len(plan.items), failures, len(merged.results), merged.backend)
    write_run_outputs(out, merged.results, summary)
    report = _report(plan, done, run, merged, n, g, res, where)
    atomic_write_json(store.root / RUN_FILE, report.to_dict())
    return summary, report


def eval_on_ray(
    model_path: PathLike,
    annotations: PathLike,
    images_dir: PathLike,
    work_dir: PathLike,
    *,
    model: Optional[str] = None,
    input_hw: Optional[Tuple[int, int]] = None,
    backend: Optional[str] = None,
    batch: int = 1,
    library: str = "auto",
    max_images: Optional[int] = None,
    workers: Optional[int] = None,
    gpus_per_worker: Optional[float] = None,
    address: Optional[str] = None,
    resume: bool = False,
    shard_size: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> Tuple[Dict[str, Any], RunReport]:
    """``rcnn-deploy eval --ray``: run the annotations' images on Ray (shards, resume and ``run.json`` in
    ``work_dir``, the merged COCO results in ``work_dir/results.json``) and score the merged results. Returns
    ``(out, report)`` with ``out`` as :func:`~rcnn_deploy.evaluation.dataset.evaluate_detector` returns it."""
    from ..evaluation.coco import IOU_TYPES, evaluate_coco, pick_library
    from ..evaluation.ground_truth import load_ground_truth

    if batch < 1:
        raise UserError(f"--batch {batch}: need at least 1", fix="pass --batch 1 or more")
    lib = pick_library(library)
    gt = load_ground_truth(annotations)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(
            f"images folder {images_dir} not found",
            fix="pass --images DIR, the folder the file_name entries are relative to",
        )
    spec = _check_model_path(model_path, model, backend)
    gt_cats = {int(c["id"]) for c in gt["categories"]}
    model_cats = {int(c) for c in spec.category_ids[1:]}
    if gt_cats and not gt_cats & model_cats:
        raise UserError(
            "none of the model's category ids is a category of the annotations",
            where=annotations,
            fix="evaluate a model trained on these categories",
        )
    work = Path(work_dir).resolve()
    store = ShardStore(work)
    settings = {
        "model_path": str(Path(model_path).resolve()),
        "model": model,
        "backend": backend,
        "input_hw": None if input_hw is None else list(input_hw),
        "annotations": str(Path(annotations).resolve()),
    }
    with ray_session(address, local_num_cpus(workers)) as where:
        n, g, res = resolve_workers(workers, gpus_per_worker)
        items = eval_items(gt, images_dir, max_images)
        plan = Plan("eval", items, shard_size or default_shard_size(len(items), n, batch), settings)
        plan, done = store.start(plan, resume)
        run = _run_plan(
            plan,
            store,
            done,
            model_path=str(model_path),
            load=_load_kwargs(model, input_hw, backend, batch, None),
            output=None,
            visualize=False,
            score_threshold=None,
            draw_threshold=DRAW_THRESHOLD,
            workers=n,
            gpus_per_worker=g,
            batch=batch,
            progress=progress,
        )
    merged = store.merge(plan)
    atomic_write_json(work / "results.json", merged.results)
    by_index = {it.index: it for it in plan.items}
    skipped = [
        {"image_id": r["image_id"], "file_name": by_index[r["index"]].name, "error": r["error"]}
        for r in merged.records
        if "error" in r
    ]
    ran = [int(r["image_id"]) for r in merged.records if "error" not in r]
    if not ran:
        raise UserError(
            f"none of the {len(plan.items)} images could be evaluated (first problem: {skipped[0]['error']})",
            fix=f"check that {images_dir} is the folder the annotations' file_name entries are relative to",
        )
    iou_types = IOU_TYPES if spec.masks else ("bbox",)
    metrics = evaluate_coco(gt, merged.results, iou_types, library=lib, image_ids=ran)
    report = _report(plan, done, run, merged, n, g, res, where)
    atomic_write_json(work / RUN_FILE, report.to_dict())
    out = {
        "metrics": metrics,
        "images": len(ran),
        "image_ids": ran,
        "skipped": skipped,
        "detections": len(merged.results),
        "library": lib,
        "results": merged.results,
        "backend": merged.backend,
    }
    return out, report


def _check_model_path(model_path: PathLike, model: Optional[str], backend: Optional[str]) -> Any:
    """The model's spec, read on the driver before any worker starts (an export's contract.json; a checkpoint is
    loaded once on the CPU), so a wrong path fails here with one message instead of in every actor."""
    from ..api import Detector
    from ..contract import Contract

    p = Path(model_path)
    directory = p if p.is_dir() else p.parent
    try:
        if (directory / "contract.json").is_file() and backend != "torch":
            return Contract.load(directory).spec
        return Detector.load(p, model=model, backend=backend).spec
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e), fix="pass an export directory, an engine file, or a checkpoint with -m") from None
