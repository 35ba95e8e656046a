"""The torch-free GPU mask paste of the TensorRT process (backends/tensorrt/paste.py) on a machine without a GPU:
its CUDA source compiles with NVRTC for an H100/H200 (sm_90), and the same source built for the CPU (``RD_CPU``,
g++) pastes every mask as the host paste does (the tolerance of tests/test_gpu_post.py: only pixels within 1e-5
of the threshold may differ), through :class:`KernelPaste`'s host half (plan, changes -> runs, per-image
detections, the fallback to the host paste). The GPU run itself is ``benchmarks/e2e_trt.py``'s ``post`` variant."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools.mask")

from rcnn_deploy.backends.cuda_rtc import Arg, compile_cuda, find_nvrtc, kernel_params  # noqa: E402
from rcnn_deploy.backends.tensorrt.paste import KERNEL_SOURCE, KernelPaste, kernel_name  # noqa: E402
from rcnn_deploy.glue.gpu_post import _geometry  # noqa: E402
from rcnn_deploy.runtime.masks import PastedMasks, RleMasks  # noqa: E402
from rcnn_deploy.runtime.paste_plan import (  # noqa: E402
    MAX_RUNS,
    join_changes,
    plan_paste,
    region_geometry,
    runs_from_changes,
)
from rcnn_deploy.runtime.preprocess import Letterbox  # noqa: E402
from test_gpu_post import METHODS, _boxes, _check_against_host, _probs  # noqa: E402


@pytest.mark.skipif(find_nvrtc() is None, reason="no NVRTC library (torch's CUDA wheels bring one)")
def test_kernel_compiles_with_nvrtc_for_hopper():
    cubin = compile_cuda(KERNEL_SOURCE, "sm_90", "paste.cu")
    assert cubin[:4] == b"\x7fELF"
    for name in ("paste_changes_f32", "paste_changes_f16"):
        assert name.encode() in cubin


def test_kernel_params_point_at_each_value_in_its_c_type():
    params = kernel_params([Arg.ptr(0xDEADBEEF), Arg.i32(-7), Arg.i64(2**40), Arg.f32(0.5)])
    assert ctypes.c_void_p.from_address(params[0]).value == 0xDEADBEEF
    assert ctypes.c_int32.from_address(params[1]).value == -7
    assert ctypes.c_int64.from_address(params[2]).value == 2**40
    assert ctypes.c_float.from_address(params[3]).value == 0.5


@pytest.fixture(scope="module")
def cpu_kernel(tmp_path_factory):
    """KERNEL_SOURCE built for the CPU: the kernel's arithmetic with the host's libm fmaf, no FMA contraction."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("paste_cpu")
    (d / "paste.cpp").write_text(KERNEL_SOURCE)
    so = d / "paste.so"
    flags = ["-DRD_CPU", "-O2", "-ffp-contract=off", "-shared", "-fPIC"]
    subprocess.run([cxx, *flags, "-o", str(so), str(d / "paste.cpp")], check=True)
    return ctypes.CDLL(str(so))


class CpuKernelPaste(KernelPaste):
    """KernelPaste whose kernel is the CPU build, reading host masks (``masks_ptr``: a numpy array's address)."""

    def __init__(self, lib, method="torchvision", threshold=0.5):
        super().__init__(None, method, threshold, module=object())
        self.cpu = lib

    def run(self, plan, slot_of, masks_ptr, dtype, m, stream, key=None):
        cols = plan.cols
        changes = np.full((cols, MAX_RUNS), -1, np.int32)
        count = np.full(cols, -1, np.int32)
        parts = [np.ascontiguousarray(a) for a in (slot_of, plan.col_owner, plan.ytaps, plan.xtaps, plan.side)]
        ptr = [ctypes.c_void_p(a.ctypes.data) for a in parts]
        getattr(self.cpu, kernel_name(dtype))(
            ctypes.c_void_p(masks_ptr), *ptr, ctypes.c_void_p(changes.ctypes.data), ctypes.c_void_p(count.ctypes.data),
            ctypes.c_float(self.threshold), ctypes.c_int(plan.side.shape[1]), ctypes.c_int64(plan.rows),
            ctypes.c_int64(cols), ctypes.c_int(m), ctypes.c_int(self.method == "detectron2"), ctypes.c_int(MAX_RUNS),
        )  # fmt: skip
        assert (count >= 0).all()  # every column written
        return changes, count


class HostCuda:
    """The CUDA runtime calls :class:`KernelPaste` makes, on host memory (device pointers are host addresses,
    copies are memmoves, the stream is synchronous), so its own ``run`` (buffer layout, copies up and back, the
    view of the changes it returns) runs on the CPU; ``module.launch`` calls the kernel's CPU build with the
    launch's arguments."""

    def __init__(self, cpu):
        self.blocks, self.cpu = {}, cpu
        self.launches = 0

    def _alloc(self, pptr, size):
        buf = ctypes.create_string_buffer(int(size.value))
        pptr._obj.value = ctypes.addressof(buf)
        self.blocks[ctypes.addressof(buf)] = buf
        return 0

    cudaMalloc = cudaHostAlloc = lambda self, pptr, size, *flags: self._alloc(pptr, size)  # noqa: E731

    def _free(self, ptr):
        self.blocks.pop(ptr.value, None)
        return 0

    cudaFree = cudaFreeHost = _free

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst.value, src.value, nbytes.value)
        return 0

    def cudaStreamSynchronize(self, stream):
        return 0

    def launch(self, name, grid, block, args, stream):
        self.launches += 1
        getattr(self.cpu, name)(*[a.value for a in args])


def _outputs(rng, hw_list, input_hw, dtype, d_slots=30, m=28):
    """A batch of padded engine outputs in letterbox space for images of ``hw_list``, and their letterboxes."""
    lbs = [Letterbox.fit(h, w, input_hw) for h, w in hw_list]
    k = len(hw_list)
    out = {
        "boxes": np.zeros((k, d_slots, 4), np.float32),
        "scores": np.zeros((k, d_slots), np.float32),
        "classes": np.zeros((k, d_slots), np.int32),
        "num_detections": np.zeros((k, 1), np.int32),
        "masks": np.zeros((k, d_slots, m, m), dtype),
    }
    for i, ((h, w), lb) in enumerate(zip(hw_list, lbs)):
        boxes = _boxes(rng, d_slots - 13, h, w) * np.float32(lb.scale)  # original pixels -> the input's
        n = len(boxes)
        out["boxes"][i, :n] = boxes
        out["scores"][i, :n] = rng.uniform(0.05, 1, n)
        out["masks"][i, :n] = _probs(rng, n, m).astype(dtype)
        out["num_detections"][i] = n
    return out, lbs


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cpu_build_of_the_kernel_pastes_as_the_host(cpu_kernel, method, dtype):
    rng = np.random.default_rng(11)
    out, lbs = _outputs(rng, [(270, 480), (300, 200), (128, 128)], (320, 320), dtype)
    out["num_detections"][2] = 0  # an image without detections
    paste = CpuKernelPaste(cpu_kernel, method)
    got = paste(out, out["masks"].ctypes.data, 0, lbs)
    assert got["finite"].all() and paste.host_pasted == 0
    pixels = differing = 0
    for i, lb in enumerate(lbs):
        d = got["detections"][i]
        n = int(out["num_detections"][i, 0])
        assert len(d.boxes) == n
        np.testing.assert_array_equal(d.boxes, lb.boxes_to_original(out["boxes"][i, :n]))
        if not n:
            continue
        assert isinstance(d.pasted, RleMasks)
        probs = out["masks"][i, :n].astype(np.float32)
        hw = (lb.orig_h, lb.orig_w)
        differing += _check_against_host(d.pasted, probs, d.boxes, hw, method)
        pixels += sum(d.pasted.area(j) for j in range(n))
    assert pixels > 50_000
    assert differing <= pixels * 1e-4


def test_kernel_paste_run_through_its_buffers_gives_the_cpu_builds_masks(cpu_kernel):
    """``KernelPaste.run`` itself (not the tests' override): the plan packed into its upload buffer, the changes
    read back from its page-locked buffer (returned as a view of it), on a host-memory CUDA runtime with the
    kernel's CPU build; calls with two keys and growing sizes give the same RLE as the CPU build through
    ``CpuKernelPaste``, call after call."""
    cuda = HostCuda(cpu_kernel)
    paste = KernelPaste(cuda, module=cuda)
    ref = CpuKernelPaste(cpu_kernel)
    rng = np.random.default_rng(21)
    for call, hw_list in enumerate([[(270, 480)], [(540, 960), (300, 200)], [(128, 128)], [(1080, 1920)]]):
        out, lbs = _outputs(rng, hw_list, (320, 320), np.float16)
        got = paste(out, out["masks"].ctypes.data, 0, lbs, key=call % 2)
        want = ref(out, out["masks"].ctypes.data, 0, lbs)
        assert paste.host_pasted == 0
        for g, w in zip(got["detections"], want["detections"]):
            assert isinstance(g.pasted, RleMasks) and g.pasted.rles() == w.pasted.rles()
    assert cuda.launches == 4 and set(paste._buffers) == {0, 1}
    paste.close()
    assert not cuda.blocks  # every buffer freed


def test_a_column_of_many_changes_goes_to_the_host_paste(cpu_kernel):
    """A 64 x 64 checkerboard mask over a tall box: each region column flips more often than the kernel keeps
    (about 64 times), so that image's masks are the host paste's (and the other image's the kernel's)."""
    rng = np.random.default_rng(5)
    out, lbs = _outputs(rng, [(300, 300), (300, 300)], (300, 300), np.float32, m=64)
    out["masks"][0, 0] = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    out["boxes"][0, 0] = [10, 10, 60, 290]
    paste = CpuKernelPaste(cpu_kernel)
    got = paste(out, out["masks"].ctypes.data, 0, lbs)
    assert paste.host_pasted == 1
    assert isinstance(got["detections"][0].pasted, PastedMasks)
    assert isinstance(got["detections"][1].pasted, RleMasks)


def test_non_finite_outputs_are_flagged_and_not_pasted(cpu_kernel):
    rng = np.random.default_rng(2)
    out, lbs = _outputs(rng, [(200, 300), (200, 300)], (256, 256), np.float32)
    out["boxes"][1, 3, 2] = np.nan
    got = CpuKernelPaste(cpu_kernel)(out, out["masks"].ctypes.data, 0, lbs)
    assert got["finite"].tolist() == [True, False]
    assert got["detections"][1].masks is None


@pytest.mark.parametrize("method", METHODS)
def test_region_geometry_equals_the_torch_paths(method):
    """The numpy regions and axes (float32 box arithmetic) against glue.gpu_post._geometry, bit for bit."""
    rng = np.random.default_rng(4)
    for h, w in [(64, 64), (1080, 1920), (257, 193)]:
        boxes = _boxes(rng, 40, h, w)
        hw = np.repeat([[h, w]], len(boxes), 0)
        regions, axes = region_geometry(boxes, hw, 28, method)
        want, want_axes = _geometry(torch.from_numpy(boxes), torch.from_numpy(hw), 28, method, torch.float64)
        np.testing.assert_array_equal(regions, want.numpy())
        for got_ab, want_ab in zip(axes, want_axes):
            for g, t in zip(got_ab, want_ab):
                np.testing.assert_array_equal(np.asarray(g), t.numpy())


def test_runs_from_changes_joins_runs_across_column_ends_and_flags_odd_columns():
    plan = plan_paste(np.array([[0, 0, 2, 4], [5, 0, 7, 4]], np.float32), np.array([[4, 10], [4, 10]]), 2,
                      "detectron2")  # fmt: skip
    cols = plan.cols
    changes = np.zeros((cols, MAX_RUNS), np.int32)
    count = np.zeros(cols, np.int32)
    first = plan.side[3]
    # mask 0: its first column all 1 (rows 0..4 of x = x0), the next also all 1: one run across the column end
    x0, h = int(plan.regions[0, 2]), 4
    changes[first[0], :2] = [x0 * h, x0 * h + 4]
    changes[first[0] + 1, :2] = [(x0 + 1) * h, (x0 + 1) * h + 4]
    count[first[0] : first[0] + 2] = 2
    count[first[1]] = 1  # mask 1: a column with a run that never ends: flagged
    changes[first[1], 0] = int(plan.regions[1, 2]) * h
    runs, offsets, over = runs_from_changes(plan, changes, count)
    assert over.tolist() == [False, True]
    assert offsets.tolist() == [0, 1, 1]
    assert runs.tolist() == [[x0 * h, (x0 + 2) * h]]


def test_runs_from_changes_takes_each_columns_counted_changes_in_order():
    """The changes gathered by index (in time with the changes kept, not a ``[cols, MAX_RUNS]`` mask): every
    column's first ``count`` entries, column after column, for columns of 0 to MAX_RUNS changes, columns past
    MAX_RUNS or odd (their masks flagged, none of their runs kept), and no columns at all."""
    rng = np.random.default_rng(5)
    boxes = np.array([[10, 5, 60, 40], [100, 20, 130, 90], [0, 0, 30, 30], [200, 100, 260, 120]], np.float32)
    plan = plan_paste(boxes, np.broadcast_to(np.array([150, 300]), (4, 2)), 28, "torchvision")
    cols, h = plan.cols, 150
    count = (2 * rng.integers(0, MAX_RUNS // 2 + 1, cols)).astype(np.int32)
    count[rng.random(cols) < 0.5] = 2  # the usual column
    mine = [np.flatnonzero(plan.col_owner == i) for i in range(4)]
    count[mine[2][3]] = MAX_RUNS + 2  # mask 2 has a column past what the kernel keeps
    count[mine[3][0]] = 3  # mask 3 an odd one
    changes = np.full((cols, MAX_RUNS), -1, np.int32)
    for c in range(cols):  # increasing positions inside each column's own image column
        x = int(plan.regions[plan.col_owner[c], 2]) + c - int(plan.side[3, plan.col_owner[c]])
        k = min(int(count[c]), MAX_RUNS)
        changes[c, :k] = x * h + np.sort(rng.choice(h, k, replace=False))
    runs, offsets, over = runs_from_changes(plan, changes, count)
    assert over.tolist() == [False, False, True, True]
    for i in range(4):
        want = [changes[c, : count[c]] for c in mine[i]] if not over[i] else []
        flat = np.concatenate(want).astype(np.int64) if want else np.zeros(0, np.int64)
        joined, _ = join_changes(flat, np.array([flat.size]))  # pairs (start, end), joined where they meet
        np.testing.assert_array_equal(runs[offsets[i] : offsets[i + 1]], joined.reshape(-1, 2))
    empty = plan_paste(np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64), 28, "torchvision")
    runs, offsets, over = runs_from_changes(empty, np.zeros((0, MAX_RUNS), np.int32), np.zeros(0, np.int32))
    assert runs.shape == (0, 2) and offsets.tolist() == [0] and over.size == 0


def test_the_host_check_counts_every_mask_when_waiters_paste_side_by_side(cpu_kernel):
    """The batch models' waiters call one KernelPaste from several threads at once: the host check's counters
    (what benchmarks/e2e_trt.py reports) must not lose updates. Run 35 on an H100 reported 47-86 % of the strings
    equal inside the TensorRT process while the parity against the host path found the masks identical: the
    ``identical += sum(...)`` read the counter before the slow comparison and wrote it back after."""
    rng = np.random.default_rng(12)
    out, lbs = _outputs(rng, [(540, 960), (300, 200)], (320, 320), np.float32)
    n = int(out["num_detections"].sum())
    paste = CpuKernelPaste(cpu_kernel)
    paste.check_host = True
    calls, threads = 6, 8
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait()
        for _ in range(calls):
            paste(dict(out), out["masks"].ctypes.data, 0, lbs)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert paste.host_pasted == 0
    assert paste.checked == calls * threads * n
    assert paste.identical == paste.checked


@pytest.mark.parametrize("method", METHODS)
def test_the_busiest_28_x_28_mask_stays_on_the_kernel(cpu_kernel, method):
    """MAX_RUNS covers every column of an M = 28 mask: a checkerboard (a threshold crossing between every two
    samples), over a tall box cut by the image's bottom edge, is pasted by the kernel, as the host pastes it."""
    rng = np.random.default_rng(6)
    out, lbs = _outputs(rng, [(300, 300)], (300, 300), np.float32)
    out["masks"][0, 0] = (np.indices((28, 28)).sum(0) % 2).astype(np.float32) * 0.9 + 0.05
    out["boxes"][0, 0] = [10, 10, 60, 340]  # past the image's bottom: the region is cut there
    got = CpuKernelPaste(cpu_kernel, method)(out, out["masks"].ctypes.data, 0, lbs)
    d, lb = got["detections"][0], lbs[0]
    assert isinstance(d.pasted, RleMasks)  # not the host paste
    n = int(out["num_detections"][0, 0])
    # the checkerboard's crossings fall on exact midpoints (0.5): only pixels within 1e-5 of the threshold may differ
    _check_against_host(d.pasted, out["masks"][0, :n], d.boxes, (lb.orig_h, lb.orig_w), method)
    assert d.pasted.area(0) > 1000
