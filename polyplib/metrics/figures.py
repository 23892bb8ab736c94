"""Figures and display tables of stage 04: FID and MS-SSIM per method in the paper's format (the
paper's numbers as a labelled reference column), bars with error bars, FID against sampler steps,
and the blinded review items. Every FID shown names the resize protocol that made it (``metrics.fid_resize``:
clean-fid's, as the paper, or the legacy TF one): the two give different numbers for the same images.
Figures are saved by the notebook with :func:`polyplib.plots.save_figure`."""
from __future__ import annotations

import numpy as np
import pandas as pd


def _pm(mean, sd, digits: int) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None and np.isfinite(sd) else " (n=1)")


def _count(value) -> str:
    """An image count as text the same way whether it was read from CSV (48.0) or not (48, '24 vs 24')."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else str(value)


def _display(table: pd.DataFrame, value: str, sd: str, paper: str, name: str, digits: int) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame(columns=["method", f"{name} (this run)"])
    out = pd.DataFrame({
        "method": table["label"],
        f"{name} (this run, mean ± sd over sets)": [_pm(m, s, digits) for m, s in zip(table[value], table[sd])],
        "sets": table["n_sets"], "images per set": table["n_images"].map(_count),
        "image size": table["image_size"].fillna("").astype(str),
        f"{name} (the paper: real data, 256 px)": table[paper].map(lambda v: "" if pd.isna(v) else f"{v:g}"),
        "status": table["status"]})
    return out.set_index("method")


RESIZE_COLUMN = "FID resize"


def _resize(table: pd.DataFrame) -> list[str]:
    """Each row's resize protocol ('' where no FID was computed)."""
    return table.get("resize", pd.Series("", index=table.index)).fillna("").astype(str).tolist()


def _with_protocol(title: str, table: pd.DataFrame) -> str:
    """A figure's title followed by the resize protocol(s) of the FIDs it shows."""
    names = "; ".join(sorted({r for r in _resize(table) if r}))
    return f"{title}\n({names})" if names else title


def fid_display(fid: pd.DataFrame) -> pd.DataFrame:
    """The FID table as the paper prints it (Method | FID), plus KID, the resize protocol, n and the
    paper's column."""
    out = _display(fid, "fid_mean", "fid_sd", "paper_fid", "FID", 1)
    if not fid.empty:
        out.insert(1, "KID x 1000", [_pm(1000 * m, 1000 * s, 2) for m, s in zip(fid["kid_mean"], fid["kid_sd"])])
        out.insert(2, RESIZE_COLUMN, _resize(fid))
    return out


def msssim_display(msssim: pd.DataFrame) -> pd.DataFrame:
    """MS-SSIM within each set (lower = more diverse), with the window used and the paper's column."""
    out = _display(msssim, "msssim_mean", "msssim_sd", "paper_msssim", "MS-SSIM", 3)
    if not msssim.empty:
        out.insert(1, "pairs per set", msssim["n_pairs"].map(lambda v: "" if pd.isna(v) else int(v)).values)
        out.insert(2, "window", msssim["win_size"].map(lambda v: "" if pd.isna(v) else int(v)).values)
    return out


def steps_display(steps: pd.DataFrame) -> pd.DataFrame:
    """FID of the unconditional sets by sampler and number of steps."""
    if steps.empty:
        return pd.DataFrame(columns=["sampler", "steps", "FID (n=1 set)", "KID x 1000", RESIZE_COLUMN, "images",
                                     "status"])
    return pd.DataFrame({"sampler": steps["sampler"], "steps": steps["steps"],
                         "FID (n=1 set)": steps["fid_mean"].round(1), "KID x 1000": (1000 * steps["kid_mean"]).round(2),
                         RESIZE_COLUMN: _resize(steps), "images": steps["n_images"], "status": steps["status"]})


def _present(table: pd.DataFrame, value: str) -> pd.DataFrame:
    if table.empty or value not in table:
        return table.iloc[0:0]
    return table[(table["status"] == "ok") & table[value].notna()].reset_index(drop=True)


def metric_bars(table: pd.DataFrame, value: str, sd: str, paper: str, ylabel: str, title: str):
    """Bars of this run's value per method (error bars: sd over sets), the paper's value as a marker."""
    import matplotlib.pyplot as plt

    df = _present(table, value)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(df) + 2), 3.8))
    x = np.arange(len(df))
    colours = ["#9e9e9e" if str(m).startswith("real") else "#3b75af" for m in df.get("method", [])]
    yerr = df[sd].fillna(0).to_numpy() if sd in df else None
    ax.bar(x, df[value], yerr=yerr, capsize=4, color=colours, label="this run (sd over sets)")
    if paper in df and df[paper].notna().any():
        ax.scatter(x, df[paper], marker="D", color="#d62728", zorder=3, label="the paper (256 px, real data)")
    for xi, n in zip(x, df.get("n_sets", [])):
        ax.annotate(f"n={int(n)}", (xi, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                    fontsize=7, color="white")
    ax.set_xticks(x, df.get("label", df.get("method", [])), rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fid_bars(fid: pd.DataFrame):
    return metric_bars(fid, "fid_mean", "fid_sd", "paper_fid", "FID vs real training images (lower = closer)",
                       _with_protocol("Fidelity: FID per method", fid))


def msssim_bars(msssim: pd.DataFrame):
    return metric_bars(msssim, "msssim_mean", "msssim_sd", "paper_msssim",
                       "MS-SSIM within set (lower = more diverse)", "Diversity: MS-SSIM per set")


def fid_vs_steps(steps: pd.DataFrame, fid: pd.DataFrame | None = None):
    """FID of unconditional samples against the number of sampler steps, one line per sampler
    (the real-vs-real FID of ``fid`` as a dashed reference)."""
    import matplotlib.pyplot as plt

    reference = None
    if fid is not None and "real-halves" in set(fid["method"]):
        reference = float(fid.set_index("method").loc["real-halves", "fid_mean"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    df = _present(steps, "fid_mean")
    for sampler, g in (df.groupby("sampler") if len(df) else []):
        g = g.sort_values("steps")
        ax.errorbar(g["steps"], g["fid_mean"], yerr=g["fid_sd"].fillna(0), marker="o", capsize=3, label=sampler)
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="grey", ls="--", lw=1, label="real vs real")
    if df.empty:
        ax.text(0.5, 0.5, "no unconditional sets on disk", ha="center", va="center", transform=ax.transAxes)
    else:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.set_xticks(sorted(df["steps"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
    ax.set_xlabel("sampler steps (log scale)")
    ax.set_ylabel("FID vs real training images")
    ax.set_title(_with_protocol("Unconditional samples: FID against steps", df))
    fig.tight_layout()
    return fig


def review_grid(run, ncols: int = 6):
    """The kit's items as the rater sees them (item names only; the key is not used for titles)."""
    from ..data.prepared import PreparedSet, load_dataset
    from ..plots import pair_grid

    key = pd.read_csv(run.path("metrics", "review", "key.csv"), dtype=str, keep_default_na=False)
    ds = load_dataset(run)
    pairs = [ds.load(r.pair_id) if r.source == "real"
             else PreparedSet(run.path("synthetic", r.method)).load(r.pair_id) for r in key.itertuples()]
    return pair_grid(pairs, list(key["item"]), ncols=ncols, suptitle="Blinded review items")
