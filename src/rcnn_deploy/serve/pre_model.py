"""Triton Python-backend model of the ``tensorrt`` flavour's first step: encoded image bytes -> the engine's
letterboxed ``[B, 3, H, W]`` float32 input, plus each image's original size (``ORIGINAL_HW``, int32 [B, 2])
for the post-processing step. The same letterbox as ``rcnn_deploy.api.Detector.preprocess``.

``rcnn-deploy triton-repo --flavour tensorrt`` copies this file to ``<repo>/<name>_preprocess/1/model.py``
with the export's contract.json and a copy of the ``rcnn_deploy`` package beside it. Never imported by the
package itself.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "rcnn_deploy")):
    sys.path.insert(0, _HERE)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: Dict[str, Any]) -> None:
        from rcnn_deploy.serve import contract as C
        from rcnn_deploy.serve.stages import host_stages

        self.C = C
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.stages = host_stages(os.path.join(args["model_repository"], args["model_version"]))
        self.max_pixels = int(params.get("max_pixels") or C.DEFAULT_MAX_PIXELS)
        self.image_tensor = params.get("image_tensor") or "images"

    def execute(self, requests: List[Any]) -> List[Any]:  # pb_utils requests and responses
        C = self.C
        responses: List[Any] = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, C.INPUT)
                if tensor is None:
                    raise C.BadImage(f"the request has no {C.INPUT} input")
                data = tensor.as_numpy().reshape(-1)
                if data.size == 0:
                    raise C.BadImage(f"{C.INPUT} holds no image")
                rgb = [C.decode_image(x, self.max_pixels, f"{C.INPUT}[{i}]") for i, x in enumerate(data)]
            except C.BadImage as e:
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # HTTP 400 where the backend has codes
                error = pb_utils.TritonError(str(e)) if code is None else pb_utils.TritonError(str(e), code)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            batch, _ = self.stages.preprocess(rgb)
            hw = np.asarray([im.shape[:2] for im in rgb], dtype=np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(self.image_tensor, batch), pb_utils.Tensor("ORIGINAL_HW", hw)]
                )
            )
        return responses
