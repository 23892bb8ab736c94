"""Figures of stage 06: IoU with confidence intervals by regime, and predictions on test images."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..runs import Run
from .study import GROUP_COLUMNS, Configuration, as_text, config_label, primary_augmentation


def iou_plot(per_image: pd.DataFrame, cfg, title: str = "Test IoU by training data (mean, 95 % CI)"):
    """Mean test IoU per configuration with a bootstrap 95 % CI over test images (seeds averaged
    per image first, as in the summary table), coloured by regime."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = (as_text(per_image)
          .groupby(GROUP_COLUMNS + ["image_id"], sort=False)["iou"].mean().reset_index())
    several = df["model"].nunique() > 1
    df["configuration"] = df.apply(config_label, axis=1, several_models=several)
    order = list(dict.fromkeys(df["configuration"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(order) + 1.4))
    sns.pointplot(df, x="iou", y="configuration", hue="regime", order=order, errorbar=("ci", 95),
                  n_boot=cfg.segmentation.bootstrap, seed=0, linestyle="none", markers="o",
                  capsize=0.3, err_kws={"linewidth": 1.2}, ax=ax)
    ax.set_xlabel("IoU on the real test images")
    ax.set_ylabel("")
    ax.set_title(title, fontsize=10)
    real = df[(df["regime"] == "real") & (df["n_real"] == "all")
              & (df["augmentation"] == primary_augmentation(cfg))]["iou"]
    if len(real):
        ax.axvline(real.mean(), color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    return fig


def prediction_overlays(run: Run, configurations: list[Configuration], n_images: int = 4, seed: int = 0):
    """Seeded random test images: ground truth, then each configuration's prediction (overlays)."""
    from ..data.prepared import load_dataset
    from ..plots import pair_grid
    from .data import load_pool
    from .evaluate import dice_iou, predict_masks
    from .models import input_normalization, load_model

    s = run.cfg.segmentation
    ds = load_dataset(run)
    ids = ds.ids("test")
    pick = sorted(np.random.default_rng(seed).choice(len(ids), size=min(n_images, len(ids)), replace=False))
    pool = load_pool(ds, [ids[i] for i in pick], run.cfg.data.resolution)
    mean, std = input_normalization(s.encoder, s.encoder_weights)
    columns = [("ground truth", pool.masks)]
    for c in configurations:
        model = load_model(run.path("segmentation", c.name, "train", "model"))
        columns.append((config_label(c.row()), predict_masks(model, pool.images, mean, std)))
    pairs, titles = [], []
    for i, pid in enumerate(pool.ids):
        for title, masks in columns:
            pairs.append((pool.images[i], masks[i]))
            iou = "" if title == "ground truth" else f"\nIoU {dice_iou(masks[i], pool.masks[i])[1]:.2f}"
            titles.append(f"{pid}: {title}{iou}" if title == "ground truth" else f"{title}{iou}")
    return pair_grid(pairs, titles, ncols=len(columns), size=2.2,
                     suptitle="Test images: ground truth and predictions (mask tinted green)")


def showcase_configurations(run: Run) -> list[Configuration]:
    """Three trained configurations worth comparing on pictures (first seed): real only, synthetic
    only (the small_source set when trained, most pairs per image) and real + synthetic (Table 4's
    r), all on every training image with the primary augmentation; untrained ones are left out."""
    from .study import read_table

    s = run.cfg.segmentation
    results = read_table(run, "segmentation")
    results = results[(results["n_real"] == "all") & (results["model"] == s.models[0])
                      & (results["augmentation"] == primary_augmentation(run.cfg))
                      & (results["seed"] == s.seeds[0])]
    results = results.assign(preferred=results["source"] != s.small_source)      # False sorts first
    synthetic = results[results["regime"] == "synthetic"].sort_values(["preferred", "per_real"],
                                                                      ascending=[True, False], kind="stable")
    mixed = results[(results["regime"] == "mixed") & (results["per_real"] == s.mix_r_full)]
    picks = [results[results["regime"] == "real"], synthetic, mixed.sort_values("preferred", kind="stable")]
    return [Configuration.from_row(p.iloc[0]) for p in picks if len(p)]


def transfer_plot(summary: pd.DataFrame, title: str = "Test IoU in-domain and on other data sets (mean, 95 % CI)"):
    """One line per configuration group across the test domains (in-domain first): mean IoU with its
    bootstrap 95 % CI. Lines that stay parallel mean the ranking of the regimes transfers."""
    import matplotlib.pyplot as plt

    df = as_text(summary)
    domains = list(dict.fromkeys(["in-domain", *df["target"]]))
    labels = list(dict.fromkeys(config_label(r) for _, r in df.iterrows()))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(domains) + 3.5), 4.2))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    width = 0.5 / max(1, len(labels))
    for k, name in enumerate(labels):
        rows = df[[config_label(r) == name for _, r in df.iterrows()]].set_index("target").reindex(domains)
        x = np.arange(len(domains)) + (k - (len(labels) - 1) / 2) * width
        err = np.vstack([rows["iou"] - rows["iou_lo"], rows["iou_hi"] - rows["iou"]])
        ax.errorbar(x, rows["iou"], yerr=err, marker="o", capsize=3, linewidth=1, color=cmap(k % cmap.N),
                    label=name, linestyle="-" if rows.loc["in-domain", "regime"] != "real" else "--")
    ax.set_xticks(np.arange(len(domains)), domains)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, min(1.0, float(df["iou_hi"].max()) * 1.15 + 0.02))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
