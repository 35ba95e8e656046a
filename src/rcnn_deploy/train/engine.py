"""Training loop: torchvision's own Faster / Mask R-CNN R50-FPN (its losses, samplers and heads), trained
from scratch or fine-tuned on COCO-format data, saved as a deployable rcnn-deploy checkpoint.

Normalisation: with no pretrained weights torchvision builds the ResNet with ``nn.BatchNorm2d`` (trainable,
batch statistics); its state-dict entries (weight, bias, running_mean, running_var) are exactly what
``FrozenBatchNorm2d`` reads, so the saved checkpoint has the frozen-affine semantics of every torchvision
detection checkpoint. Fine-tuning from a checkpoint (``init``) keeps the frozen form.

Schedule: linear warm-up then cosine decay over ``epochs``; with ``time_budget_min`` the schedule's progress
is ``max(iterations done / planned, training minutes / budget)``, so a recipe finishes on time on any GPU.
``stop_after_min`` leaves early with a resumable state (``<output>.state.pt``); ``resume`` continues it.
Validation runs the *deploy* model (the one every backend is checked against) and scores it with COCO mAP.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch

from .._io import atomic_write, atomic_write_json, atomic_write_text
from ..config import get_spec
from ..runtime.preprocess import rgb_fill
from .data import CocoInstances, coco_label_map, collate, seed_worker

if TYPE_CHECKING:
    from ..config import ModelSpec
    from ..models.rcnn import DeployRCNN

TRAINABLE_MODELS = ("torchvision-maskrcnn", "torchvision-fasterrcnn")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    images: str
    annotations: str
    output: str
    model: str = "torchvision-maskrcnn"
    input_hw: Tuple[int, int] = (384, 384)
    epochs: int = 12
    batch: int = 8
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200
    clip_grad: float = 10.0
    amp: bool = True
    hflip: bool = True
    vflip: bool = False
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    val_max_images: int = 500
    time_budget_min: Optional[float] = None  # wall minutes of the training loop, validation included
    stop_after_min: Optional[float] = None
    max_iters: Optional[int] = None  # hard cap (smoke tests)
    init: Optional[str] = None  # fine-tune from these weights (torchvision / rcnn-deploy checkpoint)
    resume: Optional[str] = None
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    compress: str = "int8"
    log_every: int = 20


@dataclass
class TrainResult:
    checkpoint: Optional[Path]
    state: Path
    iterations: int
    train_seconds: float
    losses: List[float] = field(default_factory=list)  # mean total loss per logging window
    validation: List[Dict[str, Any]] = field(default_factory=list)
    finished: bool = True


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def build_torchvision_model(model: str, num_classes: int, input_hw: Tuple[int, int]) -> torch.nn.Module:
    """torchvision's trainable model whose internal resize is a no-op on letterboxed ``input_hw`` inputs."""
    from torchvision.models import detection

    if model not in TRAINABLE_MODELS:
        raise ValueError(f"training supports {', '.join(TRAINABLE_MODELS)}, not {model!r}")
    ctor = detection.maskrcnn_resnet50_fpn if model == "torchvision-maskrcnn" else detection.fasterrcnn_resnet50_fpn
    return ctor(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=min(input_hw),
        max_size=max(input_hw),
    )


def _param_groups(net: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay: List[torch.nn.Parameter] = []
    no_decay: List[torch.nn.Parameter] = []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(progress: float, iteration: int, warmup_iters: int) -> float:
    warm = min(1.0, (iteration + 1) / warmup_iters) if warmup_iters > 0 else 1.0
    warm = 0.001 + (1 - 0.001) * warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train per ``cfg``; returns where the checkpoint went and what happened. See the module docstring."""
    from ..data.synth import load_coco

    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    for what, v in (("epochs", cfg.epochs), ("batch", cfg.batch)):
        if v < 1:
            raise ValueError(f"{what} must be >= 1, got {v}")
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    coco = load_coco(cfg.annotations)
    class_names, category_ids = coco_label_map(coco)
    spec = get_spec(cfg.model, class_names, category_ids=tuple(category_ids))
    fill = rgb_fill(spec.pixel_mean, spec.channel_order)
    ds = CocoInstances(coco, Path(cfg.images), cfg.input_hw, fill, masks=spec.masks, hflip=cfg.hflip, vflip=cfg.vflip)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch,
        shuffle=True,
        num_workers=cfg.workers,
        collate_fn=collate,
        drop_last=len(ds) >= cfg.batch,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    net = build_torchvision_model(cfg.model, len(class_names), cfg.input_hw)
    if cfg.init:
        _load_init(net, cfg)
    net.to(device)
    groups = _param_groups(net, cfg.weight_decay)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    out = Path(cfg.output)
    state_path = out.with_name(out.name + ".state.pt")
    log_path = out.with_name(out.name + ".log.jsonl")
    iteration, epoch0, train_s, wall_prior = 0, 0, 0.0, 0.0
    history: List[Dict[str, Any]] = []
    if cfg.resume:
        st = torch.load(cfg.resume, map_location="cpu", weights_only=True)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        iteration, epoch0, train_s = int(st["iteration"]), int(st["epoch"]), float(st["train_seconds"])
        wall_prior = float(st.get("wall_seconds", train_s))
        history = json.loads(st.get("history", "[]"))
        log(f"resumed {cfg.resume}: iteration {iteration}, epoch {epoch0}, {train_s / 60:.1f} training minutes")
    planned = cfg.epochs * max(len(loader), 1)
    if cfg.max_iters is not None:
        planned = min(planned, cfg.max_iters)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    proc_start = time.time()
    amp = cfg.amp and device.type == "cuda"
    losses: List[float] = []
    window: List[float] = []

    loop_start, wall0 = time.time(), wall_prior

    def progress() -> float:
        # the time budget counts wall time of the loop (validation included), so a recipe ends on time
        p = iteration / planned
        return max(p, (wall0 + time.time() - loop_start) / budget_s) if budget_s else p

    log(
        f"training {cfg.model} on {len(ds)} images ({len(class_names) - 1} classes) at {cfg.input_hw[0]}x"
        f"{cfg.input_hw[1]}, batch {cfg.batch}, {cfg.optimizer} lr {cfg.lr}, device {device}"
        + (f", budget {cfg.time_budget_min} min" if budget_s else "")
    )
    finished = True
    epoch = epoch0
    while epoch < cfg.epochs and progress() < 1.0:
        net.train()
        t_epoch = time.time()
        for images, targets in loader:
            if progress() >= 1.0 or (cfg.max_iters is not None and iteration >= cfg.max_iters):
                break
            if cfg.stop_after_min is not None and time.time() - proc_start > cfg.stop_after_min * 60:
                finished = False
                break
            t0 = time.time()
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(progress(), iteration, cfg.warmup_iters)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss_dict = net(images, targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                parts = {k: round(float(v), 4) for k, v in loss_dict.items()}
                raise FloatingPointError(
                    f"loss became {loss.item()} at iteration {iteration} ({parts}); lower --lr or raise --warmup-iters"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
            opt.step()
            window.append(float(loss.detach()))  # syncs with the GPU, so train_s is honest
            train_s += time.time() - t0
            iteration += 1
            if iteration % cfg.log_every == 0 or iteration == planned:
                losses.append(sum(window) / len(window))
                log(
                    f"it {iteration}/{planned} epoch {epoch + 1} loss {losses[-1]:.4f} "
                    + " ".join(f"{k.replace('loss_', '')}={float(v.detach()):.3f}" for k, v in loss_dict.items())
                    + f" lr {opt.param_groups[0]['lr']:.5f} progress {progress():.2f} train {train_s / 60:.2f} min"
                )
                window = []
        epoch += 1
        if not finished:
            break
        if window:
            losses.append(sum(window) / len(window))
            window = []
        entry: Dict[str, Any] = {
            "epoch": epoch,
            "iteration": iteration,
            "train_minutes": round(train_s / 60, 3),
            "wall_minutes": round((wall0 + time.time() - loop_start) / 60, 3),
            "epoch_seconds": round(time.time() - t_epoch, 1),
            "loss": losses[-1] if losses else None,
        }
        if cfg.val_annotations:
            entry["val"] = validate(_deploy_model(net.state_dict(), spec), cfg, device)
            log(f"epoch {epoch} validation: " + _fmt_metrics(entry["val"]))
        history.append(entry)
        atomic_write_text(log_path, "".join(json.dumps(h) + "\n" for h in history))
        if cfg.max_iters is not None and iteration >= cfg.max_iters:
            break
    wall_s = wall0 + time.time() - loop_start
    _save_state(state_path, net, opt, iteration, epoch, train_s, wall_s, history, cfg)
    result = TrainResult(None, state_path, iteration, train_s, losses, history, finished)
    if not finished:
        log(f"stopped after {cfg.stop_after_min} min at iteration {iteration}; continue with --resume {state_path}")
        return result
    meta = {
        "recipe": {k: v for k, v in asdict(cfg).items() if k not in ("resume",)},
        "iterations": iteration,
        "train_minutes": round(train_s / 60, 2),
        "wall_minutes": round(wall_s / 60, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": str(torch.__version__),
        "history": history,
    }
    from ..models.checkpoint import save_checkpoint

    weights = net.state_dict()

    def save() -> None:
        save_checkpoint(
            out,
            weights,
            model=cfg.model,
            class_names=class_names,
            category_ids=category_ids,
            input_hw=cfg.input_hw,
            compress=cfg.compress,
            meta=meta,
        )

    save()
    result.checkpoint = out
    if cfg.val_annotations:
        # the saved (compressed) weights are the model: score them, and record the score in the file
        val = validate_checkpoint(out, cfg, device)
        meta["val_checkpoint"] = val
        save()
        log(f"checkpoint {out} ({cfg.compress}) validation: " + _fmt_metrics(val))
    log(f"saved {out} ({out.stat().st_size / 2**20:.1f} MiB) after {iteration} iterations, {train_s / 60:.1f} min")
    return result


def _fmt_metrics(val: Dict[str, Dict[str, float]]) -> str:
    return ", ".join(f"{t} AP {m['AP']:.4f} AP50 {m['AP50']:.4f}" for t, m in val.items() if isinstance(m, dict))


def _save_state(
    path: Path,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    iteration: int,
    epoch: int,
    train_s: float,
    wall_s: float,
    history: List[Dict[str, Any]],
    cfg: TrainConfig,
) -> None:
    st = {
        "wall_seconds": wall_s,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "iteration": iteration,
        "epoch": epoch,
        "train_seconds": train_s,
        "history": json.dumps(history),
        "config": json.dumps(asdict(cfg)),
    }
    atomic_write(path, lambda p: torch.save(st, p))


def _load_init(net: torch.nn.Module, cfg: TrainConfig) -> None:
    """Fine-tuning start: every tensor of ``cfg.init`` whose name and shape match (class-specific predictor
    layers of a different class count are left at their fresh initialisation)."""
    from ..models.weights import load_checkpoint

    assert cfg.init is not None  # called only when it is set
    loaded = load_checkpoint(cfg.init, "auto", masks=cfg.model == "torchvision-maskrcnn")
    own = net.state_dict()
    take = {k: v for k, v in loaded.state_dict.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(take, strict=False)


def validate(net: DeployRCNN, cfg: TrainConfig, device: torch.device) -> Dict[str, Dict[str, float]]:
    """COCO mAP of a deploy-form model (``DeployRCNN``) on the validation split."""
    from ..api import Detector
    from ..evaluation.dataset import evaluate_detector

    assert cfg.val_annotations is not None
    det = Detector.from_module(net, cfg.input_hw, batch=8, device=str(device))
    images_dir = cfg.val_images or os.path.join(os.path.dirname(cfg.val_annotations), "images")
    return evaluate_detector(det, cfg.val_annotations, images_dir, max_images=cfg.val_max_images)["metrics"]


def _deploy_model(state_dict: Dict[str, torch.Tensor], spec: ModelSpec) -> DeployRCNN:
    """The deploy-form model with the training weights (BatchNorm statistics read as frozen BN)."""
    from ..models.rcnn import DeployRCNN

    net = DeployRCNN(spec)
    net.load_state_dict({k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")})
    return net


def validate_checkpoint(path: Path, cfg: TrainConfig, device: torch.device) -> Dict[str, Dict[str, float]]:
    from ..models.build import build_model

    return validate(build_model(cfg.model, str(path)), cfg, device)


def write_summary(path: Path, result: TrainResult) -> None:
    atomic_write_json(
        path,
        {
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "iterations": result.iterations,
            "train_minutes": round(result.train_seconds / 60, 3),
            "losses": result.losses,
            "validation": result.validation,
            "finished": result.finished,
        },
    )
