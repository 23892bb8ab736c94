"""The paper's segmentation training protocol, resumable: Dice loss, Adam with one learning-rate drop,
best checkpoint by validation IoU.

Why resumable and how: after every epoch the model, optimiser, torch RNG state and the epoch log are
written atomically to ``checkpoint.pt``; the best model so far is kept as an smp ``save_pretrained``
folder. Everything an epoch draws comes from (seed, epoch) (see :mod:`.data`) and the learning rate
is a function of the epoch, so a training killed at any point and resumed ends with exactly the
weights of an uninterrupted one (on CPU).
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
from ..training import resolve_device


@dataclass
class TrainSettings:
    """The protocol's knobs (defaults: the paper's)."""

    epochs: int = 150
    lr: float = 1e-4
    lr_drop_epoch: int = 50
    lr_after_drop: float = 1e-5
    batch_size: int = 16
    augmentation: str = "none"
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    progress: bool = False

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a (0-based) epoch: lr, then lr_after_drop from lr_drop_epoch on."""
        return self.lr if epoch < self.lr_drop_epoch else self.lr_after_drop


def dice_loss():
    """The paper's loss: smp DiceLoss, binary mode, on logits."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True)


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


def train_model(model: torch.nn.Module, plan: EpochPlan, val: PairPool, folder: str | Path,
                settings: TrainSettings, mean, std, *, name: str = "train",
                on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``model`` on ``plan``, validate on ``val`` each epoch, keep the best by val IoU.

    Writes ``folder/checkpoint.pt`` (resume state), ``folder/log.csv`` (one row per epoch),
    ``folder/model/`` (best model, smp save_pretrained) and ``folder/train.json`` when finished.
    A finished folder is not trained again; an unfinished one resumes after its last epoch.
    ``on_epoch_end(epoch, row)`` is called after each epoch's checkpoint (tests use it to kill).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "train.json"
    if done.exists() and (folder / "model" / "config.json").exists():
        return json.loads(done.read_text())
    device = str(resolve_device(settings.device))
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = dice_loss()
    start, log, best_iou, best_epoch, seconds = 0, [], -1.0, -1, 0.0
    ckpt = folder / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)   # RNG state must stay on CPU
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, log = state["epoch"], state["log"]
        best_iou, best_epoch, seconds = state["best_iou"], state["best_epoch"], state["seconds"]
    dataset = PairDataset([plan.real, plan.synthetic], settings.augmentation, mean, std)
    sampler = _EpochSampler()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.num_workers,
        persistent_workers=settings.num_workers > 0, pin_memory=device == "cuda")
    bar = tqdm(range(start, settings.epochs), desc=name, total=settings.epochs, initial=start,
               disable=not settings.progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        items = plan.items(epoch)
        sampler.items = items
        lr = settings.lr_at(epoch)
        for group in optimiser.param_groups:
            group["lr"] = lr
        model.train()
        losses, seen = [], 0
        for x, y in loader:
            if len(x) < 2:          # BatchNorm cannot train on a single sample; only a trailing one
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(predict_logits(model, x), y)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            seen += len(x)
        train_s = time.perf_counter() - t0
        val_scores, val_loss = validate(model, val, mean, std, device, settings.batch_size, loss_fn)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_loss": val_loss, "val_dice": float(val_scores["dice"].mean()),
               "val_iou": float(val_scores["iou"].mean()), "samples": seen,
               "synthetic_fraction": sum(1 for p, _, _ in items if p == 1) / max(1, len(items)),
               "train_seconds": train_s, "seconds": time.perf_counter() - t0}
        seconds += row["seconds"]
        log.append(row)
        if row["val_iou"] > best_iou:
            best_iou, best_epoch = row["val_iou"], epoch + 1
            with atomic_dir(folder / "model") as tmp:
                save_model(model, tmp)
        atomic_write_text(folder / "log.csv", pd.DataFrame(log).to_csv(index=False))
        atomic_write_bytes(ckpt, _state_bytes({
            "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimiser.state_dict(),
            "torch_rng": torch.get_rng_state(), "log": log, "best_iou": best_iou,
            "best_epoch": best_epoch, "seconds": seconds}))
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_iou=f"{row['val_iou']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    bar.close()
    images = int(sum(r["samples"] for r in log))
    summary = {"epochs": settings.epochs, "best_epoch": best_epoch, "best_val_iou": best_iou,
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
