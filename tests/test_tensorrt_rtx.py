"""TensorRT-RTX builds (CPU-only): every plugin-free graph parses and builds, fp32 and strongly typed fp16.

TensorRT-RTX cannot deserialize or run engines without a supported GPU, so these tests stop at the serialized
engine and its sidecar; running engines is covered by the GPU scripts (benchmarks/).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("tensorrt_rtx")

from pathlib import Path  # noqa: E402

from rcnn_deploy.backends.tensorrt.builder import BuildConfig, build_engine  # noqa: E402
from rcnn_deploy.backends.tensorrt.compat import load_trt  # noqa: E402
from rcnn_deploy.contract import Contract  # noqa: E402
from rcnn_deploy.export import export_onnx  # noqa: E402
from rcnn_deploy.export.precision import to_fp16  # noqa: E402

pytestmark = [pytest.mark.rtx, pytest.mark.full]


@pytest.fixture(scope="module")
def rtx():
    return load_trt("tensorrt_rtx")


@pytest.fixture(scope="module")
def graphs(tv_mask_model, tmp_path_factory):
    model, _ = tv_mask_model
    split = tmp_path_factory.mktemp("rtx_split")
    export_onnx(model, split, height=256, width=256, batch="1:4", graph="split")
    fused = tmp_path_factory.mktemp("rtx_fused")
    export_onnx(model, fused, height=256, width=256, batch="1:2", graph="fused", nms="tensor")
    out = []
    for d in (split, fused):
        c = Contract.load(d)
        out += [(d / g.file, g.role) for g in c.graphs]
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_builds_every_plugin_free_graph(rtx, graphs, precision, tmp_path):
    for path, role in graphs:
        src = path
        if precision == "fp16":
            src = tmp_path / (path.stem + "_fp16.onnx")
            onnx.save(to_fp16(onnx.load(path)), src)
        engine = tmp_path / f"{role}_{precision}.engine"
        side = build_engine(src, engine, BuildConfig(precision=precision, batch=(1, 2, 4), rois=(1, 64, 512)), rtx)
        assert engine.stat().st_size > 1_000_000, role  # weights are in the engine
        meta = json.loads((tmp_path / f"{role}_{precision}.engine.json").read_text())
        assert meta == json.loads(json.dumps(side)) and meta["trt"] == "tensorrt_rtx"
        assert [i["name"] for i in meta["inputs"]][0] in ("images", "box_features", "mask_features")


def test_rtx_refuses_implicit_int8(rtx, graphs, tmp_path):
    path, _ = graphs[0]
    with pytest.raises(ValueError, match="strongly typed"):
        build_engine(path, tmp_path / "x.engine", BuildConfig(precision="int8"), rtx)


def test_plugin_graph_does_not_parse_in_rtx(rtx, tv_mask_model, tmp_path):
    """Documented limitation: the plugin variant is for TensorRT 8.6-10 only."""
    model, _ = tv_mask_model
    export_onnx(model, tmp_path, height=256, width=256, graph="fused", nms="plugin")
    c = Contract.load(tmp_path)
    with pytest.raises(RuntimeError, match="could not parse|failed to build"):
        build_engine(tmp_path / c.graph_for("fused").file, tmp_path / "p.engine", BuildConfig(), rtx)


def test_build_cli_with_rtx(tv_faster_model, tmp_path):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    model, _ = tv_faster_model
    export_onnx(model, tmp_path, height=256, width=256, batch="1:2", graph="split")
    head = tmp_path / "torchvision-fasterrcnn_box_head.onnx"
    runner = CliRunner()
    res = runner.invoke(app, ["build", str(head), "-o", str(tmp_path / "h.engine"), "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "h.engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["onnx"].endswith("_fp16.onnx")  # strongly typed: an fp16 graph
    res = runner.invoke(app, ["build", str(head), "-o", str(tmp_path / "i.engine"), "--precision", "int8"])
    assert res.exit_code == 2 and "strongly typed" in res.output and "[quant]" in res.output
    res = runner.invoke(app, ["build", str(head), "-o", str(tmp_path / "j.engine"), "--batch", "1:8"])
    assert res.exit_code == 2 and "outside the exported range 1:2" in res.output
    assert not (tmp_path / "i.engine").exists() and not (tmp_path / "j.engine").exists()


def test_build_cli_explicit_int8_with_rtx(rtx, tv_mask_model, tmp_path):
    """Strongly typed int8: the backbone is quantized (Q/DQ by nvidia-modelopt, calibrated on images through the
    model's preprocessing), only in network scopes, and builds in TensorRT-RTX; the quantized graph named by
    --calib-cache is reused by the next build without calibration images."""
    pytest.importorskip("modelopt.onnx.quantization")
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app
    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.precision_rule import in_network_scope

    model, _ = tv_mask_model
    export_onnx(model, tmp_path / "x", height=256, width=256, batch="1:2", graph="split")
    generate_synthetic_coco(tmp_path / "calib", 3, 200, 240, seed=1)
    backbone = tmp_path / "x" / "torchvision-maskrcnn_backbone.onnx"
    qdq = tmp_path / "x" / "backbone_int8_qdq.onnx"  # beside the export's contract.json
    args = ["build", str(backbone), "--precision", "int8", "--batch", "1:2", "--calib-cache", str(qdq)]
    runner = CliRunner()
    images = str(tmp_path / "calib" / "images")
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "a.engine"), "--calib-input", images])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "a.engine.json").read_text())
    assert meta["precision"] == "int8" and meta["int8"] == "explicit (Q/DQ)" and meta["trt"] == "tensorrt_rtx"
    q = onnx.load(qdq)
    quantized = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) > 100  # every conv's weights and inputs
    dq_out = {o: n for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert all(n.input[1] in dq_out for n in convs)  # int8 weights on every convolution
    assert all(in_network_scope(n.name) for n in q.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "b.engine")])  # no --calib-input: the graph is reused
    assert res.exit_code == 0 and "reusing quantized graph" in res.output, res.output
    # a Q/DQ graph passed directly is built as it is (no calibration input, no second quantization)
    res = runner.invoke(app, ["build", str(qdq), "--precision", "int8", "--batch", "1:2", "-o", str(tmp_path / "d.e")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "d.e.json").read_text())["int8"] == "explicit (Q/DQ)"
    with pytest.raises(ValueError, match="quantized"):  # a Q/DQ graph is int8 by construction
        build_engine(qdq, tmp_path / "c.engine", BuildConfig(precision="fp32", batch=(1, 1, 2)), rtx)


def test_build_options_opt_level_and_tactic_sources(rtx, graphs, tmp_path):
    path, role = next((p, r) for p, r in graphs if r == "box_head")
    cfg = BuildConfig(batch=(1, 2, 4), rois=(1, 64, 512), opt_level=1, tactic_sources=["EDGE_MASK_CONVOLUTIONS"])
    side = build_engine(path, tmp_path / "h.engine", cfg, rtx)
    used = side["build_config"]
    assert used["opt_level"] == 1 and used["tactic_sources"] == ["EDGE_MASK_CONVOLUTIONS"]
    with pytest.raises(ValueError, match="no tactic source"):
        build_engine(path, tmp_path / "x.engine", BuildConfig(tactic_sources=["CUDNN_TYPO"]), rtx)
    with pytest.raises(ValueError, match="0-5"):
        build_engine(path, tmp_path / "y.engine", BuildConfig(opt_level=7), rtx)
    assert not (tmp_path / "x.engine").exists() and not (tmp_path / "y.engine").exists()


def test_timing_cache_is_merged_not_overwritten(rtx, graphs, tmp_path):
    """Two builds sharing one timing-cache file: the second loads it, merges (ITimingCache.combine) under the
    lock and leaves a file the builder can read again. TensorRT-RTX's timing-cache operations are no-ops (it
    warns so), so this checks the calls and the file handling; that entries survive is TensorRT's contract,
    not checked here."""
    cache = tmp_path / "timing.cache"
    heads = [(p, r) for p, r in graphs if r in ("box_head", "mask_head")]
    for path, role in heads:
        build_engine(path, tmp_path / f"{role}.engine", BuildConfig(rois=(1, 64, 512), timing_cache=str(cache)), rtx)
        assert cache.stat().st_size > 0
    builder = rtx.module.Builder(rtx.module.Logger())
    assert builder.create_builder_config().create_timing_cache(cache.read_bytes()) is not None
    assert (tmp_path / "timing.cache.lock").is_file()


def _linked_copy(src, dst):  # type: ignore[no-untyped-def]
    import os
    import shutil

    dst.mkdir(parents=True)
    for p in src.iterdir():
        (os.link if p.suffix == ".onnx" else shutil.copy2)(p, dst / p.name)
    return dst


def test_sidecar_checksums_and_the_runtime_checks_before_deserializing(rtx, graphs, tmp_path):
    """A real engine's sidecar records its sha256 and its graph's; the runtime's pre-deserialization checks
    pass on it and name each mismatch with the rebuild command (the compute-capability check is exercised with
    a stand-in 'tensorrt' flavour: TensorRT-RTX engines are not tied to one GPU)."""
    import hashlib

    from rcnn_deploy.backends.tensorrt.builder import read_sidecar
    from rcnn_deploy.backends.tensorrt.compat import TRT
    from rcnn_deploy.backends.tensorrt.runtime import check_engine
    from rcnn_deploy.errors import UserError

    path, _ = next((p, r) for p, r in graphs if r == "box_head")
    d = _linked_copy(path.parent, tmp_path / "export")
    engine = d / "box_head.engine"
    build_engine(d / path.name, engine, BuildConfig(batch=(1, 2, 4), rois=(1, 64, 512)), rtx)
    meta = read_sidecar(engine)
    g = Contract.load(d).graph_for("box_head")
    assert meta["sidecar_version"] == 2 and meta["engine_size"] == engine.stat().st_size
    assert meta["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert meta["onnx_sha256"] == g.sha256
    assert check_engine(engine, meta, rtx, lambda: None) == engine.read_bytes()
    rebuild = f"rcnn-deploy build {d / g.file} -o {engine} --precision fp32 --batch 1:2:4"
    with pytest.raises(UserError, match="was built with tensorrt_rtx 8.6.1") as info:
        check_engine(engine, dict(meta, trt_version="8.6.1"), rtx, lambda: None)
    assert rebuild in str(info.value)
    trt = TRT(rtx.module, "tensorrt", meta["trt_version"])
    built_on = dict(meta, trt="tensorrt", compute_capability="8.0")
    check_engine(engine, built_on, trt, lambda: "8.0")
    check_engine(engine, built_on, trt, lambda: None)  # the runtime cannot tell: not refused
    with pytest.raises(UserError, match="compute capability 8.0 .*this GPU's is 9.0"):
        check_engine(engine, built_on, trt, lambda: "9.0")
    other = dict(meta, inputs=[dict(meta["inputs"][0], shape=[-1, 256, 14, 14])])
    with pytest.raises(UserError, match=r"\[-1, 256, 14, 14\] .*graphs\[1\].inputs\[0\].shape.*another export"):
        check_engine(engine, other, rtx, lambda: None)
    with pytest.raises(UserError, match="different torchvision-maskrcnn_box_head.onnx"):
        check_engine(engine, dict(meta, onnx_sha256="0" * 64), rtx, lambda: None)
    raw = bytearray(engine.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    engine.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"sha256 .* differs from its sidecar's"):
        check_engine(engine, meta, rtx, lambda: None)
    Path(str(engine) + ".json").write_text("{")
    with pytest.raises(UserError, match="not a readable JSON sidecar"):
        read_sidecar(engine)


def test_build_refuses_a_graph_that_is_not_the_exported_one(rtx, graphs, tmp_path):
    from rcnn_deploy.errors import UserError

    path, _ = next((p, r) for p, r in graphs if r == "mask_head")
    d = _linked_copy(path.parent, tmp_path / "export")
    target = d / path.name
    data = bytearray(target.read_bytes())
    target.unlink()
    data[-100] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        build_engine(target, tmp_path / "m.engine", BuildConfig(rois=(1, 64, 512)), rtx)
    assert not (tmp_path / "m.engine").exists()
