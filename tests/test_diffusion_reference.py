"""The diffusion chain of ``polyplib.diffusion.gaussian`` against two independent implementations.

openai's guided-diffusion (the authors' code base; PyPI ``guided-diffusion-sdk``) for the respacing,
the reverse-step mean and variance (learned range and fixed small) and the hybrid training loss;
diffusers' ``DDPMScheduler`` for the learned-range step a saved model folder takes in a plain
DDPMPipeline. The UNet itself is compared in ``test_guided_diffusion.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

gd_script = pytest.importorskip("guided_diffusion.script_util")
gd_respace = pytest.importorskip("guided_diffusion.respace")

from polyplib.diffusion.gaussian import Chain, respaced_timesteps  # noqa: E402
from polyplib.diffusion.model import scheduler_kwargs  # noqa: E402


def reference(steps: int, respacing: str = "", learn_sigma: bool = True):
    """guided-diffusion's diffusion with the authors' flags (linear betas, eps, MSE + L_vlb)."""
    return gd_script.create_gaussian_diffusion(
        steps=steps, learn_sigma=learn_sigma, sigma_small=True, noise_schedule="linear", use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False, rescale_learned_sigmas=False, timestep_respacing=respacing)


def ours(steps: int, respacing: int | None = None, variance: str = "learned_range") -> Chain:
    return Chain.from_config(scheduler_kwargs(steps, "linear", variance), respacing)


def tensors(seed: int, batch: int = 4, learned: bool = True):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 4, 8, 8, generator=g) * 2 - 1
    x0[:, 3] = torch.where(x0[:, 3] > 0, 1.0, -1.0)           # a binary mask channel, as in the pairs
    xt = torch.randn(batch, 4, 8, 8, generator=g)
    noise = torch.randn(batch, 4, 8, 8, generator=g)
    out = torch.randn(batch, 8 if learned else 4, 8, 8, generator=g) * 0.8
    return x0, xt, noise, out


@pytest.mark.parametrize("t,n", [(1000, 200), (1000, 25), (1000, 1000), (250, 20), (250, 7), (50, 50)])
def test_respacing_is_guided_diffusions_and_diffusers(t, n):
    from diffusers import DDPMScheduler

    assert respaced_timesteps(t, n) == sorted(gd_respace.space_timesteps(t, str(n)))
    sched = DDPMScheduler(**scheduler_kwargs(t, "linear", "learned_range"))
    sched.set_timesteps(n)
    assert sorted(int(x) for x in sched.timesteps) == respaced_timesteps(t, n)


@pytest.mark.parametrize("variance", ["learned_range", "fixed_small"])
def test_reverse_step_matches_spaced_diffusion(variance):
    """p(x_{i-1} | x_i) on the authors' 200-step respacing: mean, log variance, x0 and the UNet's timestep."""
    learned = variance == "learned_range"
    ref = reference(1000, "200", learn_sigma=learned)
    chain = ours(1000, 200, variance)
    x0, xt, _, out = tensors(0, learned=learned)
    i = torch.tensor([0, 1, 57, 199])
    seen = {}

    def model(x, t, **_):
        seen["t"] = t.clone()
        return out

    got_ref = ref.p_mean_variance(model, xt, i, clip_denoised=True)
    got = chain.p_mean_variance(out, xt, i, variance)
    assert torch.equal(seen["t"], chain.model_timesteps(i))          # the original timesteps 0, 5, 286, 999
    assert chain.model_timesteps(i).tolist() == [0, 5, 286, 999]
    for key, ref_key in (("mean", "mean"), ("log_variance", "log_variance"), ("pred_x0", "pred_xstart")):
        diff = (got[key] - got_ref[ref_key].expand_as(got[key])).abs().max().item()
        assert diff < 1e-5, (key, diff)
    assert np.allclose(chain.betas, ref.betas, rtol=1e-10, atol=0)
    assert np.allclose(chain.posterior_log_variance, ref.posterior_log_variance_clipped, rtol=1e-10)


def test_reverse_step_differs_when_the_variance_is_ignored():
    """The learned interpolation matters: reading the same output as fixed-small changes the variance."""
    chain = ours(1000, 200)
    _, xt, _, out = tensors(1)
    i = torch.tensor([10, 100, 150, 199])
    learned = chain.p_mean_variance(out, xt, i, "learned_range")["log_variance"]
    fixed = chain.p_mean_variance(out, xt, i, "fixed_small")["log_variance"]
    assert (learned - fixed).abs().max() > 0.1


@pytest.mark.parametrize("steps", [1000, 250])
def test_hybrid_loss_matches_training_losses(steps):
    """MSE(eps) + L_vlb per sample, including the decoder NLL at t = 0, and the same gradient."""
    ref = reference(steps)
    chain = ours(steps)
    x0, _, noise, out = tensors(2)
    t = torch.tensor([0, 1, steps // 3, steps - 1])
    xt = chain.q_sample(x0, t, noise)
    assert (xt - ref.q_sample(x0, t, noise=noise)).abs().max() < 1e-6
    out_ref = out.clone().requires_grad_(True)
    out_ours = out.clone().requires_grad_(True)
    terms_ref = ref.training_losses(lambda x, ts, **_: out_ref, x0, t, noise=noise)
    # the same x_t for both (the q_sample above agrees to float32 rounding), so the losses compare alone
    terms = chain.training_losses(out_ours, x0, ref.q_sample(x0, t, noise=noise), t, noise, "learned_range")
    for key in ("mse", "vb", "loss"):
        assert torch.allclose(terms[key], terms_ref[key], rtol=1e-5, atol=1e-6), (key, terms[key], terms_ref[key])
    assert float(terms["vb"][0]) != pytest.approx(float(terms["vb"][1]), rel=0.01)    # t = 0 is the decoder NLL, not a KL
    terms["loss"].mean().backward()
    terms_ref["loss"].mean().backward()
    assert torch.allclose(out_ours.grad, out_ref.grad, rtol=1e-4, atol=1e-8)
    # the stop-gradient: the vb term alone moves only the variance channels
    out2 = out.clone().requires_grad_(True)
    chain.training_losses(out2, x0, xt, t, noise, "learned_range")["vb"].sum().backward()
    assert out2.grad[:, :4].abs().max() == 0 and out2.grad[:, 4:].abs().max() > 0


def test_saved_scheduler_takes_the_same_step_in_diffusers():
    """A model folder's DDPMScheduler (learned_range, linspace) steps like the chain, given the same noise."""
    from diffusers import DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    sched = DDPMScheduler(**scheduler_kwargs(1000, "linear", "learned_range"))
    sched.set_timesteps(200)
    chain = ours(1000, 200)
    _, xt, _, out = tensors(3, batch=2)
    for step in (199, 120, 3):
        t = int(chain.timesteps[step])
        got_diffusers = sched.step(out, t, xt, generator=torch.Generator().manual_seed(7)).prev_sample
        z = randn_tensor(xt.shape, generator=torch.Generator().manual_seed(7), dtype=xt.dtype)
        got, _ = chain.p_sample(out, xt, chain.indices(step, 2, "cpu"), z, "learned_range")
        assert (got - got_diffusers).abs().max() < 1e-4, step     # diffusers keeps its tables in float32


def test_a_model_that_does_not_predict_epsilon_is_refused():
    with pytest.raises(ValueError, match="v_prediction"):
        Chain.from_config({**scheduler_kwargs(1000, "linear", "fixed_small"), "prediction_type": "v_prediction"}, 200)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_guided_diffusions_ddim_sample(eta):
    """The ``repaint-ddim`` step on a 50-step respacing: guided-diffusion's ``ddim_sample`` (clipped x0,
    epsilon re-derived from it), the same fresh noise, the same output."""
    ref = reference(1000, "50", learn_sigma=False)
    chain = ours(1000, 50, "fixed_small")
    x0, xt, noise, out = tensors(3, learned=False)
    i = torch.tensor([0, 1, 20, 49])
    torch.manual_seed(11)
    got_ref = ref.ddim_sample(lambda x, t, **_: out, xt, i, clip_denoised=True, eta=eta)
    torch.manual_seed(11)
    ref_noise = torch.randn_like(xt)                        # what ddim_sample drew with th.randn_like
    got, pred_x0 = chain.ddim_step(out, xt, i, ref_noise, eta)
    assert (got - got_ref["sample"]).abs().max().item() < 1e-5
    assert (pred_x0 - got_ref["pred_xstart"]).abs().max().item() < 1e-5
    assert pred_x0.abs().max() <= 1.0
