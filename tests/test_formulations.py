"""The plain-tensor NMS and ROIAlign formulations equal torchvision's kernels (eager mode)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rcnn_deploy import get_spec  # noqa: E402
from rcnn_deploy.glue import assign_levels, pooler_params  # noqa: E402
from rcnn_deploy.glue.formulations import nms_fixpoint, roi_align_gather  # noqa: E402
from rcnn_deploy.glue.nms import _nms_blocked, nms_eager  # noqa: E402
from rcnn_deploy.glue.roi_align import _roi_align_eager  # noqa: E402


def random_boxes(g: torch.Generator, shape, extent=(300.0, 260.0), min_size=0.3, max_size=200.0):
    xy = torch.rand(*shape, 2, generator=g) * torch.tensor(extent) - 20
    wh = torch.rand(*shape, 2, generator=g) * max_size + min_size
    return torch.cat([xy, xy + wh], -1)


@pytest.mark.parametrize("head", ["box", "mask"])
def test_roi_align_gather_matches_torchvision(head):
    g = torch.Generator().manual_seed(0)
    p = pooler_params(get_spec("torchvision-maskrcnn"), head)
    feats = [torch.randn(2, 8, 320 // s, 256 // s, generator=g) for s in p.strides]
    boxes = random_boxes(g, (2, 60))
    boxes[0, 0] = torch.tensor([5.0, 5.0, 5.2, 5.1])  # tiny box (roi size clamped to 1)
    boxes[1, 1] = torch.tensor([0.0, 0.0, 256.0, 320.0])  # whole image
    boxes[1, 2] = torch.tensor([250.0, 300.0, 400.0, 500.0])  # mostly outside
    ref = _roi_align_eager(feats, boxes, p)
    got = roi_align_gather(feats, boxes, assign_levels(boxes, p), p)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # the aligned=True mode (fixed sampling ratio) also matches
    pa = p.__class__(**{**p.__dict__, "aligned": True})
    torch.testing.assert_close(
        roi_align_gather(feats, boxes, assign_levels(boxes, pa), pa),
        _roi_align_eager(feats, boxes, pa),
        rtol=1e-4,
        atol=1e-4,
    )


def test_roi_align_gather_refuses_adaptive_sampling():
    p = pooler_params(get_spec("detectron2-maskrcnn"), "box")
    with pytest.raises(NotImplementedError, match="fixed sampling_ratio"):
        roi_align_gather([torch.zeros(1, 1, 8, 8)] * 4, torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long), p)


@pytest.mark.parametrize("seed", range(4))
def test_nms_fixpoint_equals_greedy_nms_per_class(seed):
    g = torch.Generator().manual_seed(seed)
    b, n, c = 2, 300, 4
    base = random_boxes(g, (b, n, 1), max_size=60)
    boxes = base.expand(b, n, c, 4) + torch.randn(b, n, c, 4, generator=g)  # class-specific boxes
    scores = torch.rand(b, n, c, generator=g)
    valid = scores > 0.3
    ref = nms_eager(boxes, scores, valid, 0.5, 100)
    got = nms_fixpoint(boxes, scores, valid, 0.5, 100, max_candidates=10000)
    for r, q in zip(ref, got):
        torch.testing.assert_close(q, r, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
def test_nms_fixpoint_exclusive_groups_like_rpn_levels(seed):
    g = torch.Generator().manual_seed(seed)
    b, n, levels = 2, 400, 5
    boxes = random_boxes(g, (b, n, 1), max_size=60)
    onehot = torch.nn.functional.one_hot(torch.randint(0, levels, (n,), generator=g), levels).bool().unsqueeze(0)
    scores = torch.rand(b, n, 1, generator=g) * onehot
    valid = (scores > 0.1) & onehot
    ref = nms_eager(boxes, scores, valid, 0.7, 150)
    got = nms_fixpoint(boxes, scores, valid, 0.7, 150, exclusive_groups=True)
    for r, q in zip(ref, got):
        torch.testing.assert_close(q, r, rtol=0, atol=0)


@pytest.mark.parametrize(("blocks", "max_out"), [((120, 120, 60, 17, 3), 150), ((50, 50), 400), ((90, 40, 40), 30)])
def test_nms_blocked_equals_one_nms_over_all_groups(blocks, max_out):
    """Per-block NMS merged by score (how exported graphs run the RPN's NMS) is torchvision's batched NMS over
    the levels: same boxes, scores, groups and counts, in the same order (scores here have no ties)."""
    g = torch.Generator().manual_seed(len(blocks) + max_out)
    b, n, levels = 3, sum(blocks), len(blocks)
    boxes = random_boxes(g, (b, n, 1), max_size=60)
    level = torch.cat([torch.full((k,), i) for i, k in enumerate(blocks)])
    onehot = torch.nn.functional.one_hot(level, levels).bool().unsqueeze(0)
    scores = torch.rand(b, n, 1, generator=g) * onehot
    valid = (scores > 0.05) & onehot
    valid[2] = False  # an image without a single candidate
    ref = nms_eager(boxes, scores, valid, 0.7, max_out)
    got = _nms_blocked(boxes, scores, valid, 0.7, max_out, 0.0, blocks)
    assert int(ref[3][0]) > 0 and int(ref[3][2]) == 0
    for r, q in zip(ref, got):
        torch.testing.assert_close(q, r, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cover"):
        _nms_blocked(boxes, scores, valid, 0.7, max_out, 0.0, blocks[:-1])


def test_nms_fixpoint_long_suppression_chain():
    """A chain where each box overlaps the next: greedy keeps every other box; needs many fixpoint rounds."""
    n = 40
    x = torch.arange(n, dtype=torch.float32) * 4.0
    boxes = torch.stack([x, torch.zeros(n), x + 10.0, torch.full((n,), 10.0)], -1).view(1, n, 1, 4)
    scores = torch.linspace(1.0, 0.5, n).view(1, n, 1)
    valid = torch.ones(1, n, 1, dtype=torch.bool)
    ref = nms_eager(boxes, scores, valid, 0.4, n)
    got = nms_fixpoint(boxes, scores, valid, 0.4, n)
    assert int(ref[3]) == int(got[3]) and 1 < int(ref[3]) < n
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
