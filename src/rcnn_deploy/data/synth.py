"""Deterministic synthetic COCO-format instance-segmentation dataset ("shapes").

Each image has a textured background and a few textured shapes (circle, square, triangle, ...) drawn in
order, so later shapes occlude earlier ones. Colours and textures are drawn independently of the class, so a
detector has to learn shape, not colour. Annotations describe the *visible* part of every object: its own
mask (the very mask used to paint it) minus every later object.

Everything is a pure function of ``seed``: image ``i`` uses its own random stream derived from
``(seed, i)``, so it is byte-identical whatever ``num_images`` is.

Layout written by :func:`generate_synthetic_coco`::

    out_dir/images/000000.png ...
    out_dir/annotations.json     # file_name is relative to out_dir/images

Only numpy and Pillow are needed; pycocotools is imported lazily for RLE encoding.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from .._io import atomic_write, atomic_write_json

__all__ = [
    "GENERATOR_VERSION",
    "IMAGES_DIRNAME",
    "ANNOTATIONS_FILENAME",
    "SHAPE_CLASSES",
    "generate_synthetic_coco",
    "load_coco",
    "write_synthetic_images",
]

GENERATOR_VERSION = "1.0"
IMAGES_DIRNAME = "images"
ANNOTATIONS_FILENAME = "annotations.json"

#: Category names; category id of ``SHAPE_CLASSES[k]`` is ``k + 1``.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "ellipse", "star", "ring", "cross")

MIN_SIZE = 64  # smallest allowed image side
MAX_SIZE = 8192
MAX_OBJECTS = 64
MIN_VISIBLE_FRACTION = 0.4  # keep an object only if >= 40% of it is visible ...
MIN_VISIBLE_AREA = 30  # ... and at least this many pixels
MIN_OBJECT_SIZE = 12.0  # extent (side / diameter) of the smallest objects, in pixels
MAX_OBJECT_FRACTION = 0.45  # largest extent, as a fraction of the short image side
MIN_CONTRAST = 60.0  # minimum RGB distance between an object's mean fill and what lies under it
_PLACEMENT_TRIES = 30
_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
# Shapes with thin parts get a larger minimum extent so they stay recognisable.
_CLASS_MIN_SIZE = {"star": 18.0, "ring": 16.0, "cross": 16.0}

PathLike = Union[str, Path]
Polygon = List[Tuple[float, float]]


# --------------------------------------------------------------------------------------------- geometry


@dataclass
class _Shape:
    """A shape as filled polygons minus hole polygons, in image pixel coordinates."""

    kind: str
    center: Tuple[float, float]
    size: float
    fills: List[Polygon]
    holes: List[Polygon] = field(default_factory=list)


def _regular(n: int, radius: float, angle: float, rx: float = 1.0, ry: float = 1.0) -> np.ndarray:
    t = angle + 2.0 * np.pi * np.arange(n) / n
    return np.stack([rx * radius * np.cos(t), ry * radius * np.sin(t)], axis=1)


def _round_vertices(radius: float) -> int:
    return int(min(128, max(24, round(2.0 * radius))))


def _transform(pts: np.ndarray, angle: float, cx: float, cy: float) -> Polygon:
    c, s = math.cos(angle), math.sin(angle)
    x = pts[:, 0] * c - pts[:, 1] * s + cx
    y = pts[:, 0] * s + pts[:, 1] * c + cy
    return [(float(a), float(b)) for a, b in zip(x, y)]


def _shape_outline(kind: str, size: float, rng: np.random.Generator) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Unrotated, origin-centred (fills, holes) for a shape whose extent (side or diameter) is ``size``."""
    r = size / 2.0
    if kind == "circle":
        return [_regular(_round_vertices(r), r, 0.0)], []
    if kind == "square":
        return [_regular(4, size / math.sqrt(2.0), math.pi / 4)], []
    if kind == "triangle":
        return [_regular(3, size / math.sqrt(3.0), -math.pi / 2)], []
    if kind == "ellipse":
        aspect = float(rng.uniform(0.4, 0.7))
        return [_regular(_round_vertices(r), r, 0.0, 1.0, aspect)], []
    if kind == "star":
        inner = float(rng.uniform(0.38, 0.5))
        t = -math.pi / 2 + np.pi * np.arange(10) / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * inner)
        return [np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)], []
    if kind == "ring":
        hole = float(rng.uniform(0.45, 0.62))
        n = _round_vertices(r)
        return [_regular(n, r, 0.0)], [_regular(n, r * hole, 0.0)]
    if kind == "cross":
        a = r * float(rng.uniform(0.26, 0.36))  # half arm width
        pts = [(a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a),
               (-a, -a), (-a, -r)]  # fmt: skip
        return [np.asarray(pts, dtype=np.float64)], []
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_CLASSES}")


def _bounding_radius(fills: List[np.ndarray]) -> float:
    return float(max(np.sqrt((p**2).sum(axis=1)).max() for p in fills))


def _rasterize(shape: _Shape, height: int, width: int) -> np.ndarray:
    """The shape's full mask (bool HxW). The same mask is used to paint it, so pixels and labels agree."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in shape.fills:
        draw.polygon(poly, fill=1, outline=1)
    for poly in shape.holes:
        draw.polygon(poly, fill=0, outline=0)
    return np.asarray(canvas, dtype=np.uint8).astype(bool)


def _sample_shape(rng: np.random.Generator, height: int, width: int, size_scale: float = 1.0) -> _Shape:
    kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
    lo = math.log(MIN_OBJECT_SIZE)
    hi = math.log(max(MIN_OBJECT_SIZE + 1.0, MAX_OBJECT_FRACTION * min(height, width)))
    size = math.exp(float(rng.uniform(lo, hi))) * size_scale
    size = max(size, _CLASS_MIN_SIZE.get(kind, MIN_OBJECT_SIZE))
    fills, holes = _shape_outline(kind, size, rng)
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    br = _bounding_radius(fills)
    # keep the whole shape inside the image (1 px margin)
    cx = float(rng.uniform(br + 1.0, max(br + 1.0, width - 2.0 - br)))
    cy = float(rng.uniform(br + 1.0, max(br + 1.0, height - 2.0 - br)))
    return _Shape(
        kind=kind,
        center=(cx, cy),
        size=size,
        fills=[_transform(p, angle, cx, cy) for p in fills],
        holes=[_transform(p, angle, cx, cy) for p in holes],
    )


# --------------------------------------------------------------------------------------------- textures


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3)


def _directional(h: int, w: int, angle: float) -> np.ndarray:
    """Coordinate along direction ``angle`` (pixels) for an h x w grid."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx * np.float32(math.cos(angle)) + yy * np.float32(math.sin(angle))


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[..., None]
    return a.astype(np.float32) * (1.0 - t) + b.astype(np.float32) * t


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency colour noise (h x w x 3, 0..255) by bicubic upsampling of a small random grid."""
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    grid = rng.uniform(0.0, 255.0, size=(gh, gw, 3)).astype(np.uint8)
    up = Image.fromarray(grid, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _pattern(rng: np.random.Generator, h: int, w: int, kind: str, scale: float) -> np.ndarray:
    """A two-colour (or smooth) texture of h x w x 3 float32; ``scale`` sets the pattern period."""
    c1, c2 = _random_color(rng), _random_color(rng)
    angle = float(rng.uniform(0.0, math.pi))
    if kind == "solid":
        out = np.broadcast_to(c1.astype(np.float32), (h, w, 3)).copy()
    elif kind == "gradient":
        d = _directional(h, w, angle)
        d = (d - d.min()) / max(float(d.max() - d.min()), 1.0)
        out = _mix(c1, c2, d)
    elif kind == "stripes":
        period = float(rng.uniform(0.15, 0.5)) * scale + 3.0
        d = _directional(h, w, angle) + np.float32(rng.uniform(0.0, period))
        if rng.random() < 0.5:
            t = ((d // (period / 2.0)) % 2).astype(np.float32)
        else:
            t = (0.5 + 0.5 * np.sin(2.0 * np.pi * d / period)).astype(np.float32)
        out = _mix(c1, c2, t)
    elif kind == "checker":
        cell = float(rng.uniform(0.08, 0.3)) * scale + 2.0
        u = _directional(h, w, angle)
        v = _directional(h, w, angle + math.pi / 2)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        out = _mix(c1, c2, t)
    elif kind == "blotches":
        out = _mix(c1, c2, _smooth_noise(rng, h, w, int(rng.integers(3, 9)))[..., 0] / 255.0)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    sigma = float(rng.uniform(0.0, 18.0))
    if sigma > 0.5:
        out += rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return out


_BACKGROUND_KINDS = ("blotches", "gradient", "stripes", "noise", "checker")
_FILL_KINDS = ("solid", "stripes", "checker", "gradient")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = _BACKGROUND_KINDS[int(rng.integers(len(_BACKGROUND_KINDS)))]
    if kind == "noise":
        base = _smooth_noise(rng, h, w, int(rng.integers(4, 17)))
        flat = _random_color(rng).astype(np.float32)
        out = _mix(flat, base, np.full((h, w), float(rng.uniform(0.2, 0.8)), dtype=np.float32))
        out += rng.normal(0.0, float(rng.uniform(5.0, 30.0)), size=out.shape).astype(np.float32)
    else:
        out = _pattern(rng, h, w, kind, scale=float(min(h, w)) * float(rng.uniform(0.1, 0.5)))
        if rng.random() < 0.5:  # soften the contrast of background patterns a little
            out = _mix(out, np.full(3, out.mean(), np.float32), np.full((h, w), 0.4, np.float32))
    return out


def _fill_for(
    rng: np.random.Generator,
    canvas: np.ndarray,
    mask: np.ndarray,
    box: Tuple[int, int, int, int],
    size: float,
) -> np.ndarray:
    """A texture for the box region of ``mask`` that stands out from what currently lies under it."""
    y0, y1, x0, x1 = box
    m = mask[y0:y1, x0:x1]
    under = canvas[y0:y1, x0:x1][m].mean(axis=0)
    best, best_d = None, -1.0
    for _ in range(8):
        kind = _FILL_KINDS[int(rng.integers(len(_FILL_KINDS)))]
        tex = _pattern(rng, y1 - y0, x1 - x0, kind, scale=size)
        d = float(np.linalg.norm(tex[m].mean(axis=0) - under))
        if d > best_d:
            best, best_d = tex, d
        if d >= MIN_CONTRAST:
            break
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------- images


@dataclass
class _Instance:
    category_id: int
    full: np.ndarray  # full mask of the object as drawn
    visible: np.ndarray  # full minus every later object
    full_area: int


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # Independent stream per image, a pure function of (seed, index): as SeedSequence(seed).spawn()[i].
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


def _keeps_visible(inst: _Instance, occluder: np.ndarray) -> bool:
    remaining = int(np.count_nonzero(inst.visible & ~occluder))
    return remaining >= MIN_VISIBLE_AREA and remaining >= MIN_VISIBLE_FRACTION * inst.full_area


def _render_image(
    seed: int, index: int, height: int, width: int, min_objects: int, max_objects: int
) -> Tuple[np.ndarray, List[_Instance]]:
    """Image ``index`` of the dataset (uint8 HxWx3) and its instances, in drawing order."""
    rng = _image_rng(seed, index)
    canvas = _background(rng, height, width)
    n = int(rng.integers(min_objects, max_objects + 1))
    instances: List[_Instance] = []
    for _ in range(n):
        # Place the object so that every earlier object keeps enough of itself visible; shrink on retries.
        for attempt in range(_PLACEMENT_TRIES):
            shape = _sample_shape(rng, height, width, size_scale=1.0 - 0.5 * attempt / _PLACEMENT_TRIES)
            mask = _rasterize(shape, height, width)
            area = int(np.count_nonzero(mask))
            if area >= MIN_VISIBLE_AREA and all(_keeps_visible(i, mask) for i in instances):
                break
        else:
            continue  # no room left for another object
        for inst in instances:
            inst.visible &= ~mask
        ys, xs = np.nonzero(mask)
        box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        tex = _fill_for(rng, canvas, mask, box, shape.size)
        y0, y1, x0, x1 = box
        region = canvas[y0:y1, x0:x1]
        m = mask[y0:y1, x0:x1]
        region[m] = tex[m]
        instances.append(
            _Instance(
                category_id=SHAPE_CLASSES.index(shape.kind) + 1,
                full=mask,
                visible=mask.copy(),
                full_area=area,
            )
        )
    sensor = float(rng.uniform(0.0, 4.0))  # a little global sensor noise
    if sensor > 0.5:
        canvas += rng.normal(0.0, sensor, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    kept = [i for i in instances if _keeps_visible(i, np.zeros_like(i.visible))]
    return image, kept


# --------------------------------------------------------------------------------------------- COCO


def _mask_to_annotation(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_utils  # lazy: only needed when writing annotations

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "segmentation": {
            "size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
        },
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "iscrowd": 0,
    }


def _check_int(name: str, value: Any, minimum: int, hint: str, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}). {hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}. {hint}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}. {hint}")
    return int(value)


def generate_synthetic_coco(
    out_dir: PathLike,
    num_images: int,
    height: int = 320,
    width: int = 320,
    seed: int = 0,
    min_objects: int = 2,
    max_objects: int = 6,
    image_format: str = "png",
    progress: Optional[Callable[[int, int], None]] = None,
    workers: int = 1,
) -> Path:
    """Write ``num_images`` synthetic images and a COCO instances file to ``out_dir``.

    Returns the path of ``out_dir/annotations.json``. ``progress(done, total)`` is called after each image.
    Objects that cannot be placed without hiding earlier ones too much are skipped, so an image may hold
    fewer than ``min_objects`` annotations (rare). Every file is written atomically. ``workers > 1`` renders
    images in that many processes; the output is byte-identical to ``workers=1``.
    """
    num_images = _check_int("num_images", num_images, 1, "Ask for at least one image.")
    size_hint = f"Use an image size between {MIN_SIZE} and {MAX_SIZE} pixels (e.g. 320)."
    height = _check_int("height", height, MIN_SIZE, size_hint, MAX_SIZE)
    width = _check_int("width", width, MIN_SIZE, size_hint, MAX_SIZE)
    seed = _check_int("seed", seed, 0, "Use a non-negative integer seed, e.g. 0.")
    obj_hint = f"Use 0 <= min_objects <= max_objects <= {MAX_OBJECTS}, e.g. min_objects=2, max_objects=6."
    min_objects = _check_int("min_objects", min_objects, 0, obj_hint, MAX_OBJECTS)
    max_objects = _check_int("max_objects", max_objects, 1, obj_hint, MAX_OBJECTS)
    if min_objects > max_objects:
        raise ValueError(f"min_objects ({min_objects}) must be <= max_objects ({max_objects}). {obj_hint}")
    fmt_key = str(image_format).lower().lstrip(".")
    if fmt_key not in _IMAGE_FORMATS:
        raise ValueError(
            f"image_format must be one of {sorted(_IMAGE_FORMATS)}, got {image_format!r}. "
            "Use 'png' (lossless, the default) or 'jpg'."
        )
    pil_format = _IMAGE_FORMATS[fmt_key]
    ext = "png" if pil_format == "PNG" else "jpg"

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory; pass a directory path.")
    img_dir = out / IMAGES_DIRNAME
    img_dir.mkdir(parents=True, exist_ok=True)

    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    job = functools.partial(_write_image, img_dir, seed, height, width, min_objects, max_objects, pil_format, ext)
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 and num_images > 1 else None
    try:
        results = pool.imap(job, range(num_images), chunksize=8) if pool else map(job, range(num_images))
        for index, (file_name, anns) in enumerate(results):
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            if progress is not None:
                progress(index + 1, num_images)
    finally:
        if pool is not None:
            pool.terminate()

    coco = {
        "info": {
            "description": "rcnn_deploy synthetic shapes (instance segmentation)",
            "generator": "rcnn_deploy.data.synth",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "parameters": {
                "num_images": num_images,
                "height": height,
                "width": width,
                "min_objects": min_objects,
                "max_objects": max_objects,
                "image_format": ext,
                "min_visible_fraction": MIN_VISIBLE_FRACTION,
                "min_visible_area": MIN_VISIBLE_AREA,
            },
            "image_dir": IMAGES_DIRNAME,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES)],
    }
    return atomic_write_json(out / ANNOTATIONS_FILENAME, coco)


def _write_image(
    img_dir: Path,
    seed: int,
    height: int,
    width: int,
    min_objects: int,
    max_objects: int,
    pil_format: str,
    ext: str,
    index: int,
) -> Tuple[str, List[Dict[str, Any]]]:
    """Render and write image ``index``; return its file name and annotations (without ids)."""
    pixels, instances = _render_image(seed, index, height, width, min_objects, max_objects)
    file_name = f"{index:06d}.{ext}"
    _save_image(img_dir / file_name, pixels, pil_format)
    anns = []
    for inst in instances:
        ann: Dict[str, Any] = {"category_id": inst.category_id}
        ann.update(_mask_to_annotation(inst.visible))
        anns.append(ann)
    return file_name, anns


def write_synthetic_images(
    out_dir: PathLike, count: int, height: int, width: int, seed: int = 0, image_format: str = "jpg"
) -> List[Path]:
    """Only the images of :func:`generate_synthetic_coco` (the same pixels for the same arguments, no
    annotations, so no pycocotools): ``count`` files ``000000.jpg ...`` written atomically into ``out_dir``.
    For timing decode and resize on realistic pictures (``rcnn-deploy bench``, benchmarks)."""
    count = _check_int("count", count, 1, "Ask for at least one image.")
    size_hint = f"Use an image size between {MIN_SIZE} and {MAX_SIZE} pixels (e.g. 320)."
    height = _check_int("height", height, MIN_SIZE, size_hint, MAX_SIZE)
    width = _check_int("width", width, MIN_SIZE, size_hint, MAX_SIZE)
    fmt_key = str(image_format).lower().lstrip(".")
    if fmt_key not in _IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_IMAGE_FORMATS)}, got {image_format!r}.")
    pil_format = _IMAGE_FORMATS[fmt_key]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        pixels, _ = _render_image(seed, index, height, width, 2, 6)
        paths.append(_save_image(out / f"{index:06d}.{'png' if pil_format == 'PNG' else 'jpg'}", pixels, pil_format))
    return paths


def _save_image(path: Path, pixels: np.ndarray, pil_format: str) -> Path:
    pil = Image.fromarray(pixels, "RGB")
    if pil_format == "JPEG":
        return atomic_write(path, lambda p: pil.save(p, format="JPEG", quality=95))
    return atomic_write(path, lambda p: pil.save(p, format="PNG"))


def load_coco(path: PathLike) -> Dict[str, Any]:
    """Read a COCO instances json; raise a clear error if it is missing or malformed."""
    p = Path(path)
    if p.is_dir():
        if (p / ANNOTATIONS_FILENAME).is_file():
            p = p / ANNOTATIONS_FILENAME
        else:
            raise FileNotFoundError(
                f"{str(p)!r} is a directory without {ANNOTATIONS_FILENAME}; pass the COCO json file "
                "(generate one with `rcnn-deploy data synth -o DIR`)."
            )
    if not p.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {str(p)!r} does not exist; check the path "
            "(generate one with `rcnn-deploy data synth -o DIR`)."
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(p)!r} is not valid JSON ({exc}); regenerate or fix the file.") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{str(p)!r} must hold a JSON object (COCO dict), got {type(data).__name__}.")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(
            f"{str(p)!r} is not a COCO instances file: missing key(s) {missing}. "
            "A COCO file needs 'images', 'annotations' and 'categories'."
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"{str(p)!r}: '{key}' must be a list, got {type(data[key]).__name__}.")
    return data
