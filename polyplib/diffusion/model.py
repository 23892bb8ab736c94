"""The 4-channel (RGB + mask) DDPM: a diffusers UNet2DModel and DDPMScheduler built from the config.

Differences from the paper's guided-diffusion model, stated so nobody mistakes one for the other:
the UNet predicts the noise only (fixed "small" variance instead of a learned sigma), and sizes come
from ``ddpm.*`` (the paper: 256 base channels, 2 res blocks, attention at 16 and 8, T=1000, linear
betas). For T != 1000 the linear betas are rescaled by 1000/T as guided-diffusion does, so the
forward process still ends in pure noise.

``sample_pairs`` draws unconditional samples and splits them back into an RGB image and a mask.
DDPMPipeline itself maps the output to [0, 1] and, for ``output_type="pil"``, would make RGBA
pictures of the 4 channels; with ``output_type="np"`` it returns N x H x W x 4 floats, which are
split here: RGB -> uint8, mask channel -> bool at 0.5 (i.e. 0 in the model's [-1, 1] range).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, StageError

IN_CHANNELS = 4  # RGB + mask


def unet_config(ddpm, resolution: int) -> dict:
    """UNet2DModel keyword arguments: one level per ``block_out_channels``, attention by feature size."""
    channels = list(ddpm.block_out_channels)
    levels = len(channels)
    if resolution % (2 ** (levels - 1)):
        raise ConfigError(f"data.resolution={resolution} must be divisible by 2**(levels-1)={2 ** (levels - 1)} "
                          f"for ddpm.block_out_channels with {levels} levels")
    attn = [resolution // 2 ** i in set(ddpm.attention_resolutions) for i in range(levels)]
    return dict(
        sample_size=resolution, in_channels=IN_CHANNELS, out_channels=IN_CHANNELS,
        layers_per_block=ddpm.layers_per_block, block_out_channels=tuple(channels),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=math.gcd(32, *channels),
    )


def build_unet(ddpm, resolution: int, seed: int | None = None):
    """A freshly initialised UNet2DModel (seeded, so every data-parallel rank starts identical)."""
    from diffusers import UNet2DModel

    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DModel(**unet_config(ddpm, resolution))


def build_scheduler(ddpm):
    """DDPMScheduler: epsilon prediction, fixed small variance, clipped x0; linear betas rescaled by 1000/T."""
    from diffusers import DDPMScheduler

    t = ddpm.num_train_timesteps
    scale = 1000.0 / t if ddpm.beta_schedule == "linear" else 1.0
    return DDPMScheduler(num_train_timesteps=t, beta_schedule=ddpm.beta_schedule,
                         beta_start=1e-4 * scale, beta_end=min(0.02 * scale, 0.999),
                         variance_type="fixed_small", clip_sample=True, prediction_type="epsilon")


def load_pipeline(folder: str | Path, device: str | torch.device = "cpu"):
    """A saved model folder (``save_pretrained``) as a DDPMPipeline on ``device``."""
    from diffusers import DDPMPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise StageError(f"{folder}: not a finished DDPM folder (no model_index.json); train it first")
    return DDPMPipeline.from_pretrained(str(folder)).to(device)


def _pipeline(pipeline_or_folder, device):
    if isinstance(pipeline_or_folder, (str, Path)):
        return load_pipeline(pipeline_or_folder, device or "cpu")
    return pipeline_or_folder if device is None else pipeline_or_folder.to(device)


@torch.no_grad()
def sample_tensors(pipeline_or_folder, n: int, seed: int, *, steps: int | None = None,
                   sampler: str = "ddpm", batch_size: int = 16, device=None,
                   progress: bool = False) -> torch.Tensor:
    """n samples as an n x 4 x H x W float tensor in [-1, 1] (clipped), drawn with a seeded generator.

    ``steps``: inference steps (default: all training timesteps); ``sampler="ddim"`` swaps in a
    DDIM scheduler with the same betas (far fewer steps for the same quality, used for grids).
    """
    from diffusers import DDIMScheduler, DDPMPipeline

    pipe = _pipeline(pipeline_or_folder, device)
    if sampler == "ddim":
        pipe = DDPMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    elif sampler != "ddpm":
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    pipe.set_progress_bar_config(disable=not progress)
    steps = steps or pipe.scheduler.config.num_train_timesteps
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        res = pipe(batch_size=min(batch_size, n - start), generator=generator, num_inference_steps=steps,
                   output_type="np")
        out.append(torch.from_numpy(np.asarray(res.images)).permute(0, 3, 1, 2))
    return torch.cat(out).float() * 2.0 - 1.0


def sample_pairs(pipeline_or_folder, n: int, seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """n labelled pairs from a DDPM: (uint8 N x H x W x 3 images, bool N x H x W masks)."""
    from .dataset import from_tensor

    return from_tensor(sample_tensors(pipeline_or_folder, n, seed, **kwargs))
