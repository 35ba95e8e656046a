"""Shared fixtures: deploy models with the confident test-weight recipe (see rcnn_deploy.models.testing)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tv_mask_model():
    from rcnn_deploy import get_spec
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import confident_state_dict

    model = DeployRCNN(get_spec("torchvision-maskrcnn"))
    sd = confident_state_dict(model, seed=0)
    return model, sd


@pytest.fixture(scope="session")
def tv_faster_model():
    from rcnn_deploy import get_spec
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import confident_state_dict

    model = DeployRCNN(get_spec("torchvision-fasterrcnn"))
    sd = confident_state_dict(model, seed=1)
    return model, sd
