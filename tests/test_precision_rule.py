"""The fp32-glue rule as the TensorRT 8.6/10 builder applies it (``keep_glue_fp32``), on a stand-in network:
the real one runs on the GPU machine (benchmarks/results_table.py); these check which layers the rule pins."""

from __future__ import annotations

import types

from rcnn_deploy.backends.tensorrt.builder import keep_glue_fp32


class _Tensor:
    def __init__(self, dtype):
        self.dtype = dtype


class _Layer:
    def __init__(self, name, kind, *out_dtypes):
        self.name, self.type = name, kind
        self.outs = [_Tensor(d) for d in out_dtypes]
        self.num_outputs = len(self.outs)
        self.precision = None
        self.out_types = {}

    def get_output(self, j):
        return self.outs[j]

    def set_output_type(self, j, dtype):
        self.out_types[j] = dtype


class _Network:
    def __init__(self, layers):
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i):
        return self.layers[i]


class _Config:
    def __init__(self):
        self.flags = set()

    def set_flag(self, f):
        self.flags.add(f)


MOD = types.SimpleNamespace(
    LayerType=types.SimpleNamespace(
        ELEMENTWISE="elementwise", CONVOLUTION="convolution", PLUGIN_V2="plugin", SHUFFLE="shuffle", UNARY="unary"
    ),
    DataType=types.SimpleNamespace(FLOAT="float", HALF="half", INT32="int32"),
    BuilderFlag=types.SimpleNamespace(PREFER_PRECISION_CONSTRAINTS="prefer"),
)


def test_glue_rule_pins_glue_arithmetic_and_plugins_not_the_network():
    F, INT = "float", "int32"
    nms = _Layer("/net/EfficientNMS_TRT_1", "plugin", INT, F, F, INT)
    roi = _Layer("/net/PyramidROIAlign_TRT", "plugin", F)
    decode = _Layer("/net/Mul_12", "elementwise", F)
    exp = _Layer("/net/Exp_1", "unary", F)
    conv = _Layer("/net/backbone/body/conv1/Conv", "convolution", F)
    bn = _Layer("/net/backbone/body/bn1/Mul", "elementwise", F)
    head_cls = _Layer("/net/box_predictor/cls_score/Gemm", "elementwise", F)
    shape = _Layer("/net/Mul_3", "elementwise", INT)  # integer arithmetic: no precision to pin
    move = _Layer("/net/Reshape_4", "shuffle", F)  # data movement carries its input's type
    config = _Config()
    layers = [nms, roi, decode, exp, conv, bn, head_cls, shape, move]
    kept = keep_glue_fp32(MOD, _Network(layers), config)
    pinned = [x for x in layers if x.precision == "float"]
    assert pinned == [nms, roi, decode, exp] and kept == 4
    assert nms.out_types == {1: "float", 2: "float"}  # boxes and scores fp32; count and classes stay int32
    assert config.flags == {"prefer"}
    # the optional predictor rule adds the heads' last layers
    layers2 = [
        _Layer("/net/box_predictor/cls_score/Gemm", "elementwise", F),
        _Layer("/net/head/cls_logits_3/Conv", "convolution", F),
    ]
    assert keep_glue_fp32(MOD, _Network(layers2), _Config(), predictors=True) == 2
