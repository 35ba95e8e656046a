"""ONNX export of the deploy-form model: split graphs (seed 004) or one fused graph (seed 000).

``split``  backbone (backbone + FPN + RPN head, dynamic batch) / box head / mask head (dynamic number of
           ROIs); the glue between them runs in the runtime (``glue.pipeline.two_stage``).
``fused``  one graph, preprocessing inside, anchors as constants, NMS and ROIAlign lowered by ``--nms``:
           ``onnx`` (standard ops) or ``plugin`` (EfficientNMS_TRT + PyramidROIAlign_TRT).

Every export writes the ONNX file(s) and ``contract.json`` (:class:`rcnn_deploy.contract.Contract`).
"""

from .onnx_export import export_module, export_onnx

__all__ = ["export_module", "export_onnx"]
