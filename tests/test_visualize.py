"""The annotated picture (rcnn_deploy.runtime.visualize) measured, not compared with a golden PNG: labels scale
with the image and sit on a filled background, instances get distinct colours, masks are tinted, overlapping
labels do not pile up, and everything stays uint8. Both drawing libraries: OpenCV and the Pillow fallback."""

from __future__ import annotations

import importlib.util
import json
import tracemalloc
from typing import Tuple

import numpy as np
import pytest

from rcnn_deploy import get_spec
from rcnn_deploy.runtime.detections import Detections
from rcnn_deploy.runtime.masks import PastedMasks
from rcnn_deploy.runtime.visualize import instance_colours, layout, place_labels, render

SPEC = get_spec("torchvision-maskrcnn")
GREY = 96
LIBS = [
    pytest.param(
        "opencv",
        marks=pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="opencv ([video] extra) absent"),
    ),
    "pillow",
]
# four overlapping detections around the centre and one apart, in fractions of (w, h, w, h)
REL = np.array(
    [[0.30, 0.30, 0.60, 0.70], [0.35, 0.32, 0.65, 0.72], [0.40, 0.28, 0.55, 0.60], [0.32, 0.31, 0.62, 0.69]]
    + [[0.05, 0.05, 0.25, 0.25]]
)


def _scene(h: int, w: int) -> Tuple[np.ndarray, Detections]:
    boxes = (REL * [w, h, w, h]).astype(np.float32)
    yy, xx = np.mgrid[0:28, 0:28]
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 11**2).astype(np.float32)
    masks = PastedMasks(np.repeat(disc[None], len(boxes), 0), boxes, (h, w), "torchvision", 0.5)
    scores = np.array([0.98, 0.9, 0.8, 0.7, 0.6], np.float32)
    det = Detections(boxes, scores, np.array([1, 3, 18, 1, 62], np.int32), masks)
    return np.full((h, w, 3), GREY, np.uint8), det


@pytest.mark.parametrize("lib", LIBS)
def test_labels_scale_with_the_image_and_have_a_background(lib: str) -> None:
    areas = {}
    for h, w in ((1080, 1920), (256, 256)):
        img, det = _scene(h, w)
        before = img.copy()
        out = render(img, det, SPEC.class_names, SPEC.label_ids, library=lib)
        assert out.dtype == np.uint8 and out.shape == (h, w, 3)
        assert np.array_equal(img, before), "the input image is not drawn on"
        labels = layout(det, SPEC.class_names, SPEC.label_ids, (h, w), library=lib)
        assert sorted(lab.index for lab in labels) == list(range(len(det)))
        for lab in labels:
            x0, y0, x1, y1 = lab.rect
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            patch = out[y0:y1, x0:x1].reshape(-1, 3)
            is_bg = (patch == lab.background).all(axis=1)
            is_text = np.abs(patch.astype(int) - lab.foreground).sum(axis=1) < 60
            assert is_bg.mean() > 0.4, f"{lab.text}: label background mostly its instance colour"
            assert is_text.sum() >= 10, f"{lab.text}: text pixels in the contrasting colour"
            assert lab.text.startswith(("person", "car", "dog", "chair"))
        areas[(h, w)] = np.mean([(r[2] - r[0]) * (r[3] - r[1]) for r in (lab.rect for lab in labels)])
        # overlapping detections: the labels do not cover each other (there is room in both sizes)
        rects = [lab.rect for lab in labels]
        for i, a in enumerate(rects):
            for b in rects[i + 1 :]:
                assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # a label's area grows with the image: 1080p labels are several times the 256 px ones
    assert areas[(1080, 1920)] > 3 * areas[(256, 256)], areas


@pytest.mark.parametrize("lib", LIBS)
def test_instances_have_distinct_colours_and_tinted_masks(lib: str) -> None:
    h, w = 256, 256
    img, det = _scene(h, w)
    out = render(img, det, SPEC.class_names, SPEC.label_ids, library=lib)
    colours = instance_colours(len(det))
    assert len(set(colours)) == len(det)
    assert len(set(instance_colours(40))) == 40
    labels = {lab.index: lab for lab in layout(det, SPEC.class_names, SPEC.label_ids, (h, w), library=lib)}
    label_area = np.zeros((h, w), bool)
    for lab in labels.values():
        label_area[lab.rect[1] : lab.rect[3], lab.rect[0] : lab.rect[2]] = True
    for i, col in enumerate(colours):
        # the box outline is drawn in the instance's own colour (its left edge, away from the labels)
        x1, y1, x2, y2 = (int(round(float(v))) for v in det.boxes[i])
        edge = out[y1:y2, x1][~label_area[y1:y2, x1]]
        assert (np.abs(edge.astype(int) - col).sum(axis=1) <= 30).mean() > 0.5, (i, col)
    # mask pixels are tinted: inside the lone mask (instance 4), the pixels moved from grey to its colour
    dense = det.pasted.dense(4)
    inner = dense & ~label_area
    inner[: int(det.boxes[4, 1]) + 4] = False  # away from the outline
    tinted = out[inner].astype(int)
    col = np.array(colours[4])
    assert inner.sum() > 100
    assert (np.abs(tinted - GREY).sum(axis=1) > 30).all(), "mask pixels differ from the background"
    dist_before = np.abs(GREY - col).sum()
    assert (np.abs(tinted - col).sum(axis=1) < 0.7 * dist_before).all(), "and moved toward the instance colour"
    # outside every box and label, nothing is drawn
    covered = label_area.copy()
    for b in det.boxes:
        x1, y1, x2, y2 = (int(round(float(v))) for v in b)
        covered[max(y1 - 3, 0) : y2 + 4, max(x1 - 3, 0) : x2 + 4] = True
    assert (out[~covered] == GREY).all()


@pytest.mark.parametrize("lib", LIBS)
def test_render_makes_no_float_copy_of_the_image(lib: str) -> None:
    img, det = _scene(1080, 1920)
    render(img, det, SPEC.class_names, SPEC.label_ids, library=lib)  # warm up (imports, font cache)
    tracemalloc.start()
    try:
        out = render(img, det, SPEC.class_names, SPEC.label_ids, library=lib)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8
    # the output is one image-sized uint8 array; a float32 copy alone would be 4x the image
    assert peak < 2.5 * img.nbytes, peak / img.nbytes


def test_dense_bool_masks_are_drawn_too() -> None:
    img, det = _scene(128, 160)
    dense = Detections(det.boxes, det.scores, det.classes, np.asarray(det.pasted))
    a = render(img, det, SPEC.class_names, SPEC.label_ids, library="pillow")
    b = render(img, dense, SPEC.class_names, SPEC.label_ids, library="pillow")
    assert np.array_equal(a, b)


def test_labels_that_cannot_all_fit_stay_inside_the_image() -> None:
    boxes = np.tile(np.array([[2, 2, 30, 30]], np.float32), (12, 1))  # twelve identical boxes in a 64 px image
    rects = place_labels(boxes, [(40, 14)] * 12, (64, 64))
    assert len(rects) == 12
    assert all(min(r[0], r[1]) >= 0 and max(r[2], r[3]) <= 64 for r in rects)
    assert len({r[1] for r in rects}) >= 4, "labels are spread over the free rows before any overlap"


def test_unknown_library_is_refused() -> None:
    img, det = _scene(64, 64)
    with pytest.raises(ValueError, match="library must be one of"):
        render(img, det, SPEC.class_names, SPEC.label_ids, library="matplotlib")


def test_infer_writers_draw_only_detections_above_the_draw_threshold(tmp_path, monkeypatch) -> None:
    """``infer --draw-threshold`` (default 0.5): the PNG shows the confident detections, the TSV and the COCO results
    keep every one. Both writers: the local runner's (InferWriter) and the Ray runner's (ImageOutputs)."""
    import rcnn_deploy.runtime.sinks as sinks
    import rcnn_deploy.runtime.writers as writers
    from rcnn_deploy.runtime.sources import Item
    from rcnn_deploy.runtime.stream import StreamResult
    from rcnn_deploy.runtime.visualize import DRAW_THRESHOLD

    img, det = _scene(64, 96)
    det.scores = np.array([0.98, 0.9, 0.5, 0.45, 0.05], np.float32)
    drawn = []
    for module in (sinks, writers):
        monkeypatch.setattr(module, "draw", lambda image, d, *a, **k: drawn.append(d.scores.tolist()))
    assert DRAW_THRESHOLD == 0.5
    for threshold, want in ((None, [0.98, 0.9, 0.5]), (0.9, [0.98, 0.9]), (0.0, det.scores.tolist())):
        kw = {} if threshold is None else {"draw_threshold": threshold}
        drawn.clear()
        out = sinks.ImageOutputs(tmp_path / "ray", SPEC, **kw)
        entries = out.write(1, tmp_path / "a.png", img, det)
        w = writers.InferWriter(tmp_path / "local", SPEC, backend="test", **kw)
        extra = w.per_image(StreamResult(Item(0, "a.png", tmp_path / "a.png"), detections=det, image=img))
        w.jsonl.close()
        assert drawn == [pytest.approx(want)] * 2
        assert len(entries) == len(json.loads(extra["coco_json"])) == extra["detections"] == len(det)  # all five
        for tsv in (tmp_path / "ray" / "a.tsv", tmp_path / "local" / "a.tsv"):
            assert len(tsv.read_text().splitlines()) == 1 + len(det)


def test_picture_suffix_keeps_a_jpeg_source_jpeg() -> None:
    """``infer --vis-format auto``: JPEG pictures for JPEG images and video frames, PNG for the rest (lossless
    sources and in-memory arrays); ``png`` / ``jpg`` force one; anything else is refused."""
    from rcnn_deploy.runtime.visualize import picture_suffix

    assert picture_suffix("x/photo.JPG") == picture_suffix("a.jpeg") == ".jpg"
    assert picture_suffix("a.png") == picture_suffix("a.webp") == picture_suffix(None) == ".png"
    assert picture_suffix("clip.mp4", frame=True) == ".jpg"
    assert picture_suffix("a.jpg", "png") == ".png" and picture_suffix("a.png", "jpg") == ".jpg"
    with pytest.raises(ValueError, match="picture format must be one of auto, png, jpg"):
        picture_suffix("a.jpg", "webp")


def test_draw_writes_the_format_its_suffix_names(tmp_path) -> None:
    from PIL import Image

    from rcnn_deploy.runtime.visualize import draw

    img, det = _scene(120, 160)
    for name, fmt in (("a.jpg", "JPEG"), ("b.JPEG", "JPEG"), ("c.png", "PNG")):
        draw(img.copy(), det, SPEC.class_names, SPEC.label_ids, tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt and im.size == (160, 120) and im.mode == "RGB"
    # the same picture either way: JPEG at quality 95 without chroma subsampling stays close to the PNG
    jpg = np.asarray(Image.open(tmp_path / "a.jpg"), dtype=np.int16)
    png = np.asarray(Image.open(tmp_path / "c.png"), dtype=np.int16)
    assert np.abs(jpg - png).mean() < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.JPEG", "c.png"]  # no temporary files left


@pytest.mark.parametrize("vis_format", ["auto", "png", "jpg"])
def test_infer_writers_name_pictures_by_vis_format(tmp_path, vis_format) -> None:
    """Both writers (the local runner's InferWriter and the Ray runner's ImageOutputs) write a JPEG image's picture
    as STEM.jpg by default, a PNG image's as STEM.png, and follow --vis-format when it is given."""
    from rcnn_deploy.runtime.sinks import ImageOutputs
    from rcnn_deploy.runtime.sources import Item
    from rcnn_deploy.runtime.stream import StreamResult
    from rcnn_deploy.runtime.writers import InferWriter

    img, det = _scene(64, 96)
    det.scores = np.full(len(det), 0.9, np.float32)
    want = {"auto": {"a": ".jpg", "b": ".png"}, "png": {"a": ".png", "b": ".png"}, "jpg": {"a": ".jpg", "b": ".jpg"}}
    ray_out = ImageOutputs(tmp_path / "ray", SPEC, vis_format=vis_format)
    w = InferWriter(tmp_path / "local", SPEC, backend="test", vis_format=vis_format)
    for i, name in enumerate(("a.jpg", "b.png")):
        ray_out.write(i + 1, tmp_path / name, img, det)
        w.per_image(StreamResult(Item(i, name, tmp_path / name), detections=det, image=img))
    w.jsonl.close()
    for folder in ("ray", "local"):
        pictures = sorted(p.name for p in (tmp_path / folder).iterdir() if p.suffix in (".jpg", ".png"))
        assert pictures == sorted(f"{stem}{suffix}" for stem, suffix in want[vis_format].items()), folder


def test_infer_writers_refuse_an_unknown_picture_format(tmp_path) -> None:
    from rcnn_deploy.runtime.sinks import ImageOutputs
    from rcnn_deploy.runtime.writers import InferWriter

    for make in (lambda: ImageOutputs(tmp_path / "r", SPEC, vis_format="gif"),
                 lambda: InferWriter(tmp_path / "l", SPEC, backend="test", vis_format="gif")):  # fmt: skip
        with pytest.raises(ValueError, match="picture format"):
            make()
    assert not (tmp_path / "l").exists()  # refused before the output folder was made


def test_a_picture_too_wide_for_jpeg_is_a_user_error(tmp_path) -> None:
    """libjpeg writes at most 65500 pixels a side (Pillow raises OSError part-way): ``--vis-format jpg`` on a wider
    image fails that image with what to do, and leaves no file."""
    from rcnn_deploy.errors import UserError
    from rcnn_deploy.runtime.visualize import JPEG_MAX_SIDE, draw

    img = np.zeros((4, JPEG_MAX_SIDE + 1, 3), np.uint8)
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    with pytest.raises(UserError, match="at most 65500 pixels a side.*--vis-format png"):
        draw(img, none, SPEC.class_names, SPEC.label_ids, tmp_path / "wide.jpg")
    assert not list(tmp_path.iterdir())
    draw(img, none, SPEC.class_names, SPEC.label_ids, tmp_path / "wide.png")  # PNG has no such limit
    assert [p.name for p in tmp_path.iterdir()] == ["wide.png"]
