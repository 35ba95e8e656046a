"""The letterbox graph (export.letterbox_graph) run by ONNX Runtime against the host letterbox: the GPU
pre-processing of the TensorRT runtime (backends.tensorrt.gpu_pre) runs this graph on decoded images."""

from __future__ import annotations

import numpy as np
import pytest

from rcnn_deploy.export.letterbox_graph import LETTERBOX_INPUTS, letterbox_graph
from rcnn_deploy.runtime import preprocess
from rcnn_deploy.runtime.preprocess import letterbox, letterbox_taps

ort = pytest.importorskip("onnxruntime")

FILL = (123.675, 116.28, 103.53)


def _session(input_hw, dtype):
    model = letterbox_graph(input_hw, FILL, dtype)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, images, input_hw, buffer_hw=None):
    bh = buffer_hw[0] if buffer_hw else max(im.shape[0] for im in images)
    bw = buffer_hw[1] if buffer_hw else max(im.shape[1] for im in images)
    raw = np.zeros((len(images), bh, bw, 3), np.uint8)
    for i, im in enumerate(images):
        raw[i, : im.shape[0], : im.shape[1]] = im
    feed = letterbox_taps([im.shape[:2] for im in images], input_hw, (bh, bw))
    feed["raw"] = raw
    assert set(feed) == set(LETTERBOX_INPUTS)
    return sess.run(["images"], feed)[0]


def _reference(image, input_hw, dtype, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(preprocess, "opencv", lambda: None)  # the numpy resize: the graph's exact sampling
        return letterbox(image, input_hw, FILL, dtype=dtype, resize="torchvision")[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_batch_of_mixed_sizes_matches_the_host_letterbox(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    input_hw = (96, 128)
    sizes = [(60, 200), (96, 128), (130, 70), (17, 301), (50, 64)]  # down, same size, up, thin, up x2
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    # a smooth image too: rounding ties are rarer on noise than on gradients
    yy, xx = np.mgrid[0:75, 0:90]
    images.append(np.stack([yy * 3, xx * 2, (yy + xx)], axis=-1).clip(0, 255).astype(np.uint8))
    out = _run(_session(input_hw, dtype), images, input_hw, buffer_hw=(140, 310))
    assert out.shape == (len(images), 3, *input_hw) and out.dtype == np.dtype(dtype)
    for i, im in enumerate(images):
        ref = _reference(im, input_hw, dtype, monkeypatch)
        diff = np.abs(out[i].astype(np.float64) - ref.astype(np.float64))
        # the same float32 formula; a fused multiply-add may move a value across a .5 rounding boundary
        assert diff.max() <= 1.0, (i, diff.max())
        assert (diff == 0).mean() >= 0.999, (i, (diff == 0).mean())


def test_padding_is_the_fill(monkeypatch):
    input_hw = (64, 64)
    im = np.full((20, 64, 3), 7, np.uint8)
    out = _run(_session(input_hw, np.uint8), [im], input_hw)[0]
    assert (out[:, :20, :] == 7).all()
    np.testing.assert_array_equal(out[:, 20:, 0], np.rint(np.array(FILL))[:, None].repeat(44, 1).astype(np.uint8))


def test_taps_refuse_an_image_larger_than_the_buffer():
    with pytest.raises(ValueError, match="does not fit"):
        letterbox_taps([(100, 50)], (64, 64), (80, 80))


def test_tensorrt_rtx_builds_the_letterbox_graph(tmp_path):
    """The graph parses and builds in a TensorRT builder (TensorRT-RTX on the CPU), dynamic sizes included."""
    pytest.importorskip("tensorrt_rtx")
    from rcnn_deploy.backends.tensorrt.builder import BuildConfig, build_engine
    from rcnn_deploy.backends.tensorrt.gpu_pre import letterbox_profiles
    from rcnn_deploy.export.letterbox_graph import write_letterbox_graph

    onnx_path = write_letterbox_graph(tmp_path, (96, 128), FILL, np.uint8)
    cfg = BuildConfig(precision="fp32", profiles=letterbox_profiles((96, 128), batch=2, max_hw=(256, 256)))
    side = build_engine(onnx_path, tmp_path / "letterbox.engine", cfg)
    assert (tmp_path / "letterbox.engine").stat().st_size > 0
    assert [o["name"] for o in side["outputs"]] == ["images"]
