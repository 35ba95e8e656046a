"""ONNX Runtime on the CPU: the fused graph rewritten for CPU execution, and int8 by static Q/DQ quantisation.

The fused ``--nms onnx`` graph is written for accelerators: static shapes everywhere, so its multi-level
ROIAlign pools *every* ROI from *every* FPN level and keeps one with ``Where``, and the mask head runs on all
``detections_per_img`` slots, padding included. On a GPU that costs little; on a CPU it is most of the time
(at 384² with the project's checkpoint: four ROIAlign passes over 1000 proposals and a 100-ROI mask head, about
60 % of the run). :func:`cpu_graph` rewrites those two places with data-dependent shapes, which ONNX Runtime
handles natively:

* each multi-level ROIAlign pools each ROI once, from its own level: per level ``NonZero(level == l)``,
  ``Gather`` of those ROIs, one ``RoiAlign``; the levels' rows concatenated, and one ``Gather`` puts them back in
  their order (exactly the values the ``Where`` merge selected, so the outputs do not change). For the box head
  that ``Gather`` comes after its first layer (reshapes and the fc6 ``Gemm`` treat each row alike), so it moves
  ``[1000, 1024]`` values rather than ``[1000, 256 * 7 * 7]`` (50 MB at 384²);
* the mask branch pools and runs the mask head on the valid detection slots only (``NonZero`` of
  ``slot < num_detections``) and scatters the mask logits back into the padded ``[B * K, C, M, M]`` rows
  (padded slots were multiplied by 0 at the end anyway), so the mask head costs what torchvision's does.

:func:`quantize_cpu` then quantises the network layers (backbone, FPN, RPN head, box and mask heads: their
``Conv``, ``ConvTranspose`` and ``Gemm``) with ONNX Runtime's static quantisation in Q/DQ format, int8 weights
per output channel and uint8 activations (the u8s8 kernels that AVX512-VNNI / AVX-VNNI speed up), calibrated
on letterboxed images; the glue (box decoding, NMS, ROIAlign, TopK, the class-select gathers) stays fp32.

:func:`build_cpu_export` writes either graph as an export directory of its own (``contract.json`` format 2
with the new graph's size and sha256, written atomically like ``rcnn-deploy export``), so ``infer``,
``eval``, ``bench`` and ``Detector.load`` run it like any export (``rcnn-deploy build --target onnxruntime``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError

CPU_PRECISIONS = ("fp32", "int8")
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops that must stay fp32 in a CPU int8 graph (the glue); checked by tests and by quantize_cpu itself
GLUE_OP_TYPES = ("NonMaxSuppression", "RoiAlign", "TopK", "GatherElements", "ScatterND", "Softmax", "Exp", "Log")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


# ------------------------------------------------------------------------------------------ the rewrite
@dataclass
class _Pool:
    """One multi-level ROIAlign as the ``onnx`` lowering writes it: a RoiAlign per level, merged by Where."""

    rois: str  # [N, 4]
    batch_index: str  # [N] int64
    levels: str  # [N, 1, 1, 1] int64 (level index per row)
    per_level: List[Tuple[int, Any]]  # (level index, RoiAlign node)
    output: str  # the merged [N, C, S, S] tensor (the last Where's output)
    dead: List[Any] = field(default_factory=list)  # the RoiAlign / Where / Equal nodes the rewrite replaces

    @property
    def size(self) -> int:
        return int(next(a.i for a in self.per_level[0][1].attribute if a.name == "output_height"))


class _Names:
    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0

    def __call__(self, what: str) -> str:
        self.n += 1
        return f"{self.prefix}/{what}_{self.n}"


def _int_constant(graph: Any, name: str) -> Optional[int]:
    """The scalar value of an initializer or Constant node output ``name`` (None if it is neither)."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t)
            return int(a.reshape(-1)[0]) if a.size == 1 else None
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    v = numpy_helper.to_array(a.t)
                    return int(v.reshape(-1)[0]) if v.size == 1 else None
    return None


def _find_pools(graph: Any) -> List[_Pool]:
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, List[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pools: List[_Pool] = []
    by_rois: Dict[Tuple[str, str], List[Any]] = {}
    for n in graph.node:
        if n.op_type == "RoiAlign":
            by_rois.setdefault((n.input[1], n.input[2]), []).append(n)
    for (rois, bidx), aligns in by_rois.items():
        # the Where chain: Where(Equal(levels, l), RoiAlign_l, previous); level 0 is the innermost "else"
        first = [c for c in consumers.get(aligns[0].output[0], []) if c.op_type == "Where"]
        if len(aligns) == 1:
            pools.append(_Pool(rois, bidx, "", [(0, aligns[0])], aligns[0].output[0], [aligns[0]]))
            continue
        if len(first) != 1 or first[0].input[2] != aligns[0].output[0]:
            raise ValueError(f"unexpected multi-level ROIAlign pattern at {aligns[0].name}")
        per_level, dead, levels = [(0, aligns[0])], list(aligns), None
        where = first[0]
        while True:
            cond = producer.get(where.input[0])
            if cond is None or cond.op_type != "Equal":
                raise ValueError(f"unexpected ROIAlign level condition at {where.name}")
            lvl = _int_constant(graph, cond.input[1])
            pooled = producer.get(where.input[1])
            if lvl is None or pooled is None or pooled.op_type != "RoiAlign":
                raise ValueError(f"unexpected ROIAlign level merge at {where.name}")
            if levels is not None and cond.input[0] != levels:
                raise ValueError(f"ROIAlign levels from two tensors at {where.name}")
            levels = cond.input[0]
            per_level.append((lvl, pooled))
            dead += [where, cond]
            nxt = [
                c for c in consumers.get(where.output[0], []) if c.op_type == "Where" and c.input[2] == where.output[0]
            ]
            if not nxt:
                break
            where = nxt[0]
        if sorted(lv for lv, _ in per_level) != list(range(len(aligns))):
            raise ValueError(f"ROIAlign levels {[lv for lv, _ in per_level]} do not cover {len(aligns)} RoiAligns")
        pools.append(_Pool(rois, bidx, levels or "", per_level, where.output[0], dead))
    return pools


def _pool_nodes(helper: Any, name: _GraphNames, pool: _Pool, rows: Optional[str], out: str) -> List[Any]:
    """Nodes that compute ``out = [n, C, S, S]``: each row pooled once, from its own level. ``rows``: an
    int64 [n] index of the pool's rows to compute (None: all of them)."""
    nodes, stacked, inverse = _pool_nodes_by_level(helper, name, pool, rows, out)
    if inverse is not None:  # one Gather puts the rows back in their order
        nodes.append(helper.make_node("Gather", [stacked, inverse], [out], axis=0))
    return nodes


def _pool_nodes_by_level(
    helper: Any, name: _GraphNames, pool: _Pool, rows: Optional[str], out: str
) -> Tuple[List[Any], str, Optional[str]]:
    """:func:`_pool_nodes` without its last Gather: ``(nodes, stacked, inverse)``, where ``stacked`` holds the
    pooled rows in level order and ``Gather(stacked, inverse)`` (axis 0) is ``out``; a pool of one level writes
    ``out`` itself, in row order (``stacked == out``, ``inverse`` None)."""
    nodes: List[Any] = []
    rois, bidx, levels = pool.rois, pool.batch_index, name("levels")
    if pool.levels:
        nodes.append(helper.make_node("Reshape", [pool.levels, name.const("minus1")], [levels]))
    if rows is not None:
        g_rois, g_bidx = name("rois"), name("batch_index")
        nodes += [
            helper.make_node("Gather", [rois, rows], [g_rois], axis=0),
            helper.make_node("Gather", [bidx, rows], [g_bidx], axis=0),
        ]
        rois, bidx = g_rois, g_bidx
        if pool.levels:
            g_levels = name("levels")
            nodes.append(helper.make_node("Gather", [levels, rows], [g_levels], axis=0))
            levels = g_levels
    if not pool.levels:  # one level: no selection
        ra = pool.per_level[0][1]
        attrs = {a.name: helper.get_attribute_value(a) for a in ra.attribute}
        nodes.append(helper.make_node("RoiAlign", [ra.input[0], rois, bidx], [out], name=ra.name, **attrs))
        return nodes, out, None
    # pool each level's rows, concatenate in level order; a Gather by `inverse` puts the rows back in their order
    # (cheaper than scattering into a zero tensor per level: one copy of the pooled features, not one a level)
    sels, pooled_all = [], []
    for lvl, ra in sorted(pool.per_level, key=lambda x: x[0]):
        eq, nz, sel = name("is_level"), name("nonzero"), name("rows_of_level")
        sel_rois, sel_bidx, pooled = name("level_rois"), name("level_batch_index"), name("pooled")
        attrs = {a.name: helper.get_attribute_value(a) for a in ra.attribute}
        nodes += [
            helper.make_node("Equal", [levels, name.const(f"level_{lvl}")], [eq]),
            helper.make_node("NonZero", [eq], [nz]),
            helper.make_node("Reshape", [nz, name.const("minus1")], [sel]),
            helper.make_node("Gather", [rois, sel], [sel_rois], axis=0),
            helper.make_node("Gather", [bidx, sel], [sel_bidx], axis=0),
            helper.make_node("RoiAlign", [ra.input[0], sel_rois, sel_bidx], [pooled], name=ra.name, **attrs),
        ]
        sels.append(sel)
        pooled_all.append(pooled)
    perm, stacked, n, n_scalar, order, zeros, inverse = (
        name("level_order"),
        name("pooled_by_level"),
        name("rows"),
        name("rows_scalar"),
        name("arange"),
        name("inverse_zeros"),
        name("inverse_order"),
    )
    nodes += [
        helper.make_node("Concat", sels, [perm], axis=0),
        helper.make_node("Concat", pooled_all, [stacked], axis=0),
        helper.make_node("Shape", [perm], [n]),
        helper.make_node("Squeeze", [n, name.const("zero")], [n_scalar]),
        helper.make_node("Range", [name.const("scalar_0"), n_scalar, name.const("scalar_1")], [order]),
        helper.make_node("ConstantOfShape", [n], [zeros], value=name.zero_int()),
        helper.make_node("ScatterElements", [zeros, perm, order], [inverse], axis=0),  # inverse[perm[i]] = i
    ]
    return nodes, stacked, inverse


def _pool_channels(graph: Any, pool: _Pool) -> Optional[int]:
    """``C`` of a pool's ``[n, C, S, S]`` output: the output channels of the Conv that makes the first level's
    feature map (an FPN output), or None when that is not a Conv with its weight in the graph."""
    feature = pool.per_level[0][1].input[0]
    conv = next((n for n in graph.node if feature in n.output), None)
    if conv is None or conv.op_type != "Conv":
        return None
    dims = next((list(t.dims) for t in graph.initializer if t.name == conv.input[1]), None)
    return int(dims[0]) if dims else None


def _rows_to_gemm(graph: Any, pooled: str, values_per_row: int) -> Optional[Tuple[Any, Any]]:
    """Where the box head reads a pool's output ``pooled`` (``[n, C, S, S]``, ``values_per_row`` = C * S * S):
    ``(first, gemm)`` when only Reshapes and Flattens lead from it to one Gemm's input ``A`` (``first``: the node
    reading ``pooled``; Shape nodes beside them read the shapes only) and that Gemm takes ``values_per_row``
    values per row, so each row of ``A`` is one pooled row, in the same order (a reshape keeps the elements'
    order); else None. Every op from ``pooled`` to the Gemm's output then commutes with a reordering of the rows."""
    consumers: Dict[str, List[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weights = {t.name: list(t.dims) for t in graph.initializer}
    cur, first = pooled, None
    for _ in range(6):
        data = [c for c in consumers.get(cur, []) if c.op_type != "Shape"]
        if len(data) != 1 or data[0].input[0] != cur or any(o.name == cur for o in graph.output):
            return None
        node = data[0]
        if first is None:
            first = node
        if node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute if a.name in ("transA", "transB")}
            w = weights.get(node.input[1])
            if attrs.get("transA", 0) or w is None or len(w) != 2:
                return None
            k = w[1] if attrs.get("transB", 0) else w[0]
            return (first, node) if k == values_per_row else None
        if node.op_type not in ("Reshape", "Flatten"):
            return None
        if node.op_type == "Flatten" and any(a.name == "axis" and a.i != 1 for a in node.attribute):
            return None
        cur = node.output[0]
    return None


class _GraphNames(_Names):
    """Fresh tensor names plus the shared constants they need (collected as initializers)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.consts: Dict[str, np.ndarray] = {}

    def const(self, key: str) -> str:
        if key not in self.consts:
            if key == "minus1":
                v = np.array([-1], np.int64)
            elif key == "zero":
                v = np.array([0], np.int64)
            elif key == "one":
                v = np.array([1], np.int64)
            elif key.startswith("level_"):
                v = np.array(int(key[6:]), np.int64)
            elif key.startswith("chw_"):
                _, c, s = key.split("_")
                v = np.array([int(c), int(s), int(s)], np.int64)
            elif key.startswith("scalar_"):
                v = np.array(int(key[7:]), np.int64)
            elif key.startswith("int_"):
                v = np.array([int(key[4:])], np.int64)
            elif key.startswith("range_"):
                v = np.arange(int(key[6:]), dtype=np.int64).reshape(1, -1)
            else:  # pragma: no cover - a programming error
                raise KeyError(key)
            self.consts[key] = v
        return f"{self.prefix}/const_{key}"

    @staticmethod
    def zero_float() -> Any:
        from onnx import helper

        return helper.make_tensor("", 1, [1], [0.0])

    @staticmethod
    def zero_int() -> Any:
        from onnx import helper

        return helper.make_tensor("", 7, [1], [0])

    def initializers(self) -> List[Any]:
        from onnx import numpy_helper

        return [numpy_helper.from_array(v, f"{self.prefix}/const_{k}") for k, v in self.consts.items()]


def _first_in_scope(graph: Any, op_type: str, scope: str) -> Any:
    for n in graph.node:
        if n.op_type == op_type and scope in n.name.split("/"):
            return n
    return None


def _last_in_scope(graph: Any, op_type: str, scope: str) -> Any:
    found = None
    for n in graph.node:
        if n.op_type == op_type and scope in n.name.split("/"):
            found = n
    return found


def _prune(graph: Any) -> int:
    """Remove nodes whose outputs nothing uses (the graph outputs are used); returns how many."""
    used = {o.name for o in graph.output}
    keep: List[Any] = []
    for n in reversed(list(graph.node)):
        if any(o in used for o in n.output if o):
            keep.append(n)
            used.update(i for i in n.input if i)
    removed = len(graph.node) - len(keep)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return removed


def _toposort(graph: Any) -> None:
    """Order nodes so every input is produced before it is read (the rewrite inserts nodes out of order)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: List[Any] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"cycle or missing input in the rewritten graph at {rest[0].name} ({list(rest[0].input)})")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def cpu_graph(model: Any, detections_per_img: int, masks: bool) -> Tuple[Any, Dict[str, Any]]:
    """Rewrite a fused ``--nms onnx`` graph (``onnx.ModelProto``, changed in place and returned) for the CPU:
    level-assigned ROIAlign, mask head on the valid detections only. Returns the model and a short report.
    Raises ValueError when the graph is not the ``onnx`` lowering's."""
    from onnx import helper

    graph = model.graph
    if any(n.op_type == "RoiAlign" for n in graph.node) is False:
        raise ValueError("the graph has no RoiAlign nodes: export the fused graph with --nms onnx")
    if any(n.op_type in ("FixpointKeep",) or n.domain not in ("", "ai.onnx") for n in graph.node):
        raise ValueError("the graph has custom-domain nodes: export the fused graph with --nms onnx")
    pools = _find_pools(graph)
    name = _GraphNames("/cpu")
    new_nodes: List[Any] = []
    dead: List[Any] = []
    report: Dict[str, Any] = {"roi_align_pools": len(pools), "mask_head_on_valid_only": False, "row_order_after": None}
    mask_pool = None
    mask_conv = _first_in_scope(graph, "Conv", "mask_head") if masks else None
    mask_logits = _last_in_scope(graph, "Conv", "mask_predictor") if masks else None
    if masks:
        if mask_conv is None or mask_logits is None:
            raise ValueError("the mask head's first Conv or the mask predictor's logits Conv was not found")
        sizes = [p.size for p in pools]
        # the mask pooler is the one at the mask head's resolution whose rows are the detection slots
        cands = [p for p in pools if p.size == max(sizes)]
        if len(cands) != 1 or len(pools) != 2:
            raise ValueError(f"expected a box and a mask ROIAlign, found pools of sizes {sizes}")
        mask_pool = cands[0]
    for pool in pools:
        if pool is mask_pool:  # its old nodes become unused (the mask head reads the new rows) and are pruned
            continue
        dead += pool.dead  # the new nodes write the same output tensor: the old producers must go
        channels = _pool_channels(graph, pool) if pool.levels else None
        head = _rows_to_gemm(graph, pool.output, channels * pool.size**2) if channels else None
        if head is None:
            new_nodes += _pool_nodes(helper, name, pool, None, pool.output)
            continue
        # the box head's first layer reads the rows in level order and its output goes back into row order: the
        # Gather moves [n, 1024] values instead of [n, 256 * 7 * 7] (the same rows: see _rows_to_gemm)
        first, gemm = head
        nodes, stacked, inverse = _pool_nodes_by_level(helper, name, pool, None, pool.output)
        assert inverse is not None  # a pool of several levels
        first.input[0] = stacked
        by_level, gemm_out = name("box_head_rows_by_level"), gemm.output[0]
        gemm.output[0] = by_level
        new_nodes += nodes + [helper.make_node("Gather", [by_level, inverse], [gemm_out], axis=0)]
        report["row_order_after"] = gemm.name
    if mask_pool is not None:
        assert mask_conv is not None and mask_logits is not None  # found above, with the mask pool
        # valid slots: slot index < num_detections, per image, flattened in (B, K) order like the pool's rows
        k = detections_per_img
        n64, slots, flat, nz, rows, pooled = (
            name("num_detections_i64"),
            name("slot_valid"),
            name("slot_valid_flat"),
            name("valid_nonzero"),
            name("valid_rows"),
            name("mask_features_valid"),
        )
        new_nodes += [
            helper.make_node("Cast", ["num_detections"], [n64], to=7),
            helper.make_node("Less", [name.const(f"range_{k}"), n64], [slots]),
            helper.make_node("Reshape", [slots, name.const("minus1")], [flat]),
            helper.make_node("NonZero", [flat], [nz]),
            helper.make_node("Reshape", [nz, name.const("minus1")], [rows]),
        ]
        new_nodes += _pool_nodes(helper, name, mask_pool, rows, pooled)
        # the mask head reads the valid rows; its logits go back into the padded rows
        mask_conv.input[0] = pooled
        logits_valid = name("mask_logits_valid")
        old_logits = mask_logits.output[0]
        mask_logits.output[0] = logits_valid
        shape, tail, full_shape, zeros, index = (
            name("logits_shape"),
            name("logits_tail"),
            name("logits_full_shape"),
            name("logits_zeros"),
            name("logits_index"),
        )
        rows_shape = name("rows_shape")
        new_nodes += [
            helper.make_node("Shape", [logits_valid], [shape]),
            helper.make_node("Slice", [shape, name.const("one"), name.const(f"int_{2**62}")], [tail]),
            helper.make_node("Shape", [flat], [rows_shape]),
            helper.make_node("Concat", [rows_shape, tail], [full_shape], axis=0),
            helper.make_node("ConstantOfShape", [full_shape], [zeros], value=name.zero_float()),
            helper.make_node("Unsqueeze", [rows, name.const("one")], [index]),
            helper.make_node("ScatterND", [zeros, index, logits_valid], [old_logits]),
        ]
        report["mask_head_on_valid_only"] = True
    dead_ids = {id(n) for n in dead}
    kept = [n for n in graph.node if id(n) not in dead_ids]
    del graph.node[:]
    graph.node.extend(kept + new_nodes)
    graph.initializer.extend(name.initializers())
    _toposort(graph)
    report["nodes_removed"] = _prune(graph)
    # shapes inferred by the exporter for rewritten tensors are stale (rows are data-dependent now)
    stale = {o for n in new_nodes for o in n.output}
    if mask_pool is not None:
        assert mask_conv is not None and mask_logits is not None
        stale |= _downstream(graph, mask_conv.output[0], stop=mask_logits.output[0])
    keep_vi = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    return model, report


def _downstream(graph: Any, start: str, stop: str) -> set:
    """Tensor names computed from ``start`` up to ``stop`` (inclusive)."""
    out, frontier = {start}, [start]
    consumers: Dict[str, List[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    while frontier:
        t = frontier.pop()
        if t == stop:
            continue
        for n in consumers.get(t, []):
            for o in n.output:
                if o not in out:
                    out.add(o)
                    frontier.append(o)
    return out


# ------------------------------------------------------------------------------------------ quantisation
def network_nodes(model: Any, op_types: Sequence[str] = QUANTIZED_OP_TYPES) -> List[str]:
    """Names of the network layers to quantise: ``op_types`` nodes inside a network module's scope
    (:data:`rcnn_deploy.precision_rule.NETWORK_SCOPES`) except the predictors (the last layer of each head:
    RPN objectness / deltas, class logits / box deltas, mask logits, a few percent of the work), whose outputs
    are decoded by the glue and so stay fp32 with it; everything else (the glue) stays fp32."""
    from ..precision_rule import in_network_scope, in_predictor_scope

    return [
        n.name
        for n in model.graph.node
        if n.op_type in op_types and n.name and in_network_scope(n.name) and not in_predictor_scope(n.name)
    ]


def graph_batch(model: Any) -> int:
    """The batch size an ONNX model's first input is fixed to, or 1 where it is dynamic (a symbolic dimension)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return 1


class _Reader:
    """ONNX Runtime's CalibrationDataReader over ``[N, 3, H, W]`` images, ``batch`` images per call (a graph
    exported for a fixed batch takes exactly that many; the last call's batch is filled up with the first images
    again, so every image is seen at least once)."""

    def __init__(
        self, images: np.ndarray, dtype: np.dtype, progress: Optional[Callable[[int], None]], batch: int = 1
    ) -> None:
        self.images, self.dtype, self.i, self.progress, self.batch = images, dtype, 0, progress, max(int(batch), 1)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        n = len(self.images)
        if self.i >= n:
            return None
        index = np.arange(self.i, self.i + self.batch) % n
        x = np.ascontiguousarray(self.images[index]).astype(self.dtype)
        self.i = min(self.i + self.batch, n)
        if self.progress is not None:
            self.progress(self.i)
        return {"images": x}

    def rewind(self) -> None:
        self.i = 0


def quantize_cpu(
    onnx_in: Union[str, Path],
    onnx_out: Union[str, Path],
    images: np.ndarray,
    method: str = "minmax",
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """Write ``onnx_out``: ``onnx_in`` with int8 Q/DQ on its network layers (ONNX Runtime static quantisation,
    int8 weights per output channel, uint8 activations), calibrated on ``images`` (``[N, 3, H, W]``, the
    graph's input dtype or float32 RGB 0-255). Returns a short report."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise UserError(f"must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}", where="--calib-method")
    model = onnx.load(str(onnx_in), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise UserError("the graph is quantized already", where=onnx_in, fix="quantize the fp32 graph")
    inputs = [i.name for i in model.graph.input]
    if inputs != ["images"]:
        raise UserError(f"the graph takes {inputs}, calibration feeds 'images'", where=onnx_in)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise UserError(f"calibration images must be [N >= 1, 3, H, W], got {list(images.shape)}")
    elem = model.graph.input[0].type.tensor_type.elem_type
    dtype = np.dtype(np.uint8) if elem == onnx.TensorProto.UINT8 else np.dtype(np.float32)
    batch = graph_batch(model)
    del model
    calib = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    out = Path(onnx_out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        folded = Path(tmp) / "folded.onnx"
        _fold_constants(onnx_in, folded)
        nodes = network_nodes(onnx.load(str(folded), load_external_data=False))
        staged = Path(tmp) / out.name
        quantize_static(
            str(folded),
            str(staged),
            _Reader(images, dtype, progress, batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calib,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "CalibTensorRangeSymmetric": False,
                "CalibMovingAverage": False,
            },
        )
        q = onnx.load(str(staged))
        fp32_glue = glue_in_fp32(q)
        if fp32_glue:
            raise RuntimeError(f"internal error: quantisation touched the glue: {fp32_glue[:5]}")
        import os

        os.replace(staged, out)
    return {
        "folded_batchnorm": True,
        "quantized_layers": len(nodes),
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in q.graph.node),
        "calibration_images": int(images.shape[0]),
        "method": method,
        "per_channel": True,
        "activations": "uint8 (asymmetric)",
        "weights": "int8 (symmetric, per output channel)",
    }


def _fold_constants(onnx_in: Union[str, Path], onnx_out: Union[str, Path]) -> None:
    """ONNX Runtime's basic (hardware-independent, standard-op) graph optimisations, saved: constant folding and,
    above all, the frozen BatchNorm's ``Mul``/``Add`` folded into the preceding ``Conv``. Quantising before that
    would put Q/DQ between each convolution and its BatchNorm: an 8-bit rounding of the unnormalised output and
    two fp32 passes over every feature map. Node names (the module scopes) are kept."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(onnx_out)
    ort.InferenceSession(str(onnx_in), opts, providers=["CPUExecutionProvider"])
    if not Path(onnx_out).is_file():  # pragma: no cover - ONNX Runtime always writes it
        raise RuntimeError(f"ONNX Runtime did not write the optimised graph {onnx_out}")


def glue_in_fp32(model: Any) -> List[str]:
    """Glue nodes (:data:`GLUE_OP_TYPES`) of a Q/DQ graph that would not compute in fp32: one that reads an int8
    tensor (a QuantizeLinear output) or writes one (its output goes straight into DequantizeLinear), or sits
    between a DequantizeLinear and a QuantizeLinear (ONNX Runtime may fuse that into an int8 kernel). An empty
    list when all the glue is fp32. (Reading a DequantizeLinear output, e.g. ROIAlign on an int8 layer's FPN
    map, is fp32 computation on that layer's output.)"""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    bad = []
    for n in model.graph.node:
        if n.op_type not in GLUE_OP_TYPES:
            continue
        ins = [producer.get(i) for i in n.input]
        outs = [c for o in n.output for c in consumers.get(o, [])]
        reads_int8 = any(p is not None and p.op_type == "QuantizeLinear" for p in ins)
        writes_int8 = any(c.op_type == "DequantizeLinear" for c in outs)
        sandwiched = any(p is not None and p.op_type == "DequantizeLinear" for p in ins) and any(
            c.op_type == "QuantizeLinear" for c in outs
        )
        if reads_int8 or writes_int8 or sandwiched:
            bad.append(n.name or n.op_type)
    return bad


# ------------------------------------------------------------------------------------ the export directory
def calibration_images(
    contract: Any, source: Union[str, Path], limit: int, warn: Optional[Callable[[str], None]] = None
) -> np.ndarray:
    """Up to ``limit`` images from ``source`` (a folder, glob or list file), letterboxed with the model's own
    preprocessing: ``[N, 3, H, W]`` float32 RGB 0-255. A missing or empty folder, or one with no readable
    image, is a UserError naming ``--calib-input``."""
    from ..runtime.preprocess import find_images, iter_batches, rgb_fill

    try:
        paths = find_images(source)[:limit]
    except UserError as e:
        raise UserError(e.what, where=f"--calib-input {e.where or source}", fix=e.fix) from None
    fill = rgb_fill(contract.spec.pixel_mean, contract.spec.channel_order)
    arrays, failures = [], []
    for images, _, _, failed in iter_batches(paths, contract.input_hw, fill, batch=8):
        failures += failed
        for p, why in failed:
            if warn is not None:
                warn(f"skipped {p}: {why}")
        if len(images):
            arrays.append(images)
    if not arrays:
        first = f" (e.g. {failures[0][0].name}: {failures[0][1]})" if failures else ""
        raise UserError(
            f"none of the {len(paths)} calibration images could be read{first}",
            where=f"--calib-input {source}",
            fix="pass a folder of images like the ones the model will see (e.g. 'rcnn-deploy data synth -o DIR')",
        )
    return np.concatenate(arrays).astype(np.float32)


def _old_export_files(directory: Path) -> List[str]:
    from ..contract import CONTRACT_FILE, Contract

    names = [CONTRACT_FILE]
    with contextlib.suppress(UserError):
        names += [g.file for g in Contract.load(directory).graphs]
    return names


def build_cpu_export(
    onnx_path: Union[str, Path],
    out_dir: Union[str, Path],
    precision: str = "fp32",
    calib_input: Optional[Union[str, Path]] = None,
    calib_images: int = 64,
    calib_method: str = "minmax",
    log: Callable[[str], None] = lambda _m: None,
) -> Any:
    """Write ``out_dir``: an export directory holding the CPU graph of the fused ``--nms onnx`` export that
    ``onnx_path`` belongs to (``precision`` ``fp32``: :func:`cpu_graph`; ``int8``: that, quantised by
    :func:`quantize_cpu` on up to ``calib_images`` images of ``calib_input``) and its contract (format 2,
    the new graph's size and sha256; ``notes.cpu`` records how it was made). Written whole, atomically, as
    ``rcnn-deploy export`` writes (files of your own in ``out_dir`` are kept). Returns the new Contract."""
    import onnx

    from .. import __version__
    from ..contract import CONTRACT_FILE, Contract, GraphSpec, verified_graph_bytes
    from .staging import commit, stage, write_file

    src, out = Path(onnx_path), Path(out_dir)
    if precision not in CPU_PRECISIONS:
        raise UserError(
            f"ONNX Runtime on the CPU builds {' or '.join(CPU_PRECISIONS)}, not {precision!r}",
            where="--precision",
            fix="fp16 pays on GPUs only; use --precision int8 (AVX512-VNNI / AVX-VNNI CPUs) or fp32",
        )
    if precision == "int8" and calib_input is None:
        raise UserError(
            "int8 needs calibration images", where="--calib-input", fix="pass a folder of images, e.g. 50-100"
        )
    if not src.is_file():
        raise UserError("ONNX file not found", where=src, fix="pass a graph written by 'rcnn-deploy export'")
    data, entry = verified_graph_bytes(src)  # the graph its contract records (size, sha256)
    if entry is None:
        raise UserError(
            "no contract.json beside this graph lists it", where=src, fix="pass a graph of an 'rcnn-deploy export'"
        )
    contract = entry[0]
    if "cpu" in contract.notes:
        raise UserError(
            "this graph is a CPU build already", where=src, fix="build from the original export's fused graph"
        )
    if contract.graph != "fused" or contract.nms != "onnx":
        raise UserError(
            f"the CPU build rewrites the fused graph with standard ONNX NMS/ROIAlign; this export is "
            f"{contract.graph}{'/' + contract.nms if contract.nms else ''}",
            where=src,
            fix=f"export it with --graph fused --nms onnx: {Contract.export_command(contract)}".replace(
                f"--graph {contract.graph}", "--graph fused"
            ),
        )
    if out.resolve() == src.parent.resolve():
        raise UserError(
            "is the export's own directory", where="--output", fix="write the CPU build to a directory of its own"
        )
    spec = contract.spec
    t0 = time.time()
    images = None
    if precision == "int8":  # a bad folder fails before the rewrite
        if calib_method not in CALIBRATION_METHODS:
            raise UserError(f"must be one of {', '.join(CALIBRATION_METHODS)}", where="--calib-method")
        assert calib_input is not None  # refused above when missing
        images = calibration_images(contract, calib_input, calib_images, log)
    model = onnx.load_model_from_string(data)
    del data
    try:
        model, report = cpu_graph(model, spec.detections_per_img, spec.masks)
    except ValueError as e:
        raise UserError(f"not a graph this build can rewrite ({e})", where=src, fix=_REEXPORT_FUSED) from None
    log(
        f"rewrote {src.name} for the CPU: {report['roi_align_pools']} multi-level ROIAlign(s) pool each ROI once"
        + (", mask head on the detections only" if report["mask_head_on_valid_only"] else "")
    )
    notes: Dict[str, Any] = {
        "target": "onnxruntime-cpu",
        "precision": precision,
        "source": {"file": src.name, "sha256": contract.graphs[0].sha256},
        "rewrite": report,
    }
    file = f"{spec.name}_fused_onnx_cpu_{precision}.onnx"
    staged = stage(out)
    try:
        if precision == "fp32":
            blob = model.SerializeToString()
        else:
            assert images is not None  # int8: loaded above
            log(f"calibrating int8 on {len(images)} images from {calib_input} ({calib_method})")
            with tempfile.TemporaryDirectory(dir=staged) as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                onnx.save(model, str(fp32))
                del model
                q = Path(tmp) / "int8.onnx"
                notes["quantization"] = quantize_cpu(fp32, q, images, calib_method)
                notes["quantization"]["calibration_source"] = str(calib_input)
                blob = q.read_bytes()
        import hashlib

        graph = GraphSpec(
            role="fused",
            file=file,
            inputs=contract.graphs[0].inputs,
            outputs=contract.graphs[0].outputs,
            sha256=hashlib.sha256(blob).hexdigest(),
            size=len(blob),
        )
        write_file(staged / file, blob)
        del blob
        notes["build_seconds"] = round(time.time() - t0, 1)
        new = Contract(
            model=contract.model,
            graph="fused",
            nms="onnx",
            input_hw=contract.input_hw,
            batch=contract.batch,
            spec=spec,
            graphs=[graph],
            opset=contract.opset,
            producer=f"rcnn-deploy {__version__} build --target onnxruntime ({contract.producer})",
            notes={**contract.notes, "cpu": notes},
        )
        text = json.dumps(new.to_dict(), indent=2) + "\n"
        Contract.from_dict(json.loads(text), where=CONTRACT_FILE)  # the loader must accept what we write
        write_file(staged / CONTRACT_FILE, text.encode("utf-8"))
        commit(staged, out, [CONTRACT_FILE, file], _old_export_files)
    except OSError as e:
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        raise UserError(f"cannot write the CPU build ({e.strerror or e}); nothing was changed", where=out) from None
    except BaseException:
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        raise
    new.path = out / CONTRACT_FILE
    return new


_REEXPORT_FUSED = "re-export with 'rcnn-deploy export --graph fused --nms onnx'"
