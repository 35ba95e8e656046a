"""The backend interface: run one graph on named numpy arrays (numpy only; Python 3.9 compatible)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed (the message names the pip extra)."""


class Backend(ABC):
    """Runs one graph. ``infer`` takes and returns arrays keyed by the graph's tensor names; subclasses set
    ``_inputs`` / ``_outputs`` (the graph's I/O names, in order) when they load it."""

    name: str = "backend"
    _inputs: List[str]
    _outputs: List[str]

    @property
    def input_names(self) -> List[str]:
        return self._inputs

    @property
    def output_names(self) -> List[str]:
        return self._outputs

    @abstractmethod
    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]: ...

    def __call__(self, **feed: np.ndarray) -> Dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}; the graph takes {self.input_names}")
        return self.infer(feed)
