"""Metrics of the segmentation study: per-image Dice and IoU, bootstrap intervals, paired tests.

The reduction, stated once: a predicted mask is the sigmoid of the logits thresholded at 0.5; Dice
and IoU are computed **per image** (an image whose ground truth and prediction are both empty scores
1, one empty and the other not scores 0) and then averaged over images. Several training seeds of one
configuration are averaged per image first. The 95 % interval is a percentile bootstrap over test
images (seeded); a regime is compared with real-only training on the same test images by the
Wilcoxon signed-rank test on those per-image, seed-averaged IoUs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of one binary mask pair; both empty -> (1, 1)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    inter = np.logical_and(pred, gt).sum()
    total = pred.sum() + gt.sum()
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return float(2 * inter / total), float(inter / union)


def pair_scores(pred: np.ndarray, gt: np.ndarray, ids=None) -> pd.DataFrame:
    """Per-image Dice and IoU of N predicted vs ground-truth masks (N x H x W, bool)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    p, g = pred.reshape(len(pred), -1), gt.reshape(len(gt), -1)
    inter = np.logical_and(p, g).sum(1).astype(np.float64)
    total = (p.sum(1) + g.sum(1)).astype(np.float64)
    union = total - inter
    empty = total == 0
    dice = np.where(empty, 1.0, 2 * inter / np.where(empty, 1, total))
    iou = np.where(empty, 1.0, inter / np.where(empty, 1, union))
    df = pd.DataFrame({"dice": dice, "iou": iou})
    if ids is not None:
        df.insert(0, "image_id", list(ids))
    return df


def predict_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model logits for any input size: zero-padded up to the encoder's output stride, cropped back."""
    stride = int(getattr(getattr(model, "encoder", None), "output_stride", 32) or 32)
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    out = model(x)
    return out[..., :h, :w]


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: np.ndarray, mean, std, device: str = "cpu",
                  batch_size: int = 16) -> np.ndarray:
    """Binary masks (N x H x W bool) for uint8 images N x H x W x 3."""
    from .data import normalise_batch

    model.eval().to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = normalise_batch(images[i:i + batch_size], mean, std).to(device)
        out.append((predict_logits(model, x)[:, 0] > 0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], bool)


def evaluate_model(model, pool, mean, std, device: str = "cpu", batch_size: int = 16) -> pd.DataFrame:
    """Per-image Dice and IoU of a model on a pool of pairs (the real test set)."""
    pred = predict_masks(model, pool.images, mean, std, device, batch_size)
    return pair_scores(pred, pool.masks, pool.ids)


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean, resampling the values."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng([seed, 8104])
    means = v[rng.integers(0, len(v), size=(n_resamples, len(v)))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summarise(per_image: pd.DataFrame, by: list[str], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per group: per-image scores averaged over seeds, then mean and bootstrap 95 % CI over
    images; plus the spread of the per-seed means (sd over seeds)."""
    rows = []
    for key, g in per_image.groupby(by, dropna=False, sort=False):
        img = g.groupby("image_id")[["dice", "iou"]].mean()
        seed_means = g.groupby("seed")[["dice", "iou"]].mean()
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(n_seeds=int(g["seed"].nunique()), n_images=len(img))
        for metric in ("dice", "iou"):
            mean, lo, hi = bootstrap_ci(img[metric], n_resamples, seed)
            row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi,
                        f"{metric}_seed_sd": float(seed_means[metric].std(ddof=1)) if len(seed_means) > 1 else 0.0})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_test(a: pd.Series, b: pd.Series, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Wilcoxon signed-rank test of per-image scores ``a`` vs ``b`` (indexed by image id, matched).

    Returns the mean difference a - b with its bootstrap 95 % CI, the number of images and p.
    All differences zero -> p = 1 (no evidence of a difference)."""
    from scipy.stats import wilcoxon

    a, b = a.align(b, join="inner")
    d = (a - b).to_numpy(np.float64)
    mean, lo, hi = bootstrap_ci(d, n_resamples, seed)
    if len(d) == 0:
        p = float("nan")
    elif np.all(d == 0):
        p = 1.0
    else:
        p = float(wilcoxon(a.to_numpy(), b.to_numpy(), zero_method="wilcox").pvalue)
    return {"n_images": int(len(d)), "diff": mean, "diff_lo": lo, "diff_hi": hi, "p": p}
