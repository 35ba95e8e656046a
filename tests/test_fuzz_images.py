"""Image-input fuzzing: a seeded corpus of >= 1000 corrupt or unusual images, each through
``load_rgb -> letterbox -> boxes_to_original -> paste_masks`` under a per-case time limit.

Every case must end in a decoded image or a :class:`UserError` that names the file: no other exception
escapes, nothing hangs. Valid images of every mode and format must decode to the expected pixels, EXIF
orientations 1-8 must come out upright, headers that claim huge sizes must be refused before decoding, and
1 x N / N x 1 images must go through the whole chain. The test writes its tally to docs/reliability/images.md.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import PIL
import pytest
from PIL import Image

from rcnn_deploy._io import atomic_write_text
from rcnn_deploy.errors import UserError
from rcnn_deploy.runtime.masks import paste_masks
from rcnn_deploy.runtime.preprocess import DEFAULT_MAX_PIXELS, letterbox, load_rgb

# Pillow warns about what it skips in damaged files (EXIF, TIFF tags); the outcome is what is tested here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability" / "images.md"
SEED = 20240611
CASE_TIMEOUT_S = 2.0  # CPU seconds a case may take
WALL_FACTOR = 10  # ... and at most this many times that on the clock
INPUT_HW = (48, 80)
FILL = (123.675, 116.28, 103.53)
H, W = 18, 27  # base images: small, not square, odd width


@dataclass
class Case:
    category: str
    name: str  # how errors must name it
    data: bytes
    expect: str = "any"  # "ok": must decode, "error": must be a UserError, "any": either
    check: Optional[Callable[[np.ndarray], None]] = None  # extra check of a decoded image
    via_path: bool = False  # written to a file and loaded by path (else loaded from bytes with name=)
    needs_limit_hint: bool = False  # the error must tell the user about --max-pixels


# ------------------------------------------------------------------------------------------------ base images
def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _rgb_pattern(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 7 % 256], -1).astype(np.uint8)
    a[h // 3 : h // 2, w // 4 : w // 2] = rng.integers(0, 256, (h // 2 - h // 3, w // 2 - w // 4, 3))
    return a


def _gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def _pillow_rgb(data: bytes) -> np.ndarray:
    """Pillow's own decode, for lossy formats and Pillow-defined colour conversions (CMYK, YCbCr, LAB)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _bases(rng: np.random.Generator) -> List[Tuple[str, str, bytes, Optional[np.ndarray]]]:
    """``(label, extension, bytes, expected RGB)`` for valid images of every mode each format writes;
    expected None: compare with Pillow's own RGB decode (lossy formats, Pillow's colour conversions)."""
    rgb = _rgb_pattern(rng)
    g = rgb[:, :, 0] // 2 + rgb[:, :, 1] // 2
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    bits = g > 100
    pal = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (H, W), dtype=np.uint8)
    p_im = Image.fromarray(idx, "L").convert("P")
    p_im.putpalette(pal.reshape(-1).tolist())
    g16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    e16 = ((g16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    fl = rng.random((H, W), dtype=np.float32)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    la = Image.fromarray(np.dstack([g, alpha]), "LA")
    one = Image.fromarray(bits)
    out: List[Tuple[str, str, bytes, Optional[np.ndarray]]] = []

    def add(label: str, ext: str, data: bytes, expected: Optional[np.ndarray]) -> None:
        out.append((label, ext, data, expected))

    im = Image.fromarray(rgb)
    gi = Image.fromarray(g)
    pt = p_im.copy()
    pt.info["transparency"] = 3
    ptb = p_im.copy()
    ptb.info["transparency"] = bytes(rng.integers(0, 256, 16, dtype=np.uint8))
    pexp = pal[idx]
    # PNG
    add("png-rgb", "png", _save(im, "PNG"), rgb)
    add("png-rgb-optimized", "png", _save(im, "PNG", optimize=True), rgb)
    add("png-l", "png", _save(gi, "PNG"), _gray3(g))
    add("png-1", "png", _save(one, "PNG"), _gray3(bits.astype(np.uint8) * 255))
    add("png-la", "png", _save(la, "PNG"), _gray3(g))
    add("png-p", "png", _save(p_im, "PNG"), pexp)
    add("png-p-trns", "png", _save(pt, "PNG", transparency=3), pexp)
    add("png-p-trns-bytes", "png", _save(ptb, "PNG"), pexp)
    add("png-rgba", "png", _save(rgba, "PNG"), rgb)
    add("png-i16", "png", _save(Image.fromarray(g16), "PNG"), _gray3(e16))
    frames = [im, Image.fromarray(255 - rgb)]
    add("png-apng", "png", _save(frames[0], "PNG", save_all=True, append_images=frames[1:]), rgb)
    # JPEG (lossy: Pillow's decode is the reference)
    add("jpeg-rgb", "jpg", _save(im, "JPEG", quality=90), None)
    add("jpeg-rgb-444-progressive", "jpg", _save(im, "JPEG", quality=95, subsampling=0, progressive=True), None)
    add("jpeg-l", "jpg", _save(gi, "JPEG"), None)
    add("jpeg-cmyk", "jpg", _save(im.convert("CMYK"), "JPEG"), None)
    # BMP
    add("bmp-rgb", "bmp", _save(im, "BMP"), rgb)
    add("bmp-l", "bmp", _save(gi, "BMP"), _gray3(g))
    add("bmp-1", "bmp", _save(one, "BMP"), _gray3(bits.astype(np.uint8) * 255))
    add("bmp-p", "bmp", _save(p_im, "BMP"), pexp)
    add("bmp-rle8", "bmp", _bmp_rle8(idx, pal), pexp)
    # GIF
    add("gif-p", "gif", _save(p_im, "GIF"), pexp)
    add("gif-p-transparency", "gif", _save(p_im, "GIF", transparency=3), pexp)
    anim = [p_im, Image.fromarray(15 - idx, "L").convert("P")]
    add("gif-animated", "gif", _save(anim[0], "GIF", save_all=True, append_images=anim[1:], duration=50), pexp)
    # TIFF: every mode it stores
    for comp in ("raw", "tiff_lzw", "tiff_deflate", "packbits"):
        add(f"tiff-rgb-{comp}", "tif", _save(im, "TIFF", compression=comp), rgb)
    add("tiff-jpeg", "tif", _save(im, "TIFF", compression="jpeg"), None)
    add("tiff-1-group4", "tif", _save(one, "TIFF", compression="group4"), _gray3(bits.astype(np.uint8) * 255))
    add("tiff-l", "tif", _save(gi, "TIFF"), _gray3(g))
    add("tiff-la", "tif", _save(la, "TIFF"), _gray3(g))
    add("tiff-p", "tif", _save(p_im, "TIFF"), pexp)
    add("tiff-pa", "tif", _save(Image.fromarray(np.dstack([idx, alpha]), "LA").convert("PA"), "TIFF"), None)
    add("tiff-rgba", "tif", _save(rgba, "TIFF"), rgb)
    add("tiff-cmyk", "tif", _save(im.convert("CMYK"), "TIFF"), None)
    add("tiff-ycbcr", "tif", _save(im.convert("YCbCr"), "TIFF"), None)
    add("tiff-lab", "tif", _save(im.convert("LAB"), "TIFF"), None)
    add("tiff-i16", "tif", _save(Image.fromarray(g16), "TIFF"), _gray3(e16))
    i16b = Image.frombytes("I;16B", (W, H), g16.astype(">u2").tobytes())  # convert("I;16B") clips at 255
    add("tiff-i16b", "tif", _save(i16b, "TIFF"), _gray3(e16))
    add("tiff-i32-16bit-range", "tif", _save(Image.fromarray(g16.astype(np.int32)), "TIFF"), _gray3(e16))
    i32 = g16.astype(np.int32) * 40 - 300000  # outside 0-65535: stretched from min to max
    stretched = np.rint((i32 - i32.min()) * (255.0 / (i32.max() - i32.min()))).astype(np.uint8)
    add("tiff-i32-stretched", "tif", _save(Image.fromarray(i32), "TIFF"), _gray3(stretched))
    add("tiff-f-unit", "tif", _save(Image.fromarray(fl), "TIFF"), _gray3(np.rint(fl * 255).astype(np.uint8)))
    f255 = fl * 255
    add("tiff-f-0-255", "tif", _save(Image.fromarray(f255), "TIFF"), _gray3(np.rint(f255).astype(np.uint8)))
    fnan = (fl * 1000 - 500).astype(np.float32)
    fnan[0, 0], fnan[1, 1] = np.nan, np.inf
    lo, hi = fnan[np.isfinite(fnan)].min(), fnan[np.isfinite(fnan)].max()
    enan = np.rint(np.clip((fnan - lo) * (255.0 / (hi - lo)), 0, 255))
    enan[0, 0], enan[1, 1] = 0, 255  # NaN -> 0, +inf -> 255
    add("tiff-f-nan-inf", "tif", _save(Image.fromarray(fnan), "TIFF"), _gray3(enan.astype(np.uint8)))
    add("tiff-multipage", "tif", _save(im, "TIFF", save_all=True, append_images=[Image.fromarray(255 - rgb)]), rgb)
    # WebP
    add("webp-lossy", "webp", _save(im, "WEBP", quality=90), None)
    add("webp-lossless", "webp", _save(im, "WEBP", lossless=True), rgb)
    add("webp-rgba-lossless", "webp", _save(rgba, "WEBP", lossless=True, exact=True), rgb)
    add("webp-animated", "webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True), rgb)
    # PPM family
    add("ppm-rgb", "ppm", _save(im, "PPM"), rgb)
    add("pgm-l", "pgm", _save(gi, "PPM"), _gray3(g))
    add("pbm-1", "pbm", _save(one, "PPM"), _gray3(bits.astype(np.uint8) * 255))
    add("pgm-16bit", "pgm", _save(Image.fromarray(g16), "PPM"), _gray3(e16))
    add("pfm-f", "pfm", _save(Image.fromarray(fl), "PPM"), _gray3(np.rint(fl * 255).astype(np.uint8)))
    return out


def _bmp_rle8(idx: np.ndarray, pal: np.ndarray) -> bytes:
    """An 8-bit RLE-compressed BMP (Pillow reads but does not write them): one run per pixel, bottom-up."""
    h, w = idx.shape
    body = bytearray()
    for row in idx[::-1]:
        for v in row:
            body += bytes([1, int(v)])
        body += b"\x00\x00"
    body += b"\x00\x01"
    palette = b"".join(bytes([int(c[2]), int(c[1]), int(c[0]), 0]) for c in pal)
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return header + info + palette + bytes(body)


# ----------------------------------------------------------------------------------------- header size edits
def _png_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(">II", b, 16, w & 0xFFFFFFFF, h & 0xFFFFFFFF)
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))  # a valid CRC: the size itself is the lie
    return bytes(b)


def _jpeg_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    i = 2
    while i + 4 < len(b):
        marker, length = b[i + 1], struct.unpack_from(">H", b, i + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", b, i + 5, h & 0xFFFF, w & 0xFFFF)
            return bytes(b)
        i += 2 + length
    raise AssertionError("no SOF marker")


def _bmp_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<ii", b, 18, max(min(w, 2**31 - 1), -(2**31)), max(min(h, 2**31 - 1), -(2**31)))
    return bytes(b)


def _gif_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<HH", b, 6, w & 0xFFFF, h & 0xFFFF)
    pos = 13 + (3 * 2 ** ((b[10] & 7) + 1) if b[10] & 0x80 else 0)
    while b[pos] == 0x21:  # extensions: skip their sub-blocks
        pos += 2
        while b[pos]:
            pos += b[pos] + 1
        pos += 1
    assert b[pos] == 0x2C
    struct.pack_into("<HH", b, pos + 5, w & 0xFFFF, h & 0xFFFF)
    return bytes(b)


def _tiff_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    assert b[:2] == b"II"
    ifd = struct.unpack_from("<I", b, 4)[0]
    for k in range(struct.unpack_from("<H", b, ifd)[0]):
        at = ifd + 2 + 12 * k
        tag = struct.unpack_from("<H", b, at)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", b, at, tag, 4, 1, (w if tag == 256 else h) & 0xFFFFFFFF)
    return bytes(b)


def _tiff_tag_edits(data: bytes, values: Tuple[int, ...]) -> List[Tuple[str, bytes]]:
    """The file with one IFD entry's value replaced, for every entry and value."""
    out = []
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack_from("<HH", data, at)
        for v in values:
            b = bytearray(data)
            struct.pack_into("<I", b, at + 8, v if typ == 4 else v & 0xFFFF)
            out.append((f"{tag}={v}", bytes(b)))
    return out


def _webp_size(data: bytes, w: int, h: int) -> bytes:
    b = bytearray(data)
    assert b[12:16] == b"VP8X"
    b[24:27] = ((max(w, 1) - 1) & 0xFFFFFF).to_bytes(3, "little")
    b[27:30] = ((max(h, 1) - 1) & 0xFFFFFF).to_bytes(3, "little")
    at = bytes(b).index(b"VP8L") + 8  # the lossless bitstream's own size, where it fits 14 bits
    bits = int.from_bytes(b[at + 1 : at + 5], "little") & ~((1 << 28) - 1)
    bits |= (min(max(w, 1), 16384) - 1) | ((min(max(h, 1), 16384) - 1) << 14)
    b[at + 1 : at + 5] = bits.to_bytes(4, "little")
    return bytes(b)


def _ppm_size(data: bytes, w: int, h: int) -> bytes:
    return f"P6\n{w} {h}\n255\n".encode() + data[-300:]


# ------------------------------------------------------------------------------------------------- the corpus
def _corpus() -> List[Case]:
    rng = np.random.default_rng(SEED)
    cases: List[Case] = []
    bases = _bases(rng)

    # 1. valid images of every mode: decode to the expected pixels
    for label, ext, data, expected in bases:
        ref = expected if expected is not None else _pillow_rgb(data)
        cases.append(Case("valid: every format and mode", f"{label}.{ext}", data, "ok", _equal_check(ref)))

    # 2. EXIF orientation 1-8 on an image whose four quadrants have different colours
    cases += _exif_cases()

    # 3. thin images: 1 x N and N x 1
    for h, w in ((1, 5000), (5000, 1), (1, 1), (2, 20000), (20000, 2), (1, 16383), (16383, 1)):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
        a[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
        im = Image.fromarray(a)
        fmts = ("PNG", "JPEG", "BMP", "GIF", "TIFF") + (("WEBP",) if max(h, w) <= 16383 else ())
        for fmt in fmts:
            data = _save(im, fmt) if fmt != "WEBP" else _save(im, fmt, lossless=True)
            cases.append(Case("thin images (1xN, Nx1)", f"thin-{h}x{w}.{fmt.lower()}", data, "ok", _shape_check(h, w)))

    # 4. headers that claim absurd sizes (valid checksums where the format has them)
    by_label = {label: data for label, _, data, _ in bases}
    vp8x = _save(Image.fromarray(_rgb_pattern(rng)), "WEBP", lossless=True, exif=Image.Exif().tobytes())
    assert vp8x[12:16] == b"VP8X"  # an extended WebP: its canvas size is the one edited
    editors = [
        ("png", by_label["png-rgb"], _png_size),
        ("jpg", by_label["jpeg-rgb"], _jpeg_size),
        ("bmp", by_label["bmp-rgb"], _bmp_size),
        ("gif", by_label["gif-p"], _gif_size),
        ("tif", by_label["tiff-rgb-raw"], _tiff_size),
        ("webp", vp8x, _webp_size),
        ("ppm", by_label["ppm-rgb"], _ppm_size),
    ]
    sizes = [
        (100000, 100000),
        (65535, 65535),
        (2**31 - 1, 1),
        (1, 2**31 - 1),
        (2**32 - 1, 2**32 - 1),
        (20000, 20000),
        (10001, 10000),
        (16384, 16384),
        (0, 0),
        (0, 64),
        (64, 0),
    ]
    for ext, data, edit in editors:
        for w, h in sizes:
            if ext in ("jpg", "gif"):  # 16-bit size fields
                w, h = min(w, 65535), min(h, 65535)
            if ext == "webp":  # stored as size - 1 in 24 bits
                w, h = min(max(w, 1), 2**24), min(max(h, 1), 2**24)
            big = w * h > DEFAULT_MAX_PIXELS
            expect = "error" if big or w == 0 or h == 0 else "any"
            case = Case("absurd declared sizes", f"huge-{w}x{h}.{ext}", edit(data, w, h), expect, needs_limit_hint=big)
            cases.append(case)
    # negative BMP sizes (a negative height means top-down rows; a negative width is invalid)
    for w, h in ((-27, 18), (27, -18), (-(2**31), -(2**31)), (27, -(2**31))):
        cases.append(Case("absurd declared sizes", f"huge-{w}x{h}.bmp", _bmp_size(by_label["bmp-rgb"], w, h)))

    # 5. not images at all, or only a signature
    magics = [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0",
        b"GIF89a",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
        b"RIFF\x00\x00\x00\x00WEBP",
    ]
    magics += [b"P6\n", b"P5\n", b"PF\n"]
    junk = [b"", b"\x00", b"hello", b"<html><body>not found</body></html>", b"%PDF-1.7\n" + bytes(100)]
    junk += [
        b"\x00\x00\x00\x18ftypheic" + bytes(64),
        b"\x00\x00\x00\x1cftypavif" + bytes(64),
        b"PK\x03\x04" + bytes(60),
    ]
    junk += [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (16, 100, 10000)]
    signed = [m + tail for m in magics for tail in (b"", bytes(rng.integers(0, 256, 200, dtype=np.uint8)), bytes(1000))]
    for i, data in enumerate(junk + signed):
        cases.append(Case("not images / signature only", f"junk-{i}.bin", data, "error" if i < len(junk) else "any"))

    # 6. mutations of the valid images
    mutators: Dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
        "bit flips": _bitflip,
        "truncations": _truncate,
        "header byte edits": _header_edit,
        "spliced / zeroed ranges": _splice,
        "trailing garbage": _append,
    }
    rounds = {
        "bit flips": 8,
        "truncations": 5,
        "header byte edits": 4,
        "spliced / zeroed ranges": 3,
        "trailing garbage": 1,
    }
    for label, ext, data, _ in bases:
        for kind, fn in mutators.items():
            for r in range(rounds[kind]):
                cases.append(Case(kind, f"{label}-{kind.split()[0]}{r}.{ext}", fn(data, rng)))
    # dimension fields set to random values, checksums kept valid (PNG) or absent
    for ext, data, edit in editors[:5]:
        for r in range(12):
            w, h = (int(v) for v in rng.choice([0, 1, 2, 3, 255, 256, 4097, 30000, 65535, 70000, 2**31 - 1], 2))
            if ext in ("jpg", "gif"):
                w, h = min(w, 65535), min(h, 65535)
            cases.append(Case("header size edits", f"size-{r}-{w}x{h}.{ext}", edit(data, w, h)))

    # every TIFF tag of three files set to odd values (RowsPerStrip 0 made Pillow raise ValueError)
    for label in ("tiff-rgb-raw", "tiff-rgb-tiff_lzw", "tiff-i16"):
        for tag, edited in _tiff_tag_edits(by_label[label], (0, 1, 3, 255, 65535, 2**31 - 1, 2**32 - 1)):
            cases.append(Case("TIFF tag values", f"{label}-tag{tag}.tif", edited))

    # some cases go through a real file (so errors name the path), the rest as request bytes
    for i, c in enumerate(cases):
        c.via_path = i % 7 == 0
    return cases


def _bitflip(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    span = len(b) if rng.random() < 0.5 else min(len(b), 64)  # half in the header, where parsers live
    for _ in range(int(rng.choice([1, 2, 4, 8, 32]))):
        b[int(rng.integers(0, span))] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(1, len(data)))]


def _header_edit(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        b[int(rng.integers(0, min(len(b), 48)))] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, rng.integers(256)]))
    return bytes(b)


def _splice(data: bytes, rng: np.random.Generator) -> bytes:
    n = len(data)
    a, b = sorted(int(v) for v in rng.integers(0, n, 2))
    if rng.random() < 0.5:
        return data[:a] + bytes(b - a) + data[b:]  # a zeroed range
    at = int(rng.integers(0, n))
    return data[:at] + data[a:b] + data[at:]  # a duplicated range (chunks, segments, strips)


def _append(data: bytes, rng: np.random.Generator) -> bytes:
    return data + bytes(rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8))


def _equal_check(ref: np.ndarray) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        assert rgb.shape == ref.shape, (rgb.shape, ref.shape)
        diff = np.abs(rgb.astype(np.int16) - ref.astype(np.int16)).max()
        assert diff == 0, f"pixels differ by up to {diff}"

    return check


def _shape_check(h: int, w: int) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        assert rgb.shape == (h, w, 3), rgb.shape

    return check


def _exif_cases() -> List[Case]:
    """Orientations 1-8 in JPEG, PNG, WebP and TIFF; the decoded image must be the upright one: its shape
    transposed for 5-8 and each quadrant's colour where the orientation puts it. Plus damaged EXIF blocks,
    which must be ignored (the image decodes as stored)."""
    h, w = 16, 24
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)  # TL, TR, BL, BR
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2 :] = colours[0], colours[1]
    a[h // 2 :, : w // 2], a[h // 2 :, w // 2 :] = colours[2], colours[3]
    # what a viewer shows, from the EXIF specification's wording (np.rot90 with k=-1 turns clockwise)
    upright = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],  # mirrored horizontally
        3: lambda x: np.rot90(x, 2),  # rotated 180
        4: lambda x: x[::-1],  # mirrored vertically
        5: lambda x: np.rot90(x[:, ::-1], 1),  # mirrored horizontally, then rotated 270 clockwise
        6: lambda x: np.rot90(x, -1),  # rotated 90 clockwise
        7: lambda x: np.rot90(x[:, ::-1], -1),  # mirrored horizontally, then rotated 90 clockwise
        8: lambda x: np.rot90(x, 1),  # rotated 270 clockwise
    }
    cases: List[Case] = []
    im = Image.fromarray(a)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        raw = exif.tobytes()
        expected = np.ascontiguousarray(upright[o](a))
        for fmt, kw in (("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})):
            data = _save(im, fmt, exif=raw, **kw)
            cases.append(Case("EXIF orientation", f"exif-{o}.{fmt.lower()}", data, "ok", _quadrant_check(expected)))
    # damaged EXIF: out-of-range or mistyped orientation, truncated and garbage EXIF blocks
    for label, raw in (
        ("zero", _exif_with(0)),
        ("nine", _exif_with(9)),
        ("65535", _exif_with(65535)),
        ("truncated", _exif_with(6)[:20]),
        ("garbage", b"Exif\x00\x00" + bytes(range(200))),
        ("bad-offset", b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"),
        (
            "loop",
            _exif_with(6)[:-4] + b"\x08\x00\x00\x00",  # the next-IFD offset points back at the first IFD
        ),
    ):
        data = _save(im, "JPEG", quality=95, exif=raw)
        cases.append(Case("EXIF orientation", f"exif-damaged-{label}.jpg", data, "any"))
    return cases


def _exif_with(orientation: int) -> bytes:
    return b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00" + struct.pack(
        "<HHI", orientation, 0, 0
    )


def _quadrant_check(expected: np.ndarray) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        assert rgb.shape == expected.shape, (rgb.shape, expected.shape)
        h, w = rgb.shape[:2]
        for y in (h // 4, 3 * h // 4):  # quadrant centres, away from JPEG's edge ringing
            for x in (w // 4, 3 * w // 4):
                diff = np.abs(rgb[y, x].astype(int) - expected[y, x].astype(int)).max()
                assert diff < 40, f"pixel ({y}, {x}) is {rgb[y, x]}, expected {expected[y, x]}"

    return check


# ---------------------------------------------------------------------------------------------------- running
def _run_case(case: Case, folder: Path) -> Tuple[str, str]:
    """One case through the chain: ``("ok", "")`` or ``("error", what)``; anything else raises."""
    if case.via_path:
        path = folder / case.name
        path.write_bytes(case.data)
        name = str(path)
        source: object = path
        kwargs = {}
    else:
        name = f"upload/{case.name}"
        source = case.data
        kwargs = {"name": name}
    try:
        rgb = load_rgb(source, **kwargs)  # type: ignore[arg-type]
    except UserError as e:
        if name not in str(e):
            raise AssertionError(f"the error does not name {name}: {e}") from e
        if case.needs_limit_hint and "--max-pixels" not in str(e):
            raise AssertionError(f"an oversized image's error does not mention --max-pixels: {e}") from e
        return "error", e.what
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    assert rgb.shape[0] >= 1 and rgb.shape[1] >= 1
    if case.check is not None:
        case.check(rgb)
    x, lb = letterbox(rgb, INPUT_HW, FILL)
    assert x.shape == (3, *INPUT_HW) and np.isfinite(x).all()
    rh, rw = lb.resized_hw
    assert 1 <= rh <= INPUT_HW[0] and 1 <= rw <= INPUT_HW[1]
    boxes = np.array([[0, 0, INPUT_HW[1], INPUT_HW[0]], [rw * 0.25, rh * 0.25, rw * 0.75, rh * 0.5]], np.float32)
    back = lb.boxes_to_original(boxes)
    h, w = rgb.shape[:2]
    assert np.isfinite(back).all() and back[:, 0::2].max() <= w and back[:, 1::2].max() <= h
    np.testing.assert_allclose(back[0], [0, 0, w, h], rtol=1e-5)
    masks = np.linspace(0, 1, 2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    for method in ("torchvision", "detectron2"):
        pasted = paste_masks(masks, back, (h, w), method)
        assert pasted.shape == (2, h, w)
    return "ok", ""


def _kind(what: str) -> str:
    """An error message with its numbers and byte strings blanked, to count errors by kind."""
    text = what.removeprefix("cannot read image: ")
    text = re.sub(r"b'[^']*'|b\"[^\"]*\"", "b'…'", text)
    text = re.sub(r"\d[\d,]*", "N", text)
    return text if len(text) <= 110 else text[:107] + "..."


def _run_with_limit(case: Case, folder: Path) -> Tuple[str, str]:
    """``_run_case`` in a daemon thread: ``("hang", "")`` when it has used more than CASE_TIMEOUT_S of CPU
    time, or run for WALL_FACTOR times that on the clock (a hang that blocks instead of spinning); the thread
    is then abandoned (a daemon: it cannot keep the test process alive). ``("uncaught", reason)`` when it
    raised. CPU time, not the clock, is the main limit so that a busy shared machine does not fake hangs."""
    result: List[Tuple[str, str]] = []

    def target() -> None:
        try:
            result.append(_run_case(case, folder))
        except BaseException as e:  # noqa: BLE001 - counting them is the point
            result.append(("uncaught", f"{type(e).__name__}: {e}"))

    thread = threading.Thread(target=target, name=f"fuzz {case.name}", daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(CASE_TIMEOUT_S)
    clock = _cpu_clock(thread)
    while thread.is_alive() and clock is not None and time.monotonic() - start < WALL_FACTOR * CASE_TIMEOUT_S:
        try:
            if time.clock_gettime(clock) > CASE_TIMEOUT_S:
                break
        except OSError:  # the thread ended between the two checks
            break
        thread.join(0.05)
    return result[0] if result else ("hang", "")


def _cpu_clock(thread: threading.Thread) -> Optional[int]:
    """The thread's CPU-time clock, where the platform has one (Linux, macOS)."""
    try:
        return time.pthread_getcpuclockid(thread.ident) if thread.is_alive() else None  # type: ignore[arg-type]
    except (AttributeError, OSError):
        return None


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    folder = tmp_path_factory.mktemp("fuzz")
    cases = _corpus()
    tally: Dict[str, Counter] = defaultdict(Counter)
    kinds: Counter = Counter()
    problems: List[str] = []
    for case in cases:
        row = tally[case.category]
        row["cases"] += 1
        status, what = _run_with_limit(case, folder)
        if status == "hang":
            row["hangs"] += 1
            problems.append(f"{case.name}: still running after {CASE_TIMEOUT_S:g} s")
        elif status == "uncaught":
            row["uncaught"] += 1
            problems.append(f"{case.name}: {what}")
        elif status == "ok":
            row["decoded"] += 1
            if case.expect == "error":
                problems.append(f"{case.name}: decoded, but it should have been refused")
        else:
            row["errors"] += 1
            kinds[_kind(what)] += 1
            if case.expect == "ok":
                problems.append(f"{case.name}: refused, but it is a valid image: {what}")
    _write_doc(tally, kinds, len(cases))
    return {"cases": cases, "tally": tally, "problems": problems}


def _write_doc(tally: Dict[str, Counter], kinds: Counter, n: int) -> None:
    lines = [
        "# Image input reliability: fuzzing results",
        "",
        "Written by `tests/test_fuzz_images.py` (do not edit by hand; `python -m pytest tests/test_fuzz_images.py`",
        f"regenerates it). Pillow {PIL.__version__}, numpy {np.__version__}, corpus seed {SEED}, {n} cases, each",
        "through `load_rgb` -> `letterbox` -> `boxes_to_original` -> `paste_masks`. A case passes when it decodes",
        "(valid images: to the expected pixels) or raises a `UserError` that names the file; anything else is an",
        f"uncaught exception, and a case over {CASE_TIMEOUT_S:g} s of CPU time (or {WALL_FACTOR * CASE_TIMEOUT_S:g} s"
        " on the clock) is a hang.",
        "",
        "| category | cases | decoded OK | clear errors | uncaught exceptions | hangs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total: Counter = Counter()
    for category, row in tally.items():
        total.update(row)
        lines.append(
            f"| {category} | {row['cases']} | {row['decoded']} | {row['errors']} | {row['uncaught']} | {row['hangs']} |"
        )
    lines.append(
        f"| **all** | **{total['cases']}** | **{total['decoded']}** | **{total['errors']}** | "
        f"**{total['uncaught']}** | **{total['hangs']}** |"
    )
    lines += ["", "The clear errors by kind (numbers shown as N):", "", "| errors | message |", "|---:|---|"]
    for text, count in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))[:25]:
        lines.append(f"| {count} | {text.replace('|', '/')} |")
    if len(kinds) > 25:
        lines.append(
            f"| {sum(kinds.values()) - sum(c for _, c in kinds.most_common(25))} | ({len(kinds) - 25} other kinds) |"
        )
    atomic_write_text(DOC, "\n".join(lines) + "\n")


def test_corpus_is_large_and_covers_every_category(fuzz_results):
    tally = fuzz_results["tally"]
    assert sum(row["cases"] for row in tally.values()) >= 1000
    for category in ("valid: every format and mode", "EXIF orientation", "thin images (1xN, Nx1)"):
        assert tally[category]["decoded"] >= 20, category
    assert tally["absurd declared sizes"]["errors"] >= 70


def test_no_uncaught_exceptions_no_hangs_and_errors_name_the_file(fuzz_results):
    problems = fuzz_results["problems"]
    assert not problems, f"{len(problems)} failing cases:\n" + "\n".join(problems[:40])
    tally = fuzz_results["tally"]
    assert sum(row["uncaught"] + row["hangs"] for row in tally.values()) == 0


def test_doc_is_written(fuzz_results):
    text = DOC.read_text()
    n = len(fuzz_results["cases"])
    assert f"{n} cases" in text and f"Pillow {PIL.__version__}" in text and "| **all** |" in text


def test_harness_reports_hangs_uncaught_exceptions_and_unnamed_errors(tmp_path, monkeypatch):
    import sys

    this = sys.modules[__name__]

    good = _save(Image.fromarray(np.zeros((4, 4, 3), np.uint8)), "PNG")
    monkeypatch.setattr(this, "CASE_TIMEOUT_S", 0.2)
    blocked = Case("t", "blocked.png", good, check=lambda rgb: time.sleep(3.0))  # over 10 x 0.2 s on the clock
    assert _run_with_limit(blocked, tmp_path) == ("hang", "")

    def spin(rgb: np.ndarray) -> None:
        end = time.thread_time() + 1.0
        while time.thread_time() < end:
            pass

    assert _run_with_limit(Case("t", "spinning.png", good, check=spin), tmp_path) == ("hang", "")

    def crash(rgb: np.ndarray) -> None:
        raise ZeroDivisionError("division by zero")

    assert _run_with_limit(Case("t", "crash.png", good, check=crash), tmp_path)[0] == "uncaught"

    def anonymous(source, **kw):  # noqa: ANN001, ANN003 - an error that does not name the file
        raise UserError("cannot read image")

    monkeypatch.setattr(this, "load_rgb", anonymous)
    status, what = _run_with_limit(Case("t", "anon.png", good), tmp_path)
    assert status == "uncaught" and "does not name" in what
    # the two abandoned cases end on their own (3 s asleep, 1 s of CPU): wait for them here, so that the spinning
    # one does not use a core during the tests after this one (a later test that measures its own CPU time failed
    # when it ran next)
    for t in threading.enumerate():
        if t.name in ("fuzz blocked.png", "fuzz spinning.png"):
            t.join(timeout=30)
