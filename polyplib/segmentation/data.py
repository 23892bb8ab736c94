"""Training data for segmentation: real and synthetic pairs in memory, augmentation, the mixing rule.

Why it looks like this: every random choice (train/val split, small subsets, which synthetic samples
join a real image, data order, augmentation) is drawn from a generator seeded by (seed, epoch) or
(seed, epoch, position). The draws of an epoch therefore never depend on what earlier epochs
consumed, which is what lets a killed training resume to the identical weights, and lets DataLoader
workers augment without sharing random state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import StageError
from ..synthetic.folder import read_manifest

AUGMENTATIONS = ("none", "control")


def control_augmentation():
    """The paper's "Control" augmentation (its albumentations 1.x pipeline, in albumentations 2).

    albumentations 2's ``ShiftScaleRotate`` is a wrapper of ``Affine`` with ``keep_ratio=False``:
    it scales x and y independently, unlike the isotropic 1.x transform the paper used. ``Affine``
    with ``keep_ratio=True`` restores the paper's semantics: scale 0.5-1.5, shift +-10 % per axis,
    no rotation, zero (black) border as in the authors' code (border_mode=0), always applied.
    """
    import albumentations as A
    import cv2

    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.5, 1.5), keep_ratio=True, translate_percent=(-0.1, 0.1), rotate=0, shear=0,
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
        A.OneOf([A.CLAHE(p=1.0), A.RandomBrightnessContrast(p=1.0), A.RandomGamma(p=1.0)], p=0.9),
    ])


def make_augmentation(name: str):
    """None for "none", the Control pipeline for "control"."""
    if name not in AUGMENTATIONS:
        raise StageError(f"unknown augmentation '{name}'; allowed: {', '.join(AUGMENTATIONS)}")
    return control_augmentation() if name == "control" else None


# ------------------------------------------------------------------------------------ pairs
@dataclass
class PairPool:
    """Pairs in memory: images uint8 NxHxWx3, masks bool NxHxW, and one row of metadata per pair."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    source_ids: list[str]          # the real image a pair was made from (itself for real pairs)
    synthetic: np.ndarray          # bool per pair

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> "PairPool":
        idx = np.asarray(list(indices), dtype=int)
        return PairPool(self.images[idx], self.masks[idx], [self.ids[i] for i in idx],
                        [self.source_ids[i] for i in idx], self.synthetic[idx])

    def index(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.ids)}


def _fit(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a pair to size x size when it is not already (synthetic sets may differ)."""
    if image.shape[:2] == (size, size) and mask.shape == (size, size):
        return image, mask
    import cv2

    img = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    msk = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return img, msk


def load_pool(dataset, ids: Sequence[str], size: int, source_ids: Sequence[str] | None = None,
              synthetic: bool = False) -> PairPool:
    """Read the pairs ``ids`` of a PreparedSet into memory at size x size."""
    ids = list(ids)
    images = np.zeros((len(ids), size, size, 3), np.uint8)
    masks = np.zeros((len(ids), size, size), bool)
    for i, pid in enumerate(ids):
        images[i], masks[i] = _fit(*dataset.load(pid), size)
    src = list(source_ids) if source_ids is not None else list(ids)
    return PairPool(images, masks, ids, [str(s) for s in src], np.full(len(ids), synthetic))


def is_unconditional(manifest: pd.DataFrame) -> bool:
    """A set drawn without source images (the GAN, unconditional sampling): no row names one."""
    return len(manifest) > 0 and not manifest["source_id"].astype(str).str.len().any()


def load_synthetic_pool(folder: str | Path, source_ids: Sequence[str], size: int) -> PairPool:
    """Accepted synthetic pairs made from the real images ``source_ids``.

    A set drawn without source images is dealt out to ``source_ids`` in turn (pair i goes to
    ``source_ids[i % n]``, manifest order), so "N synthetic pairs per real image" and the mixing rule
    mean the same amount of synthetic data for every kind of set; call it once with all training ids
    so that a pair is never dealt to both a fitting and a validation image."""
    from ..data.prepared import PreparedSet

    manifest = read_manifest(folder)
    wanted = list(map(str, source_ids))
    if is_unconditional(manifest) and wanted:
        manifest = manifest.sort_values("id", kind="stable").reset_index(drop=True)
        manifest = manifest.assign(source_id=[wanted[i % len(wanted)] for i in range(len(manifest))],
                                   sample_index=[i // len(wanted) for i in range(len(manifest))])
        manifest = manifest.sort_values(["source_id", "sample_index"], kind="stable").reset_index(drop=True)
    manifest = manifest[manifest["source_id"].isin(set(wanted))]
    ds = PreparedSet(folder)
    return load_pool(ds, manifest["id"].tolist(), size, manifest["source_id"].tolist(), synthetic=True)


def by_source(pool: PairPool) -> dict[str, list[int]]:
    """Indices of a synthetic pool grouped by the real image they were made from (in pool order)."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(pool.source_ids):
        out.setdefault(s, []).append(i)
    return out


# ------------------------------------------------------------------------------------ splits
def split_train_val(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded 80/20 (val_fraction) split of the real training ids; at least one on each side."""
    ids = sorted(ids)
    if len(ids) < 2:
        raise StageError(f"need at least 2 training images for a train/val split, got {len(ids)}")
    n_val = min(len(ids) - 1, max(1, int(round(len(ids) * val_fraction))))
    perm = np.random.default_rng([seed, 8101]).permutation(len(ids))
    val = sorted(ids[i] for i in perm[:n_val])
    keep = set(val)
    return [i for i in ids if i not in keep], val


def small_subset(ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded subset of n training ids (the small-data study); all of them if n >= len(ids)."""
    ids = sorted(ids)
    if n >= len(ids):
        return ids
    pick = np.random.default_rng([seed, 8102, n]).choice(len(ids), size=n, replace=False)
    return sorted(ids[i] for i in pick)


def first_per_source(pool: PairPool, n: int) -> list[int]:
    """Indices of the first ``n`` accepted samples (by sample order) of each source image."""
    return [i for idx in by_source(pool).values() for i in idx[:n]]


# ------------------------------------------------------------------------------------ epochs
def mix_epoch(n_real: int, synthetic_of: Sequence[Sequence[int]], alpha: float, r: int,
              rng: np.random.Generator) -> list[tuple[int, int]]:
    """The paper's mixing rule for one epoch: every real image is used; with probability ``alpha``
    it is joined by ``r`` of its own synthetic samples (drawn without replacement; all of them if it
    has fewer). Returns (pool, index) pairs: pool 0 = real, 1 = synthetic."""
    items = [(0, i) for i in range(n_real)]
    for i in range(n_real):
        own = synthetic_of[i]
        if rng.random() < alpha and len(own):
            chosen = rng.choice(len(own), size=min(r, len(own)), replace=False)
            items.extend((1, int(own[j])) for j in sorted(chosen))
    return items


@dataclass
class EpochPlan:
    """What one configuration trains on, epoch by epoch.

    ``real`` and ``synthetic`` are the pools; ``fixed`` lists (pool, index) items used every epoch
    (pool 0 = real, 1 = synthetic); with ``mix_r`` > 0 the mixing rule adds every real image and,
    afresh each epoch, synthetic samples of some of them (leave ``fixed`` empty then).
    """

    real: PairPool | None
    synthetic: PairPool | None
    fixed: list[tuple[int, int]]
    seed: int
    mix_alpha: float = 0.0
    mix_r: int = 0
    _synthetic_of: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.mix_r and self.real is not None and self.synthetic is not None:
            groups = by_source(self.synthetic)
            self._synthetic_of = [groups.get(s, []) for s in self.real.source_ids]

    def items(self, epoch: int) -> list[tuple[int, int, int]]:
        """Shuffled (pool, index, augmentation seed) items of an epoch; a pure function of
        (seed, epoch)."""
        rng = np.random.default_rng([self.seed, 8103, epoch])
        items = list(self.fixed)
        if self.mix_r and self.real is not None:
            items += mix_epoch(len(self.real), self._synthetic_of, self.mix_alpha, self.mix_r, rng)
        order = rng.permutation(len(items))
        aug_seeds = rng.integers(0, 2**31 - 1, size=len(items))
        return [(items[j][0], items[j][1], int(aug_seeds[k])) for k, j in enumerate(order)]

    def synthetic_fraction(self, epoch: int) -> float:
        items = self.items(epoch)
        return sum(1 for p, _, _ in items if p == 1) / max(1, len(items))


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by (pool, index, augmentation seed) items from an EpochPlan.

    Returns (image float 3xHxW normalised, mask float 1xHxW, synthetic: bool). Augmentation is seeded
    per item, so the result does not depend on which worker process draws it.
    """

    def __init__(self, pools: Sequence[PairPool | None], augmentation: str, mean, std):
        self.pools = list(pools)
        self.augment = make_augmentation(augmentation)
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)

    def __len__(self) -> int:          # only for DataLoader's bookkeeping; items come from a sampler
        return sum(len(p) for p in self.pools if p is not None)

    def __getitem__(self, item: tuple[int, int, int]):
        pool, index, seed = item
        p = self.pools[pool]
        image, mask = p.images[index], p.masks[index].astype(np.uint8)
        if self.augment is not None:
            self.augment.set_random_seed(int(seed))
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return (to_tensor(image, self.mean, self.std), torch.from_numpy(mask[None].astype(np.float32)),
                bool(p.synthetic[index]))


def to_tensor(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> normalised float 3xHxW."""
    x = (image.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def normalise_batch(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NxHxWx3 -> normalised float Nx3xHxW (evaluation: no augmentation)."""
    m = np.asarray(mean, np.float32).reshape(1, 1, 1, 3)
    s = np.asarray(std, np.float32).reshape(1, 1, 1, 3)
    x = (images.astype(np.float32) / 255.0 - m) / s
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
