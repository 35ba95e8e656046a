"""Shared fixtures: deploy models with the confident test-weight recipe (see rcnn_deploy.models.testing)."""

from __future__ import annotations

import importlib.util
from typing import List

import pytest

# Tests that need torch import it themselves (pytest.importorskip), so without torch the torch-free tests still
# run. The one module that imports torch at its top is left out of collection, and the header says so.
HAVE_TORCH = importlib.util.find_spec("torch") is not None
collect_ignore = [] if HAVE_TORCH else ["test_detectron2_components.py"]


def pytest_report_header(config: pytest.Config) -> List[str]:
    lines = []
    if collect_ignore:
        lines.append(f"torch is not installed: not collected: {', '.join(collect_ignore)}")
    if _fast_tier(config):
        lines.append(
            "fast tier: tests marked `full` are deselected (run them with -m full; everything: -m 'full or not full')"
        )
    return lines


def _fast_tier(config: pytest.Config) -> bool:
    """A plain run (no -m, no test named by node id) is the fast tier."""
    named = any("::" in str(a) for a in config.args)
    return not config.getoption("markexpr") and not named


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if not _fast_tier(config):
        return
    full = [it for it in items if it.get_closest_marker("full") is not None]
    if full:
        items[:] = [it for it in items if it.get_closest_marker("full") is None]
        config.hook.pytest_deselected(items=full)


@pytest.fixture(scope="session")
def tv_mask_model():
    pytest.importorskip("torch")
    from rcnn_deploy import get_spec
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import confident_state_dict

    model = DeployRCNN(get_spec("torchvision-maskrcnn"))
    sd = confident_state_dict(model, seed=0)
    return model, sd


@pytest.fixture(scope="session")
def tv_faster_model():
    pytest.importorskip("torch")
    from rcnn_deploy import get_spec
    from rcnn_deploy.models.rcnn import DeployRCNN
    from rcnn_deploy.models.testing import confident_state_dict

    model = DeployRCNN(get_spec("torchvision-fasterrcnn"))
    sd = confident_state_dict(model, seed=1)
    return model, sd
