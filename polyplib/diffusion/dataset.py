"""Labelled pairs as the generators see them: 4-channel tensors (RGB + mask) in [-1, 1].

The mask is the 4th channel (as in SinGAN-Seg and the paper), so one DDPM learns image and label
jointly. Pairs are read once and kept as uint8 (a cluster of 348 pairs at 256 px is ~90 MB).

Data order is a pure function of (seed, position in the sample stream): the stream is the
concatenation of per-epoch permutations, and the horizontal flips are drawn per (epoch, index).
So a resumed run sees exactly the batches an uninterrupted run would, and each data-parallel
rank takes its own slice of every global batch without a sampler state to save.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..errors import StageError


def to_tensor(image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """(uint8 HxWx3, bool HxW) -> float32 4xHxW in [-1, 1]."""
    x = np.concatenate([image, mask[..., None].astype(np.uint8) * 255], axis=-1)
    return torch.from_numpy(x).permute(2, 0, 1).float().div(127.5).sub(1.0)


def from_tensor(x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nx4xHxW (or 4xHxW) in [-1, 1] -> (uint8 NxHxWx3, bool NxHxW): the mask is channel 4 > 0."""
    x = torch.as_tensor(x).float()
    if x.ndim == 3:
        x = x[None]
    images = ((x[:, :3].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    masks = (x[:, 3] > 0).numpy()
    return images, masks


@lru_cache(maxsize=64)
def _epoch_plan(n: int, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    return rng.permutation(n), rng.random(n) < 0.5


def stream_indices(n: int, start: int, count: int, seed: int) -> list[tuple[int, int]]:
    """Positions ``start .. start+count-1`` of the seeded sample stream as (epoch, index) pairs."""
    out = []
    for pos in range(start, start + count):
        epoch, k = divmod(pos, n)
        out.append((epoch, int(_epoch_plan(n, epoch, seed)[0][k])))
    return out


def flip_of(n: int, epoch: int, index: int, seed: int) -> bool:
    return bool(_epoch_plan(n, epoch, seed)[1][index])


class PairDataset(torch.utils.data.Dataset):
    """The pairs ``ids`` of a PreparedSet as 4xHxW tensors in [-1, 1], optionally h-flipped (seeded)."""

    def __init__(self, prepared, ids: Sequence[str], hflip: bool = False, seed: int = 0):
        if len(ids) == 0:
            raise StageError(f"{getattr(prepared, 'folder', prepared)}: no training pairs given")
        self.ids = list(ids)
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0
        arrays = []
        for pair_id in self.ids:
            image, mask = prepared.load(pair_id)
            arrays.append(np.concatenate([image, mask[..., None].astype(np.uint8) * 255], axis=-1))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise StageError(f"{getattr(prepared, 'folder', prepared)}: pairs differ in size {sorted(shapes)}; "
                             "the generators need one size (prepare the data at one data.resolution)")
        self.data = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # uint8 N x 4 x H x W

    @property
    def resolution(self) -> int:
        return int(self.data.shape[-1])

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Which epoch's flips ``__getitem__`` applies (like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._get(self.epoch, index)

    def _get(self, epoch: int, index: int) -> torch.Tensor:
        x = self.data[index].float().div(127.5).sub(1.0)
        if self.hflip and flip_of(len(self), epoch, index, self.seed):
            x = x.flip(-1)
        return x

    def to(self, device: torch.device | str) -> "PairDataset":
        """Keep the pairs (uint8) on ``device``: on a GPU every batch is then gathered, converted and flipped
        there, and the GPU never waits for a host-to-device copy (a 348-pair cluster at 256 px is 91 MB)."""
        self.data = self.data.to(device)
        return self

    def batch(self, start: int, size: int) -> torch.Tensor:
        """The ``size`` samples at stream positions ``start ..``: a size x 4 x H x W tensor on the data's device,
        the values ``__getitem__`` gives, gathered in one indexing call."""
        plan = stream_indices(len(self), start, size, self.seed)
        x = self.data[torch.tensor([i for _, i in plan], device=self.data.device)].float().div(127.5).sub(1.0)
        if self.hflip:
            flips = [flip_of(len(self), e, i, self.seed) for e, i in plan]
            x = torch.where(torch.tensor(flips, device=x.device)[:, None, None, None], x.flip(-1), x)
        return x
