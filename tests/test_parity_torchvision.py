"""Parity of the torchvision-flavour deploy model with torchvision's own eager Faster/Mask R-CNN.

Same weights (the confident recipe), same input tensor, 320-px images. Required: the same detections
(box IoU > 0.99, same class, |score diff| < 1e-4) and pasted masks with IoU > 0.99, for batch 1 and batch 2.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rcnn_deploy.evaluation.parity import compare_detections  # noqa: E402
from rcnn_deploy.models.reference import run_torchvision_reference, torchvision_reference  # noqa: E402
from rcnn_deploy.models.testing import calibration_images  # noqa: E402
from rcnn_deploy.runtime.detections import Detections  # noqa: E402
from rcnn_deploy.runtime.masks import paste_mask, paste_masks  # noqa: E402


def deploy_detections(model, images) -> list:
    with torch.no_grad():
        out = {k: v.numpy() for k, v in model(images).items()}
    dets = Detections.from_padded(out)
    hw = tuple(images.shape[-2:])
    for d in dets:
        if d.masks is not None:
            d.masks = paste_masks(d.masks, d.boxes, hw, method="torchvision", threshold=0.5)
    return dets


def assert_parity(rep, expect_masks: bool) -> None:
    assert rep.reference_detections > 20, "test weights must give plenty of detections"
    assert rep.candidate_detections == rep.reference_detections, rep.unmatched[:5]
    assert rep.matched == rep.reference_detections, rep.unmatched[:5]
    assert rep.min_box_iou > 0.99
    assert rep.max_score_diff < 1e-4
    if expect_masks:
        assert rep.min_mask_iou is not None and rep.min_mask_iou > 0.99


@pytest.mark.full
@pytest.mark.parametrize("hw", [(320, 320), (288, 352)])  # 288x352: P6 grid is not size/64
def test_mask_rcnn_matches_torchvision(tv_mask_model, hw):
    model, sd = tv_mask_model
    ref = torchvision_reference(model.spec, sd, hw)
    images = calibration_images(2, *hw, seed=7)
    ref_dets = run_torchvision_reference(ref, images)
    # batch 2
    rep = compare_detections(ref_dets, deploy_detections(model, images))
    assert_parity(rep, expect_masks=True)
    # batch 1, each image alone, against the same reference
    singles = [deploy_detections(model, images[i : i + 1])[0] for i in range(2)]
    assert_parity(compare_detections(ref_dets, singles), expect_masks=True)


@pytest.mark.full
def test_faster_rcnn_matches_torchvision(tv_faster_model):
    model, sd = tv_faster_model
    ref = torchvision_reference(model.spec, sd, (320, 320))
    images = calibration_images(3, 320, 320, seed=11)
    rep = compare_detections(run_torchvision_reference(ref, images), deploy_detections(model, images))
    assert_parity(rep, expect_masks=False)
    assert "masks" not in model(images[:1])


def test_masks_pasted_like_torchvision(tv_mask_model):
    """Our numpy paste equals torchvision's paste_masks_in_image on the same mask probabilities."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 1, 28, 28, generator=g)
    boxes = torch.tensor(
        [
            [10.3, 20.7, 80.2, 60.9],
            [0, 0, 319.5, 255.2],
            [300, 200, 330, 270],
            [5, 5, 6, 6.5],
            [-4, -3, 40, 33],
            [100.5, 100.5, 101.0, 230.0],
        ]
    )
    ref = paste_masks_in_image(masks, boxes, (256, 320), padding=1)[:, 0].numpy()
    for i in range(6):
        prob = paste_mask(masks[i, 0].numpy(), boxes[i].numpy(), (256, 320), method="torchvision")
        np.testing.assert_allclose(prob, ref[i], atol=1e-5)
    ours = paste_masks(masks[:, 0].numpy(), boxes.numpy(), (256, 320), method="torchvision", threshold=0.5)
    assert np.array_equal(ours, ref > 0.5)


def test_static_output_contract(tv_mask_model):
    model, _ = tv_mask_model
    images = calibration_images(2, 256, 256, seed=2)
    with torch.no_grad():
        out = model(images)
    k = model.spec.detections_per_img
    assert list(out) == ["num_detections", "boxes", "scores", "classes", "masks"]
    assert out["num_detections"].shape == (2, 1) and out["num_detections"].dtype == torch.int32
    assert out["boxes"].shape == (2, k, 4) and out["scores"].shape == (2, k)
    assert out["classes"].shape == (2, k) and out["classes"].dtype == torch.int32
    assert out["masks"].shape == (2, k, 28, 28)
    for i in range(2):
        n = int(out["num_detections"][i])
        assert (out["classes"][i, n:] == -1).all() and (out["scores"][i, n:] == 0).all()
        assert (out["classes"][i, :n] >= 1).all()
        assert torch.all(out["scores"][i, :n][:-1] >= out["scores"][i, :n][1:])  # sorted


def test_bad_input_is_rejected(tv_mask_model):
    model, _ = tv_mask_model
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 128, 128))
