"""ONNX export: split and fused graphs run in ONNX Runtime and match the PyTorch deploy model; graph hygiene;
dynamic batch; plugin graphs pass onnx.checker with the plugins' attributes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rcnn_deploy import get_spec  # noqa: E402
from rcnn_deploy.contract import Contract  # noqa: E402
from rcnn_deploy.evaluation.parity import compare_detections  # noqa: E402
from rcnn_deploy.export import export_onnx  # noqa: E402
from rcnn_deploy.glue.split import onnxruntime_split, run_split  # noqa: E402
from rcnn_deploy.models.testing import calibration_images  # noqa: E402
from rcnn_deploy.runtime.detections import Detections  # noqa: E402
from rcnn_deploy.runtime.split import fused_outputs  # noqa: E402

HW = (320, 320)
# Tolerances for ONNX Runtime vs PyTorch (both fp32 on the CPU; convolution kernels differ in summation order):
# every detection matched with the same class, box IoU > 0.995, |score diff| < 1e-3, 28x28 mask IoU > 0.98.
TOL = dict(min_box_iou=0.995, max_score_diff=1e-3, min_mask_iou=0.98)


def check(ref: dict, cand: dict, masks: bool) -> None:
    """Every detection matched, except one whose NMS decision sits on the IoU threshold (0.5 +- 1e-3; the two
    backends' fp32 summation orders decide it differently) and the one it displaces from the 100-detection cap."""
    spec = get_spec("torchvision-maskrcnn")
    refs, cands = Detections.from_padded(ref), Detections.from_padded(cand)
    rep = compare_detections(
        refs, cands, pasted_masks=False, nms_iou=spec.box_nms_thresh, max_detections=spec.detections_per_img
    )
    assert rep.reference_detections > 20
    assert not rep.unmatched, rep.unmatched[:5]
    assert rep.matched + rep.explained_count("ref") == rep.reference_detections
    assert rep.matched + rep.explained_count("cand") == rep.candidate_detections
    assert sum(e[3] == "nms tie" for e in rep.explained) <= len(refs), rep.explained  # at most one per image
    assert rep.min_box_iou > TOL["min_box_iou"]
    assert rep.max_score_diff < TOL["max_score_diff"]
    if masks:
        assert rep.min_mask_iou > TOL["min_mask_iou"]


@pytest.fixture(scope="module")
def images():
    return calibration_images(3, *HW, seed=7)


@pytest.fixture(scope="module")
def reference(tv_mask_model, images):
    model, _ = tv_mask_model
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(images).items()}


@pytest.fixture(scope="module")
def split_dir(tv_mask_model, tmp_path_factory):
    model, _ = tv_mask_model
    d = tmp_path_factory.mktemp("split")
    export_onnx(model, d, height=HW[0], width=HW[1], batch="1:4", graph="split")
    return d


@pytest.fixture(scope="module")
def fused_dir(tv_mask_model, tmp_path_factory):
    model, _ = tv_mask_model
    d = tmp_path_factory.mktemp("fused")
    export_onnx(model, d, height=HW[0], width=HW[1], batch="1:4", graph="fused", nms="onnx")
    return d


@pytest.mark.full
def test_split_contract_and_hygiene(split_dir):
    c = Contract.load(split_dir)
    assert c.graph == "split" and c.nms is None and c.batch == (1, 4) and c.input_hw == HW
    assert [g.role for g in c.graphs] == ["backbone", "box_head", "mask_head"]
    bb = c.graph_for("backbone")
    assert bb.inputs[0].name == "images" and bb.inputs[0].shape == ["batch", 3, 320, 320]
    assert [t.name for t in bb.outputs] == ["p2", "p3", "p4", "p5", "rpn_objectness", "rpn_deltas"]
    n_anchors = 3 * sum((320 // s) ** 2 for s in (4, 8, 16, 32, 64))
    assert bb.outputs[4].shape == ["batch", n_anchors] and bb.outputs[5].shape == ["batch", n_anchors, 4]
    assert c.graph_for("box_head").outputs[0].shape == ["rois", 91]
    assert c.graph_for("mask_head").outputs[0].shape == ["rois", 28, 28]
    for g in c.graphs:
        m = onnx.load(split_dir / g.file)
        onnx.checker.check_model(m)
        produced = {o for n in m.graph.node for o in n.output}
        consumed = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        assert produced <= consumed, f"dead outputs in {g.file}: {sorted(produced - consumed)[:5]}"


@pytest.mark.full
def test_split_onnxruntime_matches_pytorch(split_dir, images, reference):
    c = Contract.load(split_dir)
    out = run_split(onnxruntime_split(c, split_dir, ["CPUExecutionProvider"]), images.numpy())
    check(reference, out, masks=True)


@pytest.mark.full
def test_fused_onnxruntime_matches_pytorch_and_dynamic_batch(fused_dir, images, reference):
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend

    c = Contract.load(fused_dir)
    g = c.graph_for("fused")
    assert [t.name for t in g.outputs] == [
        "num_detections",
        "detection_boxes",
        "detection_scores",
        "detection_classes",
        "detection_masks",
    ]
    be = OnnxRuntimeBackend(fused_dir / g.file, ["CPUExecutionProvider"])
    batch = fused_outputs(be(images=images.numpy()))
    check(reference, batch, masks=True)
    for i in range(images.shape[0]):  # batch 1, image by image, gives what batch 3 gave
        single = fused_outputs(be(images=images[i : i + 1].numpy()))
        for k in batch:
            np.testing.assert_allclose(single[k][0], batch[k][i], rtol=0, atol=1e-4, err_msg=k)


@pytest.mark.full
def test_export_is_deterministic(tv_mask_model, tmp_path):
    model, _ = tv_mask_model
    digests = []
    for name in ("a", "b"):
        export_onnx(model, tmp_path / name, height=256, width=256, batch=1, graph="split")
        digests.append(
            hashlib.sha256((tmp_path / name / "torchvision-maskrcnn_backbone.onnx").read_bytes()).hexdigest()
        )
    assert digests[0] == digests[1]


@pytest.mark.full
def test_plugin_graph_attributes(tv_mask_model, tmp_path):
    model, _ = tv_mask_model
    with pytest.raises(ValueError, match="fixed batch"):  # PyramidROIAlign_TRT is not a dynamic-shape plugin
        export_onnx(model, tmp_path, height=256, width=320, batch="1:4", graph="fused", nms="plugin")
    export_onnx(model, tmp_path, height=256, width=320, batch=1, graph="fused", nms="plugin")
    c = Contract.load(tmp_path)
    m = onnx.load(tmp_path / c.graph_for("fused").file)
    onnx.checker.check_model(m)
    nodes = [n for n in m.graph.node if n.domain == "trt.plugins"]
    kinds = sorted(n.op_type for n in nodes)
    assert kinds == ["EfficientNMS_TRT", "EfficientNMS_TRT", "PyramidROIAlign_TRT", "PyramidROIAlign_TRT"]
    assert not [n for n in m.graph.node if n.op_type in ("NonMaxSuppression", "RoiAlign")]
    spec = model.spec
    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in nodes:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        assert a["plugin_version"] == b"1"
        if n.op_type == "EfficientNMS_TRT":
            assert a["max_output_boxes"] in (spec.rpn_post_nms_top_n, spec.detections_per_img)
            iou = spec.rpn_nms_thresh if a["max_output_boxes"] == spec.rpn_post_nms_top_n else spec.box_nms_thresh
            assert a["iou_threshold"] == pytest.approx(iou)
            assert a["background_class"] == -1 and a["box_coding"] == 0 and a["score_activation"] == 0
            assert len(n.input) == 2 and len(n.output) == 4
            if a["max_output_boxes"] == spec.rpn_post_nms_top_n:  # the RPN's: one row per (image, FPN level)
                assert shapes[n.input[0]][1:] == [spec.rpn_pre_nms_top_n, 1, 4]
                assert shapes[n.input[1]][1:] == [spec.rpn_pre_nms_top_n, 1]  # one group per row
                stacked = producer[producer[n.input[0]].input[0]]  # Reshape([B, levels, K, 4]) <- Concat
                assert stacked.op_type == "Concat" and len(stacked.input) == len(spec.anchor_strides)
        else:
            assert a["image_size"] == [256, 320] and a["fpn_scale"] == 224
            assert a["pooled_size"] in (spec.box_roi_size, spec.mask_roi_size)
            assert a["roi_coords_transform"] == 1 and a["sampling_ratio"] == 2  # torchvision: aligned=False, 2
            assert len(n.input) == 5  # rois + P2..P5


@pytest.fixture(scope="module")
def tensor_dir(tv_mask_model, tmp_path_factory):
    model, _ = tv_mask_model
    d = tmp_path_factory.mktemp("tensor")
    export_onnx(model, d, height=HW[0], width=HW[1], batch="1:4", graph="fused", nms="tensor")
    return d


@pytest.mark.full
def test_fused_tensor_variant_matches_pytorch(tensor_dir, images, reference):
    """No NonMaxSuppression and no RoiAlign op; the fixpoint Loop gives the exact greedy NMS."""
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend

    c = Contract.load(tensor_dir)
    m = onnx.load(tensor_dir / c.graph_for("fused").file)
    ops = {n.op_type for n in m.graph.node}
    assert "Loop" in ops and not ops & {"NonMaxSuppression", "RoiAlign"}
    assert not [n for n in m.graph.node if n.domain]  # no custom domains left
    onnx.checker.check_model(m)
    be = OnnxRuntimeBackend(tensor_dir / c.graph_for("fused").file, ["CPUExecutionProvider"])
    out = fused_outputs(be(images=images.numpy()))
    check(reference, out, masks=True)
    single = fused_outputs(be(images=images[1:2].numpy()))
    np.testing.assert_allclose(single["boxes"][0], out["boxes"][1], rtol=0, atol=1e-4)


@pytest.mark.full
def test_fp16_rule_keeps_glue_in_fp32(split_dir, tensor_dir):
    from rcnn_deploy.export.precision import is_network_node, to_fp16

    c = Contract.load(tensor_dir)
    m = to_fp16(onnx.load(tensor_dir / c.graph_for("fused").file))
    inits = {t.name: t.data_type for t in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm", "ConvTranspose")]
    assert convs and all(inits[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    # glue stays fp32: the NMS loop, exp of box deltas, and the graph I/O
    assert not [n for n in m.graph.node if n.op_type in ("Loop", "Exp", "Sigmoid", "Softmax") and is_network_node(n)]
    assert all(o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for o in m.graph.output)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    onnx.checker.check_model(m)


@pytest.mark.full
def test_predictor_rule_picks_each_heads_last_layer(tensor_dir):
    """The optional fp32-predictor rule (TensorRT 8.6/10 builder) names exactly the heads' last layers of the
    exported graph: per FPN level the RPN's objectness and box-delta convolutions, the box predictor's two
    matrix multiplies, the mask predictor's deconvolution and logits convolution."""
    from rcnn_deploy.precision_rule import in_predictor_scope

    c = Contract.load(tensor_dir)
    m = onnx.load(tensor_dir / c.graph_for("fused").file)
    weighted = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm", "ConvTranspose", "MatMul")]

    def scope(name: str) -> str:
        return next(p for p in name.split("/") if in_predictor_scope(p)).rstrip("_0123456789")

    picked = sorted(scope(n.name) + "/" + n.op_type for n in weighted if in_predictor_scope(n.name))
    levels = 5
    assert picked == sorted(
        ["cls_logits/Conv"] * levels
        + ["bbox_pred/Conv"] * levels
        + ["box_predictor/Gemm"] * 2
        + ["mask_predictor/ConvTranspose", "mask_predictor/Conv"]
    ), picked
    assert not [n for n in weighted if "backbone" in n.name and in_predictor_scope(n.name)]


@pytest.mark.full
@pytest.mark.parametrize("graph", ["split", "fused"])
def test_detectron2_flavour_exports_match_pytorch(graph, tmp_path):
    """BGR flip, ROIAlignV2 (aligned, adaptive sampling) and the D2 thresholds survive export to ONNX Runtime.
    D2 keeps sub-pixel boxes (no min-size filter), whose IoU is sensitive to 1e-3 px, so boxes are compared
    by coordinates here: max |diff| < 0.05 px."""
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import confident_state_dict

    model = DeployRCNN(get_spec("detectron2-maskrcnn"))
    confident_state_dict(model, seed=3)
    x = calibration_images(2, 288, 352, seed=5)
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model(x).items()}
    c = export_onnx(model, tmp_path, height=288, width=352, batch="1:2", graph=graph, nms="onnx")
    if graph == "split":
        out = run_split(onnxruntime_split(c, tmp_path, ["CPUExecutionProvider"]), x.numpy())
    else:
        be = OnnxRuntimeBackend(tmp_path / c.graph_for("fused").file, ["CPUExecutionProvider"])
        out = fused_outputs(be(images=x.numpy()))
    rep = compare_detections(Detections.from_padded(ref), Detections.from_padded(out), pasted_masks=False)
    assert rep.reference_detections > 20
    assert rep.matched == rep.reference_detections == rep.candidate_detections, rep.unmatched[:5]
    assert rep.max_box_abs_diff < 0.05 and rep.max_score_diff < 1e-3 and rep.min_mask_iou > 0.98
    assert set(np.unique(out["classes"])) <= set(range(-1, 80))


class PointerBackend:
    """Test double of ``TensorRTBackend``'s device API over ONNX Runtime: reads the inputs from and writes the
    outputs into the raw memory the pointers name (CPU tensors here, CUDA memory for an engine), with an
    engine's I/O dtypes (TensorRT 8.6 takes the mask head's ``classes`` as int32)."""

    host_memory = True  # its pointers name host memory: device_call lets CPU tensors through

    def __init__(self, directory, graph):
        from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend

        self.ort = OnnxRuntimeBackend(directory / graph.file, ["CPUExecutionProvider"])
        self.graph, self.calls = graph, 0

    def tensor_dtype(self, name):
        return np.dtype(np.int32 if name == "classes" else np.float32)

    def output_shapes(self, shapes):
        dims = {}
        for t in self.graph.inputs:
            dims.update({d: n for d, n in zip(t.shape, shapes[t.name]) if isinstance(d, str)})
        return {t.name: tuple(dims.get(d, d) for d in t.shape) for t in self.graph.outputs}

    @staticmethod
    def _view(t):
        import ctypes

        n = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
        return np.frombuffer((ctypes.c_char * n).from_address(t.ptr), dtype=t.dtype).reshape(t.shape)

    def infer_device(self, inputs, outputs, stream):
        assert stream == 0 and set(inputs) == {t.name for t in self.graph.inputs}
        feed = {n: self._view(t).astype(np.int64 if n == "classes" else np.float32) for n, t in inputs.items()}
        for name, value in self.ort.infer(feed).items():
            assert value.shape == outputs[name].shape, name
            self._view(outputs[name])[...] = value
        self.calls += 1


@pytest.mark.full
def test_split_device_io_path_gives_the_host_paths_outputs(split_dir, images):
    """The zero-copy path of the split runtime (engines writing into torch tensors, TensorRT's infer_device)
    gives exactly the host path's outputs: names, shapes, dtype casts and output allocation are right."""
    from rcnn_deploy.glue.split import SplitPieces

    c = Contract.load(split_dir)
    host = run_split(onnxruntime_split(c, split_dir, ["CPUExecutionProvider"]), images.numpy())
    pieces = [PointerBackend(split_dir, c.graph_for(r)) for r in ("backbone", "box_head", "mask_head")]
    dev = run_split(SplitPieces(c, *pieces, device_io=True), images.numpy())
    assert [p.calls for p in pieces] == [1, 1, 1]
    assert host.keys() == dev.keys()
    for k in host:
        np.testing.assert_array_equal(host[k], dev[k], err_msg=k)
    ort = onnxruntime_split(c, split_dir, ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="infer_device"):  # ONNX Runtime has no device path to force
        run_split(SplitPieces(c, ort.backbone, ort.box, ort.mask, device_io=True), images.numpy())
    pieces[0].host_memory = False  # an engine: CPU tensors' addresses are not device addresses
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        run_split(SplitPieces(c, *pieces, device_io=True), images.numpy())


@pytest.mark.full
def test_split_engines_missing_say_how_to_build_them(split_dir):
    from rcnn_deploy.api import Detector

    with pytest.raises(
        FileNotFoundError, match=r"rcnn-deploy build .*backbone\.onnx -o .*backbone\.engine --batch 1:4"
    ):
        Detector.load(split_dir, backend="tensorrt")


# ------------------------------------------------------------------------------------------------ reliability
def _copy(src, dst):  # type: ignore[no-untyped-def]
    """The export's graphs hard-linked (never written here), contract.json copied."""
    import os
    import shutil

    dst.mkdir(parents=True)
    for p in src.iterdir():
        (os.link if p.suffix == ".onnx" else shutil.copy2)(p, dst / p.name)
    return dst


@pytest.mark.full
def test_contract_records_each_graphs_size_and_sha256(split_dir):
    c = Contract.load(split_dir)
    assert c.format_version == 2
    for g in c.graphs:
        data = (split_dir / g.file).read_bytes()
        assert g.size == len(data) and g.sha256 == hashlib.sha256(data).hexdigest()
    assert not [p for p in split_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.full
def test_damaged_contract_fields_are_named(split_dir, tmp_path):
    import json

    from rcnn_deploy.errors import UserError

    base = json.loads((split_dir / "contract.json").read_text())

    def load(edit):  # type: ignore[no-untyped-def]
        d = json.loads(json.dumps(base))
        edit(d)
        (tmp_path / "contract.json").write_text(json.dumps(d))
        with pytest.raises(UserError) as info:
            Contract.load(tmp_path)
        return str(info.value)

    assert "contract.json: graphs[1].inputs[0].shape: missing" in load(
        lambda d: d["graphs"][1]["inputs"][0].pop("shape")
    )
    msg = load(lambda d: d["spec"].update(class_names=d["spec"]["class_names"][:5]))
    assert "spec.label_ids: has 91 entries but spec.class_names has 5" in msg
    msg = load(
        lambda d: [d["spec"].update({k: d["spec"][k][:5]}) for k in ("class_names", "label_ids", "category_ids")]
    )
    assert "graphs[1].outputs[0].shape: is ['rois', 91], but the number of spec.class_names give ['rois', 5]" in msg
    assert "input_hw: is [256, 320]" in load(lambda d: d.update(input_hw=[256, 320]))
    assert "re-export" in load(lambda d: d.update(format_version=1))  # format 1 had no checksums
    assert "spec.box_nms_thresh: must be between 0 and 1, got 7.0" in load(
        lambda d: d["spec"].update(box_nms_thresh=7.0)
    )
    assert "graphs[2].file: must be a plain file name" in load(lambda d: d["graphs"][2].update(file="../x.onnx"))
    assert "graphs[0].sha256: must be 64 lowercase hex" in load(lambda d: d["graphs"][0].update(sha256="abc"))
    (tmp_path / "contract.json").write_text(json.dumps(base)[:500])
    with pytest.raises(UserError, match="not valid JSON"):
        Contract.load(tmp_path)


@pytest.mark.full
def test_runtime_refuses_a_changed_or_unreadable_graph(fused_dir, tmp_path):
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from rcnn_deploy.errors import UserError

    d = _copy(fused_dir, tmp_path / "x")
    g = Contract.load(d).graph_for("fused")
    path = d / g.file
    data = bytearray(path.read_bytes())
    path.unlink()  # a new file: the hard link to the fixture's graph stays untouched
    data[len(data) // 3] ^= 0x01  # one bit of one weight: ONNX Runtime would run it
    path.write_bytes(bytes(data))
    with pytest.raises(
        UserError, match=r"sha256 is .* records .*re-export: rcnn-deploy export -m torchvision-maskrcnn"
    ):
        OnnxRuntimeBackend(path, ["CPUExecutionProvider"])
    path.write_bytes(bytes(data[:1000]))
    with pytest.raises(UserError, match=rf"{path}: the graph file is 1000 bytes but its contract"):
        OnnxRuntimeBackend(path, ["CPUExecutionProvider"])
    bare = tmp_path / "bare.onnx"  # no contract beside it: ONNX Runtime's own error, named
    bare.write_bytes(bytes(data[:1000]))
    with pytest.raises(UserError, match=rf"{bare}: ONNX Runtime cannot load this graph"):
        OnnxRuntimeBackend(bare, ["CPUExecutionProvider"])


@pytest.mark.full
def test_runtime_loads_the_checked_file_and_refuses_one_changed_meanwhile(fused_dir, tmp_path, monkeypatch):
    import onnxruntime as ort

    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from rcnn_deploy.errors import UserError

    d = _copy(fused_dir, tmp_path / "x")
    path = d / Contract.load(d).graph_for("fused").file
    real = ort.InferenceSession
    sources = []

    def session(source, *args, **kwargs):
        sources.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    be = OnnxRuntimeBackend(path, ["CPUExecutionProvider"])
    # ONNX Runtime reads the file itself: a session made from bytes keeps them as long as it lives (177 MB)
    assert sources == [str(path)]
    assert be.session.get_session_options().enable_cpu_mem_arena is False

    def rewritten_meanwhile(source, *args, **kwargs):
        s = real(source, *args, **kwargs)
        data = path.read_bytes()
        path.unlink()  # a new file (the hard link to the fixture's graph stays untouched), the same bytes
        path.write_bytes(data)
        return s

    monkeypatch.setattr(ort, "InferenceSession", rewritten_meanwhile)
    with pytest.raises(UserError, match=rf"{path}: the graph file changed while it was being checked and loaded"):
        OnnxRuntimeBackend(path, ["CPUExecutionProvider"])


@pytest.mark.full
def test_export_refuses_non_finite_weights_before_writing(tv_mask_model, tmp_path):
    import copy

    from rcnn_deploy.errors import UserError

    model = copy.deepcopy(tv_mask_model[0])
    with torch.no_grad():
        model.roi_heads.box_head.fc6.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"weight roi_heads.box_head.fc6.weight has 1 non-finite value"):
        export_onnx(model, tmp_path / "out", height=64, width=64, graph="fused")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("exchange", [True, False])
def test_staged_directory_replaces_the_export_whole(tmp_path, monkeypatch, exchange):
    """The old export is replaced in one step (renameat2 exchange, or the rename-aside fallback); files that
    were not part of the old export are kept; nothing temporary is left beside or inside it."""
    from rcnn_deploy.export import staging

    if not exchange:
        monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "contract.json").write_text("old")
    (out / "old.onnx").write_text("old graph")
    (out / "model.engine").write_text("an engine of the user's")
    (out / ".contract.json.abc.tmp").write_text("stray temp of an old writer")
    staged = staging.stage(out)
    assert staged.parent == out.parent and staged.name.startswith(".out.export-")
    (staged / "contract.json").write_text("new")
    (staged / "new.onnx").write_text("new graph")
    staging.commit(staged, out, ["contract.json", "new.onnx"], lambda d: ["contract.json", "old.onnx"])
    assert sorted(p.name for p in out.iterdir()) == ["contract.json", "model.engine", "new.onnx"]
    assert (out / "contract.json").read_text() == "new" and (out / "model.engine").read_text().startswith("an")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # what a killed exporter left beside the directory is cleared by the next export
    dead = tmp_path / ".out.export-999999999-abcd"
    dead.mkdir()
    staging.commit(staging.stage(out), out, [], lambda d: [])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.full
def test_uint8_input_export_loads_and_matches_float32(tv_mask_model, images, tmp_path):
    """export --input-dtype uint8: the contract says uint8, its own loader accepts it (it did not: the validator
    wanted float32 for every image input), and on integer pixels it gives the float32 graph's detections."""
    from rcnn_deploy.api import Detector
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend

    model, sd = tv_mask_model
    model.load_state_dict(sd)
    d = tmp_path / "u8"
    export_onnx(model, d, height=HW[0], width=HW[1], batch=3, graph="fused", nms="onnx", input_dtype="uint8")
    c = Contract.load(d)
    g = c.graph_for("fused")
    assert g.inputs[0].dtype == "uint8"
    assert Detector.load(d).input_dtype == np.uint8
    be = OnnxRuntimeBackend(d / g.file, ["CPUExecutionProvider"])
    pixels = images.round().clamp(0, 255)
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model(pixels).items()}
    check(ref, fused_outputs(be(images=pixels.to(torch.uint8).numpy())), masks=True)
