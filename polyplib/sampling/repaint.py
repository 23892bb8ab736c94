"""RePaint joint inpainting of image AND mask (Lugmayr et al. 2022), as the authors ran it.

Why: a 4-channel (RGB + mask) DDPM knows polyps and their outlines together. Keeping the real
frame outside the dilated real mask and letting the model redraw all four channels inside it
gives a new polyp, with its own mask, in real context.

The authors' code (dsaragih/diffuse-gen, ``p_sample_loop_progressive``) walks RePaint's jump
schedule ``get_schedule_jump(t_T=200, n_sample=1, jump_length=10, jump_n_sample=5)`` over a
200-step respacing of the 1000-step chain, starting from PURE NOISE (its ``skip_timesteps=80``
is ignored on this path): 960 denoising UNet calls and 760 re-noising steps per pair. Before each
denoising call except the first, the known region is replaced by the real pair noised to the
current level; each denoising step is an ancestral step with the model's own variance (learned
range for the authors' model, ``diffusion.gaussian``); a jump re-noises by one respaced step.
``sampling.start = "sdedit"`` is an ablation kept from earlier versions: the reverse process
starts at respaced step ``steps - 1 - skip_steps`` from the forward-noised real pair and the
schedule is cut there (fewer calls).

Faster joint samplers (``sampling.sampler``; the paper keeps ``repaint``, the authors' schedule):

- ``repaint-ddim``: the same jump schedule and known-region replacement, but each denoising call
  is a DDIM step (clipped x0, ``sampling.eta`` = 0: deterministic) instead of an ancestral one, so
  a short respacing with short jumps (e.g. 50 steps, jumps of 5, twice: 95 calls) still converges;
- ``dpm++``: DPM-Solver++(2M) (Lu et al. 2022; diffusers' scheduler, x0 clipped) on ``steps``
  steps, with the known region replaced by the real pair noised to the current level before every
  call (the replacement method of Song et al. 2021); no jumps: a multistep solver's history does
  not survive a jump back up. ``steps`` calls per pair.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import StageError
from ..diffusion.unconditional import epsilon, generators, make_scheduler, split_pair

STARTS = ("noise", "sdedit")
#: joint inpainting samplers (``sampling.sampler``); ``repaint`` is the authors'
SAMPLERS = ("repaint", "repaint-ddim", "dpm++")


def jump_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's time schedule over chain indices steps-1 ... 0, ending with -1 (``n_sample = 1``).

    Going down one index at a time; at every multiple of ``jump_length`` below
    ``steps - jump_length`` the walk jumps back up ``jump_length`` indices, ``jump_n_sample - 1``
    times. A pair (a, b) of consecutive entries with b < a is a denoising call at index a; with
    b > a it re-noises from a to b.
    """
    if steps < 2 or jump_length < 1 or jump_n_sample < 1:
        raise StageError(f"RePaint needs steps >= 2, jump_length >= 1, jump_n_sample >= 1; got "
                         f"{steps}, {jump_length}, {jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, times = steps, []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    return times + [-1]


def repaint_schedule(steps: int, jump_length: int, jump_n_sample: int, start: str = "noise",
                     skip_steps: int = 0) -> list[int]:
    """The schedule a pair walks: the whole jump schedule, or (``sdedit``) its tail from the start index."""
    if start not in STARTS:
        raise StageError(f"sampling.start must be one of {', '.join(STARTS)}, got {start!r}")
    times = jump_schedule(steps, jump_length, jump_n_sample)
    if start == "noise":
        return times
    if not 0 <= skip_steps < steps:
        raise StageError(f"sampling.skip_steps={skip_steps} must be smaller than sampling.steps={steps}")
    return times[times.index(steps - 1 - skip_steps):]


def count_calls(times: Sequence[int]) -> tuple[int, int]:
    """(denoising UNet calls, re-noising steps) of a schedule."""
    down = sum(b < a for a, b in zip(times[:-1], times[1:]))
    return down, len(times) - 1 - down


def count_evaluations(steps: int, jump_length: int, jump_n_sample: int, skip_steps: int = 0,
                      start: str = "noise", sampler: str = "repaint") -> int:
    """UNet evaluations per pair of one inpainting run (``dpm++``: one per step it walks)."""
    if sampler == "dpm++":
        return steps - solver_skip(steps, start, skip_steps)
    return count_calls(repaint_schedule(steps, jump_length, jump_n_sample, start, skip_steps))[0]


def solver_skip(steps: int, start: str, skip_steps: int) -> int:
    """How many of the ``dpm++`` sampler's ``steps`` timesteps the start skips (``sdedit``: ``skip_steps``)."""
    if start not in STARTS:
        raise StageError(f"sampling.start must be one of {', '.join(STARTS)}, got {start!r}")
    if start == "noise":
        return 0
    if not 0 <= skip_steps < steps:
        raise StageError(f"sampling.skip_steps={skip_steps} must be smaller than sampling.steps={steps}")
    return skip_steps


def pair_tensor(images: np.ndarray, masks: np.ndarray, device) -> torch.Tensor:
    """uint8 (B,H,W,3) + bool (B,H,W) -> (B,4,H,W) float in [-1, 1]."""
    rgb = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    msk = torch.from_numpy(np.asarray(masks, np.float32))[:, None] * 2.0 - 1.0
    return torch.cat([rgb, msk], 1).to(device)


@torch.no_grad()
def repaint(unet, scheduler_config: dict, images: np.ndarray, masks: np.ndarray, regions: np.ndarray,
            seeds: Sequence[int], *, steps: int, jump_length: int, jump_n_sample: int, start: str = "noise",
            skip_steps: int = 0, sampler: str = "repaint", eta: float = 0.0,
            callback: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Redraw the 4 channels inside ``regions`` (bool B,H,W) of the real pairs ``images``/``masks``.

    ``scheduler_config``: the model's DDPMScheduler config (noise schedule and ``variance_type``).
    ``sampler``: ``repaint`` (the authors'), ``repaint-ddim`` or ``dpm++`` (module docstring).
    Returns (images uint8 B,H,W,3, raw mask channel uint8 B,H,W, UNet evaluations per pair).
    Outside ``regions`` the output is the real image and mask, exactly.
    """
    from diffusers.utils.torch_utils import randn_tensor

    from ..diffusion.gaussian import Chain

    if sampler not in SAMPLERS:
        raise StageError(f"sampling.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    device, dtype = unet.device, unet.dtype
    x0 = pair_tensor(images, masks, device).to(dtype)
    known = torch.from_numpy(~np.asarray(regions, bool)).to(device=device, dtype=dtype)[:, None]
    gens = generators(seeds)

    def noise() -> torch.Tensor:
        return randn_tensor(x0.shape, generator=gens, device=device, dtype=dtype)

    if sampler == "dpm++":
        x, nfe = _solver_inpaint(unet, scheduler_config, x0, known, noise, steps, start, skip_steps, callback)
    else:
        chain = Chain.from_config(scheduler_config, steps)
        variance = scheduler_config.get("variance_type", "fixed_small")
        times = repaint_schedule(steps, jump_length, jump_n_sample, start, skip_steps)
        first = chain.indices(times[0], len(x0), device)
        x = noise() if start == "noise" else chain.q_sample(x0, first, noise())
        nfe = 0
        for now, nxt in zip(times[:-1], times[1:]):
            i = chain.indices(now, len(x0), device)
            if nxt < now:   # denoise at index `now`, after putting the known region at this noise level
                if nfe:
                    x = known * chain.q_sample(x0, i, noise()) + (1 - known) * x
                out = unet(x, chain.model_timesteps(i)).sample.to(dtype)
                if sampler == "repaint":
                    x, _ = chain.p_sample(out, x, i, noise(), variance)
                else:
                    x, _ = chain.ddim_step(out, x, i, noise(), eta)
                nfe += 1
                if callback is not None:
                    callback(nfe)
            else:           # a jump back up: re-noise by one respaced step
                x = chain.renoise(x, chain.indices(nxt, len(x0), device), noise())
    out_images, out_masks = split_pair(x.clamp(-1, 1))
    keep = ~np.asarray(regions, bool)
    out_images[keep] = np.asarray(images)[keep]                       # exact, not just to rounding
    out_masks[keep] = np.asarray(masks, bool)[keep].astype(np.uint8) * 255
    return out_images, out_masks, nfe


def _solver_inpaint(unet, scheduler_config: dict, x0: torch.Tensor, known: torch.Tensor, noise: Callable,
                    steps: int, start: str, skip_steps: int, callback) -> tuple[torch.Tensor, int]:
    """DPM-Solver++(2M) with the known region replaced before every call (``sampler = "dpm++"``)."""
    scheduler = make_scheduler("dpm++", scheduler_config)
    scheduler.set_timesteps(steps, device=x0.device)
    skip = solver_skip(steps, start, skip_steps)
    timesteps = scheduler.timesteps[skip:]
    scheduler.set_begin_index(skip)
    first = timesteps[:1].repeat(len(x0))
    x = noise() if start == "noise" else scheduler.add_noise(x0, noise(), first)
    for n, t in enumerate(timesteps, 1):
        if n > 1:
            x = known * scheduler.add_noise(x0, noise(), t.repeat(len(x0))) + (1 - known) * x
        x = scheduler.step(epsilon(unet, x, t), t, x).prev_sample
        if callback is not None:
            callback(n)
    return x, len(timesteps)
