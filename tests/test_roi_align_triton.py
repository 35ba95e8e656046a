"""The Triton multi-level ROIAlign (``glue.roi_align_triton``) against torchvision's ``roi_align`` per level, run on
the CPU in Triton's interpreter (a subprocess: ``triton.jit`` reads ``TRITON_INTERPRET`` when the kernel module is
imported). On the GPU, ``benchmarks/e2e_torch_cuda.py --phases roi_align`` compares it inside the whole model."""

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
    from torchvision.ops import roi_align
    from rcnn_deploy.glue import roi_align_triton as rt

    torch.manual_seed(0)
    B, K, C = 2, 5, 3
    strides = [4, 8, 16, 32]
    H, W = 40, 28
    feats = [torch.randn(B, C, (H + s - 1) // s, (W + s - 1) // s) for s in strides]
    # channels-last and contiguous levels side by side: the kernel reads any strides
    feats = [f.contiguous(memory_format=torch.channels_last) if i % 2 else f for i, f in enumerate(feats)]
    xy = torch.rand(B, K, 2) * torch.tensor([W, H]) * 1.1 - 3
    boxes = torch.cat([xy, xy + torch.rand(B, K, 2) * 30], 2)
    boxes[0, 0] = torch.tensor([W - 0.5, H - 0.5, W + 5.0, H + 7.0])  # past the map's last row and column
    boxes[0, 1] = torch.tensor([3.0, 4.0, 3.0, 4.0])  # empty
    boxes[1, 0] = torch.tensor([-30.0, -30.0, -20.0, -25.0])  # outside: every sample zero
    levels = torch.arange(B * K).view(B, K) % 4
    checked = 0
    for size, sampling, aligned in [(3, 2, False), (2, 0, True), (2, 0, False)]:
        out = rt.multiscale_roi_align(feats, boxes, levels, strides, size, sampling, aligned)
        assert out.shape == (B, K, C, size, size) and out.dtype == torch.float32
        for b in range(B):
            for k in range(K):
                lvl = int(levels[b, k])
                box = [boxes[b, k : k + 1]]
                ref = roi_align(feats[lvl][b : b + 1], box, size, 1.0 / strides[lvl], sampling, aligned)[0]
                assert torch.equal(out[b, k], ref), (size, sampling, aligned, b, k, (out[b, k] - ref).abs().max())
                checked += 1
    # launched from Python inside a compiled function (a graph break), the same numbers; Inductor launching the
    # Triton op itself needs a GPU (benchmarks/e2e_torch_cuda.py --roi-align triton)
    args = (feats, boxes, levels, strides, 3, 2, False)
    f = torch.compile(lambda *a: rt.multiscale_roi_align(*a, graph_break=True) + 1, backend="aot_eager")
    assert torch.equal(f(*args), rt.multiscale_roi_align(*args) + 1)
    print("checked", checked)
    """
)


@pytest.mark.slow
def test_triton_kernel_matches_torchvision_roi_align_per_level() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "checked 30" in r.stdout


def test_triton_mode_falls_back_to_stacked_on_the_cpu() -> None:
    """``SYNC_FREE_ROI_ALIGN = "triton"`` where the kernel cannot run (a CPU tensor, no interpreter): the stacked
    pooling, the same numbers."""
    import torch

    from rcnn_deploy.glue import roi_align as ra
    from rcnn_deploy.glue import roi_align_triton, sync_free

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs the kernel on the CPU")
    assert not roi_align_triton.available("cpu")
    p = ra.PoolerParams(7, 2, False, (4, 8, 16, 32), 2, 224.0, 4, 1e-6, False)
    feats = [torch.randn(1, 2, 32 // s, 32 // s) for s in p.strides]
    boxes = torch.tensor([[[1.0, 2.0, 20.0, 25.0], [0.0, 0.0, 31.0, 31.0]]])
    old = ra.SYNC_FREE_ROI_ALIGN
    try:
        with sync_free.sync_free():
            ra.SYNC_FREE_ROI_ALIGN = "stacked"
            stacked = ra.multiscale_roi_align(feats, boxes, p)
            for mode in ("triton", "triton_eager"):
                ra.SYNC_FREE_ROI_ALIGN = mode
                assert torch.equal(stacked, ra.multiscale_roi_align(feats, boxes, p)), mode
    finally:
        ra.SYNC_FREE_ROI_ALIGN = old


def test_level_count_is_checked() -> None:
    import torch

    from rcnn_deploy.glue import roi_align_triton as rt

    feats = [torch.zeros(1, 1, 2, 2)] * 6
    with pytest.raises(ValueError, match="1..5 levels"):
        rt.multiscale_roi_align(feats, torch.zeros(1, 1, 4), torch.zeros(1, 1), [4] * 6, 7, 2, False)
