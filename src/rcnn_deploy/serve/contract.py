"""The one client-facing contract of every Triton model repository rcnn-deploy writes (numpy + Pillow; the
Python-backend models import it inside Triton, so it stays Python 3.8+ and torch-free).

Input (batchable, ``max_batch_size`` > 0):

* ``IMAGE`` ``BYTES`` ``[1]`` — one encoded image (JPEG, PNG, BMP, WebP, ...) per batch row; a request of
  shape ``[B, 1]`` carries B images.

Outputs, per image (row ``b`` of a request), padded to ``N`` = the largest detection count of the request
(at least 1, so no tensor is empty):

* ``NUM_DETECTIONS`` ``INT32`` ``[1]`` — how many of the ``N`` entries of this row are real;
* ``BOXES`` ``FP32`` ``[N, 4]`` — x1, y1, x2, y2 in the original image's pixels;
* ``SCORES`` ``FP32`` ``[N]`` (descending), ``CLASSES`` ``INT32`` ``[N]`` (the model's labels, as
  ``Detections.classes``), ``CLASS_NAMES`` ``BYTES`` ``[N]`` (UTF-8);
* ``MASKS`` ``BYTES`` ``[N]`` — one JSON string per detection: its pasted mask as COCO RLE
  ``{"size": [H, W], "counts": "..."}`` (``pycocotools.mask.decode`` reads it back after
  ``counts.encode()``); ``b""`` for models without masks and for padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

INPUT = "IMAGE"
NUM_DETECTIONS = "NUM_DETECTIONS"
BOXES = "BOXES"
SCORES = "SCORES"
CLASSES = "CLASSES"
CLASS_NAMES = "CLASS_NAMES"
MASKS = "MASKS"
OUTPUTS = (NUM_DETECTIONS, BOXES, SCORES, CLASSES, CLASS_NAMES, MASKS)
#: Triton config data type and dims (without the batch dim) of each output.
OUTPUT_TYPES = {
    NUM_DETECTIONS: ("TYPE_INT32", [1]),
    BOXES: ("TYPE_FP32", [-1, 4]),
    SCORES: ("TYPE_FP32", [-1]),
    CLASSES: ("TYPE_INT32", [-1]),
    CLASS_NAMES: ("TYPE_STRING", [-1]),
    MASKS: ("TYPE_STRING", [-1]),
}
#: Largest image (width x height) a server decodes by default: 40 megapixels (a 7952 x 5304 photo).
DEFAULT_MAX_PIXELS = 40_000_000


class BadImage(ValueError):
    """An input that is not a decodable image within the size limit (the request gets this message)."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, where: str = INPUT) -> np.ndarray:
    """Encoded image bytes -> ``[H, W, 3]`` uint8 RGB, decoded by the runtime's own loader
    (:func:`rcnn_deploy.runtime.preprocess.load_rgb`: EXIF orientation, every Pillow mode, and the size read
    from the header and checked against ``max_pixels`` before any pixel is decoded, so a decompression bomb is
    refused without allocating it). Raises :class:`BadImage` naming ``where`` and the problem."""
    from ..runtime.preprocess import load_rgb

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImage(f"{where}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise BadImage(f"{where}: empty image (0 bytes); send the encoded file's bytes (JPEG, PNG, ...)")
    try:
        return load_rgb(data, max_pixels=max_pixels, name=where)
    except ValueError as e:  # UserError: what, where (the input row) and how to fix
        raise BadImage(str(e)) from None


def mask_rles(masks: Any) -> List[str]:
    """An image's masks -> N COCO RLE JSON strings (``{"size": [H, W], "counts": "..."}``): from each mask's box
    region when they are lazily pasted (``Detections.pasted``), else from ``[N, H, W]`` bool masks."""
    from ..runtime.masks import LazyMasks

    if isinstance(masks, LazyMasks):
        return [json.dumps(masks.rle(i), separators=(",", ":")) for i in range(len(masks))]
    if masks is None or masks.ndim != 3 or not len(masks):
        return []
    from pycocotools import mask as mask_util

    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [
        json.dumps({"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}, separators=(",", ":"))
        for r in rles
    ]


def class_name_lookup(class_names: Sequence[str], label_ids: Sequence[int]) -> Dict[int, str]:
    """The model's label -> class name (index 0, the background, is left out)."""
    return {int(label): str(name) for i, (label, name) in enumerate(zip(label_ids, class_names)) if i > 0}


def pack_outputs(dets: Sequence[Any], names: Dict[int, str]) -> Dict[str, np.ndarray]:
    """Detections of the images of one request (``rcnn_deploy.runtime.detections.Detections`` with pasted
    masks or none) -> the contract's output arrays, padded to the request's largest count (at least 1)."""
    b = len(dets)
    n = max([len(d) for d in dets] + [1])  # never 0: some clients and Triton versions mishandle empty tensors
    out = {
        NUM_DETECTIONS: np.zeros((b, 1), np.int32),
        BOXES: np.zeros((b, n, 4), np.float32),
        SCORES: np.zeros((b, n), np.float32),
        CLASSES: np.zeros((b, n), np.int32),
        CLASS_NAMES: np.full((b, n), b"", dtype=object),
        MASKS: np.full((b, n), b"", dtype=object),
    }
    for i, d in enumerate(dets):
        k = len(d)
        out[NUM_DETECTIONS][i, 0] = k
        if not k:
            continue
        out[BOXES][i, :k] = d.boxes
        out[SCORES][i, :k] = d.scores
        out[CLASSES][i, :k] = d.classes
        out[CLASS_NAMES][i, :k] = [names.get(int(c), f"label {int(c)}").encode("utf-8") for c in d.classes]
        for j, rle in enumerate(mask_rles(d.pasted if d.pasted is not None else d.masks)):
            out[MASKS][i, j] = rle.encode("ascii")
    return out


@dataclass
class ServedDetections:
    """One image's detections as a client reads them back from the outputs."""

    boxes: np.ndarray  # [N, 4] float32, original pixels
    scores: np.ndarray  # [N] float32
    classes: np.ndarray  # [N] int32
    class_names: List[str]
    masks: List[Dict[str, Any]]  # COCO RLE dicts ({"size", "counts"}); empty for models without masks

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def decoded_masks(self) -> Optional[np.ndarray]:
        """``[N, H, W]`` bool masks (pycocotools), or None without masks."""
        if not self.masks:
            return None
        from pycocotools import mask as mask_util

        rles = [{"size": m["size"], "counts": m["counts"].encode("ascii")} for m in self.masks]
        return mask_util.decode(rles).transpose(2, 0, 1).astype(bool)


def unpack_outputs(outputs: Dict[str, np.ndarray]) -> List[ServedDetections]:
    """The contract's output arrays of one response (as ``result.as_numpy(name)`` returns them) -> one
    :class:`ServedDetections` per image."""
    num = np.asarray(outputs[NUM_DETECTIONS]).reshape(-1)
    res = []
    for i, k in enumerate(num.tolist()):
        k = int(k)
        masks = [json.loads(_text(m)) for m in np.asarray(outputs[MASKS])[i, :k] if len(m)]
        res.append(
            ServedDetections(
                boxes=np.asarray(outputs[BOXES], np.float32)[i, :k].reshape(k, 4),
                scores=np.asarray(outputs[SCORES], np.float32)[i, :k],
                classes=np.asarray(outputs[CLASSES], np.int32)[i, :k],
                class_names=[_text(s) for s in np.asarray(outputs[CLASS_NAMES])[i, :k]],
                masks=masks,
            )
        )
    return res


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)
