"""The paper's segmentation training protocol, resumable: Dice loss, Adam with one learning-rate drop,
best checkpoint by validation IoU; optionally stopped early when validation IoU stops improving.

Why resumable and how: after every epoch the model, optimiser, torch RNG state, the epoch log and the
best epoch so far (per validation pool) are written atomically to ``checkpoint.pt``; the best model so
far is kept as an smp ``save_pretrained`` folder. Everything an epoch draws comes from (seed, epoch)
(see :mod:`.data`), the learning rate is a function of the epoch and the stopping rule a function of
the log, so a training killed at any point and resumed ends with exactly the weights, and stops at
exactly the epoch, of an uninterrupted one (on CPU).

Early stopping (``patience``): training stops once ``patience`` epochs have passed without a new best
validation IoU of the selecting pool, or at ``epochs`` (the maximum), whichever comes first. The
paper has no patience: all epochs run and the best checkpoint is kept. A run whose best epoch is its
last one was still improving when it stopped (``best_is_last``): more epochs might have helped.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from ..progress import tqdm

from ..runs import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from .data import EpochPlan, PairDataset, PairPool
from .evaluate import pair_scores, predict_logits
from .models import save_model
from ..training import memory_format, resolve_device


@dataclass
class TrainSettings:
    """The protocol's knobs (defaults: the paper's)."""

    epochs: int = 150                 # with patience: the most epochs a training may run
    patience: int | None = None       # stop after this many epochs without a better val IoU; None: never
    lr: float = 1e-4
    lr_drop_epoch: int = 50
    lr_after_drop: float = 1e-5
    batch_size: int = 16
    augmentation: str = "none"
    synthetic_weight: float = 1.0     # the synthetic pairs' weight in the loss (1: one Dice loss over the batch)
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    progress: bool = False

    @classmethod
    def of(cls, cfg, augmentation: str, seed: int, synthetic_weight: float = 1.0) -> "TrainSettings":
        """The run's protocol (``segmentation.*``, ``run.*``) for one augmentation, seed and synthetic weight."""
        s = cfg.segmentation
        return cls(epochs=s.epochs, patience=s.patience, lr=s.lr, lr_drop_epoch=s.lr_drop_epoch,
                   lr_after_drop=s.lr_after_drop, batch_size=s.batch_size, augmentation=augmentation,
                   synthetic_weight=synthetic_weight, seed=seed, num_workers=s.num_workers, device=cfg.run.device,
                   progress=cfg.run.progress)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a (0-based) epoch: lr, then lr_after_drop from lr_drop_epoch on."""
        return self.lr if epoch < self.lr_drop_epoch else self.lr_after_drop

    def stop_reason(self, epochs_run: int, best_epoch: int) -> str | None:
        """Why training stops after ``epochs_run`` epochs with its best at ``best_epoch`` (1-based; < 1
        before any): "patience" once ``patience`` epochs passed without a new best, "max_epochs" at
        ``epochs``, else None (go on)."""
        if self.patience is not None and epochs_run - max(best_epoch, 0) >= self.patience:
            return "patience"
        return "max_epochs" if epochs_run >= self.epochs else None


def dice_loss():
    """The paper's loss: smp DiceLoss, binary mode, on logits."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True)


def batch_loss(loss_fn, logits: torch.Tensor, target: torch.Tensor, synthetic: torch.Tensor,
               weight: float = 1.0) -> torch.Tensor:
    """The loss of one batch. Weight 1 (the paper) or a batch without synthetic pairs: ``loss_fn`` over
    the whole batch. Otherwise the loss of the real part and of the synthetic part, each weighted by its
    number of pairs, the synthetic ones by ``weight`` too: a synthetic pair counts ``weight`` real ones."""
    if weight == 1.0 or not bool(synthetic.any()):
        return loss_fn(logits, target)
    parts = [(~synthetic, 1.0), (synthetic, weight)]
    total = sum(float(mask.sum()) * w for mask, w in parts)
    if total == 0.0:                      # only synthetic pairs, weighted 0: nothing to learn from
        return logits.sum() * 0.0
    return sum(float(mask.sum()) * w * loss_fn(logits[mask], target[mask])
               for mask, w in parts if w > 0 and bool(mask.any())) / total


class _EpochSampler(torch.utils.data.Sampler):
    """Yields the current epoch's items; set afresh each epoch (workers may persist)."""

    def __init__(self) -> None:
        self.items: list = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def model_folder(pool: str, select: str) -> str:
    """The folder (under a training folder) of the best model by validation pool ``pool``: ``model``
    for the selecting pool, ``model-<pool>`` for every other one."""
    return "model" if pool == select else f"model-{pool}"


def train_model(model: torch.nn.Module, plan: EpochPlan, val: PairPool | dict[str, PairPool], folder: str | Path,
                settings: TrainSettings, mean, std, *, name: str = "train", select: str | None = None,
                on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``model`` on ``plan``, validate each epoch, keep the best by validation IoU.

    ``val`` is one pool, or several by name (e.g. {"synthetic": ..., "real": ...}), all validated every
    epoch; ``select`` (default: the first) names the one whose IoU picks ``folder/model/`` and drives
    ``settings.patience``. Every other pool keeps its own best model in ``folder/model-<name>/``.
    Writes ``folder/checkpoint.pt`` (resume state), ``folder/log.csv`` (one row per epoch: ``val_iou``
    etc. of the selecting pool and, for named pools, ``val_iou_<name>`` of each), the model folders
    and ``folder/train.json`` when finished: epochs_run, max_epochs, patience, stopped ("patience" |
    "max_epochs"), best_epoch, best_val_iou, best_is_last, and ``best_by`` (per pool: epoch, val IoU,
    model folder). A finished folder is not trained again; an unfinished one resumes after its last
    epoch. ``on_epoch_end(epoch, row)`` is called after each epoch's checkpoint (tests use it to kill).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    named = isinstance(val, dict)
    pools = dict(val) if named else {"val": val}
    select = select if select is not None else next(iter(pools))
    if select not in pools:
        raise ValueError(f"select={select!r} is not one of the validation pools {list(pools)}")
    done = folder / "train.json"
    if done.exists() and all((folder / model_folder(p, select) / "config.json").exists() for p in pools):
        return json.loads(done.read_text())
    device = str(resolve_device(settings.device))
    layout = memory_format(device)
    model.to(device, memory_format=layout)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = dice_loss()
    start, log, seconds = 0, [], 0.0
    best = {p: {"epoch": -1, "val_iou": -1.0} for p in pools}
    ckpt = folder / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)   # RNG state must stay on CPU
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, log, best, seconds = state["epoch"], state["log"], state["best"], state["seconds"]
    dataset = PairDataset([plan.real, plan.synthetic], settings.augmentation, mean, std)
    sampler = _EpochSampler()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.num_workers,
        persistent_workers=settings.num_workers > 0, pin_memory=device == "cuda")
    bar = tqdm(total=settings.epochs, desc=name, initial=start, disable=not settings.progress, leave=False)
    epoch = start
    while (stopped := settings.stop_reason(epoch, best[select]["epoch"])) is None:
        t0 = time.perf_counter()
        items = plan.items(epoch)
        sampler.items = items
        lr = settings.lr_at(epoch)
        for group in optimiser.param_groups:
            group["lr"] = lr
        model.train()
        losses, seen = [], 0
        for x, y, synthetic in loader:
            if len(x) < 2:          # BatchNorm cannot train on a single sample; only a trailing one
                continue
            x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            loss = batch_loss(loss_fn, predict_logits(model, x), y, synthetic.to(device), settings.synthetic_weight)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            seen += len(x)
        train_s = time.perf_counter() - t0
        scores = {p: validate(model, pool, mean, std, device, settings.batch_size, loss_fn)
                  for p, pool in pools.items()}
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        for p, (val_scores, val_loss) in scores.items():
            metrics = {"val_loss": val_loss, "val_dice": float(val_scores["dice"].mean()),
                       "val_iou": float(val_scores["iou"].mean())}
            if p == select:
                row.update(metrics)
            if named:
                row.update({f"{k}_{p}": v for k, v in metrics.items()})
        row.update({"samples": seen,
                    "synthetic_fraction": sum(1 for part, _, _ in items if part == 1) / max(1, len(items)),
                    "train_seconds": train_s, "seconds": time.perf_counter() - t0})
        seconds += row["seconds"]
        log.append(row)
        for p in pools:
            iou = row[f"val_iou_{p}"] if named else row["val_iou"]
            if iou > best[p]["val_iou"]:
                best[p] = {"epoch": epoch + 1, "val_iou": iou}
                with atomic_dir(folder / model_folder(p, select)) as tmp:
                    save_model(model, tmp)
        epoch += 1
        atomic_write_text(folder / "log.csv", pd.DataFrame(log).to_csv(index=False))
        atomic_write_bytes(ckpt, _state_bytes({
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimiser.state_dict(),
            "torch_rng": torch.get_rng_state(), "log": log, "best": best, "seconds": seconds}))
        bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_iou=f"{row['val_iou']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    bar.close()
    images = int(sum(r["samples"] for r in log))
    summary = {"epochs_run": epoch, "max_epochs": settings.epochs, "patience": settings.patience,
               "stopped": stopped, "best_epoch": best[select]["epoch"], "best_val_iou": best[select]["val_iou"],
               "best_is_last": best[select]["epoch"] == epoch, "validation": select,
               "best_by": {p: {**b, "model": model_folder(p, select)} for p, b in best.items()},
               "seconds": seconds, "train_images": images,
               "train_images_per_s": images / max(1e-9, sum(r["train_seconds"] for r in log)),
               "settings": asdict(settings), "device": device}
    atomic_write_json(done, summary)
    ckpt.unlink(missing_ok=True)      # the resume state is large (optimiser moments); no longer needed
    return summary


@torch.no_grad()
def validate(model, pool: PairPool, mean, std, device: str, batch_size: int, loss_fn=None):
    """Per-image Dice/IoU on a pool (threshold 0.5 on the sigmoid) and the mean batch loss."""
    from .data import normalise_batch

    model.eval()
    preds, losses = [], []
    for i in range(0, len(pool), batch_size):
        x = normalise_batch(pool.images[i:i + batch_size], mean, std).to(device)
        logits = predict_logits(model, x)
        if loss_fn is not None:
            y = torch.from_numpy(pool.masks[i:i + batch_size, None].astype(np.float32)).to(device)
            losses.append(float(loss_fn(logits, y)) * len(x))
        preds.append((logits[:, 0] > 0).cpu().numpy())
    pred = np.concatenate(preds) if preds else np.zeros((0,) + pool.masks.shape[1:], bool)
    scores = pair_scores(pred, pool.masks)
    return scores, (sum(losses) / max(1, len(pool)) if losses else float("nan"))
