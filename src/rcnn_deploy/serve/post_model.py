"""Triton Python-backend model of the ``tensorrt`` flavour's last step: the fused engine's padded outputs and
each image's original size -> the client contract of :mod:`rcnn_deploy.serve.contract` (boxes mapped back to
original pixels, masks pasted and RLE-encoded) — the same post-processing as
``rcnn_deploy.api.Detector.postprocess``.

``rcnn-deploy triton-repo --flavour tensorrt`` copies this file to ``<repo>/<name>_postprocess/1/model.py``
with the export's contract.json and a copy of the ``rcnn_deploy`` package beside it. Never imported by the
package itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "rcnn_deploy")):
    sys.path.insert(0, _HERE)

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: Dict[str, Any]) -> None:
        from rcnn_deploy.contract import Contract
        from rcnn_deploy.serve import contract as C
        from rcnn_deploy.serve.stages import host_stages

        self.C = C
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.stages = host_stages(version_dir)
        self.raw = [t.name for t in Contract.load(version_dir).graph_for("fused").outputs]
        spec = self.stages.spec
        self.names = C.class_name_lookup(spec.class_names, spec.label_ids)

    def execute(self, requests: List[Any]) -> List[Any]:  # pb_utils requests and responses
        C = self.C
        responses: List[Any] = []
        for request in requests:
            try:
                raw = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.raw}
                hw = pb_utils.get_input_tensor_by_name(request, "ORIGINAL_HW").as_numpy()
                dets = self.stages.postprocess_raw(raw, hw)
                arrays = C.pack_outputs(dets, self.names)
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, arrays[n]) for n in C.OUTPUTS])
                )
            except Exception as e:  # a malformed intermediate: this request fails, the model keeps serving
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"post-processing: {e}"))
                )
        return responses
