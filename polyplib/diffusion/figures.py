"""Figures of notebook 02: forward noising, clusters, loss curves, samples during and after training."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..plots import overlay


def _rgb(x) -> np.ndarray:
    """3 x H x W in [-1, 1] -> uint8 H x W x 3."""
    return ((np.asarray(x).transpose(1, 2, 0).clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)


def forward_noising_figure(image: np.ndarray, mask: np.ndarray, ddpm, timesteps: Sequence[int] | None = None,
                           seed: int = 0):
    """x_t of one pair at several t: the RGB channels (top) and the mask channel (bottom)."""
    import matplotlib.pyplot as plt
    import torch

    from .dataset import to_tensor
    from .model import build_scheduler

    scheduler = build_scheduler(ddpm)
    T = scheduler.config.num_train_timesteps
    timesteps = list(timesteps or [0, T // 20, T // 10, T // 4, T // 2, T - 1])
    x0 = to_tensor(image, mask)[None].repeat(len(timesteps), 1, 1, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    xt = scheduler.add_noise(x0, noise, torch.tensor(timesteps)).numpy()
    fig, axes = plt.subplots(2, len(timesteps), figsize=(1.9 * len(timesteps), 4.1), squeeze=False)
    for j, t in enumerate(timesteps):
        abar = float(scheduler.alphas_cumprod[t])
        axes[0, j].imshow(_rgb(xt[j, :3]))
        axes[0, j].set_title(f"t = {t}\n" + r"$\bar\alpha_t$" + f" = {abar:.3f}", fontsize=8)
        axes[1, j].imshow(xt[j, 3], cmap="gray", vmin=-1, vmax=1)
        for ax in axes[:, j]:
            ax.axis("off")
    axes[0, 0].text(-0.08, 0.5, "RGB", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.08, 0.5, "mask channel", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle("forward process: the image and its mask drown in the same noise")
    fig.tight_layout()
    return fig


def cluster_examples_figure(prepared, clusters: pd.DataFrame, n: int = 6, seed: int = 0, size: float = 1.5):
    """One row per cluster: up to ``n`` seeded random members, image with mask overlay."""
    import matplotlib.pyplot as plt

    groups = list(clusters.groupby("cluster", sort=True))
    fig, axes = plt.subplots(len(groups), n, figsize=(size * n, size * len(groups) + 0.4), squeeze=False)
    rng = np.random.default_rng(seed)
    for r, (c, group) in enumerate(groups):
        ids = group["id"].tolist()
        pick = [ids[i] for i in sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))]
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(pick):
                ax.imshow(overlay(*prepared.load(pick[j])))
        axes[r, 0].set_ylabel(f"cluster-{int(c):02d}\n{len(ids)} pairs", fontsize=8)
    kind = clusters["features"].iloc[0] if "features" in clusters else ""
    fig.suptitle(f"clusters ({kind})", fontsize=9)
    fig.tight_layout()
    return fig


def loss_curves_figure(run, names: Sequence[str] | None = None):
    """Noise-prediction MSE of each model (rolling mean over ~5 % of the steps), log scale.

    With learned sigma the training loss also holds L_vlb, whose decoder term at t = 0 is large and
    spiky; the MSE part is comparable between models of either variance."""
    import matplotlib.pyplot as plt

    from .train import model_dir

    root = run.path("models", "ddpm")
    names = list(names) if names else sorted(p.name for p in root.iterdir() if (p / "loss.csv").exists())
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in names:
        path = model_dir(run, name) / "loss.csv"
        if not path.exists():
            continue
        df = pd.read_csv(path)
        window = max(1, len(df) // 20)
        column = "mse" if "mse" in df else "loss"   # the noise-prediction part (the vb term is in "loss")
        ax.plot(df["step"], df[column].rolling(window, min_periods=1).mean(), label=name,
                lw=2.0 if name == "full" else 1.2, color="black" if name == "full" else None)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("noise-prediction MSE (smoothed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _grids(folder: Path, per_model: int) -> list[tuple[int, Path]]:
    grids = sorted((int(p.stem.split("-")[-1]), p) for p in (folder / "samples").glob("step-*.png"))
    if len(grids) <= per_model:
        return grids
    picks = np.linspace(0, len(grids) - 1, per_model).round().astype(int)
    return [grids[i] for i in sorted(set(picks))]


def samples_over_training_figure(run, names: Sequence[str], per_model: int = 3, width: float = 9.0):
    """The sample grids written during training (EMA weights, DDIM): images over mask overlays."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from .train import model_dir

    rows = [(name, step, path) for name in names for step, path in _grids(model_dir(run, name), per_model)]
    if not rows:
        raise FileNotFoundError(f"no sample grids under {run.path('models', 'ddpm')}")
    first = np.asarray(Image.open(rows[0][2]))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, len(rows) * (width * aspect + 0.3)), squeeze=False)
    for ax, (name, step, path) in zip(axes[:, 0], rows):
        ax.imshow(np.asarray(Image.open(path)))
        ax.set_title(f"{name} · step {step}", fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


def mask_values_figure(samples, bins: int = 50, drawn_with: str = ""):
    """Histogram of the generated mask channel: a well-trained model puts its mass near -1 and +1.
    ``drawn_with`` (e.g. "DDPM, 50 of 1000 steps") goes into the title."""
    import matplotlib.pyplot as plt

    values = np.asarray(samples)[:, 3].ravel()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(values, bins=bins, range=(-1, 1), color="tab:green")
    ax.axvline(0, color="black", lw=1, ls="--")
    near = float(np.mean(np.abs(values) > 0.9))
    ax.set_title(f"mask channel of {len(np.asarray(samples))} samples{f' ({drawn_with})' if drawn_with else ''}: "
                 f"{near:.0%} of values within 0.1 of ±1", fontsize=9)
    ax.set_xlabel("mask channel value (threshold at 0)")
    ax.set_ylabel("pixels")
    fig.tight_layout()
    return fig


def learned_variance_table(folder, x0, steps: int, seed: int = 0, indices: Sequence[int] | None = None) -> pd.DataFrame:
    """What a model's variance channels chose, step by step on a ``steps``-step respacing.

    The training pairs ``x0`` (N x 4 x H x W in [-1, 1]) are noised to each step and the model's
    reverse-step noise (standard deviation, mean over pixels and pairs) is set beside the two fixed
    choices it interpolates between (sqrt of beta-tilde and of beta) and the mean interpolation
    v' = (v + 1) / 2. An untrained variance head gives the same v' at every step; a trained one
    moves towards 0 (beta-tilde) where the posterior is narrow. Fixed-sigma models show v' as NaN.
    """
    import torch

    from .gaussian import Chain
    from .model import load_pipeline

    pipe = load_pipeline(folder)
    config = dict(pipe.scheduler.config)
    variance = config.get("variance_type", "fixed_small")
    chain = Chain.from_config(config, steps)
    n = len(chain)
    indices = list(indices) if indices is not None else sorted({1, 2, 3, n // 8, n // 4, n // 2, n - 1})
    g = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for idx in indices:
            i = chain.indices(idx, len(x0), "cpu")
            xt = chain.q_sample(x0, i, torch.randn(x0.shape, generator=g))
            out = pipe.unet(xt, chain.model_timesteps(i)).sample
            log_var = chain.p_mean_variance(out, xt, i, variance)["log_variance"]
            frac = ((out[:, 4:] + 1) / 2).mean().item() if variance == "learned_range" else float("nan")
            rows.append({"step": idx, "t": int(chain.timesteps[idx]), "v_interpolation": round(frac, 3),
                         "noise_std_model": float(torch.exp(0.5 * log_var).mean()),
                         "noise_std_posterior": float(np.exp(0.5 * chain.posterior_log_variance[idx])),
                         "noise_std_beta": float(np.sqrt(chain.betas[idx]))})
    table = pd.DataFrame(rows)
    table["model_over_posterior"] = (table["noise_std_model"] / table["noise_std_posterior"]).round(2)
    return table
