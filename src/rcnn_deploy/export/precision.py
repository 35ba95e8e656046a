"""Mixed precision by rule, for strongly typed builders (TensorRT 11, TensorRT-RTX): ``to_fp16`` turns the
network layers (backbone, FPN, RPN head, box and mask heads) into fp16 and keeps everything else, the glue,
in fp32: anchor decoding (``exp``), IoU and NMS, level assignment, ROIAlign sampling coordinates, softmax
and mask selection. Seed 004 saw NaNs with a whole-graph fp16 conversion; the glue is where the large
intermediate values (box coordinates, areas, exp of deltas) live, so it stays fp32 by rule, not by hand.

Graph inputs and outputs keep their dtypes (fp32), so the I/O contract does not change.
"""

from __future__ import annotations

from typing import Dict, List, Set

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..precision_rule import in_network_scope

FP16_OPS = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Relu",
    "MaxPool",
    "Add",
    "Mul",
    "Sub",
    "Resize",
    "Flatten",
    "Reshape",
    "Transpose",
    "Concat",
    "Identity",
}
# only these inputs carry data (the rest are shapes, scales, ...)
DATA_INPUTS = {"Resize": (0,), "Reshape": (0,)}


WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm"}
# parameter names are the model's own (module paths), so they identify layers whatever the exporter names nodes
NETWORK_PARAMS = ("backbone.", "rpn.head.", "roi_heads.")


def is_network_node(node: onnx.NodeProto) -> bool:
    """A layer of the network (runs in fp16): a conv / linear layer holding one of the model's parameters, or
    an elementwise / shape op inside a network module's scope."""
    if node.op_type in WEIGHT_OPS and len(node.input) > 1:
        w = node.input[1]
        return any(w.startswith(p) or w.startswith("net." + p) for p in NETWORK_PARAMS)
    return node.op_type in FP16_OPS and in_network_scope(node.name)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with network layers in fp16 and Casts at the fp32 boundaries."""
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types: Dict[str, int] = {}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        types[v.name] = v.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for name, t in inits.items():
        types[name] = t.data_type
    nodes = list(g.node)
    half = {i for i, n in enumerate(nodes) if is_network_node(n)}  # indices: protobuf wrappers have no stable id
    fp32_users: Dict[str, int] = {}
    for i, n in enumerate(nodes):
        if i not in half:
            for x in n.input:
                fp32_users[x] = fp32_users.get(x, 0) + 1
    graph_outputs = {o.name for o in g.output}
    produced_half: Set[str] = set()
    for i in half:
        produced_half.update(o for o in nodes[i].output if types.get(o) == TensorProto.FLOAT)

    new_nodes: List[onnx.NodeProto] = []
    done: Set[str] = set()
    new_inits: List[onnx.TensorProto] = []
    for i, n in enumerate(nodes):
        if i not in half:
            new_nodes.append(n)
            continue
        for k in DATA_INPUTS.get(n.op_type, range(len(n.input))):
            x = n.input[k]
            if not x or types.get(x) != TensorProto.FLOAT:
                continue
            key = x + "__fp16"
            n.input[k] = key
            if x in produced_half or key in done:
                continue
            done.add(key)
            if x in inits:
                new_inits.append(numpy_helper.from_array(numpy_helper.to_array(inits[x]).astype(np.float16), key))
            else:
                new_nodes.append(helper.make_node("Cast", [x], [key], to=TensorProto.FLOAT16, name=key + "/Cast"))
        for j, y in enumerate(n.output):
            if y in produced_half:
                n.output[j] = y + "__fp16"
                if fp32_users.get(y) or y in graph_outputs:  # an fp32 view for the glue / graph outputs
                    new_nodes.append(
                        helper.make_node("Cast", [y + "__fp16"], [y], to=TensorProto.FLOAT, name=y + "/Cast")
                    )
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    del g.value_info[:]
    from .sanitize import sanitize

    return sanitize(model)
