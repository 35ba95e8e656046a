"""Image loading, letterboxing and batch loading: exact geometry, pad value, EXIF orientation, every Pillow mode,
the pixel limit, reduced-size JPEG decoding, bytes input, thin images, list files, clear errors."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from rcnn_deploy import get_spec
from rcnn_deploy.errors import UserError
from rcnn_deploy.runtime.preprocess import (
    DEFAULT_MAX_PIXELS,
    Letterbox,
    find_images,
    iter_batches,
    letterbox,
    load_rgb,
    read_image,
    rgb_fill,
)


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


@pytest.mark.parametrize("hw", [(90, 160), (160, 90), (320, 320), (5, 7)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_letterbox_into_a_reused_array_matches_a_new_one(hw, dtype, monkeypatch):
    """``out=`` (a worker's shared-memory slot, holding the last image): every element rewritten, the values of a
    new array; the uint8 planes written by OpenCV's split equal numpy's transposed copy (OpenCV hidden)."""
    import rcnn_deploy.runtime.preprocess as pre

    rng = np.random.default_rng(hw[0])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    fresh, lb = letterbox(img, (64, 64), (1.4, 2.6, 250.0), dtype=dtype)
    slot = np.full((3, 64, 64), 77, dtype=dtype)  # stale contents
    got, lb2 = letterbox(img, (64, 64), (1.4, 2.6, 250.0), dtype=dtype, out=slot)
    assert got is slot and lb2 == lb and np.array_equal(got, fresh)
    # the transposed copy without OpenCV (the resize itself as before: resize_rgb is not what changes here)
    resized = pre.resize_rgb(img, lb.resized_hw)
    monkeypatch.setattr(pre, "resize_rgb", lambda *a, **k: resized)
    monkeypatch.setattr(pre, "opencv", lambda: None)
    assert np.array_equal(letterbox(img, (64, 64), (1.4, 2.6, 250.0), dtype=dtype)[0], fresh)
    with pytest.raises(ValueError, match="out="):
        letterbox(img, (64, 64), (0, 0, 0), dtype=dtype, out=np.zeros((3, 64, 65), dtype=dtype))


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
    with pytest.raises(UserError, match=r"nothing\*\.png: no file matches this pattern"):
        find_images(tmp_path / "nothing*.png")


# ------------------------------------------------------------------------------------------- loading images
def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    """Four flat colours (red, green / blue, yellow): where each lands shows how the image was turned."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


def _with_orientation(a: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(a), fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


def _colour_at(rgb: np.ndarray, y: float, x: float) -> tuple:
    h, w = rgb.shape[:2]
    return tuple(int(round(v / 255)) for v in rgb[int(y * h), int(x * w)])  # 0/1 per channel


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_puts_pixels_upright(orientation):
    a = _quadrants()  # 40 x 60, landscape as stored; a phone held upright stores it so, with orientation 6 or 8
    rgb = load_rgb(_with_orientation(a, orientation))
    assert rgb.shape == (60, 40, 3) and rgb.flags.c_contiguous
    red, green, blue, yellow = (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)
    # 6: rotate 90 degrees clockwise to view, so the stored left column (red over blue) becomes the top row,
    # read right to left; 8: counter-clockwise, the stored right column (green over yellow) becomes the top row
    want = {6: (blue, red, yellow, green), 8: (green, yellow, red, blue)}[orientation]
    got = tuple(_colour_at(rgb, y, x) for y, x in ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)))
    assert got == want


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, for the damaged block below
def test_every_exif_orientation_matches_pillow_exif_transpose():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        data = _with_orientation(a, orientation, "PNG")
        with Image.open(io.BytesIO(data)) as im:
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        np.testing.assert_array_equal(load_rgb(data), want, err_msg=f"orientation {orientation}")
    # a damaged EXIF block is ignored: the image decodes as stored
    broken = _encode(Image.fromarray(a), "PNG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    np.testing.assert_array_equal(load_rgb(broken), a)


def test_every_mode_becomes_uint8_rgb():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    gray3 = np.repeat(g[:, :, None], 3, axis=2)

    def via(im: Image.Image, fmt: str = "TIFF") -> np.ndarray:
        out = load_rgb(_encode(im, fmt))
        assert out.dtype == np.uint8 and out.flags.c_contiguous and out.shape == (6, 9, 3)
        return out

    np.testing.assert_array_equal(via(Image.fromarray(g > 100)), np.repeat((g > 100)[:, :, None] * 255, 3, 2))
    np.testing.assert_array_equal(via(Image.fromarray(g)), gray3)
    np.testing.assert_array_equal(via(Image.fromarray(np.dstack([g, alpha]), "LA")), gray3)  # alpha dropped
    np.testing.assert_array_equal(via(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), rgb)
    np.testing.assert_array_equal(via(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), rgb)
    # a palette image with transparency: the palette colours, transparency dropped like alpha
    p = Image.fromarray(g % 8, "L").convert("P")
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    p.putpalette(palette.reshape(-1).tolist())
    np.testing.assert_array_equal(via(p, "PNG"), palette[g % 8])
    p.info["transparency"] = bytes(range(0, 256, 16))
    np.testing.assert_array_equal(via(p, "PNG"), palette[g % 8])
    # colour spaces Pillow converts
    for mode in ("CMYK", "YCbCr", "LAB"):
        np.testing.assert_array_equal(
            via(Image.fromarray(rgb).convert(mode)), np.asarray(Image.fromarray(rgb).convert(mode).convert("RGB"))
        )
    # 16-bit: 0..65535 scaled to 0..255 (Pillow's convert("RGB") would clip everything above 255 to white)
    g16 = np.array([[0, 128, 129, 257, 32767, 32768, 65278, 65535, 1000]] * 6, np.uint16)
    want16 = np.array([0, 0, 1, 1, 127, 128, 254, 255, 4], np.uint8)
    assert (via(Image.fromarray(g16), "PNG")[0, :, 0] == want16).all()
    assert (via(Image.fromarray(g16.astype(np.int32)))[0, :, 0] == want16).all()  # 16-bit values in mode I
    # 32-bit values beyond 16 bits and float images outside 0-255: stretched from their minimum to maximum
    i32 = np.array([[-100000, 0, 100000] * 3] * 6, np.int32)
    assert via(Image.fromarray(i32))[0, :3, 0].tolist() == [0, 128, 255]
    f = np.array([[0.0, 0.5, 1.0] * 3] * 6, np.float32)
    assert via(Image.fromarray(f))[0, :3, 0].tolist() == [0, 128, 255]  # 0-1 floats
    assert via(Image.fromarray(f * 200))[0, :3, 0].tolist() == [0, 100, 200]  # 0-255 floats
    f_odd = np.array([[-2.0, 0.0, 2.0, np.nan, np.inf, -np.inf, 1.0, 1.0, 1.0]] * 6, np.float32)
    assert via(Image.fromarray(f_odd))[0, :6, 0].tolist() == [0, 128, 255, 0, 255, 0]


def test_modes_only_in_memory_convert_too():
    from rcnn_deploy.runtime.preprocess import _to_rgb

    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    raw = bytes(rng.integers(0, 256, 4 * 5 * 4, dtype=np.uint8))
    made = {m: base.convert(m) for m in ("PA", "RGBa", "RGBX", "HSV")}
    made.update({m: Image.frombytes(m, (5, 4), raw[: 4 * 5 * 2]) for m in ("La", "I;16B", "I;16L")})
    made["F"] = Image.frombytes("F", (5, 4), np.linspace(-3, 3, 20, dtype=np.float32).tobytes())
    for mode, im in made.items():
        out = _to_rgb(im, "x")
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous, mode
    assert _to_rgb(made["F"], "x")[:, :, 0].reshape(-1).tolist() == np.rint(np.linspace(0, 255, 20)).tolist()


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    with pytest.raises(UserError, match=r"photo\.png: .*120x100 = 12,000 pixels, above the limit of 11,999") as e:
        load_rgb(path, max_pixels=11_999)
    assert "--max-pixels 12000" in str(e.value)
    assert load_rgb(path, max_pixels=12_000).shape == (100, 120, 3)
    # a header claiming 100000 x 100000 pixels (valid checksum) is refused without decoding anything
    from PIL import ImageFile

    def no_decoding(self):  # noqa: ANN001
        raise AssertionError("the image was decoded")

    b = bytearray(path.read_bytes())
    struct.pack_into(">II", b, 16, 100_000, 100_000)
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(UserError, match=r"<request bytes>: .*100000x100000 = 10,000,000,000 pixels.*--max-pixels"):
        load_rgb(bytes(b))
    assert DEFAULT_MAX_PIXELS >= 50_000_000  # a 50-megapixel camera photo loads with the default
    with pytest.raises(UserError, match="at least 1"):
        load_rgb(path, max_pixels=0)


def test_oversized_image_does_not_escape_as_pillow_decompression_bomb(tmp_path):
    # Pillow's own guard (an error above 2 x 89 megapixels) used to escape load_rgb and stop a whole run
    b = bytearray(_encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "GIF"))
    struct.pack_into("<HH", b, 6, 65535, 65535)  # logical screen 65535 x 65535
    path = tmp_path / "bomb.gif"
    path.write_bytes(bytes(b))
    with pytest.raises(UserError, match=r"bomb\.gif: .*(--max-pixels|pixels)"):
        load_rgb(path)


def test_decoder_exceptions_become_user_errors(tmp_path):
    tif = bytearray(_encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "TIFF"))
    ifd = struct.unpack_from("<I", tif, 4)[0]
    for k in range(struct.unpack_from("<H", tif, ifd)[0]):
        if struct.unpack_from("<H", tif, ifd + 2 + 12 * k)[0] == 278:  # RowsPerStrip = 0: Pillow raised ValueError
            struct.pack_into("<I", tif, ifd + 2 + 12 * k + 8, 0)
    png = _encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "PNG")
    cases = {
        "rows.tif": bytes(tif),
        "truncated.png": png[: len(png) // 2],
        "empty.jpg": b"",
        "text.png": b"<html>404</html>",
        "phone.heic": b"\x00\x00\x00\x18ftypheic" + bytes(40),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=re.escape(str(tmp_path / name)) + ": cannot read image") as e:
            load_rgb(tmp_path / name)
        assert e.value.fix, name
    with pytest.raises(UserError, match="HEIC"):
        load_rgb(tmp_path / "phone.heic")
    with pytest.raises(UserError, match="does not exist"):
        load_rgb(tmp_path / "missing.jpg")


def test_bytes_input_matches_the_file_and_names_itself(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(a).save(path)
    data = path.read_bytes()
    for source in (data, bytearray(data), memoryview(data), path, str(path)):
        np.testing.assert_array_equal(load_rgb(source), a)
    with pytest.raises(UserError, match=r"^<request bytes>: cannot read image"):
        load_rgb(b"garbage!")
    with pytest.raises(UserError, match=r"^upload 7 \(cat\.jpg\): cannot read image"):
        load_rgb(b"garbage!", name="upload 7 (cat.jpg)")
    with pytest.raises(TypeError):
        load_rgb(a)  # type: ignore[arg-type]


def _smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([np.sin(x / 40) * 100 + 128, np.cos(y / 55) * 100 + 128, (x + y) / (h + w) * 255], -1).astype(
        np.uint8
    )


def test_draft_decode_is_at_least_the_needed_size_and_close_to_the_full_decode():
    data = _encode(Image.fromarray(_smooth(1200, 1600)), "JPEG", quality=92)
    hw = (320, 320)
    full = read_image(data)
    assert full.orig_hw == (1200, 1600) and full.rgb.shape == (1200, 1600, 3)
    with Image.open(io.BytesIO(data)) as im:  # without target_hw: exactly Pillow's full decode
        np.testing.assert_array_equal(full.rgb, np.asarray(im.convert("RGB")))
    small = read_image(data, target_hw=hw)
    assert small.orig_hw == (1200, 1600)
    need_h, need_w = Letterbox(1200, 1600, min(320 / 1200, 320 / 1600)).resized_hw  # 240 x 320
    h, w = small.rgb.shape[:2]
    assert need_h <= h < 1200 / 2 and need_w <= w < 1600 / 2  # decoded at 1/4, not below what is needed
    x_full, lb_full = letterbox(full.rgb, hw, (0, 0, 0))
    x_small, lb_small = letterbox(small.rgb, hw, (0, 0, 0), orig_hw=small.orig_hw)
    assert lb_small == lb_full  # boxes map back to the full image either way
    diff = np.abs(x_full - x_small)
    assert diff.mean() < 1.0 and diff.max() <= 12
    # an image that is not much larger than needed is decoded at full size
    near = _encode(Image.fromarray(_smooth(400, 500)), "JPEG")
    np.testing.assert_array_equal(read_image(near, target_hw=hw).rgb, read_image(near).rgb)
    # EXIF orientation 6 with a draft: the sizes are the upright image's
    turned = read_image(_with_orientation(_smooth(1200, 1600), 6), target_hw=hw)
    assert turned.orig_hw == (1600, 1200) and turned.rgb.shape[0] > turned.rgb.shape[1]
    assert turned.rgb.shape[0] >= 320 and turned.rgb.shape[1] >= 240


@pytest.mark.parametrize("hw", [(1, 5000), (5000, 1)])
def test_thin_image_round_trip(tmp_path, hw):
    from rcnn_deploy.runtime.masks import paste_masks

    h, w = hw
    path = tmp_path / "thin.png"
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)
    rgb = load_rgb(path)
    x, lb = letterbox(rgb, (320, 320), (0, 0, 0))
    assert lb.resized_hw == ((1, 320) if h == 1 else (320, 1))
    assert (x[:, : lb.resized_hw[0], : lb.resized_hw[1]] == 200).all()
    boxes = lb.boxes_to_original(np.array([[0, 0, 320, 320], [0, 0, 16, 16]], np.float32))
    np.testing.assert_allclose(boxes[0], [0, 0, w, h])
    assert np.isfinite(boxes).all()
    for method in ("torchvision", "detectron2"):
        masks = paste_masks(np.ones((2, 28, 28), np.float32), boxes, (h, w), method)
        assert masks.shape == (2, h, w) and masks[0].mean() > 0.99  # the whole image (bar a border pixel)


def test_letterbox_refuses_arrays_that_are_not_rgb():
    for bad in (
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4, 3)),
    ):
        with pytest.raises(UserError, match=r"\[H, W, 3\] uint8 RGB"):
            letterbox(bad, (32, 32), (0, 0, 0))


# -------------------------------------------------------------------------------------------- finding images
def test_find_images_says_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match=r"nowhere: does not exist"):
        find_images(tmp_path / "nowhere")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(
        UserError, match=r"no images in this folder \(looked for \.jpg, .*\.tiff, .*1 other files and 1 subfolders"
    ):
        find_images(tmp_path)
    with pytest.raises(UserError, match="no file matches this pattern"):
        find_images(tmp_path / "*.jpg")
    with pytest.raises(UserError, match="none is an image file"):
        find_images(tmp_path / "*.md")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "sub" / "deep.TIF")
    assert find_images(f"{tmp_path}/**/*.TIF") == [tmp_path / "sub" / "deep.TIF"]
    assert find_images(tmp_path / "sub") == [tmp_path / "sub" / "deep.TIF"]


def test_find_images_reads_list_files(tmp_path):
    (tmp_path / "imgs").mkdir()
    for n in ("a.jpg", "b.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / n)
    absolute = tmp_path / "imgs" / "b.png"
    listing = tmp_path / "lists" / "val.txt"
    listing.parent.mkdir()
    listing.write_text(
        f"# validation images\n\n../imgs/a.jpg\n  {absolute}  \n# ../imgs/skipped.jpg\n../imgs/gone.jpg\n"
    )
    paths = find_images(listing)
    assert paths == [listing.parent / "../imgs/a.jpg", absolute, listing.parent / "../imgs/gone.jpg"]
    got = list(iter_batches(paths, (16, 16), (0, 0, 0), batch=8))  # the missing one is reported, not fatal
    (failed,) = [fs for _, _, _, fs in got]
    assert len(failed) == 1 and "gone.jpg" in failed[0][1] and "does not exist" in failed[0][1]
    lst = tmp_path / "wrong.lst"
    lst.write_text("a.jpg\nb.png\n")  # relative to the wrong folder: nothing exists
    with pytest.raises(UserError, match=r"wrong\.lst: none of the 2 images this list names exists \(line 1:"):
        find_images(lst)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="names no images"):
        find_images(tmp_path / "empty.txt")


# ------------------------------------------------------------------------------------------- resize methods
@pytest.mark.parametrize("src_hw, dst_hw", [((1080, 1920), (756, 1344)), ((37, 53), (90, 130)), ((64, 64), (32, 32))])
def test_torchvision_resize_matches_interpolate(src_hw, dst_hw):
    """The "torchvision" letterbox resize is F.interpolate(bilinear, align_corners=False, no antialias) as in
    GeneralizedRCNNTransform: numpy reference within rounding, OpenCV within one grey level."""
    torch = pytest.importorskip("torch")
    from rcnn_deploy.runtime import _opencv
    from rcnn_deploy.runtime.preprocess import bilinear_resize_numpy, resize_rgb

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(t, size=dst_hw, mode="bilinear", align_corners=False)
    ref = ref[0].permute(1, 2, 0).numpy()
    ours = bilinear_resize_numpy(img, dst_hw).astype(np.float32)
    assert np.abs(ours - ref).max() <= 0.6  # rounding, and PyTorch computing sample positions in float32
    if _opencv.opencv() is not None:
        fast = resize_rgb(img, dst_hw, "torchvision").astype(np.float32)
        assert fast.shape == ref.shape and np.abs(fast - ref).max() <= 1.1


def test_resize_without_opencv_uses_the_reference(monkeypatch):
    from rcnn_deploy.runtime import preprocess
    from rcnn_deploy.runtime.preprocess import bilinear_resize_numpy, resize_rgb

    img = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    monkeypatch.setattr(preprocess, "opencv", lambda: None)
    assert np.array_equal(resize_rgb(img, (20, 30), "torchvision"), bilinear_resize_numpy(img, (20, 30)))
    with pytest.raises(ValueError, match="unknown resize"):
        resize_rgb(img, (20, 30), "nearest")


def test_detectron2_resize_is_pillows_bilinear():
    from PIL import Image

    from rcnn_deploy.runtime.preprocess import resize_rgb

    img = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize((40, 30), Image.BILINEAR))
    assert np.array_equal(resize_rgb(img, (30, 40), "detectron2"), ref)


# ------------------------------------------------------------------------------- JPEGs decoded by simplejpeg
def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _pillow_only(monkeypatch, data):
    """load_rgb as it decodes without simplejpeg (Pillow alone)."""
    import sys

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg -> ImportError
        return load_rgb(data)


def _spy(monkeypatch):
    simplejpeg = pytest.importorskip("simplejpeg")
    calls = []
    real = simplejpeg.decode_jpeg

    def decode(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", decode)
    return calls


@pytest.mark.parametrize("hw", [(181, 243), (17, 33), (1080, 1920)])
@pytest.mark.parametrize(
    "kw", [{}, {"subsampling": 0}, {"subsampling": 1}, {"progressive": True}, {"quality": 95, "optimize": True}]
)
def test_colour_jpegs_decoded_by_simplejpeg_equal_pillows_pixels(monkeypatch, hw, kw):
    """load_rgb decodes a plain colour JPEG with simplejpeg (about 1.2x Pillow's speed at 1920x1080): both are
    libjpeg-turbo with its default IDCT and chroma upsampling, so the pixels must be the same, for every
    subsampling, progressive and optimised files, and sizes that are not whole MCUs."""
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(hw[0] * 7 + len(kw))
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    arr = np.stack([xx % 256, (yy * 3) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    data = _jpeg(arr, **kw)
    got = load_rgb(data)
    assert calls and calls[0]["strict"], "the simplejpeg path was not taken (strictly)"
    want = _pillow_only(monkeypatch, data)
    assert got.shape == (*hw, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    assert np.array_equal(got, want)


def test_jpegs_simplejpeg_would_read_differently_are_left_to_pillow(monkeypatch):
    """EXIF-rotated, grey, CMYK and draft-reduced JPEGs go to Pillow (simplejpeg is not asked); a file libjpeg
    warns about (trailing bytes, corrupt data, a truncation) is handed to Pillow after simplejpeg refuses it, and
    gets Pillow's result: the same pixels, or its error."""
    calls = _spy(monkeypatch)
    arr = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    Image.fromarray(arr).save(rotated, "JPEG", exif=exif.tobytes())
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, "JPEG")
    for name, data in {"rotated": rotated.getvalue(), "grey": _jpeg(arr[:, :, 0]), "cmyk": cmyk.getvalue()}.items():
        got = load_rgb(data)
        assert not calls, f"{name}: decoded by simplejpeg"
        assert np.array_equal(got, _pillow_only(monkeypatch, data)), name
    read_image(_jpeg(np.zeros((1200, 1600, 3), np.uint8)), target_hw=(256, 256))  # Pillow's draft: 1/4 scale
    assert not calls
    good = _jpeg(arr)
    trailing = good + b"\x00\x00trailer"
    assert np.array_equal(load_rgb(trailing), _pillow_only(monkeypatch, trailing))
    scan = good.index(b"\xff\xda") + 20  # inside the entropy-coded data
    corrupt = good[:scan] + bytes(64) + good[scan + 64 :]
    try:
        want = _pillow_only(monkeypatch, corrupt)
    except UserError as e:
        with pytest.raises(UserError, match=re.escape(str(e.what))):
            load_rgb(corrupt)
    else:
        assert np.array_equal(load_rgb(corrupt), want)
    with pytest.raises(UserError, match="damaged or truncated"):
        load_rgb(good[:-200])


def test_opencv_linear_resize_numpy_is_opencvs_resize_bit_for_bit():
    """The GPU letterboxes reproduce the host's OpenCV INTER_LINEAR with this arithmetic (export.letterbox_graph's
    "opencv" graph, GpuLetterbox's int32 path): down, up, both, tiny, thin, the benchmark's 1920x1080 -> 1344 and
    an exact halving (which OpenCV could take by another path)."""
    cv2 = pytest.importorskip("cv2")
    from rcnn_deploy.runtime.preprocess import opencv_linear_resize_numpy

    rng = np.random.default_rng(7)
    cases = [(1080, 1920, 756, 1344), (100, 150, 345, 517), (37, 91, 64, 64), (1, 1, 5, 5), (3, 500, 9, 40)]
    cases += [(400, 600, 200, 300), (384, 384, 384, 384)]
    cases += [tuple(int(v) for v in rng.integers(1, 300, 4)) for _ in range(25)]
    for h, w, oh, ow in cases:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(opencv_linear_resize_numpy(img, (oh, ow)), want, err_msg=str((h, w, oh, ow)))
