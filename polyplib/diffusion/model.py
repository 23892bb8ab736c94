"""The 4-channel (RGB + mask) DDPM: the authors' guided-diffusion UNet, built from diffusers blocks.

With the paper defaults of ``ddpm.*`` (draft Table A.1; ``polyplib/paper.py``) the UNet2DModel built
here is the same network as guided-diffusion's ``UNetModel`` with the authors' flags: scale-shift
GroupNorm (``use_scale_shift_norm``), down/up-sampling by res blocks (``resblock_updown``), 64
channels per attention head (``num_head_channels``), attention at the configured feature sizes and
in the middle block, dropout 0, 4 input channels and, with learned sigma, 8 output channels
(epsilon, then the variance interpolation v). ``tests/test_guided_diffusion.py`` converts a
guided-diffusion model's weights and checks the outputs agree, so the authors' released checkpoints
load too (``python -m polyplib.diffusion.convert``).

The noise schedule is kept in a diffusers ``DDPMScheduler`` config (saved in every model folder, so
``DDPMPipeline.from_pretrained`` reloads and samples it anywhere); the chain arithmetic of training
and sampling is ``gaussian.py``. For T != 1000 the linear betas are rescaled by 1000/T as
guided-diffusion does, so the forward process still ends in pure noise.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ConfigError, StageError

IN_CHANNELS = 4  # RGB + mask


def out_channels(variance: str) -> int:
    """8 with learned sigma (epsilon + v for every channel), else 4."""
    return 2 * IN_CHANNELS if variance == "learned_range" else IN_CHANNELS


def unet_config(ddpm, resolution: int) -> dict:
    """UNet2DModel keyword arguments equal to guided-diffusion's UNetModel with the ``ddpm.*`` flags.

    One level per ``block_out_channels`` (guided-diffusion: ``num_channels * channel_mult``);
    attention where the feature map is one of ``attention_resolutions`` pixels wide.
    """
    channels = list(ddpm.block_out_channels)
    levels = len(channels)
    if resolution % (2 ** (levels - 1)):
        raise ConfigError(f"data.resolution={resolution} must be divisible by 2**(levels-1)={2 ** (levels - 1)} "
                          f"for ddpm.block_out_channels with {levels} levels")
    attn = [resolution // 2 ** i in set(ddpm.attention_resolutions) for i in range(levels)]
    heads = ddpm.num_head_channels
    widths = [c for c, a in zip(channels, attn) if a] + [channels[-1]]   # + the middle block
    bad = [c for c in widths if c % heads]
    if bad:
        raise ConfigError(f"ddpm.num_head_channels={heads} must divide the width of every attention level "
                          f"(and of the middle block): {sorted(set(bad))} in ddpm.block_out_channels={channels}")
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if ddpm.resblock_updown \
        else ("DownBlock2D", "UpBlock2D")
    groups = math.gcd(ddpm.norm_groups, *channels)   # guided-diffusion: GroupNorm(32); narrower models need fewer
    return dict(
        sample_size=resolution, in_channels=IN_CHANNELS, out_channels=out_channels(ddpm.variance),
        layers_per_block=ddpm.layers_per_block, block_out_channels=tuple(channels),
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
        downsample_type="resnet" if ddpm.resblock_updown else "conv",
        upsample_type="resnet" if ddpm.resblock_updown else "conv",
        resnet_time_scale_shift="scale_shift" if ddpm.scale_shift_norm else "default",
        attention_head_dim=heads, norm_num_groups=groups, attn_norm_num_groups=groups,
        dropout=ddpm.dropout, flip_sin_to_cos=True, freq_shift=0,
    )


def build_unet(ddpm, resolution: int, seed: int | None = None):
    """A freshly initialised UNet2DModel (seeded, so every data-parallel rank starts identical)."""
    from diffusers import UNet2DModel

    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DModel(**unet_config(ddpm, resolution))


def scheduler_kwargs(num_train_timesteps: int, beta_schedule: str, variance: str) -> dict:
    """DDPMScheduler arguments: epsilon prediction, clipped x0, linear betas rescaled by 1000/T.

    ``timestep_spacing="linspace"`` respaces the chain as guided-diffusion's ``space_timesteps``
    does (0 ... T-1, rounded), so a diffusers DDPMPipeline samples the same chain.
    """
    t = num_train_timesteps
    scale = 1000.0 / t if beta_schedule == "linear" else 1.0
    return dict(num_train_timesteps=t, beta_schedule=beta_schedule, beta_start=1e-4 * scale,
                beta_end=min(0.02 * scale, 0.999), variance_type=variance, clip_sample=True,
                prediction_type="epsilon", timestep_spacing="linspace")


def build_scheduler(ddpm):
    """The DDPMScheduler saved beside the UNet (its config is the noise schedule of the model)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_kwargs(ddpm.num_train_timesteps, ddpm.beta_schedule, ddpm.variance))


def variance_ablation(ddpm) -> tuple[str, str]:
    """(model name, variance) of the ``ddpm.compare_variance`` model: the Full model with the other variance."""
    other = "fixed_small" if ddpm.variance == "learned_range" else "learned_range"
    return ("full-fixed-sigma" if other == "fixed_small" else "full-learned-sigma"), other


def models_root(run) -> Path:
    """The folder holding this run's DDPMs: ``models/ddpm``, or ``ddpm.pretrained`` (converted models)."""
    if run.cfg.ddpm.pretrained:
        return Path(run.cfg.ddpm.pretrained).expanduser().resolve()
    return run.path("models", "ddpm")


def model_dir(run, name: str) -> Path:
    """The folder of model ``name`` (``cluster-NN`` or ``full``) of this run."""
    return models_root(run) / name


def check_model(folder: str | Path, resolution: int | None = None) -> tuple[dict, dict]:
    """(UNet config, scheduler config) of a saved DDPM folder, checked to fit the study: ``unet/`` and
    ``scheduler/``, 4 input channels (RGB + mask), the output channels of its variance, and, given a
    ``resolution``, trained at it. The one check behind every way a DDPM is loaded."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    if not (folder / "unet").is_dir() or not (folder / "scheduler").is_dir():
        raise StageError(f"{folder}: no trained model '{folder.name}' (unet/ + scheduler/); run stage 02 "
                         "(python run_all.py --only 02)")
    config = UNet2DModel.load_config(str(folder), subfolder="unet")
    scheduler_config = dict(DDPMScheduler.from_pretrained(folder, subfolder="scheduler").config)
    size = config["sample_size"] if isinstance(config["sample_size"], int) else config["sample_size"][0]
    variance = scheduler_config.get("variance_type", "fixed_small")
    expected = out_channels(variance)
    if config["in_channels"] != IN_CHANNELS or config["out_channels"] != expected:
        raise StageError(f"{folder}: a {variance} model needs a UNet with {IN_CHANNELS} input channels (RGB + mask) "
                         f"and {expected} output channels, this one has {config['in_channels']}/"
                         f"{config['out_channels']}")
    if resolution is not None and size != resolution:
        raise StageError(f"{folder}: model trained at {size} px but data.resolution is {resolution}")
    return config, scheduler_config


def load_model(folder: str | Path, device: str | torch.device = "cpu", mixed_precision: str = "no",
               resolution: int | None = None):
    """(UNet in eval mode on ``device``, run in ``mixed_precision`` (:func:`run_in_precision`), scheduler
    config) of a saved model folder (``save_pretrained``): the project's one DDPM loader."""
    from diffusers import UNet2DModel

    _, scheduler_config = check_model(folder, resolution)
    unet = UNet2DModel.from_pretrained(Path(folder), subfolder="unet").to(device).eval()
    return run_in_precision(unet, mixed_precision), scheduler_config


def load_pipeline(folder: str | Path, device: str | torch.device = "cpu", mixed_precision: str = "no"):
    """A saved model folder as a diffusers DDPMPipeline (``pipe(batch_size=...)`` samples it), through
    :func:`load_model`."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet, scheduler_config = load_model(folder, device, mixed_precision)
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler_config))


def run_in_precision(unet, mixed_precision: str):
    """Run ``unet``'s forward under autocast and hand its outputs back in fp32, as accelerate does for
    a prepared model; the sampler's chain arithmetic stays fp32. ``mixed_precision`` is a
    ``ddpm.mixed_precision`` setting (``auto``: bf16 on GPUs and CPUs that have it), so a model samples
    in the precision it trained in, as the authors' guided-diffusion ran its UNet in fp16 for both.
    On a 2-core CPU with native bf16 the course UNet's forward is 1.7x (batch 8) to 2.2x (batch 32)
    faster. Returns the (changed) ``unet``."""
    from accelerate.utils import convert_outputs_to_fp32

    from ..training import resolve_mixed_precision

    precision = resolve_mixed_precision(mixed_precision, unet.device)
    if precision == "no":
        return unet
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    forward, device_type = unet.forward, unet.device.type

    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    unet.forward = convert_outputs_to_fp32(autocast_forward)
    return unet
