"""A TensorRT engine as the streaming runner's asynchronous model (torch-free, Python 3.9 compatible).

``slots`` execution contexts, each with its own CUDA stream, device buffers and pinned (page-locked) host
buffers. ``submit`` copies a batch into a free slot's pinned input, enqueues upload -> execute -> download on
that slot's stream and returns at once; the returned callable waits for that stream alone. With two slots the
next batch's upload overlaps the current batch's compute, and the host prepares batch i+2 meanwhile. Inputs
travel in the engine's input dtype (uint8 for an ``--input-dtype uint8`` export: a quarter of float32's bytes).

With ``cuda_graph`` (the default), a slot's engine run and the download of its outputs are captured in a CUDA graph
the second time the slot runs a batch size, and replayed from then on (what ``trtexec --useCudaGraph`` does): one
launch instead of the engine's few hundred kernel launches and copies from the calling thread. The capture is
thread-local (the other slots' threads go on decoding and enqueueing meanwhile); a capture that fails (an engine
whose enqueue cannot be captured) turns graphs off for the model and the runs go on enqueued as before.

``blocking_wait``: the returned callable waits on an event made with ``cudaEventBlockingSync`` (the waiting thread
sleeps until the GPU is done) instead of ``cudaStreamSynchronize``, which spins a core per waiting thread when the
machine has more cores than GPUs (CUDA's default scheduling).
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, cast

import numpy as np

from ...runtime.stream import BatchModel, lies_within

_H2D, _D2H = 1, 2  # cudaMemcpyKind
_CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal: other threads' CUDA calls are not checked
_EVENT_BLOCKING = 0x1 | 0x2  # cudaEventBlockingSync | cudaEventDisableTiming


class _Pinned:
    """Page-locked host memory viewed as a numpy array (cudaHostAlloc / cudaFreeHost)."""

    def __init__(self, lib: Any, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self.lib = lib
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.ptr = ctypes.c_void_p()
        status = lib.cudaHostAlloc(ctypes.byref(self.ptr), ctypes.c_size_t(max(self.nbytes, 1)), 0)
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaHostAlloc({self.nbytes} bytes)")
        assert self.ptr.value is not None  # cudaHostAlloc succeeded
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr.value)
        self.array = np.frombuffer(memoryview(raw), dtype=np.uint8)[: self.nbytes].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.lib.cudaFreeHost(self.ptr)
            self.ptr = ctypes.c_void_p()


class NonBlockingStream:
    """A CUDA stream that does not synchronise with the legacy default stream (``cudaStreamNonBlocking``): work a
    library enqueues on stream 0 (a synchronous copy, a memset) then neither waits for an engine running here nor
    holds it up. ``ptr`` and ``synchronize()`` as polygraphy's ``cuda.Stream``."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        handle = ctypes.c_void_p()
        status = lib.cudaStreamCreateWithFlags(ctypes.byref(handle), 1)  # cudaStreamNonBlocking
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaStreamCreateWithFlags")
        self.handle = handle

    @property
    def ptr(self) -> int:
        return int(self.handle.value or 0)

    def synchronize(self) -> None:
        status = self.lib.cudaStreamSynchronize(self.handle)
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaStreamSynchronize")

    def free(self) -> None:
        if self.handle:
            self.lib.cudaStreamDestroy(self.handle)
            self.handle = ctypes.c_void_p()


class _Slot:
    def __init__(self, owner: TensorRTBatchModel, index: int) -> None:
        be = owner.backend
        self.owner_lib = owner.lib
        self.context = be.engine.create_execution_context() if index else be.context
        self.stream: Any = NonBlockingStream(owner.lib) if owner.nonblocking else be.cuda.Stream()
        self.free = threading.Event()
        self.free.set()
        self.device: Dict[str, Any] = {}
        self.host: Dict[str, _Pinned] = {}
        hi = owner.hi
        shapes = owner.max_shapes
        for name, shape in shapes.items():
            dtype = be.tensor_dtype(name)
            self.device[name] = be.cuda.DeviceArray(shape=shape, dtype=dtype)
            self.host[name] = _Pinned(owner.lib, shape, dtype)
        self.out_shapes: Dict[int, Dict[str, Tuple[int, ...]]] = {}
        self.graphs: Dict[int, ctypes.c_void_p] = {}  # batch size -> the instantiated graph of run + download
        self.ran: Set[int] = set()  # batch sizes enqueued once without capture (TensorRT sets up state then)
        self.done = ctypes.c_void_p()  # with blocking_wait: recorded after each batch's work, waited on by its caller
        self.uploaded = ctypes.c_void_p()  # after uploads straight from registered memory (made at the first one)
        if owner.blocking_wait:
            status = owner.lib.cudaEventCreateWithFlags(ctypes.byref(self.done), _EVENT_BLOCKING)
            if status != 0:
                raise RuntimeError(f"CUDA error {status} in cudaEventCreateWithFlags")
        del hi

    def wait(self) -> None:
        """Until the slot's enqueued work is done: the blocking event when there is one, else the stream."""
        if self.done.value:
            status = self.owner_lib.cudaEventSynchronize(self.done)
            if status != 0:
                raise RuntimeError(f"CUDA error {status} in cudaEventSynchronize")
        else:
            self.stream.synchronize()

    def close(self) -> None:
        for exe in self.graphs.values():
            self.owner_lib.cudaGraphExecDestroy(exe)
        self.graphs.clear()
        for event in (self.done, self.uploaded):
            if event.value:
                self.owner_lib.cudaEventDestroy(event)
        self.done, self.uploaded = ctypes.c_void_p(), ctypes.c_void_p()
        for d in self.device.values():
            d.free()
        for h in self.host.values():
            h.free()
        if isinstance(self.stream, NonBlockingStream):
            self.stream.free()


class TensorRTBatchModel(BatchModel):
    """``backend``: a loaded :class:`~rcnn_deploy.backends.tensorrt.runtime.TensorRTBackend` of a fused engine;
    ``lo``/``hi``: its optimization profile's batch range; ``rename``: output name -> the runtime's name;
    ``cuda_graph``: replay each slot's engine run from a CUDA graph; ``blocking_wait``: callers sleep until their
    batch is done instead of spinning (module docstring)."""

    def __init__(
        self,
        backend: Any,
        lo: int,
        hi: int,
        slots: int = 2,
        rename: Optional[Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None,
        nonblocking: bool = False,
        cuda_graph: bool = True,
        blocking_wait: bool = False,
        post: Any = None,
    ) -> None:
        self.backend, self.lo, self.hi = backend, int(lo), int(hi)
        self.cuda_graph, self.blocking_wait = cuda_graph, blocking_wait
        self.graph_error: Optional[str] = None  # why graphs were turned off, when a capture failed
        self.nonblocking = nonblocking  # the slots' streams: NonBlockingStream
        self.rename = rename or (lambda d: d)
        self.lib = backend.cuda.wrapper().handle
        self.input = backend.input_names[0]
        if len(backend.input_names) != 1:
            raise ValueError(f"{backend.path.name}: a fused engine takes one input, this one {backend.input_names}")
        in_shape = tuple(int(d) for d in backend.engine.get_tensor_shape(self.input))
        self.image_shape = tuple(in_shape[1:])
        if any(d < 0 for d in self.image_shape):
            raise ValueError(f"{backend.path.name}: input {self.input!r} needs a fixed image size, has {in_shape}")
        self.max_shapes: Dict[str, Tuple[int, ...]] = {self.input: (self.hi, *self.image_shape)}
        self.max_shapes.update(backend.output_shapes({self.input: (self.hi, *self.image_shape)}))
        self.in_dtype = backend.tensor_dtype(self.input)
        self.slots: List[_Slot] = [_Slot(self, i) for i in range(max(1, slots))]
        self.depth = len(self.slots)  # batches the streaming runner keeps in flight: one per slot
        self._registered: List[Tuple[int, int]] = []  # (address, bytes) page-locked by read_host_inputs
        self._next = 0
        # host seconds by stage, summed over batches (benchmarks read and reset them): prepare (the copy into the
        # pinned batch; with GPU decoding the decode and letterbox enqueue), enqueue (the engine), wait (until the
        # batch's work is done), post (outputs copied out, and the GPU paste with ``post``)
        self.stage_s: Optional[Dict[str, float]] = dict.fromkeys(("prepare", "enqueue", "wait", "post"), 0.0)
        self._stage_lock = threading.Lock()
        # the masks pasted on the device after each batch (paste.KernelPaste): the runner passes each image's letterbox
        self.post = post
        self._masks_out: Optional[str] = None
        if post is not None:
            self.takes_letterboxes = True
            found = [o for o in backend.output_names if "masks" in self.rename({o: np.empty(0)})]
            if not found:
                raise ValueError(f"{backend.path.name} has no masks output to paste on the device")
            self._masks_out = found[0]

    def _shapes(self, slot: _Slot, n: int) -> Dict[str, Tuple[int, ...]]:
        shapes = slot.out_shapes.get(n)
        if shapes is None:
            ctx = slot.context
            if not ctx.set_input_shape(self.input, (n, *self.image_shape)):
                raise ValueError(f"batch {n} is outside {self.backend.path.name}'s profile {self.lo}..{self.hi}")
            shapes = {o: tuple(int(d) for d in ctx.get_tensor_shape(o)) for o in self.backend.output_names}
            slot.out_shapes[n] = shapes
        return shapes

    #: whether :meth:`submit` wants each image's letterbox (with ``post``)
    takes_letterboxes = False
    post: Any = None
    _masks_out: Optional[str] = None
    stage_s: Optional[Dict[str, float]] = None

    def _add_stage_s(self, **seconds: float) -> None:
        if self.stage_s is not None:
            with self._stage_lock:
                for k, v in seconds.items():
                    self.stage_s[k] += v

    def submit(
        self, images: List[np.ndarray], letterboxes: Optional[List[Any]] = None
    ) -> Callable[[], Dict[str, np.ndarray]]:
        k = len(images)
        n = self._batch_size(k)
        self._check_letterboxes(k, letterboxes)
        slot = self._take_slot()
        try:
            t0 = time.perf_counter()
            if self._all_registered(images):  # page-locked already (the runner's slots): each straight up
                dev, size = slot.device[self.input].ptr, self.image_bytes
                for i in range(n):
                    src = images[min(i, k - 1)].ctypes.data
                    self._copy(dev + i * size, src, size, _H2D, slot.stream.ptr)
                self._record_uploaded(slot)
                t1 = time.perf_counter()
                shapes = self._enqueue_model(slot, n)
                self._sync(slot.uploaded)  # the images are on the device: their memory may be reused from here on
            else:
                host_in = slot.host[self.input].array
                for i in range(n):
                    np.copyto(host_in[i], images[min(i, k - 1)], casting="unsafe")  # a short batch repeats its last
                nbytes = n * self.image_bytes
                self._copy(slot.device[self.input].ptr, slot.host[self.input].ptr.value, nbytes, _H2D, slot.stream.ptr)
                t1 = time.perf_counter()
                shapes = self._enqueue_model(slot, n)
            self._add_stage_s(prepare=t1 - t0, enqueue=time.perf_counter() - t1)
        except BaseException:
            slot.free.set()
            raise
        return self._waiter(slot, shapes, k, letterboxes=letterboxes)

    def _check_letterboxes(self, k: int, letterboxes: Optional[List[Any]]) -> None:
        """With ``post``, a batch needs each image's letterbox (checked before a slot is taken)."""
        if self.post is not None and (letterboxes is None or len(letterboxes) != k):
            raise ValueError("TensorRTBatchModel with post-processing on the device needs each image's letterbox")

    def _all_registered(self, images: List[np.ndarray]) -> bool:
        return bool(self._registered) and all(
            a.dtype == self.in_dtype
            and tuple(a.shape) == self.image_shape
            and any(lies_within(a, base, nb) for base, nb in self._registered)
            for a in images
        )

    #: :meth:`submit` returns only once the uploads from registered memory are done (it waits on an event recorded
    #: after them, while the engine runs on): the runner may reuse a slot as soon as submit returns, instead of
    #: holding every in-flight batch's slots until its outputs are back (see ``runtime.stream.host_inputs_pinned``)
    host_inputs_read_late = False

    def read_host_inputs(self, array: np.ndarray) -> Optional[Callable[[], None]]:
        """The streaming runner's offer (:func:`rcnn_deploy.runtime.stream.host_inputs_pinned`): page-lock
        ``array`` (``cudaHostRegister``) and upload images lying in it straight from there, without the copy into
        the slot's pinned input. Each upload is queued on its slot's stream before the engine and the download
        that the waiter waits for; :meth:`submit` waits for the uploads (not the engine) before it returns.
        Returns the undo (waits for every slot's stream first), or None when CUDA refuses."""
        if array.nbytes == 0 or array.dtype != self.in_dtype:
            return None
        base, nbytes = array.ctypes.data, int(array.nbytes)
        status = self.lib.cudaHostRegister(ctypes.c_void_p(base), ctypes.c_size_t(nbytes), ctypes.c_uint(0))
        if status != 0:
            return None
        self._registered.append((base, nbytes))

        def undo() -> None:
            for s in self.slots:
                s.stream.synchronize()
            self._registered.remove((base, nbytes))
            self.lib.cudaHostUnregister(ctypes.c_void_p(base))

        return undo

    @property
    def image_bytes(self) -> int:
        """Bytes of one image of the model input."""
        return int(np.prod(self.image_shape)) * self.in_dtype.itemsize

    def _batch_size(self, k: int) -> int:
        if not 1 <= k <= self.hi:
            raise ValueError(f"batch of {k} images; {self.backend.path.name} takes {self.lo}..{self.hi}")
        return max(k, self.lo)

    def _record_uploaded(self, slot: _Slot) -> None:
        """Record ``slot.uploaded`` on the slot's stream after the uploads queued there (made at the first use:
        blocking-sync, so the model thread sleeps until the copy engine is done, and no timing)."""
        if not slot.uploaded.value:
            status = self.lib.cudaEventCreateWithFlags(ctypes.byref(slot.uploaded), _EVENT_BLOCKING)
            if status != 0:
                raise RuntimeError(f"CUDA error {status} in cudaEventCreateWithFlags")
        status = self.lib.cudaEventRecord(slot.uploaded, ctypes.c_void_p(slot.stream.ptr))
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaEventRecord")

    def _sync(self, event: ctypes.c_void_p) -> None:
        status = self.lib.cudaEventSynchronize(event)
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaEventSynchronize")

    def _take_slot(self) -> _Slot:
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        slot.free.wait()
        slot.free.clear()
        return slot

    def _enqueue_model(self, slot: _Slot, n: int) -> Dict[str, Tuple[int, ...]]:
        """Enqueue the engine on ``n`` images already in the slot's device input, then the outputs' download:
        replayed from the slot's CUDA graph for ``n`` when there is one, captured into one the second time."""
        shapes = self._launch_model(slot, n)
        if slot.done.value:
            status = self.lib.cudaEventRecord(slot.done, ctypes.c_void_p(slot.stream.ptr))
            if status != 0:
                raise RuntimeError(f"CUDA error {status} in cudaEventRecord")
        return shapes

    def _launch_model(self, slot: _Slot, n: int) -> Dict[str, Tuple[int, ...]]:
        shapes = self._shapes(slot, n)
        ctx = slot.context
        sptr = slot.stream.ptr
        exe = slot.graphs.get(n) if self.cuda_graph else None
        if exe is None:  # (a graph holds its shapes and addresses: the context's settings do not matter to it)
            ctx.set_input_shape(self.input, (n, *self.image_shape))
            ctx.set_tensor_address(self.input, slot.device[self.input].ptr)
            for o in self.backend.output_names:
                ctx.set_tensor_address(o, slot.device[o].ptr)

            def launch() -> None:
                if not ctx.execute_async_v3(sptr):
                    raise RuntimeError(f"TensorRT execution of {self.backend.path.name} failed")
                for o, shape in shapes.items():
                    nb = int(np.prod(shape)) * slot.host[o].array.dtype.itemsize
                    self._copy(slot.host[o].ptr.value, slot.device[o].ptr, nb, _D2H, sptr)

            if not (self.cuda_graph and n in slot.ran):
                launch()  # the first run of a batch size is not captured: TensorRT sets up its state in it
                slot.ran.add(n)
                return shapes
            exe = self._capture(sptr, launch)
            if exe is None:  # graphs are off now (graph_error says why): enqueued as without them
                launch()
                return shapes
            slot.graphs[n] = exe
        status = self.lib.cudaGraphLaunch(exe, ctypes.c_void_p(sptr))
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaGraphLaunch ({self.backend.path.name})")
        return shapes

    def _capture(self, stream: int, launch: Callable[[], None]) -> Optional[ctypes.c_void_p]:
        """``launch``'s work on ``stream`` as an instantiated CUDA graph (not run), or None, with graphs turned off
        and ``graph_error`` set, when the capture fails."""
        lib = self.lib
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        status = lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), _CAPTURE_THREAD_LOCAL)
        if status != 0:
            self._no_graphs(f"CUDA error {status} in cudaStreamBeginCapture")
            return None
        error: Optional[str] = None
        try:
            launch()
        except RuntimeError as e:  # an enqueue that cannot be captured; the stream must still leave capture mode
            error = str(e)
        finally:
            status = lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph))
        if error is not None or status != 0 or not graph.value:
            if graph.value:
                lib.cudaGraphDestroy(graph)
            self._no_graphs(error or f"CUDA error {status} in cudaStreamEndCapture")
            return None
        status = lib.cudaGraphInstantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0))
        lib.cudaGraphDestroy(graph)
        if status != 0:
            self._no_graphs(f"CUDA error {status} in cudaGraphInstantiate")
            return None
        return exe

    def _no_graphs(self, why: str) -> None:
        self.cuda_graph = False
        self.graph_error = f"CUDA graph capture of {self.backend.path.name} failed ({why}); runs are enqueued instead"

    def _waiter(
        self,
        slot: _Slot,
        shapes: Dict[str, Tuple[int, ...]],
        k: int,
        keep: Any = None,
        letterboxes: Optional[List[Any]] = None,
    ) -> Callable[[], Dict[str, np.ndarray]]:
        """The callable that waits for the slot's stream and returns the first ``k`` images' outputs; ``keep``
        holds what the enqueued work reads until then (device buffers owned by others). With ``post`` and
        ``letterboxes``: the masks pasted from the slot's device outputs, ``detections`` and ``finite`` instead."""

        def result() -> Dict[str, np.ndarray]:
            try:
                t0 = time.perf_counter()
                slot.wait()
                t1 = time.perf_counter()
                out = {}
                for o, shape in shapes.items():
                    flat = slot.host[o].array.reshape(-1)[: int(np.prod(shape))]
                    out[o] = flat.reshape(shape)[:k].copy()
                out = self.rename(out)
                if self.post is not None and self._masks_out is not None:
                    masks_ptr = slot.device[self._masks_out].ptr
                    out = cast(Dict[str, np.ndarray], self.post(out, masks_ptr, slot.stream.ptr, letterboxes, id(slot)))
                self._add_stage_s(wait=t1 - t0, post=time.perf_counter() - t1)
                return out
            finally:
                del keep_alive[:]
                slot.free.set()

        keep_alive = [keep]
        return result

    def _copy(self, dst: Optional[int], src: Optional[int], nbytes: int, kind: int, stream: int) -> None:
        status = self.lib.cudaMemcpyAsync(
            ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind, ctypes.c_void_p(stream)
        )
        if status != 0:
            raise RuntimeError(f"CUDA error {status} in cudaMemcpyAsync")

    def close(self) -> None:
        for s in self.slots:
            s.stream.synchronize()
            s.close()
        if self.post is not None:
            self.post.close()
