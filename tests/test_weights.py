"""Tests for safe checkpoint loading (torchvision and Detectron2 flavours) into torchvision's key layout."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from rcnn_deploy.models import weights as W  # noqa: E402
from rcnn_deploy.models.weights import convert, loaders, unpickler  # noqa: E402
from rcnn_deploy.models.weights import names as N  # noqa: E402

NUM_CLASSES = 5  # including background
MASK_PREFIXES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")


def _random_like(sd: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    """Same keys/shapes as ``sd``, every float tensor random (so any swapped tensor is caught)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=g)
        else:
            out[k] = v.clone()
    return out


def _float_only(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _assert_same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == torch.float32, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def mask_sd() -> Dict[str, torch.Tensor]:
    """A random Mask R-CNN state dict with torchvision's real keys (incl. num_batches_tracked)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    return _random_like(model.state_dict(), seed=0)


@pytest.fixture(scope="module")
def faster_shapes() -> Dict[str, tuple]:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def mask_sd_zero_bg(mask_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Float-only Mask R-CNN state dict whose background box/mask rows are zero (exactly D2-representable)."""
    sd = {k: v.clone() for k, v in _float_only(mask_sd).items()}
    for key in (N.BOX_W, N.BOX_B):
        sd[key][:4] = 0
    for key in (N.MASK_W, N.MASK_B):
        sd[key][:1] = 0
    return sd


@pytest.fixture(scope="module")
def d2_pkl(mask_sd_zero_bg: Dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
    W.save_detectron2_pkl(path, mask_sd_zero_bg)
    return path


@pytest.fixture(scope="module")
def tv_pth(mask_sd: Dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tv") / "maskrcnn.pth"
    torch.save(mask_sd, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# torchvision flavour
# ----------------------------------------------------------------------------------------------------------


def test_real_torchvision_keys_all_map_to_detectron2(mask_sd: Dict[str, torch.Tensor]) -> None:
    d2 = W.torchvision_to_detectron2(mask_sd)
    assert "backbone.bottom_up.stem.conv1.weight" in d2
    assert "backbone.bottom_up.res5.2.conv3.norm.running_var" in d2
    assert "backbone.bottom_up.res2.0.shortcut.norm.weight" in d2
    assert "backbone.fpn_lateral5.weight" in d2 and "backbone.fpn_output2.bias" in d2
    assert "proposal_generator.rpn_head.anchor_deltas.weight" in d2
    assert "roi_heads.box_head.fc2.weight" in d2
    assert "roi_heads.mask_head.mask_fcn4.weight" in d2 and "roi_heads.mask_head.deconv.bias" in d2
    assert d2["roi_heads.box_predictor.cls_score.weight"].shape == (NUM_CLASSES, 1024)
    assert d2["roi_heads.box_predictor.bbox_pred.weight"].shape == (4 * (NUM_CLASSES - 1), 1024)
    assert d2["roi_heads.mask_head.predictor.weight"].shape == (NUM_CLASSES - 1, 256, 1, 1)
    assert len(d2) == len(_float_only(mask_sd))


@pytest.mark.parametrize("flavour", ["mask", "faster"])
def test_name_table_round_trip_is_the_identity(flavour: str) -> None:
    """Every parameter of a full torchvision Mask / Faster R-CNN state dict has a Detectron2 name (no two the
    same), which maps back to it; and the whole state dict converts to Detectron2's layout and back unchanged
    (the background rows torchvision never uses zeroed first, as Detectron2 has none)."""
    from torchvision.models import detection

    build = detection.maskrcnn_resnet50_fpn if flavour == "mask" else detection.fasterrcnn_resnet50_fpn
    sd = _float_only(_random_like(build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict(), 1))
    d2_names = {k: N.torchvision_to_detectron2_name(k) for k in sd}
    assert all(v is not None for v in d2_names.values()), [k for k, v in d2_names.items() if v is None]
    assert len(set(d2_names.values())) == len(sd)
    assert {k: N.detectron2_to_torchvision_name(v) for k, v in d2_names.items()} == {k: k for k in sd}
    assert all(v.startswith((*N.D2_PREFIXES, "roi_heads.")) for v in d2_names.values())
    assert any(v.startswith("roi_heads.mask_head.") for v in d2_names.values()) == (flavour == "mask")

    for key, rows in ((N.BOX_W, 4), (N.BOX_B, 4), (N.MASK_W, 1), (N.MASK_B, 1)):
        if key in sd:
            sd[key][:rows] = 0
    d2 = W.torchvision_to_detectron2(sd)
    assert sorted(d2) == sorted(d2_names.values())
    back, dropped, meta = convert.detectron2_to_torchvision(d2, Path("rt.pkl"), masks=flavour == "mask")
    assert dropped == [] and meta == {}
    _assert_same(back, sd)


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "module", "legacy"])
def test_torchvision_pth_round_trip(wrap: str, mask_sd: Dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    if wrap == "bare":
        torch.save(mask_sd, path)
    elif wrap == "model":
        torch.save({"model": mask_sd, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, path)
    elif wrap == "state_dict":
        torch.save({"state_dict": mask_sd}, path)
    elif wrap == "module":
        torch.save({f"module.{k}": v for k, v in mask_sd.items()}, path)
    else:
        torch.save(mask_sd, path, _use_new_zipfile_serialization=False)
    loaded = W.load_checkpoint(path, "torchvision", masks=True)
    assert loaded.num_classes == NUM_CLASSES
    assert loaded.flavour == "torchvision"
    _assert_same(loaded.state_dict, _float_only(mask_sd))
    assert all(k.endswith("num_batches_tracked") for k in loaded.dropped)
    assert str(path) in loaded.source


def test_torchvision_reference_checkpoint_with_args_namespace(mask_sd: Dict[str, torch.Tensor], tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "checkpoint.pth"
    torch.save({"model": mask_sd, "args": argparse.Namespace(lr=0.02, data_path="/coco"), "epoch": 1}, path)
    assert W.load_checkpoint(path, "torchvision", masks=True).num_classes == NUM_CLASSES


def test_torchvision_mask_checkpoint_as_faster_drops_mask_head(tv_pth: Path, faster_shapes: dict) -> None:
    loaded = W.load_checkpoint(tv_pth, "torchvision", masks=False)
    assert not any(k.startswith(MASK_PREFIXES) for k in loaded.state_dict)
    assert any(k.startswith(MASK_PREFIXES) for k in loaded.dropped)
    W.check_state_dict(loaded.state_dict, faster_shapes, loaded.source)


def test_torchvision_faster_checkpoint_as_mask_is_refused(mask_sd: Dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "faster.pth"
    torch.save({k: v for k, v in mask_sd.items() if not k.startswith(MASK_PREFIXES)}, path)
    with pytest.raises(W.WeightsError, match="Faster R-CNN checkpoint loaded as Mask R-CNN"):
        W.load_checkpoint(path, "torchvision", masks=True)


def test_torchvision_flavour_refuses_detectron2_names(d2_pkl: Path, tmp_path: Path) -> None:
    with pytest.raises(W.WeightsError, match="detectron2"):
        W.load_checkpoint(d2_pkl, "torchvision", masks=True)
    path = tmp_path / "d2.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(W.WeightsError, match="use -m detectron2-maskrcnn"):
        W.load_checkpoint(path, "torchvision", masks=True)


def test_missing_file_and_unknown_flavour(tmp_path: Path, tv_pth: Path) -> None:
    with pytest.raises(W.WeightsError, match="no such checkpoint file"):
        W.load_checkpoint(tmp_path / "nope.pth", "torchvision", masks=True)
    with pytest.raises(W.WeightsError, match="unknown weights flavour"):
        W.load_checkpoint(tv_pth, "caffe", masks=True)


# ----------------------------------------------------------------------------------------------------------
# torchvision weight enums (hub cache, never downloads)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # undo any torch.hub.set_dir
    return tmp_path / "torch_home"


def _enum_cache_path(hub_home: Path, enum_name: str) -> Path:
    from torchvision.models import detection

    url = getattr(detection, enum_name).DEFAULT.url
    return hub_home / "hub" / "checkpoints" / os.path.basename(url)


def test_enum_found_in_hub_cache(hub_home: Path, tv_pth: Path, mask_sd: Dict[str, torch.Tensor]) -> None:
    cached = _enum_cache_path(hub_home, "MaskRCNN_ResNet50_FPN_Weights")
    cached.parent.mkdir(parents=True)
    os.symlink(tv_pth, cached)
    for name in ("MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "MaskRCNN_ResNet50_FPN_Weights.DEFAULT", "DEFAULT"):
        loaded = W.load_torchvision_enum(name, masks=True)
        assert loaded.num_classes == NUM_CLASSES
        assert "MaskRCNN_ResNet50_FPN_Weights.COCO_V1" in loaded.source
        _assert_same(loaded.state_dict, _float_only(mask_sd))
    # Mask R-CNN weights used for a Faster R-CNN model: mask head dropped.
    faster = W.load_torchvision_enum("torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1", masks=False)
    assert not any(k.startswith(MASK_PREFIXES) for k in faster.state_dict)
    # The generated file cannot have the sha256 its name promises.
    with pytest.raises(W.WeightsError, match="sha256"):
        W.load_torchvision_enum("MaskRCNN_ResNet50_FPN_Weights.COCO_V1", masks=True, check_hash=True)


def test_enum_missing_file_says_what_to_download(hub_home: Path) -> None:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    url = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url
    expected = _enum_cache_path(hub_home, "FasterRCNN_ResNet50_FPN_Weights")
    with pytest.raises(W.WeightsError) as info:
        W.load_torchvision_enum("FasterRCNN_ResNet50_FPN_Weights.COCO_V1", masks=False)
    msg = str(info.value)
    assert url in msg and str(expected) in msg and "TORCH_HOME" in msg
    assert not expected.exists()


def test_enum_bad_names(hub_home: Path) -> None:
    with pytest.raises(W.WeightsError, match="valid: COCO_V1"):
        W.load_torchvision_enum("MaskRCNN_ResNet50_FPN_Weights.COCO_V9", masks=True)
    with pytest.raises(W.WeightsError, match="v2 models"):
        W.load_torchvision_enum("FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1", masks=False)
    with pytest.raises(W.WeightsError, match="no mask head"):
        W.load_torchvision_enum("FasterRCNN_ResNet50_FPN_Weights.COCO_V1", masks=True)


# ----------------------------------------------------------------------------------------------------------
# Detectron2 flavour
# ----------------------------------------------------------------------------------------------------------


def test_detectron2_pkl_round_trip_is_exact(d2_pkl: Path, mask_sd_zero_bg: Dict[str, torch.Tensor]) -> None:
    loaded = W.load_checkpoint(d2_pkl, "detectron2", masks=True)
    assert loaded.flavour == "detectron2"
    assert loaded.num_classes == NUM_CLASSES
    assert loaded.dropped == []
    _assert_same(loaded.state_dict, mask_sd_zero_bg)
    with open(d2_pkl, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # pickle protocol 2, as the model zoo


def test_detectron2_class_reordering_is_a_permutation(tmp_path: Path, d2_pkl: Path) -> None:
    with open(d2_pkl, "rb") as f:
        raw = unpickler.RestrictedUnpickler(f, encoding="latin1").load()["model"]
    rng = np.random.default_rng(1)
    k = NUM_CLASSES - 1
    d2 = dict(raw)
    d2["roi_heads.box_predictor.cls_score.weight"] = rng.standard_normal((k + 1, 1024)).astype(np.float32)
    d2["roi_heads.box_predictor.cls_score.bias"] = rng.standard_normal(k + 1).astype(np.float32)
    path = tmp_path / "perm.pkl"
    W.save_detectron2_pkl(path, d2)
    sd = W.load_checkpoint(path, "detectron2", masks=True).state_dict

    perm = [k] + list(range(k))  # torchvision row i  <-  Detectron2 row perm[i]
    w_d2 = torch.from_numpy(d2["roi_heads.box_predictor.cls_score.weight"])
    b_d2 = torch.from_numpy(d2["roi_heads.box_predictor.cls_score.bias"])
    assert torch.equal(sd[N.CLS_W], w_d2[perm]) and torch.equal(sd[N.CLS_B], b_d2[perm])
    x = torch.randn(7, 1024, generator=torch.Generator().manual_seed(2))
    p_tv = torch.softmax(x @ sd[N.CLS_W].T + sd[N.CLS_B], dim=1)
    p_d2 = torch.softmax(x @ w_d2.T + b_d2, dim=1)
    torch.testing.assert_close(p_tv, p_d2[:, perm])
    # Box deltas / mask logits: background rows are zero, class c of torchvision == class c-1 of Detectron2.
    box = torch.from_numpy(d2["roi_heads.box_predictor.bbox_pred.weight"])
    assert torch.equal(sd[N.BOX_W][:4], torch.zeros(4, 1024)) and torch.equal(sd[N.BOX_W][4:], box)
    mask = torch.from_numpy(d2["roi_heads.mask_head.predictor.weight"])
    assert not sd[N.MASK_W][0].any() and torch.equal(sd[N.MASK_W][1:], mask)


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Writes what Python 2's cPickle (protocol 2) wrote: `str` as BINSTRING, numpy.core.* globals."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: object) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("ascii")  # type: ignore[union-attr]
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: object, name: object = None) -> None:
        if obj is np.ndarray.__reduce__(np.zeros(1))[0]:  # numpy's _reconstruct
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def test_detectron2_python2_style_pkl(tmp_path: Path, mask_sd_zero_bg: Dict[str, torch.Tensor], d2_pkl: Path) -> None:
    d2 = W.torchvision_to_detectron2(mask_sd_zero_bg)
    # What model-zoo files also carry: input normalisation and (old) anchor buffers.
    d2["pixel_mean"] = np.array([103.53, 116.28, 123.675], dtype=np.float32).reshape(3, 1, 1)
    d2["pixel_std"] = np.ones((3, 1, 1), dtype=np.float32)
    d2["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), dtype=np.float32)
    path = tmp_path / "py2.pkl"
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(
            {"model": d2, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
        )
    raw = path.read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    loaded = W.load_checkpoint(path, "detectron2", masks=True)
    _assert_same(loaded.state_dict, mask_sd_zero_bg)
    assert loaded.pixel_mean == pytest.approx((103.53, 116.28, 123.675))
    assert loaded.pixel_std == (1.0, 1.0, 1.0)
    assert sorted(loaded.dropped) == [
        "pixel_mean",
        "pixel_std",
        "proposal_generator.anchor_generator.cell_anchors.0",
    ]
    assert "Detectron2 Model Zoo" in loaded.source


def test_detectron2_pth_training_checkpoint(tmp_path: Path, mask_sd_zero_bg: Dict[str, torch.Tensor]) -> None:
    d2 = {k: torch.from_numpy(v) for k, v in W.torchvision_to_detectron2(mask_sd_zero_bg).items()}
    d2["backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"] = torch.tensor(5)
    path = tmp_path / "model_0089999.pth"
    torch.save(
        {
            "model": d2,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.02}]},
            "scheduler": {"last_epoch": 89999, "base_lrs": [0.02]},
            "iteration": 89999,
        },
        path,
    )
    loaded = W.load_checkpoint(path, "detectron2", masks=True)
    _assert_same(loaded.state_dict, mask_sd_zero_bg)
    assert loaded.dropped == ["backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"]
    # The same file used for a Faster R-CNN model.
    faster = W.load_checkpoint(path, "detectron2", masks=False)
    assert not any(k.startswith(MASK_PREFIXES) for k in faster.state_dict)
    assert "roi_heads.mask_head.predictor.weight" in faster.dropped


def _d2_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return W.torchvision_to_detectron2(sd)


def test_detectron2_class_agnostic_heads_are_refused(tmp_path: Path, mask_sd_zero_bg: Dict[str, torch.Tensor]) -> None:
    d2 = _d2_dict(mask_sd_zero_bg)
    agnostic_box = dict(d2)
    agnostic_box["roi_heads.box_predictor.bbox_pred.weight"] = np.zeros((4, 1024), np.float32)
    agnostic_box["roi_heads.box_predictor.bbox_pred.bias"] = np.zeros(4, np.float32)
    W.save_detectron2_pkl(tmp_path / "box.pkl", agnostic_box)
    with pytest.raises(W.WeightsError, match="class-agnostic box regression"):
        W.load_checkpoint(tmp_path / "box.pkl", "detectron2", masks=True)

    agnostic_mask = dict(d2)
    agnostic_mask["roi_heads.mask_head.predictor.weight"] = np.zeros((1, 256, 1, 1), np.float32)
    agnostic_mask["roi_heads.mask_head.predictor.bias"] = np.zeros(1, np.float32)
    W.save_detectron2_pkl(tmp_path / "mask.pkl", agnostic_mask)
    with pytest.raises(W.WeightsError, match="class-agnostic mask"):
        W.load_checkpoint(tmp_path / "mask.pkl", "detectron2", masks=True)


def test_detectron2_unknown_keys_are_reported(tmp_path: Path, mask_sd_zero_bg: Dict[str, torch.Tensor]) -> None:
    d2 = _d2_dict(mask_sd_zero_bg)
    d2["roi_heads.keypoint_head.conv_fcn1.weight"] = np.zeros((2, 2), np.float32)
    W.save_detectron2_pkl(tmp_path / "kp.pkl", d2)
    with pytest.raises(W.WeightsError, match="roi_heads.keypoint_head.conv_fcn1.weight"):
        W.load_checkpoint(tmp_path / "kp.pkl", "detectron2", masks=True)


# ----------------------------------------------------------------------------------------------------------
# Security: nothing in a checkpoint is ever executed
# ----------------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return (self.func, (self.arg,))


def _evil_payloads(marker: Path) -> list:
    return [
        (os.system, f"touch {marker}", f"{os.system.__module__}.system"),
        (builtins.exec, f"open({str(marker)!r}, 'w').close()", "builtins.exec"),
    ]


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("which", [0, 1])
def test_malicious_pkl_is_refused(tmp_path: Path, protocol: int, which: int) -> None:
    marker = tmp_path / "pwned"
    func, arg, qualified = _evil_payloads(marker)[which]
    path = tmp_path / "evil.pkl"
    payload = {
        "model": {"backbone.bottom_up.stem.conv1.weight": np.zeros(3, np.float32), "x": _Evil(func, arg)},
        "__author__": "Detectron2 Model Zoo",
    }
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    for call in (
        lambda: W.load_checkpoint(path, "detectron2", masks=True),
        lambda: W.load_checkpoint(path, "auto", masks=True),
        lambda: W.detect_format(path),
    ):
        with pytest.raises(W.WeightsError) as info:
            call()
        assert qualified in str(info.value)
        assert "not a plain Detectron2 weight file" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("flavour", ["torchvision", "detectron2", "auto"])
def test_malicious_pth_is_refused(tmp_path: Path, flavour: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(
        {"model": {"rpn.head.cls_logits.weight": torch.zeros(1)}, "x": _Evil(os.system, f"touch {marker}")},
        path,
    )
    with pytest.raises(W.WeightsError) as info:
        W.load_checkpoint(path, flavour, masks=True)
    assert f"{os.system.__module__}.system" in str(info.value)
    assert "weights_only=True" in str(info.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# check_state_dict
# ----------------------------------------------------------------------------------------------------------


def test_check_state_dict_ok_ignores_num_batches_tracked(tv_pth: Path, mask_sd: Dict[str, torch.Tensor]) -> None:
    loaded = W.load_checkpoint(tv_pth, "torchvision", masks=True)
    expected = {k: tuple(v.shape) for k, v in mask_sd.items()}  # has num_batches_tracked, the load has not
    W.check_state_dict(loaded.state_dict, expected, loaded.source)


def test_check_state_dict_reports_everything(mask_sd: Dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in mask_sd.items()}
    sd = dict(_float_only(mask_sd))
    del sd["backbone.fpn.inner_blocks.0.0.weight"]
    sd["extra.weight"] = torch.zeros(2)
    sd["backbone.fpn.layer_blocks.0.0.bias"] = torch.zeros(3, 2)
    with pytest.raises(W.WeightsError) as info:
        W.check_state_dict(sd, expected, "ckpt.pth")
    msg = str(info.value)
    assert msg.startswith("ckpt.pth:")
    assert "missing keys (in the model, not in the checkpoint) (1):\n  backbone.fpn.inner_blocks.0.0.weight" in msg
    assert "unexpected keys (in the checkpoint, not in the model) (1):\n  extra.weight" in msg
    assert "backbone.fpn.layer_blocks.0.0.bias: checkpoint (3, 2) vs model (256,)" in msg


def test_check_state_dict_truncates_long_lists(mask_sd: Dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in mask_sd.items()}
    sd = {k: v for k, v in _float_only(mask_sd).items() if not k.startswith("backbone.body.layer")}
    n_missing = sum(1 for k in _float_only(mask_sd) if k.startswith("backbone.body.layer"))
    with pytest.raises(W.WeightsError) as info:
        W.check_state_dict(sd, expected, "x")
    msg = str(info.value)
    assert f"({n_missing}):" in msg and f"... and {n_missing - 20} more" in msg


def test_check_state_dict_hints(mask_sd: Dict[str, torch.Tensor], faster_shapes: dict) -> None:
    mask_expected = {k: tuple(v.shape) for k, v in mask_sd.items()}
    # num_classes differs: only predictor shapes disagree.
    other = dict(mask_expected)
    for key in N.PREDICTOR_KEYS:
        n = 3 if key in (N.CLS_W, N.CLS_B, N.MASK_W, N.MASK_B) else 12
        other[key] = (n, *other[key][1:])
    with pytest.raises(W.WeightsError, match="num_classes differs .*checkpoint 5, model 3"):
        W.check_state_dict(_float_only(mask_sd), other, "x")
    # Faster R-CNN checkpoint into a Mask R-CNN model.
    faster_sd = {k: torch.zeros(s) for k, s in faster_shapes.items()}
    with pytest.raises(W.WeightsError, match="Faster R-CNN checkpoint loaded as Mask R-CNN"):
        W.check_state_dict(faster_sd, mask_expected, "x")
    # Mask R-CNN checkpoint into a Faster R-CNN model.
    with pytest.raises(W.WeightsError, match="masks=False"):
        W.check_state_dict(_float_only(mask_sd), faster_shapes, "x")


# ----------------------------------------------------------------------------------------------------------
# detect_format
# ----------------------------------------------------------------------------------------------------------


def test_detect_format(tv_pth: Path, d2_pkl: Path, tmp_path: Path) -> None:
    assert W.detect_format(tv_pth) == "torchvision"
    assert W.detect_format(d2_pkl) == "detectron2"
    d2_pth = tmp_path / "d2.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}, "iteration": 1}, d2_pth)
    assert W.detect_format(d2_pth) == "detectron2"
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"module.backbone.body.conv1.weight": torch.zeros(1)}}, wrapped)
    assert W.detect_format(wrapped) == "torchvision"
    assert W.load_checkpoint(d2_pkl, "auto", masks=True).flavour == "detectron2"


@pytest.mark.parametrize(
    "content",
    [b"", b"this is definitely not a checkpoint\x00\x01\x02" * 8, bytes(range(256)) * 4],
)
def test_detect_format_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(W.WeightsError, match="garbage.pth"):
        W.detect_format(path)
    with pytest.raises(W.WeightsError):
        W.load_checkpoint(path, "torchvision", masks=True)
    with pytest.raises(W.WeightsError):
        W.load_checkpoint(path, "detectron2", masks=True)


def test_detect_format_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"foo": np.zeros(2)}, protocol=2))
    with pytest.raises(W.WeightsError, match="cannot tell what this checkpoint is"):
        W.detect_format(path)
    blobs = tmp_path / "detectron1.pkl"
    blobs.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros(2)}}, protocol=2))
    with pytest.raises(W.WeightsError, match="Caffe2"):
        W.detect_format(blobs)
    with pytest.raises(W.WeightsError, match="Caffe2"):
        W.load_checkpoint(blobs, "detectron2", masks=True)


# ----------------------------------------------------------------------------------------------------------
# Damaged files: sizes checked before anything is allocated, CRC-32s, NaN / Inf
# ----------------------------------------------------------------------------------------------------------


def _peak_mb(fn) -> float:  # type: ignore[no-untyped-def]
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 1e6


class _Reconstruct:
    def __init__(self, shape: tuple) -> None:
        self.shape = shape

    def __reduce__(self):  # type: ignore[no-untyped-def]
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, self.shape, b"b"))


@pytest.mark.parametrize(
    "content, match",
    [
        # a 96-byte pickle whose BINBYTES8 declares 3.4 GB: the unpickler would allocate it before reading
        (b"\x80\x04\x8e" + struct.pack("<Q", 3_400_000_000) + bytes(85), "declares 3400000000 bytes"),
        (b"\x80\x04\x8d" + struct.pack("<Q", 3_400_000_000) + b"abc", "declares 3400000000 bytes"),
        (pickle.dumps({"model": {"a": _Reconstruct((1 << 32,))}}, protocol=2), "larger than the file"),
        (pickle.dumps({"model": {"a": np.array([1, "x"], dtype=object)}}, protocol=2), "not a plain numeric type"),
        (b"\x80\x02}q\x00(X\x05\x00\x00\x00model", "stops at byte"),  # truncated
    ],
)
def test_pkl_declaring_more_than_the_file_fails_fast_with_a_small_peak(tmp_path: Path, content: bytes, match: str):
    import time
    import tracemalloc

    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(W.WeightsError, match=match) as info:
            W.load_checkpoint(path, "detectron2", masks=True)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and isinstance(info.value, W.UserError)  # the CLI: one error line
    assert time.perf_counter() - t0 < 5 and peak < 16, f"{peak:.1f} MB traced refusing a {len(content)}-byte file"


def test_numpy_array_state_is_checked_before_numpy_uses_it(tmp_path: Path) -> None:
    """A pickled array whose state declares another size than its data, and a pickled dtype edited to object,
    are refused (numpy itself crashes on some of these); Python-2 pickles (str data) still load."""
    good = pickle.dumps({"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}}, protocol=2)
    p = tmp_path / "ok.pkl"
    p.write_bytes(good)
    arr = loaders._restricted_pickle_load(p)["model"]["a"]
    assert np.array_equal(np.asarray(arr), np.arange(6, dtype=np.float32).reshape(2, 3))
    bad = good.replace(b"K\x02K\x03\x86", b"K\x20K\x03\x86")  # shape (32, 3) for 6 values
    assert bad != good
    p.write_bytes(bad)
    with pytest.raises(W.WeightsError, match="declares 384 bytes of data but holds 24"):
        loaders._restricted_pickle_load(p)


def test_zip_pth_with_overwritten_tensor_bytes_is_refused(tmp_path: Path) -> None:
    import zipfile

    sd = {"roi_heads.box_predictor.cls_score.weight": torch.randn(50, 40)}
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/0" in i.filename)
    raw = bytearray(path.read_bytes())
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    raw[info.header_offset + 30 + name_len + extra_len + 1000] ^= 0x10
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(raw))
    assert torch.load(bad, weights_only=True).keys() == sd.keys()  # torch itself loads it without a word
    with pytest.raises(W.WeightsError, match=r"CRC-32 of record .*/data/0.* does not match"):
        W.load_checkpoint(bad, "torchvision", masks=False)
    with pytest.raises(W.WeightsError, match="CRC-32"):
        W.detect_format(bad)  # the mmap path too


def _rezip(src: Path, dst: Path, patch) -> None:  # type: ignore[no-untyped-def]
    import zipfile

    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, patch(info.filename, z.read(info)))


def test_torch_files_declaring_huge_storages_are_refused_before_allocating(tmp_path: Path) -> None:
    sd = {"roi_heads.box_predictor.cls_score.weight": torch.randn(10, 10)}
    small = tmp_path / "small.pth"
    torch.save(sd, small)
    huge = struct.pack("<i", 2_000_000_000)
    bad = tmp_path / "huge.pth"
    _rezip(small, bad, lambda n, b: b.replace(b"K\x64t", b"J" + huge + b"t") if n.endswith("data.pkl") else b)
    with pytest.raises(W.WeightsError, match="declares 8000000000 bytes but its record holds 400"):
        W.detect_format(bad)  # with mmap torch would not even notice
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.randn(3, 4)}, legacy, _use_new_zipfile_serialization=False)
    raw = legacy.read_bytes()
    bad_legacy = tmp_path / "legacy_huge.pth"
    bad_legacy.write_bytes(raw.replace(b"K\x0cN", b"J" + huge + b"N", 1))

    def load() -> None:
        with pytest.raises(W.WeightsError, match="declares 8000000000 bytes of tensor data"):
            W.load_checkpoint(bad_legacy, "torchvision", masks=False)

    assert _peak_mb(load) < 16
    (tmp_path / "legacy_cut.pth").write_bytes(raw[:-10])
    with pytest.raises(W.WeightsError, match="only 38 bytes are left"):
        W.load_checkpoint(tmp_path / "legacy_cut.pth", "torchvision", masks=False)
    (tmp_path / "cut.pth").write_bytes(small.read_bytes()[:700])
    with pytest.raises(W.WeightsError, match="truncated"):
        W.load_checkpoint(tmp_path / "cut.pth", "torchvision", masks=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor_and_file(tmp_path: Path, mask_sd, bad: float) -> None:
    sd = _float_only(mask_sd)
    key = "roi_heads.box_head.fc7.weight"
    t = sd[key].clone()
    t[3, 4] = bad
    path = tmp_path / "bad.pth"
    torch.save({**sd, key: t}, path)
    with pytest.raises(W.WeightsError, match=rf"{path}: tensor {key} has 1 non-finite value") as info:
        W.load_checkpoint(path, "torchvision", masks=True)
    assert isinstance(info.value, W.UserError)


def test_damaged_rcnn_deploy_checkpoint_fields_are_named(tmp_path: Path, mask_sd) -> None:
    from rcnn_deploy.models.checkpoint import save_checkpoint

    names = ["__background__"] + [f"c{i}" for i in range(1, NUM_CLASSES)]
    good = tmp_path / "good.pt"
    save_checkpoint(
        good, _float_only(mask_sd), model="torchvision-maskrcnn", class_names=names,
        category_ids=list(range(NUM_CLASSES)), input_hw=(64, 64), compress="int8",
    )  # fmt: skip
    obj = torch.load(good, weights_only=True)
    for field_name, value, match in [
        ("class_names", 7, "'class_names' must list"),
        ("category_ids", [1, 2], "'category_ids' must be 5 integers"),
        ("input_hw", [65, 64], "'input_hw' must be"),
        ("model", "yolo", "'model' is 'yolo'"),
        ("weights", [], "'weights' must be a dict"),
    ]:
        path = tmp_path / f"{field_name}.pt"
        torch.save({**obj, field_name: value}, path)
        with pytest.raises(W.WeightsError, match=match):
            W.load_checkpoint(path, "torchvision", masks=True)
    scale_nan = {**obj, "int8": {k: dict(v) for k, v in obj["int8"].items()}}
    first = next(iter(scale_nan["int8"]))
    scale_nan["int8"][first]["scale"] = scale_nan["int8"][first]["scale"].clone()
    scale_nan["int8"][first]["scale"][0] = float("nan")
    path = tmp_path / "nan_scale.pt"
    torch.save(scale_nan, path)
    with pytest.raises(W.WeightsError, match=rf"tensor {first} has \d+ non-finite"):
        W.load_checkpoint(path, "torchvision", masks=True)
