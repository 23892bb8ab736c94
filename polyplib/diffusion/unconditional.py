"""Unconditional joint sampling of image + mask pairs with DDPM, DDIM or DPM-Solver++.

Why: the paper redraws polyps in real context (RePaint), but how many network evaluations a pair
costs depends on the sampler. The same 4-channel model can be sampled from scratch with any
diffusers scheduler built from the model's own scheduler configuration, so the samplers differ
only in how they walk the noise levels. Every pair has its own seeded generator, so a pair does
not depend on which other pairs share its batch, and any pair can be redrawn alone.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import StageError
from ..synthetic.postprocess import to_uint8

SAMPLERS = ("ddpm", "ddim", "dpm++")


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per pair: noise is drawn on the CPU, so CPU and GPU runs draw the same."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def make_scheduler(sampler: str, scheduler_config: dict):
    """A diffusers scheduler for a deterministic fast ``sampler``, built from the model's scheduler config.

    These samplers need only the noise prediction: the learned variance is dropped from the
    config (the UNet's extra channels are sliced off before each step, see ``epsilon``). Both keep
    the predicted x0 on the data range [-1, 1], as the DDPM path does: DDIM re-derives epsilon from
    the clipped x0 (guided-diffusion's ``ddim_sample``; ``step(..., use_clipped_model_output=True)``),
    DPM-Solver++ thresholds x0 at ``sample_max_value = 1`` (static clipping). Without it an
    epsilon model's x0 at high noise (error / sqrt(alpha_bar), x150 at t = 999) drives the
    solver's x0-based update to saturated noise. Both use "trailing" timesteps: the first call at
    T - 1, where the noise is, which few-step samplers need.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = {k: v for k, v in dict(scheduler_config).items() if k not in ("variance_type", "timestep_spacing")}
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=True, clip_sample_range=1.0, timestep_spacing="trailing")
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", thresholding=True,
                                                       sample_max_value=1.0, timestep_spacing="trailing")
    raise StageError(f"unknown sampler '{sampler}'; known: {', '.join(SAMPLERS)}")


def split_pair(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B,4,H,W) in [-1,1] -> images uint8 (B,H,W,3) and raw mask channel uint8 (B,H,W)."""
    arr = to_uint8(x.detach().float().cpu().numpy())
    return np.ascontiguousarray(arr[:, :3].transpose(0, 2, 3, 1)), arr[:, 3]


def epsilon(unet, x: torch.Tensor, t) -> torch.Tensor:
    """The UNet's noise prediction (the first 4 channels; a learned-sigma model also outputs v)."""
    return unet(x, t).sample[:, : x.shape[1]]


@torch.no_grad()
def sample_tensor(unet, scheduler_config: dict, sampler: str, steps: int, seeds: Sequence[int],
                  callback: Callable[[int], None] | None = None) -> tuple[torch.Tensor, int]:
    """``len(seeds)`` pairs as a (B,4,H,W) tensor in [-1, 1]; returns (pairs, UNet evaluations per pair).

    ``ddpm``: ancestral sampling on a ``steps``-step respacing with the model's own variance
    (learned or fixed; ``diffusion.gaussian``); ``ddim`` / ``dpm++``: diffusers' schedulers.
    """
    from diffusers.utils.torch_utils import randn_tensor

    from ..diffusion.gaussian import Chain, ancestral_sample

    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    gens = generators(seeds)
    shape = (len(seeds), unet.config.in_channels, size, size)
    noise = randn_tensor(shape, generator=gens, device=unet.device, dtype=unet.dtype)
    if sampler == "ddpm":
        chain = Chain.from_config(scheduler_config, steps)
        variance = scheduler_config.get("variance_type", "fixed_small")
        return ancestral_sample(unet, chain, variance, noise, gens, callback).clamp(-1, 1), len(chain)
    scheduler = make_scheduler(sampler, scheduler_config)
    scheduler.set_timesteps(steps, device=unet.device)
    x = noise * scheduler.init_noise_sigma
    nfe = 0
    for t in scheduler.timesteps:
        eps = epsilon(unet, scheduler.scale_model_input(x, t), t)
        nfe += 1
        kwargs = {"eta": 0.0, "use_clipped_model_output": True} if sampler == "ddim" else {}
        x = scheduler.step(eps, t, x, generator=gens, **kwargs).prev_sample
        if callback is not None:
            callback(nfe)
    return x.clamp(-1, 1), nfe


def sample_unconditional(unet, scheduler_config: dict, sampler: str, steps: int, seeds: Sequence[int],
                         callback: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw ``len(seeds)`` pairs in one batch; returns (images, raw masks, UNet evaluations per pair)."""
    x, nfe = sample_tensor(unet, scheduler_config, sampler, steps, seeds, callback)
    images, masks = split_pair(x)
    return images, masks, nfe
