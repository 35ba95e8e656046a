"""Tests for the synthetic COCO generator (``rcnn_deploy.data.synth``) and ``rcnn-deploy data synth``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from rcnn_deploy.data import synth
from rcnn_deploy.data.synth import SHAPE_CLASSES, generate_synthetic_coco, load_coco

mask_utils = pytest.importorskip("pycocotools.mask")

# pycocotools' decode triggers a numpy-2 DeprecationWarning that is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _files(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _masks_by_image(coco: dict) -> Dict[int, List[np.ndarray]]:
    out: Dict[int, List[np.ndarray]] = defaultdict(list)
    for ann in coco["annotations"]:
        out[ann["image_id"]].append(mask_utils.decode(ann["segmentation"]).astype(bool))
    return out


def _has_hole(mask: np.ndarray) -> bool:
    """True if some background pixel cannot be reached from the image border (4-connectivity)."""
    free = ~mask
    reach = np.zeros_like(free)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = reach.copy()
        grown[1:, :] |= reach[:-1, :]
        grown[:-1, :] |= reach[1:, :]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= free
        if np.array_equal(grown, reach):
            return bool((free & ~reach).any())
        reach = grown


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-image, 160x160 dataset shared by the read-only checks."""
    return generate_synthetic_coco(tmp_path_factory.mktemp("synth20"), 20, height=160, width=160, seed=7)


def test_layout_and_coco_structure(dataset: Path) -> None:
    coco = load_coco(dataset)
    assert dataset.name == "annotations.json"
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPE_CLASSES) + 1))
    assert all(c["supercategory"] == "shape" for c in coco["categories"])
    assert 5 <= len(SHAPE_CLASSES) <= 8 and "ring" in SHAPE_CLASSES
    assert len(coco["images"]) == 20
    for i, img in enumerate(coco["images"]):
        assert img["file_name"] == f"{i:06d}.png"
        assert (img["height"], img["width"]) == (160, 160)
        path = dataset.parent / "images" / img["file_name"]
        from PIL import Image

        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (160, 160)
    ids = [a["id"] for a in coco["annotations"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 20
    image_ids = {img["id"] for img in coco["images"]}
    cat_ids = {c["id"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        assert ann["image_id"] in image_ids and ann["category_id"] in cat_ids
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
    info = coco["info"]
    assert info["seed"] == 7 and info["version"] == synth.GENERATOR_VERSION
    assert info["parameters"]["num_images"] == 20 and info["parameters"]["height"] == 160
    # several classes actually occur
    assert len({a["category_id"] for a in coco["annotations"]}) >= 5


def test_pycocotools_loads(dataset: Path) -> None:
    from pycocotools.coco import COCO

    api = COCO(str(dataset))
    assert len(api.getImgIds()) == 20
    assert len(api.getAnnIds()) == len(load_coco(dataset)["annotations"])
    ann = api.loadAnns(api.getAnnIds(imgIds=[1]))[0]
    assert api.annToMask(ann).sum() == ann["area"]


def test_rle_area_and_bbox(dataset: Path) -> None:
    coco = load_coco(dataset)
    for ann in coco["annotations"]:
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert m.shape == (160, 160)
        assert int(m.sum()) == ann["area"] >= synth.MIN_VISIBLE_AREA
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        assert ann["bbox"] == [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        assert float(mask_utils.area(ann["segmentation"])) == ann["area"]


def test_visible_masks_do_not_overlap(dataset: Path) -> None:
    for masks in _masks_by_image(load_coco(dataset)).values():
        total = np.zeros_like(masks[0], dtype=np.int32)
        for m in masks:
            total += m
        assert total.max() <= 1


def test_small_objects_exist(dataset: Path) -> None:
    areas = [a["area"] for a in load_coco(dataset)["annotations"]]
    assert any(a < 32 * 32 for a in areas)
    assert any(a >= 32 * 32 for a in areas)


def test_ring_has_hole(dataset: Path) -> None:
    ring_id = SHAPE_CLASSES.index("ring") + 1
    coco = load_coco(dataset)
    rings = [a for a in coco["annotations"] if a["category_id"] == ring_id]
    assert rings, "expected at least one ring in 20 images"
    assert any(_has_hole(mask_utils.decode(a["segmentation"]).astype(bool)) for a in rings)
    # the rasteriser itself: the centre of a ring is empty and enclosed
    rng = np.random.default_rng(0)
    for size in (16.0, 40.0, 70.0):
        fills, holes = synth._shape_outline("ring", size, rng)
        shape = synth._Shape(
            kind="ring",
            center=(64.0, 64.0),
            size=size,
            fills=[synth._transform(p, 0.3, 64.0, 64.0) for p in fills],
            holes=[synth._transform(p, 0.3, 64.0, 64.0) for p in holes],
        )
        mask = synth._rasterize(shape, 128, 128)
        assert not mask[64, 64] and mask.any() and _has_hole(mask)
    # other shapes have no hole
    for kind in SHAPE_CLASSES:
        if kind == "ring":
            continue
        fills, _ = synth._shape_outline(kind, 40.0, rng)
        shape = synth._Shape(kind, (64.0, 64.0), 40.0, [synth._transform(p, 0.5, 64.0, 64.0) for p in fills])
        mask = synth._rasterize(shape, 128, 128)
        assert mask[64, 64] and not _has_hole(mask), kind


def test_deterministic_byte_identical(tmp_path: Path) -> None:
    kw = dict(height=128, width=160, min_objects=1, max_objects=5)
    a = generate_synthetic_coco(tmp_path / "a", 4, seed=3, **kw)
    b = generate_synthetic_coco(tmp_path / "b", 4, seed=3, **kw)
    c = generate_synthetic_coco(tmp_path / "c", 4, seed=4, **kw)
    fa, fb, fc = _files(a.parent), _files(b.parent), _files(c.parent)
    assert fa == fb
    assert set(fa) == set(fc)
    assert all(fa[k] != fc[k] for k in fa if k.startswith("images"))
    assert fa["annotations.json"] != fc["annotations.json"]
    # no leftover temporary files from the atomic writes
    assert not any(k.endswith(".tmp") for k in fa)


def test_image_independent_of_num_images(tmp_path: Path) -> None:
    a = generate_synthetic_coco(tmp_path / "a", 3, height=128, width=128, seed=11)
    b = generate_synthetic_coco(tmp_path / "b", 5, height=128, width=128, seed=11)
    fa, fb = _files(a.parent), _files(b.parent)
    for i in range(3):
        assert fa[f"images/{i:06d}.png"] == fb[f"images/{i:06d}.png"]

    def anns(path: Path, n: int) -> list:
        coco = json.loads(path.read_text())
        return [{k: v for k, v in ann.items() if k != "id"} for ann in coco["annotations"] if ann["image_id"] <= n]

    assert anns(a, 3) == anns(b, 3)


def test_jpeg_format(tmp_path: Path) -> None:
    p = generate_synthetic_coco(tmp_path, 2, height=96, width=96, image_format="jpg")
    coco = load_coco(p)
    assert [i["file_name"] for i in coco["images"]] == ["000000.jpg", "000001.jpg"]
    assert (tmp_path / "images" / "000001.jpg").read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_images": 0}, "num_images must be >= 1"),
        ({"height": 32}, "height must be >= 64"),
        ({"width": 10}, "width must be >= 64"),
        ({"min_objects": 5, "max_objects": 2}, r"min_objects \(5\) must be <= max_objects \(2\)"),
        ({"max_objects": 0}, "max_objects must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"height": 100.5}, "height must be an integer"),
        ({"image_format": "gif"}, "image_format must be one of"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"num_images": 1, "height": 96, "width": 96}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_synthetic_coco(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_out_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_synthetic_coco(f, 1, height=96, width=96)


def test_load_coco_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['annotations', 'categories'\]"):
        load_coco(partial)
    listy = tmp_path / "list.json"
    listy.write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        load_coco(listy)


def test_cli_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    out = tmp_path / "cli"
    args = ["data", "synth", "-o", str(out), "--num-images", "2", "--height", "128", "--width", "128"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "annotations.json").is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    coco = load_coco(out / "annotations.json")
    assert len(coco["images"]) == 2
    assert "2 images" in result.output and "instances" in result.output


def test_cli_synth_bad_argument(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    result = CliRunner().invoke(app, ["data", "synth", "-o", str(tmp_path / "x"), "--height", "10"])
    assert result.exit_code != 0
    assert "height must be >= 64" in result.output
