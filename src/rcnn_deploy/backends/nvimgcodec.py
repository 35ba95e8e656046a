"""nvImageCodec's batched JPEG decoder into device memory, shared by the TensorRT GPU-decode runtime
(:mod:`rcnn_deploy.backends.tensorrt.gpu_pre`, a process without torch) and the PyTorch CUDA backend
(:class:`rcnn_deploy.backends.torch_cuda.GpuLetterbox`). Torch-free and CPython 3.9 compatible; nvImageCodec is
imported when a decoder is made, so importing this module costs nothing.

nvImageCodec (``pip install nvidia-nvimgcodec-cu12[nvjpeg]``, or ``-cu13`` with ``nvidia-nvjpeg`` for CUDA 13)
drives nvJPEG, including the hardware JPEG decoder of A100 / H100 / H200 (NVJPG engines: no SMs and no host
Huffman decoding), and decodes 4:2:0 / 4:2:2 chroma with libjpeg-turbo's "fancy" upsampling, the default of the
host decoders (Pillow, OpenCV), so its pixels are the host's or nearly (run 25, nvImageCodec 0.9 on the H200: 99.97 %
of the values of 4:2:0 JPEGs identical to Pillow's, none more than 1 grey level apart).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from .base import BackendUnavailable

NVIMGCODEC_FIX = (
    "pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg (the gpu-decode extra; a CUDA 13 driver; with an older one "
    "'nvidia-nvimgcodec-cu12[nvjpeg]', whose decoder matches the host's less closely), or run without --gpu-decode"
)
# nvImageCodec backends by name (Detector.from_engine(gpu_decode_backend=...)): "default" lets nvImageCodec
# choose per image among all of them (the GPU's hardware JPEG decoder first where it has one: run 20 on the H200);
# "hw" the hardware decoder alone (A100, H100/H200: NVJPG engines, no SMs and no host Huffman decoding); "gpu"
# nvJPEG's CUDA decoder with Huffman on the GPU (it declined run 20's JPEGs); "hybrid" Huffman decoding on the
# host's cores, the rest on the GPU. An image a restricted backend cannot take is decoded on the host (Pillow),
# like any JPEG nvJPEG refuses.
DECODE_BACKENDS: Dict[str, Optional[str]] = {
    "default": None,
    "hw": "HW_GPU_ONLY",
    "gpu": "GPU_ONLY",
    "hybrid": "HYBRID_CPU_GPU",
}


def available() -> bool:
    """Whether nvImageCodec can be imported here (it needs a CUDA driver only when a decoder is made)."""
    import importlib

    try:
        importlib.import_module("nvidia.nvimgcodec")
    except ImportError:
        return False
    return True


class NvImageCodec:
    """nvImageCodec's batched decoder, RGB uint8 into device memory; ``backend``: one of :data:`DECODE_BACKENDS`."""

    def __init__(self, backend: str = "default", device_id: Optional[int] = None) -> None:
        if backend not in DECODE_BACKENDS:
            raise UserError(
                f"unknown GPU decode backend {backend!r}",
                where="gpu_decode_backend",
                fix=f"use one of {', '.join(DECODE_BACKENDS)}",
            )
        try:
            from nvidia import nvimgcodec  # type: ignore[import-untyped]
        except ImportError as e:
            raise BackendUnavailable(f"GPU JPEG decoding needs nvImageCodec: {NVIMGCODEC_FIX}") from e
        self.mod = nvimgcodec
        self.backend = backend
        kw: Dict[str, Any] = {}
        kind = DECODE_BACKENDS[backend]
        if kind is not None:
            kw["backends"] = [nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))]
        if device_id is not None:
            kw["device_id"] = int(device_id)
        # fancy upsampling: the chroma of 4:2:0 / 4:2:2 JPEGs interpolated as libjpeg-turbo does by default
        self.decoder = nvimgcodec.Decoder(options=":fancy_upsampling=1", **kw)
        # RGB: ColorSpec.RGB up to nvImageCodec 0.6, ColorSpec.SRGB (interleaved by default) from 0.7 on
        rgb = getattr(nvimgcodec.ColorSpec, "RGB", None) or nvimgcodec.ColorSpec.SRGB
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=rgb, allow_any_depth=False)
        self.version = str(getattr(nvimgcodec, "__version__", "?"))

    def decode(self, datas: Sequence[np.ndarray], stream: int) -> List[Optional[Any]]:
        """Decode a batch of encoded JPEGs on CUDA stream ``stream`` (a ``cudaStream_t`` as an int) -> per item an
        nvImageCodec image (HWC uint8 in device memory, ``__cuda_array_interface__``) or ``None`` where it could
        not be decoded (the caller falls back to the host decoder, which says why)."""
        streams: List[Any] = []
        where: List[int] = []
        out: List[Optional[Any]] = [None] * len(datas)
        for i, d in enumerate(datas):
            try:
                streams.append(self.mod.CodeStream(np.ascontiguousarray(d, dtype=np.uint8)))
                where.append(i)
            except Exception:  # noqa: BLE001 - a header nvImageCodec cannot parse: the host decoder says why
                pass
        if streams:
            for i, img in zip(where, self.decoder.decode(streams, params=self.params, cuda_stream=int(stream))):
                out[i] = img
        return out
