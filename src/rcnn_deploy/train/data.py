"""COCO-format instance data for training, preprocessed exactly as the deployed model sees its input.

Each image is letterboxed to the model's fixed input size with the model's mean pixel as padding (the same
:func:`rcnn_deploy.runtime.preprocess.letterbox` the runtime uses), so a checkpoint trained here needs no
resize logic of its own at deploy time. Boxes and masks are mapped through the same scale. Crowd and
degenerate annotations are dropped. Category ids are mapped to contiguous labels ``1..K`` in sorted id order
(``category_ids[k]`` is the COCO id of label ``k``; index 0 is background), torchvision's convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch

from ..runtime.preprocess import letterbox, load_rgb


def coco_label_map(coco: Dict[str, Any]) -> Tuple[List[str], List[int]]:
    """``(class_names, category_ids)`` with background at index 0, categories in increasing id order."""
    cats = sorted(coco["categories"], key=lambda c: int(c["id"]))
    if not cats:
        raise ValueError("the annotations file has no categories; a detector needs at least one class")
    return ["__background__"] + [str(c["name"]) for c in cats], [0] + [int(c["id"]) for c in cats]


def _decode_mask(ann: Dict[str, Any], h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_util

    seg = ann["segmentation"]
    if isinstance(seg, list):
        rles = mask_util.frPyObjects(seg, h, w)
        rle = mask_util.merge(rles)
    elif isinstance(seg.get("counts"), list):
        rle = mask_util.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_util.decode(rle).astype(np.uint8)


class CocoInstances(torch.utils.data.Dataset):
    """``(image [3, H, W] float 0-1, target)`` pairs for torchvision's detection models.

    ``target`` holds ``boxes [N, 4]`` (input pixels), ``labels [N]`` int64 (1..K), ``masks [N, H, W]``
    uint8 (when ``masks``) and ``image_id``. ``hflip`` / ``vflip`` flip with probability 0.5 each.
    """

    def __init__(
        self,
        coco: Dict[str, Any],
        images_dir: Path,
        input_hw: Tuple[int, int],
        fill_rgb: Sequence[float],
        *,
        masks: bool = True,
        hflip: bool = False,
        vflip: bool = False,
        image_ids: Optional[Sequence[int]] = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.input_hw = cast(Tuple[int, int], tuple(input_hw))
        self.fill = tuple(float(v) for v in fill_rgb)
        self.masks, self.hflip, self.vflip = masks, hflip, vflip
        _, cat_ids = coco_label_map(coco)
        self.label_of = {cid: k for k, cid in enumerate(cat_ids) if k > 0}
        by_image: Dict[int, List[Dict[str, Any]]] = {}
        for a in coco["annotations"]:
            by_image.setdefault(int(a["image_id"]), []).append(a)
        wanted = None if image_ids is None else set(int(i) for i in image_ids)
        self.images = [im for im in coco["images"] if wanted is None or int(im["id"]) in wanted]
        self.anns = by_image
        if not self.images:
            raise ValueError("no images to train on (the annotations file lists none)")
        self.rng = np.random.default_rng()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        info = self.images[i]
        rgb = load_rgb(self.images_dir / info["file_name"])
        h, w = rgb.shape[:2]
        image, lb = letterbox(rgb, self.input_hw, self.fill)
        rh, rw = lb.resized_hw
        sx, sy = rw / w, rh / h
        boxes, labels, masks = [], [], []
        for a in self.anns.get(int(info["id"]), []):
            if a.get("iscrowd", 0) or int(a["category_id"]) not in self.label_of:
                continue
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if bw < 1 or bh < 1:
                continue
            boxes.append([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
            labels.append(self.label_of[int(a["category_id"])])
            if self.masks:
                masks.append(self._mask(a, h, w, rh, rw))
        ih, iw = self.input_hw
        t_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        t_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, ih, iw), dtype=torch.uint8)
        img = torch.from_numpy(image) / 255.0
        # flips act on the whole letterboxed canvas, so boxes flip about the canvas edges
        if self.hflip and self.rng.random() < 0.5:
            img = img.flip(-1)
            t_masks = t_masks.flip(-1)
            t_boxes = torch.stack([iw - t_boxes[:, 2], t_boxes[:, 1], iw - t_boxes[:, 0], t_boxes[:, 3]], dim=1)
        if self.vflip and self.rng.random() < 0.5:
            img = img.flip(-2)
            t_masks = t_masks.flip(-2)
            t_boxes = torch.stack([t_boxes[:, 0], ih - t_boxes[:, 3], t_boxes[:, 2], ih - t_boxes[:, 1]], dim=1)
        target = {
            "boxes": t_boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(int(info["id"])),
        }
        if self.masks:
            target["masks"] = t_masks
        return img.contiguous(), target

    def _mask(self, ann: Dict[str, Any], h: int, w: int, rh: int, rw: int) -> np.ndarray:
        m = _decode_mask(ann, h, w)
        if (rh, rw) != (h, w):
            from PIL import Image

            m = np.asarray(Image.fromarray(m * 255).resize((rw, rh), Image.Resampling.BILINEAR)) >= 128
        out = np.zeros(self.input_hw, dtype=np.uint8)
        out[:rh, :rw] = m[:rh, :rw]
        return out


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own flip stream (derived from torch's per-worker seed)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        dataset = cast(CocoInstances, info.dataset)  # the training DataLoader's (train.engine)
        dataset.rng = np.random.default_rng(info.seed % (2**32))


def collate(batch: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]) -> Tuple[List[torch.Tensor], List[Dict]]:
    images, targets = zip(*batch)
    return list(images), list(targets)
