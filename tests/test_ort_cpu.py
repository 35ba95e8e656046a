"""The CPU path (``rcnn-deploy build --target onnxruntime``): the rewritten fp32 graph gives the export's outputs,
the int8 Q/DQ build loads like any export and detects what fp32 detects, its glue stays fp32, and bad
calibration input is a UserError. The shipped checkpoint exported at 256² (batch 1:2), a few synthetic images."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from rcnn_deploy.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
SIZE = 256
# int8 vs fp32: every fp32 detection scoring >= CONFIDENT must have an int8 detection of the same class with box
# IoU >= MIN_IOU and a score within MAX_SCORE_DIFF, for at least MIN_RECALL of them (and mask IoU >= MIN_MASK_IOU)
CONFIDENT, MIN_IOU, MAX_SCORE_DIFF, MIN_RECALL, MIN_MASK_IOU = 0.5, 0.8, 0.15, 0.9, 0.7


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} not present")
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.export.ort_cpu import build_cpu_export
    from rcnn_deploy.models.build import build_model

    root = tmp_path_factory.mktemp("ort_cpu")
    generate_synthetic_coco(root / "calib", 4, SIZE, SIZE, seed=1)
    generate_synthetic_coco(root / "val", 4, SIZE, SIZE, seed=2)
    net = build_model("torchvision-maskrcnn", str(CHECKPOINT), detections_per_img=20)  # 20 slots: a faster test
    c = export_onnx(net, root / "export", height=SIZE, width=SIZE, batch="1:2", graph="fused", nms="onnx")
    onnx_path = root / "export" / c.graph_for("fused").file
    build_cpu_export(onnx_path, root / "fp32", "fp32")
    build_cpu_export(onnx_path, root / "int8", "int8", root / "calib" / "images", calib_images=4)
    return {"root": root, "onnx": onnx_path, "export": root / "export", "fp32": root / "fp32", "int8": root / "int8"}


def _images(builds: Dict[str, Path]) -> np.ndarray:
    from rcnn_deploy.contract import Contract
    from rcnn_deploy.export.ort_cpu import calibration_images

    return calibration_images(Contract.load(builds["export"]), builds["root"] / "val" / "images", 4)


def _session(path: Path):  # type: ignore[no-untyped-def]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp32_cpu_graph_gives_the_exports_outputs(builds: Dict[str, Path]) -> None:
    """Each ROI pooled once from its level, the mask head on the detections only: the same outputs as the export
    (one image, two at once, and a blank image with no detection at all)."""
    from rcnn_deploy.contract import Contract

    ref = _session(builds["onnx"])
    cpu = _session(builds["fp32"] / Contract.load(builds["fp32"]).graphs[0].file)
    images = _images(builds)
    blank = np.full((1, 3, SIZE, SIZE), 114.0, np.float32)
    counts = []
    for x in [images[:1], images[1:2], images[2:4], blank]:
        a, b = ref.run(None, {"images": x}), cpu.run(None, {"images": x})
        counts += list(a[0].reshape(-1))
        for o, u, v in zip(ref.get_outputs(), a, b):
            assert u.shape == v.shape and u.dtype == v.dtype, o.name
            np.testing.assert_allclose(v, u, rtol=0, atol=1e-5, err_msg=o.name)
    assert counts[-1] == 0 and max(counts) > 0  # the blank image detects nothing, the others something


def test_box_head_reads_the_pooled_rows_in_level_order(builds: Dict[str, Path]) -> None:
    """The box pool's rows go back into their order after the box head's first Gemm (a [n, 1024] Gather), not
    before it (a [n, 256, 7, 7] one), in both builds; the outputs test above shows nothing else changed."""
    import onnx

    from rcnn_deploy.contract import Contract

    for kind in ("fp32", "int8"):
        c = Contract.load(builds[kind])
        assert c.notes["cpu"]["rewrite"]["row_order_after"] == "/net/box_head/fc6/Gemm", kind
        graph = onnx.load(str(builds[kind] / c.graphs[0].file)).graph
        gemm = next(n for n in graph.node if n.name.startswith("/net/box_head/fc6/Gemm") and "Gemm" in n.op_type)
        readers = [n for n in graph.node if any(o in n.input for o in gemm.output)]
        reorder = [n for n in graph.node if n.op_type == "Gather" and "box_head_rows_by_level" in n.input[0]]
        assert len(reorder) == 1 and readers, kind


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def test_int8_build_loads_like_an_export_and_matches_fp32(builds: Dict[str, Path]) -> None:
    from rcnn_deploy.api import Detector
    from rcnn_deploy.contract import Contract, verified_graph_bytes

    c = Contract.load(builds["int8"])
    assert c.format_version == 2 and c.notes["cpu"]["precision"] == "int8"
    verified_graph_bytes(builds["int8"] / c.graphs[0].file)  # size and sha256 as the contract records
    fp32, int8 = Detector.load(builds["fp32"]), Detector.load(builds["int8"], backend="onnxruntime")
    assert int8.backend == "onnxruntime"
    paths = sorted((builds["root"] / "val" / "images").iterdir())
    matched = total = 0
    for a, b in zip(fp32(paths), int8(paths)):
        keep = a.scores >= CONFIDENT
        for box, score, cls, mask in zip(a.boxes[keep], a.scores[keep], a.classes[keep], a.masks[keep]):
            total += 1
            same = np.flatnonzero(b.classes == cls)
            if not len(same):
                continue
            ious = _iou(box[None], b.boxes[same])[0]
            j = same[int(np.argmax(ious))]
            inter = np.logical_and(mask, b.masks[j]).sum()
            mask_iou = inter / max(np.logical_or(mask, b.masks[j]).sum(), 1)
            if ious.max() >= MIN_IOU and abs(b.scores[j] - score) <= MAX_SCORE_DIFF and mask_iou >= MIN_MASK_IOU:
                matched += 1
    assert total >= 4, "the fp32 build should detect the synthetic shapes"
    assert matched / total >= MIN_RECALL, f"int8 matched {matched} of {total} confident fp32 detections"


def test_int8_graph_keeps_the_glue_fp32(builds: Dict[str, Path]) -> None:
    from rcnn_deploy.contract import Contract
    from rcnn_deploy.export.ort_cpu import GLUE_OP_TYPES, glue_in_fp32
    from rcnn_deploy.precision_rule import in_network_scope, in_predictor_scope

    q = onnx.load(str(builds["int8"] / Contract.load(builds["int8"]).graphs[0].file))
    f = onnx.load(str(builds["fp32"] / Contract.load(builds["fp32"]).graphs[0].file), load_external_data=False)
    producer = {o: n for n in q.graph.node for o in n.output}
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    for op in GLUE_OP_TYPES:  # the glue is all there, not replaced by quantized ops
        assert count(q, op) == count(f, op), op
    assert count(q, "NonMaxSuppression") == 2 and count(q, "RoiAlign") == 8
    assert glue_in_fp32(q) == []
    for n in q.graph.node:
        if n.op_type in ("NonMaxSuppression", "RoiAlign", "TopK"):  # box / score / ROI inputs are fp32 tensors
            for i in n.input[1:2] if n.op_type == "RoiAlign" else n.input[:2]:
                p = producer.get(i)
                assert p is None or p.op_type not in ("DequantizeLinear", "QuantizeLinear"), (n.name, i)
    layers = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm") and in_network_scope(n.name)]
    quantized = [n for n in layers if (producer.get(n.input[1]) or n).op_type == "DequantizeLinear"]
    predictors = [n for n in layers if in_predictor_scope(n.name)]
    assert len(quantized) >= 60 and predictors  # backbone, FPN, RPN conv, box and mask heads
    assert not [n.name for n in predictors if n in quantized]  # the predictors feed the decoding: fp32
    assert all(n not in quantized for n in layers if not in_network_scope(n.name))


def test_bad_calibration_folder_is_a_user_error(builds: Dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app
    from rcnn_deploy.export.ort_cpu import build_cpu_export

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="none of the 1 calibration images could be read"):
        build_cpu_export(builds["onnx"], tmp_path / "out", "int8", tmp_path / "junk")
    with pytest.raises(UserError, match="--calib-input"):
        build_cpu_export(builds["onnx"], tmp_path / "out", "int8", tmp_path / "missing")
    with pytest.raises(UserError, match="int8 needs calibration images"):
        build_cpu_export(builds["onnx"], tmp_path / "out", "int8", None)
    assert not (tmp_path / "out").exists()  # nothing written
    r = CliRunner().invoke(
        app,
        ["build", str(builds["onnx"]), "--target", "onnxruntime", "-o", str(tmp_path / "out"), "--precision", "int8"]
        + ["--calib-input", str(tmp_path / "empty-or-missing")],
        terminal_width=200,
    )
    assert r.exit_code == 2 and "error:" in r.output and "--calib-input" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(
        app, ["build", str(builds["fp32"] / "contract.json"), "--target", "onnxruntime", "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "error:" in r.output


def test_session_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from rcnn_deploy.backends.onnxruntime import physical_cores, session_options

    assert 1 <= physical_cores() <= (len(__import__("os").sched_getaffinity(0)))
    assert session_options(ort, 3).intra_op_num_threads == 3
    monkeypatch.setenv("RCNN_DEPLOY_ORT_THREADS", "1")
    assert session_options(ort).intra_op_num_threads == 1
    monkeypatch.setenv("RCNN_DEPLOY_ORT_THREADS", "two")
    with pytest.raises(UserError, match="RCNN_DEPLOY_ORT_THREADS"):
        session_options(ort)


def test_faster_rcnn_cpu_graph_gives_the_exports_outputs(tv_faster_model, tmp_path: Path) -> None:
    """No mask head: only the box ROIAlign is rewritten; outputs equal the export's (batch of 2, random weights
    with confident scores)."""
    from rcnn_deploy.contract import Contract
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.export.ort_cpu import build_cpu_export

    model, sd = tv_faster_model
    model.load_state_dict(sd)
    c = export_onnx(model, tmp_path / "export", height=SIZE, width=SIZE, batch=2, graph="fused", nms="onnx")
    built = build_cpu_export(tmp_path / "export" / c.graphs[0].file, tmp_path / "cpu", "fp32")
    rewrite = built.notes["cpu"]["rewrite"]
    assert rewrite["roi_align_pools"] == 1 and rewrite["mask_head_on_valid_only"] is False
    ref = _session(tmp_path / "export" / c.graphs[0].file)
    cpu = _session(tmp_path / "cpu" / Contract.load(tmp_path / "cpu").graphs[0].file)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, SIZE, SIZE)).astype(np.float32)
    a, b = ref.run(None, {"images": x}), cpu.run(None, {"images": x})
    assert int(a[0].sum()) > 0
    for o, u, v in zip(ref.get_outputs(), a, b):
        np.testing.assert_allclose(v, u, rtol=0, atol=1e-5, err_msg=o.name)


def test_calibration_feeds_the_graphs_fixed_batch() -> None:
    """A graph exported for a fixed batch of 2 is calibrated with batches of 2 (it rejects one image): every image
    seen, the last batch filled up with the first images; a dynamic batch gets one image per call."""
    from onnx import TensorProto, helper

    from rcnn_deploy.export.ort_cpu import _Reader, graph_batch

    def model(dim0: object) -> object:
        x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [dim0, 3, 8, 8])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [dim0, 3, 8, 8])
        return helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", [x], [y]))

    assert graph_batch(model(2)) == 2 and graph_batch(model("batch")) == 1 and graph_batch(model(None)) == 1
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 8, 8), np.uint8)
    seen = []
    reader = _Reader(images, np.dtype(np.float32), seen.append, batch=2)
    firsts = []
    while (feed := reader.get_next()) is not None:
        assert feed["images"].shape == (2, 3, 8, 8) and feed["images"].dtype == np.float32
        firsts.append(feed["images"][:, 0, 0, 0].tolist())
    assert firsts == [[0, 1], [2, 3], [4, 0]] and seen == [2, 4, 5]
    reader.rewind()
    assert reader.get_next()["images"].shape == (2, 3, 8, 8)
    one = _Reader(images, np.dtype(np.uint8), None)
    assert [one.get_next()["images"].shape for _ in range(5)] == [(1, 3, 8, 8)] * 5 and one.get_next() is None
