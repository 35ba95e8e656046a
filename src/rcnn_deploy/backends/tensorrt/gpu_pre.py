"""GPU pre-processing for a TensorRT engine in a process without torch (CPython 3.9 compatible).

JPEG files travel to the model as their bytes (:meth:`rcnn_deploy.api.HostStages.prepare` with ``gpu_decode``).
Per batch, on the engine slot's CUDA stream:

1. nvImageCodec (``pip install nvidia-nvimgcodec-cu12[nvjpeg]``: nvJPEG, and the GPU's hardware JPEG decoder
   where it has one) decodes them into device memory, with libjpeg-turbo's "fancy" chroma upsampling, the
   default of the host decoders (Pillow, OpenCV), so 4:2:0 JPEGs decode to nearly the host's pixels;
2. each image is copied to the top left of its slot in a ``[B, H, W, 3]`` buffer (``H``/``W``: the batch's
   largest; ``cudaMemcpy2DAsync``);
3. a small TensorRT engine built from the export's letterbox graph (:mod:`rcnn_deploy.export.letterbox_graph`,
   built on first use and kept beside the model engine) resizes and pads them straight into the model engine's
   input buffer;
4. the model engine runs as in :class:`~rcnn_deploy.backends.tensorrt.pipelined.TensorRTBatchModel`.

Steps 1-4 of a batch run in a thread of the slot's own (``submit`` returns at once), each slot with its own
decoder: the host part of decoding (parsing, and the Huffman decoding of the hybrid backends) of one batch
overlaps the next batch's and the engine of the one before (``slots`` batches in flight, 3 by default).

What the host letterboxed instead (not a JPEG, too large for the letterbox engine's profile, a file nvJPEG
refused: decoded by Pillow here) is uploaded into its image's place after step 3. Only compact outputs come back.
"""

from __future__ import annotations

import ctypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import UserError
from ...runtime.preprocess import letterbox_taps
from ..nvimgcodec import DECODE_BACKENDS, NVIMGCODEC_FIX, NvImageCodec  # noqa: F401 (re-exported)
from .pipelined import _H2D, TensorRTBatchModel, _Pinned, _Slot

_D2D = 3  # cudaMemcpyKind
LETTERBOX_MAX_HW = (2160, 3840)  # the letterbox engine's largest image (4K UHD); larger ones are decoded on the host
_TAPS = ("y0", "y1", "wy", "x0", "x1", "wx", "vy", "vx")


def letterbox_profiles(
    input_hw: Tuple[int, int], batch: int, max_hw: Tuple[int, int] = LETTERBOX_MAX_HW
) -> Dict[str, Tuple[List[int], List[int], List[int]]]:
    """The letterbox engine's optimization profile: 1..``batch`` images of up to ``max_hw`` (optimised for
    ``batch`` 1920x1080 images, or ``max_hw`` when smaller)."""
    ih, iw = int(input_hw[0]), int(input_hw[1])
    mh, mw = int(max_hw[0]), int(max_hw[1])
    opt_hw = [min(1080, mh), min(1920, mw)]
    b = int(batch)

    def three(shape: Callable[[int], List[int]]) -> Tuple[List[int], List[int], List[int]]:
        return shape(1), shape(b), shape(b)

    prof = {
        "raw": ([1, 1, 1, 3], [b, *opt_hw, 3], [b, mh, mw, 3]),
        "y0": three(lambda n: [n, ih]),
        "y1": three(lambda n: [n, ih]),
        "wy": three(lambda n: [n, ih, 1]),
        "x0": three(lambda n: [n, iw]),
        "x1": three(lambda n: [n, iw]),
        "wx": three(lambda n: [n, iw, 1]),
        "vy": three(lambda n: [n, 1, ih, 1]),
        "vx": three(lambda n: [n, iw, 1, 1]),
    }
    return prof


def letterbox_engine_path(export_dir: Path, batch: int, max_hw: Tuple[int, int]) -> Path:
    return Path(export_dir) / f"letterbox_b{int(batch)}_{int(max_hw[0])}x{int(max_hw[1])}.engine"


def ensure_letterbox_engine(
    export_dir: Path, batch: int, max_hw: Tuple[int, int] = LETTERBOX_MAX_HW, trt: Any = None
) -> Path:
    """The letterbox engine for ``batch`` beside the model engine, built from ``letterbox.onnx`` (fp32: the
    sampling must match the host's) when it is not there yet (a few seconds)."""
    from ...contract import LETTERBOX_FILE
    from .builder import BuildConfig, build_engine

    export_dir = Path(export_dir)
    path = letterbox_engine_path(export_dir, batch, max_hw)
    onnx = export_dir / LETTERBOX_FILE
    if not onnx.is_file():
        raise UserError(
            f"no {LETTERBOX_FILE} in the export: GPU decoding with TensorRT letterboxes on the GPU with that graph",
            where=export_dir,
            fix="re-export with this version (rcnn-deploy export ... --graph fused), or run without --gpu-decode",
        )
    if path.is_file() and _built_from(path, onnx, trt):
        return path
    cfg = BuildConfig(precision="fp32", batch=(1, int(batch), int(batch)))
    cfg.profiles = letterbox_profiles(_graph_input_hw(export_dir), batch, max_hw)
    build_engine(onnx, path, cfg, trt)
    return path


def _built_from(engine: Path, onnx: Path, trt: Any) -> bool:
    """Whether ``engine``'s sidecar says it was built from this ``onnx`` by this TensorRT (else: rebuild it)."""
    from .builder import _sha256_file, read_sidecar
    from .compat import load_trt

    try:
        meta = read_sidecar(engine)
    except (UserError, OSError):
        return False
    trt = trt or load_trt()
    return bool(
        meta.get("onnx_sha256") == _sha256_file(onnx)
        and meta.get("trt") == trt.name
        and meta.get("trt_version") == trt.version
    )


def _graph_input_hw(export_dir: Path) -> Tuple[int, int]:
    from ...contract import Contract

    return Contract.load(export_dir).input_hw


def _device_image(img: Any) -> Tuple[int, int, int, int]:
    """(pointer, height, width, row pitch in bytes) of a decoded HWC uint8 image in device memory."""
    cai = img.__cuda_array_interface__
    h, w, c = (int(d) for d in cai["shape"])
    if c != 3 or np.dtype(cai["typestr"]) != np.uint8:
        raise ValueError(f"nvImageCodec returned a {cai['shape']} {cai['typestr']} image, not HxWx3 uint8")
    strides = cai.get("strides")
    pitch = int(strides[0]) if strides else w * 3
    if strides and (int(strides[1]) != 3 or int(strides[2]) != 1):
        raise ValueError(f"nvImageCodec returned an image with strides {strides}, not interleaved RGB rows")
    return int(cai["data"][0]), h, w, pitch


class TensorRTGpuDecodeModel(TensorRTBatchModel):
    """:class:`TensorRTBatchModel` taking JPEG bytes (1-D uint8 arrays) or host-letterboxed ``[3, H, W]`` arrays,
    decoding and letterboxing the JPEGs on the GPU (module docstring). Outputs gain an ``errors`` column: None,
    or why that image failed (a JPEG neither nvJPEG nor the host decoder could read). ``decoders``: one per
    slot (made with ``decode_backend`` when not given). ``resampler``: the letterbox graph's
    (``runtime.preprocess.LETTERBOX_RESAMPLERS``; the export's ``contract.notes["letterbox_resampler"]``)."""

    takes_letterboxes = True

    def __init__(
        self,
        backend: Any,
        lo: int,
        hi: int,
        letterbox_engine: Path,
        fill: Sequence[float],
        max_pixels: Optional[int],
        slots: int = 3,
        rename: Optional[Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None,
        max_hw: Tuple[int, int] = LETTERBOX_MAX_HW,
        decoders: Optional[Sequence[NvImageCodec]] = None,
        decode_backend: str = "default",
        nonblocking: bool = True,
        cuda_graph: bool = True,
        blocking_wait: bool = False,
        resampler: str = "float",
        post: Any = None,
    ) -> None:
        from .runtime import TensorRTBackend

        # non-blocking slot streams, so that nothing a library puts on the legacy default stream waits for the other
        # slots' engines. Run 20 found no difference: a batch of 8 decodes in about 7 ms alone and 20 ms beside the
        # batch-8 engine (its whole run) with blocking and non-blocking streams alike (nvjpeg_bench_run20*.json)
        super().__init__(
            backend,
            lo,
            hi,
            slots=slots,
            rename=rename,
            nonblocking=nonblocking,
            cuda_graph=cuda_graph,
            blocking_wait=blocking_wait,
            post=post,
        )
        self.decoders = list(decoders) if decoders else [NvImageCodec(decode_backend) for _ in self.slots]
        if len(self.decoders) != len(self.slots):
            raise ValueError(f"{len(self.decoders)} decoders for {len(self.slots)} slots: one decoder per slot")
        self.decoder = self.decoders[0]
        self.pre = TensorRTBackend(letterbox_engine, backend.trt)
        if self.pre.tensor_dtype("images") != self.in_dtype:
            raise ValueError(
                f"{letterbox_engine.name} writes {self.pre.tensor_dtype('images')}, the model takes {self.in_dtype}"
            )
        self.input_hw = (int(self.image_shape[1]), int(self.image_shape[2]))
        self.fill, self.max_pixels = tuple(float(v) for v in fill), max_pixels
        self.max_hw = (int(max_hw[0]), int(max_hw[1]))
        self.resize = "torchvision"
        # how the letterbox engine's graph resamples (the export's contract notes; "float" before session 18)
        self.resampler = resampler
        taps_max = letterbox_profiles(self.input_hw, self.hi, self.max_hw)
        # one context for every slot: a context owns its engine's optimization profile (TensorRT 8.6 gives a
        # second context none), so the slots' letterbox runs are ordered on the GPU by an event instead
        self.pre_ctx = self.pre.context
        self.pre_done = ctypes.c_void_p()
        if self.lib.cudaEventCreateWithFlags(ctypes.byref(self.pre_done), 2) != 0:  # cudaEventDisableTiming
            raise RuntimeError("cudaEventCreateWithFlags failed")
        self.pre_enqueued = False
        self.pre_lock = threading.Lock()  # the shared letterbox context: one slot at a time sets it up and enqueues
        self.jobs = ThreadPoolExecutor(len(self.slots), thread_name_prefix="rcnn-gpu-pre")
        for index, slot in enumerate(self.slots):
            slot.decoder = self.decoders[index]  # type: ignore[attr-defined]
            raw = backend.cuda.DeviceArray(shape=(self.hi, *self.max_hw, 3), dtype=np.uint8)
            taps_dev = {}
            taps_host = {}
            for name in _TAPS:
                shape = tuple(taps_max[name][2])
                dtype = self.pre.tensor_dtype(name)
                taps_dev[name] = backend.cuda.DeviceArray(shape=shape, dtype=dtype)
                taps_host[name] = _Pinned(self.lib, shape, dtype)
            slot.pre = (raw, taps_dev, taps_host)  # type: ignore[attr-defined]

    def submit(
        self, items: List[np.ndarray], letterboxes: Optional[List[Any]] = None
    ) -> Callable[[], Dict[str, np.ndarray]]:
        k = len(items)
        n = self._batch_size(k)
        self._check_letterboxes(k, letterboxes)
        slot = self._take_slot()

        def enqueue() -> Tuple[List[Any], Callable[[], Dict[str, np.ndarray]]]:
            """In the slot's thread: decode, letterbox and enqueue the engine (the slot is freed on failure)."""
            try:
                t0 = time.perf_counter()
                errors, keep, host_items = self._prepare_on_device(slot, items, n)
                t1 = time.perf_counter()
                shapes = self._enqueue_model(slot, n)
                self._add_stage_s(prepare=t1 - t0, enqueue=time.perf_counter() - t1)
            except BaseException:
                slot.free.set()
                raise
            return errors, self._waiter(slot, shapes, k, keep=(keep, host_items), letterboxes=letterboxes)

        job = self.jobs.submit(enqueue)

        def result() -> Dict[str, np.ndarray]:
            errors, wait = job.result()  # the slot's thread's error, if any, is raised here
            out = wait()
            out["errors"] = np.array(errors[:k], dtype=object)
            return out

        return result

    def _prepare_on_device(self, slot: _Slot, items: List[np.ndarray], n: int) -> Tuple[List[Any], List[Any], Any]:
        """Fill the slot's model input with ``n`` images (a short batch repeats its last): returns each image's
        error (None when fine), what must stay alive until the stream is done, and the host-letterboxed arrays."""
        sptr = slot.stream.ptr
        batch = [items[min(i, len(items) - 1)] for i in range(n)]
        enc = [i for i, a in enumerate(batch) if a.ndim == 1]
        decoder: NvImageCodec = slot.decoder  # type: ignore[attr-defined]
        decoded = dict(zip(enc, decoder.decode([batch[i] for i in enc], sptr))) if enc else {}
        errors: List[Any] = [None] * n
        host: Dict[int, np.ndarray] = {i: a for i, a in enumerate(batch) if a.ndim == 3}
        dev: Dict[int, Tuple[int, int, int, int]] = {}
        for i, img in decoded.items():
            info = _device_image(img) if img is not None else None
            if info is None or info[1] > self.max_hw[0] or info[2] > self.max_hw[1]:
                arr, errors[i] = self._host_letterbox(batch[i])
                if arr is not None:
                    host[i] = arr
            else:
                dev[i] = info
        if dev:
            bh = max(h for _, h, _, _ in dev.values())
            bw = max(w for _, _, w, _ in dev.values())
            pre_ctx = self.pre_ctx
            raw, taps_dev, taps_host = slot.pre  # type: ignore[attr-defined]
            for i, (ptr, h, w, pitch) in dev.items():
                self._copy2d(raw.ptr + i * bh * bw * 3, bw * 3, ptr, pitch, w * 3, h, sptr)
            sizes = [(dev[i][1], dev[i][2]) if i in dev else (1, 1) for i in range(n)]
            taps = letterbox_taps(sizes, self.input_hw, (bh, bw), self.resampler)
            shapes: Dict[str, Tuple[int, ...]] = {"raw": (n, bh, bw, 3)}
            for name in _TAPS:
                a = taps[name]
                shapes[name] = a.shape
                np.copyto(taps_host[name].array.reshape(-1)[: a.size].reshape(a.shape), a)
                self._copy(taps_dev[name].ptr, taps_host[name].ptr.value, a.nbytes, _H2D, sptr)
            with self.pre_lock:
                for name, shape in shapes.items():
                    if not pre_ctx.set_input_shape(name, shape):
                        raise ValueError(f"letterbox engine: input {name} {shape} is outside its profile")
                    pre_ctx.set_tensor_address(name, raw.ptr if name == "raw" else taps_dev[name].ptr)
                pre_ctx.set_tensor_address("images", slot.device[self.input].ptr)
                if self.pre_enqueued:  # another slot's letterbox run (same context) finishes first
                    status = self.lib.cudaStreamWaitEvent(ctypes.c_void_p(sptr), self.pre_done, 0)
                    self._check(status, "cudaStreamWaitEvent")
                if not pre_ctx.execute_async_v3(sptr):
                    raise RuntimeError(f"TensorRT execution of {self.pre.path.name} failed")
                self._check(self.lib.cudaEventRecord(self.pre_done, ctypes.c_void_p(sptr)), "cudaEventRecord")
                self.pre_enqueued = True
        staged = slot.host[self.input].array
        for i, a in host.items():  # after the letterbox engine on the stream: these images overwrite its output
            np.copyto(staged[i], a, casting="unsafe")
            off = i * self.image_bytes
            self._copy(slot.device[self.input].ptr + off, staged.ctypes.data + off, self.image_bytes, _H2D, sptr)
        return errors, list(decoded.values()), host

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in {what}")

    def _host_letterbox(self, data: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[str]]:
        from ...runtime.preprocess import letterbox, load_rgb

        try:
            rgb = load_rgb(data.tobytes(), max_pixels=self.max_pixels)
            arr, _ = letterbox(rgb, self.input_hw, self.fill, dtype=self.in_dtype, resize=self.resize)
        except ValueError as e:  # UserError included
            return None, str(e)
        return arr, None

    def _copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, stream: int) -> None:
        status = self.lib.cudaMemcpy2DAsync(
            ctypes.c_void_p(dst),
            ctypes.c_size_t(dpitch),
            ctypes.c_void_p(src),
            ctypes.c_size_t(spitch),
            ctypes.c_size_t(width),
            ctypes.c_size_t(height),
            _D2D,
            ctypes.c_void_p(stream),
        )
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaMemcpy2DAsync")

    def close(self) -> None:
        self.jobs.shutdown(wait=True)
        for s in self.slots:
            s.stream.synchronize()
            raw, taps_dev, taps_host = s.pre  # type: ignore[attr-defined]
            raw.free()
            for d in taps_dev.values():
                d.free()
            for h in taps_host.values():
                h.free()
        if self.pre_done:
            self.lib.cudaEventDestroy(self.pre_done)
            self.pre_done = ctypes.c_void_p()
        super().close()
