"""``torch.compile`` of the sync-free forward (``backends.torch_cuda.SyncFreeForward``, what ``CudaGraphModel(...,
compile=MODE)`` captures on the GPU), run here on the CPU: the compiled forward gives the eager forward's
detections and the same NMS convergence flag, so the exact fallback still triggers. GPU speed is measured by
``benchmarks/e2e_torch_cuda.py --compile MODE`` on the GPU machine.

Compile times on the 2-core CPU machine, cold Inductor cache: the sync-free NMS alone about 25 s (most of it
Inductor's first C++ compile); the whole Mask R-CNN forward (batch 2, 256 px) about 100 s with Inductor and 35 s
more for a second round count (``full`` tier), about 15 s with ``aot_eager`` (Dynamo and AOTAutograd without
Inductor's code generation: the trace, its guards and side effects, the same ops). Fast tier about 50 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (Dynamo's caches and counters are process-wide)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The project's checkpoint and two synthetic 256 px images with detections, uint8 as the GPU model takes them."""
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.models.build import build_model
    from rcnn_deploy.runtime.preprocess import letterbox, load_rgb, rgb_fill

    out = tmp_path_factory.mktemp("torch_compile")
    generate_synthetic_coco(out, num_images=2, height=256, width=256, seed=3)
    net = build_model("torchvision-maskrcnn", str(CKPT))
    fill = rgb_fill(net.spec.pixel_mean, net.spec.channel_order)
    imgs = [letterbox(load_rgb(p), (256, 256), fill, dtype=np.uint8)[0] for p in sorted((out / "images").iterdir())]
    return net, torch.from_numpy(np.stack(imgs))


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def _assert_same(out, ref):
    assert set(out) == set(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-4, msg=k)


def _contextvar_get_traced() -> bool:
    """Dynamo traces ``ContextVar.get`` (from PyTorch 2.14; 2.13 and older, e.g. 2.11 on run 18's GPU machine,
    graph-break on it)."""
    try:
        from torch._dynamo.variables.misc import ContextVarVariable  # noqa: F401
    except ImportError:
        return False
    return True


def test_compile_modes_are_checked():
    from rcnn_deploy.backends.torch_cuda import COMPILE_MODES, CudaGraphModel, SyncFreeForward, check_compile_mode

    assert COMPILE_MODES == ("default", "max-autotune-no-cudagraphs")
    assert check_compile_mode(None) is None and check_compile_mode("default") == "default"
    with pytest.raises(ValueError, match="unknown compile mode"):
        check_compile_mode("reduce-overhead")  # Inductor's own CUDA graphs: we capture ourselves
    with pytest.raises(ValueError, match="unknown compile mode"):
        SyncFreeForward(torch.nn.Identity(), "max-autotune")
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphModel(object(), device="cpu", compile="default")
    off = SyncFreeForward(torch.nn.Identity())
    assert not off.compiled and off.mode is None


class _BlockedNMS(torch.nn.Module):
    """The RPN's sync-free NMS (candidates in per-level blocks, ``glue.nms._nms_blocked``) and a class-wise one
    (class-specific boxes) on ``x [B, N, 8]``: a box and three scores per candidate."""

    def forward(self, x):
        from rcnn_deploy.glue.nms import nms_padded

        boxes, scores = x[..., :4], x[..., 4:7]
        half = x.shape[1] // 2
        level_scores = scores[..., :1].expand(-1, -1, 2).contiguous()
        blocked = nms_padded(boxes[:, :, None], level_scores, _blocks(x), 0.7, 40, group_blocks=(half, half))
        classwise = nms_padded(boxes[:, :, None].expand(-1, -1, 3, 4), scores, scores > 0.05, 0.5, 30)
        out = {f"blocked_{i}": t for i, t in enumerate(blocked)}
        out.update({f"classes_{i}": t for i, t in enumerate(classwise)})
        return out


def _blocks(x):
    """Candidate i valid in its own block only (block 0: the first half, block 1: the second)."""
    n = x.shape[1]
    first = torch.arange(n, device=x.device) < n // 2
    return torch.stack((first, ~first), -1).expand(x.shape[0], n, 2) & (x[..., 4:5] > 0.05)


def _clustered_boxes(batch: int, n: int, seed: int = 0):
    """Boxes in a few tight clusters and random scores (NMS converges in 3 rounds)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 6, 2, generator=g) * 200
    pick = torch.randint(0, 6, (batch, n), generator=g)
    c = torch.gather(centres, 1, pick[..., None].expand(-1, -1, 2)) + torch.randn(batch, n, 2, generator=g) * 6
    wh = 20 + torch.rand(batch, n, 2, generator=g) * 30
    return torch.cat((c - wh / 2, c + wh / 2, torch.rand(batch, n, 3, generator=g), torch.zeros(batch, n, 1)), -1)


def _chained(x, length: int = 16):
    """``x`` with its first ``length`` candidates replaced by a suppression chain (each box shifted 5 px from the
    one ranked above it): greedy NMS needs about ``length`` rounds of the fixpoint."""
    y = x.clone()
    i = torch.arange(length, dtype=y.dtype)
    y[:, :length, 0], y[:, :length, 2] = 300 + 5 * i, 350 + 5 * i
    y[:, :length, 1], y[:, :length, 3] = 300, 350
    y[:, :length, 4:7] = (0.99 - 0.01 * i)[:, None]
    return y


def test_compiled_sync_free_nms_with_inductor_equals_eager():
    """The part whose many small kernels compile is for (the NMS fixpoint's rounds), through Inductor, compiled
    once for 4 rounds: on boxes that converge within them, the eager sync-free NMS's boxes and a True flag; on a
    suppression chain longer than that (same shapes, so the same compiled code), the eager's (not yet greedy)
    boxes and a False flag: the flag is computed by the compiled code, not fixed when it was traced. The exact
    fallback (rounds=None) runs eagerly through the same wrapper."""
    from rcnn_deploy.backends.torch_cuda import SyncFreeForward

    short = _clustered_boxes(2, 96)
    long = _chained(short)
    eager, comp = SyncFreeForward(_BlockedNMS()), SyncFreeForward(_BlockedNMS(), "default")
    assert comp.compiled
    for x, converges in ((short, True), (long, False)):
        ref, ref_flag = eager(x, 4)
        assert bool(ref_flag) is converges
        out, converged = comp(x, 4)
        assert converged is not None and bool(converged) is converges
        _assert_same(out, ref)
    assert list(comp.compile_seconds) == ["(2, 96, 8) torch.float32 cpu rounds=4"]  # one compile for both
    exact, flag = comp(long, None)
    assert flag is None
    _assert_same(exact, eager(long, 32)[0])
    assert len(comp.compile_seconds) == 1


def test_compiled_forward_traces_in_one_graph(shapes):
    """The whole Mask R-CNN sync-free forward under Dynamo (``aot_eager``: the trace without Inductor's code
    generation, which the ``full`` tests compile): the eager forward's detections and flag, and no graph break
    where Dynamo traces ``ContextVar.get``."""
    from rcnn_deploy.backends.torch_cuda import SyncFreeForward

    net, x = shapes
    ref, ref_flag = SyncFreeForward(net)(x, 24)
    assert bool(ref_flag) and int(ref["num_detections"].sum()) > 0
    comp = SyncFreeForward(net, "default", backend="aot_eager")
    breaks = _graph_breaks()
    out, converged = comp(x, 24)
    assert converged is not None and bool(converged)
    _assert_same(out, ref)
    if _contextvar_get_traced():
        assert _graph_breaks() == breaks, "the compiled forward should be one graph"


@pytest.mark.full
def test_compiled_forward_with_graph_breaks_at_the_context_equals_eager(shapes, monkeypatch):
    """Where Dynamo does not trace ``ContextVar.get`` (PyTorch 2.13 and older: the GPU machine had 2.11 in run 18),
    every ``sync_free.active()`` breaks the graph; simulated here by ``torch.compiler.disable`` on it: the forward
    then runs as several compiled graphs with the glue's Python between them, with the same detections and flag."""
    from rcnn_deploy.backends.torch_cuda import SyncFreeForward
    from rcnn_deploy.glue import sync_free

    net, x = shapes
    ref, _ = SyncFreeForward(net)(x, 24)
    monkeypatch.setattr(sync_free, "active", torch.compiler.disable(sync_free.active))
    comp = SyncFreeForward(net, "default", backend="aot_eager")
    breaks = _graph_breaks()
    out, converged = comp(x, 24)
    assert _graph_breaks() > breaks
    assert converged is not None and bool(converged)
    _assert_same(out, ref)
    _, converged = comp(x, 1)
    assert converged is not None and not bool(converged)


@pytest.mark.full
def test_compiled_forward_with_inductor_equals_eager(shapes):
    """The whole forward through Inductor (C++ kernels on the CPU; Triton on the GPU): the same detections
    (within 1e-4: Inductor may reorder float sums) and flag. About 100 s + 35 s on 2 cores, cold cache (200 s in
    all with another job on the cores)."""
    from rcnn_deploy.backends.torch_cuda import SyncFreeForward

    net, x = shapes
    eager, comp = SyncFreeForward(net), SyncFreeForward(net, "default")
    ref, _ = eager(x, 24)
    out, converged = comp(x, 24)
    assert converged is not None and bool(converged)
    _assert_same(out, ref)
    # one round is not greedy NMS on these images: compiled again for it (a guard on the round count), flagged,
    # and the eager fallback gives the exact detections
    few, few_flag = eager(x, 1)
    assert not bool(few_flag)
    out, converged = comp(x, 1)
    assert converged is not None and not bool(converged)
    _assert_same(out, few)
    exact, flag = comp(x, None)
    assert flag is None
    _assert_same(exact, ref)
    assert len(comp.compile_seconds) == 2 and min(comp.compile_seconds.values()) > 0
