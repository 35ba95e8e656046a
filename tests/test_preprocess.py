"""Letterboxing and batch loading: exact geometry, pad value, broken images skipped and reported."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rcnn_deploy import get_spec
from rcnn_deploy.runtime.preprocess import find_images, iter_batches, letterbox, rgb_fill


def test_letterbox_geometry_and_fill():
    img = np.full((100, 200, 3), 7, dtype=np.uint8)
    fill = rgb_fill(get_spec("detectron2-maskrcnn").pixel_mean, "BGR")
    assert fill == (123.675, 116.28, 103.53)  # stored BGR, returned RGB
    out, lb = letterbox(img, (320, 320), fill)
    assert out.shape == (3, 320, 320) and out.dtype == np.float32
    assert lb.scale == pytest.approx(1.6) and lb.resized_hw == (160, 320)
    assert np.all(out[:, :160, :] == 7.0)
    np.testing.assert_array_equal(out[:, 160:, 0], np.array(fill, dtype=np.float32)[:, None].repeat(160, 1))
    boxes = np.array([[32.0, 16.0, 320.0, 200.0]], dtype=np.float32)
    np.testing.assert_allclose(lb.boxes_to_original(boxes), [[20.0, 10.0, 200.0, 100.0]])  # clipped to 100


def test_batches_skip_broken_images(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), i * 50, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths = find_images(tmp_path)
    assert [p.name for p in paths] == ["broken.jpg", "im0.png", "im1.png", "im2.png"]
    got = list(iter_batches(paths, (64, 64), (0, 0, 0), batch=2))
    failed = [f for _, _, _, fs in got for f in fs]
    assert len(failed) == 1 and failed[0][0].name == "broken.jpg" and "cannot read image" in failed[0][1]
    assert sum(len(b) for b, _, _, _ in got) == 3
    with pytest.raises(FileNotFoundError, match="no images"):
        find_images(tmp_path / "nothing*.png")
