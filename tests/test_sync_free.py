"""The PyTorch GPU backend's pieces that run on the CPU: the sync-free forward (what a CUDA graph captures) and
the layer precision switch. The CUDA paths themselves run in benchmarks/e2e_torch_cuda.py on the GPU machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import letterbox, load_rgb, rgb_fill

    out = tmp_path_factory.mktemp("sync_free")
    generate_synthetic_coco(out, num_images=2, height=256, width=256, seed=3)
    net = build_model("torchvision-maskrcnn", str(CKPT))
    fill = rgb_fill(net.spec.pixel_mean, net.spec.channel_order)
    imgs = [letterbox(load_rgb(p), (256, 256), fill)[0] for p in sorted((out / "images").iterdir())]
    return net, torch.from_numpy(np.stack(imgs))


def _run(net, x, rounds="eager"):
    from rcnn_deploy.glue.sync_free import sync_free

    with torch.no_grad():
        if rounds == "eager":
            return net(x), None
        with sync_free(rounds) as state:
            return net(x), state.converged


@pytest.mark.full
def test_sync_free_forward_equals_the_eager_forward(shapes):
    net, x = shapes
    ref, _ = _run(net, x)
    assert int(ref["num_detections"].sum()) > 0
    out, converged = _run(net, x, rounds=24)
    assert converged is not None and bool(converged)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-5, msg=k)
    exact, flag = _run(net, x, rounds=None)  # the fallback: same formulations, iterated to convergence
    assert flag is None
    for k in ref:
        torch.testing.assert_close(exact[k], ref[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.full
def test_faster_rcnn_sync_free_forward_equals_the_eager_forward(shapes):
    """Faster R-CNN (the project's checkpoint without its mask head) through the same sync-free forward."""
    from rcnn_deploy.models.build import build_model

    _, x = shapes
    net = build_model("torchvision-fasterrcnn", str(CKPT))
    ref, _ = _run(net, x)
    assert int(ref["num_detections"].sum()) > 0 and "masks" not in ref
    out, converged = _run(net, x, rounds=24)
    assert bool(converged) and set(out) == set(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-5, msg=k)


@pytest.mark.full
def test_too_few_nms_rounds_are_flagged(shapes):
    """One round of the fixpoint is not greedy NMS on a real image: the flag must say so (the GPU model then
    re-runs the batch without the limit)."""
    net, x = shapes
    _, converged = _run(net, x, rounds=1)
    assert converged is not None and not bool(converged)


@pytest.mark.full
def test_sync_free_forward_has_no_data_dependent_host_calls(shapes, monkeypatch):
    """Inside sync_free the forward never calls nonzero or torchvision's NMS (both sync with the host on CUDA)."""
    import torchvision

    net, x = shapes

    def forbidden(*a, **k):
        raise AssertionError("host-synchronising op called in the sync-free forward")

    monkeypatch.setattr(torch, "nonzero", forbidden)
    monkeypatch.setattr(torchvision.ops, "batched_nms", forbidden)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    out, converged = _run(net, x, rounds=24)
    assert bool(converged) and out["boxes"].shape == (2, 100, 4)


@pytest.mark.full
def test_sync_free_forward_makes_no_tensors_from_host_data(shapes, monkeypatch):
    """Nor ``torch.tensor`` / ``as_tensor`` from Python data: on CUDA that is a host-to-device copy, which a CUDA
    graph capture refuses (run 20 found one in the stacked ROIAlign this way)."""
    net, x = shapes
    _run(net, x, rounds=24)  # first forward: what is made once and cached (anchors) is made here

    def forbidden(*a, **k):
        raise AssertionError("a tensor made from host data in the sync-free forward")

    monkeypatch.setattr(torch, "tensor", forbidden)
    monkeypatch.setattr(torch, "as_tensor", forbidden)
    out, converged = _run(net, x, rounds=24)
    assert bool(converged) and out["boxes"].shape == (2, 100, 4)


@pytest.mark.full
def test_bf16_layers_keep_float32_outputs_and_detections(shapes):
    """set_precision runs the layers in bfloat16 (CPU here; fp16/bf16 mAP is measured on the GPU) and the
    glue in float32: same output dtypes, and the confident detections survive."""
    from rcnn_deploy.evaluation.parity import compare_detections
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.detections import Detections

    net, x = shapes
    ref, _ = _run(net, x)
    low = build_model("torchvision-maskrcnn", str(CKPT)).set_precision(torch.bfloat16, channels_last=True)
    assert next(low.backbone.parameters()).dtype == torch.bfloat16 and low.pixel_mean.dtype == torch.float32
    out, _ = _run(low, x)
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in ref.items()}
    refs = [d.above(0.5) for d in Detections.from_padded({k: v.numpy() for k, v in ref.items()})]
    cands = [d.above(0.5) for d in Detections.from_padded({k: v.numpy() for k, v in out.items()})]
    rep = compare_detections(refs, cands, pasted_masks=False)
    assert rep.reference_detections > 0 and rep.recall >= 0.9 and rep.min_box_iou >= 0.8


def test_precision_needs_cuda_and_a_known_name():
    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.torch_cuda import CudaGraphModel
    from rcnn_deploy.errors import UserError

    with pytest.raises(UserError, match="needs a CUDA device"):
        Detector.load(str(CKPT), precision="fp16")
    with pytest.raises(UserError, match="unknown precision"):
        Detector.load(str(CKPT), precision="fp8")
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphModel(object(), device="cpu")


# ------------------------------------------------------------------------------ GPU decode + letterbox, on CPU
def _jpeg(path, hw, mode="RGB", exif_orientation=None):
    from PIL import Image

    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).convert(mode)
    kw = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    img.save(path, quality=90, **kw)
    return path


def test_probe_gpu_jpeg_takes_only_what_nvjpeg_decodes_like_the_host(tmp_path):
    from PIL import Image

    from rcnn_deploy.errors import UserError
    from rcnn_deploy.runtime.preprocess import probe_gpu_jpeg

    data, hw = probe_gpu_jpeg(_jpeg(tmp_path / "a.jpg", (40, 60)))
    assert hw == (40, 60) and data[:2] == b"\xff\xd8"
    assert probe_gpu_jpeg(_jpeg(tmp_path / "g.jpg", (40, 60), mode="L")) is None  # grey: the host converts
    assert probe_gpu_jpeg(_jpeg(tmp_path / "r.jpg", (40, 60), exif_orientation=6)) is None  # rotated
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert probe_gpu_jpeg(tmp_path / "p.png") is None
    with pytest.raises(UserError, match="above the limit"):
        probe_gpu_jpeg(tmp_path / "a.jpg", max_pixels=100)
    with pytest.raises(UserError, match="does not exist"):
        probe_gpu_jpeg(tmp_path / "missing.jpg")


def test_probe_gpu_jpeg_leaves_a_file_cut_short_to_the_host_decoder(tmp_path):
    """nvJPEG decodes a JPEG cut short without an error (run 36: GPU decode returned detections for a file cut in
    half, the host path reported it truncated). ``jpeg_complete`` finds the EOI after the first scan's header:
    every cut of a baseline, a progressive and a restart-marker JPEG, and of one whose APP1 segment holds an EOI
    of its own (an EXIF thumbnail's), is incomplete and goes to the host decoder, which names the problem; whole
    files, also with bytes appended after the EOI, stay on the GPU path."""
    import io

    from PIL import Image

    from rcnn_deploy.errors import UserError
    from rcnn_deploy.runtime.preprocess import jpeg_complete, load_rgb, probe_gpu_jpeg

    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    files = {}
    ways = {"baseline": {}, "progressive": {"progressive": True}, "restart": {"restart_marker_rows": 1}}
    for name, kw in ways.items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, **kw)
        files[name] = buf.getvalue()
    thumb = b"Exif\x00\x00" + b"\xff\xd8\xff\xdb\x00\x04\x01\x02\xff\xd9"  # a payload holding an EOI
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    files["app1_eoi"] = files["baseline"][:2] + app1 + files["baseline"][2:]
    for name, data in files.items():
        assert jpeg_complete(data), name
        assert jpeg_complete(data + b"appended\xff\xd8 by a camera"), name
        cuts = range(3, len(data) - 1, max(1, len(data) // 200))
        assert not any(jpeg_complete(data[:k]) for k in cuts), name
        assert not jpeg_complete(data[:-1]), name
        whole, half = tmp_path / f"{name}.jpg", tmp_path / f"{name}_half.jpg"
        whole.write_bytes(data)
        half.write_bytes(data[: len(data) // 2])
        assert probe_gpu_jpeg(whole) is not None, name
        assert probe_gpu_jpeg(half) is None, name
        with pytest.raises(UserError, match="truncated"):
            load_rgb(half)


def test_gpu_letterbox_matches_the_host_letterbox_and_isolates_bad_bytes(tmp_path):
    """GpuLetterbox runs on any torch device; on the CPU torchvision decodes with libjpeg like Pillow, and the
    resize reproduces the host's (OpenCV's fixed point where the host has OpenCV, since session 18; else the
    float resize, within a grey level)."""
    pytest.importorskip("torchvision")
    from rcnn_deploy.backends.torch_cuda import GpuLetterbox
    from rcnn_deploy.runtime.preprocess import letterbox, load_rgb, probe_gpu_jpeg

    fill = (124.0, 116.0, 104.0)
    gl = GpuLetterbox((96, 128), fill, "torchvision", "cpu", None)
    a = _jpeg(tmp_path / "a.jpg", (150, 110))
    _jpeg(tmp_path / "b.jpg", (60, 300))
    host_arr, _ = letterbox(load_rgb(tmp_path / "b.jpg"), (96, 128), fill, dtype=np.uint8)
    bad = np.frombuffer(probe_gpu_jpeg(a)[0][:200] + b"\x00" * 50, dtype=np.uint8)
    items = [np.frombuffer(probe_gpu_jpeg(a)[0], np.uint8), bad, host_arr]
    out, errors = gl(items, batch=4)
    assert out.shape == (4, 3, 96, 128) and str(out.dtype) == "torch.uint8"
    assert errors[0] is None and errors[2] is None and "cannot read image" in errors[1]
    ref, _ = letterbox(load_rgb(a), (96, 128), fill, dtype=np.uint8)
    diff = np.abs(out[0].numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1
    from rcnn_deploy.runtime.preprocess import opencv

    if opencv() is not None:  # the CPU's torchvision decodes as Pillow does here: the same letterbox, exactly
        from torchvision.io import decode_jpeg

        assert np.array_equal(decode_jpeg(torch.from_numpy(items[0].copy())).permute(1, 2, 0).numpy(), load_rgb(a))
        np.testing.assert_array_equal(out[0].numpy(), ref)
    assert np.array_equal(out[2].numpy(), host_arr)
    assert (out[1].numpy() == np.array([124, 116, 104], np.uint8).reshape(3, 1, 1)).all()  # failed slot: fill
    assert (out[3].numpy() == np.array([124, 116, 104], np.uint8).reshape(3, 1, 1)).all()  # padding slot


def test_gpu_letterbox_uploads_host_arrays_through_its_staging_batches_in_turn():
    """Host-letterboxed arrays go through GpuLetterbox's staging batches (pinned on CUDA), used in turn: over more
    calls than it has batches, with arrays that are not contiguous and at other slots than the first, every call's
    buffer holds that call's arrays and the fill elsewhere (a staging batch rewritten too early, or a slot copied
    from the wrong one, shows here)."""
    pytest.importorskip("torchvision")
    from rcnn_deploy.backends import torch_cuda
    from rcnn_deploy.backends.torch_cuda import GpuLetterbox

    fill = np.array([124, 116, 104], np.uint8).reshape(3, 1, 1)
    gl = GpuLetterbox((24, 32), (124.0, 116.0, 104.0), "torchvision", "cpu", None)
    rng = np.random.default_rng(5)
    for call in range(2 * torch_cuda._STAGING + 1):
        arrays = [np.ascontiguousarray(rng.integers(0, 255, (32, 24, 3), dtype=np.uint8)).transpose(2, 1, 0)
                  for _ in range(2)]  # fmt: skip
        assert not arrays[0].flags.c_contiguous
        items = [arrays[0], np.zeros(5, np.uint8), arrays[1]] if call % 2 else arrays
        out, errors = gl(items, batch=4)
        got = out.numpy()
        slots = [0, 2] if call % 2 else [0, 1]
        for a, i in zip(arrays, slots):
            np.testing.assert_array_equal(got[i], a)
        assert (got[3] == fill).all()
        if call % 2:
            assert errors[1] is not None and (got[1] == fill).all()  # 5 bytes: no JPEG; its slot keeps the fill
    assert len(gl._staging[4]) == torch_cuda._STAGING


def test_host_stages_send_jpeg_bytes_when_decoding_on_the_gpu(tmp_path):
    from rcnn_deploy import get_spec
    from rcnn_deploy.api import HostStages
    from rcnn_deploy.runtime.sources import Item

    stages = HostStages(get_spec("torchvision-maskrcnn"), (96, 128), (0, 0, 0), "|u1", None, False)
    stages.gpu_decode = True
    jpg = _jpeg(tmp_path / "a.jpg", (150, 110))
    p = stages.prepare(Item(0, str(jpg), path=jpg))
    assert p.error is None and p.array.ndim == 1 and (p.letterbox.orig_h, p.letterbox.orig_w) == (150, 110)
    grey = _jpeg(tmp_path / "g.jpg", (50, 50), mode="L")
    q = stages.prepare(Item(1, str(grey), path=grey))
    assert q.error is None and q.array.shape == (3, 96, 128)  # decoded on the host, uploaded letterboxed
    r = stages.prepare(Item(2, "missing", path=tmp_path / "missing.jpg"))
    assert r.error is not None and "does not exist" in r.error


def test_gpu_options_need_a_gpu_and_a_checkpoint(tmp_path):
    """--precision / --gpu-decode / --gpu-post without --device cuda, or on an export, are refused with what to
    do."""
    from typer.testing import CliRunner

    from rcnn_deploy.api import Detector
    from rcnn_deploy.cli import app
    from rcnn_deploy.errors import UserError

    (tmp_path / "img.png").write_bytes(b"")
    runner = CliRunner()
    for extra, said in (
        (["--precision", "fp16"], "--precision fp16 needs a GPU"),
        (["--gpu-decode"], "--gpu-decode needs a GPU"),
        (["--gpu-post"], "--gpu-post needs a GPU"),
    ):
        r = runner.invoke(app, ["infer", str(CKPT), str(tmp_path), "-o", str(tmp_path / "o"), *extra])
        assert r.exit_code == 2 and said in r.output and "--device cuda" in r.output, r.output
    (tmp_path / "a.json").write_text("{}")  # exists (the option's own check); the GPU options are checked first
    r = runner.invoke(app, ["eval", str(CKPT), "--annotations", str(tmp_path / "a.json"), "--gpu-post"])
    assert r.exit_code == 2 and "--gpu-post needs a GPU" in r.output, r.output
    r = runner.invoke(app, ["eval", str(CKPT), "--annotations", str(tmp_path / "a.json"), "--precision", "bf16"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["infer", str(CKPT), str(tmp_path), "-o", str(tmp_path / "o"), "--precision", "fp8"])
    assert r.exit_code == 2 and "fp8" in r.output
    export = tmp_path / "export"
    export.mkdir()
    (export / "contract.json").write_text("{}")
    with pytest.raises(UserError, match="precision is an option of the PyTorch backend"):
        Detector.load(export, device="cuda", precision="fp16")


def test_fp32_on_cuda_turns_tf32_off_and_other_precisions_leave_it():
    """--precision fp32 means IEEE fp32 (TF32 moved scores by up to 0.38 on the H200, session 13)."""
    import torch

    from rcnn_deploy.backends.torch_cuda import ieee_fp32, tf32_allowed

    conv = getattr(torch.backends.cudnn, "conv", None)
    new_api = conv is not None and hasattr(conv, "fp32_precision")
    saved = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) if new_api else None
    legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) if not new_api else None
    try:
        if new_api:
            conv.fp32_precision = "tf32"
        else:
            torch.backends.cudnn.allow_tf32 = True
        assert tf32_allowed()
        ieee_fp32("fp16")
        assert tf32_allowed()
        ieee_fp32("fp32")
        assert not tf32_allowed()
    finally:
        if saved:
            conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        if legacy:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy


@pytest.mark.parametrize("flavour", ["torchvision", "detectron2"])
def test_stacked_multilevel_roi_align_equals_pooling_per_level(flavour):
    """The sync-free forward's one-call ROIAlign (levels stacked as images, coarser ones edge-replicated) against
    torchvision's kernel on each box's own level, boxes touching every edge of the image included."""
    from rcnn_deploy.glue import roi_align as R

    if flavour == "torchvision":
        p = R.PoolerParams(7, 2, False, (4, 8, 16, 32), 2, 224.0, 4, 1e-6, False)
    else:  # Detectron2's ROIAlignV2: aligned, adaptive sampling
        p = R.PoolerParams(14, 0, True, (4, 8, 16, 32), 2, 224.0, 4, 2.2e-16, True)
    g = torch.Generator().manual_seed(0)
    size = 640  # the whole image's box is on the coarsest level (sqrt(area) >= 448)
    feats = [torch.randn(2, 8, size // s, size // s, generator=g) for s in p.strides]
    xy = torch.rand(2, 200, 2, generator=g) * size
    wh = torch.rand(2, 200, 2, generator=g) ** 2 * size
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], -1)
    boxes[0, :3] = torch.tensor([0.0, 0.0, size, size])
    boxes[1, :3] = torch.tensor([size - 500.0, size - 450.0, size, size])
    boxes[1, 3:6] = torch.tensor([0.0, size - 230.0, 240.0, size])
    levels = R.assign_levels(boxes, p)
    assert set(levels.flatten().tolist()) >= {0, 1, 2, 3}
    ref = R._roi_align_eager(feats, boxes, p)  # per level, only its own boxes (nonzero)
    torch.testing.assert_close(R._roi_align_stacked(feats, boxes, p), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(R._roi_align_eager(feats, boxes, p, static=True), ref, rtol=0, atol=0)


def test_gpu_letterbox_decoder_choice_and_the_nvimgcodec_path(tmp_path, monkeypatch):
    """``decoder="auto"`` takes nvImageCodec only on a GPU where it is installed; nvImageCodec on a CPU device or
    an unknown decoder is refused. The nvImageCodec path (here with a stand-in decoder that returns host HWC
    arrays, as nvImageCodec returns device HWC images) letterboxes like the torchvision path, sends what it
    refused to the host decoder, and keeps the decoded images alive until the next call."""
    pytest.importorskip("torchvision")
    from rcnn_deploy.backends import nvimgcodec
    from rcnn_deploy.backends.torch_cuda import GPU_DECODERS, GpuLetterbox
    from rcnn_deploy.runtime.preprocess import letterbox, load_rgb, probe_gpu_jpeg

    assert GPU_DECODERS == ("auto", "nvimgcodec", "torchvision")
    fill = (124.0, 116.0, 104.0)
    monkeypatch.setattr(nvimgcodec, "available", lambda: True)
    assert GpuLetterbox((96, 128), fill, "torchvision", "cpu", None).decoder == "torchvision"  # auto on a CPU
    with pytest.raises(ValueError, match="GPU memory"):
        GpuLetterbox((96, 128), fill, "torchvision", "cpu", None, decoder="nvimgcodec")
    with pytest.raises(ValueError, match="unknown GPU JPEG decoder"):
        GpuLetterbox((96, 128), fill, "torchvision", "cpu", None, decoder="pillow")

    class StandIn:  # nvImageCodec's NvImageCodec.decode contract: per item an HWC image or None (refused)
        def __init__(self):
            self.streams = []

        def decode(self, datas, stream):
            self.streams.append(stream)
            return [None if i == 1 else np.asarray(load_rgb(d.tobytes())) for i, d in enumerate(datas)]

    a = _jpeg(tmp_path / "a.jpg", (150, 110))
    b = _jpeg(tmp_path / "b.jpg", (60, 300))
    gl = GpuLetterbox((96, 128), fill, "torchvision", "cpu", None, decoder="torchvision")
    gl._nvimg = StandIn()
    items = [np.frombuffer(probe_gpu_jpeg(p)[0], np.uint8) for p in (a, b)]
    out, errors = gl(items, batch=3)
    assert errors == [None, None] and gl._nvimg.streams == [0]
    assert len(gl._keep) == 1  # the decoded image, alive until the next call
    host_a, _ = letterbox(load_rgb(a), (96, 128), fill, dtype=np.uint8)
    host_b, _ = letterbox(load_rgb(b), (96, 128), fill, dtype=np.uint8)
    # Pillow's pixels, GpuLetterbox's resize: OpenCV's exactly where the host uses it, else within a grey level
    assert np.abs(out[0].numpy().astype(int) - host_a.astype(int)).max() <= 1
    from rcnn_deploy.runtime.preprocess import opencv

    if opencv() is not None:
        np.testing.assert_array_equal(out[0].numpy(), host_a)
    assert np.array_equal(out[1].numpy(), host_b)  # refused: decoded and letterboxed on the host
    assert (out[2].numpy() == np.array([124, 116, 104], np.uint8).reshape(3, 1, 1)).all()  # padding slot


def test_gpu_letterbox_auto_falls_back_to_torchvision_when_nvimgcodec_cannot_start(monkeypatch):
    """An installed nvImageCodec that fails to start (no libnvjpeg, no driver) leaves "auto" on torchvision with a
    warning that says why; asked for by name, the error is raised."""
    pytest.importorskip("torchvision")
    import torch

    from rcnn_deploy.backends import nvimgcodec
    from rcnn_deploy.backends.torch_cuda import GpuLetterbox

    def broken(*args, **kwargs):
        raise RuntimeError("libnvjpeg.so.13: cannot open shared object file")

    monkeypatch.setattr(nvimgcodec, "available", lambda: True)
    monkeypatch.setattr(nvimgcodec, "NvImageCodec", broken)
    real = torch.device

    def as_cuda(d):  # only the device type matters before any tensor is made on it
        return real("cuda") if d == "cuda" else real(d)

    monkeypatch.setattr(torch, "device", as_cuda)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    with pytest.warns(RuntimeWarning, match="libnvjpeg.so.13"):
        gl = GpuLetterbox((96, 128), (0, 0, 0), "torchvision", "cuda", None)
    assert gl.decoder == "torchvision" and "libnvjpeg" in gl.decoder_note
    with pytest.raises(RuntimeError, match="libnvjpeg"):
        GpuLetterbox((96, 128), (0, 0, 0), "torchvision", "cuda", None, decoder="nvimgcodec")


@pytest.mark.parametrize("resize", ["torchvision", "detectron2"])
def test_gpu_letterbox_resize_is_the_hosts(monkeypatch, resize):
    """GpuLetterbox's resize of decoded pixels against the host letterbox of the same pixels: with OpenCV here,
    the "torchvision" resize is OpenCV's INTER_LINEAR bit for bit (int32 on the device); without it (the host then
    resizes with numpy in float) and for "detectron2" (Pillow's antialiased filter), within a grey level."""
    pytest.importorskip("torchvision")
    import torch

    from rcnn_deploy.backends.torch_cuda import GpuLetterbox
    from rcnn_deploy.runtime import preprocess

    rng = np.random.default_rng(5)
    fill = (124.0, 116.0, 104.0)
    gl = GpuLetterbox((96, 128), fill, resize, "cpu", None, decoder="torchvision")
    for h, w in ((60, 200), (130, 70), (17, 301), (96, 128), (1, 1), (108, 192)):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for cv in (True, False):
            with monkeypatch.context() as m:
                if not cv:
                    m.setattr(preprocess, "opencv", lambda: None)
                elif preprocess.opencv() is None:
                    continue
                dst = torch.zeros((3, 96, 128), dtype=torch.uint8)
                gl._letterbox_into(dst, torch.from_numpy(rgb).permute(2, 0, 1))
                want, lb = preprocess.letterbox(rgb, (96, 128), fill, dtype=np.uint8, resize=resize)
                rh, rw = lb.size_in((96, 128))
                got, want = dst.numpy()[:, :rh, :rw], want[:, :rh, :rw]
                if cv and resize == "torchvision":
                    np.testing.assert_array_equal(got, want, err_msg=str((h, w)))
                else:
                    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (h, w, cv)


LETTERBOX_KERNEL_SCRIPT = """
import numpy as np, torch
from rcnn_deploy.backends.torch_cuda import GpuLetterbox
from rcnn_deploy.runtime.preprocess import letterbox, opencv

assert opencv() is not None
rng = np.random.default_rng(0)
checked = 0
for (h, w), ihw in [((108, 192), (64, 64)), ((50, 37), (64, 80)), ((300, 123), (96, 96)), ((7, 260), (40, 130))]:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gl = GpuLetterbox(ihw, (124, 116, 104), "torchvision", "cpu", None, decoder="torchvision")
    assert gl.kernel
    ref, _ = letterbox(img, ihw, [124, 116, 104], dtype=np.uint8, resize="torchvision")
    hwc = torch.from_numpy(img).permute(2, 0, 1)  # nvImageCodec's layout: a view with strides (1, 3 w, 3)
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # torchvision's decode_jpeg
    for src in (hwc, chw):
        dst = torch.full((3, *ihw), 7, dtype=torch.uint8)  # the kernel writes the fill too
        gl._letterbox_into(dst, src)
        assert np.array_equal(dst.numpy(), ref), (h, w, ihw)
        checked += 1
print("letterbox kernel ok", checked)
"""


@pytest.mark.slow
def test_gpu_letterbox_kernel_is_the_hosts_opencv_resize():
    """The Triton letterbox kernel (GpuLetterbox's default on a GPU) in Triton's interpreter: OpenCV's INTER_LINEAR
    bit for bit and the fill around it, for both source layouts (nvImageCodec's HWC view, torchvision's CHW), down-
    and upscaling. A subprocess: ``triton.jit`` reads ``TRITON_INTERPRET`` at import."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    pytest.importorskip("torchvision")
    from rcnn_deploy.runtime.preprocess import opencv

    if opencv() is None:
        pytest.skip("the host letterbox resizes with OpenCV only where it is installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", LETTERBOX_KERNEL_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "letterbox kernel ok 8" in r.stdout
