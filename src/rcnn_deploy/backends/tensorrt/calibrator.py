"""INT8 entropy calibration for TensorRT 8.6 / 10 (implicit quantization), the seed's semantics: calibrate on
images run through the model's own preprocessing, and reuse an existing calibration cache without
calibrating again. Images arrive as an ``[N, 3, H, W]`` float32 array (RGB 0-255: the graphs normalise
inside), e.g. written by ``rcnn-deploy build --calib-input DIR``."""

from __future__ import annotations

import os
from typing import Any, List, Optional

import numpy as np

from ..._io import atomic_write_bytes
from .compat import TRT


def make_calibrator(trt: TRT, images_npy: str, cache_path: str, batch: int = 1) -> Any:
    mod = trt.module
    cuda = __import__("polygraphy.cuda", fromlist=["cuda"])

    class EntropyCalibrator(mod.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.cache_path = cache_path
            self.images: Optional[np.ndarray] = None
            if not os.path.isfile(cache_path):
                self.images = np.load(images_npy, mmap_mode="r")
            self.batch = batch
            self.index = 0
            self.device: Any = None
            self.batches_used = 0

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            if self.images is None or self.index + self.batch > len(self.images):
                return None
            chunk = np.ascontiguousarray(self.images[self.index : self.index + self.batch], dtype=np.float32)
            self.index += self.batch
            if self.device is None:
                self.device = cuda.DeviceArray(shape=chunk.shape, dtype=np.float32)
            self.device.copy_from(chunk)
            self.batches_used += 1
            return [self.device.ptr]

        def read_calibration_cache(self) -> Optional[bytes]:
            if os.path.isfile(self.cache_path):
                with open(self.cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(self.cache_path, bytes(cache))

    return EntropyCalibrator()
