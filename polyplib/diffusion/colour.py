"""Does a model draw the colours of its training frames? The global colour of a sample, measured.

Why: a DDPM decides a sample's global colour in its first, noisiest steps. There its prediction of the
clean frame is x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): with the linear schedule abar_T is
about 4e-5, so an error of 0.001 in the predicted noise's channel mean moves x0's channel mean by
0.16 (x 1 / sqrt(abar_T)), and the sampler clips x0 to [-1, 1]. To predict the noise's channel means
the network must pass its input's on to its output. With the authors' GroupNorm(32) at a 32-channel
first level (the course's UNet), every group is one channel, and the normalisation before the output
layer removes each channel's mean: the path does not exist (``ddpm.norm_groups`` opens it). Even where
it exists, the loss hardly rewards it (a channel-mean error of 1e-3 adds 1e-6 to the per-pixel MSE), so
it is learnt late. A model without it pins colour channels at the clip bounds in its first steps, and
its samples come out green, cyan, magenta or yellow (``benchmarks/bench_colour.py`` measures both).

Colours are summarised per frame by two opponent channel means in the model's [-1, 1] units:
red - green and (red + green) / 2 - blue. A frame is "outside" when either lies outside the minimum
and maximum of the training frames: a colour no training frame has.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .gaussian import Chain

COLUMNS = ["frames", "n", "red − green: min", "red − green: max", "yellow − blue: min", "yellow − blue: max",
           "outside the training frames' colours"]


def opponent_means(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """N x >=3 x H x W in [-1, 1] -> N x 2: per frame, mean red - green and mean (red + green) / 2 - blue."""
    x = torch.as_tensor(x).float()
    r, g, b = (x[:, c].mean(dim=(1, 2)) for c in range(3))
    return torch.stack([r - g, (r + g) / 2 - b], 1).numpy()


def dataset_colours(dataset, ids: Sequence[str]) -> np.ndarray:
    """``opponent_means`` of the prepared frames ``ids``, one frame at a time (N x 2)."""
    from .dataset import to_tensor

    return np.concatenate([opponent_means(to_tensor(*dataset.load(i))[None]) for i in ids]) if len(ids) else \
        np.zeros((0, 2))


def x0_at_first_step(unet, scheduler_config: dict, seeds: Sequence[int]) -> torch.Tensor:
    """The model's (clipped) prediction of the clean frame at the first reverse step (t = T - 1), from
    the pure noise of each seed: what the sampler steers towards before any structure exists."""
    chain = Chain.from_config(scheduler_config)
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    noise = torch.stack([torch.randn(unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(s))
                         for s in seeds]).to(unet.device, unet.dtype)
    i = chain.indices(len(chain) - 1, len(seeds), noise.device)
    with torch.no_grad():
        out = unet(noise, chain.model_timesteps(i)).sample.to(noise.dtype)
    variance = scheduler_config.get("variance_type", "fixed_small")
    return chain.p_mean_variance(out, noise, i, variance)["pred_x0"].float().cpu()


def amplification(scheduler_config: dict) -> float:
    """1 / sqrt(abar_T): how much an error in the predicted noise is magnified in x0 at the first step."""
    chain = Chain.from_config(scheduler_config)
    return float(chain.sqrt_recip_alphas_cumprod[-1])


def colour_table(training: torch.Tensor | np.ndarray, **drawn: torch.Tensor) -> pd.DataFrame:
    """One row for the training frames (N x C x H x W in [-1, 1], or their ``dataset_colours``), then one
    per set of drawn frames (name -> N x C x H x W): the range of each opponent mean and how many frames
    lie outside the box the training frames span (a colour no training frame has), as "k of n"."""
    ref = training if isinstance(training, np.ndarray) and training.ndim == 2 else opponent_means(training)
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    rows = []
    for name, frames in {"training frames": ref, **drawn}.items():
        m = frames if isinstance(frames, np.ndarray) and frames.ndim == 2 else opponent_means(frames)
        outside = int(((m < lo) | (m > hi)).any(axis=1).sum())      # a count: a few samples give no rate
        rows.append([name, len(m), *np.round([m[:, 0].min(), m[:, 0].max(), m[:, 1].min(), m[:, 1].max()], 3),
                     f"{outside} of {len(m)}"])
    return pd.DataFrame(rows, columns=COLUMNS)
