"""The TensorRT batch model's CUDA-graph bookkeeping (``backends.tensorrt.pipelined``) against a recording stand-in
for the CUDA runtime and a TensorRT context: which runs are enqueued, captured and replayed, and what a failed
capture leaves. Whether graphs run on a GPU is measured by ``benchmarks/trt_runner_probe.py`` (device machine)."""

from __future__ import annotations

import ctypes
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from rcnn_deploy.backends.tensorrt.pipelined import TensorRTBatchModel, _Slot


class FakeCudaRT:
    """The cudart calls ``_enqueue_model`` makes, recorded; ``capturing`` while a stream capture is open."""

    def __init__(self) -> None:
        self.calls: list = []
        self.copies: list = []  # (dst, src, bytes, kind)
        self.registered: dict = {}
        self.capturing = False
        self.next_handle = 100

    def _handle(self, out: ctypes.c_void_p) -> None:
        self.next_handle += 1
        out._obj.value = self.next_handle  # byref(c_void_p)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802 - the CUDA name
        self.calls.append(("copy_in_capture" if self.capturing else "copy", int(nbytes.value)))
        self.copies.append((dst.value, src.value, int(nbytes.value), kind))
        return 0

    def cudaHostRegister(self, ptr, nbytes, flags):  # noqa: N802
        self.registered[ptr.value] = int(nbytes.value)
        return 0

    def cudaHostUnregister(self, ptr):  # noqa: N802
        del self.registered[ptr.value]
        return 0

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        assert mode == 1, "the capture must be thread-local: the other slots' threads keep running"
        self.capturing = True
        self.calls.append(("begin",))
        return 0

    def cudaStreamEndCapture(self, stream, graph):  # noqa: N802
        self.capturing = False
        self._handle(graph)
        self.calls.append(("end",))
        return 0

    def cudaGraphInstantiate(self, exe, graph, flags):  # noqa: N802
        self._handle(exe)
        self.calls.append(("instantiate",))
        return 0

    def cudaGraphDestroy(self, graph):  # noqa: N802
        return 0

    def cudaGraphLaunch(self, exe, stream):  # noqa: N802
        self.calls.append(("launch", exe.value))
        return 0

    def cudaEventRecord(self, event, stream):  # noqa: N802
        self.calls.append(("record", event.value))
        return 0

    def cudaEventSynchronize(self, event):  # noqa: N802
        self.calls.append(("event_sync", event.value))
        return 0

    def cudaEventCreateWithFlags(self, event, flags):  # noqa: N802
        self._handle(event)
        self.calls.append(("event_create", flags))
        return 0


class FakeContext:
    def __init__(self, lib: FakeCudaRT, fail_in_capture: bool = False) -> None:
        self.lib, self.fail_in_capture = lib, fail_in_capture
        self.shape = None

    def set_input_shape(self, name, shape):
        self.shape = shape
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], 5)

    def set_tensor_address(self, name, ptr):
        pass

    def execute_async_v3(self, stream):
        if self.lib.capturing:
            self.lib.calls.append(("execute_in_capture",))
            return not self.fail_in_capture
        self.lib.calls.append(("execute", self.shape[0]))
        return True


def model(cuda_graph: bool = True, fail_in_capture: bool = False, event: int = 0):
    """A TensorRTBatchModel of one slot around the fakes (its __init__ needs a GPU: the attributes are set here)."""
    lib = FakeCudaRT()
    m = TensorRTBatchModel.__new__(TensorRTBatchModel)
    m.lib, m.input, m.image_shape = lib, "images", (3, 4, 4)
    m.backend = SimpleNamespace(output_names=["boxes"], path=SimpleNamespace(name="model.engine"))
    m.cuda_graph, m.graph_error, m.lo, m.hi = cuda_graph, None, 1, 8
    host = SimpleNamespace(array=np.zeros((8, 5), np.float32), ptr=ctypes.c_void_p(1))
    slot = SimpleNamespace(
        context=FakeContext(lib, fail_in_capture),
        stream=SimpleNamespace(ptr=7),
        device={"images": SimpleNamespace(ptr=2), "boxes": SimpleNamespace(ptr=3)},
        host={"boxes": host},
        out_shapes={},
        graphs={},
        ran=set(),
        done=ctypes.c_void_p(event or None),
        uploaded=ctypes.c_void_p(),
        free=threading.Event(),
        owner_lib=lib,
    )
    slot.wait = lambda: _Slot.wait(slot)
    slot.stream.synchronize = lambda: lib.calls.append(("stream_sync",))
    return m, slot, lib


def test_first_run_enqueued_second_captured_then_replayed():
    m, slot, lib = model()
    m._enqueue_model(slot, 8)
    assert lib.calls == [("execute", 8), ("copy", 8 * 5 * 4)]
    lib.calls.clear()
    m._enqueue_model(slot, 8)  # captured (engine run and download), then launched once: the batch runs once
    assert lib.calls[:4] == [("begin",), ("execute_in_capture",), ("copy_in_capture", 160), ("end",)]
    assert lib.calls[4:] == [("instantiate",), ("launch", slot.graphs[8].value)]
    lib.calls.clear()
    m._enqueue_model(slot, 8)
    assert lib.calls == [("launch", slot.graphs[8].value)]  # nothing enqueued from the host but the launch
    m._enqueue_model(slot, 3)  # another batch size: enqueued first, its own graph after
    m._enqueue_model(slot, 3)
    assert set(slot.graphs) == {3, 8} and slot.graphs[3].value != slot.graphs[8].value
    assert slot.context.shape == (3, 3, 4, 4)
    assert m.graph_error is None


def test_failed_capture_turns_graphs_off_and_the_batch_still_runs():
    m, slot, lib = model(fail_in_capture=True)
    m._enqueue_model(slot, 8)
    lib.calls.clear()
    m._enqueue_model(slot, 8)
    assert ("end",) in lib.calls, "the stream left capture mode"
    assert lib.calls[-2:] == [("execute", 8), ("copy", 160)], "the batch was enqueued after the failed capture"
    assert not m.cuda_graph and "model.engine" in m.graph_error and "failed" in m.graph_error
    lib.calls.clear()
    m._enqueue_model(slot, 8)
    assert lib.calls == [("execute", 8), ("copy", 160)]


def test_without_cuda_graph_every_run_is_enqueued():
    m, slot, lib = model(cuda_graph=False)
    for _ in range(3):
        m._enqueue_model(slot, 8)
    assert lib.calls == [("execute", 8), ("copy", 160)] * 3
    assert slot.graphs == {}


@pytest.mark.parametrize("n", [1, 8])
def test_outputs_shapes_follow_the_batch(n):
    m, slot, _ = model()
    assert m._enqueue_model(slot, n) == {"boxes": (n, 5)}


def test_blocking_wait_records_an_event_after_each_batch_and_the_caller_waits_on_it():
    m, slot, lib = model(event=55)
    m.rename = lambda d: d
    for _ in range(3):  # plain run, capture, replay: each batch's work ends with the event
        lib.calls.clear()
        shapes = m._enqueue_model(slot, 2)
        assert lib.calls[-1] == ("record", 55)
        lib.calls.clear()
        out = m._waiter(slot, shapes, 2)()
        assert lib.calls == [("event_sync", 55)] and out["boxes"].shape == (2, 5)
        assert slot.free.is_set()


def test_without_blocking_wait_the_caller_synchronises_the_stream():
    m, slot, lib = model()
    m.rename = lambda d: d
    shapes = m._enqueue_model(slot, 2)
    assert ("record", None) not in lib.calls and not any(c[0] == "record" for c in lib.calls)
    lib.calls.clear()
    m._waiter(slot, shapes, 2)()
    assert lib.calls == [("stream_sync",)]


def test_images_in_registered_memory_are_uploaded_from_there_without_the_host_copy():
    m, slot, lib = model()
    m.rename = lambda d: d
    m.in_dtype, m.slots, m._next, m._registered = np.dtype(np.uint8), [slot], 0, []
    slot.free.set()
    pinned = np.zeros(48 * 8, np.uint8)  # page-locked by the fake, 8 images' bytes
    slot.host["images"] = SimpleNamespace(array=np.full((8, 3, 4, 4), 9, np.uint8), ptr=ctypes.c_void_p(4096))
    slots = pinned.reshape(8, 3, 4, 4)
    base = slots.ctypes.data
    undo = m.read_host_inputs(slots)
    assert undo is not None and lib.registered == {base: 48 * 8}
    lib.calls.clear()
    wait = m.submit([slots[5], slots[2]])
    ups = [c for c in lib.copies if c[3] == 1]  # host to device
    assert ups == [(2, base + 5 * 48, 48, 1), (2 + 48, base + 2 * 48, 48, 1)]
    # before submit returned: an event recorded after the uploads, the engine enqueued, then that event waited on
    # (not the engine): the runner may give the slots back to its workers at once (host_inputs_read_late False)
    event = slot.uploaded.value
    assert event and lib.calls[:4] == [("copy", 48), ("copy", 48), ("event_create", 3), ("record", event)]
    assert lib.calls[-1] == ("event_sync", event) and ("execute", 2) in lib.calls
    assert ("stream_sync",) not in lib.calls and m.host_inputs_read_late is False
    wait()
    assert (slot.host["images"].array == 9).all(), "the slot's own pinned input was not written"
    lib.copies.clear()
    slot.free.set()
    m.submit([np.ones((3, 4, 4), np.uint8)])()  # an image elsewhere: copied into the pinned input as before
    assert [c for c in lib.copies if c[3] == 1] == [(2, 4096, 48, 1)] and (slot.host["images"].array[0] == 1).all()
    undo()
    assert lib.registered == {} and m._registered == [] and ("stream_sync",) in lib.calls


def test_registration_is_declined_for_another_dtype():
    m, slot, lib = model()
    m.in_dtype, m.slots, m._registered = np.dtype(np.uint8), [slot], []
    assert m.read_host_inputs(np.zeros((2, 3, 4, 4), np.float32)) is None and lib.registered == {}


def test_post_pastes_from_the_slots_device_outputs_before_the_slot_is_freed():
    """With ``post`` (the GPU mask paste): the waiter hands it the batch's host outputs, the masks' device buffer,
    the slot's stream and each image's letterbox, while the slot is still taken (its device outputs are read), and
    returns what it returns; a batch without its letterboxes is refused before it takes a slot."""
    m, slot, lib = model()
    m.rename = lambda d: d
    seen = []

    def post(out, masks_ptr, stream, letterboxes, key):
        seen.append((sorted(out), masks_ptr, stream, letterboxes, slot.free.is_set()))
        return {"detections": np.array(["d0", "d1"], dtype=object), "finite": np.array([True, True])}

    m.post, m._masks_out = post, "boxes"  # the fakes' one output stands in for the masks
    shapes = m._enqueue_model(slot, 2)
    got = m._waiter(slot, shapes, 2, letterboxes=["lb0", "lb1"])()
    assert seen == [(["boxes"], 3, 7, ["lb0", "lb1"], False)]
    assert got["detections"].tolist() == ["d0", "d1"] and slot.free.is_set()
    m.slots, m._next = [slot], 0
    with pytest.raises(ValueError, match="needs each image's letterbox"):
        m.submit([np.zeros((3, 4, 4), np.uint8)] * 2)  # refused before a slot is taken or anything enqueued
    assert slot.free.is_set() and m._next == 0
