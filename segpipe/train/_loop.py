"""The training loop: batches, loss, optimiser, validation, checkpoints, the saved model."""

from __future__ import annotations

import collections
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import ConfigError
from segpipe.metrics import instance_metrics
from segpipe.train._augment import (
    instance_target,
    intensity_jitter,
    random_zoom,
    sample_crop,
    stain_jitter,
)
from segpipe.train._config import TrainConfig, TrainResult
from segpipe.train._data import Item
from segpipe.train._sources import synthetic_items, synthetic_kind, train_val_items

__all__ = ["train", "make_card", "soft_dice_loss"]


# ------------------------------------------------------------------ model card


def make_card(cfg: TrainConfig) -> Any:
    """The model card the trained network will carry (the built-in card for built-in names)."""
    from segpipe.models import (
        BUILTIN_CARDS,
        INSTANCE_OUTPUTS,
        ModelCard,
    )
    from segpipe.models.unet import PRESETS as UNET_PRESETS
    from segpipe.models.unet import halo_for

    arch = cfg.architecture
    base = BUILTIN_CARDS.get(cfg.name)
    depth = len(cfg.widths if cfg.widths is not None else UNET_PRESETS[cfg.preset]) - 1
    halo = halo_for(depth, cfg.context, truncate=cfg.context_truncate)
    fields: dict[str, Any] = {}
    if base is not None and base.task == cfg.task and base.architecture.get("type") == "unet":
        fields = base.model_dump()
    fields.update(
        name=cfg.name,
        task=cfg.task,
        classes=list(cfg.classes) if cfg.classes else ["background", "object"],
        in_channels=cfg.in_channels,
        channel_mode=cfg.channel_mode,
        mpp=cfg.mpp,
        architecture=arch,
        sha256=None,
    )
    if not (base is not None and base.architecture == arch):
        fields.update(halo=halo, tile=512 + 2 * halo)
    fields["outputs"] = INSTANCE_OUTPUTS if cfg.task == "instance" else list(fields["classes"])
    fields.setdefault("postprocess", {"min_size": 16} if cfg.task == "semantic" else
                      {"seed_threshold": 0.5, "mask_threshold": 0.5, "min_size": 16})
    fields.setdefault("description", f"{cfg.task} model trained with segpipe.train")
    return ModelCard(**fields)


# ------------------------------------------------------------------ batches


class Batcher:
    """Makes reproducible batches: step ``s`` draws from ``default_rng([seed, s])``."""

    def __init__(self, cfg: TrainConfig, card: Any, items: list[Item]) -> None:
        from segpipe.normalize import image_stats

        self.cfg, self.card = cfg, card
        self._stats = image_stats
        self.set_items(items)

    def set_items(self, items: list[Item]) -> None:
        if not items:
            raise ConfigError("no training images: check the data option")
        self.items = items
        self.stats = [self._stats(it.thumb, self.card, it.modality) for it in items]
        # class-first balancing (semantic): foreground class -> indices of the items holding it
        self.holders: dict[int, list[int]] = {}
        if self.cfg.task == "semantic" and self.cfg.balance == "class":
            for i, it in enumerate(items):
                for k in it.index:
                    if k != 0:
                        self.holders.setdefault(int(k), []).append(i)

    def pick(self, rng: np.random.Generator) -> tuple[int, int | None]:
        """(item index, crop key for :func:`sample_crop`) of one training crop.

        With class-first balancing a share ``balanced`` of the crops is centred on a
        foreground class drawn uniformly (then an image holding it), so a class present in
        few images is seen as often as one present in all; the rest are uniform crops.
        """
        if not self.holders:
            return int(rng.integers(len(self.items))), None
        if rng.random() < self.cfg.balanced:
            keys = sorted(self.holders)
            k = keys[int(rng.integers(len(keys)))]
            owners = self.holders[k]
            return owners[int(rng.integers(len(owners)))], k
        return int(rng.integers(len(self.items))), -1

    def base_zoom(self, item: Item) -> float:
        if item.mpp and self.card.mpp:
            return float(item.mpp) / float(self.card.mpp)
        return 1.0

    def sample(self, i: int, rng: np.random.Generator, size: int, augment: bool,
               key: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from segpipe.normalize import prepare

        cfg, item = self.cfg, self.items[i]
        zoom = self.base_zoom(item) * (random_zoom(rng, cfg.scale_range) if augment else 1.0)
        raw, tgt = sample_crop(item, rng, size, zoom, augment, cfg.balanced if augment else 0.0, key)
        dtype = item.thumb.dtype if item.thumb is not None else np.float32
        if augment and cfg.stain_jitter and item.modality == "brightfield" and raw.shape[0] == 3 and rng.random() < 0.8:
            raw = stain_jitter(raw, rng)
        if np.dtype(dtype).kind in "ui":
            info = np.iinfo(dtype)
            raw = np.clip(np.rint(raw), info.min, info.max).astype(dtype)
        x = prepare(raw, self.stats[i], self.card, item.modality)
        if augment:
            x = intensity_jitter(x, rng, cfg.intensity)
        y = instance_target(tgt, cfg.boundary) if cfg.task == "instance" else tgt
        return x, y.astype(np.int64)

    def batch(self, step: int, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, stream, step])
        xs, ys = [], []
        for _ in range(self.cfg.batch_size):
            i, key = self.pick(rng) if self.cfg.augment else (int(rng.integers(len(self.items))), None)
            x, y = self.sample(i, rng, self.cfg.crop, self.cfg.augment, key)
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _loader_threads(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.loader_threads is not None:
        return cfg.loader_threads
    if device.type != "cuda":
        return 0  # the CPU's cores run the model
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _batches(
    batcher: Batcher, start: int, end: int, threads: int, pin: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``start .. end - 1``; with ``threads`` > 0 made ahead on a thread pool
    (numpy and scipy release the GIL in the heavy parts), ``pin``-ned for a fast copy to
    the GPU. Each batch depends only on its step, so the batches are the same either way."""
    if threads <= 0:
        for step in range(start, end):
            yield batcher.batch(step)
        return
    depth = 2 * threads
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: collections.deque[Future[tuple[torch.Tensor, torch.Tensor]]] = collections.deque()
        nxt = start
        while pending or nxt < end:
            while nxt < end and len(pending) < depth:
                pending.append(pool.submit(_made_batch, batcher, nxt, pin))
                nxt += 1
            yield pending.popleft().result()


def _made_batch(batcher: Batcher, step: int, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batcher.batch(step)
    return (x.pin_memory(), y.pin_memory()) if pin else (x, y)


def class_weights(cfg: TrainConfig, batcher: Batcher, n_classes: int) -> list[float]:
    """Given weights, or ``(median freq / freq) ** 0.5`` from a few batches, clipped to [0.2, 10]."""
    if cfg.class_weights is not None:
        return list(cfg.class_weights)
    counts = np.zeros(n_classes)
    for s in range(4):
        _, y = batcher.batch(s, stream=1)
        counts += np.bincount(y.numpy().ravel(), minlength=n_classes)[:n_classes]
    freq = np.maximum(counts / counts.sum(), 1e-4)
    w = np.clip(np.sqrt(np.median(freq) / freq), 0.2, 10.0)
    return [round(float(v), 4) for v in w / w.mean()]


# ------------------------------------------------------------------ loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - mean_k Dice_k`` of softmax probabilities against one-hot targets.

    Parameters
    ----------
    logits : (N, K, H, W) tensor
    target : (N, H, W) int64 tensor
    """
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, dice_weight: float) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target, weight=weights)
    return ce + dice_weight * soft_dice_loss(logits, target) if dice_weight else ce


# ------------------------------------------------------------------ validation


def validation_set(cfg: TrainConfig, card: Any, items: list[Item]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed, unaugmented validation inputs with their *original* targets (labels/classes):
    the central (up to) 512 × 512 px of each item at model resolution."""
    from segpipe.normalize import prepare

    b = Batcher(cfg, card, items)
    out = []
    for i, item in enumerate(items):
        zoom = b.base_zoom(item)
        size = max(32, min(512, int(min(item.shape) * zoom) // 16 * 16))
        raw, tgt = _center_crop(item, size, zoom)
        out.append((prepare(raw, b.stats[i], card, item.modality), tgt))
    return out


def _center_crop(item: Item, size: int, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    span = int(math.ceil(size / zoom))
    y0 = max(0, (item.shape[0] - span) // 2)
    x0 = max(0, (item.shape[1] - span) // 2)
    raw = item.read(y0, x0, y0 + span, x0 + span)
    tgt = item.read_target(y0, x0, y0 + span, x0 + span)
    if abs(zoom - 1.0) > 1e-6:
        f = size / span
        raw = np.stack([ndi.zoom(ch.astype(np.float32), f, order=1)[:size, :size] for ch in raw]).astype(raw.dtype)
        tgt = ndi.zoom(tgt, f, order=0)[:size, :size]
    return raw[:, :size, :size], tgt[:size, :size]


@torch.no_grad()
def validate(module: nn.Module, card: Any, cfg: TrainConfig, val: list[tuple[np.ndarray, np.ndarray]],
             weights: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Validation loss and metrics (instance: AP / F1 at IoU 0.5 pooled over images;
    semantic: mean IoU of the non-background classes)."""
    from segpipe.postprocess import to_labels

    module.eval()
    losses, tp, fp, fn, ap_sum, n_split, n_merged = [], 0, 0, 0, 0.0, 0, 0
    k = len(cfg.target_classes)
    cm = np.zeros((k, k), np.int64)
    for x, truth in val:
        h, w = x.shape[1:]
        ph, pw = (-h) % 16, (-w) % 16
        xt = torch.from_numpy(np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect"))[None].to(device)
        logits = module(xt)[..., :h, :w].float()
        target = instance_target(truth, cfg.boundary) if cfg.task == "instance" else truth
        losses.append(float(loss_fn(logits, torch.from_numpy(target.astype(np.int64))[None].to(device), weights, cfg.dice_weight)))
        probs = logits.softmax(1)[0].cpu().numpy()
        if cfg.task == "instance":
            seg = to_labels(probs, card)
            m = instance_metrics(truth, seg.labels, thresholds=(0.5, 0.75))
            tp, fp, fn = tp + m["tp"]["0.5"], fp + m["fp"]["0.5"], fn + m["fn"]["0.5"]
            ap_sum += m["ap"]["0.75"]
            n_split, n_merged = n_split + m["n_split"], n_merged + m["n_merged"]
        else:
            from segpipe.metrics import confusion_matrix

            cm += confusion_matrix(truth, probs.argmax(0), k)
    module.train()
    out = {"val_loss": float(np.mean(losses))}
    if cfg.task == "instance":
        out["ap50"] = tp / max(1, tp + fp + fn)
        out["f1_50"] = 2 * tp / max(1, 2 * tp + fp + fn)
        out["ap75_mean"] = ap_sum / max(1, len(val))
        out["split"], out["merged"] = float(n_split), float(n_merged)
        out["score"] = out["ap50"]
    else:
        from segpipe.metrics import iou_per_class

        iou = iou_per_class(cm)
        for name, v in zip(cfg.target_classes, iou, strict=True):
            out[f"iou_{name}"] = float(v)
        fg = iou[1:]
        out["miou_fg"] = float(np.nanmean(fg)) if np.isfinite(fg).any() else 0.0
        out["miou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        out["score"] = out[cfg.select]
    return out


# ------------------------------------------------------------------ loop


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(cfg.device)
    except RuntimeError:
        raise ConfigError(f"device {cfg.device!r} is not a torch device; use auto, cpu or cuda") from None


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.01)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_init(module: nn.Module, state: dict[str, torch.Tensor], source: Any) -> None:
    """Load ``state`` into ``module`` for fine-tuning; a convolution that now has more input
    channels (a U-Net given ``context`` bands) keeps the old weights for the first ones and
    starts the new ones at zero, so the network begins with the old one's output."""
    own = module.state_dict()
    fitted = {}
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            raise ConfigError(f"{source}: init weights have {key!r}, which this network lacks")
        if target.shape != value.shape:
            grows = (value.ndim == 4 and target.ndim == 4 and target.shape[0] == value.shape[0]
                     and target.shape[2:] == value.shape[2:] and target.shape[1] > value.shape[1])
            if not grows:
                raise ConfigError(f"{source}: init weight {key!r} has shape {tuple(value.shape)}, "
                                  f"this network needs {tuple(target.shape)}")
            padded = torch.zeros_like(target)
            padded[:, : value.shape[1]] = value
            value = padded
        fitted[key] = value
    module.load_state_dict(fitted)


def train(config: TrainConfig) -> TrainResult:
    """Train a U-Net as ``config`` says and save it with :func:`segpipe.models.save_model`.

    Parameters
    ----------
    config : TrainConfig
        Data, model, schedule, output path (see :class:`TrainConfig`).

    Returns
    -------
    TrainResult
        Paths of the weights and card, steps done, the saved weights' validation metrics,
        and the per-epoch history.

    Notes
    -----
    Reproducible on CPU: weights are initialised from ``torch.manual_seed(seed)`` and batch
    ``s`` is drawn from ``numpy.random.default_rng([seed, s])``; a resumed run therefore
    sees the same batches as an uninterrupted one. Every ``epoch_steps`` steps the model is
    validated and a checkpoint written (``<out>.ckpt``); the best weights (validation AP@0.5
    for instance models, mean foreground IoU for semantic ones) are the ones saved. Training
    stops early after ``patience`` epochs without improvement.
    """
    from segpipe.models import build_module, save_model

    cfg = config
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = _device(cfg)
    card = make_card(cfg)
    module = build_module(card).to(device)
    if cfg.init is not None and not cfg.resume:
        from segpipe.models import load_model

        load_init(module, load_model(cfg.init, device="cpu").module.state_dict(), cfg.init)
    train_items, val_items = train_val_items(cfg)
    batcher = Batcher(cfg, card, train_items)
    val = validation_set(cfg, card, val_items)
    kind = synthetic_kind(cfg.data)
    weights_list = class_weights(cfg, batcher, len(cfg.target_classes))
    weights = torch.tensor(weights_list, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(cfg, opt)
    step, history, best_score, best_state, bad = 0, [], -math.inf, _state(module), 0
    best_metrics: dict[str, float] = {}
    ckpt = cfg.checkpoint_path
    if cfg.resume:
        if not ckpt.exists():
            raise ConfigError(f"{ckpt}: no checkpoint to resume from; run without --resume first")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history, best_score = int(state["step"]), list(state["history"]), float(state["best_score"])
        best_state, bad, best_metrics = state["best_state"], int(state["bad"]), dict(state["best_metrics"])
    use_amp = cfg.amp and device.type == "cuda"
    loader = _loader_threads(cfg, device)
    stopped = bad >= cfg.patience
    leave_at = cfg.steps
    if cfg.stop_after is not None:  # rounded up to an epoch end, so a resumed run matches
        leave_at = min(cfg.steps, -(-(step + cfg.stop_after) // cfg.epoch_steps) * cfg.epoch_steps)
    progress = _Progress(cfg.progress, cfg.steps, step)
    module.train()
    try:
        while step < leave_at and not stopped:
            epoch = step // cfg.epoch_steps
            if kind is not None and epoch > 0 and cfg.data.startswith("synthetic:"):
                batcher.set_items(synthetic_items(kind, cfg.pool, cfg.synthetic_shape, cfg.seed, 1000 + epoch))
            losses = []
            t0 = time.perf_counter()
            end = min(leave_at, (epoch + 1) * cfg.epoch_steps)
            for x, y in _batches(batcher, step, end, loader, pin=device.type == "cuda"):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = module(x)
                loss = loss_fn(logits, y, weights, cfg.dice_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                losses.append(float(loss.detach()))
                progress.advance(losses[-1])
            metrics = validate(module, card, cfg, val, weights, device)
            entry = {"epoch": float(epoch), "step": float(step), "train_loss": float(np.mean(losses)),
                     "seconds": time.perf_counter() - t0, **metrics}
            history.append(entry)
            if metrics["score"] > best_score:
                best_score, best_state, bad, best_metrics = metrics["score"], _state(module), 0, metrics
            else:
                bad += 1
            stopped = bad >= cfg.patience
            progress.epoch(entry)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": _state(module), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "step": step, "history": history, "best_score": best_score, "best_state": best_state,
                        "bad": bad, "best_metrics": best_metrics}, ckpt)
    finally:
        progress.close()
    module.load_state_dict(best_state)
    tuning: dict[str, Any] | None = None
    if cfg.task == "instance" and cfg.tune_postprocess:
        from segpipe.models import ModelCard
        from segpipe.train._tune import tune_postprocess

        params, s_best, s_card = tune_postprocess(module, card, val, device)
        card = ModelCard(**{**card.model_dump(), "postprocess": params})
        tuning = {"postprocess": params, "val_ap50_tuned": s_best, "val_ap50_before": s_card}
    weights_path = save_model(module, card, cfg.out)
    card_path = weights_path.with_suffix(".json")
    _write_training_entry(cfg, card_path, step, best_metrics, weights_list, history, tuning)
    return TrainResult(weights=weights_path, card=card_path, steps=step, best_metrics=best_metrics,
                       history=history, stopped_early=stopped)


def _write_training_entry(cfg: TrainConfig, card_path: Path, steps: int, metrics: dict[str, float],
                          class_w: list[float], history: list[dict[str, float]],
                          tuning: dict[str, Any] | None = None) -> None:
    """Record how the model was made in the card's ``training`` field."""
    entry = {
        "command": cfg.command or " ".join(shlex.quote(a) for a in sys.argv),
        "data": cfg.data, "val_data": cfg.val_data or f"held out from {cfg.data}",
        "seed": cfg.seed, "steps": steps, "metrics": metrics, "class_weights": class_w,
        "config": json.loads(cfg.model_dump_json()), "epochs": len(history),
        "torch": torch.__version__,
    }
    if tuning is not None:
        entry["postprocess_tuning"] = tuning
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["training"] = entry
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


class _Progress:
    """A rich progress bar (when enabled) plus one line per epoch (always, on stderr)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        self.console = Console(stderr=True)
        if not enabled:
            return
        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                            console=self.console, transient=False)
        self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"))
        self.bar.start()

    def advance(self, loss: float) -> None:
        if self.enabled:
            self.bar.update(self.task, advance=1, loss=loss)

    def epoch(self, entry: dict[str, float]) -> None:
        parts = " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "epoch")
        self.console.print(f"epoch {int(entry['epoch'])}: {parts}", soft_wrap=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
