"""Graph surgery after tracing: placeholder nodes -> their ONNX formulation.

``rcnn_deploy::FixpointKeep(S, valid)`` (from ``glue.formulations``) becomes an ONNX ``Loop`` whose body does
``keep <- valid * (S @ keep < 0.5)`` and whose condition is "keep changed"; the trip count is bounded by
the number of candidates (the exact worst case), the usual count is the longest suppression chain.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

PLACEHOLDER_DOMAIN = "rcnn_deploy"


def _loop_body(name: str, suppress: str, valid: str) -> onnx.GraphProto:
    p = f"{name}/body/"
    nodes = [
        helper.make_node("Unsqueeze", [p + "keep_in", p + "axes_last"], [p + "keep_col"]),
        helper.make_node("MatMul", [suppress, p + "keep_col"], [p + "supp_col"]),
        helper.make_node("Squeeze", [p + "supp_col", p + "axes_last"], [p + "supp"]),
        helper.make_node("Less", [p + "supp", p + "half"], [p + "free"]),
        helper.make_node("Cast", [p + "free"], [p + "free_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [valid, p + "free_f"], [p + "keep_out"]),
        helper.make_node("Sub", [p + "keep_out", p + "keep_in"], [p + "delta"]),
        helper.make_node("Abs", [p + "delta"], [p + "absdelta"]),
        helper.make_node("ReduceMax", [p + "absdelta"], [p + "change"], keepdims=0),
        helper.make_node("Greater", [p + "change", p + "half"], [p + "cond_out"]),
    ]
    inits = [
        helper.make_tensor(p + "axes_last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor(p + "half", TensorProto.FLOAT, [], [0.5]),
    ]
    return helper.make_graph(
        nodes,
        name + "_body",
        [
            helper.make_tensor_value_info(p + "iter", TensorProto.INT64, []),
            helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info(p + "keep_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info(p + "keep_out", TensorProto.FLOAT, None),
        ],
        initializer=inits,
    )


def expand_placeholders(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every placeholder node of :data:`PLACEHOLDER_DOMAIN` with its standard-ONNX formulation."""
    graph = model.graph
    new_nodes = []
    for i, node in enumerate(graph.node):
        if node.domain != PLACEHOLDER_DOMAIN:
            new_nodes.append(node)
            continue
        if node.op_type != "FixpointKeep":
            raise ValueError(f"unknown placeholder {node.domain}::{node.op_type}")
        suppress, valid = node.input
        name = node.name or f"fixpoint_{i}"
        trip, cond = f"{name}/trip", f"{name}/cond"
        bound = next(a.i for a in node.attribute if a.name == "max_iterations")
        new_nodes += [
            # a constant trip-count bound (TensorRT needs a build-time scalar): the number of candidates + 1
            helper.make_node("Constant", [], [trip], value=helper.make_tensor("", TensorProto.INT64, [], [bound])),
            helper.make_node("Constant", [], [cond], value=helper.make_tensor("", TensorProto.BOOL, [], [True])),
            helper.make_node(
                "Loop", [trip, cond, valid], [node.output[0]], name=name, body=_loop_body(name, suppress, valid)
            ),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    keep = [op for op in model.opset_import if op.domain != PLACEHOLDER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model
