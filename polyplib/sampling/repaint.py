"""RePaint joint inpainting of image AND mask (Lugmayr et al. 2022, as the paper uses it).

Why: a 4-channel (RGB + mask) DDPM knows polyps and their outlines together. Keeping the real
frame outside the dilated real mask and letting the model redraw all four channels inside it
gives a new polyp, with its own mask, in real context. The reverse process is diffusers'
``RePaintScheduler`` (known region re-noised from the real pair at every step, "jumps" back up
the noise levels to harmonise), with ``eta = 1`` so that steps are ancestral DDPM steps as in the
authors' guided-diffusion code.

``skip_steps``: the paper says "200 respaced steps, start after skipping 80". In the authors'
code (dsaragih/diffuse-gen, ``p_sample_loop_progressive``) the inpainting branch actually ignores
``skip_timesteps`` and starts from pure noise; the skip only shortens the later style-transfer
pass, which starts from the forward-noised sample. Here ``skip_steps`` applies to RePaint: the
reverse process starts at respaced step ``steps - 1 - skip_steps`` from the forward-noised real
pair (SDEdit-style) and the jump schedule is cut there. ``skip_steps = 0`` is the authors' code
path (start at the top, where the forward-noised pair is pure noise to within 0.7 %).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import StageError
from .unconditional import generators, split_pair


def make_scheduler(scheduler_config: dict, eta: float = 1.0):
    """A RePaintScheduler with the trained model's noise schedule (betas, T, clipping)."""
    from diffusers import RePaintScheduler

    scheduler = RePaintScheduler.from_config(scheduler_config, eta=eta)
    if scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise StageError("RePaint needs an epsilon-predicting model; the scheduler config says "
                         f"prediction_type={scheduler_config.get('prediction_type')!r}")
    return scheduler


def repaint_timesteps(scheduler, steps: int, jump_length: int, jump_n_sample: int, skip_steps: int) -> list[int]:
    """The jump schedule of ``RePaintScheduler.set_timesteps``, cut where the reverse process starts."""
    if not 0 <= skip_steps < steps:
        raise StageError(f"sampling.skip_steps={skip_steps} must be smaller than sampling.steps={steps}")
    scheduler.set_timesteps(steps, jump_length, jump_n_sample)
    times = [int(t) for t in scheduler.timesteps]
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    start = (scheduler.num_inference_steps - 1 - skip_steps) * stride
    return times[times.index(start):]


def count_evaluations(steps: int, jump_length: int, jump_n_sample: int, skip_steps: int,
                      num_train_timesteps: int = 1000) -> int:
    """UNet evaluations per pair of one RePaint run (every downward step costs one)."""
    from diffusers import RePaintScheduler

    times = repaint_timesteps(RePaintScheduler(num_train_timesteps), steps, jump_length, jump_n_sample, skip_steps)
    last, n = times[0] + 1, 0
    for t in times:
        n += t < last
        last = t
    return n


def _pair_tensor(images: np.ndarray, masks: np.ndarray, device) -> torch.Tensor:
    """uint8 (B,H,W,3) + bool (B,H,W) -> (B,4,H,W) float in [-1, 1]."""
    rgb = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    msk = torch.from_numpy(np.asarray(masks, np.float32))[:, None] * 2.0 - 1.0
    return torch.cat([rgb, msk], 1).to(device)


@torch.no_grad()
def repaint(unet, scheduler_config: dict, images: np.ndarray, masks: np.ndarray, regions: np.ndarray,
            seeds: Sequence[int], *, steps: int, skip_steps: int, jump_length: int, jump_n_sample: int,
            eta: float = 1.0, callback: Callable[[int], None] | None = None
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """Redraw the 4 channels inside ``regions`` (bool B,H,W) of the real pairs ``images``/``masks``.

    Returns (images uint8 B,H,W,3, raw mask channel uint8 B,H,W, UNet evaluations per pair).
    Outside ``regions`` the output is the real image and mask, exactly.
    """
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = unet.device, unet.dtype
    scheduler = make_scheduler(scheduler_config, eta)
    times = repaint_timesteps(scheduler, steps, jump_length, jump_n_sample, skip_steps)
    x0 = _pair_tensor(images, masks, device).to(dtype)
    known = torch.from_numpy(~np.asarray(regions, bool)).to(device=device, dtype=dtype)[:, None]
    gens = generators(seeds)
    noise = randn_tensor(x0.shape, generator=gens, device=device, dtype=dtype)
    a_bar = scheduler.alphas_cumprod[times[0]].to(device=device, dtype=dtype)
    x = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * noise    # the real pair, forward-noised to the start
    last, nfe = times[0] + 1, 0
    for t in times:
        if t < last:   # downward: one model evaluation, then merge with the re-noised known region
            eps = unet(x, torch.tensor(t, device=device)).sample
            nfe += 1
            x = scheduler.step(eps, t, x, x0, known, generator=gens).prev_sample
            if callback is not None:
                callback(nfe)
        else:          # a jump back up: re-noise by one respaced step
            x = scheduler.undo_step(x, last, generator=gens)
        last = t
    out_images, out_masks = split_pair(x)
    keep = ~np.asarray(regions, bool)
    out_images[keep] = np.asarray(images)[keep]                       # exact, not just to rounding
    out_masks[keep] = np.asarray(masks, bool)[keep].astype(np.uint8) * 255
    return out_images, out_masks, nfe
