"""The fast samplers on a model that has learned something, and the quality-vs-cost study's statistics.

A randomly initialised UNet cannot show what went wrong before: DPM-Solver++ returned saturated
noise because nothing clipped its x0 prediction, which an epsilon model gets badly wrong at high
noise (the error is amplified by 1 / sqrt(alpha_bar), x150 at t = 999). So a tiny UNet is trained
here for a minute on a toy data set of 8 px coloured discs with their masks, and its DDIM and DPM-Solver++
samples at 10 and 50 steps are compared with its DDPM samples at all 1000 steps: per-channel mean
and spread, and the share of saturated pixels (the old DPM-Solver++: about 70 %; here: near DDPM's).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

SIZE, T, STEPS = 8, 1000, 1500
#: the trained-model tests take about 1.5 min together: CI runs them after the default suite (.ci/run)
slow = pytest.mark.slow


def toy_pairs(n: int, seed: int) -> torch.Tensor:
    """(n, 4, 8, 8) in [-1, 1]: a smooth coloured background, a disc of another colour, its mask."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * SIZE / 2 + SIZE / 4
    radius = torch.rand(n, generator=g) * SIZE / 5 + SIZE / 8
    disc = ((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) < radius[:, None, None] ** 2
    back = torch.rand(n, 3, 1, 1, generator=g) * 0.8 - 0.6
    fore = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.0
    rgb = torch.where(disc[:, None], fore, back) + 0.1 * (yy / SIZE - 0.5)
    return torch.cat([rgb.clamp(-1, 1), disc[:, None].float() * 2 - 1], 1)


@pytest.fixture(scope="module")
def trained():
    """A tiny UNet trained 1500 steps on the toy pairs (epsilon MSE, diffusers' DDPMScheduler noise, the
    learning rate decayed to 0): its DDPM-1000 samples match the data's mean within 0.05."""
    from diffusers import DDPMScheduler, UNet2DModel

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=SIZE, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    scheduler = DDPMScheduler(T)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / STEPS)
    data = toy_pairs(4096, 0)
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x0 = data[torch.randint(0, len(data), (64,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, T, (len(x0),), generator=g)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    yield unet.eval(), dict(scheduler.config)
    torch.set_num_threads(threads)


def stats(x: torch.Tensor) -> dict:
    x = x.float()
    return {"mean": x.mean((0, 2, 3)), "std": x.std((0, 2, 3)), "saturated": (x.abs() > 0.99).float().mean().item()}


@slow
def test_few_step_samplers_draw_what_ddpm_1000_draws(trained):
    from polyplib.diffusion.unconditional import sample_tensor

    unet, config = trained
    seeds = list(range(64))
    ref = stats(sample_tensor(unet, config, "ddpm", T, seeds)[0])
    data = stats(toy_pairs(4096, 5))
    assert (ref["mean"] - data["mean"]).abs().max() < 0.1 and ref["saturated"] < 0.3   # it learned the data
    for sampler in ("dpm++", "ddim"):
        for steps in (10, 50):
            got = stats(sample_tensor(unet, config, sampler, steps, seeds)[0])
            what = f"{sampler} at {steps} steps: {got} vs DDPM-1000 {ref}"
            assert (got["mean"] - ref["mean"]).abs().max() < 0.15, what
            assert ((got["std"] / ref["std"]) - 1).abs().max() < 0.35, what
            assert abs(got["saturated"] - ref["saturated"]) < 0.1, what


@slow
def test_dpm_solver_without_clipping_is_what_the_test_catches(trained):
    """The same comparison fails for the old scheduler (no thresholding): the test can fail."""
    from diffusers import DPMSolverMultistepScheduler

    from polyplib.diffusion.unconditional import epsilon, sample_tensor

    unet, config = trained
    seeds = list(range(64))
    ref = stats(sample_tensor(unet, config, "ddpm", T, seeds)[0])
    old = DPMSolverMultistepScheduler.from_config({k: v for k, v in config.items() if k != "timestep_spacing"},
                                                  algorithm_type="dpmsolver++")
    old.set_timesteps(10)
    x = torch.randn(len(seeds), 4, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in old.timesteps:
            x = old.step(epsilon(unet, x, t), t, x).prev_sample
    got = stats(x.clamp(-1, 1))
    assert got["saturated"] - ref["saturated"] > 0.1 or ((got["std"] / ref["std"]) - 1).abs().max() > 0.35, got


@slow
def test_dpm_solver_and_ddim_walk_the_same_ode(trained):
    """Both are deterministic solvers of one probability-flow ODE with x0 clipped: from the same noise,
    DPM-Solver++ at 25 steps lands where DDIM at 200 steps does (much closer than to other noise)."""
    from polyplib.diffusion.unconditional import sample_tensor

    unet, config = trained
    seeds = list(range(16))
    ddim = sample_tensor(unet, config, "ddim", 200, seeds)[0]
    dpm = sample_tensor(unet, config, "dpm++", 25, seeds)[0]
    same = (dpm - ddim).abs().mean().item()
    other = (dpm - ddim.roll(1, 0)).abs().mean().item()
    assert same < 0.25 * other, (same, other)


# ----------------------------------------------------------------------------- the budget study's KID
def test_paired_kid_is_torch_fidelitys_u_statistic_and_its_intervals_cover_it():
    from torch_fidelity.metric_kid import kernel_poly, mmd2

    from polyplib.metrics.budget import paired_kid

    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16))
    near = real * 0.9 + rng.normal(size=real.shape) * 0.3           # shares each source's features, as crops do
    far = rng.normal(loc=0.6, size=real.shape)
    table = paired_kid({"ref": near, "near": near + rng.normal(size=real.shape) * 0.05, "far": far}, real, "ref",
                       bootstraps=300).set_index("method")
    for name, f in (("ref", near), ("far", far)):
        k = lambda a, b: kernel_poly(a, b)  # noqa: E731 - torch-fidelity's defaults: degree 3, gamma 1/d, coef0 1
        expected = mmd2(k(f, f), k(f, real), k(real, real), mmd_est="u-statistic")
        assert table.loc[name, "kid"] == pytest.approx(expected, rel=1e-9)
        assert table.loc[name, "kid_lo"] <= table.loc[name, "kid"] <= table.loc[name, "kid_hi"]
    assert table.loc["ref", "kid_minus_reference"] == 0 and table.loc["ref", "diff_lo"] == 0
    assert table.loc["near", "diff_lo"] <= 0 <= table.loc["near", "diff_hi"]          # indistinguishable
    assert table.loc["far", "diff_lo"] > 0                                               # clearly worse


def test_region_box_is_a_padded_square_inside_the_frame():
    from polyplib.metrics.budget import region_box

    region = np.zeros((64, 64), bool)
    region[50:60, 2:8] = True
    top, left, bottom, right = region_box(region)
    assert bottom - top == right - left == 15                 # 10 px tall, padded by a quarter each side
    assert 0 <= top and bottom <= 64 and left == 0 and top <= 50 and bottom >= 60
    assert region_box(np.zeros((8, 8), bool)) == (0, 0, 8, 8)
