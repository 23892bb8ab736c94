"""The colour check of notebook 02 (#31) and the phantom whose frames vary more in colour."""
import numpy as np
import pytest
import torch

from polyplib.config import load_config


def test_the_first_step_prediction_is_diffusers_pred_original_sample_and_its_magnification():
    from diffusers import DDPMScheduler

    from polyplib.diffusion.colour import amplification, x0_at_first_step
    from polyplib.diffusion.model import build_unet, scheduler_kwargs

    cfg = load_config("smoke", ["ddpm.variance=fixed_small"])
    unet = build_unet(cfg.ddpm, 16, seed=0).eval()
    kwargs = scheduler_kwargs(cfg.ddpm.num_train_timesteps, "linear", "fixed_small")
    seeds = [3, 4, 5]
    ours = x0_at_first_step(unet, kwargs, seeds)
    reference = DDPMScheduler(**kwargs)
    t = kwargs["num_train_timesteps"] - 1
    noise = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        eps = unet(noise, torch.full((3,), t)).sample
    expected = reference.step(eps, t, noise).pred_original_sample         # clipped to [-1, 1] (clip_sample)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    betas = np.linspace(kwargs["beta_start"], kwargs["beta_end"], kwargs["num_train_timesteps"])
    assert amplification(kwargs) == pytest.approx(1 / np.sqrt(np.prod(1 - betas)), rel=1e-9)
    assert amplification(scheduler_kwargs(1000, "linear", "fixed_small")) == pytest.approx(157.4, abs=0.1)


def test_the_colour_table_flags_frames_outside_the_training_colours():
    from polyplib.diffusion.colour import colour_table, opponent_means

    frame = torch.zeros(1, 4, 4, 4)
    frame[:, 0], frame[:, 1], frame[:, 2] = 0.6, 0.2, -0.4                # red - green 0.4, yellow - blue 0.8
    np.testing.assert_allclose(opponent_means(frame), [[0.4, 0.8]], atol=1e-6)
    training = torch.cat([frame + d for d in (-0.05, 0.0, 0.05)])          # one colour, three brightnesses
    green = frame.clone()
    green[:, 0], green[:, 1], green[:, 2] = -1.0, 1.0, -1.0               # a clipped, saturated green
    table = colour_table(training, drawn=torch.cat([frame, green]))
    assert table["outside the training frames' colours"].tolist() == ["0 of 3", "1 of 2"]
    assert table.loc[1, "red − green: min"] == -2.0 and table.loc[0, "n"] == 3


def test_the_colour_jitter_phantom_varies_more_in_colour_and_keeps_its_own_folder(tmp_path):
    from dataclasses import replace

    from polyplib.data.phantom import DOMAINS, render_frame

    def spread(domain):
        frames = [render_frame(domain, seed=0, index=i, scale=0.3)[0].astype(float) for i in range(24)]
        rg = [f[..., 0].mean() - f[..., 1].mean() for f in frames]
        return np.std(rg)

    assert spread(replace(DOMAINS["A"], mucosa_jitter=0.3)) > 2 * spread(DOMAINS["A"])
    from polyplib.data.prepare import phantom_sources
    from polyplib.runs import open_run

    small = ["data.phantom.n_source=4", "data.phantom.n_target=0", "run.progress=false", "run.workers=1"]
    plain = phantom_sources(open_run("smoke", small, tmp_path / "a"))[0].folder
    jitter = phantom_sources(open_run("smoke", small + ["data.phantom.colour_jitter=0.3"], tmp_path / "b"))[0].folder
    assert plain.name.endswith("-n4") and jitter.name.endswith("-n4-jitter0.3")
    assert '"mucosa_jitter": 0.3' in (jitter / "phantom.json").read_text()


def _dc_gain(unet, shift=0.1):
    x = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    moved = x.clone()
    moved[:, 0] += shift
    t = torch.full((4,), 999)
    with torch.no_grad():
        return float((unet(moved, t).sample[:, 0].mean() - unet(x, t).sample[:, 0].mean()) / shift)


def test_one_channel_per_group_blocks_the_input_channel_means_and_norm_groups_lets_them_through():
    """The course's 32-channel first level with the authors' GroupNorm(32) normalises each channel alone, right
    before the output layer: a shift of the input's red mean cannot reach the output's (even untrained)."""
    from polyplib.diffusion.model import build_unet

    authors = build_unet(load_config("course").ddpm, 64, seed=0).eval()
    eight = build_unet(load_config("course", ["ddpm.norm_groups=8"]).ddpm, 64, seed=0).eval()
    assert authors.config.norm_num_groups == 32 and eight.config.norm_num_groups == 8
    blocked, passed = _dc_gain(authors), _dc_gain(eight)
    assert abs(blocked) < 0.01 and abs(passed) > 10 * abs(blocked), (blocked, passed)


def test_a_setting_added_at_its_old_value_keeps_the_keys_of_models_trained_before_it():
    from polyplib.diffusion.train import BOOKKEEPING, model_key
    from polyplib.training import ADDED_AT_DEFAULT, weights_key

    cfg = load_config("course")           # the settings as they were before norm_groups existed
    earlier = weights_key("ddpm", {k: v for k, v in cfg.ddpm.model_dump(mode="json").items()
                                   if k not in BOOKKEEPING and k != "norm_groups"}, cfg, ["a", "b"], 1)
    assert model_key(cfg, ["a", "b"], 1) == earlier and ADDED_AT_DEFAULT["ddpm.norm_groups"] == 32
    assert model_key(load_config("course", ["ddpm.norm_groups=8"]), ["a", "b"], 1) != earlier
    assert model_key(load_config("course", ["data.phantom.colour_jitter=0.3"]), ["a", "b"], 1) != earlier
