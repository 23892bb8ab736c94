"""Figures of notebook 05: GAN, SinGAN-Seg and diffusion pairs side by side, the SinGAN-Seg pyramid,
GAN losses, and FID against compute.

Why a module: the notebook only calls these; reading method folders and logs lives here. Pairs are
shown as overlays (mask tinted green), as in every other notebook.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.figures import finish, refused_note
from ..synthetic.catalogue import set_dir
from ..synthetic.folder import read_pair, read_records
from ..plots import overlay
from ..runs import Run

#: rows of the side-by-side grid: (method folder, title); absent folders are skipped
GRID_ROWS = (("diff", "Diff (RePaint, cluster DDPM)"), ("mkl-diff", "Diff + colour match (MKL only)"),
             ("styled-diff", "Styled-Diff (guided style transfer + MKL)"),
             ("full-diff", "Full-Diff"), ("gan", "4-channel GAN"), ("singan", "SinGAN-Seg (trained here)"),
             ("singan-published", "SinGAN-Seg (published)"))


def _accepted(run: Run, method: str) -> pd.DataFrame:
    folder = set_dir(run, method)
    if not (folder / "manifest.csv").exists():
        return pd.DataFrame()
    df = read_records(folder)
    return df[df["accepted"].astype(str) == "True"].reset_index(drop=True)


def _pair(run: Run, method: str, record: dict):
    return read_pair(set_dir(run, method), {**record, "accepted": True})


def side_by_side(run: Run, n: int = 6, size: float = 1.5, seed: int = 0):
    """One row per synthetic set (and the real training images first): ``n`` accepted pairs each.

    Sets with a source (Diff, SinGAN-Seg) show pairs of different sources; the real row shows
    seeded training images."""
    import matplotlib.pyplot as plt

    from ..data.prepared import load_dataset

    ds = load_dataset(run)
    rng = np.random.default_rng(seed)
    train = ds.ids("train")
    real_ids = [train[i] for i in sorted(rng.choice(len(train), size=min(n, len(train)), replace=False))]
    rows = [("real training images", [overlay(*ds.load(i)) for i in real_ids])]
    for method, title in GRID_ROWS:
        df = _accepted(run, method)
        if df.empty:
            continue
        if "source_id" in df and (df["source_id"].astype(str) != "").all() and df["source_id"].nunique() > 1:
            df = pd.concat([df.drop_duplicates("source_id"), df]).drop_duplicates("id")
        rows.append((title, [overlay(*_pair(run, method, r)) for r in df.head(n).to_dict("records")]))
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (title, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
        axes[r, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def singan_figure(run: Run, n_images: int = 2, n_samples: int = 4, size: float = 1.6):
    """Per SinGAN-Seg source: the real pair, then its first samples (rejected ones marked)."""
    import matplotlib.pyplot as plt

    from ..data.prepared import load_dataset
    folder = set_dir(run, "singan")
    df = read_records(folder) if (folder / "manifest.csv").exists() else pd.DataFrame()
    sources = list(dict.fromkeys(df["source_id"]))[:n_images] if len(df) else []
    ds = load_dataset(run)
    fig, axes = plt.subplots(max(1, len(sources)), n_samples + 1,
                             figsize=(size * (n_samples + 1), size * max(1, len(sources))), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, sid in enumerate(sources):
        axes[r, 0].imshow(overlay(*ds.load(sid)))
        axes[r, 0].set_title(f"real {sid}", fontsize=7)
        for c, rec in enumerate(df[df["source_id"] == sid].head(n_samples).to_dict("records"), 1):
            axes[r, c].imshow(overlay(*read_pair(folder, rec)))
            ok = str(rec["accepted"]) == "True"
            axes[r, c].set_title(f"sample {rec['sample_index']}" + ("" if ok else " (rejected)"), fontsize=7,
                                 color="black" if ok else "red")
    if not sources:
        axes[0, 0].text(0.5, 0.5, "no SinGAN-Seg models (gan.singan_images = 0)", ha="center")
    fig.tight_layout()
    return fig


def pyramid_figure(run: Run, source_index: int = 0, seed: int = 0, size: float = 1.8):
    """One random SinGAN-Seg sample drawn scale by scale, coarsest left (sizes in the titles)."""
    import matplotlib.pyplot as plt

    from .singan import SinGANModel, pyramid_figure_data, singan_dir

    paths = sorted(singan_dir(run).glob("*/singan.pt")) if singan_dir(run).is_dir() else []
    if not paths:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no SinGAN-Seg models", ha="center")
        return fig
    model = SinGANModel.load(paths[min(source_index, len(paths) - 1)])
    panels = pyramid_figure_data(model, seed)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, panel, (h, w), amp in zip(axes[0], panels, model.sizes, model.amps):
        ax.imshow(panel)
        ax.set_title(f"{h}x{w}, noise {amp:.2g}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


def gan_loss_figure(run: Run, smooth: int = 10):
    """Discriminator and generator hinge losses and D's scores on real / generated pairs."""
    import matplotlib.pyplot as plt

    df = pd.read_csv(run.path("models", "gan", "loss.csv"))
    roll = lambda s: s.rolling(max(1, min(smooth, len(s))), min_periods=1).mean()  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].plot(df["step"], roll(df["loss_d"]), label="D loss (hinge)")
    axes[0].plot(df["step"], roll(df["loss_g"]), label="G loss")
    axes[1].plot(df["step"], roll(df["d_real"]), label="D(real)")
    axes[1].plot(df["step"], roll(df["d_fake"]), label="D(generated)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fid_compute_figure(comparison: pd.DataFrame, size=(6.5, 3.6)):
    """FID (this run, mean ± sd) against measured training seconds (log), one point per set; a set with too few
    images for an FID (``metrics.min_images``) has no point and is named in a note under the axes."""
    import matplotlib.pyplot as plt

    df = comparison[np.isfinite(comparison["fid_mean"]) & np.isfinite(comparison["train_s_measured"])]
    fig, ax = plt.subplots(figsize=size)
    for _, r in df.iterrows():
        ax.errorbar(r["train_s_measured"], r["fid_mean"], yerr=r["fid_sd"] if np.isfinite(r["fid_sd"]) else None,
                    fmt="o", capsize=3)
        ax.annotate(r["label"], (r["train_s_measured"], r["fid_mean"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    real = comparison[comparison["method"] == "real"]
    if len(real) and np.isfinite(real["fid_mean"].iloc[0]):
        ax.axhline(real["fid_mean"].iloc[0], color="grey", ls="--", lw=1, label="real vs real (halves)")
        ax.legend(fontsize=7)
    if df.empty:
        ax.text(0.5, 0.5, "no set with an FID and a measured training time", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xscale("log")
    ax.set_xlabel("training compute, measured seconds on this run (log)")
    ax.set_ylabel("FID vs real training images (this run)")
    finish(fig, refused_note(comparison.assign(label=comparison["label"].where(comparison["method"] != "real",
                                                                                "real vs real (halves)"))))
    return fig


def compute_figure(compute: pd.DataFrame, size=(7.5, 3.6)):
    """Measured seconds on this run beside the extrapolated paper-scale hours, one bar pair per item."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=size, sharey=True)
    labels = compute["generator"].tolist()
    y = np.arange(len(labels))
    axes[0].barh(y, compute["measured_s"] / 60.0, color="tab:blue")
    axes[0].set_xlabel("measured on this run (minutes)")
    axes[1].barh(y, compute["extrapolated_h"], color="tab:orange")
    axes[1].set_xlabel("extrapolated to paper scale (hours)")
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].invert_yaxis()                      # shared y: first item on top in both panels
    for ax in axes:
        ax.set_xscale("log")
    fig.tight_layout()
    return fig


COMPARISON_COLUMNS = ["label", "status", "n_images", "fid (mean ± sd)", "fid_resize", "msssim_mean",
                      "train_s_measured", "generate_s_measured", "paper_scale_h_extrapolated", "fid_paper_reference",
                      "msssim_paper_reference"]


def comparison_display(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as notebook 05 and the study report show it: this run's numbers rounded
    to what they resolve (MS-SSIM 3 decimals, seconds 1, hours 2), '—' where there is none."""
    digits = {"msssim_mean": 3, "train_s_measured": 1, "generate_s_measured": 1,
              "paper_scale_h_extrapolated": 2, "fid_paper_reference": 2, "msssim_paper_reference": 3}
    out = comparison[[c for c in COMPARISON_COLUMNS if c in comparison.columns]].copy()
    for column, d in digits.items():
        if column in out:
            out[column] = [("—" if pd.isna(v) else f"{float(v):.{d}f}") for v in out[column]]
    return out.astype(object).where(out.notna(), "—").reset_index(drop=True)
