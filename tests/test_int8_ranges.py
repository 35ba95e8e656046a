"""One calibration serves every int8 engine of a model and size (TensorRT 8.6/10): the split backbone's
calibration cache is applied by layer name to the fused graphs. Parsed here with TensorRT-RTX's ONNX parser,
which names layers after their ONNX nodes as TensorRT 8.6's does, and checked against a calibration cache that
TensorRT 8.6 wrote on the GPU machine (tests/data). Setting the ranges needs TensorRT 8.6/10, whose run is
benchmarks/results_table.py on the GPU machine (run 9 built the fused int8 engines that way, with 260 ranges:
conv1's input had none then)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from rcnn_deploy.backends.tensorrt.calibrator import (  # noqa: E402
    apply_ranges,
    layer_table,
    map_ranges,
    read_calibration_cache,
    scope_prefix,
)
from rcnn_deploy.contract import Contract  # noqa: E402
from rcnn_deploy.export import export_onnx  # noqa: E402
from rcnn_deploy.precision_rule import in_network_scope  # noqa: E402


def _write_cache(path, ranges):
    lines = ["TRT-8600-EntropyCalibration2"]
    lines += [f"{k}: {struct.pack('!f', v / 127.0).hex()}" for k, v in ranges.items()]
    path.write_text("\n".join(lines) + "\n")


def test_read_calibration_cache_roundtrip_and_errors(tmp_path):
    p = tmp_path / "c.cache"
    conv, unnamed = "/backbone/body/conv1/Conv_output_0", "(Unnamed Layer* 7) [Shuffle]_output"
    _write_cache(p, {"images": 255.0, conv: 3.5, unnamed: 1.0})
    r = read_calibration_cache(str(p))
    assert r.keys() == {"images", conv, unnamed}
    assert r["images"] == pytest.approx(255.0, rel=1e-6) and r[conv] == pytest.approx(3.5)
    (tmp_path / "bad").write_text("not a cache\n")
    with pytest.raises(ValueError, match="not a TensorRT calibration cache"):
        read_calibration_cache(str(tmp_path / "bad"))
    (tmp_path / "bad2").write_text("TRT-8600-EntropyCalibration2\nimages: zz\n")
    with pytest.raises(ValueError, match="line 2"):
        read_calibration_cache(str(tmp_path / "bad2"))


@pytest.fixture(scope="module")
def networks(tv_mask_model, tmp_path_factory):
    """(split backbone, fused) networks as TensorRT-RTX parses them."""
    rtx = pytest.importorskip("tensorrt_rtx")
    model, _ = tv_mask_model
    out = []
    for graph, kw, role in (("split", {}, "backbone"), ("fused", {"nms": "tensor"}, "fused")):
        d = tmp_path_factory.mktemp(graph)
        export_onnx(model, d, height=256, width=256, batch="1:2", graph=graph, **kw)
        logger = rtx.Logger(rtx.Logger.ERROR)
        builder = rtx.Builder(logger)
        net = builder.create_network(0)
        parser = rtx.OnnxParser(net, logger)
        assert parser.parse_from_file(str(d / Contract.load(d).graph_for(role).file))
        out.append((builder, parser, net))  # the builder and parser own the network: keep them alive
    return rtx, out


@pytest.mark.full
def test_backbone_ranges_map_onto_the_fused_graph(networks):
    rtx, ((_, _, src_net), (_, _, dst_net)) = networks
    src, dst = layer_table(rtx, src_net), layer_table(rtx, dst_net)
    prefix = scope_prefix(list(src), list(dst))
    assert prefix == "/net"
    # a cache as the backbone's calibration writes it: every tensor, network and not
    ranges = {t: float(i + 1) for i, t in enumerate(t for layer in src.values() for t in layer.outputs if t)}
    mapped = map_ranges(src, dst, ranges, prefix)
    producer = {t: name for name, layer in dst.items() for t in layer.outputs if t}
    # every convolution of the backbone, FPN and RPN head gets its own range, under the fused graph's scope
    convs = [name for name in src if name.endswith("/Conv") and in_network_scope(name)]
    assert len(convs) > 60
    for name in convs:
        for s, t in zip(src[name].outputs, dst[prefix + name].outputs):
            assert mapped[t] == ranges[s]
    # outside the network scopes only what enters the backbone, the normalised image (conv1's input, with the
    # source's range): the rest of the glue has no int8 range
    outside = [t for t in mapped if not in_network_scope(producer[t])]
    assert outside == [dst[prefix + "/backbone/body/conv1/Conv"].input_names[0]]
    assert mapped[outside[0]] == ranges[src["/backbone/body/conv1/Conv"].input_names[0]]
    assert not [t for t in mapped if "box_head" in producer[t] or "mask_head" in producer[t]]


REAL_CACHE = Path(__file__).parent / "data" / "trt86_backbone_calib_384.cache"


@pytest.mark.full
def test_tensorrt86_cache_of_the_backbone_maps_onto_the_fused_graph(networks):
    """The calibration cache TensorRT 8.6 wrote on the H200 (results_table_run8.json: the checkpoint's split
    backbone at 384², 64 images): its tensor names are those of this project's split export, and every
    convolution's range reaches the fused graph (the tensor names do not depend on the input size)."""
    rtx, ((_, _, src_net), (_, _, dst_net)) = networks
    src, dst = layer_table(rtx, src_net), layer_table(rtx, dst_net)
    cache = read_calibration_cache(str(REAL_CACHE))
    assert len(cache) == 400 and cache["images"] == pytest.approx(255.0, rel=1e-3)
    prefix = scope_prefix(list(src), list(dst))
    mapped = map_ranges(src, dst, cache, prefix)
    convs = [name for name in src if name.endswith("/Conv") and in_network_scope(name)]
    assert len(convs) == 76
    for name in convs:
        s, t = src[name].outputs[0], dst[prefix + name].outputs[0]
        assert s in cache, f"TensorRT 8.6 wrote no range for {s}"
        assert mapped[t] == cache[s] > 0
    # and the normalised image, conv1's input ("/Div_1_output_0" in the split export)
    assert mapped["/net/Div_1_output_0"] == cache["/Div_1_output_0"] > 0
    assert len(mapped) == 261


@pytest.mark.full
def test_scope_prefix_refuses_another_model(networks):
    rtx, ((_, _, src_net), _) = networks
    src = layer_table(rtx, src_net)
    with pytest.raises(ValueError, match="same model"):
        scope_prefix(list(src), ["/other/Conv", "/x/y/Relu"])


def test_apply_ranges_sets_float_tensors_only():
    class DataType:
        FLOAT, INT32 = "float", "int32"

    class Mod:
        pass

    Mod.DataType = DataType

    class Tensor:
        def __init__(self, name, dtype):
            self.name, self.dtype, self.range = name, dtype, None

        def set_dynamic_range(self, lo, hi):
            self.range = (lo, hi)

    class Layer:
        def __init__(self, *outs):
            self.outs = outs
            self.num_outputs = len(outs)

        def get_output(self, j):
            return self.outs[j]

    a, b, c = Tensor("a", "float"), Tensor("shape", "int32"), Tensor("c", "float")

    class Net:
        layers = [Layer(a, b), Layer(c)]
        num_layers = 2

        def get_layer(self, i):
            return self.layers[i]

    assert apply_ranges(Mod, Net(), {"a": 2.0, "shape": 5.0, "zero": 0.0}) == 1
    assert a.range == (-2.0, 2.0) and b.range is None and c.range is None


@pytest.mark.full
def test_build_cli_calib_graph_errors(tv_mask_model, tmp_path):
    """--calib-graph is the builder-flag int8 of TensorRT 8.6/10: a strongly typed builder refuses it (before
    anything is written)."""
    pytest.importorskip("tensorrt_rtx")
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    model, _ = tv_mask_model
    export_onnx(model, tmp_path / "s", height=256, width=256, batch="1:2", graph="split")
    backbone = tmp_path / "s" / "torchvision-maskrcnn_backbone.onnx"
    args = ["build", str(backbone), "-o", str(tmp_path / "e.engine"), "--precision", "int8", "--batch", "1:2"]
    res = CliRunner().invoke(app, [*args, "--calib-graph", str(backbone), "--calib-cache", str(tmp_path / "c")])
    assert res.exit_code == 2 and "strongly typed" in res.output, res.output
    assert not (tmp_path / "e.engine").exists()
