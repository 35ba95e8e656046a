"""The letterbox graph (export.letterbox_graph) run by ONNX Runtime against the host letterbox: the GPU
pre-processing of the TensorRT runtime (backends.tensorrt.gpu_pre) runs this graph on decoded images. The
"opencv" graph (the default since session 18) gives the host's OpenCV letterbox bit for bit; the "float" one
(older exports) PyTorch's float sampling, as the host's numpy resize."""

from __future__ import annotations

import numpy as np
import pytest

from rcnn_deploy.export.letterbox_graph import LETTERBOX_INPUTS, letterbox_graph
from rcnn_deploy.runtime import preprocess
from rcnn_deploy.runtime.preprocess import letterbox, letterbox_taps

ort = pytest.importorskip("onnxruntime")

FILL = (123.675, 116.28, 103.53)
RESAMPLERS = ("opencv", "float")


def _session(input_hw, dtype, resampler):
    model = letterbox_graph(input_hw, FILL, dtype, resampler)
    assert {p.key: p.value for p in model.metadata_props}["rcnn_deploy.letterbox_resampler"] == resampler
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, images, input_hw, resampler, buffer_hw=None):
    bh = buffer_hw[0] if buffer_hw else max(im.shape[0] for im in images)
    bw = buffer_hw[1] if buffer_hw else max(im.shape[1] for im in images)
    raw = np.zeros((len(images), bh, bw, 3), np.uint8)
    for i, im in enumerate(images):
        raw[i, : im.shape[0], : im.shape[1]] = im
    feed = letterbox_taps([im.shape[:2] for im in images], input_hw, (bh, bw), resampler)
    feed["raw"] = raw
    assert set(feed) == set(LETTERBOX_INPUTS)
    return sess.run(["images"], feed)[0]


def _reference(image, input_hw, dtype, resampler, monkeypatch):
    with monkeypatch.context() as m:
        if resampler == "float":
            m.setattr(preprocess, "opencv", lambda: None)  # the numpy resize: the float graph's exact sampling
        elif preprocess.opencv() is None:
            pytest.skip("the opencv graph reproduces OpenCV's resize: needs OpenCV here")
        return letterbox(image, input_hw, FILL, dtype=dtype, resize="torchvision")[0]


def _images():
    rng = np.random.default_rng(0)
    sizes = [(60, 200), (96, 128), (130, 70), (17, 301), (50, 64), (1, 1), (2, 300)]  # down, same, up, thin, tiny
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    # a smooth image too: rounding ties are rarer on noise than on gradients
    yy, xx = np.mgrid[0:75, 0:90]
    images.append(np.stack([yy * 3, xx * 2, (yy + xx)], axis=-1).clip(0, 255).astype(np.uint8))
    return images


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_batch_of_mixed_sizes_matches_the_host_letterbox(dtype, resampler, monkeypatch):
    input_hw = (96, 128)
    images = _images()
    out = _run(_session(input_hw, dtype, resampler), images, input_hw, resampler, buffer_hw=(140, 310))
    assert out.shape == (len(images), 3, *input_hw) and out.dtype == np.dtype(dtype)
    for i, im in enumerate(images):
        ref = _reference(im, input_hw, dtype, resampler, monkeypatch)
        if resampler == "opencv":  # integer arithmetic, exact in float32: the host's pixels
            np.testing.assert_array_equal(out[i], ref, err_msg=f"image {i}")
            continue
        diff = np.abs(out[i].astype(np.float64) - ref.astype(np.float64))
        # the same float32 formula; a fused multiply-add may move a value across a .5 rounding boundary
        assert diff.max() <= 1.0, (i, diff.max())
        assert (diff == 0).mean() >= 0.999, (i, (diff == 0).mean())


def test_opencv_graph_at_the_benchmark_size(monkeypatch):
    """1920x1080 to 1344x1344 (the end-to-end benchmark's case) and a 4K frame, batched: OpenCV's pixels."""
    rng = np.random.default_rng(1)
    input_hw = (1344, 1344)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((1080, 1920, 3), (2160, 3840, 3))]
    out = _run(_session(input_hw, np.uint8, "opencv"), images, input_hw, "opencv")
    for i, im in enumerate(images):
        np.testing.assert_array_equal(out[i], _reference(im, input_hw, np.uint8, "opencv", monkeypatch))


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_padding_is_the_fill(resampler):
    input_hw = (64, 64)
    im = np.full((20, 64, 3), 7, np.uint8)
    out = _run(_session(input_hw, np.uint8, resampler), [im], input_hw, resampler)[0]
    assert (out[:, :20, :] == 7).all()
    np.testing.assert_array_equal(out[:, 20:, 0], np.rint(np.array(FILL))[:, None].repeat(44, 1).astype(np.uint8))


def test_taps_refuse_an_image_larger_than_the_buffer_and_an_unknown_resampler():
    with pytest.raises(ValueError, match="does not fit"):
        letterbox_taps([(100, 50)], (64, 64), (80, 80))
    with pytest.raises(ValueError, match="unknown letterbox resampler"):
        letterbox_taps([(10, 10)], (64, 64), (80, 80), "pillow")
    with pytest.raises(ValueError, match="unknown letterbox resampler"):
        letterbox_graph((64, 64), FILL, np.uint8, "pillow")


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_tensorrt_rtx_builds_the_letterbox_graph(tmp_path, resampler):
    """The graph parses and builds in a TensorRT builder (TensorRT-RTX on the CPU), dynamic sizes included."""
    pytest.importorskip("tensorrt_rtx")
    from rcnn_deploy.backends.tensorrt.builder import BuildConfig, build_engine
    from rcnn_deploy.backends.tensorrt.gpu_pre import letterbox_profiles
    from rcnn_deploy.export.letterbox_graph import write_letterbox_graph

    onnx_path = write_letterbox_graph(tmp_path, (96, 128), FILL, np.uint8, resampler)
    cfg = BuildConfig(precision="fp32", profiles=letterbox_profiles((96, 128), batch=2, max_hw=(256, 256)))
    side = build_engine(onnx_path, tmp_path / "letterbox.engine", cfg)
    assert (tmp_path / "letterbox.engine").stat().st_size > 0
    assert [o["name"] for o in side["outputs"]] == ["images"]
