"""The streaming runner: every command that runs a model over many images goes through :func:`run_stream`
(numpy only; Python 3.9 compatible, so it also runs beside TensorRT 8.6 on CPython 3.9).

Stages, overlapped, with bounded queues between them (memory does not grow with the dataset):

    source items ─► decode + letterbox (worker threads) ─► batches ─► model (one thread; an async
    model enqueues batch i+1 while batch i computes) ─► outputs fetched (worker) ─► postprocess + the
    caller's per-image work (worker threads) ─► results, in input order

Pillow's decoders and resamplers, numpy's copies and ONNX Runtime / TensorRT release the GIL, so threads
overlap the stages. An image that fails anywhere (decode, size limit, non-finite outputs) becomes a result
with its ``error`` set; the run goes on. Any other exception stops the run: the generator's ``finally``
cancels what is queued and joins every thread (no hung threads on Ctrl-C or on errors).
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Generator,
    Iterable,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

import numpy as np

from ..errors import UserError
from ._opencv import opencv
from .detections import Detections
from .sources import Item

Outputs = Dict[str, np.ndarray]


class SubmitModel(Protocol):
    """The runner's model interface: :class:`BatchModel` and its subclasses, and the GPU model of
    ``backends.torch_cuda`` (a batch of encoded images rather than arrays, and, when it post-processes on the
    device, each image's letterbox too: a model with ``takes_letterboxes`` true is called
    ``submit(images, letterboxes)``, see :func:`submit_batch`)."""

    lo: int
    hi: int

    def submit(self, images: List[np.ndarray]) -> Callable[[], Outputs]: ...

    def close(self) -> None: ...


def host_inputs_pinned(model: Any, array: np.ndarray) -> Optional[Callable[[], None]]:
    """Offer ``model`` the host memory its inputs will come from (the worker processes' shared-memory slots),
    only when ``RCNN_DEPLOY_PINNED_SLOTS=1``: a model with ``read_host_inputs(array)`` may then page-lock it
    (``cudaHostRegister``) and upload each image straight from its slot, asynchronously, instead of copying the
    batch into a pinned buffer of its own on the model thread. It returns the undo (which first waits for the
    device), or None when it declines. A slot is reused only once its batch's outputs are back, unless the model's
    ``host_inputs_read_late`` is False: its ``submit`` returns after the uploads are done (TensorRT's
    ``TensorRTBatchModel`` waits for them), and the slots go back at submit as with the copy. Holding every in-flight
    batch's slots through its compute leaves fewer slots for the workers to decode into, but that was not what made
    the page-locked passes below slower: with the slots given back at submit, TensorRT 8.6 still ran 230-247 img/s
    page-locked against 257-272 copied (run 34, H100, three pairs alternating; the workers starved the model about
    as long both ways).

    Off by default because it measured slower end to end (run 30, H100, 256 1920x1080 JPEGs at 1344², batch 8, host
    decode in 14 processes): PyTorch 198-213 img/s page-locked against 224-250 with the copy, four pairs of passes
    alternating which went first; TensorRT 8.6 277.5 against 289.2, one pair; the same COCO results both ways. The
    upload alone was faster (``benchmarks/host_register_bench.py``: 0.83 against 5.8 ms a batch), so the copy was
    not what limited those rows; why page-locking costs throughput was not found."""
    if os.environ.get("RCNN_DEPLOY_PINNED_SLOTS", "0") != "1":
        return None
    read = getattr(model, "read_host_inputs", None)
    return read(array) if callable(read) else None


def lies_within(a: np.ndarray, base: int, nbytes: int) -> bool:
    """Whether ``a`` is C-contiguous and all its bytes lie in ``[base, base + nbytes)``."""
    start = a.ctypes.data
    return bool(a.flags.c_contiguous) and base <= start and start + a.nbytes <= base + nbytes


def submit_batch(model: Any, images: List[np.ndarray], letterboxes: List[Any]) -> Callable[[], Outputs]:
    """``model.submit(images)``, with the images' letterboxes for a model that takes them (``takes_letterboxes``:
    it maps boxes and pastes masks itself, ``backends.torch_cuda.GpuBatchModel`` with ``post``)."""
    if getattr(model, "takes_letterboxes", False):
        return model.submit(images, letterboxes)
    return model.submit(images)


class BatchModel:
    """What the runner needs of a model: ``submit(images)`` starts one batch (a list of ``[3, H, W]`` arrays,
    ``lo <= len <= hi``) and returns a callable that waits for and returns the padded outputs.

    This default runs a synchronous ``run(stacked) -> outputs`` at submit time; an asynchronous backend (a
    TensorRT engine with double-buffered streams) returns before the GPU is done."""

    def __init__(self, run: Callable[[np.ndarray], Outputs], lo: int = 1, hi: int = 1 << 30) -> None:
        self.run, self.lo, self.hi = run, lo, hi

    def submit(self, images: List[np.ndarray]) -> Callable[[], Outputs]:
        out = self.run(np.stack(images))
        return lambda: out

    def close(self) -> None:
        pass


class ReplicatedModel(BatchModel):
    """Copies of a synchronous model that run batches side by side: ``submit`` hands the batch to the next free
    copy on its own thread and returns its waiter, so the runner keeps ``depth`` (= copies) batches in flight.

    For CPUs, where one ONNX Runtime session does not use its cores fully at batch 1 (the RPN top-k, NMS and the
    per-ROI heads are short serial stretches): two sessions with one intra-op thread each finish two images in
    less time than one two-thread session finishes them one after another."""

    def __init__(self, runs: Sequence[Callable[[np.ndarray], Outputs]], lo: int = 1, hi: int = 1 << 30) -> None:
        if not runs:
            raise ValueError("ReplicatedModel needs at least one copy")
        super().__init__(runs[0], lo, hi)
        self.depth = len(runs)
        self._free: queue.Queue[Callable[[np.ndarray], Outputs]] = queue.Queue()
        for r in runs:
            self._free.put(r)
        self._pool = ThreadPoolExecutor(len(runs), thread_name_prefix="rcnn-replica")

    def submit(self, images: List[np.ndarray]) -> Callable[[], Outputs]:
        stacked = np.stack(images)

        def job() -> Outputs:
            run = self._free.get()
            try:
                return run(stacked)
            finally:
                self._free.put(run)

        return self._pool.submit(job).result

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class Prepared:
    item: Item
    array: Optional[np.ndarray] = None  # the letterboxed model input [3, H, W]
    letterbox: Any = None
    image: Optional[np.ndarray] = None  # the decoded RGB, when kept for the caller
    error: Optional[str] = None
    slot: Optional[int] = None  # with worker processes: the shared-memory slot holding ``array``


@dataclass
class StreamResult:
    """One image's outcome: ``detections`` in original-image coordinates (masks as
    :class:`~rcnn_deploy.runtime.masks.LazyMasks`), or ``error`` when it failed; ``image`` is the decoded
    RGB when the run keeps images; ``extra`` is what the caller's per-image function returned."""

    item: Item
    detections: Optional[Detections] = None
    error: Optional[str] = None
    image: Optional[np.ndarray] = None
    extra: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def index(self) -> int:
        return self.item.index

    @property
    def name(self) -> str:
        return self.item.name


@dataclass
class StreamStats:
    """Counters of a run (filled while it goes; read it after or during)."""

    done: int = 0
    failed: int = 0
    batches: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: Optional[float] = None
    # where the time went: seconds the model thread spent in ``submit`` (for a synchronous model: the whole
    # model call), in waiting for outputs, and seconds the loop had no batch to give the model (input starved)
    model_submit_s: float = 0.0
    model_wait_s: float = 0.0
    starved_s: float = 0.0
    pinned_slots: bool = False  # the model uploaded straight from the page-locked shared-memory slots

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def images_per_s(self) -> float:
        s = self.seconds
        return self.done / s if s > 0 else 0.0


def default_workers() -> int:
    return max(2, min(16, (os.cpu_count() or 2)))


def default_processes() -> int:
    """Worker processes for decode + postprocessing: none on small machines (threads do), else half the cores."""
    n = os.cpu_count() or 2
    return 0 if n < 8 else min(16, n // 2)


def _finish(
    postprocess: Callable[[Prepared, Outputs], Detections],
    per_image: Optional[Callable[[StreamResult], Any]],
    p: Prepared,
    outs: Optional[Outputs],
    error: Optional[str],
) -> StreamResult:
    """Postprocess one image and run the caller's per-image function; a ValueError fails this image only."""
    res = StreamResult(p.item, image=p.image, error=error)
    if error is None and outs is not None:
        try:
            res.detections = postprocess(p, outs)
            if per_image is not None:
                res.extra = per_image(res)
        except ValueError as e:  # UserError included: this image only
            res.error, res.detections = str(e), None
    return res


class DropMasksAfter:
    """A per-image function that runs ``per_image`` and then leaves the result's detections without their masks
    (boxes, scores and classes stay): for a caller whose per-image function already wrote the masks (COCO RLE),
    so that a worker process does not send each image's ``M x M`` probabilities back (picklable when
    ``per_image`` is)."""

    def __init__(self, per_image: Callable[[StreamResult], Any]) -> None:
        self.per_image = per_image

    def __call__(self, r: StreamResult) -> Any:
        extra = self.per_image(r)
        d = r.detections
        if d is not None and d.has_masks:
            r.detections = Detections(d.boxes, d.scores, d.classes)
        return extra


# ------------------------------------------------------------------ worker processes (decode, postprocess)
# Each worker process gets a run's stages once (with the run's first task it sees) and the model inputs go through
# shared memory: a ring of slots the size of one letterboxed image, so no image is pickled between processes.
_WORKER: Dict[str, Any] = {}


def _check_spawnable(**stages: Any) -> None:
    """Raise a :class:`UserError` saying what to change when ``spawn`` worker processes could not start: the
    program's main script must be a file they can import, and the stages must pickle (both otherwise surface as
    a bare ``BrokenProcessPool`` or a pickling traceback from inside the pool)."""
    import pickle

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is not None and not os.path.isfile(path):
        raise UserError(
            f"worker processes cannot start: they import this program's main script, and {path!r} is not a file "
            "(a script read from standard input, or an embedded interpreter)",
            where="processes=",
            fix="save the script to a file and run that, or pass processes=0 (worker threads)",
        )
    for name, fn in stages.items():
        if fn is None:
            continue
        try:
            pickle.dumps(fn)
        except Exception as e:  # noqa: BLE001 - pickling raises several types; all mean the same here
            raise UserError(
                f"worker processes get {name} pickled, and it does not pickle ({type(e).__name__}: {e})",
                where="processes=",
                fix=f"make {name} a function defined at module level (not a lambda or a nested function) "
                "or pass processes=0 (worker threads)",
            ) from None


_DIED: List[type] = []  # WorkerProcessesDied, made on first use (concurrent.futures.process costs ~40 ms to import)


def _died_class() -> type:
    if not _DIED:
        from concurrent.futures.process import BrokenProcessPool

        doc = "A worker process of the streaming runner ended: a UserError that is also a BrokenProcessPool."
        attrs = {"__module__": __name__, "__qualname__": "WorkerProcessesDied", "__doc__": doc}
        _DIED.append(type("WorkerProcessesDied", (UserError, BrokenProcessPool), attrs))
    return _DIED[0]


def __getattr__(name: str) -> Any:  # WorkerProcessesDied by name (pickle finds the class here), made when asked
    if name == "WorkerProcessesDied":
        return _died_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def worker_processes_died(e: BaseException) -> Optional[BaseException]:
    """For a ``BrokenProcessPool`` from the worker processes: the same failure as a :class:`UserError` that says
    the likely causes and what to do (still a ``BrokenProcessPool``: ``except BrokenProcessPool`` keeps catching
    it); None for anything else."""
    from concurrent.futures.process import BrokenProcessPool

    if not isinstance(e, BrokenProcessPool) or isinstance(e, UserError):
        return None
    return _died_class()(
        f"a worker process ended while the run needed it ({e})",
        where="processes=",
        fix="worker processes start by importing the main script: code that starts a run at module level must sit "
        'under `if __name__ == "__main__":`, or each worker starts the run again and dies; a worker the system '
        "killed (out of memory) ends the same way. Guard the script's main code, or pass processes=0 (worker threads)",
    )


def _worker_init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    cv2 = opencv()
    if cv2 is not None:
        cv2.setNumThreads(1)  # one worker, one core: OpenCV's own pool would oversubscribe them
    _exit_with_parent()


def _exit_with_parent() -> None:
    """End this worker process when its parent dies without shutting the pool down (a crash, SIGKILL). Otherwise
    the worker waits on its task queue for ever, and it holds whatever the parent gave it open: run 36's TensorRT
    process died with SIGSEGV and its 14 idle workers kept the caller's stdout pipe open, so the caller hung. A
    daemon thread waits on the parent's sentinel (``multiprocessing.parent_process()``, readable once the
    parent is gone)."""
    import multiprocessing as mp

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the sentinel is readable: the parent has exited
        os._exit(1)

    threading.Thread(target=watch, name="rcnn-deploy-parent-watch", daemon=True).start()


def _use(run: Tuple[int, bytes]) -> Dict[str, Any]:
    """This worker's stages for run ``run`` (its token and its pickled stages, sent with every task): unpickled,
    and its shared memory attached, on the first task of a run (a pool outlives runs: :class:`WorkerPool`)."""
    token, blob = run
    if _WORKER.get("token") != token:
        import pickle
        from multiprocessing import shared_memory

        prepare, postprocess, per_image, shm_name, shape, dtype = pickle.loads(blob)
        old = _WORKER.pop("shm", None)
        _WORKER.clear()
        if old is not None:
            old.close()
        _WORKER.update(token=token, prepare=prepare, postprocess=postprocess, per_image=per_image)
        _WORKER["prepare_out"] = prepare is not None and _takes_out(prepare)
        if shm_name is not None:  # None: this run's workers only post-process
            shm = shared_memory.SharedMemory(name=shm_name)
            _WORKER["shm"] = shm
            _WORKER["slots"] = np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf)
    return _WORKER


def _takes_out(fn: Callable[..., Any]) -> bool:
    """Whether a prepare callable takes ``out=`` (an array to letterbox into, as :meth:`HostStages.prepare
    <rcnn_deploy.api.HostStages.prepare>` does): the worker then writes the image straight into its shared-memory
    slot rather than into a new array copied there."""
    import inspect

    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _worker_prepare(run: Tuple[int, bytes], item: Item, slot: int) -> Prepared:
    w = _use(run)
    dst = w["slots"][slot]
    p = w["prepare"](item, out=dst) if w["prepare_out"] else w["prepare"](item)
    if p.error is None:
        if p.array is not dst:  # made elsewhere (e.g. not letterboxed here): copied into the slot
            dst[...] = p.array
        p.array = None
    p.slot = slot  # a failed item's slot goes back to the free list too
    return p


def _worker_finish(run: Tuple[int, bytes], p: Prepared, outs: Optional[Outputs], error: Optional[str]) -> StreamResult:
    w = _use(run)
    return _finish(w["postprocess"], w["per_image"], p, outs, error)


def _worker_finish_batch(run: Tuple[int, bytes], group: List[Prepared], outs: List[Outputs]) -> List[StreamResult]:
    """A batch's images postprocessed in one task (one hand-over each way instead of one per image)."""
    w = _use(run)
    post, per_image = w["postprocess"], w["per_image"]
    return [_finish(post, per_image, p, o, None) for p, o in zip(group, outs)]


class WorkerPool:
    """Worker processes (``spawn``) that outlive one run: :meth:`Detector.stream` keeps one per process count, so
    a second run does not start (and import numpy, OpenCV and the package in) every process again, about half a
    second of a 256-image run on the GPU machine. Each run's stages travel pickled with its tasks and are
    unpickled once per worker and run. A pool whose process died is replaced on the next run. ``close()`` ends
    the processes (they also end with the program)."""

    def __init__(self, processes: int) -> None:
        self.processes = int(processes)
        self._executor: Any = None
        self._lock = threading.Lock()

    def executor(self) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with self._lock:
            if self._executor is not None and getattr(self._executor, "_broken", False):
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes, mp_context=mp.get_context("spawn"), initializer=_worker_init
                )
            return self._executor

    def pids(self) -> List[int]:
        """The process ids of the running workers (none before the first run; for measurements)."""
        with self._lock:
            return sorted(getattr(self._executor, "_processes", None) or {})

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None


_RUNS = itertools.count(1)


_PER_DETECTION = ("boxes", "scores", "classes", "masks")


def _image_outputs(outs: Outputs, i: int, trim: bool) -> Outputs:
    """Image ``i``'s outputs of a batch (a batch of 1); ``trim``: the padded per-detection outputs cut to the
    image's ``num_detections`` (what postprocessing reads), so a worker process is sent only those."""
    one = {k: v[i : i + 1] for k, v in outs.items()}
    if trim and "num_detections" in one:
        n = int(np.asarray(one["num_detections"]).reshape(-1)[0])
        padded = one["boxes"].shape[1] if "boxes" in one and one["boxes"].ndim >= 2 else None
        for k in _PER_DETECTION:
            v = one.get(k)
            if v is not None and padded is not None and v.ndim >= 2 and v.shape[1] == padded and 0 <= n <= padded:
                one[k] = v[:, :n]
    return one


def _for_post(p: Prepared) -> Prepared:
    """``p`` without its model input (postprocessing reads the item and letterbox): a worker process is not sent
    the input (with GPU decoding, the encoded file)."""
    if p.array is None:
        return p
    return Prepared(p.item, None, p.letterbox, p.image, p.error, p.slot)


_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class _SingleThreadedBlas:
    """One BLAS thread per worker while a run goes: the mask paste multiplies small matrices, and a threaded
    BLAS in each of many workers oversubscribes the cores (measured 4x slower per mask on a 2-core machine).
    Worker processes get it through the environment they are spawned with; the calling process through
    threadpoolctl when it is installed (the model thread's BLAS is limited too, for the run)."""

    def __init__(self, processes: int) -> None:
        self.saved = {k: os.environ.get(k) for k in _BLAS_ENV}
        if processes > 0:
            os.environ.update({k: "1" for k in _BLAS_ENV})
        self.limiter: Any = None
        try:
            from threadpoolctl import threadpool_limits

            self.limiter = threadpool_limits(1, user_api="blas")
        except ImportError:  # pragma: no cover - optional
            pass
        self.cv2 = opencv()
        self.cv2_threads = self.cv2.getNumThreads() if self.cv2 is not None else 0
        if self.cv2 is not None:
            self.cv2.setNumThreads(1)  # the same for OpenCV's resize in worker threads

    def restore(self) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.limiter is not None:
            self.limiter.restore_original_limits()
        if self.cv2 is not None:
            self.cv2.setNumThreads(self.cv2_threads)


class _Slots:
    """``n`` shared-memory slots of one model input each, and the free list."""

    def __init__(self, n: int, shape: Tuple[int, ...], dtype: Any) -> None:
        from multiprocessing import shared_memory

        self.shape = (n, *shape)
        self.dtype = np.dtype(dtype)
        self.shm = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(self.shape)) * self.dtype.itemsize))
        self.array = np.ndarray(self.shape, dtype=self.dtype, buffer=self.shm.buf)
        self.free: Deque[int] = deque(range(n))

    def close(self) -> None:
        del self.array
        self.shm.close()
        self.shm.unlink()


def run_stream(
    items: Iterable[Item],
    prepare: Callable[[Item], Prepared],
    model: SubmitModel,
    postprocess: Callable[[Prepared, Outputs], Detections],
    *,
    batch: int = 1,
    workers: Optional[int] = None,
    prefetch: Optional[int] = None,
    depth: int = 2,
    per_image: Optional[Callable[[StreamResult], Any]] = None,
    stats: Optional[StreamStats] = None,
    processes: int = 0,
    input_shape: Optional[Tuple[int, ...]] = None,
    input_dtype: Any = np.float32,
    prepare_in_processes: bool = True,
    pool: Optional[WorkerPool] = None,
) -> Generator[StreamResult, None, None]:
    """Run ``model`` over ``items``; yield one :class:`StreamResult` per item, in input order.

    ``batch``: images per model call (clamped to the model's range; the last batch may be short and is
    padded by the model). ``workers``: decode / postprocess threads. ``prefetch``: items decoded ahead
    (default 2 batches + workers). ``depth``: batches in flight in the model (2 = double-buffered).
    ``per_image(result)`` runs in a worker right after postprocessing each image that did not fail (writing
    per-image files, encoding masks); its return value becomes ``result.extra``; a :class:`UserError` /
    ``ValueError`` from it fails that image only.

    ``processes``: run decode + letterbox and postprocessing + ``per_image`` in that many worker processes
    instead of threads (``prepare``, ``postprocess`` and ``per_image`` must then be picklable, and
    ``input_shape`` / ``input_dtype`` give the model input of one image: the inputs travel through shared
    memory). Threads suffice when those stages release the GIL; processes scale the Python-level work
    (mask paste, RLE) with the cores. ``prepare_in_processes=False``: only postprocessing goes to the processes,
    ``prepare`` runs in threads (a model that takes encoded bytes, decoded on the GPU: nothing to share).
    ``pool``: the worker processes to use (``processes`` of them), kept running after this run; by default the
    run starts its own and ends them when it ends.
    """
    batch = max(model.lo, min(int(batch), model.hi))
    workers = workers or default_workers()
    prefetch = prefetch or (2 * batch + workers)
    post_limit = max(2 * batch, workers * 2, batch * processes // 2)  # images in postprocessing
    stats = stats if stats is not None else StreamStats()
    slots: Optional[_Slots] = None
    procs: Any = None
    if processes > 0:  # before anything that would need undoing
        in_procs = prepare if prepare_in_processes else None
        _check_spawnable(prepare=in_procs, postprocess=postprocess, per_image=per_image)
    blas = _SingleThreadedBlas(processes)
    own_pool = None
    unpin: Optional[Callable[[], None]] = None
    run: Tuple[int, bytes] = (0, b"")
    if processes > 0:
        import pickle

        try:
            if prepare_in_processes:
                if input_shape is None:
                    raise ValueError("run_stream(processes=N) needs input_shape (one image's model input)")
                slots = _Slots(prefetch + batch * (depth + 2), tuple(input_shape), input_dtype)
            shm = (slots.shm.name, slots.shape, slots.dtype.str) if slots is not None else (None, (), "")
            run = (next(_RUNS), pickle.dumps((prepare if slots is not None else None, postprocess, per_image, *shm)))
            if pool is None or pool.processes != processes:
                pool = own_pool = WorkerPool(processes)
            procs = pool.executor()
            if slots is not None:
                unpin = host_inputs_pinned(model, slots.array)
        except BaseException:  # nothing runs yet: undo what the setup did
            if own_pool is not None:
                own_pool.close()
            if slots is not None:
                slots.close()
            blas.restore()
            raise
    # a model reading the slots after submit returns gets them until its outputs are back; one that has read them
    # by then (host_inputs_read_late = False) gives them back at submit, as a copying model does
    late_release = unpin is not None and bool(getattr(model, "host_inputs_read_late", True))
    stats.pinned_slots = unpin is not None
    threads = ThreadPoolExecutor(workers, thread_name_prefix="rcnn-stream")
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="rcnn-model")

    def submit_prepare(it: Item) -> Future:
        if procs is None or slots is None:
            return threads.submit(prepare, it)
        assert slots is not None
        return procs.submit(_worker_prepare, run, it, slots.free.popleft())

    def submit_finish(p: Prepared, outs: Optional[Outputs], error: Optional[str]) -> Future:
        if procs is None:
            return threads.submit(_finish, postprocess, per_image, p, outs, error)
        return procs.submit(_worker_finish, run, p, outs, error)

    def timed_submit(images: List[np.ndarray], letterboxes: List[Any]) -> Callable[[], Outputs]:
        t0 = time.perf_counter()
        wait_outputs = submit_batch(model, images, letterboxes)
        stats.model_submit_s += time.perf_counter() - t0

        def timed_wait() -> Outputs:
            t1 = time.perf_counter()
            out = wait_outputs()
            stats.model_wait_s += time.perf_counter() - t1
            return out

        return timed_wait

    def model_input(p: Prepared) -> np.ndarray:
        if p.slot is None:
            assert p.array is not None  # prepared without an error
            return p.array
        assert slots is not None  # a slot comes from the worker processes' shared memory
        return slots.array[p.slot]

    def release(group: List[Prepared]) -> None:
        for p in group:
            if p.slot is not None and slots is not None:
                slots.free.append(p.slot)
                p.slot = None

    decode_q: Deque[Future] = deque()  # futures of Prepared, in input order
    forming: List[Prepared] = []
    submitted: Deque[Tuple[Future, List[Prepared]]] = deque()  # model submits (future of the waiter)
    fetching: Deque[Tuple[Future, List[Prepared]]] = deque()  # futures of the outputs
    post: Dict[Future, int] = {}  # postprocessing futures -> images in each (a whole batch with processes)
    ready: Dict[int, StreamResult] = {}  # finished out of order, waiting for their turn
    order: Deque[int] = deque()  # indices in input order
    source = iter(items)
    exhausted = False

    def settle(res: StreamResult) -> None:
        ready[res.index] = res

    try:
        while True:
            progressed = False
            # 1. keep `prefetch` items decoding
            while not exhausted and len(decode_q) < prefetch and (slots is None or slots.free):
                try:
                    it = next(source)
                except StopIteration:
                    exhausted = True
                    break
                order.append(it.index)
                decode_q.append(submit_prepare(it))
                progressed = True
            # 2. results whose turn it is
            while order and order[0] in ready:
                res = ready.pop(order.popleft())
                stats.done += 1
                stats.failed += 0 if res.ok else 1
                yield res
                progressed = True
            # 3. finished postprocessing -> ready
            for f in [f for f in post if f.done()]:
                del post[f]
                done = f.result()
                for res in done if isinstance(done, list) else [done]:
                    settle(res)
                progressed = True
            # 4. fetched outputs -> per-image postprocessing (a model reading the slots is done with them once its
            # outputs are back, also while postprocessing is at its limit)
            if late_release:
                for fut, group in fetching:
                    if fut.done():
                        release(group)
            while fetching and fetching[0][0].done() and sum(post.values()) < post_limit:
                fut, group = fetching.popleft()
                outs = fut.result()
                if late_release:  # (done since the scan above)
                    release(group)
                if procs is None:
                    for i, p in enumerate(group):
                        post[submit_finish(p, _image_outputs(outs, i, False), None)] = 1
                else:  # one task per batch: the hand-over to the processes is per task and per byte
                    ones = [_image_outputs(outs, i, True) for i in range(len(group))]
                    post[procs.submit(_worker_finish_batch, run, [_for_post(p) for p in group], ones)] = len(group)
                stats.batches += 1
                progressed = True
            # 5. submitted batches -> fetch their outputs (waits on the device in a worker)
            while submitted and submitted[0][0].done():
                fut, group = submitted.popleft()
                if not late_release:
                    release(group)  # the model has copied the inputs (pinned buffer or its own batch)
                fetching.append((threads.submit(fut.result()), group))
                progressed = True
            # 6. decoded items -> the forming batch (failures go straight to postprocessing's output)
            while decode_q and decode_q[0].done() and len(forming) < batch:
                p = decode_q.popleft().result()
                if p.error is not None:
                    release([p])
                    post[submit_finish(p, None, p.error)] = 1
                else:
                    forming.append(p)
                progressed = True
            last = exhausted and not decode_q
            if forming and (len(forming) == batch or last) and len(submitted) + len(fetching) < depth:
                group, forming = forming, []
                inputs = [model_input(p) for p in group]
                submitted.append((model_thread.submit(timed_submit, inputs, [p.letterbox for p in group]), group))
                progressed = True
            if last and not forming and not submitted and not fetching and not post and not ready and not order:
                break
            if not progressed:
                # wait for the next completion; a future that is done already but blocked (a decoded item while
                # the batch is formed and the model is full, outputs while postprocessing is at its limit) is
                # left out: waiting on it returns at once, and this thread spun on a core the model needed
                # (streamed ran 0.7x the sequential path on the 2-core CPU machine)
                pending = [f for f, _ in submitted] + [f for f, _ in fetching] + list(post)
                pending += [decode_q[0]] if decode_q else []
                pending = [f for f in pending if not f.done()]
                idle_model = not submitted and not fetching
                t0 = time.perf_counter()
                if pending:
                    wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                else:  # nothing running can unblock the loop: should not happen; never spin
                    time.sleep(0.001)
                if idle_model:
                    stats.starved_s += time.perf_counter() - t0
    except Exception as e:
        died = worker_processes_died(e) if procs is not None else None
        if died is not None:
            raise died from e
        raise
    finally:
        stats.finished = time.perf_counter()
        outstanding = list(decode_q) + [f for f, _ in submitted] + [f for f, _ in fetching] + list(post)
        for f in outstanding:
            f.cancel()
        model_thread.shutdown(wait=True, cancel_futures=True)  # waits for the batch in the model, if any
        threads.shutdown(wait=True, cancel_futures=True)
        if own_pool is not None:
            own_pool.close()
        elif procs is not None:  # a kept pool: this run's tasks that already started finish before its memory goes
            wait([f for f in outstanding if not f.cancelled()])
        try:
            if unpin is not None:  # waits for the device: no upload still reads the slots when they go
                unpin()
        finally:
            if slots is not None:
                slots.close()
            blas.restore()


def check_finite(d: Detections, name: str) -> None:
    """Non-finite boxes or scores mean the model (or its weights) produced garbage for this image."""
    if not (np.isfinite(d.boxes).all() and np.isfinite(d.scores).all()):
        raise non_finite_error(name)


def non_finite_error(name: str) -> UserError:
    """What :func:`check_finite` raises (also for a check made on the device, ``glue.gpu_post``)."""
    return UserError(
        "the model returned non-finite boxes or scores for this image",
        where=name,
        fix="check the weights (rcnn-deploy export refuses non-finite ones) and the engine's precision",
    )


class Progress:
    """Images done, failed and img/s: a rich bar on a terminal, else one line every ``every_s`` seconds (and a
    last one), on stderr."""

    def __init__(self, description: str, total: Optional[int], every_s: float = 10.0, stream: Any = None) -> None:
        self.description, self.total, self.every_s = description, total, every_s
        self.out = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.done = self.failed = 0
        self._bar: Any = None
        self._task: Any = None
        if getattr(self.out, "isatty", lambda: False)():
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
                from rich.progress import Progress as RichProgress

                self._bar = RichProgress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"),
                    transient=False,
                )
                self._task = self._bar.add_task(description, total=total, rate="")
                self._bar.start()
            except ImportError:  # pragma: no cover
                self._bar = None

    def rate(self) -> float:
        s = time.perf_counter() - self.t0
        return self.done / s if s > 0 else 0.0

    def line(self) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.description}: {self.done}{total} images, {self.rate():.1f} img/s{failed}"

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(
                self._task,
                advance=1,
                rate=f"{self.rate():.1f} img/s" + (f", {self.failed} failed" if self.failed else ""),
            )
        elif now - self.last >= self.every_s:
            self.last = now
            print(self.line(), file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            print(self.line(), file=self.out, flush=True)


def percentiles(values: List[float], qs: Tuple[float, ...] = (50, 90, 99)) -> Dict[str, float]:
    if not values:
        return {f"p{int(q)}": math.nan for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}
