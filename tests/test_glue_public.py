"""The public glue capabilities the benchmarks use instead of patching the product: the RPN's NMS call
(``glue.stages.rpn_nms_inputs``), the reference NMS (``glue.nms.nms_eager``), fp16 emulation of the glue
(``glue.emulate.fp16_glue``) and one graph of a glue op alone (``export.export_module``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from rcnn_deploy import get_spec  # noqa: E402
from rcnn_deploy.glue.emulate import fp16_glue, rounds  # noqa: E402
from rcnn_deploy.glue.nms import nms_eager, nms_padded  # noqa: E402
from rcnn_deploy.glue.pipeline import split_levels  # noqa: E402
from rcnn_deploy.glue.roi_align import multiscale_roi_align  # noqa: E402
from rcnn_deploy.glue.stages import pooler_params, rpn_nms_inputs, select_proposals, spec_anchors  # noqa: E402


def _candidates(seed: int, n: int = 60, groups: int = 3):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, n, 1, 2, generator=g) * 900 + 100.3  # coordinates fp16 cannot hold (step 0.5 at 512-1023)
    wh = torch.rand(1, n, 1, 2, generator=g) * 80 + 10.1
    boxes = torch.cat([xy, xy + wh], dim=-1)
    scores = torch.rand(1, n, groups, generator=g) * 0.9 + 0.0001
    return boxes, scores, scores > 0.2


def _fp16_exact(t: torch.Tensor) -> bool:
    return bool(torch.equal(t, t.half().float()))


def test_rpn_nms_inputs_are_the_call_select_proposals_makes() -> None:
    from rcnn_deploy.models.rcnn import DeployRCNN

    torch.manual_seed(0)
    spec = get_spec("torchvision-maskrcnn", rpn_pre_nms_top_n=50, rpn_post_nms_top_n=20)
    net = DeployRCNN(spec).eval()
    hw = (128, 128)
    with torch.no_grad():
        _, obj, dlt = net.features(torch.rand(2, 3, *hw) * 255)
        levels = (split_levels(obj, spec, hw), split_levels(dlt, spec, hw), spec_anchors(spec, hw))
        call = rpn_nms_inputs(*levels, hw, spec)
        props, scores, valid = select_proposals(*levels, hw, spec)
    n = call.scores.shape[1]
    assert sum(call.group_blocks) == n and call.boxes.shape == (2, n, 1, 4) and call.max_out == 20
    assert call.iou_threshold == spec.rpn_nms_thresh and call.scores.shape[2] == len(call.group_blocks)
    start = 0
    for lvl, k in enumerate(call.group_blocks):  # each level's candidates are valid only in its own group
        block = call.valid[:, start : start + k]
        assert not block[..., [g for g in range(len(call.group_blocks)) if g != lvl]].any()
        start += k
    b, s, _, count = nms_eager(call.boxes, call.scores, call.valid, call.iou_threshold, call.max_out)
    assert torch.equal(b, props) and torch.equal(s, scores)
    assert torch.equal(valid.sum(dim=1), count)


def test_fp16_glue_rounds_nms_inputs_and_outputs_in_any_thread() -> None:
    boxes, scores, valid = _candidates(0)
    plain = nms_padded(boxes, scores, valid, 0.5, 30)
    assert not _fp16_exact(plain[0][plain[0] != 0])  # the plain NMS keeps fp32 coordinates

    rounded = nms_eager(boxes.half().float(), scores.half().float(), valid, 0.5, 30)
    with fp16_glue(nms=True):
        assert rounds("nms") and not rounds("roi_boxes")
        # the streaming runner calls the model on a thread of its own: the setting must reach it
        with ThreadPoolExecutor(1) as pool:
            got = pool.submit(nms_padded, boxes, scores, valid, 0.5, 30).result()
    assert not rounds("nms")  # restored
    assert _fp16_exact(got[0]) and _fp16_exact(got[1])
    assert torch.equal(got[0], rounded[0].half().float()) and torch.equal(got[3], rounded[3])


def test_fp16_glue_rounds_the_roi_boxes() -> None:
    p = pooler_params(get_spec("torchvision-maskrcnn"), "box")
    g = torch.Generator().manual_seed(1)
    feats = [torch.rand(1, 4, 256 // s, 256 // s, generator=g) for s in p.strides]
    boxes, _, _ = _candidates(1, n=8)
    boxes = (boxes[:, :, 0] / 4).clamp(0, 255)  # [1, 8, 4] inside a 256 image, not fp16-exact
    with fp16_glue(roi_boxes=True):
        got = multiscale_roi_align(feats, boxes, p)
    assert torch.equal(got, multiscale_roi_align(feats, boxes.half().float(), p))
    assert not torch.equal(got, multiscale_roi_align(feats, boxes, p))


def test_export_module_writes_a_glue_op_graph_that_runs(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx_graphsurgeon")
    from torch import nn

    from rcnn_deploy.export import export_module

    class NMS(nn.Module):
        def forward(self, boxes, scores, valid_f):  # type: ignore[no-untyped-def]
            b, s, _, c = nms_padded(boxes, scores, valid_f > 0.5, 0.5, 30)
            return b, s, c

    boxes, scores, valid = _candidates(2)
    path = export_module(NMS(), (boxes, scores, valid.float()), tmp_path / "nms.onnx", ["boxes", "scores", "valid_f"],
                         ["kept", "kept_scores", "count"], lowering="tensor")  # fmt: skip
    assert path == tmp_path / "nms.onnx" and [p.name for p in tmp_path.iterdir()] == ["nms.onnx"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kept, kept_scores, count = sess.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy(),
                                                "valid_f": valid.float().numpy()})  # fmt: skip
    ref = nms_eager(boxes, scores, valid, 0.5, 30)
    assert int(count.reshape(-1)[0]) == int(ref[3][0])
    k = int(ref[3][0])
    assert torch.allclose(torch.from_numpy(kept)[0, :k], ref[0][0, :k], atol=1e-4)
