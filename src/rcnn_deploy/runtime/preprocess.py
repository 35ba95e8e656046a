"""Image loading and letterboxing to a model's fixed input size (numpy + Pillow; Python 3.9 compatible).

Loading (:func:`load_rgb`, :func:`read_image`) turns a file or encoded bytes into ``[H, W, 3]`` uint8 RGB:

* formats: JPEG (and MPO, the JPEG variant some cameras write), PNG, BMP, GIF, TIFF, WebP and PPM/PGM/PBM;
  other files (HEIC, PDF, PSD, ...) are refused with a message that says what they look like;
* the EXIF orientation is applied, like Detectron2's ``read_image`` (a phone photo taken upright comes out
  upright); a damaged EXIF block is ignored, never fatal;
* every Pillow mode becomes RGB: alpha is dropped (the stored colour is kept, as Pillow's ``convert("RGB")``
  and Detectron2 do) for LA, PA, P with transparency, RGBA and premultiplied modes; 16-bit images are scaled
  from 0-65535 to 0-255; 32-bit integer images likewise when their values fit 0-65535, else stretched from
  their minimum to maximum; float images are taken as 0-1 when they fit it, as 0-255 when they fit that,
  else stretched (NaN becomes 0, infinities 0 or 255); CMYK, YCbCr, LAB and HSV are converted by Pillow;
* the image size is checked from the header, before anything is decoded: more than ``max_pixels`` pixels
  (default :data:`DEFAULT_MAX_PIXELS`, 100 megapixels: a 12000x8000 photo; the CLI's ``--max-pixels``) is
  refused, so a few bytes claiming 100000x100000 pixels cost nothing (a header within the limit can still
  make a tiny file decode to that many pixels: about 2 s and 1 GB at 100 megapixels; a server that wants
  less passes a lower limit). A limit above twice Pillow's own (``PIL.Image.MAX_IMAGE_PIXELS``, which some
  decoders check too) raises Pillow's to match;
* with ``target_hw`` (the model input size), a JPEG at least twice the size the letterbox needs is decoded
  at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's draft mode), never below that size; the result is
  then smaller than the original: :func:`read_image` reports the original size for :func:`letterbox`;
* anything a decoder raises (truncated or damaged data, absurd headers, decompression bombs, out of memory)
  becomes one :class:`~rcnn_deploy.errors.UserError` naming the file, the reason and what to do.

Letterboxing: an image is resized keeping its aspect ratio so that it fits ``H x W`` (like torchvision's
``GeneralizedRCNNTransform`` with min/max size equal to the input), placed at the top-left corner, and the
rest is filled with the model's pixel mean — which the in-graph normalisation turns into exactly 0, the value
torchvision pads its normalised batch with. :class:`Letterbox` records the scale so boxes and masks can be
mapped back to the original image exactly; a very thin image (1 x 5000) keeps at least one row or column.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError
from ._opencv import MAX_SIDE, opencv

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
LIST_SUFFIXES = (".txt", ".lst")  # a text file listing image paths, one a line
DEFAULT_MAX_PIXELS = 100_000_000  # width x height; the CLI's --max-pixels
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # Pillow plugins tried, in this order
REQUEST_BYTES = "<request bytes>"  # how encoded bytes without a name= are named in errors

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

_DAMAGED_FIX = "re-export or re-download the image; if other programs open it, save it again as PNG or JPEG"
_EXIF_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270"}
_EXIF_TRANSPOSE.update({7: "TRANSVERSE", 8: "ROTATE_90"})


@dataclass(frozen=True)
class Letterbox:
    """Where an original ``(orig_h, orig_w)`` image sits inside the model input: scaled by ``scale``."""

    orig_h: int
    orig_w: int
    scale: float

    def __post_init__(self) -> None:
        if self.orig_h < 1 or self.orig_w < 1 or not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"invalid letterbox {self.orig_h}x{self.orig_w} (HxW) at scale {self.scale}")

    @classmethod
    def fit(cls, orig_h: int, orig_w: int, input_hw: Tuple[int, int]) -> Letterbox:
        """The letterbox of an ``orig_h x orig_w`` image into ``input_hw``: the largest scale that fits."""
        ih, iw = int(input_hw[0]), int(input_hw[1])
        return cls(int(orig_h), int(orig_w), min(ih / orig_h, iw / orig_w))

    def size_in(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        """:attr:`resized_hw` within ``input_hw`` (rounding never makes the image overflow the input)."""
        rh, rw = self.resized_hw
        return min(rh, int(input_hw[0])), min(rw, int(input_hw[1]))

    @property
    def resized_hw(self) -> Tuple[int, int]:
        """The image's size inside the input; at least one pixel a side (a 1 x 5000 image into 320 x 320 is
        1 x 320, not 0 x 320)."""
        return max(int(round(self.orig_h * self.scale)), 1), max(int(round(self.orig_w * self.scale)), 1)

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel boxes -> original-image boxes (per-axis ratio of original to resized size, as
        torchvision's ``resize_boxes``), clipped to the original image."""
        rh, rw = self.resized_hw
        ratio = np.array([self.orig_w / rw, self.orig_h / rh] * 2, dtype=np.float32)
        out = boxes.astype(np.float32) * ratio
        out[:, 0::2] = np.clip(out[:, 0::2], 0, self.orig_w)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, self.orig_h)
        return out


@dataclass(frozen=True)
class DecodedImage:
    """What :func:`read_image` returns: ``rgb`` ``[h, w, 3]`` uint8, C-contiguous, EXIF orientation applied;
    ``orig_hw``: the full image's (height, width) after orientation — larger than ``rgb`` when a JPEG was
    decoded at reduced size for ``target_hw``; ``name``: how errors name the source; ``format``: Pillow's."""

    rgb: np.ndarray
    orig_hw: Tuple[int, int]
    name: str
    format: str


# ------------------------------------------------------------------------------------------------ finding files
def find_images(source: Union[str, Path]) -> List[Path]:
    """Image paths from one of: an image file; a folder (its files with an image suffix, sorted; subfolders
    are not searched); a glob pattern (``**`` recurses); a ``.txt`` / ``.lst`` file listing image paths, one
    a line, relative to the list's folder (blank lines and lines starting with ``#`` are skipped). Raises
    UserError when the path does not exist or nothing is found, saying which."""
    text = str(source)
    p = Path(source)
    suffixes = ", ".join(IMAGE_SUFFIXES)
    if p.is_dir():
        entries = list(p.iterdir())
        files = sorted(f for f in entries if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            dirs = sum(1 for f in entries if f.is_dir())
            what = f"no images in this folder (looked for {suffixes}; it has {len(entries) - dirs} other files"
            what += f" and {dirs} subfolders, which are not searched)"
            raise UserError(
                what, where=p, fix=f"pass the folder that holds the images, or a pattern like '{p}/**/*.jpg'"
            )
        return files
    if p.is_file():
        return _read_list(p) if p.suffix.lower() in LIST_SUFFIXES else [p]
    if any(c in text for c in "*?["):
        import glob

        matches = sorted(Path(f) for f in glob.glob(text, recursive=True))
        files = [f for f in matches if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        if files:
            return files
        if matches:
            what = f"{len(matches)} paths match this pattern but none is an image file ({suffixes})"
        else:
            what = "no file matches this pattern"
        raise UserError(
            what, where=text, fix="check the folder and the pattern (quote it so the shell leaves it alone)"
        )
    if p.exists():
        raise UserError("is neither a file nor a folder", where=p, fix="pass an image, a folder of images or a list")
    parent = p.parent
    fix = "check the path" + ("" if parent.is_dir() else f" (its folder {parent} does not exist either)")
    raise UserError("does not exist", where=p, fix=fix)


def _read_list(path: Path) -> List[Path]:
    """The image paths a list file names (relative ones are relative to the list's folder)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"cannot read this image list: {e}", where=path, fix="a list is UTF-8 text, one path a line"
        ) from e
    entries: List[Tuple[int, Path]] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line).expanduser()
            entries.append((number, entry if entry.is_absolute() else path.parent / entry))
    if not entries:
        raise UserError("this image list names no images", where=path, fix="write one image path a line")
    if not any(e.exists() for _, e in entries):  # all missing: the list is wrong, not a few of its images
        number, first = entries[0]
        raise UserError(
            f"none of the {len(entries)} images this list names exists (line {number}: {first})",
            where=path,
            fix=f"paths in a list are relative to its folder, {path.parent}",
        )
    return [e for _, e in entries]  # a missing one fails when it is loaded, like any unreadable image


# ------------------------------------------------------------------------------------------------------ decoding
def load_rgb(
    source: ImageSource,
    *,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    target_hw: Optional[Tuple[int, int]] = None,
    name: Optional[str] = None,
) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (C-contiguous, EXIF orientation applied) from an image file or its encoded
    bytes; raises UserError naming the file (or ``name``, default ``"<request bytes>"`` for bytes) when it
    cannot be decoded. ``max_pixels``: refuse larger images (None: no limit). ``target_hw``: the model input
    size; a large JPEG may then be decoded smaller (see :func:`read_image`, which also gives the original
    size)."""
    return read_image(source, max_pixels=max_pixels, target_hw=target_hw, name=name).rgb


def read_image(
    source: ImageSource,
    *,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    target_hw: Optional[Tuple[int, int]] = None,
    name: Optional[str] = None,
) -> DecodedImage:
    """Decode ``source`` (a path, or encoded bytes such as an HTTP request body) to a :class:`DecodedImage`.

    With ``target_hw`` a JPEG at least twice as large as its letterboxed size inside ``target_hw`` is decoded
    at a reduced scale that is still at least that size; pass ``orig_hw`` on to :func:`letterbox` so boxes
    map back to the full image. Without it (or for other formats) the image is decoded at full size, exactly.
    """
    if max_pixels is not None and int(max_pixels) < 1:
        raise UserError(f"the pixel limit must be at least 1, got {max_pixels}", where="--max-pixels")
    if target_hw is not None and (len(target_hw) != 2 or min(int(v) for v in target_hw) < 1):
        raise UserError(f"target size must be two positive integers (height, width), got {target_hw}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        where = name or REQUEST_BYTES
        with io.BytesIO(source) as buf:
            return _decode(buf, "", where, max_pixels, target_hw)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_rgb takes a path or encoded image bytes, not {type(source).__name__}")
    path = Path(source)
    where = name or str(source)
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed by the with below, once the open errors are told apart
    except FileNotFoundError:
        raise UserError("cannot read image: the file does not exist", where=where, fix="check the path") from None
    except IsADirectoryError:
        raise UserError("cannot read image: this is a folder", where=where, fix="pass image files") from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise UserError(
            f"cannot read image: cannot open it ({reason})", where=where, fix="check its permissions"
        ) from e
    with fp:
        return _decode(fp, str(path), where, max_pixels, target_hw)


def _decode(
    fp: Any, filename: str, where: str, max_pixels: Optional[int], target_hw: Optional[Tuple[int, int]]
) -> DecodedImage:
    from PIL import Image

    size = None
    _raise_pillow_limit(max_pixels)
    try:
        im = _open(fp, filename, where, max_pixels)
        fmt = str(im.format or "")
        w, h = size = im.size
        _check_size(w, h, where, max_pixels)
        orientation = None
        oh, ow = h, w
        if fmt == "JPEG" and im.mode == "RGB" and _orientation(im) == 1 and not _would_draft(im, target_hw):
            rgb = _turbo_jpeg(fp, h, w)
            if rgb is not None:
                return DecodedImage(rgb, (h, w), where, fmt)
        if target_hw is not None and fmt in ("JPEG", "MPO"):
            orientation = _orientation(im)
            if orientation >= 5:
                oh, ow = w, h
            _draft(im, (oh, ow), orientation >= 5, target_hw)
        im.load()
        if orientation is None:
            orientation = _orientation(im)
            if orientation >= 5:
                oh, ow = w, h
        if orientation != 1:
            im = im.transpose(getattr(Image.Transpose, _EXIF_TRANSPOSE[orientation]))
        rgb = _to_rgb(im, where)
    except UserError:
        raise
    except MemoryError:
        shape = f" a {size[0]}x{size[1]} image" if size else " it"
        raise UserError(
            f"cannot read image: not enough memory to decode{shape}", where, "lower --max-pixels or free memory"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's own guard in some
        # decoders (GIF frames, TIFF tiles); its warning is an exception under python -W error
        raise UserError(
            f"cannot read image: it is too large to decode safely ({e})", where, "raise the limit with --max-pixels"
        ) from e
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem, not ours
        raise UserError(f"cannot read image: it is damaged or truncated ({_reason(e)})", where, _DAMAGED_FIX) from e
    return DecodedImage(rgb, (oh, ow), where, fmt)


def probe_gpu_jpeg(
    path: Union[str, Path], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
) -> Optional[Tuple[bytes, Tuple[int, int]]]:
    """The file's bytes and (height, width) when a GPU JPEG decoder (nvJPEG) decodes it to the image
    :func:`load_rgb` gives (up to the decoders' IDCT and chroma upsampling rounding): a JPEG whose header
    parses, within ``max_pixels``, 3-channel colour (Pillow mode RGB), no EXIF rotation, and whole
    (:func:`jpeg_complete`: nvJPEG decodes a file cut short without an error). None otherwise (decode it on the
    host, which gives the reason a bad file fails); a missing file or a header beyond the limit raises the
    UserError :func:`load_rgb` would."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError("cannot read image: the file does not exist", where=where, fix="check the path") from None
    except OSError:
        return None  # load_rgb tells the reason
    if data[:3] != b"\xff\xd8\xff" or not jpeg_complete(data):
        return None
    _raise_pillow_limit(max_pixels)
    try:
        with io.BytesIO(data) as fp:
            im = _open(fp, where, where, max_pixels)
            _check_size(im.size[0], im.size[1], where, max_pixels)
            if im.format != "JPEG" or im.mode != "RGB" or _orientation(im) != 1:
                return None
            w, h = im.size
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - anything odd: the host decoder decides, with its own message
        return None
    return data, (int(h), int(w))


def jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG file's bytes reach its end: an EOI marker (FF D9) after the first scan's header. The
    header segments before the scan are stepped over by their lengths (an EXIF thumbnail in APP1 holds an EOI of
    its own), and entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart marker), so a
    file cut short anywhere before its end has none after that point. Bytes after the EOI (data some cameras
    append) are allowed, as the host decoders allow them. False also for a layout this walk does not know (the
    host decoder then decides). Run 36: nvJPEG decoded a JPEG cut in half without an error, and the GPU-decode
    path returned detections for it where the host path reported the file truncated."""
    pos, n = 2, len(data)  # after SOI
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # TEM, RSTn, SOI, EOI: no length (EOI here: no scan)
            if marker == 0xD9:
                return False
            pos += 2
            continue
        end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker == 0xDA:  # start of scan: the rest is scans (and the segments between them) up to the EOI
            return data.rfind(b"\xff\xd9", end) >= 0  # from the end: where the EOI of a whole file is
        pos = end
    return False  # the file ends inside its header segments


def _openers() -> List[Tuple[str, Callable[..., Any], Optional[Callable[[bytes], Any]]]]:
    """Pillow's opener and signature test of each format in DECODE_FORMATS (importing its plugin registers it)."""
    global _OPENERS
    if _OPENERS is None:
        from PIL import (  # noqa: F401 - imported to register their openers
            BmpImagePlugin,
            GifImagePlugin,
            Image,
            JpegImagePlugin,
            PngImagePlugin,
            PpmImagePlugin,
            TiffImagePlugin,
            WebPImagePlugin,
        )

        _OPENERS = [(f, *Image.OPEN[f]) for f in DECODE_FORMATS if f in Image.OPEN]
    return _OPENERS


_OPENERS: Optional[List[Tuple[str, Callable[..., Any], Optional[Callable[[bytes], Any]]]]] = None


def _check_size(w: int, h: int, where: str, max_pixels: Optional[int]) -> None:
    if w < 1 or h < 1:
        raise UserError(f"cannot read image: its header declares a size of {w}x{h}", where, _DAMAGED_FIX)
    if max_pixels is not None and w * h > max_pixels:
        raise UserError(
            f"cannot read image: it is {w}x{h} = {w * h:,} pixels, above the limit of {int(max_pixels):,} "
            "(a guard against decompression bombs)",
            where,
            f"if the image is genuine, raise the limit with --max-pixels {w * h} (max_pixels= in Python) "
            "or downscale the image",
        )


def _webp_size(head: bytes) -> Optional[Tuple[int, int]]:
    """A WebP's declared (width, height), read before Pillow opens it (libwebp allocates the canvas then)."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8X":  # extended format: the canvas size, minus one, in 24 bits each
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if kind == b"VP8L" and head[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: 14 bits each after the start code
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    return None


def _open(fp: Any, filename: str, where: str, max_pixels: Optional[int]) -> Any:
    """Parse the header with the plugin whose signature matches, as ``PIL.Image.open`` does, but only for
    DECODE_FORMATS and without Pillow's global size check (``max_pixels`` replaces it, checked next)."""
    prefix = fp.read(32)
    if not prefix:
        raise UserError("cannot read image: the file is empty (0 bytes)", where, "re-copy or re-download it")
    problems: List[str] = []
    for fmt, factory, accept in _openers():
        ok = accept(prefix) if accept else True
        if isinstance(ok, str):  # the plugin recognises the file but cannot decode it (e.g. no WebP support)
            problems.append(ok)
        elif ok:
            declared = _webp_size(prefix) if fmt == "WEBP" else None
            if declared is not None:
                _check_size(*declared, where, max_pixels)
            fp.seek(0)
            try:
                return factory(fp, filename)
            except (SyntaxError, IndexError, TypeError, KeyError, EOFError, struct.error) as e:
                problems.append(f"{fmt} header: {_reason(e)}")
    if problems:
        raise UserError(f"cannot read image: it is damaged ({'; '.join(problems)})", where, _DAMAGED_FIX)
    raise UserError(
        f"cannot read image: {_looks_like(prefix)}",
        where,
        "convert it to JPEG or PNG (supported: JPEG, PNG, BMP, GIF, TIFF, WebP, PPM)",
    )


def _looks_like(prefix: bytes) -> str:
    kinds = (
        ((b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypheim", b"ftypheis", b"ftypmif1", b"ftypmsf1"), "HEIC/HEIF"),
        ((b"ftypavif", b"ftypavis"), "AVIF"),
    )
    for brands, kind in kinds:
        if prefix[4:12] in brands:
            return f"it is a {kind} image, which is not supported"
    magic = (
        (b"%PDF", "a PDF document"),
        (b"8BPS", "a Photoshop document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image, which is not supported"),
        (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream, which is not supported"),
        (b"\x00\x00\x01\x00", "an icon (ICO) file, which is not supported"),
    )
    for head, kind in magic:
        if prefix.startswith(head):
            return f"it is {kind}"
    if prefix.lstrip()[:1] == b"<":
        return "it is text (HTML, XML or SVG), not an image"
    return "not an image in a supported format"


def _reason(e: BaseException) -> str:
    if isinstance(e, SyntaxError) and e.__cause__ is not None:  # Pillow wraps a plugin's IndexError, KeyError...
        return _reason(e.__cause__)
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, (OSError, ValueError, SyntaxError)):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 200 else text[:197] + "..."


def _raise_pillow_limit(max_pixels: Optional[int]) -> None:
    """Pillow checks its own limit (``PIL.Image.MAX_IMAGE_PIXELS``, an error above twice it) inside some
    decoders; a ``max_pixels`` the user raised above that is honoured by raising Pillow's along with it."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and (max_pixels is None or max_pixels > 2 * limit):
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else int(max_pixels)


def _orientation(im: Any) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - damaged EXIF: use the pixels as stored, like a viewer does
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _turbo_jpeg(fp: Any, h: int, w: int) -> Optional[np.ndarray]:
    """A colour JPEG decoded by simplejpeg (libjpeg-turbo straight into RGB; Pillow also decodes with
    libjpeg-turbo and the same defaults, ISLOW IDCT and fancy chroma upsampling: the same pixels, 12.8 against
    15.8 ms for a 1920x1080 photo on the 2-core machine, benchmarks/results/cpu/decode_bench.json; Pillow decodes
    into an RGBX buffer and copies out). Strict: any libjpeg warning (corrupt data, a truncated file) returns
    None, and Pillow decodes the file and gives its verdict, as without simplejpeg. None too without simplejpeg
    (the ``[jpeg]`` extra), or for a result of another size."""
    try:
        import simplejpeg  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    fp.seek(0)
    data = fp.read()
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except (ValueError, RuntimeError):  # a warning or error of libjpeg's: Pillow's turn
        return None
    if rgb.shape != (h, w, 3):
        return None
    return np.ascontiguousarray(rgb)


def _would_draft(im: Any, target_hw: Optional[Tuple[int, int]]) -> bool:
    """Whether :func:`_draft` would decode ``im`` (an unrotated JPEG) at a reduced scale for ``target_hw``."""
    if target_hw is None:
        return False
    w, h = im.size
    rh, rw = Letterbox.fit(h, w, target_hw).size_in(target_hw)
    return min(w // rw, h // rh) >= 2


def _draft(im: Any, orig_hw: Tuple[int, int], transposed: bool, target_hw: Tuple[int, int]) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale when the letterbox needs at most half the size."""
    oh, ow = orig_hw
    rh, rw = Letterbox.fit(oh, ow, target_hw).size_in(target_hw)
    need_w, need_h = (rh, rw) if transposed else (rw, rh)  # in the stored (unrotated) image
    w, h = im.size
    if min(w // need_w, h // need_h) >= 2:
        im.draft(None, (need_w, need_h))


def _to_rgb(im: Any, where: str) -> np.ndarray:
    """Any Pillow mode -> ``[H, W, 3]`` uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _gray_to_uint8(np.asarray(im))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the palette colours; converting straight to RGB warns about the transparency
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError:
        pass
    for via in ("RGBA", "LA"):  # e.g. "La" (premultiplied) converts only to "LA"
        try:
            return np.asarray(im.convert(via).convert("RGB"))
        except ValueError:
            continue
    raise UserError(f"cannot read image: its colour mode {mode} cannot be converted to RGB", where, _DAMAGED_FIX)


def _gray_to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float grey levels -> uint8 (see the module docstring for the rules)."""
    lo: float
    hi: float
    if a.dtype.kind in "iu":
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 65535:  # a 16-bit image (Pillow stores some in 32-bit mode "I")
            return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return _levels(a.astype(np.float32), float(lo), float(hi))
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    values = a if finite.all() else a[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1:
        return _levels(a, 0.0, 1.0)
    if lo >= 0 and hi <= 255:
        return _levels(a, 0.0, 255.0)
    return _levels(a, lo, hi)


def _levels(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo..hi`` -> 0..255, rounded; +inf -> 255, -inf and NaN -> 0."""
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    scale = 255.0 / (hi - lo)  # a Python float: hi - lo cannot overflow even for float32's extremes
    with np.errstate(all="ignore"):  # infinities and NaN are handled by the clip and nan_to_num
        out = a * np.float32(scale) - np.float32(lo * scale)
        return np.nan_to_num(np.rint(np.clip(out, 0, 255)), nan=0.0).astype(np.uint8)


# -------------------------------------------------------------------------------------------------- letterbox
def letterbox(
    image: np.ndarray,
    input_hw: Tuple[int, int],
    fill_rgb: Sequence[float],
    orig_hw: Optional[Tuple[int, int]] = None,
    dtype: Any = np.float32,
    resize: str = "torchvision",
    out: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, Letterbox]:
    """``[H, W, 3]`` uint8 RGB -> ``[3, IH, IW]`` RGB 0-255 in ``dtype`` and its :class:`Letterbox`.

    ``orig_hw``: the full image's size when ``image`` was decoded smaller (:attr:`DecodedImage.orig_hw`); the
    letterbox is then the full image's, so its boxes map back to the full image. ``dtype``: float32 (the
    default) or uint8 for a graph that takes bytes (written directly, the fill rounded to whole values).
    ``resize``: the model's resampling (:attr:`ModelSpec.resize <rcnn_deploy.config.ModelSpec>`), see
    :func:`resize_rgb`. ``out``: a ``[3, IH, IW]`` array of ``dtype`` to write into (every element is written,
    e.g. a reused shared-memory slot) instead of a new one; it is what is returned."""
    _check_rgb(image)
    h, w = image.shape[:2]
    oh, ow = (h, w) if orig_hw is None else (int(orig_hw[0]), int(orig_hw[1]))
    ih, iw = input_hw
    box = Letterbox.fit(oh, ow, input_hw)
    rh, rw = box.size_in(input_hw)
    resized = image if (rh, rw) == (h, w) else resize_rgb(image, (rh, rw), resize)
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty((3, ih, iw), dtype=dtype)  # written channel-first directly: no transposed copy
    elif out.shape != (3, ih, iw) or out.dtype != dtype:
        raise ValueError(f"letterbox out= must be {(3, ih, iw)} {dtype}, got {out.shape} {out.dtype}")
    fill = np.asarray(fill_rgb, dtype=np.float64).reshape(3, 1, 1)
    if rh < ih:
        out[:, rh:, :] = np.rint(fill) if dtype == np.uint8 else fill
    if rw < iw:
        out[:, :rh, rw:] = np.rint(fill) if dtype == np.uint8 else fill
    _channels_first(resized, out[:, :rh, :rw])
    return out, box


def _channels_first(hwc: np.ndarray, dst: np.ndarray) -> None:
    """``dst[c] = hwc[..., c]`` (``dst``: ``[3, h, w]``, maybe a view with row padding): OpenCV's ``split`` into
    the three planes where it can write them in place (uint8 to uint8: about 4x faster than numpy's strided
    copy), else numpy (which also converts, e.g. to float32). The same values either way."""
    cv2 = opencv()
    if cv2 is not None and hwc.dtype == np.uint8 and dst.dtype == np.uint8 and hwc.flags.c_contiguous:
        planes = [dst[c] for c in range(3)]
        if all(p.strides[-1] == 1 for p in planes):
            got = cv2.split(hwc, planes)
            if all(g is p or (g.ctypes.data, g.shape, g.strides) == (p.ctypes.data, p.shape, p.strides)
                   for g, p in zip(got, planes)):  # fmt: skip
                return
            # OpenCV made arrays of its own: nothing was written into dst
    dst[...] = hwc.transpose(2, 0, 1)


RESIZE_METHODS = ("torchvision", "detectron2")


def resize_rgb(image: np.ndarray, size_hw: Tuple[int, int], method: str = "torchvision") -> np.ndarray:
    """Resize ``[H, W, 3]`` uint8 to ``size_hw`` as each framework's preprocessing does.

    * ``"torchvision"``: bilinear with ``align_corners=False`` and no antialiasing (``F.interpolate`` in
      ``GeneralizedRCNNTransform``), by OpenCV's ``INTER_LINEAR`` (the same sampling, 11-bit fixed-point weights:
      within 1 grey level of the exact value, about 3 ms for 1920x1080 -> 1344x756), or numpy when OpenCV is
      not installed;
    * ``"detectron2"``: Pillow's antialiased ``BILINEAR`` (``ResizeShortestEdge``), about 8x slower.
    """
    rh, rw = int(size_hw[0]), int(size_hw[1])
    if method == "detectron2":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR))
    if method != "torchvision":
        raise ValueError(f"unknown resize method {method!r}; use one of {', '.join(RESIZE_METHODS)}")
    cv2 = opencv()
    if cv2 is not None and max(rh, rw, *image.shape[:2]) < MAX_SIDE:
        return cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return bilinear_resize_numpy(image, (rh, rw))


def resize_taps(n_out: int, n_in: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``"torchvision"`` resize along one axis from ``n_in`` to ``n_out`` samples: each output sample's two
    source indices (int64) and the second one's weight (float32); see :func:`bilinear_resize_numpy`."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def host_resize_is_opencv(in_hw: Tuple[int, int], out_hw: Tuple[int, int], method: str = "torchvision") -> bool:
    """Whether :func:`resize_rgb` resizes ``in_hw`` to ``out_hw`` with OpenCV's fixed-point ``INTER_LINEAR`` here
    (else numpy's float resize, or Pillow's for ``"detectron2"``): what a GPU letterbox must reproduce."""
    return method == "torchvision" and opencv() is not None and max(*in_hw, *out_hw) < MAX_SIDE


# OpenCV's uint8 INTER_LINEAR, reproduced exactly (cv2.resize on 8-bit images; tests compare them bit for bit):
# per axis each output sample reads source samples i0, i1 with weights c0, c1 out of 2048 (11 bits), the float32
# fraction of (dst + 0.5) * in / out - 0.5 rounded to even, each weight on its own. The horizontal pass sums
# S[i0] * c0 + S[i1] * c1 in int32; the vertical pass, as OpenCV's SIMD kernel and its scalar tail do,
# ((c0 * (D0 >> 4)) >> 16) + ((c1 * (D1 >> 4)) >> 16) + 2 >> 2. Columns clamp at the edges (the fraction set to
# 0 there); rows do not (both rows clamped into the image, the fraction kept).
OPENCV_COEF_ONE = 2048


def opencv_linear_taps(n_out: int, n_in: int, clamp_fraction: bool) -> Tuple[np.ndarray, ...]:
    """OpenCV's ``INTER_LINEAR`` taps along one axis from ``n_in`` to ``n_out`` samples: ``(i0, i1, c0, c1)``,
    int64; ``clamp_fraction``: True for columns, False for rows (see above)."""
    d = np.arange(int(n_out), dtype=np.float64)
    f = ((d + 0.5) * (1.0 / (int(n_out) / int(n_in))) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_fraction:
        low, high = s < 0, s >= n_in - 1
        s[low], f[low] = 0, 0
        s[high], f[high] = n_in - 1, 0
    c0 = np.rint((np.float32(1) - f) * np.float32(OPENCV_COEF_ONE)).astype(np.int64)
    c1 = np.rint(f * np.float32(OPENCV_COEF_ONE)).astype(np.int64)
    return np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1), c0, c1


def opencv_linear_resize_chw(src: Any, x_taps: Sequence[Any], y_taps: Sequence[Any]) -> Any:
    """OpenCV's ``INTER_LINEAR`` arithmetic on a ``[C, H, W]`` int32 image, numpy or torch alike (the GPU
    letterbox of the PyTorch backend runs it on the device): ``x_taps`` / ``y_taps`` are
    :func:`opencv_linear_taps` of the columns and rows (``(i0, i1, c0, c1)``, in ``src``'s library); the result
    is ``[C, h, w]`` integers 0 .. 255, still int32/int64."""
    x0, x1, a0, a1 = x_taps
    y0, y1, b0, b1 = y_taps
    t = (src[:, :, x0] * a0 + src[:, :, x1] * a1) >> 4  # the horizontal pass, >> 4: [C, H, w]
    return (((b0[:, None] * t[:, y0]) >> 16) + ((b1[:, None] * t[:, y1]) >> 16) + 2) >> 2


def opencv_linear_resize_numpy(image: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)`` of an ``[H, W, C]`` uint8 image in numpy
    integer arithmetic (the reference of the GPU letterboxes that reproduce the host's OpenCV resize)."""
    x_taps = opencv_linear_taps(int(size_hw[1]), image.shape[1], True)
    y_taps = opencv_linear_taps(int(size_hw[0]), image.shape[0], False)
    out = opencv_linear_resize_chw(image.transpose(2, 0, 1).astype(np.int32), x_taps, y_taps)
    return out.transpose(1, 2, 0).astype(np.uint8)


LETTERBOX_RESAMPLERS = ("float", "opencv")


def letterbox_taps(
    sizes_hw: Sequence[Tuple[int, int]],
    input_hw: Tuple[int, int],
    buffer_hw: Tuple[int, int],
    resampler: str = "opencv",
) -> Dict[str, np.ndarray]:
    """The size-dependent inputs of the letterbox graph (:mod:`rcnn_deploy.export.letterbox_graph`) for a batch
    of decoded images of ``sizes_hw``, each at the top left of a ``buffer_hw`` slot: gather indices into the
    batch's rows and columns, weights and the inside-the-image masks. ``resampler`` is the graph's
    (:data:`LETTERBOX_RESAMPLERS`): ``"float"``: ``wy``/``wx`` are lerp weights, and the graph's output equals
    :func:`letterbox` with the numpy resize (:func:`bilinear_resize_numpy`) up to float rounding; ``"opencv"``:
    they are OpenCV's two integer weights packed as ``c0 * 4096 + c1`` (exact in float32), and the output equals
    :func:`letterbox` with OpenCV's resize exactly."""
    if resampler not in LETTERBOX_RESAMPLERS:
        raise ValueError(f"unknown letterbox resampler {resampler!r}; use one of {', '.join(LETTERBOX_RESAMPLERS)}")
    ih, iw = int(input_hw[0]), int(input_hw[1])
    bh, bw = int(buffer_hw[0]), int(buffer_hw[1])
    n = len(sizes_hw)
    out = {
        "y0": np.zeros((n, ih), np.int32),
        "y1": np.zeros((n, ih), np.int32),
        "wy": np.zeros((n, ih, 1), np.float32),
        "x0": np.zeros((n, iw), np.int32),
        "x1": np.zeros((n, iw), np.int32),
        "wx": np.zeros((n, iw, 1), np.float32),
        "vy": np.zeros((n, 1, ih, 1), np.float32),
        "vx": np.zeros((n, iw, 1, 1), np.float32),
    }
    for b, (h, w) in enumerate(sizes_hw):
        h, w = int(h), int(w)
        if h > bh or w > bw:
            raise ValueError(f"image {b} of {h}x{w} does not fit the batch buffer of {bh}x{bw}")
        rh, rw = Letterbox.fit(h, w, (ih, iw)).size_in((ih, iw))
        if (rh, rw) == (h, w):  # no resize (letterbox copies): taps that read each pixel with weight 0 / all
            y0, y1, wy = np.arange(h), np.arange(h), np.zeros(h, np.float32)
            x0, x1, wx = np.arange(w), np.arange(w), np.zeros(w, np.float32)
            if resampler == "opencv":
                wy[:], wx[:] = _packed(OPENCV_COEF_ONE, 0), _packed(OPENCV_COEF_ONE, 0)
        elif resampler == "opencv":
            y0, y1, c0, c1 = opencv_linear_taps(rh, h, False)
            wy = _packed(c0, c1)
            x0, x1, c0, c1 = opencv_linear_taps(rw, w, True)
            wx = _packed(c0, c1)
        else:
            y0, y1, wy = resize_taps(rh, h)
            x0, x1, wx = resize_taps(rw, w)
        pad = _packed(OPENCV_COEF_ONE, 0) if resampler == "opencv" else 0.0
        out["y0"][b, :rh], out["y1"][b, :rh], out["wy"][b, :rh, 0] = b * bh + y0, b * bh + y1, wy
        out["y0"][b, rh:] = out["y1"][b, rh:] = b * bh  # padding rows read a valid row, then are masked
        out["wy"][b, rh:, 0] = pad
        out["x0"][b, :rw], out["x1"][b, :rw], out["wx"][b, :rw, 0] = b * bw + x0, b * bw + x1, wx
        out["x0"][b, rw:] = out["x1"][b, rw:] = b * bw
        out["wx"][b, rw:, 0] = pad
        out["vy"][b, 0, :rh, 0] = 1.0
        out["vx"][b, :rw, 0, 0] = 1.0
    return out


def _packed(c0: Any, c1: Any) -> Any:
    """Two OpenCV weights (0 .. 2049) in one float32: ``c0 * 4096 + c1``, below 2**24, so exact."""
    return (np.asarray(c0, np.int64) * 4096 + np.asarray(c1, np.int64)).astype(np.float32)


def bilinear_resize_numpy(image: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """The reference of the ``"torchvision"`` resize: PyTorch's bilinear ``align_corners=False`` sampling
    (source = (dst + 0.5) * in / out - 0.5, clamped at 0; the next sample clamped at the last) in float32,
    rounded to uint8. Separable: rows, then columns."""

    y0, y1, wy = resize_taps(int(size_hw[0]), image.shape[0])
    x0, x1, wx = resize_taps(int(size_hw[1]), image.shape[1])
    img = image.astype(np.float32)
    rows = img[y0] * (1.0 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    out = rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_rgb(image: Any) -> None:
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1 or dtype != np.uint8:
        raise UserError(
            f"an image must be an [H, W, 3] uint8 RGB array, got {type(image).__name__} of shape {shape} and "
            f"dtype {dtype}",
            where="image",
            fix="decode files with load_rgb, or convert: np.asarray(pil_image.convert('RGB'))",
        )


def rgb_fill(pixel_mean: Sequence[float], channel_order: str) -> Tuple[float, float, float]:
    """The model's pixel mean in RGB order (the spec stores it in the network's channel order)."""
    m = tuple(float(v) for v in pixel_mean)
    return (m[2], m[1], m[0]) if channel_order == "BGR" else (m[0], m[1], m[2])


def iter_batches(
    paths: Sequence[Path],
    input_hw: Tuple[int, int],
    fill_rgb: Sequence[float],
    batch: int,
    *,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    resize: str = "torchvision",
) -> Iterator[Tuple[np.ndarray, List[Letterbox], List[Path], List[Tuple[Path, str]]]]:
    """Yield ``(images [b, 3, H, W], letterboxes, paths, failures)``; unreadable images are reported in
    ``failures`` and skipped, never stopping the batch. ``draft``: let large JPEGs decode at reduced size
    (close to, not exactly, the full decode's letterbox; fine for calibration statistics)."""
    chunk: List[np.ndarray] = []
    boxes: List[Letterbox] = []
    ok: List[Path] = []
    failed: List[Tuple[Path, str]] = []
    for p in paths:
        try:
            d = read_image(p, max_pixels=max_pixels, target_hw=input_hw if draft else None)
            arr, lb = letterbox(d.rgb, input_hw, fill_rgb, orig_hw=d.orig_hw, resize=resize)
        except ValueError as e:
            failed.append((p, str(e)))
            continue
        chunk.append(arr)
        boxes.append(lb)
        ok.append(p)
        if len(chunk) == batch:
            yield np.stack(chunk), boxes, ok, failed
            chunk, boxes, ok, failed = [], [], [], []
    if chunk or failed:
        yield (np.stack(chunk) if chunk else np.zeros((0, 3, *input_hw), np.float32)), boxes, ok, failed
