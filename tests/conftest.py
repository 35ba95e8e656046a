"""Shared fixtures: deploy models with the confident test-weight recipe (see rcnn_deploy.models.testing)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Iterator, List

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


@pytest.fixture(scope="module", autouse=True)
def _module_scratch_is_removed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The folders a module's fixtures make with ``tmp_path_factory.mktemp`` (exports, checkpoints, datasets: one
    R50-FPN export is 170 MB) are removed when the module ends, so the suite's disk use is one module's at a time
    (CI ran out of disk with every module's kept to the end). A test's own ``tmp_path`` is pytest's: removed when
    the test passes, kept when it fails (``tmp_path_retention_policy = "failed"`` in pyproject.toml)."""
    made: List[Path] = []
    original = tmp_path_factory.mktemp

    def mktemp(basename: str, numbered: bool = True) -> Path:
        path = original(basename, numbered)
        if sys._getframe(1).f_code.co_name != "_mk_tmp":  # not a test's tmp_path (pytest's retention policy)
            made.append(path)
        return path

    tmp_path_factory.mktemp = mktemp  # type: ignore[method-assign]
    try:
        yield
    finally:
        del tmp_path_factory.mktemp  # the class's method again
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


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
