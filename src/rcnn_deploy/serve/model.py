"""Triton Python-backend model of the ``python`` flavour: ``rcnn_deploy.api.Detector`` behind the contract of
:mod:`rcnn_deploy.serve.contract` (encoded image bytes in; boxes, scores, classes, class names, RLE masks out).

``rcnn-deploy triton-repo`` copies this file to ``<repo>/<name>/1/model.py`` with a copy of the
``rcnn_deploy`` package beside it and the model files in ``1/model/``; the model config's parameters say what
to load. It is never imported by the package itself (``triton_python_backend_utils`` exists only inside
Triton's Python backend stub).

A batch of requests (dynamic batching) is decoded request by request: a request whose image is not
decodable, empty or too large gets an error response naming the problem, and the others run together as one
batch through the detector.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "rcnn_deploy")):  # the copy triton-repo bundled wins over any installed one
    sys.path.insert(0, _HERE)

import triton_python_backend_utils as pb_utils  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

    from rcnn_deploy.api import Detector


class TritonPythonModel:
    def initialize(self, args: Dict[str, Any]) -> None:
        from rcnn_deploy.api import Detector
        from rcnn_deploy.serve import contract as C

        self.C = C
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params["model_path"])
        device = params.get("device") or "cpu"
        if device.startswith("cuda") and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        kwargs: Dict[str, Any] = {
            "backend": params.get("backend") or None,
            "model": params.get("model") or None,
            "device": device,
        }
        if params.get("input_hw"):
            kwargs["input_hw"] = tuple(int(v) for v in params["input_hw"].split(","))
        self.detector: Optional[Detector] = Detector.load(path, **kwargs)
        self.detector.batch = max(int(config.get("max_batch_size") or 1), 1)
        self.max_pixels = int(params.get("max_pixels") or C.DEFAULT_MAX_PIXELS)
        spec = self.detector.spec
        self.names = C.class_name_lookup(spec.class_names, spec.label_ids)
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"rcnn-deploy: {spec.name} from {path} on {self.detector.backend} ({device}), input "
            f"{self.detector.input_hw[0]}x{self.detector.input_hw[1]}, batch {self.detector.batch}"
        )

    def execute(self, requests: List[Any]) -> List[Any]:  # pb_utils requests and responses
        C = self.C
        assert self.detector is not None  # set by initialize, until finalize
        responses: List[Any] = [None] * len(requests)
        images: List[np.ndarray] = []
        owners: List[Tuple[int, int]] = []
        for r, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, C.INPUT)
                if tensor is None:
                    raise C.BadImage(f"the request has no {C.INPUT} input")
                data = tensor.as_numpy().reshape(-1)
                if data.size == 0:
                    raise C.BadImage(f"{C.INPUT} holds no image")
                decoded = [C.decode_image(x, self.max_pixels, f"{C.INPUT}[{i}]") for i, x in enumerate(data)]
            except C.BadImage as e:
                responses[r] = _error(str(e), invalid_argument=True)
                continue
            owners.append((r, len(decoded)))
            images.extend(decoded)
        if images:
            try:
                dets = self.detector(images)
            except Exception as e:  # the model failed on a decodable batch: every request of it gets the error
                self.logger.log_error(f"rcnn-deploy: detector failed: {e!r}")
                for r, _ in owners:
                    responses[r] = _error(f"detector failed: {e}")
                return responses
            k = 0
            for r, n in owners:
                arrays = C.pack_outputs(dets[k : k + n], self.names)
                k += n
                responses[r] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, arrays[name]) for name in C.OUTPUTS]
                )
        return responses

    def finalize(self) -> None:
        self.detector = None


def _error(message: str, invalid_argument: bool = False) -> Any:  # a pb_utils.InferenceResponse
    """An error response; a bad input is INVALID_ARG (HTTP 400) where the backend has error codes."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_argument else None
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
