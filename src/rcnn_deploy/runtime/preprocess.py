"""Image loading and letterboxing to a model's fixed input size (numpy + Pillow; Python 3.9 compatible).

An image is resized keeping its aspect ratio so that it fits ``H x W`` (like torchvision's
``GeneralizedRCNNTransform`` with min/max size equal to the input), placed at the top-left corner, and the
rest is filled with the model's pixel mean — which the in-graph normalisation turns into exactly 0, the value
torchvision pads its normalised batch with. :class:`Letterbox` records the scale so boxes and masks can be
mapped back to the original image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Letterbox:
    """Where an original ``(orig_h, orig_w)`` image sits inside the model input: scaled by ``scale``."""

    orig_h: int
    orig_w: int
    scale: float

    @property
    def resized_hw(self) -> Tuple[int, int]:
        return int(round(self.orig_h * self.scale)), int(round(self.orig_w * self.scale))

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel boxes -> original-image boxes (per-axis ratio of original to resized size, as
        torchvision's ``resize_boxes``), clipped to the original image."""
        rh, rw = self.resized_hw
        ratio = np.array([self.orig_w / rw, self.orig_h / rh] * 2, dtype=np.float32)
        out = boxes.astype(np.float32) * ratio
        out[:, 0::2] = np.clip(out[:, 0::2], 0, self.orig_w)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, self.orig_h)
        return out


def find_images(source: Union[str, Path]) -> List[Path]:
    """An image file, a directory of images (sorted) or a glob pattern -> image paths."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        import glob

        files = sorted(Path(f) for f in glob.glob(str(source)) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found at {source}")
    return files


def load_rgb(path: Union[str, Path]) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB; raises ValueError naming the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def letterbox(image: np.ndarray, input_hw: Tuple[int, int], fill_rgb: Sequence[float]) -> Tuple[np.ndarray, Letterbox]:
    """``[H, W, 3]`` uint8 RGB -> ``[3, IH, IW]`` float32 RGB 0-255 and its :class:`Letterbox`."""
    from PIL import Image

    h, w = image.shape[:2]
    ih, iw = input_hw
    scale = min(ih / h, iw / w)
    box = Letterbox(h, w, scale)
    rh, rw = box.resized_hw
    rh, rw = min(max(rh, 1), ih), min(max(rw, 1), iw)
    # Pillow returns a copy for a resize to the same size, so an image already at size skips it exactly
    resized = image if (rh, rw) == (h, w) else np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    out = np.empty((3, ih, iw), dtype=np.float32)  # written channel-first directly: no transposed copy
    if rh < ih or rw < iw:
        out[...] = np.asarray(fill_rgb, dtype=np.float32).reshape(3, 1, 1)
    out[:, :rh, :rw] = resized.transpose(2, 0, 1)
    return out, box


def rgb_fill(pixel_mean: Sequence[float], channel_order: str) -> Tuple[float, float, float]:
    """The model's pixel mean in RGB order (the spec stores it in the network's channel order)."""
    m = tuple(float(v) for v in pixel_mean)
    return (m[2], m[1], m[0]) if channel_order == "BGR" else (m[0], m[1], m[2])


def iter_batches(
    paths: Sequence[Path], input_hw: Tuple[int, int], fill_rgb: Sequence[float], batch: int
) -> Iterator[Tuple[np.ndarray, List[Letterbox], List[Path], List[Tuple[Path, str]]]]:
    """Yield ``(images [b, 3, H, W], letterboxes, paths, failures)``; unreadable images are reported in
    ``failures`` and skipped, never stopping the batch."""
    chunk: List[np.ndarray] = []
    boxes: List[Letterbox] = []
    ok: List[Path] = []
    failed: List[Tuple[Path, str]] = []
    for p in paths:
        try:
            arr, lb = letterbox(load_rgb(p), input_hw, fill_rgb)
        except ValueError as e:
            failed.append((p, str(e)))
            continue
        chunk.append(arr)
        boxes.append(lb)
        ok.append(p)
        if len(chunk) == batch:
            yield np.stack(chunk), boxes, ok, failed
            chunk, boxes, ok, failed = [], [], [], []
    if chunk or failed:
        yield (np.stack(chunk) if chunk else np.zeros((0, 3, *input_hw), np.float32)), boxes, ok, failed
