"""Drawing detections and writing the seed's per-image TSV (numpy + Pillow)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .._io import atomic_write, atomic_write_text
from .detections import Detections

TSV_HEADER = "class\tlabel\tscore\tx1\ty1\tx2\ty2"


def class_name(names: Sequence[str], label_ids: Sequence[int], label: int) -> str:
    for i, lid in enumerate(label_ids):
        if lid == label and i > 0:
            return names[i]
    return str(label)


def write_tsv(path: Union[str, Path], det: Detections, names: Sequence[str], label_ids: Sequence[int]) -> None:
    rows = [TSV_HEADER]
    for b, s, c in zip(det.boxes, det.scores, det.classes):
        rows.append(
            f"{class_name(names, label_ids, int(c))}\t{int(c)}\t{float(s):.4f}\t"
            + "\t".join(f"{float(v):.2f}" for v in b)
        )
    atomic_write_text(path, "\n".join(rows) + "\n")


def draw(
    image: np.ndarray, det: Detections, names: Sequence[str], label_ids: Sequence[int], path: Union[str, Path]
) -> None:
    """Boxes, class names, scores and coloured masks over the ``[H, W, 3]`` uint8 RGB image; saved as PNG."""
    from PIL import Image

    im = Image.fromarray(render(image, det, names, label_ids))
    atomic_write(path, lambda p: im.save(p, format="PNG"))


def render(image: np.ndarray, det: Detections, names: Sequence[str], label_ids: Sequence[int]) -> np.ndarray:
    """The picture :func:`draw` saves, as an ``[H, W, 3]`` uint8 RGB array (video frames use it)."""
    from PIL import Image, ImageDraw

    canvas = np.array(image, dtype=np.uint8, copy=True)  # uint8 throughout: no float copy of the image
    rng = np.random.default_rng(0)
    colours = rng.integers(64, 256, size=(max(len(det), 1), 3)).astype(np.float32)

    def blend(view: np.ndarray, where: np.ndarray, col: np.ndarray) -> None:
        view[where] = (0.5 * view[where].astype(np.float32) + 0.5 * col).round().clip(0, 255).astype(np.uint8)

    pasted = det.pasted
    if pasted is not None and pasted.image_hw == image.shape[:2]:
        for i, col in enumerate(colours[: len(det)]):
            r = pasted.region(i)  # the box region only: no image-sized array per mask
            if r is not None:
                y0, y1, x0, x1, crop = r
                blend(canvas[y0:y1, x0:x1], crop, col)
    elif det.masks is not None and det.masks.ndim == 3 and det.masks.shape[1:] == image.shape[:2]:
        for m, col in zip(det.masks, colours):
            blend(canvas, m, col)
    im = Image.fromarray(canvas)
    dr = ImageDraw.Draw(im)
    for b, s, c, col in zip(det.boxes, det.scores, det.classes, colours):
        colour = tuple(int(v) for v in col)
        dr.rectangle([float(v) for v in b], outline=colour, width=2)
        dr.text(
            (float(b[0]) + 2, float(b[1]) + 1), f"{class_name(names, label_ids, int(c))} {float(s):.2f}", fill=colour
        )
    return np.asarray(im)
