"""Inference backends behind one small interface (:class:`rcnn_deploy.backends.base.Backend`).

Each backend module imports its heavy dependency lazily, so a missing one fails only when used, with a
message saying which extra to install.
"""

from .base import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable"]
