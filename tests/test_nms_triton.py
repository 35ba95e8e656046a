"""The sync-free NMS rounds on bits (``glue.nms_triton``, one Triton kernel per round) against the rounds as products
(``SYNC_FREE_FIXPOINT = "matmul"``) and against torchvision's NMS, run on the CPU in Triton's interpreter (a
subprocess: ``triton.jit`` reads ``TRITON_INTERPRET`` when the kernel module is imported). On a GPU,
``benchmarks/nms_fixpoint_bench.py`` compares both ways on the model's shapes and the e2e parity phase the whole
model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch
    import rcnn_deploy.glue.sync_free as sf
    from rcnn_deploy.glue import nms_triton
    from rcnn_deploy.glue.nms import nms_eager, nms_padded

    assert nms_triton.available("cpu")
    g = torch.Generator().manual_seed(0)

    def both(s, valid, rounds):
        out = []
        for way in ("matmul", "bits"):
            sf.SYNC_FREE_FIXPOINT = way
            state = sf.SyncFree(rounds)
            out.append((sf.fixpoint_rounds(s, valid, state), bool(state.converged)))
        return out

    flags = set()
    cases = 0
    for case in range(16):
        b = int(torch.randint(1, 4, (1,), generator=g))
        m = int(torch.randint(1, 100, (1,), generator=g))
        density = float(torch.rand(1, generator=g)) * 0.4
        s = (torch.rand(b, m, m, generator=g) < density).tril(-1)  # j < i: j ranks above i
        if case % 3 == 1:
            s = s.float()  # 0 / 1 numbers as well as bools
        if case % 5 == 2:  # a view with row padding: the kernels read the strides
            big = torch.zeros(b, m, m + 7, dtype=s.dtype)
            big[:, :, :m] = s
            s = big[:, :, :m]
        valid = (torch.rand(b, m, generator=g) < 0.8).float()
        for rounds in (1, 2, 32):
            (k_m, c_m), (k_b, c_b) = both(s, valid, rounds)
            assert k_b.dtype == valid.dtype and k_b.shape == valid.shape, (case, rounds)
            assert torch.equal(k_m, k_b), (case, rounds, k_m, k_b)
            assert c_m == c_b, (case, rounds)
            flags.add(c_b)
            cases += 1
    assert flags == {True, False}, flags  # both convergence outcomes seen

    # more bit words than one block of the round kernel (its loop over words)
    nms_triton._ROUND_WORDS = 2
    s = (torch.rand(2, 200, 200, generator=g) < 0.05).tril(-1)
    valid = torch.ones(2, 200)
    (k_m, c_m), (k_b, c_b) = both(s, valid, 40)
    assert torch.equal(k_m, k_b) and c_m == c_b and c_b
    nms_triton._ROUND_WORDS = 128

    # a whole sync-free NMS on the bits against torchvision's, class-specific boxes and per-level blocks
    sf.SYNC_FREE_FIXPOINT = "bits"
    for trial in range(4):
        n, groups = 60, 3
        xy = torch.rand(2, n, 1, 2, generator=g) * 80
        wh = torch.rand(2, n, 1, 2, generator=g) * 40 + 4
        boxes = torch.cat([xy, xy + wh], -1)
        if trial % 2:
            boxes = boxes.expand(2, n, groups, 4) + torch.rand(2, n, groups, 4, generator=g) * 3
        # distinct scores: torchvision and the fixpoint may order equal scores differently
        scores = (torch.randperm(2 * n * groups, generator=g).float() + 1).reshape(2, n, groups) / (2 * n * groups)
        valid = scores > 0.2
        ref = nms_eager(boxes, scores, valid, 0.5, 20)
        with sf.sync_free(rounds=64) as state:
            got = nms_padded(boxes, scores, valid, 0.5, 20)
        assert bool(state.converged)
        for r, o in zip(ref, got):
            assert torch.equal(r, o), (trial, r, o)
    blocks = (25, 20, 15)
    boxes = torch.cat([torch.rand(1, 60, 1, 2, generator=g) * 50] * 2, -1) + torch.tensor([0.0, 0, 30, 30])
    scores = (torch.randperm(180, generator=g).float() + 1).reshape(1, 60, 3) / 180
    level = torch.repeat_interleave(torch.arange(3), torch.tensor(blocks))
    valid = torch.nn.functional.one_hot(level, 3).bool()[None] & (scores > 0.1)
    ref = nms_eager(boxes, scores, valid, 0.7, 30)
    with sf.sync_free(rounds=64) as state:
        got = nms_padded(boxes, scores, valid, 0.7, 30, group_blocks=blocks)
    assert bool(state.converged)
    assert torch.equal(ref[3], got[3]) and torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    print("nms bits ok", cases)
    """
)


@pytest.mark.full  # Triton's interpreter: about 3.5 min on 2 cores
@pytest.mark.slow
def test_nms_rounds_on_bits_equal_the_products_and_torchvisions_nms():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "nms bits ok 48" in r.stdout


COMPILED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    import test_torch_compile as t
    import rcnn_deploy.glue.sync_free as sf
    from rcnn_deploy.backends.torch_cuda import SyncFreeForward

    short = t._clustered_boxes(2, 96)
    long = t._chained(short)
    sf.SYNC_FREE_FIXPOINT = "matmul"
    eager = SyncFreeForward(t._BlockedNMS())
    refs = [eager(x, 4) for x in (short, long)]
    sf.SYNC_FREE_FIXPOINT = "bits"
    comp = SyncFreeForward(t._BlockedNMS(), "default")
    for (ref, ref_flag), x, converges in zip(refs, (short, long), (True, False)):
        out, flag = comp(x, 4)
        assert bool(ref_flag) is converges and bool(flag) is converges
        t._assert_same(out, ref)
    assert len(comp.compile_seconds) == 1
    print("compiled bits ok")
    """
)


@pytest.mark.full  # Inductor on the CPU and Triton's interpreter: about 1 min on 2 cores
@pytest.mark.slow
def test_compiled_forward_runs_the_bits_rounds_outside_its_graph():
    """``torch.compile`` of a sync-free NMS with the rounds on bits (launched outside the compiled graph): the
    products' boxes and convergence flags, a flag of False computed when the chain is longer than the rounds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", COMPILED], env=env, capture_output=True, text=True, timeout=900,
                       cwd=root)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "compiled bits ok" in r.stdout
