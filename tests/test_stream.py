"""The streaming runner: input order, failures isolated, same detections as the sequential path, bounded
in-flight work, clean shutdown; lazy masks and RLE from box regions; the infer command's outputs."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from rcnn_deploy.runtime.masks import PastedMasks, paste_masks
from rcnn_deploy.runtime.sources import Item
from rcnn_deploy.runtime.stream import BatchModel, Prepared, ReplicatedModel, lies_within, run_stream


# ------------------------------------------------------------------------------- the runner with a toy model
def _toy(delay_s: float = 0.0, fail_on=(), record=None):
    """prepare: the item's index as a 1x1 'image' (fails for indices in fail_on); model: echoes index*2."""

    def prepare(it: Item) -> Prepared:
        if it.index in fail_on:
            return Prepared(it, error=f"{it.name}: broken")
        time.sleep(delay_s * ((it.index * 7) % 3))  # out-of-order completion
        return Prepared(it, np.full((1,), it.index, np.float32), None)

    def run(x: np.ndarray):
        if record is not None:
            record.append(len(x))
        return {"v": x * 2}

    return prepare, BatchModel(run, 1, 8), lambda p, outs: float(outs["v"][0, 0])


def test_order_kept_and_failures_isolated():
    prepare, model, post = _toy(delay_s=0.002, fail_on={3, 10})
    items = [Item(i, f"img{i}") for i in range(37)]
    out = list(run_stream(items, prepare, model, post, batch=4, workers=3))
    assert [r.index for r in out] == list(range(37))
    assert [r.index for r in out if not r.ok] == [3, 10]
    assert all(r.detections == 2 * r.index for r in out if r.ok)
    assert "broken" in out[3].error


def test_batches_formed_and_last_short():
    sizes = []
    prepare, model, post = _toy(record=sizes)
    out = list(run_stream([Item(i, str(i)) for i in range(10)], prepare, model, post, batch=4, workers=2))
    assert len(out) == 10 and sizes == [4, 4, 2]


def test_the_runner_waits_without_spinning_while_the_model_is_busy():
    """A model that takes its time (sleeping, like a GPU or another process doing the work) costs the runner's
    threads almost no CPU: the scheduling loop blocks on futures. It used to wait on a decoded item it could not
    take yet (the batch formed, the model full): the wait returned at once and the loop spun on a core, which
    made the streamed path 0.7x the sequential one on the 2-core CPU machine with ONNX Runtime."""

    def prepare(it: Item) -> Prepared:
        return Prepared(it, np.full((1,), it.index, np.float32), None)

    def run(x: np.ndarray):
        time.sleep(0.1)
        return {"v": x * 2}

    items = [Item(i, str(i)) for i in range(20)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = list(run_stream(items, prepare, BatchModel(run, 1, 2), lambda p, o: 0, batch=2, workers=2))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert len(out) == 20 and wall >= 1.0  # ten batches of 0.1 s
    assert cpu < 0.25 * wall, f"the runner used {cpu:.2f} s of CPU in {wall:.2f} s while the model slept"


def test_replicated_model_runs_its_copies_side_by_side_and_keeps_input_order():
    """Two copies meet at a barrier inside their run (it breaks unless both run at once); results in input order."""
    meet = threading.Barrier(2, timeout=10)
    used: list = []

    def copy(k: int):  # type: ignore[no-untyped-def]
        def run(x: np.ndarray):  # type: ignore[no-untyped-def]
            used.append(k)
            if len(used) <= 2:  # the first two batches: one on each copy, at the same time
                meet.wait()
            return {"v": x * 2}

        return run

    prepare, _, post = _toy()
    model = ReplicatedModel([copy(0), copy(1)])
    assert model.depth == 2
    items = [Item(i, f"im{i}") for i in range(9)]
    out = list(run_stream(items, prepare, model, post, batch=2, depth=model.depth, workers=2))
    model.close()
    assert [r.index for r in out] == list(range(9)) and [r.detections for r in out] == [2.0 * i for i in range(9)]
    assert sorted(used[:2]) == [0, 1] and set(used) == {0, 1} and not meet.broken


def test_bounded_in_flight_and_lazy_source():
    """The runner never pulls more than its prefetch ahead of what it has yielded (back-pressure)."""
    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield Item(i, str(i))

    prepare, model, post = _toy()
    gen = run_stream(source(), prepare, model, post, batch=2, workers=2, prefetch=6)
    first = [next(gen) for _ in range(5)]
    assert [r.index for r in first] == list(range(5))
    # yielded + prefetch + a forming batch + depth (2) batches in the model + postprocessing (max(2 batch, 2 workers))
    assert len(pulled) <= 5 + 6 + 2 + 2 * 2 + 4
    gen.close()


def test_model_error_stops_run_and_joins_threads():
    def prepare(it):
        return Prepared(it, np.zeros(1, np.float32), None)

    def run(x):
        raise RuntimeError("device lost")

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="device lost"):
        list(run_stream([Item(i, str(i)) for i in range(20)], prepare, BatchModel(run), lambda p, o: 0, batch=2))
    time.sleep(0.05)
    assert threading.active_count() <= before


def _proc_prepare(it: Item) -> Prepared:
    if it.index == 4:
        return Prepared(it, error=f"{it.name}: broken")
    return Prepared(it, np.full((2, 3), it.index, np.float32), None)


def _proc_post(p: Prepared, outs) -> float:
    return float(outs["v"][0, 0, 0])


def _proc_per_image(r) -> int:
    import os

    return os.getpid()


def _double(x):
    return {"v": x * 2}


def test_worker_processes_share_inputs_through_slots_and_keep_order():
    items = [Item(i, f"img{i}") for i in range(23)]
    out = list(
        run_stream(
            items,
            _proc_prepare,
            BatchModel(_double, 1, 4),
            _proc_post,
            batch=3,
            workers=2,
            processes=2,
            input_shape=(2, 3),
            input_dtype=np.float32,
            per_image=_proc_per_image,
        )
    )
    assert [r.index for r in out] == list(range(23))
    assert [r.index for r in out if not r.ok] == [4]
    assert all(r.detections == 2 * r.index for r in out if r.ok)
    import os

    assert all(r.extra != os.getpid() for r in out)  # per_image ran in the workers


def _proc_prepare_into(it: Item, out=None) -> Prepared:
    """Letterboxes into ``out`` like HostStages.prepare; refuses to run without it (so the test sees that the
    worker passed its slot), and makes a new array for one item (which the worker then copies)."""
    if out is None:
        return Prepared(it, error=f"{it.name}: no slot given")
    if it.index == 5:
        return Prepared(it, np.full((2, 3), it.index, np.float32), None)
    out[...] = it.index
    return Prepared(it, out, None)


def test_worker_processes_write_straight_into_the_slot_when_prepare_takes_out():
    items = [Item(i, f"img{i}") for i in range(13)]
    out = list(
        run_stream(
            items,
            _proc_prepare_into,
            BatchModel(_double, 1, 4),
            _proc_post,
            batch=3,
            processes=2,
            input_shape=(2, 3),
            input_dtype=np.float32,
        )
    )
    assert [r.index for r in out] == list(range(13)) and all(r.ok for r in out), [r.error for r in out]
    assert all(r.detections == 2 * r.index for r in out)


def _proc_per_image_tagged(r) -> tuple:
    import os

    return ("second", os.getpid())


def _proc_exit(r):
    import os

    os._exit(3)  # a worker that dies mid-run


def test_a_kept_worker_pool_serves_runs_with_their_own_stages_and_is_replaced_when_broken():
    """``pool=``: the second run uses the first run's processes (no new spawn), with its own per_image and its own
    shared-memory slots; a run whose worker dies fails, and the next run gets working processes again."""
    import os
    from concurrent.futures.process import BrokenProcessPool

    from rcnn_deploy.runtime.stream import WorkerPool

    pool = WorkerPool(2)
    items = [Item(i, f"img{i}") for i in range(17)]

    def run(per_image):
        return list(
            run_stream(
                items,
                _proc_prepare,
                BatchModel(_double, 1, 4),
                _proc_post,
                batch=3,
                processes=2,
                input_shape=(2, 3),
                per_image=per_image,
                pool=pool,
            )
        )

    try:
        first = run(_proc_per_image)
        executor = pool.executor()
        second = run(_proc_per_image_tagged)
        assert pool.executor() is executor, "the second run started new processes"
        for out in (first, second):
            assert [r.index for r in out] == list(range(17))
            assert [r.index for r in out if not r.ok] == [4]
            assert all(r.detections == 2 * r.index for r in out if r.ok)
        pids = {r.extra for r in first if r.ok}
        assert pids and os.getpid() not in pids
        assert all(r.extra[0] == "second" and r.extra[1] != os.getpid() for r in second if r.ok)
        with pytest.raises(BrokenProcessPool):
            run(_proc_exit)
        third = run(_proc_per_image)
        assert pool.executor() is not executor
        assert [r.index for r in third if r.ok] == [i for i in range(17) if i != 4]
    finally:
        pool.close()


_ORPHAN_PARENT = """
import os, signal, sys
from rcnn_deploy.runtime.stream import WorkerPool
pool = WorkerPool(2)
ex = pool.executor()
assert [f.result() for f in [ex.submit(abs, -1) for _ in range(4)]] == [1] * 4
with open(sys.argv[1], "w") as f:
    f.write(" ".join(map(str, pool.pids())))
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no shutdown, no atexit
"""


def test_worker_processes_end_when_their_parent_dies_without_closing_the_pool(tmp_path):
    """A process that dies holding a kept pool (run 36: a SIGSEGV in the TensorRT process) leaves no workers
    behind: each one watches its parent and exits, instead of waiting on its task queue with the parent's pipes
    open (the caller reading the dead process's output through a pipe hung on them, so the child's output goes to
    files here)."""
    import os
    import subprocess
    import sys

    pid_file, err_file = tmp_path / "pids.txt", tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        code = subprocess.call([sys.executable, "-c", _ORPHAN_PARENT, str(pid_file)], stdout=err, stderr=err,
                               timeout=120)  # fmt: skip
    assert code == -9, err_file.read_text()[-2000:]
    pids = [int(p) for p in pid_file.read_text().split()]
    assert pids, err_file.read_text()[-2000:]

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (exited, not yet reaped by init) counts as ended
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:  # do not leave them running after a failure
        os.kill(p, 9)
    assert not left, f"worker processes {left} outlived their parent"


def test_a_run_stopped_early_on_a_kept_pool_frees_its_memory_and_the_next_run_is_whole():
    """Leaving a run after three results (a ``break``, Ctrl-C in the caller) with a kept pool: the run's tasks end,
    its shared memory is unlinked, the processes stay, and the next run on them returns every image."""
    import gc
    import os

    from rcnn_deploy.runtime.stream import WorkerPool

    pool = WorkerPool(2)
    items = [Item(i, f"img{i}") for i in range(30)]
    shm_dir = "/dev/shm"

    def segments():  # SharedMemory's (psm_*; the pool's own semaphores, sem.*, stay while it runs)
        return {n for n in os.listdir(shm_dir) if n.startswith("psm_")}

    before = segments() if os.path.isdir(shm_dir) else None

    def run():
        return run_stream(
            items, _proc_prepare, BatchModel(_double, 1, 4), _proc_post, batch=3, processes=2,
            input_shape=(2, 3), per_image=_proc_per_image, pool=pool,
        )  # fmt: skip

    try:
        stream = run()
        got = [next(stream) for _ in range(3)]
        stream.close()  # the generator's finally: what a break or an exception in the caller runs
        del stream
        gc.collect()
        assert [r.index for r in got] == [0, 1, 2]
        executor = pool.executor()
        if before is not None:
            assert segments() - before == set(), "the stopped run's shared memory was left behind"
        out = list(run())
        assert pool.executor() is executor
        assert [r.index for r in out] == list(range(30))
        assert all(r.detections == 2 * r.index for r in out if r.ok) and [r.index for r in out if not r.ok] == [4]
    finally:
        pool.close()


def _variable_size_prepare(it: Item) -> Prepared:
    """Encoded bytes of varying length (as a GPU-decoding model takes them): nothing fits a shared slot."""
    if it.index == 5:
        return Prepared(it, error=f"{it.name}: broken")
    return Prepared(it, np.full((it.index + 1,), it.index, np.uint8), None)


def _first_times_two(x):
    return {"v": np.array([[2.0 * float(a[0])] for a in x])}


class _ListModel(BatchModel):
    def submit(self, images):  # a model taking a list of differently sized arrays (no np.stack)
        out = self.run(images)
        return lambda: out


def test_worker_processes_postprocess_only_when_prepare_stays_in_threads():
    import os
    import threading

    main = threading.main_thread().ident
    seen = []

    def prepare(it):
        seen.append((os.getpid(), threading.get_ident() != main))
        return _variable_size_prepare(it)

    items = [Item(i, f"img{i}") for i in range(13)]
    out = list(
        run_stream(
            items,
            prepare,  # a closure: it could not be pickled into a worker process
            _ListModel(_first_times_two, 1, 4),
            _proc_post_flat,
            batch=4,
            workers=2,
            processes=2,
            prepare_in_processes=False,
            per_image=_proc_per_image,
        )
    )
    assert [r.index for r in out] == list(range(13))
    assert [r.index for r in out if not r.ok] == [5]
    assert all(r.detections == 2 * r.index for r in out if r.ok)
    assert {pid for pid, _ in seen} == {os.getpid()} and all(worker for _, worker in seen)
    assert all(r.extra != os.getpid() for r in out if r.ok)  # postprocessing ran in the workers


def _proc_post_flat(p: Prepared, outs) -> float:
    return float(outs["v"][0, 0])


def _post_without_input(p: Prepared, outs) -> bool:
    return p.array is None and float(outs["v"][0, 0]) == 2.0 * p.item.index


def test_worker_processes_refuse_a_stage_that_does_not_pickle_with_a_clear_error():
    from rcnn_deploy.errors import UserError

    items = [Item(i, f"img{i}") for i in range(3)]
    stream = run_stream(
        items,
        _variable_size_prepare,
        _ListModel(_first_times_two, 1, 4),
        lambda p, outs: 0.0,  # a lambda: spawn workers cannot receive it
        batch=2,
        processes=2,
        prepare_in_processes=False,
    )
    with pytest.raises(UserError) as e:
        next(stream)
    assert "postprocess" in str(e.value) and "processes=0" in str(e.value)


# a script (argv[1]: this folder) that starts a run with worker processes at module level, catching UserError as e
_SCRIPT_STARTING_WORKERS = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from test_stream import _ListModel, _first_times_two, _proc_post_flat, _variable_size_prepare\n"
    "from rcnn_deploy.errors import UserError\n"
    "from rcnn_deploy.runtime.sources import Item\n"
    "from rcnn_deploy.runtime.stream import run_stream\n"
    "items = [Item(i, str(i)) for i in range(3)]\n"
    "try:\n"
    "    list(run_stream(items, _variable_size_prepare, _ListModel(_first_times_two, 1, 4), _proc_post_flat,\n"
    "        batch=2, processes=1, prepare_in_processes=False))\n"
    "except UserError as e:\n"
)


def test_worker_processes_from_a_script_on_stdin_fail_with_what_to_do(tmp_path):
    """``python -`` (a script read from standard input): spawn workers would import ``<stdin>`` and die
    (``BrokenProcessPool``); the runner says so before starting them."""
    import subprocess
    import sys
    from pathlib import Path

    script = _SCRIPT_STARTING_WORKERS + "    print('USER ERROR:', e)\n"
    proc = subprocess.run(
        [sys.executable, "-", str(Path(__file__).parent)], input=script, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "USER ERROR:" in proc.stdout and "<stdin>" in proc.stdout and "save the script to a file" in proc.stdout


def test_a_script_that_starts_worker_processes_without_a_main_guard_gets_what_to_do(tmp_path):
    """A script file that starts a run at module level: each spawned worker imports it, starts the run again while
    bootstrapping and dies; the parent's ``BrokenProcessPool`` comes as a UserError naming the guard (before: the
    bare ``BrokenProcessPool`` traceback)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "unguarded.py"
    script.write_text(
        _SCRIPT_STARTING_WORKERS + "    from concurrent.futures.process import BrokenProcessPool\n"
        "    print('USER ERROR:', e, '| still a BrokenProcessPool:', isinstance(e, BrokenProcessPool))\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(Path(__file__).parent)], capture_output=True, text=True, timeout=180
    )
    assert "USER ERROR:" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert 'if __name__ == "__main__":' in proc.stdout and "processes=0" in proc.stdout
    assert "still a BrokenProcessPool: True" in proc.stdout


def test_the_worker_pool_error_pickles_and_is_both_kinds():
    import pickle
    from concurrent.futures.process import BrokenProcessPool

    from rcnn_deploy.errors import UserError
    from rcnn_deploy.runtime.stream import worker_processes_died

    e = worker_processes_died(BrokenProcessPool("A child process terminated abruptly"))
    assert isinstance(e, UserError) and isinstance(e, BrokenProcessPool) and "__main__" in str(e)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and str(back) == str(e)
    assert worker_processes_died(ValueError("x")) is None and worker_processes_died(e) is None


def test_worker_processes_get_a_batch_per_task_without_the_model_inputs():
    items = [Item(i, f"img{i}") for i in range(11)]
    out = list(
        run_stream(
            items,
            _variable_size_prepare,
            _ListModel(_first_times_two, 1, 4),
            _post_without_input,
            batch=4,
            workers=2,
            processes=2,
            prepare_in_processes=False,
        )
    )
    assert [r.index for r in out] == list(range(11))
    assert [r.index for r in out if not r.ok] == [5]
    assert all(r.detections is True for r in out if r.ok)  # each worker saw its image's outputs, not its bytes


def test_image_outputs_are_cut_to_the_images_detections_for_worker_processes():
    from rcnn_deploy.runtime.detections import Detections
    from rcnn_deploy.runtime.stream import _image_outputs

    outs = {
        "num_detections": np.array([[2], [0]], np.int32),
        "boxes": np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4),
        "scores": np.ones((2, 5), np.float32),
        "classes": np.ones((2, 5), np.int32),
        "masks": np.zeros((2, 5, 3, 3), np.float32),
        "errors": np.array([None, "bad"], dtype=object),
    }
    first = _image_outputs(outs, 0, trim=True)
    assert first["boxes"].shape == (1, 2, 4) and first["masks"].shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(first["boxes"], outs["boxes"][:1, :2])
    assert first["errors"].tolist() == [None]
    second = _image_outputs(outs, 1, trim=True)
    assert second["scores"].shape == (1, 0) and second["errors"].tolist() == ["bad"]
    assert _image_outputs(outs, 1, trim=False)["boxes"].shape == (1, 5, 4)  # threads: views, as they are
    for d_trim, d_full in zip(Detections.from_padded(first), Detections.from_padded(_image_outputs(outs, 0, False))):
        np.testing.assert_array_equal(d_trim.boxes, d_full.boxes)


def test_per_image_user_error_fails_that_image_only():
    prepare, model, post = _toy()

    def per_image(r):
        if r.index == 2:
            raise ValueError("disk says no")
        return "ok"

    out = list(run_stream([Item(i, str(i)) for i in range(5)], prepare, model, post, per_image=per_image))
    assert [r.ok for r in out] == [True, True, False, True, True] and out[0].extra == "ok"


# ------------------------------------------------------------------------------------ lazy masks and their RLE
@pytest.mark.parametrize("method", ["torchvision", "detectron2"])
def test_pasted_masks_match_dense_paste_and_pycocotools_rle(method):
    mask_util = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for trial in range(150):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        n = int(rng.integers(0, 5))
        probs = rng.random((n, 7, 7)).astype(np.float32)
        boxes = rng.uniform(-10, 60, (n, 4)).astype(np.float32)
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 40, (n, 2))
        if trial % 3 == 0 and n:  # a mask covering the whole image (runs across column ends)
            boxes[0], probs[0] = [-5, -5, w + 5, h + 5], 1.0
        lazy = PastedMasks(probs, boxes, (h, w), method, 0.5)
        dense = paste_masks(probs, boxes, (h, w), method, 0.5)
        assert lazy.shape == dense.shape and np.array_equal(np.asarray(lazy), dense)
        for i in range(n):
            ref = mask_util.encode(np.asfortranarray(dense[i].astype(np.uint8)))
            assert lazy.rle(i)["counts"] == ref["counts"].decode("ascii")
            assert lazy.area(i) == int(dense[i].sum())


def test_detections_masks_are_dense_only_when_read():
    from rcnn_deploy.runtime.detections import Detections

    probs = np.ones((2, 4, 4), np.float32)
    boxes = np.array([[0, 0, 5, 5], [2, 2, 9, 9]], np.float32)
    d = Detections(boxes, np.array([0.9, 0.4], np.float32), np.array([1, 2], np.int32))
    d.masks = PastedMasks(probs, boxes, (3000, 4000), "torchvision", 0.5)
    assert d.pasted is not None and d._dense is None  # nothing image-sized yet
    kept = d.above(0.5)
    assert len(kept) == 1 and kept.pasted is not None and kept.pasted.shape == (1, 3000, 4000)
    assert d.masks.shape == (2, 3000, 4000) and d.masks.dtype == bool  # pasted on first read


# ------------------------------------------------------------------------------ the real model, ONNX Runtime
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def export_dir(tv_mask_model, tmp_path_factory):
    from PIL import Image

    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.testing import calibration_images

    model, _ = tv_mask_model
    root = tmp_path_factory.mktemp("stream")
    (root / "images").mkdir()
    for i, im in enumerate(calibration_images(6, 256, 256, seed=7)):
        arr = im.permute(1, 2, 0).round().byte().numpy()
        if i % 2:
            arr = np.ascontiguousarray(np.concatenate([arr, arr[:, :80]], axis=1))  # not square
        Image.fromarray(arr).save(root / "images" / f"im{i}.png")
    export_onnx(model, root / "export", height=256, width=256, batch="1:2", graph="fused", nms="onnx")
    return root


@pytest.mark.full
def test_fused_export_has_the_letterbox_graph_of_its_model(export_dir):
    """export writes letterbox.onnx beside a fused graph (the TensorRT runtime's GPU letterbox) and says in the
    contract how it resamples ("opencv" since session 18); it letterboxes with the model's input size and
    pixel-mean padding exactly as the host does with OpenCV; GPU decoding needs an engine, not an export."""
    from PIL import Image

    from rcnn_deploy.api import Detector
    from rcnn_deploy.contract import Contract
    from rcnn_deploy.errors import UserError
    from rcnn_deploy.runtime import preprocess

    ort = pytest.importorskip("onnxruntime")
    if preprocess.opencv() is None:
        pytest.skip("the letterbox graph reproduces the host's OpenCV resize: needs OpenCV here")
    exp = export_dir / "export"
    assert Contract.load(exp).notes["letterbox_resampler"] == "opencv"
    sess = ort.InferenceSession(str(exp / "letterbox.onnx"), providers=["CPUExecutionProvider"])
    det = Detector.load(exp)
    rgb = np.asarray(Image.open(export_dir / "images" / "im1.png").convert("RGB"))  # 256x336: resized, padded
    feed = preprocess.letterbox_taps([rgb.shape[:2]], det.input_hw, rgb.shape[:2], "opencv")
    feed["raw"] = rgb[None]
    got = sess.run(["images"], feed)[0][0]
    want, _ = preprocess.letterbox(rgb, det.input_hw, det.fill, dtype=det.input_dtype, resize=det.spec.resize)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    with pytest.raises(UserError, match="GPU decoding and GPU post-processing but for a fused TensorRT engine"):
        Detector.load(exp, gpu_decode=True)


@pytest.mark.full
def test_stream_matches_sequential_path(export_dir):
    """Streamed detections == the sequential path (letterbox, one model call per batch, dense paste)."""
    from rcnn_deploy.api import Detector
    from rcnn_deploy.runtime.detections import Detections
    from rcnn_deploy.runtime.preprocess import find_images, letterbox, load_rgb

    det = Detector.load(export_dir / "export", batch=2)
    paths = find_images(export_dir / "images")
    streamed = list(det.stream(export_dir / "images", batch=2, workers=3))
    assert [r.name for r in streamed] == [str(p) for p in paths]
    for i in range(0, len(paths), 2):
        group = [load_rgb(p) for p in paths[i : i + 2]]
        prepped = [letterbox(g, det.input_hw, det.fill) for g in group]
        outs = det.run_padded(np.stack([a for a, _ in prepped]))
        for k, ((_, lb), rgb) in enumerate(zip(prepped, group)):
            ref = Detections.from_padded({n: v[k : k + 1] for n, v in outs.items()})[0]
            boxes = lb.boxes_to_original(ref.boxes)
            got = streamed[i + k].detections
            np.testing.assert_array_equal(got.boxes, boxes)
            np.testing.assert_array_equal(got.scores, ref.scores)
            dense = paste_masks(ref.masks, boxes, rgb.shape[:2], det.spec.mask_paste, det.spec.mask_threshold)
            assert np.array_equal(got.masks, dense)


@pytest.mark.full
def test_onnxruntime_replicas_stream_the_same_detections(export_dir):
    from rcnn_deploy.api import Detector
    from rcnn_deploy.errors import UserError

    one = list(Detector.load(export_dir / "export", batch=1).stream(export_dir / "images", batch=1))
    det = Detector.load(export_dir / "export", batch=1, replicas=2)
    assert isinstance(det.batch_model, ReplicatedModel) and det.batch_model.depth == 2
    two = list(det.stream(export_dir / "images", batch=1))
    assert [r.name for r in two] == [r.name for r in one]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
        np.testing.assert_array_equal(a.detections.scores, b.detections.scores)
    with pytest.raises(UserError, match="replicas"):
        Detector.load(export_dir / "export" / "missing.engine", replicas=2)


@pytest.mark.full
def test_stream_in_worker_processes_matches_threads(export_dir):
    from rcnn_deploy.api import Detector

    det = Detector.load(export_dir / "export", batch=2)
    threads = list(det.stream(export_dir / "images", batch=2, processes=0))
    procs = list(det.stream(export_dir / "images", batch=2, processes=2))
    assert [r.name for r in procs] == [r.name for r in threads]
    for a, b in zip(threads, procs):
        np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
        np.testing.assert_array_equal(a.detections.scores, b.detections.scores)
        assert np.array_equal(a.detections.masks, b.detections.masks)


@pytest.mark.full
def test_infer_command_streams_and_isolates_bad_images(export_dir, tmp_path):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    images = tmp_path / "mixed"
    images.mkdir()
    for p in sorted((export_dir / "images").iterdir()):
        (images / p.name).write_bytes(p.read_bytes())
    (images / "im2b_broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "results.json").write_text('["stale"]')  # a previous run's file is replaced, never left behind
    r = CliRunner().invoke(app, ["infer", str(export_dir / "export"), str(images), "-o", str(out), "--batch", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 7 and summary["written"] == 6 and summary["complete"] is True
    assert [f["image"] for f in summary["failures"]] == [str(images / "im2b_broken.png")]
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["image"] for x in lines] == [str(p) for p in sorted(images.iterdir())]
    results = json.loads((out / "results.json").read_text())
    assert results != ["stale"] and sum(x.get("detections", 0) for x in lines) == len(results)
    assert all("segmentation" in e for e in results)
    assert len(list(out.glob("*.tsv"))) == 6 and len(list(out.glob("*.png"))) == 6


@pytest.mark.full
def test_pngs_drawn_on_the_file_decoded_again_equal_those_on_kept_pixels(export_dir, tmp_path):
    """infer keeps no pixels through the model: the writer decodes the file again for the PNG (and draws on that
    copy in place); the pictures are the ones drawn on the kept pixels, and a caller's array is never drawn on."""
    from PIL import Image

    from rcnn_deploy.api import Detector
    from rcnn_deploy.runtime.preprocess import load_rgb
    from rcnn_deploy.runtime.sources import Item
    from rcnn_deploy.runtime.writers import InferWriter

    det = Detector.load(export_dir / "export", batch=2)
    images = export_dir / "images"
    pngs = {}
    for keep in (True, False):
        w = InferWriter(tmp_path / str(keep), det.spec, backend=det.backend)
        rs = list(det.stream(images, batch=2, keep_images=keep, per_image=w.per_image))
        assert all(r.ok and (r.image is not None) == keep for r in rs)
        if keep:  # the kept pixels are still the photo (drawn on a copy)
            assert all(np.array_equal(r.image, load_rgb(r.item.path)) for r in rs)
        w.close()
        pngs[keep] = {p.name: np.asarray(Image.open(p)) for p in sorted((tmp_path / str(keep)).glob("*.png"))}
    assert len(pngs[True]) == 6 and pngs[True].keys() == pngs[False].keys()
    for name, kept in pngs[True].items():
        assert np.array_equal(kept, pngs[False][name]), name
        assert not np.array_equal(kept, load_rgb(images / name)), "detections are drawn"
    arr = load_rgb(sorted(images.iterdir())[0])
    before = arr.copy()
    w = InferWriter(tmp_path / "array", det.spec, backend=det.backend)
    (r,) = det.stream([Item(0, "array[0]", array=arr)], per_image=w.per_image)
    w.close()
    assert r.ok and (tmp_path / "array" / "array_0.png").is_file()
    assert np.array_equal(arr, before), "a caller's array is not drawn on"


@pytest.mark.full
def test_video_source_every_nth_frame_and_annotated_video(export_dir, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app
    from rcnn_deploy.runtime.preprocess import load_rgb
    from rcnn_deploy.runtime.sources import open_source

    frames = [load_rgb(p) for p in sorted((export_dir / "images").iterdir())[:1]] * 6
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (256, 256))
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    items = list(open_source(video, stride=2))
    assert [(it.index, it.frame) for it in items] == [(0, 0), (1, 2), (2, 4)]
    assert [round(it.time_s, 3) for it in items] == [0.0, 0.2, 0.4] and items[0].array.shape == (256, 256, 3)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        ["infer", str(export_dir / "export"), str(video), "-o", str(out), "--stride", "2", "--save-video",
         str(tmp_path / "annotated.mp4")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == [0, 2, 4] and lines[1]["time_s"] == pytest.approx(0.2)
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    assert sorted(p.name for p in out.glob("*.tsv")) == ["clip_000000.tsv", "clip_000002.tsv", "clip_000004.tsv"]


@pytest.mark.full
def test_ctrl_c_stops_cleanly_and_keeps_what_was_done(export_dir, tmp_path):
    """SIGINT mid-run: the process exits promptly, results.jsonl has the finished images, and summary.json /
    results.json are written with complete=false and the reason."""
    import os
    import signal
    import subprocess
    import sys

    images = tmp_path / "many"
    images.mkdir()
    src = sorted((export_dir / "images").iterdir())
    for i in range(40):
        (images / f"{i:03d}{src[i % len(src)].suffix}").write_bytes(src[i % len(src)].read_bytes())
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "rcnn_deploy.cli", "infer", str(export_dir / "export"), str(images), "-o", str(out)]
    # SIGINT back to Python's default in the child: a test run started in the background (CI, `cmd &`) inherits
    # SIGINT ignored, and Python then keeps ignoring it
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    log = open(tmp_path / "infer.log", "w")  # noqa: SIM115 - a file, not a pipe: an unread pipe can fill and block
    p = subprocess.Popen(cmd + ["--no-visualize"], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=restore)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        lines = (out / "results.jsonl").read_text().splitlines() if (out / "results.jsonl").exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.2)
    assert p.poll() is None, (tmp_path / "infer.log").read_text()[-2000:]
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=120)  # it finishes the batch in the model (seconds; more on a loaded CI machine)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("infer did not stop within 120 s of Ctrl-C")
    log.close()
    assert p.returncode != 0
    summary = json.loads((out / "summary.json").read_text())
    done = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert summary["complete"] is False and "interrupted" in summary["stopped"]
    assert summary["processed"] == len(done) and 2 <= len(done) < 40
    assert len(json.loads((out / "results.json").read_text())) == sum(x.get("detections", 0) for x in done)


@pytest.mark.full
def test_folder_with_a_decompression_bomb_and_a_1x5000_image(export_dir, tmp_path):
    """The reliability case: good images beside a decompression bomb (a small PNG declaring 20000x20000) and a
    1x5000 image. Every good image gets its outputs (the thin one too: it decodes, and its boxes map back
    without dividing by zero), the bomb is reported and skipped, results.json and summary.json are complete."""
    import struct
    import zlib

    from PIL import Image
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((export_dir / "images").iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    Image.fromarray(np.full((1, 5000, 3), 128, np.uint8)).save(folder / "thin.png")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 400 megapixels, RGB
    idat = zlib.compress(b"\x00" * 64)
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["infer", str(export_dir / "export"), str(folder), "-o", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["images"] == 5 and summary["written"] == 4
    assert len(summary["failures"]) == 1 and summary["failures"][0]["image"].endswith("bomb.png")
    assert "max-pixels" in summary["failures"][0]["error"]
    assert sorted(p.stem for p in out.glob("*.tsv")) == sorted(
        [*(p.stem for p in folder.iterdir() if p.stem != "bomb")]
    )
    json.loads((out / "results.json").read_text())


def test_opencv_mask_paste_equals_the_numpy_reference(monkeypatch):
    """The OpenCV resize in the torchvision paste samples exactly like the separable numpy matmuls."""
    from rcnn_deploy.runtime import _opencv, masks

    if _opencv.opencv() is None:
        pytest.skip("OpenCV is not installed: only the numpy path exists")
    rng = np.random.default_rng(5)
    probs = rng.random((60, 28, 28)).astype(np.float32)
    xy = rng.uniform(-50, 600, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 400, (60, 2))], 1).astype(np.float32)
    fast = [masks._paste_region(probs[i], boxes[i], (480, 640), "torchvision") for i in range(60)]
    monkeypatch.setattr(masks, "opencv", lambda: None)
    ref = [masks._paste_region(probs[i], boxes[i], (480, 640), "torchvision") for i in range(60)]
    for f, r in zip(fast, ref):
        assert (f is None) == (r is None)
        if f is not None:
            assert f[:4] == r[:4]
            np.testing.assert_allclose(f[4], r[4], atol=2e-6)


@pytest.mark.parametrize(
    "backend, per_image, processes, cores, want",
    [
        ("tensorrt", None, None, 12, 8),  # GPU decode: at most GPU_DECODE_PROCESSES by default (run 25)
        ("tensorrt", str, None, 12, 8),  # with a per-image function as well
        ("tensorrt", str, None, 6, 6),  # below the cap: the general default
        ("tensorrt", str, None, 2, 2),  # fewer by default on a smaller machine
        ("tensorrt", None, 0, 6, 0),  # asked for: as asked
        ("tensorrt", str, 14, 6, 14),
        ("torch", str, 3, 6, 3),  # PyTorch with GPU decode: as asked
        ("torch", None, None, 12, 8),  # by default as TensorRT: the processes paste the masks and encode them
        ("torch+post", None, None, 12, 0),  # with GPU post-processing: threads by default (RLE runs come back)
        ("torch+post", str, 8, 12, 8),  # as asked
    ],
)
def test_gpu_decode_streams_start_few_worker_processes(monkeypatch, backend, per_image, processes, cores, want):
    from rcnn_deploy import api
    from rcnn_deploy.config import get_spec

    seen = {}

    def fake_run_stream(items, prepare, model, post, **kw):
        seen.update(kw)
        return iter(())

    monkeypatch.setattr(api, "run_stream", fake_run_stream)
    monkeypatch.setattr(api, "WorkerPool", lambda n: ("pool", n))
    monkeypatch.setattr(api, "default_processes", lambda: cores)
    assert api.GPU_DECODE_PROCESSES == 8
    det = api.Detector(get_spec("torchvision-maskrcnn"), (64, 64), lambda x: {}, backend.split("+")[0], batch=2)
    det.gpu_decode = True
    if backend.endswith("+post"):
        det.batch_model = type("PostModel", (), {"post": object(), "hi": 2, "lo": 1})()
    list(det.stream([Item(0, "a.jpg")], per_image=per_image, processes=processes))
    assert seen["processes"] == want
    assert seen["pool"] == (("pool", want) if want else None)


def test_infer_writer_lines_are_the_json_of_the_whole_record(tmp_path):
    """The caller's thread writes each results.jsonl line from the JSON the worker made of the entries: the line
    is byte for byte json.dumps of the whole record, results.json holds every entry in order, failures too."""
    import pickle

    from rcnn_deploy.config import get_spec
    from rcnn_deploy.runtime.detections import Detections
    from rcnn_deploy.runtime.stream import StreamResult
    from rcnn_deploy.runtime.writers import InferWriter

    spec = get_spec("torchvision-maskrcnn")
    w = InferWriter(tmp_path, spec, backend="test", visualize=False, total=3)
    worker = pickle.loads(pickle.dumps(w))  # what a worker process gets
    boxes = np.array([[1.5, 2.0, 30.25, 40.0], [5.0, 6.0, 7.0, 8.0]], np.float32)
    det = Detections(boxes, np.array([0.9, 0.2], np.float32), np.array([1, 2], np.int32))
    results = []
    for i, (name, d, err) in enumerate([("a.png", det, None), ("b.png", None, "b.png: broken"), ("c.png", det, None)]):
        r = StreamResult(Item(i, name, tmp_path / name), detections=d, error=err)
        r.extra = worker.per_image(r)
        results.append(r)
        w.add(r)
    summary = w.close()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    want_entries = []
    for r, line in zip(results, lines):
        record = dict(r.item.meta(), image_id=r.index + 1)
        if r.ok:
            entries = json.loads(r.extra["coco_json"])
            assert [e["image_id"] for e in entries] == [r.index + 1] * 2 and entries[0]["score"] == pytest.approx(0.9)
            record.update(detections=2, results=entries)
            want_entries += entries
        else:
            record.update(error=r.error)
        assert line == json.dumps(record)
    assert json.loads((tmp_path / "results.json").read_text()) == want_entries == w.coco
    assert summary["detections"] == 4 and summary["written"] == 2 and len(summary["failures"]) == 1


def _proc_post_masked(p: Prepared, outs):
    from rcnn_deploy.runtime.detections import Detections

    v = float(outs["v"][0, 0, 0])
    boxes = np.array([[0.0, 0.0, 4.0, 4.0 + v]], np.float32)
    probs = np.full((1, 28, 28), 0.9, np.float32)
    return Detections(
        boxes, np.ones(1, np.float32), np.ones(1, np.int32), PastedMasks(probs, boxes, (8, 8), "torchvision", 0.5)
    )


def _proc_per_image_rle(r) -> list:
    return [m["counts"] for m in r.detections.pasted.rles()]


@pytest.mark.parametrize("processes", [0, 2])
def test_drop_masks_after_per_image_keeps_boxes_and_sends_no_masks_back(processes):
    """``DropMasksAfter`` (``Detector.stream(return_masks=False)``): the per-image function still sees the masks;
    the results come back with boxes, scores and classes only, in order, failures as before."""
    from rcnn_deploy.runtime.stream import DropMasksAfter

    items = [Item(i, f"img{i}") for i in range(9)]
    kw = dict(processes=processes, input_shape=(2, 3), input_dtype=np.float32) if processes else {}
    out = list(
        run_stream(
            items,
            _proc_prepare,
            BatchModel(_double, 1, 4),
            _proc_post_masked,
            batch=3,
            workers=2,
            per_image=DropMasksAfter(_proc_per_image_rle),
            **kw,
        )
    )
    assert [r.index for r in out] == list(range(9)) and [r.index for r in out if not r.ok] == [4]
    for r in out:
        if r.ok:
            assert r.detections.masks is None and not r.detections.has_masks
            assert r.detections.boxes[0, 3] == pytest.approx(4.0 + 2 * r.index)
            assert len(r.extra) == 1 and isinstance(r.extra[0], str) and r.extra[0]  # the RLE was made


def test_detector_stream_return_masks_false_wraps_the_per_image_function(monkeypatch):
    from rcnn_deploy import api
    from rcnn_deploy.config import get_spec
    from rcnn_deploy.runtime.stream import DropMasksAfter

    seen = {}
    monkeypatch.setattr(api, "run_stream", lambda items, prepare, model, post, **kw: seen.update(kw) or iter(()))
    det = api.Detector(get_spec("torchvision-maskrcnn"), (64, 64), lambda x: {}, "onnxruntime", batch=2)
    list(det.stream([Item(0, "a.jpg")], per_image=str, processes=0))
    assert seen["per_image"] is str
    list(det.stream([Item(0, "a.jpg")], per_image=str, processes=0, return_masks=False))
    assert isinstance(seen["per_image"], DropMasksAfter) and seen["per_image"].per_image is str


class _SlotReader(BatchModel):
    """Reads its inputs only when waited on (as an upload queued from page-locked slots), after a delay; records
    which slots it read, when, and what they held."""

    def __init__(self, delay_s: float = 0.02, fail_batch: int = -1) -> None:
        super().__init__(_double, 1, 3)
        self.delay_s, self.fail_batch = delay_s, fail_batch
        self.base = self.nbytes = self.slot_bytes = 0
        self.undone = 0
        self.read_at: dict = {}  # slot -> times its contents were read
        self.inside: list = []  # whether each submitted image lies in the offered memory
        self.batches = 0
        self.lock = threading.Lock()

    def read_host_inputs(self, array):
        self.base, self.nbytes = array.ctypes.data, array.nbytes
        self.slot_bytes = array[0].nbytes

        def undo():
            self.undone += 1

        return undo

    def submit(self, images):
        self.inside += [lies_within(a, self.base, self.nbytes) for a in images]
        views, b = list(images), self.batches
        self.batches += 1

        def wait():
            time.sleep(self.delay_s)
            if b == self.fail_batch:
                raise RuntimeError("device lost")
            stacked = np.stack(views)  # the "upload": the slots must still hold this batch's images
            with self.lock:
                for a in views if self.slot_bytes else []:
                    slot = (a.ctypes.data - self.base) // self.slot_bytes
                    self.read_at.setdefault(slot, []).append(time.perf_counter())
            return self.run(stacked)

        return wait


def _record_releases(monkeypatch) -> dict:
    """The runner's slots record when each is given back to the workers: ``{slot: [perf_counter times]}``."""
    import rcnn_deploy.runtime.stream as stream

    released: dict = {}

    class _Free(stream.deque):
        def append(self, slot):
            released.setdefault(slot, []).append(time.perf_counter())
            super().append(slot)

    class _Recording(stream._Slots):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.free = _Free(self.free)

    monkeypatch.setattr(stream, "_Slots", _Recording)
    return released


def test_a_model_reading_the_slots_late_gets_them_until_its_outputs_are_back(monkeypatch):
    import rcnn_deploy.runtime.stream as stream

    released = _record_releases(monkeypatch)
    monkeypatch.setenv("RCNN_DEPLOY_PINNED_SLOTS", "1")
    model = _SlotReader()
    stats = stream.StreamStats()
    items = [Item(i, f"img{i}") for i in range(17)]
    kw = dict(batch=3, workers=2, processes=2, input_shape=(2, 3), input_dtype=np.float32, stats=stats)
    out = list(run_stream(items, _proc_prepare_into, model, _proc_post, **kw))
    assert [r.index for r in out] == list(range(17)) and all(r.ok for r in out), [r.error for r in out]
    assert all(r.detections == 2 * r.index for r in out)  # each batch read its own images, not a later batch's
    assert model.inside and all(model.inside) and stats.pinned_slots and model.undone == 1
    for slot, reads in model.read_at.items():  # every read came before the slot's next release
        rel = sorted(released.get(slot, []))
        for t in reads:
            assert any(r >= t for r in rel), (slot, t, rel)


class _EarlyReader(_SlotReader):
    """Reads its inputs within submit (as TensorRTBatchModel waits for its uploads): the slots may go back then."""

    host_inputs_read_late = False

    def submit(self, images):
        with self.lock:
            for a in images:
                slot = (a.ctypes.data - self.base) // self.slot_bytes
                self.read_at.setdefault(slot, []).append(time.perf_counter())
        out = self.run(np.stack(images))  # read here: a slot reused after submit returns cannot change this batch

        def wait():
            time.sleep(self.delay_s)
            return out

        return wait


def test_a_model_that_reads_the_slots_within_submit_gets_them_back_before_its_outputs(monkeypatch):
    import rcnn_deploy.runtime.stream as stream

    released = _record_releases(monkeypatch)
    monkeypatch.setenv("RCNN_DEPLOY_PINNED_SLOTS", "1")
    model = _EarlyReader(delay_s=0.05)
    stats = stream.StreamStats()
    items = [Item(i, f"img{i}") for i in range(12)]
    kw = dict(batch=3, workers=2, processes=2, input_shape=(2, 3), input_dtype=np.float32, stats=stats)
    waits = []
    orig_submit = stream.submit_batch

    def timed(model_, images, letterboxes):
        w = orig_submit(model_, images, letterboxes)
        t = time.perf_counter()

        def wait():
            out = w()
            waits.append((t, time.perf_counter(), [(a.ctypes.data - model.base) // model.slot_bytes for a in images]))
            return out

        return wait

    monkeypatch.setattr(stream, "submit_batch", timed)
    out = list(run_stream(items, _proc_prepare_into, model, _proc_post, **kw))
    assert [r.index for r in out] == list(range(12)) and all(r.detections == 2 * r.index for r in out)
    assert stats.pinned_slots and model.undone == 1
    # some slot went back to the workers while its batch's outputs were still being waited for (0.05 s each)
    early = [
        s for t_submit, t_out, group in waits for s in group if any(t_submit <= r < t_out for r in released.get(s, []))
    ]
    assert early, "every slot was held until its batch's outputs were back"


@pytest.mark.parametrize("setting", [None, "0"])
def test_slots_are_offered_only_when_asked_for(monkeypatch, setting):
    items = [Item(i, f"img{i}") for i in range(10)]
    kw = dict(batch=3, workers=2, processes=2, input_shape=(2, 3), input_dtype=np.float32)
    if setting is None:
        monkeypatch.delenv("RCNN_DEPLOY_PINNED_SLOTS", raising=False)
    else:
        monkeypatch.setenv("RCNN_DEPLOY_PINNED_SLOTS", setting)
    model = _SlotReader(delay_s=0.0)
    out = list(run_stream(items, _proc_prepare_into, model, _proc_post, **kw))
    assert all(r.detections == 2 * r.index for r in out) and model.undone == 0 and model.nbytes == 0


def test_the_undo_runs_on_errors(monkeypatch):
    items = [Item(i, f"img{i}") for i in range(10)]
    kw = dict(batch=3, workers=2, processes=2, input_shape=(2, 3), input_dtype=np.float32)
    monkeypatch.setenv("RCNN_DEPLOY_PINNED_SLOTS", "1")
    failing = _SlotReader(delay_s=0.0, fail_batch=1)
    with pytest.raises(RuntimeError, match="device lost"):
        list(run_stream(items, _proc_prepare_into, failing, _proc_post, **kw))
    assert failing.undone == 1  # the slots were given back to the model before their memory went


def test_lies_within():
    a = np.zeros((4, 6), np.uint8)
    base = a.ctypes.data
    assert lies_within(a[1], base, a.nbytes) and lies_within(a, base, a.nbytes)
    assert not lies_within(a, base + 1, a.nbytes) and not lies_within(a[:, ::2], base, a.nbytes)
    assert not lies_within(np.zeros(3, np.uint8), base, a.nbytes)
