"""The error every weight-loading failure raises, and how its messages list many keys."""

from __future__ import annotations

from typing import Any, List, Sequence

from rcnn_deploy.errors import UserError

MAX_LISTED = 20


class WeightsError(UserError):
    """A checkpoint cannot be loaded; the message says which file, what is wrong and how to fix it."""


def format_list(items: Sequence[str]) -> str:
    shown = [f"  {s}" for s in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        shown.append(f"  ... and {len(items) - MAX_LISTED} more")
    return "\n".join(shown)


def list_section(lines: List[str], title: str, items: Sequence[str]) -> None:
    if items:
        lines.append(f"{title} ({len(items)}):")
        lines.append(format_list(items))


def no_mask_error(path: Any) -> WeightsError:
    return WeightsError(
        f"{path}: the checkpoint has no mask head (roi_heads.mask_*): is this a Faster R-CNN checkpoint "
        "loaded as Mask R-CNN? Use -m torchvision-fasterrcnn (or detectron2-fasterrcnn), or Mask R-CNN weights."
    )


def caffe2_error(path: Any) -> WeightsError:
    return WeightsError(
        f"{path}: this is a Caffe2 / Detectron (v1) checkpoint ('blobs'), which is not supported; load it "
        "in Detectron2 and save the converted model.state_dict(), or use a Detectron2 model-zoo file."
    )
