"""The Detectron2 flavour of rcnn_deploy against independent references of Detectron2's inference code.

Detectron2 itself is not installable here, so each reference below is a small re-implementation of the
documented formula of the Detectron2 function named in its docstring (``mask_rcnn_R_50_FPN_3x``: config
defaults of ``detectron2/config/defaults.py`` + ``configs/Base-RCNN-FPN.yaml``). Where Detectron2 calls
torchvision (``ROIAlign`` is ``torchvision.ops.roi_align``, ``batched_nms``), the reference calls it too, and
ROIAlign is additionally checked against a pure-python bilinear implementation.

Class layout: Detectron2 puts background *last* (scores ``[R, K + 1]``) and regresses only the K foreground
classes (``bbox_pred [R, 4 K]``, mask logits ``[R, K, M, M]``); the deploy model puts background first
(model class ``i`` is Detectron2 class ``i - 1``). References run in Detectron2's layout.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, roi_align

from rcnn_deploy import glue
from rcnn_deploy.config import get_spec
from rcnn_deploy.models.rcnn import DeployRCNN, build_backbone
from rcnn_deploy.models.testing import calibration_images, confident_state_dict

D2 = get_spec("detectron2-maskrcnn")
TV = get_spec("torchvision-maskrcnn")

# Detectron2 constants (config/defaults.py, configs/Base-RCNN-FPN.yaml, box_regression.py, poolers.py)
D2_PIXEL_MEAN = (103.530, 116.280, 123.675)  # BGR
D2_PIXEL_STD = (1.0, 1.0, 1.0)
D2_SIZES = ((32,), (64,), (128,), (256,), (512,))
D2_RATIOS = (0.5, 1.0, 2.0)
D2_OFFSET = 0.0
D2_STRIDES = (4, 8, 16, 32, 64)
D2_RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
D2_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
D2_SCALE_CLAMP = math.log(1000.0 / 16)
D2_POOLER_EPS = sys.float_info[8]  # poolers.assign_boxes_to_levels: eps = sys.float_info[8] (2.2e-16)
NUM_FG = 80


# ------------------------------------------------------------------------------------------------ references
def ref_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """DefaultAnchorGenerator.generate_cell_anchors: size-major, w = sqrt(s^2 / a), h = a w, no rounding."""
    out = []
    for size in sizes:
        area = size**2.0
        for a in aspect_ratios:
            w = math.sqrt(area / a)
            h = a * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out).float()


def ref_grid_anchors(
    grid_sizes: Sequence[Tuple[int, int]], strides: Sequence[int], cells: Sequence[Tensor], offset: float
) -> List[Tensor]:
    """DefaultAnchorGenerator._grid_anchors; _create_grid_offsets: arange(offset * stride, W * stride, stride)."""
    out = []
    for (gh, gw), stride, base in zip(grid_sizes, strides, cells):
        sx = torch.arange(offset * stride, gw * stride, step=stride, dtype=torch.float32)
        sy = torch.arange(offset * stride, gh * stride, step=stride, dtype=torch.float32)
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack((xx, yy, xx, yy), dim=1)
        out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return out


def ref_apply_deltas(deltas: Tensor, boxes: Tensor, weights: Sequence[float], scale_clamp: float) -> Tensor:
    """Box2BoxTransform.apply_deltas: deltas ``[N, 4k]``, boxes ``[N, 4]`` -> ``[N, 4k]``."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pcx = dx * widths[:, None] + ctr_x[:, None]
    pcy = dy * heights[:, None] + ctr_y[:, None]
    pw = torch.exp(dw) * widths[:, None]
    ph = torch.exp(dh) * heights[:, None]
    out = torch.zeros_like(deltas)
    out[:, 0::4] = pcx - 0.5 * pw
    out[:, 1::4] = pcy - 0.5 * ph
    out[:, 2::4] = pcx + 0.5 * pw
    out[:, 3::4] = pcy + 0.5 * ph
    return out


def ref_get_deltas(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """Box2BoxTransform.get_deltas."""
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    sx, sy = src[:, 0] + 0.5 * sw, src[:, 1] + 0.5 * sh
    tw, th = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    tx, ty = target[:, 0] + 0.5 * tw, target[:, 1] + 0.5 * th
    wx, wy, ww, wh = weights
    return torch.stack(
        (wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * torch.log(tw / sw), wh * torch.log(th / sh)), dim=1
    )


def ref_clip(boxes: Tensor, hw: Tuple[int, int]) -> Tensor:
    """Boxes.clip(box_size=(h, w))."""
    h, w = hw
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=w),
            boxes[:, 1].clamp(min=0, max=h),
            boxes[:, 2].clamp(min=0, max=w),
            boxes[:, 3].clamp(min=0, max=h),
        ),
        dim=-1,
    )


def _bilinear(feat: Tensor, y: float, x: float) -> Tensor:
    """The Caffe2/Detectron bilinear interpolation of ROIAlign (zero outside [-1, H] x [-1, W])."""
    _, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(feat.shape[0], dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return hy * hx * feat[:, y0, x0] + hy * lx * feat[:, y0, x1] + ly * hx * feat[:, y1, x0] + ly * lx * feat[:, y1, x1]


def ref_roi_align_python(
    feat: Tensor, box: Sequence[float], scale: float, out: int, sampling_ratio: int, aligned: bool
) -> Tensor:
    """ROIAlign of one box on ``feat [C, H, W]`` in float64 python: aligned=True shifts the scaled box by -0.5
    pixel (ROIAlignV2); sampling_ratio=0 takes ceil(roi_size / out) samples per bin and axis."""
    feat = feat.double()
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - off for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # legacy: force malformed ROIs to be 1x1
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / out, roi_h / out
    gw = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out)
    gh = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out)
    count = max(gw * gh, 1)
    res = torch.zeros(feat.shape[0], out, out, dtype=torch.float64)
    for ph in range(out):
        for pw in range(out):
            acc = torch.zeros(feat.shape[0], dtype=torch.float64)
            for iy in range(gh):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / gh
                for ix in range(gw):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / gw
                    acc += _bilinear(feat, y, x)
            res[:, ph, pw] = acc / count
    return res


def ref_assign_boxes_to_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_box_size: float, canonical_level: int
) -> Tensor:
    """poolers.assign_boxes_to_levels: floor(lvl0 + log2(sqrt(area) / s0 + eps)), eps = sys.float_info[8]."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lvl = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + D2_POOLER_EPS))
    return torch.clamp(lvl, min=min_level, max=max_level).to(torch.int64) - min_level


def ref_roi_pooler(feats: Sequence[Tensor], box_lists: Sequence[Tensor], output_size: int) -> Tensor:
    """ROIPooler(ROIAlignV2, sampling_ratio=0, canonical 224 / level 4) over P2..P5 -> ``[M, C, S, S]``."""
    rois = torch.cat([torch.cat((torch.full((len(b), 1), float(i)), b), dim=1) for i, b in enumerate(box_lists)])
    levels = ref_assign_boxes_to_levels(torch.cat(list(box_lists)), 2, 5, 224, 4)
    out = torch.zeros(len(rois), feats[0].shape[1], output_size, output_size)
    for lvl, feat in enumerate(feats):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        out[idx] = roi_align(feat, rois[idx], output_size, 1.0 / D2_STRIDES[lvl], 0, True)
    return out


def ref_find_top_rpn_proposals(
    proposals: Sequence[Tensor],
    logits: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
) -> Tuple[List[Tuple[Tensor, Tensor]], int]:
    """proposal_utils.find_top_rpn_proposals (inference). Returns per image (boxes, logits) and the number of
    candidates the nonempty filter removed (so tests can check that path ran)."""
    n_img = len(image_sizes)
    batch_idx = torch.arange(n_img)
    scores_l, props_l, lvl_l = [], [], []
    for lvl, (p, s) in enumerate(zip(proposals, logits)):
        k = min(s.shape[1], pre_nms_topk)
        top, idx = s.topk(k, dim=1)
        props_l.append(p[batch_idx[:, None], idx])
        scores_l.append(top)
        lvl_l.append(torch.full((k,), lvl, dtype=torch.int64))
    scores_all, props_all, lvl_all = torch.cat(scores_l, 1), torch.cat(props_l, 1), torch.cat(lvl_l)
    results, removed = [], 0
    for n, hw in enumerate(image_sizes):
        boxes, scores, lvl = props_all[n], scores_all[n], lvl_all
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
        boxes = ref_clip(boxes, hw)
        keep = ((boxes[:, 2] - boxes[:, 0]) > min_box_size) & ((boxes[:, 3] - boxes[:, 1]) > min_box_size)
        removed += int((~keep).sum())
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes, scores, lvl, nms_thresh)[:post_nms_topk]
        results.append((boxes[keep], scores[keep]))
    return results, removed


def ref_fast_rcnn_inference_single_image(
    boxes: Tensor, scores: Tensor, hw: Tuple[int, int], score_thresh: float, nms_thresh: float, topk: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """fast_rcnn.fast_rcnn_inference_single_image: boxes ``[R, 4K]``, scores ``[R, K+1]`` (background last).
    Returns boxes, scores, classes (0..K-1) and the index of the source row."""
    rows = torch.arange(len(boxes))
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores, rows = boxes[valid], scores[valid], rows[valid]
    scores = scores[:, :-1]
    k = boxes.shape[1] // 4
    boxes = ref_clip(boxes.reshape(-1, 4), hw).view(-1, k, 4)
    mask = scores > score_thresh
    inds = mask.nonzero()
    boxes, scores = boxes[mask], scores[mask]
    keep = batched_nms(boxes, scores, inds[:, 1], nms_thresh)[:topk]
    return boxes[keep], scores[keep], inds[keep, 1], rows[inds[keep, 0]]


class RefMaskHead:
    """MaskRCNNConvUpsampleHead (NUM_CONV 4, CONV_DIM 256) + class-specific 1x1 predictor, Detectron2 layout
    (80 output channels), built from the deploy model's weights."""

    def __init__(self, model: DeployRCNN) -> None:
        convs = [m for m in model.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
        self.convs = [(c.weight, c.bias) for c in convs]
        pred = model.roi_heads.mask_predictor
        self.deconv = (pred.conv5_mask.weight, pred.conv5_mask.bias)
        # the deploy predictor has a background channel first; Detectron2's has only the 80 classes
        self.predictor = (pred.mask_fcn_logits.weight[1:], pred.mask_fcn_logits.bias[1:])

    def __call__(self, x: Tensor) -> Tensor:
        for w, b in self.convs:
            x = F.relu(F.conv2d(x, w, b, stride=1, padding=1))
        x = F.relu(F.conv_transpose2d(x, *self.deconv, stride=2, padding=0))
        return F.conv2d(x, *self.predictor)


def ref_mask_rcnn_inference(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """mask_head.mask_rcnn_inference: sigmoid of the predicted class's channel -> ``[R, M, M]``."""
    return mask_logits[torch.arange(len(classes)), classes].sigmoid()


def ref_preprocess(rgb: Tensor) -> Tensor:
    """GeneralizedRCNN.preprocess_image on a BGR input (INPUT.FORMAT = BGR): (x - PIXEL_MEAN) / PIXEL_STD."""
    bgr = rgb[:, [2, 1, 0]]
    mean = torch.tensor(D2_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(D2_PIXEL_STD).view(1, 3, 1, 1)
    return (bgr - mean) / std


def _d2_box_predictor(model: DeployRCNN) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The deploy box predictor's weights in Detectron2's layout (background last, no background box)."""
    p = model.roi_heads.box_predictor
    cw, cb = p.cls_score.weight, p.cls_score.bias
    return (
        torch.cat((cw[1:], cw[:1])),
        torch.cat((cb[1:], cb[:1])),
        p.bbox_pred.weight[4:],
        p.bbox_pred.bias[4:],
    )


@torch.no_grad()
def ref_detectron2_inference(model: DeployRCNN, rgb: Tensor) -> List[dict]:
    """GeneralizedRCNN.inference of mask_rcnn_R_50_FPN_3x, composed from the references above; the network
    layers (backbone, head weights) are shared with ``model``."""
    image_hw = (int(rgb.shape[-2]), int(rgb.shape[-1]))
    n = rgb.shape[0]
    feats = list(model.backbone(ref_preprocess(rgb)).values())
    # StandardRPNHead: shared 3x3 conv + ReLU, 1x1 objectness and anchor-delta convs
    conv = model.rpn.head.conv[0][0]
    cls, bbox = model.rpn.head.cls_logits, model.rpn.head.bbox_pred
    logits, proposals = [], []
    grid = [tuple(f.shape[-2:]) for f in feats]
    anchors = ref_grid_anchors(grid, D2_STRIDES, [ref_cell_anchors(s, D2_RATIOS) for s in D2_SIZES], D2_OFFSET)
    for f, anc in zip(feats, anchors):
        t = F.relu(F.conv2d(f, conv.weight, conv.bias, padding=1))
        o, d = F.conv2d(t, cls.weight, cls.bias), F.conv2d(t, bbox.weight, bbox.bias)
        _, a, h, w = o.shape
        logits.append(o.permute(0, 2, 3, 1).flatten(1))
        d = d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).flatten(1, -2)
        expanded = anc.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4)
        proposals.append(ref_apply_deltas(d.reshape(-1, 4), expanded, D2_RPN_WEIGHTS, D2_SCALE_CLAMP).view(n, -1, 4))
    rpn, _ = ref_find_top_rpn_proposals(proposals, logits, [image_hw] * n, 0.7, 1000, 1000, 0.0)
    props = [b for b, _ in rpn]
    x = ref_roi_pooler(feats[:4], props, 7).flatten(1)
    x = F.relu(model.roi_heads.box_head.fc6(x))
    x = F.relu(model.roi_heads.box_head.fc7(x))
    cw, cb, bw, bb = _d2_box_predictor(model)
    probs = F.softmax(F.linear(x, cw, cb), dim=-1)
    deltas = F.linear(x, bw, bb)
    out = []
    start = 0
    mask_head = RefMaskHead(model)
    for i, p in enumerate(props):
        sl = slice(start, start + len(p))
        start += len(p)
        boxes = ref_apply_deltas(deltas[sl], p, D2_BOX_WEIGHTS, D2_SCALE_CLAMP)
        db, ds, dc, _ = ref_fast_rcnn_inference_single_image(boxes, probs[sl], image_hw, 0.05, 0.5, 100)
        pooled = ref_roi_pooler([f[i : i + 1] for f in feats[:4]], [db], 14)
        masks = ref_mask_rcnn_inference(mask_head(pooled), dc)
        out.append({"boxes": db, "scores": ds, "classes": dc, "masks": masks})
    return out


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model() -> DeployRCNN:
    torch.manual_seed(0)
    m = DeployRCNN(D2)
    confident_state_dict(m)
    return m


@pytest.fixture(scope="module")
def images() -> Tensor:
    return calibration_images(2, 320, 320, seed=3)


@pytest.fixture(scope="module")
def outputs(model: DeployRCNN, images: Tensor) -> dict:
    with torch.no_grad():
        return model(images)


def _assert_equal(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------- spec
def test_spec_matches_detectron2_config() -> None:
    assert D2.channel_order == "BGR"
    assert D2.pixel_mean == D2_PIXEL_MEAN and D2.pixel_std == D2_PIXEL_STD
    assert D2.stride_in_1x1 is True
    assert D2.anchor_sizes == D2_SIZES and D2.aspect_ratios == D2_RATIOS and D2.anchor_offset == D2_OFFSET
    assert D2.anchor_strides == D2_STRIDES and D2.anchor_round is False
    assert (D2.rpn_pre_nms_top_n, D2.rpn_post_nms_top_n, D2.rpn_nms_thresh) == (1000, 1000, 0.7)
    assert D2.rpn_min_size == 0.0 and D2.rpn_min_size_inclusive is False and D2.rpn_score_thresh == 0.0
    assert D2.rpn_box_weights == D2_RPN_WEIGHTS and D2.box_weights == D2_BOX_WEIGHTS
    assert D2.box_scale_clamp == D2_SCALE_CLAMP
    assert D2.roi_aligned is True and D2.box_sampling_ratio == 0 and D2.mask_sampling_ratio == 0
    assert (D2.box_roi_size, D2.mask_roi_size) == (7, 14)
    assert D2.roi_levels == (2, 5) and D2.canonical_scale == 224 and D2.canonical_level == 4
    assert D2.level_eps_inside_log is True
    assert (D2.box_score_thresh, D2.box_nms_thresh, D2.detections_per_img) == (0.05, 0.5, 100)
    assert D2.box_min_size == 0.0  # fast_rcnn_inference has no small-box removal
    assert D2.num_classes == NUM_FG + 1 and D2.class_names[0] == "__background__"
    assert D2.label_ids[1:] == tuple(range(NUM_FG))


# -------------------------------------------------------------------------------------------------- anchors
def test_cell_anchors_match_detectron2() -> None:
    for sizes in D2.anchor_sizes:
        got = glue.cell_anchors(sizes, D2.aspect_ratios, D2.anchor_round)
        _assert_equal(got, ref_cell_anchors(sizes, D2.aspect_ratios))
        assert not torch.equal(got, got.round())  # not rounded: e.g. 32 / sqrt(0.5) / 2 = 22.627...
    # several sizes per level: Detectron2 is size-major
    sizes, ratios = (32.0, 45.0, 64.0), (0.5, 1.0, 2.0)
    got = glue.cell_anchors(sizes, ratios, False)
    _assert_equal(got, ref_cell_anchors(sizes, ratios))
    _assert_equal(got[1], ref_cell_anchors((32.0,), ratios)[1])  # (size 32, ratio 1) is row 1, not row 3


@pytest.mark.parametrize("hw", [(320, 320), (128, 192)])
@pytest.mark.parametrize("offset", [D2_OFFSET, 0.5])
def test_grid_anchors_match_detectron2(hw: Tuple[int, int], offset: float) -> None:
    grid = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in D2.anchor_strides]
    got = glue.grid_anchors(grid, D2.anchor_strides, D2.anchor_sizes, D2.aspect_ratios, D2.anchor_round, offset)
    cells = [ref_cell_anchors(s, D2.aspect_ratios) for s in D2.anchor_sizes]
    want = ref_grid_anchors(grid, D2.anchor_strides, cells, offset)
    assert len(got) == 5
    for g, w, (gh, gw) in zip(got, want, grid):
        assert g.shape == (gh * gw * 3, 4)
        _assert_equal(g, w)


def test_model_anchors_match_detectron2(model: DeployRCNN) -> None:
    sizes = (80, 40, 20, 10, 5)
    got = model.anchors((320, 320), torch.device("cpu"))
    cells = [ref_cell_anchors(s, D2_RATIOS) for s in D2_SIZES]
    want = ref_grid_anchors([(s, s) for s in sizes], D2_STRIDES, cells, D2_OFFSET)
    assert len(got) == 5
    for g, w in zip(got, want):
        _assert_equal(g, w)
    # offset 0.0: the first anchor of P2 (size 32, ratio 0.5) is centred on the image corner
    torch.testing.assert_close(got[0][0], torch.tensor([-22.627417, -11.313708, 22.627417, 11.313708]))


def test_torchvision_anchors_differ_only_by_rounding() -> None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    for sizes in TV.anchor_sizes:
        tv_cells = glue.cell_anchors(sizes, TV.aspect_ratios, TV.anchor_round)
        d2_cells = glue.cell_anchors(sizes, TV.aspect_ratios, False)
        _assert_equal(tv_cells, d2_cells.round())
        assert not torch.equal(tv_cells, d2_cells)

    hw = (128, 192)
    grid = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in TV.anchor_strides]
    gen = AnchorGenerator(sizes=TV.anchor_sizes, aspect_ratios=(TV.aspect_ratios,) * len(TV.anchor_sizes))
    image_list = ImageList(torch.zeros(1, 3, *hw), [hw])
    feats = [torch.zeros(1, 1, gh, gw) for gh, gw in grid]
    want = gen(image_list, feats)[0]
    got = glue.grid_anchors(grid, TV.anchor_strides, TV.anchor_sizes, TV.aspect_ratios, TV.anchor_round)
    _assert_equal(torch.cat(got), want)
    # both flavours lay out (H, W, A) identically: per anchor they differ by less than half a pixel
    d2 = glue.grid_anchors(grid, TV.anchor_strides, TV.anchor_sizes, TV.aspect_ratios, False)
    diff = (torch.cat(got) - torch.cat(d2)).abs()
    assert 0 < diff.max() <= 0.5

    # several sizes per level: torchvision is ratio-major (opposite of Detectron2)
    sizes = (32.0, 64.0)
    gen2 = AnchorGenerator(sizes=(sizes,), aspect_ratios=(TV.aspect_ratios,))
    want2 = gen2(ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)]), [torch.zeros(1, 1, 8, 8)])[0]
    got2 = glue.grid_anchors([(8, 8)], (4,), (sizes,), TV.aspect_ratios, True)[0]
    _assert_equal(got2, want2)


# ------------------------------------------------------------------------------------------------ box coder
@pytest.mark.parametrize("weights", [D2_BOX_WEIGHTS, D2_RPN_WEIGHTS])
def test_decode_matches_box2box_transform(weights: Tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    n, k = 64, 3
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 200 + 2
    boxes = torch.cat((xy, xy + wh), dim=1)
    deltas = torch.randn(n, 4 * k, generator=g) * 2
    deltas[:8, 2::4] = 100.0  # huge dw: clamped to log(1000/16) * weight
    deltas[8:16, 3::4] = 1e4  # huge dh
    deltas[16:20, 2:4] = -50.0  # very negative: not clamped (shrinks to ~0)
    want = ref_apply_deltas(deltas, boxes, weights, D2_SCALE_CLAMP)
    got = glue.decode_boxes(deltas.view(n, k, 4), boxes.unsqueeze(1), weights, D2_SCALE_CLAMP).reshape(n, 4 * k)
    assert torch.isfinite(got).all()
    _assert_equal(got, want)
    # the clamp: width grows by exactly exp(log(1000/16)) = 62.5
    w_out = got[:8, 2::4] - got[:8, 0::4]
    torch.testing.assert_close(w_out, 62.5 * wh[:8, :1].expand(-1, k), rtol=1e-5, atol=1e-3)
    h_out = got[8:16, 3::4] - got[8:16, 1::4]
    torch.testing.assert_close(h_out, 62.5 * wh[8:16, 1:].expand(-1, k), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("weights", [D2_BOX_WEIGHTS, D2_RPN_WEIGHTS])
def test_encode_matches_get_deltas_and_inverts_decode(weights: Tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(2)
    n = 100

    def rand_boxes() -> Tensor:
        xy = torch.rand(n, 2, generator=g) * 300
        return torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 200 + 4), dim=1)

    src, tgt = rand_boxes(), rand_boxes()
    enc = glue.encode_boxes(tgt, src, weights)
    torch.testing.assert_close(enc, ref_get_deltas(src, tgt, weights), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(glue.decode_boxes(enc, src, weights, D2_SCALE_CLAMP), tgt, rtol=1e-5, atol=1e-3)
    deltas = torch.randn(n, 4, generator=g)
    dec = glue.decode_boxes(deltas, src, weights, D2_SCALE_CLAMP)
    torch.testing.assert_close(glue.encode_boxes(dec, src, weights), deltas, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------- ROIAlign
ROI_BOXES = [
    [3.3, 5.1, 27.9, 30.2],  # inside
    [-6.0, -3.5, 20.2, 14.7],  # over the top-left border
    [40.5, 30.0, 75.0, 60.0],  # past the right / bottom border
    [10.0, 10.0, 11.0, 11.5],  # smaller than one feature pixel
    [0.0, 0.0, 64.0, 48.0],  # the whole image: ceil(12 / 5) = 3 samples per bin row
    [20.0, 20.0, 20.0, 30.0],  # zero width
]


def test_roi_align_v2_single_level() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 12, 16, generator=g)  # stride 4: a 48 x 64 image
    boxes = torch.tensor([ROI_BOXES, ROI_BOXES[::-1]])  # [2, 6, 4]
    # one pooled level (stride 4): every box goes to it
    params = dataclasses.replace(glue.pooler_params(D2, "box"), output_size=5, strides=(4,))
    assert params.sampling_ratio == 0 and params.aligned is True
    got = glue.multiscale_roi_align([feats], boxes, params)
    assert got.shape == (2, 6, 3, 5, 5)
    rois = torch.cat((torch.arange(2.0).repeat_interleave(6).view(-1, 1), boxes.reshape(-1, 4)), dim=1)
    tv = roi_align(feats, rois, 5, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    _assert_equal(got.reshape(-1, 3, 5, 5), tv)
    for b in range(2):
        for k in range(6):
            want = ref_roi_align_python(feats[b], boxes[b, k].tolist(), 0.25, 5, 0, True)
            torch.testing.assert_close(got[b, k].double(), want, rtol=1e-5, atol=1e-5)
    assert got[0, 5].abs().max() == 0  # zero-width box: no samples

    legacy = glue.multiscale_roi_align([feats], boxes, dataclasses.replace(params, aligned=False))
    want0 = ref_roi_align_python(feats[0], ROI_BOXES[0], 0.25, 5, 0, False)
    torch.testing.assert_close(legacy[0, 0].double(), want0, rtol=1e-5, atol=1e-5)
    assert (legacy - got).abs().max() > 0.05  # the half-pixel shift matters


@pytest.mark.parametrize("head,size", [("box", 7), ("mask", 14)])
def test_roi_pooler_multilevel_matches_detectron2(head: str, size: int) -> None:
    g = torch.Generator().manual_seed(4)
    hw = (256, 320)
    feats = [torch.randn(2, 8, hw[0] // s, hw[1] // s, generator=g) for s in D2_STRIDES]
    sides = torch.tensor([8.0, 30.0, 60.0, 111.9, 112.0, 150.0, 223.9, 224.0, 300.0, 448.0, 500.0, 0.0])
    xy = torch.rand(2, len(sides), 2, generator=g) * 100
    boxes = torch.cat((xy, xy + sides.view(1, -1, 1)), dim=2)
    got = glue.multiscale_roi_align(feats, boxes, glue.pooler_params(D2, head))
    want = ref_roi_pooler(feats[:4], list(boxes), size)
    _assert_equal(got.reshape(want.shape), want)
    levels = ref_assign_boxes_to_levels(boxes.reshape(-1, 4), 2, 5, 224, 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------ level assignment
def _square_boxes(sides: Tensor) -> Tensor:
    x0 = torch.full_like(sides, 10.0)
    return torch.stack((x0, x0, x0 + sides, x0 + sides), dim=1)


def _level_test_boxes() -> Tensor:
    canonical = torch.tensor([0.0, 1.0, 28.0, 56.0, 112.0, 224.0, 448.0, 896.0, 2000.0])
    near = []
    for s in (56.0, 112.0, 224.0, 448.0):
        for d in (1e-3, 1e-2, 0.1, 0.5):
            near += [s - d, s + d]
    near_t = torch.tensor(near)
    ulps = []
    for s in (56.0, 112.0, 224.0, 448.0):
        lo = hi = torch.tensor(s)
        for _ in range(8):
            lo, hi = torch.nextafter(lo, torch.tensor(0.0)), torch.nextafter(hi, torch.tensor(1e4))
            ulps += [lo, hi]
    sweep = torch.linspace(1.0, 1200.0, 2399)
    squares = _square_boxes(torch.cat((canonical, near_t, torch.stack(ulps), sweep)))
    rects = torch.tensor([[0.0, 0.0, 112.0, 448.0], [5.0, 7.0, 453.0, 119.0], [0.0, 0.0, 56.0, 224.0]])
    return torch.cat((squares, rects))


def test_assign_levels_matches_detectron2() -> None:
    boxes = _level_test_boxes()
    params = glue.pooler_params(D2, "box")
    assert (params.min_level, params.max_level) == (2, 5)
    got = glue.assign_levels(boxes, params)
    _assert_equal(got, ref_assign_boxes_to_levels(boxes, 2, 5, 224, 4))
    # hand-checked: sqrt(area) 112 -> P3, 224 -> P4, 448 -> P5 (index = level - 2), just below -> one lower
    sides = torch.tensor([0.0, 28.0, 111.9, 112.0, 112.1, 223.9, 224.0, 224.1, 447.9, 448.0, 2000.0])
    lv = glue.assign_levels(_square_boxes(sides), params)
    assert lv.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    rect = glue.assign_levels(torch.tensor([[0.0, 0.0, 112.0, 448.0]]), params)
    assert rect.tolist() == [2]


def test_assign_levels_matches_torchvision_level_mapper() -> None:
    from torchvision.ops.poolers import LevelMapper

    boxes = _level_test_boxes()
    got = glue.assign_levels(boxes, glue.pooler_params(TV, "box"))
    mapper = LevelMapper(TV.roi_levels[0], TV.roi_levels[1], canonical_scale=224, canonical_level=4, eps=1e-6)
    _assert_equal(got, mapper([boxes]))
    # eps placement differs from Detectron2: a box 1e-4 px below 224 is P4 in torchvision, P3 in Detectron2
    b = _square_boxes(torch.tensor([224.0 - 1e-4]))
    assert mapper([b]).tolist() == [2]
    assert ref_assign_boxes_to_levels(b, 2, 5, 224, 4).tolist() == [1]


def test_assign_levels_eps_value_float64() -> None:
    sides = torch.tensor([112.0 * (1 - 1e-9), 224.0 * (1 - 1e-9), 448.0 * (1 - 1e-9)], dtype=torch.float64)
    boxes = _square_boxes(sides)
    got = glue.assign_levels(boxes, glue.pooler_params(D2, "mask"))
    _assert_equal(got, ref_assign_boxes_to_levels(boxes, 2, 5, 224, 4))


# ---------------------------------------------------------------------------------------------- RPN proposals
@pytest.mark.parametrize("pre,post,truncated", [(100, 80, True), (1000, 1000, False)])
def test_select_proposals_matches_find_top_rpn_proposals(pre: int, post: int, truncated: bool) -> None:
    spec = D2.replace(rpn_pre_nms_top_n=pre, rpn_post_nms_top_n=post)
    g = torch.Generator().manual_seed(5)
    hw = (96, 128)
    n = 2
    grid = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in D2_STRIDES]
    cells = [ref_cell_anchors(s, D2_RATIOS) for s in D2_SIZES]
    anchors = ref_grid_anchors(grid, D2_STRIDES, cells, D2_OFFSET)
    logits = [torch.randn(n, len(a), generator=g) * 2 for a in anchors]
    deltas = [torch.randn(n, len(a), 4, generator=g) * 0.3 for a in anchors]
    # push some high-scoring boxes completely outside the image (empty after clipping), and add non-finite
    # scores / deltas (Detectron2 drops them before clipping)
    for lvl in range(3):
        top = logits[lvl].topk(6, dim=1).indices
        deltas[lvl][0, top[0, 1], 0] = 30.0
        deltas[lvl][1, top[1, 2], 1] = -30.0
        deltas[lvl][1, top[1, 3], 3] = -80.0  # zero height
        deltas[lvl][0, top[0, 4], 0] = float("nan")
    logits[1][0, 7] = float("inf")
    logits[2][1, 3] = float("-inf")

    proposals = []
    for d, a in zip(deltas, anchors):
        exp_a = a.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4)
        proposals.append(ref_apply_deltas(d.reshape(-1, 4), exp_a, D2_RPN_WEIGHTS, D2_SCALE_CLAMP).view(n, -1, 4))
    want, removed = ref_find_top_rpn_proposals(proposals, logits, [hw] * n, 0.7, pre, post, 0.0)
    assert removed >= 6  # the nonempty filter ran

    boxes, scores, valid = glue.select_proposals(logits, deltas, anchors, hw, spec)
    assert boxes.shape == (n, post, 4) and scores.shape == (n, post) and valid.shape == (n, post)
    total = sum(min(pre, len(a)) for a in anchors)
    for i, (wb, ws) in enumerate(want):
        k = len(wb)
        assert 0 < k <= post and k < total  # NMS suppressed something
        assert valid[i].sum() == k and valid[i, :k].all()
        _assert_equal(boxes[i, :k], wb)
        torch.testing.assert_close(scores[i, :k], torch.sigmoid(ws), rtol=1e-6, atol=1e-7)  # 1-ulp sigmoid
        assert (boxes[i, k:] == 0).all() and (scores[i, k:] == 0).all()
    assert any(len(wb) == post for wb, _ in want) == truncated  # whether the post-NMS top-k truncated


# ------------------------------------------------------------------------------------------ box inference
def _detection_inputs(seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tuple[int, int]]:
    """D2-layout logits [B, P, 81] (bg last), deltas [B, P, 320], proposals [B, P, 4], valid [B, P]."""
    g = torch.Generator().manual_seed(seed)
    b, p, hw = 2, 150, (96, 128)
    ctr = torch.rand(b, p, 2, generator=g) * torch.tensor([128.0, 96.0])
    size = torch.rand(b, p, 2, generator=g) * 60 + 8
    proposals = torch.cat((ctr - size / 2, ctr + size / 2), dim=2).clamp(min=0)
    proposals = torch.minimum(proposals, torch.tensor([128.0, 96.0, 128.0, 96.0]))
    logits = torch.randn(b, p, NUM_FG + 1, generator=g) * 2.5
    logits[..., -1] += 1.0  # background
    deltas = torch.randn(b, p, 4 * NUM_FG, generator=g) * 0.5
    deltas[:, :5, 2::4] = 20.0  # clamped dw
    valid = torch.ones(b, p, dtype=torch.bool)
    valid[1, 12:] = False  # padded proposal slots of image 1
    return logits, deltas, proposals, valid, hw


def _to_deploy_layout(logits: Tensor, deltas: Tensor, seed: int) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    cls = torch.cat((logits[..., -1:], logits[..., :-1]), dim=-1)
    bg_box = torch.randn(*deltas.shape[:-1], 4, generator=g)  # never used: background is not a detection
    return cls, torch.cat((bg_box, deltas), dim=-1)


def test_select_detections_matches_fast_rcnn_inference() -> None:
    logits, deltas, proposals, valid, hw = _detection_inputs(6)
    cls, reg = _to_deploy_layout(logits, deltas, 7)
    boxes, scores, classes, count = glue.select_detections(cls, reg, proposals, valid, hw, D2)
    k = D2.detections_per_img
    assert boxes.shape == (2, k, 4) and scores.shape == (2, k) and classes.shape == (2, k) and count.shape == (2,)
    lengths = []
    for i in range(2):
        v = valid[i]
        probs = F.softmax(logits[i, v], dim=-1)
        pred = ref_apply_deltas(deltas[i, v], proposals[i, v], D2_BOX_WEIGHTS, D2_SCALE_CLAMP)
        wb, ws, wc, _ = ref_fast_rcnn_inference_single_image(pred, probs, hw, 0.05, 0.5, k)
        n = len(wb)
        lengths.append(n)
        assert int(count[i]) == n
        torch.testing.assert_close(boxes[i, :n], wb, rtol=0, atol=1e-5)
        torch.testing.assert_close(scores[i, :n], ws, rtol=1e-6, atol=1e-7)
        _assert_equal(classes[i, :n] - 1, wc)  # model class i is Detectron2 class i - 1
        assert (boxes[i, n:] == 0).all() and (scores[i, n:] == 0).all() and (classes[i, n:] == 0).all()
    assert lengths[0] == k and 0 < lengths[1] < k  # one image truncated at 100, one not
    # the score threshold is strict and applies to the softmax including the background column
    assert (scores[0, : count[0]] > 0.05).all()


def test_select_detections_non_finite_boxes() -> None:
    logits, deltas, proposals, valid, hw = _detection_inputs(8)
    probs_all = F.softmax(logits, dim=-1)
    j = int(probs_all[0, :, :-1].max(dim=1).values.argmax())  # the most confident proposal of image 0
    c = int(probs_all[0, j, :-1].argmin())  # its least likely class (never detected)
    deltas[0, j, 4 * c] = float("nan")
    cls, reg = _to_deploy_layout(logits, deltas, 9)
    boxes, scores, classes, count = glue.select_detections(cls, reg, proposals, valid, hw, D2)
    pred = ref_apply_deltas(deltas[0], proposals[0], D2_BOX_WEIGHTS, D2_SCALE_CLAMP)
    wb, ws, wc, _ = ref_fast_rcnn_inference_single_image(pred, probs_all[0], hw, 0.05, 0.5, 100)
    assert int(count[0]) == len(wb)
    torch.testing.assert_close(boxes[0, : len(wb)], wb, rtol=0, atol=1e-5)
    _assert_equal(classes[0, : len(wb)] - 1, wc)


# ---------------------------------------------------------------------------------------------- mask head
def test_mask_head_matches_detectron2(model: DeployRCNN) -> None:
    g = torch.Generator().manual_seed(10)
    hw = (128, 160)
    feats = [torch.randn(2, 256, hw[0] // s, hw[1] // s, generator=g) for s in D2_STRIDES]
    sides = torch.tensor([[20.0, 50.0, 90.0, 120.0, 150.0, 10.0], [128.0, 40.0, 70.0, 100.0, 24.0, 60.0]])
    xy = torch.rand(2, 6, 2, generator=g) * 30
    boxes = torch.cat((xy, xy + sides.unsqueeze(-1) * torch.tensor([1.0, 0.8])), dim=2)
    d2_classes = torch.randint(0, NUM_FG, (2, 6), generator=g)
    with torch.no_grad():
        pooled = glue.multiscale_roi_align(feats, boxes, glue.pooler_params(D2, "mask")).flatten(0, 1)
        assert pooled.shape == (12, 256, 14, 14)
        logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled))
        got = model.mask_head(pooled, (d2_classes + 1).flatten())  # model class = Detectron2 class + 1
        selected = glue.select_masks(logits.view(2, 6, *logits.shape[1:]), d2_classes + 1)
        assert logits.shape == (12, NUM_FG + 1, 28, 28) and got.shape == (12, 28, 28)
        ref_logits = RefMaskHead(model)(ref_roi_pooler(feats[:4], list(boxes), 14))
        want = ref_mask_rcnn_inference(ref_logits, d2_classes.reshape(-1))
    torch.testing.assert_close(logits[:, 1:], ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(selected.flatten(0, 1), want, rtol=1e-5, atol=1e-6)
    assert (want.std(dim=(-1, -2)) > 1e-3).all()  # masks are not flat


# ------------------------------------------------------------------------------------------------- backbone
def _ref_bottleneck(block: torch.nn.Module, x: Tensor, stride: int) -> Tensor:
    """detectron2 BottleneckBlock (stride_in_1x1=True) with FrozenBatchNorm2d (eps 1e-5)."""

    def bn(m: torch.nn.Module, y: Tensor) -> Tensor:
        scale = m.weight * (m.running_var + 1e-5).rsqrt()
        return y * scale.view(1, -1, 1, 1) + (m.bias - m.running_mean * scale).view(1, -1, 1, 1)

    out = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, stride=stride)))
    out = F.relu(bn(block.bn2, F.conv2d(out, block.conv2.weight, stride=1, padding=1)))
    out = bn(block.bn3, F.conv2d(out, block.conv3.weight))
    shortcut = bn(block.downsample[1], F.conv2d(x, block.downsample[0].weight, stride=stride))
    return F.relu(out + shortcut)


def test_backbone_stride_in_1x1(model: DeployRCNN) -> None:
    body = model.backbone.body
    assert body.conv1.stride == (2, 2) and body.conv1.kernel_size == (7, 7)
    for name, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer4", 2)):
        layer = getattr(body, name)
        first = layer[0]
        assert first.conv1.stride == (stride, stride), name  # MSRA: stride in the 1x1
        assert first.conv2.stride == (1, 1), name
        assert first.downsample[0].stride == (stride, stride), name
        for blk in list(layer)[1:]:
            assert blk.conv1.stride == blk.conv2.stride == (1, 1)
    tv_body = build_backbone(TV).body
    for name in ("layer2", "layer3", "layer4"):
        first = getattr(tv_body, name)[0]
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2), name  # torchvision: in the 3x3
    g = torch.Generator().manual_seed(11)
    x = torch.relu(torch.randn(1, 256, 16, 16, generator=g))
    with torch.no_grad():
        got = body.layer2[0](x)
        want = _ref_bottleneck(body.layer2[0], x, 2)
    assert got.shape == (1, 512, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fpn_and_rpn_head_outputs(model: DeployRCNN, images: Tensor) -> None:
    sizes = (80, 40, 20, 10, 5)
    with torch.no_grad():
        pyramid = list(model.backbone(ref_preprocess(images)).values())
        feats, objectness, deltas = model.features(images)
        # StandardRPNHead + the (N, Hi*Wi*A) / (N, Hi*Wi*A, 4) flattening of RPN._forward / predict_proposals
        conv = model.rpn.head.conv[0][0]
        cls, bbox = model.rpn.head.cls_logits, model.rpn.head.bbox_pred
        want_o, want_d = [], []
        for f in pyramid:
            t = F.relu(F.conv2d(f, conv.weight, conv.bias, padding=1))
            o, d = F.conv2d(t, cls.weight, cls.bias), F.conv2d(t, bbox.weight, bbox.bias)
            _, a, h, w = o.shape
            want_o.append(o.permute(0, 2, 3, 1).flatten(1))
            want_d.append(d.view(2, a, 4, h, w).permute(0, 3, 4, 1, 2).flatten(1, -2))
    assert [tuple(f.shape) for f in pyramid] == [(2, 256, s, s) for s in sizes]  # P2..P6
    assert len(feats) == 4  # the pooled levels P2..P5
    for f, p in zip(feats, pyramid):
        _assert_equal(f, p)
    n = sum(3 * s * s for s in sizes)
    assert objectness.shape == (2, n) and deltas.shape == (2, n, 4)
    torch.testing.assert_close(objectness, torch.cat(want_o, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(deltas, torch.cat(want_d, 1), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- preprocessing
def test_normalize_matches_detectron2_preprocess(model: DeployRCNN, images: Tensor) -> None:
    got = model.normalize(images)
    _assert_equal(got, ref_preprocess(images))
    # the channel flip matters: channel 0 is blue minus the blue mean
    _assert_equal(got[:, 0], images[:, 2] - 103.53)
    assert not torch.equal(got, (images - torch.tensor(D2_PIXEL_MEAN).view(1, 3, 1, 1)))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.full
def test_end_to_end_smoke(model: DeployRCNN, images: Tensor, outputs: dict) -> None:
    k = D2.detections_per_img
    assert list(outputs) == ["num_detections", "boxes", "scores", "classes", "masks"]
    assert outputs["num_detections"].shape == (2, 1) and outputs["num_detections"].dtype == torch.int32
    assert outputs["boxes"].shape == (2, k, 4) and outputs["scores"].shape == (2, k)
    assert outputs["classes"].shape == (2, k) and outputs["classes"].dtype == torch.int32
    assert outputs["masks"].shape == (2, k, 28, 28)
    for i in range(2):
        n = int(outputs["num_detections"][i, 0])
        assert n > 0
        cl = outputs["classes"][i]
        assert ((cl[:n] >= 0) & (cl[:n] < NUM_FG)).all() and (cl[n:] == -1).all()
        assert (outputs["scores"][i, :n] > 0.05).all() and (outputs["scores"][i, n:] == 0).all()
        assert (outputs["scores"][i, :n].diff() <= 0).all()  # sorted by decreasing score
        bx = outputs["boxes"][i, :n]
        assert (bx[:, 0] >= 0).all() and (bx[:, 2] <= 320).all() and (bx[:, 1] >= 0).all() and (bx[:, 3] <= 320).all()
        assert (outputs["masks"][i, n:] == 0).all()
    with torch.no_grad():
        for i in range(2):
            single = model(images[i : i + 1])
            for name in ("num_detections", "classes"):
                _assert_equal(single[name][0], outputs[name][i])
            for name in ("boxes", "scores", "masks"):
                torch.testing.assert_close(single[name][0], outputs[name][i], rtol=1e-4, atol=1e-4)


@pytest.mark.full
def test_end_to_end_matches_detectron2_reference(model: DeployRCNN, images: Tensor, outputs: dict) -> None:
    want = ref_detectron2_inference(model, images)
    for i, ref in enumerate(want):
        n = len(ref["boxes"])
        assert int(outputs["num_detections"][i, 0]) == n > 0
        _assert_equal(outputs["classes"][i, :n].long(), ref["classes"])
        torch.testing.assert_close(outputs["boxes"][i, :n], ref["boxes"], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(outputs["scores"][i, :n], ref["scores"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outputs["masks"][i, :n], ref["masks"], rtol=1e-4, atol=1e-4)
