"""Drawing detections and writing the seed's per-image TSV.

The picture: each instance gets its own colour (hues a golden-ratio step apart), its mask tinted at half
opacity with a solid contour, its box, and a label (class name and score) in a filled box of the instance's
colour with black or white text, whichever contrasts. Line widths and the font scale with the image (a label
is about 2.2 % of the short side tall, never under 10 px). Labels are placed greedily, most confident first,
above the box, inside its top, below it or inside its bottom, whichever does not cover a label already
placed, so overlapping detections do not pile their labels into one smear.

Drawing uses OpenCV (``opencv-python-headless``, the ``[video]`` extra: anti-aliased scalable Hershey font,
``findContours``) when it is importable, else Pillow's ``ImageDraw`` with a scalable TrueType font (Pillow's
bundled default font at the computed size). Everything stays ``uint8``: masks are drawn from
:class:`~rcnn_deploy.runtime.masks.PastedMasks` one box region at a time, and the only image-sized array is
the output itself.
"""

from __future__ import annotations

import colorsys
import functools
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .._io import atomic_write, atomic_write_text
from ..errors import UserError
from ._opencv import MAX_SIDE, opencv
from .detections import Detections

TSV_HEADER = "class\tlabel\tscore\tx1\ty1\tx2\ty2"
LIBRARIES = ("auto", "opencv", "pillow")
MASK_ALPHA = 0.5  # mask tint opacity
#: ``infer``'s default ``--draw-threshold``: the PNGs show detections scoring at least this (the TSV and COCO
#: results keep every detection the model returns)
DRAW_THRESHOLD = 0.5
_GOLDEN = 0.618033988749895
_CV_FONT_PX = 22.0  # cv2.FONT_HERSHEY_SIMPLEX's text height (ascent + baseline) at fontScale 1

Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


class Label(NamedTuple):
    """One placed label: which detection, its text, where its filled background goes, and its colours."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index (mypy's NamedTuple limitation)
    text: str
    rect: Rect
    background: Tuple[int, int, int]
    foreground: Tuple[int, int, int]


class Style(NamedTuple):
    text_px: int  # label text height in pixels
    line: int  # box and contour line width
    pad: int  # padding between the label text and its background's edge


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


#: How ``infer`` saves its pictures (``--vis-format``): ``auto`` is JPEG for a JPEG source and PNG for the rest
#: (as Ultralytics' and MMDetection's demos keep the source's format): encoding a 1920x1080 picture took 265 ms as
#: PNG against 13 ms as JPEG on the 2-core CPU machine, where the int8 model at 384² takes about 300 ms.
VIS_FORMATS = ("auto", "png", "jpg")
#: JPEG pictures: quality 95 without chroma subsampling (4:4:4), so the coloured label text stays sharp.
JPEG_QUALITY = 95
JPEG_MAX_SIDE = 65500  # the largest side libjpeg writes
_JPEG_SUFFIXES = (".jpg", ".jpeg")


def picture_suffix(source: Optional[Union[str, Path]], vis_format: str = "auto", frame: bool = False) -> str:
    """The file suffix of the picture of an image read from ``source`` (None: an in-memory array; ``frame``: a
    video's frame, whose pixels were lossy-compressed like a JPEG's) for ``vis_format`` (:data:`VIS_FORMATS`):
    ``.jpg`` or ``.png``."""
    if vis_format not in VIS_FORMATS:
        raise ValueError(f"picture format must be one of {', '.join(VIS_FORMATS)}, got {vis_format!r}")
    if vis_format == "auto":
        jpeg = frame or (source is not None and Path(source).suffix.lower() in _JPEG_SUFFIXES)
        return ".jpg" if jpeg else ".png"
    return "." + vis_format


def draw(
    image: np.ndarray,
    det: Detections,
    names: Sequence[str],
    label_ids: Sequence[int],
    path: Union[str, Path],
    library: str = "auto",
    inplace: bool = False,
) -> None:
    """Boxes, class names, scores and coloured masks over the ``[H, W, 3]`` uint8 RGB image; saved as JPEG
    (:data:`JPEG_QUALITY`, 4:4:4) when ``path`` ends in ``.jpg`` / ``.jpeg``, else as PNG.
    ``inplace``: draw on ``image`` itself (see :func:`render`)."""
    from PIL import Image

    jpeg = Path(path).suffix.lower() in _JPEG_SUFFIXES
    if jpeg and max(image.shape[:2]) > JPEG_MAX_SIDE:  # libjpeg's limit; Pillow would raise OSError mid-write
        raise UserError(
            f"a JPEG picture can be at most {JPEG_MAX_SIDE} pixels a side; this image is "
            f"{image.shape[1]}x{image.shape[0]} (WxH)",
            where=path,
            fix="pass --vis-format png (or auto: PNG for every image that is not a JPEG)",
        )
    im = Image.fromarray(render(image, det, names, label_ids, library=library, inplace=inplace))
    if jpeg:
        atomic_write(path, lambda p: im.save(p, format="JPEG", quality=JPEG_QUALITY, subsampling=0))
    else:
        atomic_write(path, lambda p: im.save(p, format="PNG"))


def instance_colours(n: int) -> List[Tuple[int, int, int]]:
    """``n`` distinct saturated RGB colours, one per instance (hues a golden-ratio step apart)."""
    out = []
    for i in range(n):
        value = 0.95 if (i // 7) % 2 == 0 else 0.75  # a second brightness once the hues start to come round
        r, g, b = colorsys.hsv_to_rgb((0.08 + i * _GOLDEN) % 1.0, 0.85, value)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def text_colour(background: Tuple[int, int, int]) -> Tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def style_for(image_hw: Tuple[int, int]) -> Style:
    """Text height, line width and padding for an image of ``image_hw`` (they scale with its short side)."""
    side = min(image_hw)
    text_px = max(10, round(0.022 * side))
    return Style(text_px=text_px, line=max(1, round(side / 360)), pad=max(2, text_px // 4))


def pick_library(library: str = "auto") -> str:
    """``opencv`` if requested or (``auto``) importable, else ``pillow``."""
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {', '.join(LIBRARIES)}, got {library!r}")
    if library != "auto":
        return library
    return "opencv" if opencv() is not None else "pillow"


def render(
    image: np.ndarray,
    det: Detections,
    names: Sequence[str],
    label_ids: Sequence[int],
    library: str = "auto",
    inplace: bool = False,
) -> np.ndarray:
    """The picture :func:`draw` saves, as an ``[H, W, 3]`` uint8 RGB array (video frames use it).

    ``library``: ``auto`` (OpenCV when importable, else Pillow), ``opencv`` or ``pillow``. ``inplace``: draw on
    ``image`` itself and return it, when it is a writable C-contiguous uint8 array (else on a copy): for a
    caller that no longer needs the photo, one image-sized array less."""
    lib = pick_library(library)
    drawable = image.dtype == np.uint8 and image.flags.c_contiguous and image.flags.writeable
    # the one image-sized array: the image itself, or its copy
    canvas = image if inplace and drawable else np.array(image, dtype=np.uint8, copy=True, order="C")
    h, w = canvas.shape[:2]
    st = style_for((h, w))
    colours = instance_colours(len(det))
    _tint_masks(canvas, det, colours, st, lib)
    texts = [f"{class_name(names, label_ids, int(c))} {float(s):.2f}" for s, c in zip(det.scores, det.classes)]
    if lib == "opencv":
        return _draw_cv2(canvas, det, texts, colours, st)
    return _draw_pillow(canvas, det, texts, colours, st)


def _mask_region(det: Detections, i: int, image_hw: Tuple[int, int]) -> Optional[Tuple[int, int, int, int, np.ndarray]]:
    """``(y0, y1, x0, x1, bool crop)`` of detection ``i``'s mask, or None (no mask, or an empty one)."""
    pasted = det.pasted
    if pasted is not None and pasted.image_hw == image_hw:
        return pasted.region(i)  # its box region only: no image-sized array per mask
    masks = det.masks
    if masks is None or masks.ndim != 3 or masks.shape[1:] != image_hw:
        return None
    m = masks[i]
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return y0, y1, x0, x1, m[y0:y1, x0:x1]


def _tint_masks(canvas: np.ndarray, det: Detections, colours: List[Tuple[int, int, int]], st: Style, lib: str) -> None:
    """Blend each mask with its colour (least confident first, so the most confident is on top), then outline it.

    One mask's crop at a time (a photo's 100 box-region crops together are hundreds of MB): its tint is blended
    and its outline kept (OpenCV's contour points, or the Pillow path's edge pixel coordinates); the outlines
    are drawn after all the tints."""
    n = len(det)
    hw = (int(canvas.shape[0]), int(canvas.shape[1]))
    a = round(MASK_ALPHA * 256)
    outlines: List[Any] = [None] * n
    for i in reversed(range(n)):
        r = _mask_region(det, i, hw)
        if r is None or not r[4].any():
            continue
        y0, y1, x0, x1, crop = r
        _blend(canvas[y0:y1, x0:x1], crop, colours[i], a)
        if lib == "opencv":
            import cv2

            contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            outlines[i] = (y0, x0, contours)
        else:
            ys, xs = np.nonzero(_edge(crop, st.line))
            outlines[i] = (y0, x0, (ys, xs))
    for i in reversed(range(n)):
        if outlines[i] is None:
            continue
        y0, x0, shape = outlines[i]
        if lib == "opencv":
            import cv2

            cv2.drawContours(canvas, shape, -1, colours[i], st.line, cv2.LINE_AA, offset=(x0, y0))
        else:
            ys, xs = shape
            canvas[ys + y0, xs + x0] = colours[i]


def _blend(view: np.ndarray, crop: np.ndarray, colour: Tuple[int, int, int], a: int) -> None:
    """``view[crop] = (view * (256 - a) + colour * a + 128) >> 8`` per channel, in place, without gathering the
    mask's pixels (a boolean gather and scatter of a 6000x4000 photo's 100 masks took 6 s; this, 0.7 s): over
    the bounding box of the mask's pixels, the blend as a 256-entry table per channel, then
    ``view ^= (view ^ blended) & (0 or 255)`` per pixel. OpenCV when installed, else numpy."""
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(crop.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    view, crop = view[r0:r1, c0:c1], crop[r0:r1, c0:c1]
    col = np.asarray(colour, dtype=np.uint16)
    lut = ((np.arange(256, dtype=np.uint16)[:, None] * (256 - a) + col * a + 128) >> 8).astype(np.uint8)  # [256, 3]
    select = np.negative(crop.view(np.uint8))  # 255 where the mask is set, else 0
    cv2 = opencv()
    if cv2 is not None and max(view.shape[:2]) < MAX_SIDE:
        diff = cv2.LUT(view, lut.reshape(256, 1, 3))
        cv2.bitwise_xor(diff, view, dst=diff)
        cv2.bitwise_and(diff, cv2.merge([select, select, select]), dst=diff)
        out = cv2.bitwise_xor(view, diff, dst=view)
        if out is not view:  # OpenCV wrote a new array instead of the view (it does not for these ROIs)
            view[...] = out
        return
    diff = np.empty_like(view)
    for c in range(3):
        diff[..., c] = lut[:, c][view[..., c]]
    np.bitwise_xor(diff, view, out=diff)
    np.bitwise_and(diff, select[..., None], out=diff)
    np.bitwise_xor(view, diff, out=view)


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The ``width``-pixel inner border of a bool mask (mask minus its 4-neighbour erosion, repeated)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
    return mask & ~inner


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    boxes: np.ndarray,
    sizes: Sequence[Tuple[int, int]],
    image_hw: Tuple[int, int],
    order: Optional[Sequence[int]] = None,
) -> List[Rect]:
    """Label rectangles ``(x0, y0, x1, y1)`` of ``sizes[i] = (width, height)`` for ``boxes``, inside the image,
    returned in ``order`` (default: as given; :func:`layout` passes most confident first).

    Greedy in ``order``: the first of above the box, inside its top, below it, inside its bottom that covers no
    label placed before; failing all four, the free spot nearest to "above the box" directly below or above a
    placed label in the same columns; failing that too (a full column), "above the box", overlapping."""
    h, w = image_hw
    taken = np.zeros((0, 4), dtype=np.int64)
    out: List[Rect] = []

    def clamp(x: float, y: float, lw: int, lh: int) -> Tuple[int, int, int, int]:
        x0 = int(min(max(round(x), 0), max(w - lw, 0)))
        y0 = int(min(max(round(y), 0), max(h - lh, 0)))
        return (x0, y0, x0 + lw, y0 + lh)

    def free(cands: List[Tuple[int, int, int, int]]) -> np.ndarray:
        c = np.asarray(cands, dtype=np.int64)[:, None, :]
        t = taken[None, :, :]
        hit = (c[..., 0] < t[..., 2]) & (t[..., 0] < c[..., 2]) & (c[..., 1] < t[..., 3]) & (t[..., 1] < c[..., 3])
        return np.logical_not(hit.any(axis=1))

    for i in order if order is not None else range(len(sizes)):
        lw, lh = sizes[i]
        x1, y1, _, y2 = (float(v) for v in boxes[i])
        cands = [clamp(x1, y1 - lh, lw, lh), clamp(x1, y1, lw, lh), clamp(x1, y2, lw, lh), clamp(x1, y2 - lh, lw, lh)]
        start = cands[0]
        ok = free(cands)
        if not ok.any():
            same_cols = taken[(taken[:, 0] < start[2]) & (start[0] < taken[:, 2])]
            ys = sorted({int(v) for v in same_cols[:, 3]} | {int(v) - lh for v in same_cols[:, 1]})
            ys = sorted((y for y in ys if 0 <= y <= h - lh), key=lambda y: abs(y - start[1]))
            cands = [clamp(start[0], y, lw, lh) for y in ys] or [start]
            ok = free(cands)
        rect = cands[int(np.argmax(ok))] if ok.any() else start
        out.append(rect)
        taken = np.vstack([taken, np.asarray(rect, dtype=np.int64)[None]])
    return out


def _box_int(b: np.ndarray, image_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    h, w = image_hw
    x1, y1, x2, y2 = (int(round(float(v))) for v in b)
    return min(max(x1, 0), w - 1), min(max(y1, 0), h - 1), min(max(x2, 0), w - 1), min(max(y2, 0), h - 1)


def _cv2_text_params(st: Style) -> Tuple[int, float, int]:
    import cv2

    scale = st.text_px / _CV_FONT_PX
    return cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(st.text_px / 12))


def layout(
    det: Detections, names: Sequence[str], label_ids: Sequence[int], image_hw: Tuple[int, int], library: str = "auto"
) -> List[Label]:
    """Where :func:`render` puts each detection's label, and in which colours (``Label`` per detection)."""
    lib = pick_library(library)
    st = style_for(image_hw)
    texts = [f"{class_name(names, label_ids, int(c))} {float(s):.2f}" for s, c in zip(det.scores, det.classes)]
    return _layout(det, texts, instance_colours(len(det)), st, image_hw, lib)


def _layout(
    det: Detections,
    texts: Sequence[str],
    colours: Sequence[Tuple[int, int, int]],
    st: Style,
    image_hw: Tuple[int, int],
    lib: str,
) -> List[Label]:
    sizes = []
    if lib == "opencv":
        import cv2

        face, scale, thick = _cv2_text_params(st)
        for t in texts:
            (tw, th), base = cv2.getTextSize(t, face, scale, thick)
            sizes.append((tw + 2 * st.pad, th + base + 2 * st.pad))
    else:
        font = _pil_font(st.text_px)
        for t in texts:
            x0, y0, x1, y1 = font.getbbox(t)
            sizes.append((int(x1 - min(x0, 0)) + 2 * st.pad, int(max(y1, st.text_px)) + 2 * st.pad))
    order = [int(i) for i in np.argsort(-np.asarray(det.scores, dtype=np.float64), kind="stable")]
    rects = place_labels(det.boxes, sizes, image_hw, order)
    return [Label(i, texts[i], rect, colours[i], text_colour(colours[i])) for i, rect in zip(order, rects)]


def _draw_cv2(
    canvas: np.ndarray, det: Detections, texts: Sequence[str], colours: Sequence[Tuple[int, int, int]], st: Style
) -> np.ndarray:
    import cv2

    hw = canvas.shape[:2]
    for i in reversed(range(len(det))):
        x1, y1, x2, y2 = _box_int(det.boxes[i], hw)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[i], st.line, cv2.LINE_8)  # axis-aligned: crisp
    face, scale, thick = _cv2_text_params(st)
    for lab in reversed(_layout(det, texts, colours, st, hw, "opencv")):  # the most confident drawn last, on top
        x0, y0, x1, y1 = lab.rect
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), lab.background, -1)
        (_, th), base = cv2.getTextSize(lab.text, face, scale, thick)
        cv2.putText(canvas, lab.text, (x0 + st.pad, y0 + st.pad + th), face, scale, lab.foreground, thick, cv2.LINE_AA)
    return canvas


@functools.lru_cache(maxsize=16)
def _pil_font(px: int) -> Any:
    """A scalable font of ``px`` pixels: Pillow's bundled default (FreeType, Pillow >= 10.1), else DejaVu Sans,
    else Pillow's fixed bitmap font (the last resort: it does not scale)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, AttributeError, OSError, ImportError):
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", px)
    except OSError:
        return ImageFont.load_default()


def _draw_pillow(
    canvas: np.ndarray, det: Detections, texts: Sequence[str], colours: Sequence[Tuple[int, int, int]], st: Style
) -> np.ndarray:
    """Boxes as array slices; each label drawn into its own small Pillow image and copied in (no second
    image-sized buffer)."""
    from PIL import Image, ImageDraw

    hw = canvas.shape[:2]
    for i in reversed(range(len(det))):
        x1, y1, x2, y2 = _box_int(det.boxes[i], hw)
        t = st.line
        col = colours[i]
        canvas[y1 : y1 + t, x1 : x2 + 1] = col
        canvas[max(y2 - t + 1, 0) : y2 + 1, x1 : x2 + 1] = col
        canvas[y1 : y2 + 1, x1 : x1 + t] = col
        canvas[y1 : y2 + 1, max(x2 - t + 1, 0) : x2 + 1] = col
    font = _pil_font(st.text_px)
    for lab in reversed(_layout(det, texts, colours, st, hw, "pillow")):  # the most confident drawn last, on top
        x0, y0, x1, y1 = lab.rect
        x1, y1 = min(x1, hw[1]), min(y1, hw[0])
        patch = Image.new("RGB", (x1 - x0, y1 - y0), lab.background)
        ImageDraw.Draw(patch).text((st.pad, st.pad), lab.text, fill=lab.foreground, font=font)
        canvas[y0:y1, x0:x1] = np.asarray(patch)
    return canvas
