"""Where a stream's images come from (numpy + Pillow; OpenCV only for video; Python 3.9 compatible).

:func:`open_source` turns what a user passes — an image file, a folder, a glob, a text file listing paths, an
``[H, W, 3]`` array, a list of paths or arrays, or a video file (mp4 / avi / mkv / mov / webm) — into an
iterator of :class:`Item` in a fixed order. An item is cheap: decoding happens later, in the runner's
workers (``item.load()``), except for video, whose frames are decoded in order by one reader thread.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
SourceLike = Union[str, Path, np.ndarray, Sequence[Union[str, Path, np.ndarray]]]


@dataclass
class Item:
    """One image of a stream: ``index`` (0-based position), ``name`` (the path, ``array[i]`` or
    ``video.mp4#frame``), and either a ``path`` to decode or the decoded ``array``; video frames carry their
    ``frame`` index and ``time_s`` timestamp."""

    index: int
    name: str
    path: Optional[Path] = None
    array: Optional[np.ndarray] = None
    frame: Optional[int] = None
    time_s: Optional[float] = None
    expect_hw: Optional[Tuple[int, int]] = None  # the size a dataset's annotations say the image has
    image_id: Optional[int] = None  # a dataset's id for the image (COCO), when it has one

    def load(self, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        if self.array is not None:
            return _as_rgb(self.array, self.name)
        if self.path is None or not self.path.is_file():
            raise UserError("image file not found", where=self.path or self.name, fix="check the path")
        rgb = decode(self.path)
        if self.expect_hw is not None and tuple(rgb.shape[:2]) != tuple(self.expect_hw):
            h, w = self.expect_hw
            raise UserError(
                f"the image is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but the annotations say {w}x{h}",
                where=self.path,
                fix="are these the images of this annotations file?",
            )
        return rgb

    def meta(self) -> dict:
        d: dict = {"image": self.name}
        if self.frame is not None:
            d.update(frame_fields(self.frame, self.time_s))
        return d


def frame_fields(frame: int, time_s: Optional[float]) -> dict:
    """What a video frame's results carry besides the image's: its index and timestamp (s, 6 decimals)."""
    return {"frame": int(frame), "time_s": round(float(time_s or 0.0), 6)}


def frame_stem(video_stem: str, frame: int) -> str:
    """The file stem of a video frame's outputs: ``STEM_000123`` for frame 123."""
    return f"{video_stem}_{int(frame):06d}"


def _as_rgb(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        raise UserError(
            f"an in-memory image must be an [H, W, 3] uint8 RGB array, got {a.dtype} {list(a.shape)}",
            where=name,
            fix="convert it first, e.g. np.asarray(PIL.Image.open(p).convert('RGB'))",
        )
    return a


def is_video(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() in VIDEO_SUFFIXES


def open_source(source: SourceLike, *, stride: int = 1) -> Iterator[Item]:
    """The items of ``source`` in order (see the module docstring). ``stride``: every Nth video frame."""
    if stride < 1:
        raise UserError(f"stride must be >= 1, got {stride}", where="--stride")
    if isinstance(source, np.ndarray):
        return iter([Item(0, "array[0]", array=source)])
    if isinstance(source, (str, Path)):
        if is_video(source):
            return video_frames(Path(source), stride)
        from .preprocess import find_images

        return (Item(i, str(p), path=Path(p)) for i, p in enumerate(find_images(source)))
    return _from_list(list(source), stride)


def _from_list(entries: List[Any], stride: int) -> Iterator[Item]:
    i = 0
    for k, e in enumerate(entries):
        if isinstance(e, np.ndarray):
            yield Item(i, f"array[{k}]", array=e)
            i += 1
        elif is_video(e):
            for it in video_frames(Path(e), stride):
                it.index = i
                yield it
                i += 1
        else:
            yield Item(i, str(e), path=Path(e))
            i += 1


def count(source: SourceLike) -> Optional[int]:
    """How many items ``source`` has when that is known without decoding (None for video)."""
    if isinstance(source, np.ndarray):
        return 1
    if isinstance(source, (str, Path)):
        if is_video(source):
            return None
        from .preprocess import find_images

        return len(find_images(source))
    return None if any(is_video(e) for e in source) else len(source)


def video_frames(path: Path, stride: int = 1, buffer: int = 8) -> Iterator[Item]:
    """Every ``stride``-th frame of a video as RGB items, decoded by one reader thread (OpenCV) ahead of the
    consumer through a queue of ``buffer`` frames."""
    if not path.is_file():
        raise UserError("video file does not exist", where=path, fix="check the path")
    cap = _open_video(path)
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    q: queue.Queue[Any] = queue.Queue(maxsize=buffer)
    stop = threading.Event()
    done = object()

    def read() -> None:
        frame_no = 0
        try:
            while not stop.is_set():
                ok = cap.grab()
                if not ok:
                    break
                if frame_no % stride == 0:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        break
                    t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if fps <= 0 else frame_no / fps
                    item = Item(0, f"{path}#{frame_no}", path=path, frame=frame_no, time_s=t)
                    item.array = np.ascontiguousarray(bgr[:, :, ::-1])
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                frame_no += 1
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)
        finally:
            cap.release()
            q.put(done)

    reader = threading.Thread(target=read, name=f"video:{path.name}", daemon=True)
    reader.start()

    def items() -> Iterator[Item]:
        i = 0
        try:
            while True:
                got = q.get()
                if got is done:
                    return
                if isinstance(got, BaseException):
                    raise got
                got.index = i
                i += 1
                yield got
        finally:
            stop.set()
            reader.join(timeout=5)

    return items()


def video_frame_list(path: Path, stride: int = 1) -> List[Tuple[int, float]]:
    """``(frame index, timestamp s)`` of every ``stride``-th frame of a video, as :func:`video_frames` yields them,
    without decoding pixels (OpenCV ``grab``; the container's frame count is not trusted). The driver of a Ray
    run lists a video this way and cuts the list into frame ranges."""
    if not path.is_file():
        raise UserError("video file does not exist", where=path, fix="check the path")
    cap = _open_video(path)
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    out: List[Tuple[int, float]] = []
    try:
        frame_no = 0
        while cap.grab():
            if frame_no % stride == 0:
                out.append((frame_no, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if fps <= 0 else frame_no / fps))
            frame_no += 1
    finally:
        cap.release()
    return out


class FrameReader:
    """Random access to one video's frames for a Ray decode task: ``read(frame)`` returns the frame as RGB. Frames
    asked for in increasing order (a shard's frame range) are read on from the last one; a jump back, or more than
    ``max_gap`` frames ahead, seeks (``CAP_PROP_POS_FRAMES``) and checks where it landed."""

    def __init__(self, path: Path, max_gap: int = 256) -> None:
        self.path, self.max_gap = Path(path), max_gap
        self.cap = _open_video(self.path)
        self.pos = 0  # the index of the frame the next grab returns

    def read(self, frame: int) -> np.ndarray:
        import cv2

        if frame < self.pos or frame - self.pos > self.max_gap:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
            landed = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES))
            if landed != frame:
                raise UserError(f"seeking to frame {frame} landed on frame {landed}", where=self.path)
            self.pos = frame
        while self.pos < frame:
            if not self.cap.grab():
                raise UserError(f"the video ends before frame {frame}", where=self.path)
            self.pos += 1
        ok, bgr = self.cap.read()
        if not ok:
            raise UserError(f"frame {frame} could not be read", where=self.path)
        self.pos += 1
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def close(self) -> None:
        self.cap.release()


def _open_video(path: Path) -> Any:
    try:
        import cv2
    except ImportError as e:
        raise UserError(
            "reading video needs OpenCV", where=path, fix="pip install 'rcnn-deploy[video]' (opencv-python-headless)"
        ) from e
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError("cannot open this video (unknown container or codec)", where=path)
    return cap


class VideoWriter:
    """Annotated frames -> an mp4 (OpenCV, mp4v), written as they come (no frame list in memory)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = Path(path), fps or 25.0
        self._writer: Any = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            h, w = rgb.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h))
        self._writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def video_fps(path: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    finally:
        cap.release()
