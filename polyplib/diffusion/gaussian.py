"""The Gaussian diffusion chain of the authors' guided-diffusion code, on any respacing of T steps.

Why here and not in a diffusers scheduler: the authors' model learns its variance (``learn_sigma``,
Nichol & Dhariwal 2021) and trains on the hybrid loss MSE(eps) + L_vlb; their RePaint walks the
jump schedule on a 200-step respacing with that learned variance. diffusers has the learned-range
step for plain ancestral sampling (``DDPMScheduler``), but neither the variational-bound loss nor a
RePaint step with a learned variance. This module is that arithmetic, once, for training, ancestral
sampling and RePaint; ``tests/test_diffusion_reference.py`` checks it against guided-diffusion itself
(``GaussianDiffusion.training_losses``, ``SpacedDiffusion.p_mean_variance``) and against diffusers'
``DDPMScheduler.step``, so a model folder saved here samples the same in a plain DDPMPipeline.

A chain keeps a subset of the T training timesteps (all of them for training; e.g. 200 for the
authors' sampling). Index ``i`` counts along the kept steps; ``timesteps[i]`` is the original
timestep the UNet is conditioned on. Tables are float64, as in guided-diffusion, and cast to the
sample's dtype when used.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

VARIANCES = ("learned_range", "fixed_small")


def base_betas(scheduler_config: dict) -> np.ndarray:
    """The T betas of a DDPMScheduler config, in float64 (linear: exactly guided-diffusion's)."""
    t = int(scheduler_config["num_train_timesteps"])
    if scheduler_config.get("beta_schedule", "linear") == "linear":
        return np.linspace(scheduler_config["beta_start"], scheduler_config["beta_end"], t, dtype=np.float64)
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).betas.double().numpy()


def respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly over 0 ... T-1, rounded (guided-diffusion's ``space_timesteps(T, "n")``)."""
    if not 2 <= steps <= num_train_timesteps:
        raise ValueError(f"steps={steps} must be between 2 and the {num_train_timesteps} training timesteps")
    return sorted({int(round(x)) for x in np.linspace(0, num_train_timesteps - 1, steps)})


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by Ho et al. (2020)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian integrated over each 2/255-wide bin (edges open)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class Chain:
    """A diffusion chain over ``timesteps`` (sorted original steps) of the base schedule ``betas``."""

    def __init__(self, betas: np.ndarray, timesteps: Sequence[int] | None = None):
        betas = np.asarray(betas, np.float64)
        self.num_train_timesteps = len(betas)
        kept = sorted(set(range(len(betas)) if timesteps is None else (int(t) for t in timesteps)))
        if len(kept) < 2 or kept[0] < 0 or kept[-1] >= len(betas):
            raise ValueError(f"a chain needs at least 2 timesteps in 0..{len(betas) - 1}, got {kept[:5]}...")
        self.timesteps = np.asarray(kept, np.int64)
        base_ac = np.cumprod(1.0 - betas)
        ac_kept = base_ac[self.timesteps]
        self.betas = 1.0 - ac_kept / np.append(1.0, ac_kept[:-1])        # the respaced betas
        ac = np.cumprod(1.0 - self.betas)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        # float64 tables of every factor used (cast per use), so results agree with guided-diffusion's
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = np.sqrt(ac), np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1.0)
        self.log_betas, self.sqrt_betas, self.sqrt_one_minus_betas = np.log(self.betas), np.sqrt(self.betas), np.sqrt(1.0 - self.betas)
        self.posterior_variance = self.betas * (1.0 - ac_prev) / (1.0 - ac)
        # log variance with the t=0 value (0) replaced by t=1's, as guided-diffusion does
        self.posterior_log_variance = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - self.betas) / (1.0 - ac)
        self._tables: dict = {}

    @classmethod
    def from_config(cls, scheduler_config: dict, steps: int | None = None) -> "Chain":
        """The full chain of a saved model (``steps=None``) or its respacing to ``steps`` steps.

        The chain reads the UNet's output as epsilon (and v): a model saved with another
        ``prediction_type`` would be sampled wrongly, so it is refused here."""
        prediction = scheduler_config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"the model predicts {prediction!r}; polyplib's chain (training, ancestral sampling, "
                             "RePaint) needs an epsilon-predicting model, as the authors'")
        betas = base_betas(scheduler_config)
        if steps is None or steps == len(betas):
            return cls(betas)
        return cls(betas, respaced_timesteps(len(betas), steps))

    def __len__(self) -> int:
        return len(self.timesteps)

    # -- table lookup: float64 tables indexed per sample, broadcast over C x H x W
    def _at(self, name: str, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.device)
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(np.asarray(getattr(self, name))).to(like.device)
        values = self._tables[key][i.to(like.device)].to(like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, i: torch.Tensor) -> torch.Tensor:
        """The original timesteps the UNet is conditioned on, for chain indices ``i``."""
        return torch.as_tensor(self.timesteps, device=i.device)[i]

    def indices(self, i: int, batch: int, device) -> torch.Tensor:
        return torch.full((batch,), int(i), dtype=torch.long, device=device)

    # -- the forward process
    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_i ~ q(x_i | x_0): the clean sample noised to chain step ``i``."""
        return self._at("sqrt_alphas_cumprod", i, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", i, x0) * noise

    def noise_std(self, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """sqrt(1 - alpha_bar_i): the noise's share in x_i (the style losses' mixing factor)."""
        return self._at("sqrt_one_minus_alphas_cumprod", i, like)

    def renoise(self, x: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One step back up the chain, x_{i-1} -> x_i ~ q(x_i | x_{i-1}) (RePaint's jumps)."""
        return self._at("sqrt_one_minus_betas", i, x) * x + self._at("sqrt_betas", i, x) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor):
        """Mean and (clipped) log variance of q(x_{i-1} | x_i, x_0)."""
        mean = self._at("posterior_mean_coef1", i, xt) * x0 + self._at("posterior_mean_coef2", i, xt) * xt
        return mean, self._at("posterior_log_variance", i, xt)

    # -- the reverse process
    def p_mean_variance(self, model_output: torch.Tensor, xt: torch.Tensor, i: torch.Tensor, variance: str,
                        clip: bool = True) -> dict:
        """Mean, log variance and predicted x0 of p(x_{i-1} | x_i) from the UNet's output.

        ``learned_range``: the output holds epsilon then v per channel; the log variance is
        v' log(beta_i) + (1 - v') log(beta~_i) with v' = (v + 1) / 2 and the respaced betas.
        ``fixed_small``: epsilon only (extra channels are ignored), variance beta~_i.
        """
        c = xt.shape[1]
        eps = model_output[:, :c]
        if variance == "learned_range":
            if model_output.shape[1] != 2 * c:
                raise ValueError(f"learned_range needs {2 * c} output channels (epsilon + v), got {model_output.shape[1]}")
            frac = (model_output[:, c:] + 1.0) / 2.0
            log_var = frac * self._at("log_betas", i, xt) + (1.0 - frac) * self._at("posterior_log_variance", i, xt)
        elif variance == "fixed_small":
            log_var = self._at("posterior_log_variance", i, xt).expand_as(xt)
        else:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        pred_x0 = self._at("sqrt_recip_alphas_cumprod", i, xt) * xt - self._at("sqrt_recipm1_alphas_cumprod", i, xt) * eps
        if clip:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _ = self.q_posterior(pred_x0, xt, i)
        return {"mean": mean, "log_variance": log_var, "pred_x0": pred_x0, "eps": eps}

    def p_sample(self, model_output: torch.Tensor, xt: torch.Tensor, i: torch.Tensor, noise: torch.Tensor,
                 variance: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_i -> x_{i-1} (no noise at i = 0); returns (x_{i-1}, predicted x0)."""
        out = self.p_mean_variance(model_output, xt, i, variance)
        nonzero = (i != 0).to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise, out["pred_x0"]

    def ddim_step(self, model_output: torch.Tensor, xt: torch.Tensor, i: torch.Tensor, noise: torch.Tensor,
                  eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step x_i -> x_{i-1} (Song et al. 2021, eq. 12) as guided-diffusion's ``ddim_sample``:
        x0 is predicted and clipped, epsilon re-derived from the clipped x0 (so the step stays on the
        data range), ``eta`` scales the fresh noise (0: deterministic). Returns (x_{i-1}, predicted x0)."""
        pred_x0 = self.p_mean_variance(model_output, xt, i, "fixed_small")["pred_x0"]
        eps = (self._at("sqrt_recip_alphas_cumprod", i, xt) * xt - pred_x0) / self._at("sqrt_recipm1_alphas_cumprod", i, xt)
        ac, ac_prev = self._at("alphas_cumprod", i, xt), self._at("alphas_cumprod_prev", i, xt)
        sigma = eta * torch.sqrt((1 - ac_prev) / (1 - ac)) * torch.sqrt(1 - ac / ac_prev)
        mean = pred_x0 * torch.sqrt(ac_prev) + torch.sqrt(1 - ac_prev - sigma ** 2) * eps
        nonzero = (i != 0).to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
        return mean + nonzero * sigma * noise, pred_x0

    # -- training
    def vb_bits(self, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor,
                variance: str) -> torch.Tensor:
        """The L_vlb term per sample in bits per dimension: KL to the posterior, decoder NLL at i = 0."""
        true_mean, true_log_var = self.q_posterior(x0, xt, i)
        out = self.p_mean_variance(model_output, xt, i, variance, clip=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])) / math.log(2.0)
        return torch.where(i == 0, nll, kl)

    def snr_weights(self, i: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights of the epsilon MSE (Hang et al. 2023): min(SNR_i, gamma) / SNR_i,
        with SNR_i = alpha_bar_i / (1 - alpha_bar_i). Low-noise steps, whose fine detail costs most
        of an unweighted loss's gradient, count less; the model learns shapes and colours sooner."""
        ac = torch.from_numpy(self.alphas_cumprod).to(i.device)[i]
        snr = ac / (1.0 - ac)
        return (snr.clamp(max=gamma) / snr).float()

    def training_losses(self, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor,
                        noise: torch.Tensor, variance: str, snr_gamma: float | None = None) -> dict:
        """Per-sample losses: ``mse`` of epsilon, and with a learned variance ``vb`` (its gradient
        reaches only the variance channels: the mean is frozen) and ``loss`` = mse + vb, as
        guided-diffusion with ``learn_sigma=True, use_kl=False, rescale_learned_sigmas=False``.
        ``snr_gamma``: the MSE term of ``loss`` is Min-SNR weighted (``mse`` stays unweighted)."""
        c = x0.shape[1]
        model_output = model_output.float()
        terms = {"mse": mean_flat((noise - model_output[:, :c]) ** 2)}
        weighted = terms["mse"] if snr_gamma is None else terms["mse"] * self.snr_weights(i, snr_gamma)
        if variance == "learned_range":
            frozen = torch.cat([model_output[:, :c].detach(), model_output[:, c:]], dim=1)
            terms["vb"] = self.vb_bits(frozen, x0, xt, i, variance)
            terms["loss"] = weighted + terms["vb"]
        else:
            terms["loss"] = weighted
        return terms


@torch.no_grad()
def ancestral_sample(unet, chain: Chain, variance: str, noise: torch.Tensor, generators, callback=None) -> torch.Tensor:
    """Ancestral (DDPM) sampling from ``noise`` down the whole chain; per-pair generators draw the step noise."""
    from diffusers.utils.torch_utils import randn_tensor

    x = noise
    for n, step in enumerate(reversed(range(len(chain))), 1):
        i = chain.indices(step, x.shape[0], x.device)
        out = unet(x, chain.model_timesteps(i)).sample
        z = randn_tensor(x.shape, generator=generators, device=x.device, dtype=x.dtype)
        x, _ = chain.p_sample(out.to(x.dtype), x, i, z, variance)
        if callback is not None:
            callback(n)
    return x
