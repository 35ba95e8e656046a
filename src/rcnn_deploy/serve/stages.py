"""The host-side stages of the ``tensorrt`` flavour's Python models, as plain functions of numpy arrays (so
they are testable without Triton): exactly ``Detector.preprocess`` / ``Detector.postprocess`` of a detector
whose model runs elsewhere (the ``tensorrt_plan`` model of the ensemble)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

from ..api import Detector
from ..runtime.detections import Detections
from ..runtime.preprocess import Letterbox


class HostStages(Detector):
    """A :class:`Detector` without a model: its pre- and post-processing only."""

    def postprocess_raw(self, raw: Dict[str, np.ndarray], original_hw: np.ndarray) -> List[Detections]:
        """The fused graph's outputs (``num_detections``, ``detection_*``) of a batch and each image's
        ``(height, width)`` -> detections in original pixels with pasted masks."""
        from ..runtime.split import fused_outputs

        boxes: Sequence[Letterbox] = [
            Letterbox.fit(int(h), int(w), self.input_hw) for h, w in np.asarray(original_hw).reshape(-1, 2)
        ]
        return self.postprocess(fused_outputs(dict(raw)), boxes)


def host_stages(contract_dir: Union[str, Path]) -> HostStages:
    """The stages of the export whose contract.json is in ``contract_dir``."""
    from ..contract import Contract

    c = Contract.load(contract_dir)

    def no_model(images: np.ndarray) -> Dict[str, np.ndarray]:
        raise RuntimeError("the host stages run no model; the ensemble's engine does")

    return HostStages(c.spec, c.input_hw, no_model, "triton-ensemble")
