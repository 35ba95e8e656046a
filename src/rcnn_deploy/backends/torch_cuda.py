"""The PyTorch deploy model on a CUDA GPU without TensorRT: fp32 / fp16 / bf16 layers, channels_last, and one
CUDA graph per batch size.

``CudaGraphModel(net)`` takes ``[B, 3, H, W]`` uint8 (or float32) images on the GPU and returns the padded
outputs of :data:`rcnn_deploy.glue.pipeline.OUTPUT_NAMES` on the GPU. With ``cuda_graph=True`` the forward runs
inside :func:`rcnn_deploy.glue.sync_free.sync_free` (no host synchronisation: static-shape NMS with a fixed
number of rounds, ROIAlign without ``nonzero``), is captured once per batch size after two warm-up runs, and
replayed. Every replay also computes whether each NMS had converged within its rounds; a batch where one had
not (a suppression chain longer than ``nms_rounds``) is re-run without the round limit, so the outputs are
always greedy NMS's, never an approximation, and the graphs are captured again with twice the rounds (up to
``max_nms_rounds``) for the batches that follow.

Precision follows the rule of the TensorRT fp16 builds: the layers in fp16 / bf16, the glue (normalisation,
box decoding, NMS, ROIAlign) in float32 (:meth:`rcnn_deploy.models.rcnn.DeployRCNN.set_precision`).

``compile`` (off by default; :data:`COMPILE_MODES`): the whole sync-free forward through ``torch.compile``
(Inductor, ``fullgraph=False, dynamic=False``) before our own capture, so its many small elementwise kernels
(the NMS fixpoint's rounds, frozen batch norm, the box glue) can be fused (:class:`SyncFreeForward`). Inductor's
own CUDA graphs stay off: the compiled forward is what ``torch.cuda.graph`` captures here.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..runtime.stream import lies_within

PRECISIONS = ("fp32", "fp16", "bf16")
# torch.compile modes of the sync-free forward; both leave Inductor's CUDA graphs off (we capture the graph)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def torch_dtype(precision: str) -> Any:
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return table[precision]


class _Captured:
    def __init__(self, graph: Any, static_in: Any, static_out: Dict[str, Any], converged: Any) -> None:
        self.graph, self.static_in, self.static_out, self.converged = graph, static_in, static_out, converged


def ieee_fp32(precision: str) -> None:
    """For ``precision == "fp32"``: fp32 means IEEE fp32, as in the TensorRT fp32 builds (builder.py clears TF32).
    PyTorch lets cuDNN convolutions run in TF32 by default. On the H200 that moved scores by up to 0.38 and changed
    the detection count of 37 of 500 validation images against the same fp32 run with TF32 off (session 13). With
    TF32 off, a Ray run and a local run gave byte-identical results.json. The flags are process-wide, like
    ``cudnn.benchmark``; fp16/bf16 leave them as they are."""
    if precision != "fp32":
        return
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch >= 2.9 (mixing it with allow_tf32 is refused)
        conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def tf32_allowed() -> bool:
    """Whether cuDNN convolutions or cuBLAS matmuls may use TF32 now (either API)."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32" or torch.backends.cuda.matmul.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def check_compile_mode(mode: Optional[str]) -> Optional[str]:
    """``mode`` if it is None (no ``torch.compile``) or one of :data:`COMPILE_MODES`, else ValueError."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)} (or none)")
    return mode


class SyncFreeForward:
    """``net``'s forward inside :func:`~rcnn_deploy.glue.sync_free.sync_free`: ``self(x, rounds)`` -> (padded
    outputs, the convergence flag :attr:`SyncFree.converged <rcnn_deploy.glue.sync_free.SyncFree.converged>`;
    None for ``rounds=None``). Any device (the tests run it on the CPU).

    ``compile`` (one of :data:`COMPILE_MODES`): the net's whole forward through ``torch.compile(fullgraph=False,
    dynamic=False)``. The ``sync_free`` context is entered outside the compiled function (Dynamo does not trace
    ``ContextVar.set``); inside, Dynamo reads the active state (``ContextVar.get``), guards on its round count
    (another count compiles again) and replays the flag's assignment (``state.note``) on the caller's state, so
    the flag and the exact fallback work as without compile. PyTorch 2.13 and older do not trace
    ``ContextVar.get``: every ``sync_free.active()`` then breaks the graph (18 breaks with torch 2.11 on the
    H200 in run 19, the glue's Python between the graphs; the same results). The fallback (``rounds=None``, NMS
    iterated to convergence with host syncs) always runs eagerly. The first compiled call for an input shape and
    round count runs one eager forward first, so the caches the forward fills on its first call (anchors, label
    ids) are there before Dynamo traces it (else a graph break, then a recompile), and is timed:
    ``compile_seconds`` (trace, compile and the first run, Inductor's autotuning included). Every new batch size
    or round count compiles again (``dynamic=False``), up to Dynamo's ``recompile_limit`` (8 per code object,
    shared by every instance), after which that call runs eagerly.
    ``backend``: ``torch.compile``'s (``"inductor"``; the tests also use ``"aot_eager"``)."""

    def __init__(self, net: Any, compile: Optional[str] = None, backend: str = "inductor") -> None:
        import torch

        self.net = net
        self.mode = check_compile_mode(compile)
        self.compile_seconds: Dict[str, float] = {}
        self._compiled: Any = None
        if self.mode is not None:
            kwargs: Dict[str, Any] = {}
            if backend == "inductor":
                from torch._inductor import config

                if config.triton.cudagraphs:
                    raise ValueError(
                        "Inductor's own CUDA graphs are on (torch._inductor.config.triton.cudagraphs); the compiled "
                        "forward is captured by CudaGraphModel itself: turn them off"
                    )
                kwargs["mode"] = self.mode
            self._compiled = torch.compile(self.eager, backend=backend, fullgraph=False, dynamic=False, **kwargs)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def eager(self, x: Any) -> Any:
        import torch

        return self.net(x.float() if x.dtype == torch.uint8 else x)

    def __call__(self, x: Any, rounds: Optional[int], compiled: bool = True) -> Any:
        """One forward of ``x`` with at most ``rounds`` NMS rounds (None: to convergence, eager) -> (outputs,
        flag). ``compiled=False``: the eager forward even when a compile mode is set."""
        import torch

        from ..glue.sync_free import sync_free

        fn = self.eager
        if compiled and rounds is not None and self._compiled is not None:
            fn = self._compiled
            key = f"{tuple(x.shape)} {x.dtype} {x.device} rounds={rounds}"
            if key not in self.compile_seconds:
                with torch.no_grad(), sync_free(rounds):
                    self.eager(x)  # fills the forward's caches outside the traced code
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                with torch.no_grad(), sync_free(rounds) as state:
                    out = fn(x)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                self.compile_seconds[key] = round(time.perf_counter() - t0, 3)
                return out, state.converged
        with torch.no_grad(), sync_free(rounds) as state:
            out = fn(x)
        return out, state.converged


class CudaGraphModel:
    """``net`` (a ``DeployRCNN``) on ``device`` in ``precision``; see the module docstring. ``compile``: the
    sync-free forward through ``torch.compile`` in that mode (:class:`SyncFreeForward`), compiled in the first
    warm-up run of each batch size (outside the capture; the capture itself refuses to compile again); without
    ``cuda_graph`` the compiled sync-free forward then runs uncaptured, with the same convergence fallback."""

    def __init__(
        self,
        net: Any,
        device: str = "cuda",
        precision: str = "fp16",
        cuda_graph: bool = True,
        channels_last: bool = True,
        nms_rounds: int = 32,
        max_nms_rounds: int = 512,
        compile: Optional[str] = None,
    ) -> None:
        import torch

        if not str(device).startswith("cuda"):
            raise ValueError(f"CudaGraphModel runs on a CUDA device, not {device!r}")
        check_compile_mode(compile)
        self.device = torch.device(device)
        self.precision = precision
        self.net = net.to(self.device).eval()
        if precision != "fp32" or channels_last:
            self.net.set_precision(torch_dtype(precision), channels_last=channels_last)
        self.cuda_graph, self.nms_rounds, self.max_nms_rounds = cuda_graph, nms_rounds, max_nms_rounds
        torch.backends.cudnn.benchmark = True  # static shapes: the fastest convolution per layer, chosen once
        ieee_fp32(precision)
        self._graphs: Dict[tuple, _Captured] = {}
        self.input_copied: Any = None  # an event after the last launch copied its input (launch)
        self._lock = threading.Lock()  # launch (the model thread) against a fallback in a finish (another thread)
        self.fallbacks = 0  # batches re-run because an NMS had not converged within nms_rounds
        self.replays = 0
        self.forward = SyncFreeForward(self.net, compile)

    @property
    def spec(self) -> Any:
        return self.net.spec

    @property
    def compile(self) -> Optional[str]:
        return self.forward.mode

    def _forward(self, x: Any, rounds: Optional[int]) -> Any:
        return self.forward(x, rounds)

    def _exact(self, x: Any) -> Any:
        """The batch again without the round limit (eager); the next forwards take twice the rounds (the
        suppression chains of these images are longer than the limit)."""
        self.fallbacks += 1
        out, _ = self._forward(x, None)
        if self.nms_rounds < self.max_nms_rounds:
            self.nms_rounds = min(2 * self.nms_rounds, self.max_nms_rounds)
            self._graphs.clear()
        return out

    def _capture(self, x: Any) -> _Captured:
        import torch

        static_in = torch.empty_like(x)
        static_in.copy_(x)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN / cuBLAS choices, lazy allocations, cached constants
                self._forward(static_in, self.nms_rounds)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # nothing of anyone's may still run when the capture starts (nvJPEG decodes on streams of its own; the
        # GPU-decode detector crashed in its first capture on the H200, run 16 — this is the unverified remedy)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # the warm-up compiled the forward for this shape and round count: a compile inside the capture (a guard
        # that failed) would record Inductor's benchmarking; refuse it instead
        stance = torch.compiler.set_stance("fail_on_recompile") if self.forward.compiled else contextlib.nullcontext()
        with stance, torch.cuda.graph(graph):
            out, converged = self._forward(static_in, self.nms_rounds)
        return _Captured(graph, static_in, out, converged)

    def __call__(self, x: Any) -> Dict[str, Any]:
        """``x [B, 3, H, W]`` uint8 / float32 on the device -> padded outputs on the device. Outputs of a
        captured graph are its static buffers, valid until the next call with the same batch size: copy them
        (``{k: v.cpu() ...}``) before calling again."""
        import torch

        if not self.cuda_graph:
            if not self.forward.compiled:
                with torch.no_grad():
                    return self.net(x.float() if x.dtype == torch.uint8 else x)
            out, converged = self._forward(x, self.nms_rounds)  # compiled, sync-free, not captured
            return out if bool(converged) else self._exact(x)
        cap = self._replay(x)
        if not bool(cap.converged):  # a host sync, once per batch, after the work is queued
            # exact without the round limit for this batch; the next call captures twice the rounds
            return self._exact(cap.static_in)
        return cap.static_out

    def _replay(self, x: Any) -> _Captured:
        """Copy ``x`` into its batch size's graph (captured on first use) and replay it; ``input_copied`` is an
        event after the copy (``x`` may be written again once it has passed)."""
        import torch

        key = (tuple(x.shape), x.dtype)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(x)
        else:
            cap.static_in.copy_(x)
        self.input_copied = torch.cuda.Event()
        self.input_copied.record()
        cap.graph.replay()
        self.replays += 1
        return cap

    def launch(self, x: Any) -> Any:
        """Queue one batch (``x`` as for ``__call__``) without waiting for the GPU; returns ``finish()``, which
        gives the batch's padded outputs on the device later, from any thread, on that thread's current stream:
        private copies of the graph's outputs (the next replay overwrites those), made on this stream right after
        the replay, and the convergence check that ``__call__`` makes at once (the batch again without the round
        limit, from a copy of its input, where an NMS had not converged). What lets the next batch's decoding and
        replay start while this one is post-processed (:class:`GpuBatchModel`). Without ``cuda_graph``: the
        batch runs now, as ``__call__``."""
        import torch

        with self._lock:
            if self.cuda_graph:
                cap = self._replay(x)
                out = {k: v.clone() for k, v in cap.static_out.items()}
                converged, kept = cap.converged.clone(), cap.static_in.clone()
            else:  # queued uncaptured (__call__ checks the convergence itself): x is read once this passes
                out, converged, kept = self(x), None, None
                self.input_copied = torch.cuda.Event()
                self.input_copied.record()
            done = torch.cuda.Event()
            done.record()

        def ready() -> Dict[str, Any]:
            """The outputs on this thread's stream, unchecked: nothing waits for the GPU."""
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for v in (*out.values(), converged, kept):  # made on the launching stream, used on this one
                if v is not None:
                    v.record_stream(stream)
            return out

        def exact_if_needed() -> Optional[Dict[str, Any]]:
            """None where every NMS had converged (reads the flag: a host sync), else the batch run exactly."""
            if converged is None or bool(converged):
                return None
            with self._lock:  # nms_rounds and the graphs change: not beside a launch
                return self._exact(kept)

        def finish() -> Dict[str, Any]:
            got = ready()
            redo = exact_if_needed()
            return got if redo is None else redo

        # GpuBatchModel queues its GPU post-processing on ready()'s outputs before anything waits for the GPU, and
        # asks exact_if_needed() afterwards, when its own synchronisation has passed the flag already
        finish.ready = ready  # type: ignore[attr-defined]
        finish.exact_if_needed = exact_if_needed  # type: ignore[attr-defined]
        return finish

    def run_numpy(self, images: Any) -> Dict[str, Any]:
        """Host ``[B, 3, H, W]`` array in, host arrays out (what ``Detector`` runners take)."""
        import torch

        x = torch.from_numpy(images).to(self.device, non_blocking=False)
        out = self(x)
        return {k: v.cpu().numpy() for k, v in out.items()}


# GpuLetterbox's JPEG decoders: "nvimgcodec" (nvImageCodec: the GPU's hardware JPEG decoder where it has one,
# libjpeg-turbo's fancy chroma upsampling), "torchvision" (``torchvision.io.decode_jpeg`` on the device: nvJPEG's
# hybrid decoder, Huffman decoding on the calling thread, its own chroma upsampling), "auto" (nvImageCodec when it
# is installed and the device is a GPU, else torchvision)
GPU_DECODERS = ("auto", "nvimgcodec", "torchvision")
_LETTERBOX_BLOCK = (8, 128)  # rows x columns of the letterbox kernel's tiles
#: pinned host batches that GpuLetterbox uploads letterboxed arrays through, in turn (GpuBatchModel.depth in flight)
_STAGING = 3


class GpuLetterbox:
    """JPEG bytes decoded on the GPU (a batch per call) and letterboxed there into a ``[B, 3, H, W]`` uint8
    buffer: the same geometry and resampling as the host :func:`~rcnn_deploy.runtime.preprocess.letterbox`
    (``"torchvision"``: where the host resizes with OpenCV, its ``INTER_LINEAR`` reproduced bit for bit in int32,
    else ``F.interpolate`` bilinear without antialiasing in float32, rounded, as the host's numpy resize;
    ``"detectron2"``: its antialiased mode, which follows Pillow's filter). ``decoder``: one of :data:`GPU_DECODERS`
    (:attr:`decoder` says which one runs). Items that are already letterboxed host arrays ``[3, H, W]``
    (formats nvJPEG does not take) are uploaded. A JPEG the GPU decoder refuses is decoded on the host
    instead; one the host cannot decode either gets its error message in the returned list and leaves its slot
    as fill."""

    def __init__(
        self,
        input_hw: Any,
        fill_rgb: Any,
        resize: str,
        device: Any,
        max_pixels: Optional[int],
        decoder: str = "auto",
    ) -> None:
        import torch

        from . import nvimgcodec

        if decoder not in GPU_DECODERS:
            raise ValueError(f"unknown GPU JPEG decoder {decoder!r}; use one of {', '.join(GPU_DECODERS)}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.fill = torch.tensor([round(float(v)) for v in fill_rgb], dtype=torch.uint8).view(3, 1, 1)
        self.resize, self.device, self.max_pixels = resize, torch.device(device), max_pixels
        self.fill = self.fill.to(self.device)
        self._buffers: Dict[int, Any] = {}
        if decoder == "nvimgcodec" and self.device.type != "cuda":
            raise ValueError(f"nvImageCodec decodes into GPU memory, not on {self.device}")
        self._nvimg: Any = None
        self.decoder_note: Optional[str] = None  # why "auto" did not take nvImageCodec although it is installed
        if decoder == "nvimgcodec" or (decoder == "auto" and self.device.type == "cuda" and nvimgcodec.available()):
            try:
                self._nvimg = nvimgcodec.NvImageCodec(device_id=self.device.index or 0)
            except Exception as e:  # noqa: BLE001 - asked for by name: the error; by "auto": torchvision instead
                if decoder == "nvimgcodec":
                    raise
                self.decoder_note = f"nvImageCodec failed to start ({type(e).__name__}: {e}); torchvision decodes"
                warnings.warn(self.decoder_note, RuntimeWarning, stacklevel=2)
        self.decoder = "nvimgcodec" if self._nvimg is not None else "torchvision"
        self._staging: Dict[int, List[Any]] = {}  # by batch size: [pinned host batch, event after its uploads]
        self._registered: List[Tuple[int, int]] = []  # (address, bytes) page-locked by register_host
        self._keep: List[Any] = []  # the last batch's nvImageCodec images: their memory until the next call
        self._done: Any = None  # an event after the last batch's letterbox kernels (CUDA): _keep may go after it
        self._taps: Dict[Tuple[int, int, bool], Tuple[Any, ...]] = {}  # _opencv_taps by (out, in, clamp)
        #: host seconds, summed over calls: in the GPU decoder's decode call, and waiting for an earlier batch's
        #: letterbox or uploads before reusing their memory (benchmarks read and reset them)
        self.host_s: Dict[str, float] = {"decode": 0.0, "reuse_wait": 0.0}
        from ..glue.roi_align_triton import kernels_run

        #: the OpenCV-exact resize by the Triton kernel (on a CUDA device with Triton), else by torch ops
        self.kernel = kernels_run(self.device)

    def __call__(self, items: Any, batch: int) -> Any:
        """``items``: per image, encoded JPEG bytes (1-D uint8) or a letterboxed ``[3, H, W]`` uint8 array ->
        (``[batch, 3, H, W]`` uint8 on the GPU, per-item error or None)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out = self._buffers.get(batch)
        if out is None:
            out = self._buffers[batch] = torch.empty((batch, 3, *self.input_hw), dtype=torch.uint8, device=self.device)
        out.copy_(self.fill.expand(batch, 3, *self.input_hw))
        errors: List[Optional[str]] = [None] * len(items)
        encoded = [i for i, a in enumerate(items) if a.ndim == 1]
        decoded: Dict[int, Any] = {}
        if encoded and self._nvimg is not None:
            decoded = self._decode_nvimgcodec(items, encoded)
        elif encoded:
            datas = [torch.from_numpy(np.asarray(items[i])) for i in encoded]
            try:
                decoded = dict(zip(encoded, decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)))
            except RuntimeError:  # one bad file fails the batch call: decode one by one to find it
                for i, d in zip(encoded, datas):
                    try:
                        decoded[i] = decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError:
                        decoded[i] = None
        arrays = [i for i, a in enumerate(items) if a.ndim == 3]
        if arrays:
            self._upload(out, items, arrays, batch)
        for i, a in enumerate(items):
            if a.ndim == 3:
                continue
            if decoded.get(i) is not None:
                self._letterbox_into(out[i], decoded[i])
            else:
                errors[i] = self._host_fallback(out[i], a)
        if self._nvimg is not None and self._keep and self.device.type == "cuda":
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(self.device))
        return out, errors

    def _upload(self, out: Any, items: Any, arrays: List[int], batch: int) -> None:
        """``items[i]`` (host-letterboxed ``[3, H, W]`` uint8, ``i`` in ``arrays``) into ``out[i]`` through a pinned
        host batch (on CUDA): the host copies them there and queues the uploads on the current stream without
        waiting for it. A pageable upload waits until that stream reaches it, and GpuBatchModel's letterbox stream
        first waits for the previous batch's input to have been taken by its graph: the model thread then sat in
        each batch's submit until the GPU had nearly finished the batch before (the likely cause of run 28b's 29 ms
        in submit per batch of 8, beside a 30 ms graph). The pinned batches are used in turn, each rewritten only
        after its last uploads have finished."""
        import torch

        cuda = self.device.type == "cuda"
        if cuda and self._registered:  # page-locked already (register_host): straight up, no host copy
            direct = [i for i in arrays if any(lies_within(items[i], b, nb) for b, nb in self._registered)]
            for i in direct:
                out[i].copy_(torch.from_numpy(items[i]), non_blocking=True)
            arrays = [i for i in arrays if i not in direct]
            if not arrays:
                return
        ring = self._staging.setdefault(batch, [])  # the least recently used first
        slot: List[Any]
        if len(ring) < _STAGING:
            slot = [torch.empty((batch, 3, *self.input_hw), dtype=torch.uint8, pin_memory=cuda), None]
        else:
            slot = ring.pop(0)
        ring.append(slot)
        host, uploaded = slot
        if uploaded is not None:
            t0 = time.perf_counter()
            uploaded.synchronize()
            self.host_s["reuse_wait"] += time.perf_counter() - t0
        view = host.numpy()
        for i in arrays:
            np.copyto(view[i], items[i])
            out[i].copy_(host[i], non_blocking=cuda)
        if cuda:
            slot[1] = torch.cuda.Event()
            slot[1].record(torch.cuda.current_stream(self.device))

    def register_host(self, array: np.ndarray) -> Optional[Callable[[], None]]:
        """Page-lock ``array``'s memory (``cudaHostRegister``; the streaming runner's shared-memory slots) so that
        :meth:`_upload` copies letterboxed items lying in it straight to the device, without the pinned staging
        batch. Returns the undo (it waits for the device first), or None off CUDA or when CUDA refuses."""
        import torch

        if self.device.type != "cuda" or array.nbytes == 0:
            return None
        base, nbytes = array.ctypes.data, int(array.nbytes)
        cudart = torch.cuda.cudart()
        with torch.cuda.device(self.device):
            status = cudart.cudaHostRegister(base, nbytes, 0)
        if int(status) != 0:  # e.g. memory that cannot be locked: the staging copy as before
            warnings.warn(
                f"cudaHostRegister of {nbytes} bytes failed ({status}); inputs go through a pinned copy",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        self._registered.append((base, nbytes))

        def undo() -> None:
            torch.cuda.synchronize(self.device)
            self._registered.remove((base, nbytes))
            with torch.cuda.device(self.device):
                cudart.cudaHostUnregister(base)

        return undo

    def _decode_nvimgcodec(self, items: Any, encoded: List[int]) -> Dict[int, Any]:
        """nvImageCodec on the device's current stream -> ``{item: [3, h, w] uint8 view}``; an item it refused is
        absent (the host decoder tries it). The views alias nvImageCodec's images, kept until the next call has
        decoded and waited for the event recorded after this batch's letterbox kernels (queued on the same
        stream): ``GpuBatchModel.submit`` does not wait for a batch before the next."""
        import torch

        assert self._nvimg is not None
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        t0 = time.perf_counter()
        images = self._nvimg.decode([np.asarray(items[i]) for i in encoded], stream)
        t1 = time.perf_counter()
        if self._done is not None:  # the last batch's letterbox has read its images (GpuBatchModel no longer
            self._done.synchronize()  # waits for a batch before decoding the next one)
        self.host_s["decode"] += t1 - t0
        self.host_s["reuse_wait"] += time.perf_counter() - t1
        self._keep = [img for img in images if img is not None]
        out: Dict[int, Any] = {}
        for i, img in zip(encoded, images):
            if img is not None:
                out[i] = torch.as_tensor(img, device=self.device).permute(2, 0, 1)  # HWC -> CHW, no copy
        return out

    def _letterbox_into(self, dst: Any, img: Any) -> None:
        import torch.nn.functional as F

        from ..runtime.preprocess import Letterbox, host_resize_is_opencv

        h, w = int(img.shape[1]), int(img.shape[2])
        rh, rw = Letterbox.fit(h, w, self.input_hw).size_in(self.input_hw)
        if (rh, rw) == (h, w):
            dst[:, :rh, :rw] = img
            return
        if host_resize_is_opencv((h, w), (rh, rw), self.resize):  # the host's pixels exactly (session 18)
            if self.kernel:  # resize and fill in one launch
                self._opencv_kernel(dst, img, rh, rw)
            else:
                dst[:, :rh, :rw] = self._opencv_resize(img, rh, rw)
            return
        antialias = self.resize == "detectron2"
        r = F.interpolate(img[None].float(), size=(rh, rw), mode="bilinear", align_corners=False, antialias=antialias)
        dst[:, :rh, :rw] = r[0].round_().clamp_(0, 255).to(dst.dtype)

    def _opencv_resize(self, img: Any, rh: int, rw: int) -> Any:
        """``[3, h, w]`` uint8 on the device resized to ``rh x rw`` as the host letterbox's OpenCV ``INTER_LINEAR``
        does, bit for bit (:func:`~rcnn_deploy.runtime.preprocess.opencv_linear_resize_numpy`, in int32 here: the
        largest product is below 2**27)."""
        import torch

        from ..runtime.preprocess import opencv_linear_resize_chw

        x_taps = self._opencv_taps(rw, int(img.shape[2]), True)
        y_taps = self._opencv_taps(rh, int(img.shape[1]), False)
        return opencv_linear_resize_chw(img.to(torch.int32), x_taps, y_taps).to(torch.uint8)

    def _opencv_kernel(self, dst: Any, img: Any, rh: int, rw: int) -> None:
        """:meth:`_opencv_resize` into ``dst``'s top-left ``rh x rw`` and the fill around it, by one Triton
        launch (:mod:`._letterbox_kernel`): the same integer arithmetic with the same taps, no int32 copies."""
        import triton

        from ._letterbox_kernel import letterbox_opencv_kernel

        x_taps = self._opencv_taps(rw, int(img.shape[2]), True)
        y_taps = self._opencv_taps(rh, int(img.shape[1]), False)
        out_h, out_w = int(dst.shape[1]), int(dst.shape[2])
        grid = (triton.cdiv(out_h, _LETTERBOX_BLOCK[0]), triton.cdiv(out_w, _LETTERBOX_BLOCK[1]))
        letterbox_opencv_kernel[grid](
            img, *img.stride(), dst, *x_taps, *y_taps, rh, rw, out_h, out_w, self.fill,
            BLOCK_H=_LETTERBOX_BLOCK[0], BLOCK_W=_LETTERBOX_BLOCK[1],
        )  # fmt: skip

    def _opencv_taps(self, n_out: int, n_in: int, clamp_fraction: bool) -> Tuple[Any, ...]:
        """:func:`~rcnn_deploy.runtime.preprocess.opencv_linear_taps` on the device (indices int64, weights
        int32), kept per size."""
        import torch

        from ..runtime.preprocess import opencv_linear_taps

        key = (n_out, n_in, clamp_fraction)
        got = self._taps.get(key)
        if got is None:
            i0, i1, c0, c1 = opencv_linear_taps(n_out, n_in, clamp_fraction)
            got = self._taps[key] = (
                torch.from_numpy(i0).to(self.device),
                torch.from_numpy(i1).to(self.device),
                torch.from_numpy(c0.astype(np.int32)).to(self.device),
                torch.from_numpy(c1.astype(np.int32)).to(self.device),
            )
        return got

    def _host_fallback(self, dst: Any, data: np.ndarray) -> Optional[str]:
        import torch

        from ..runtime.preprocess import letterbox, load_rgb

        try:
            rgb = load_rgb(data.tobytes(), max_pixels=self.max_pixels)
            arr, _ = letterbox(rgb, self.input_hw, self.fill.view(3).tolist(), dtype=np.uint8, resize=self.resize)
        except ValueError as e:  # UserError included
            return str(e)
        dst.copy_(torch.from_numpy(arr))
        return None


class GpuBatchModel:
    """The runner's model (``submit(items) -> wait()``) for :class:`CudaGraphModel`: items are JPEG bytes or
    letterboxed uint8 arrays (see :class:`GpuLetterbox`); outputs come back as host arrays, plus an ``errors``
    column (None, or why that image failed).

    ``post`` (a :class:`rcnn_deploy.glue.gpu_post.GpuPost`): post-process each batch on the device instead, so
    only compact results come back (``detections``: each image's detections in original pixels with RLE masks,
    ``finite``; :meth:`rcnn_deploy.api.HostStages.detections_for` takes them); ``submit`` then needs each
    image's letterbox (``takes_letterboxes``: the runner passes them). ``model`` is any callable from a
    ``[B, 3, H, W]`` uint8 batch on the device to the padded outputs there (the tests run the eager model on the
    CPU)."""

    #: batches in flight in the runner: one post-processed (or copied back) while the next ones decode and replay
    depth = 3

    def __init__(self, model: Any, letterbox: GpuLetterbox, batch: int, post: Any = None) -> None:
        self.model, self.letterbox, self.lo, self.hi = model, letterbox, 1, batch
        self.post = post
        self.takes_letterboxes = post is not None
        # host seconds by stage, summed over batches (benchmarks read and reset them): letterbox (decode included),
        # launch (the whole model call where it has no launch), finish (waits for the GPU), post (or the copy back;
        # with GPU post-processing of a CudaGraphModel launch, finish is 0 and post holds the wait: post-processing is
        # queued behind the graph before anything waits)
        self.stage_s: Dict[str, float] = dict.fromkeys(("letterbox", "launch", "finish", "post"), 0.0)
        self._stage_lock = threading.Lock()  # the waiters of several batches add to it from their threads
        # a model that queues a batch without waiting (CudaGraphModel.launch) on a CUDA device: the batch's
        # post-processing (or copy back) runs in the runner's waiter thread, on a stream of its own (_stream),
        # while the model thread decodes and replays the next batch; else everything happens in submit, as before.
        # The decoding and letterboxing run on a stream of their own too (_pre_stream), so that the next batch's
        # decode (nvJPEG, the GPU's JPEG engines) and letterbox kernels run beside this batch's replay: they wait
        # only until the graph has copied the letterbox buffer, the replay only for its batch's letterbox (run
        # 26b: one stream, 42 ms a batch of 8 for a 29.5 ms forward; run 26c: two, 38 ms)
        self._launch = getattr(model, "launch", None)
        self._stream: Any = None  # (None on the CPU: the tests' models)
        self._pre_stream: Any = None
        self._copied: Any = None
        if callable(self._launch) and letterbox.device.type == "cuda":
            import torch

            self._stream = torch.cuda.Stream(letterbox.device)
            self._pre_stream = torch.cuda.Stream(letterbox.device)

    def submit(self, items: List[np.ndarray], letterboxes: Optional[List[Any]] = None) -> Any:
        n = len(items)
        if self.post is not None and (letterboxes is None or len(letterboxes) != n):
            raise ValueError("GpuBatchModel with post-processing on the device needs each image's letterbox")
        t0 = time.perf_counter()
        if self._pre_stream is not None:
            x, errors = self._letterbox_beside(items)
        else:
            x, errors = self.letterbox(items, self.hi)
        t1 = time.perf_counter()
        if not callable(self._launch):
            out = self.model(x)
            t2 = time.perf_counter()
            host = self._host(out, n, letterboxes)
            self._add_stage_s(letterbox=t1 - t0, launch=t2 - t1, post=time.perf_counter() - t2)
            host["errors"] = np.array(errors, dtype=object)
            return lambda: host
        finish = self._launch(x)
        self._copied = getattr(self.model, "input_copied", None)
        self._add_stage_s(letterbox=t1 - t0, launch=time.perf_counter() - t1)

        def wait() -> Dict[str, Any]:
            import torch

            with torch.cuda.stream(self._stream):
                t3 = time.perf_counter()
                ready = getattr(finish, "ready", None)
                if self.post is not None and ready is not None:
                    # the post-processing queued behind the graph without waiting for it (its launches overlap the
                    # graph's tail); its one synchronisation passes the convergence flag, read after it
                    t4 = t3
                    host = self._host(ready(), n, letterboxes)
                    redo = finish.exact_if_needed()
                    if redo is not None:  # an NMS had not converged within its rounds: the exact batch instead
                        host = self._host(redo, n, letterboxes)
                else:
                    out = finish()
                    t4 = time.perf_counter()
                    host = self._host(out, n, letterboxes)
            self._add_stage_s(finish=t4 - t3, post=time.perf_counter() - t4)
            host["errors"] = np.array(errors, dtype=object)
            return host

        return wait

    def _add_stage_s(self, **seconds: float) -> None:
        with self._stage_lock:
            for k, v in seconds.items():
                self.stage_s[k] += v

    def _letterbox_beside(self, items: List[np.ndarray]) -> Any:
        """The letterbox on the decode stream, after the last batch's buffer was copied into the graph's input;
        the current stream (the replay's) then waits for it."""
        import torch

        with torch.cuda.stream(self._pre_stream):
            if self._copied is not None:
                self._pre_stream.wait_event(self._copied)
            x, errors = self.letterbox(items, self.hi)
            ready = torch.cuda.Event()
            ready.record(self._pre_stream)
        torch.cuda.current_stream(self._pre_stream.device).wait_event(ready)
        return x, errors

    def read_host_inputs(self, array: np.ndarray) -> Optional[Callable[[], None]]:
        """The streaming runner's offer (:func:`rcnn_deploy.runtime.stream.host_inputs_pinned`): letterboxed items
        in ``array`` are uploaded from it directly (:meth:`GpuLetterbox.register_host`). Their uploads are queued
        before the replay whose outputs :meth:`submit`'s waiter returns, so a slot is free once they are back."""
        return self.letterbox.register_host(array)

    def _host(self, out: Dict[str, Any], n: int, letterboxes: Optional[List[Any]]) -> Dict[str, Any]:
        """The batch's first ``n`` outputs post-processed on the device (``post``) or copied back."""
        if self.post is not None:
            return self.post({k: v[:n] for k, v in out.items()}, letterboxes)
        return {k: v[:n].cpu().numpy() for k, v in out.items()}

    def close(self) -> None:
        pass
