"""Figures and display tables of stage 04: FID and MS-SSIM per method in the paper's format (the
paper's numbers as a labelled reference column), bars with error bars, FID against sampler steps,
and the blinded review items. Every FID shown names the resize protocol that made it (``metrics.fid_resize``:
clean-fid's, as the paper, or the legacy TF one): the two give different numbers for the same images.
A set below ``metrics.min_images`` has no value: tables say ``too few images (n = 9 < 100)`` in its
place, figures leave its point out and say so. Figures are saved by the notebook with
:func:`polyplib.plots.save_figure`."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..synthetic.catalogue import set_dir
from .fid import TOO_FEW


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, all NaN when the table has none (e.g. no row was measured)."""
    return table[name].astype(float) if name in table else pd.Series(np.nan, index=table.index)


def _refused(table: pd.DataFrame) -> pd.Series:
    """Per row: the refusal text ('too few images (n = 9 < 100)') where the set was too small, else ''."""
    if table.empty or "status" not in table:
        return pd.Series("", index=table.index, dtype=object)
    why = table.get("refusal", pd.Series(TOO_FEW, index=table.index)).fillna(TOO_FEW).astype(str)
    return why.where(table["status"] == TOO_FEW, "")


def _or_refused(texts, table: pd.DataFrame, short: bool = False) -> list[str]:
    """``texts`` with each refused row's text in place of its (missing) value; ``short``: just 'too few images'."""
    return [(TOO_FEW if short else r) if r else t for t, r in zip(texts, _refused(table))]


def refused_note(table: pd.DataFrame, name: str = "label") -> str:
    """One line naming the rows left out of a figure for too few images, '' when none."""
    why = _refused(table)
    if not why.any():
        return ""
    names = table.get(name, table.get("method", pd.Series("", index=table.index))).astype(str)
    items = [f"{n} ({w[len(TOO_FEW) + 2:-1]})" for n, w in zip(names, why) if w]
    return f"not drawn, {TOO_FEW} (metrics.min_images): " + "; ".join(items)


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
        f"{name} (this run, mean ± sd over sets)": _or_refused([_pm(m, s, digits) for m, s in
                                                                 zip(_column(table, value), _column(table, sd))], table),
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
        out.insert(1, "KID x 1000", _or_refused([_pm(1000 * m, 1000 * s, 2) for m, s in
                                                 zip(_column(fid, "kid_mean"), _column(fid, "kid_sd"))], fid, short=True))
        out.insert(2, "FID vs held-out test", _versus_test(fid, "fid_test_mean", 1))
        out.insert(3, "KID x 1000 vs held-out test", _versus_test(fid, "kid_test_mean", 1000))
        out.insert(4, RESIZE_COLUMN, _resize(fid))
    return out


def _versus_test(fid: pd.DataFrame, column: str, scale: float) -> list[str]:
    """A set's FID or KID against the held-out real test images (the real-test row: the training images'
    own), or why there is none."""
    values, why = _column(fid, column), fid.get("test_refusal", pd.Series("", index=fid.index))
    digits = 1 if scale == 1 else 2
    return [f"{scale * v:.{digits}f}" if v is not None and np.isfinite(v) else
            (w if isinstance(w, str) and w else "–") for v, w in zip(values, why)]


def msssim_display(msssim: pd.DataFrame) -> pd.DataFrame:
    """MS-SSIM within each set (lower = more diverse), with the window used and the paper's column."""
    out = _display(msssim, "msssim_mean", "msssim_sd", "paper_msssim", "MS-SSIM", 3)
    if not msssim.empty:
        out.insert(1, "pairs per set", msssim["n_pairs"].map(lambda v: "" if pd.isna(v) else int(v)).values)
        out.insert(2, "window", msssim["win_size"].map(lambda v: "" if pd.isna(v) else int(v)).values)
    return out


def steps_display(steps: pd.DataFrame) -> pd.DataFrame:
    """FID of the unconditional sets by sampler and number of steps ('too few images (n = 8 < 100)' where a set
    is below ``metrics.min_images``)."""
    if steps.empty:
        return pd.DataFrame(columns=["sampler", "steps", "FID (n=1 set)", "KID x 1000", RESIZE_COLUMN, "images",
                                     "status"])
    fid = [_pm(m, np.nan, 1).replace(" (n=1)", "") for m in _column(steps, "fid_mean")]
    kid = [_pm(1000 * m, 1000 * s, 2).replace(" (n=1)", "") for m, s in
           zip(_column(steps, "kid_mean"), _column(steps, "kid_sd"))]
    return pd.DataFrame({"sampler": steps["sampler"], "steps": steps["steps"],
                         "FID (n=1 set)": _or_refused(fid, steps), "KID x 1000": _or_refused(kid, steps, short=True),
                         RESIZE_COLUMN: _resize(steps), "images": steps["n_images"].map(_count),
                         "status": steps["status"]})


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
    if df.empty:                                     # nothing measured: say so instead of an empty scale
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no set with a value" + (" (see below)" if refused_note(table) else ""), ha="center",
                va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    finish(fig, refused_note(table))
    return fig


def finish(fig, note: str = "") -> None:
    """Lay the figure out, with ``note`` (e.g. which sets were left out and why) in small red text under the axes."""
    if not note:
        fig.tight_layout()
        return
    import textwrap

    width = fig.get_figwidth()
    lines = textwrap.wrap(note, max(40, int(width * 17)))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="#a33", ha="left", va="bottom")
    fig.tight_layout(rect=(0, min(0.5, (0.12 * len(lines) + 0.08) / fig.get_figheight()), 1, 1))


def fid_bars(fid: pd.DataFrame):
    return metric_bars(fid, "fid_mean", "fid_sd", "paper_fid", "FID vs real training images (lower = closer)",
                       _with_protocol("Fidelity: FID per method", fid))


def msssim_bars(msssim: pd.DataFrame):
    return metric_bars(msssim, "msssim_mean", "msssim_sd", "paper_msssim",
                       "MS-SSIM within set (lower = more diverse)", "Diversity: MS-SSIM per set")


def _steps_names(steps: pd.DataFrame) -> pd.Series:
    return steps["sampler"].astype(str) + ", " + steps["steps"].astype(str) + " steps"


def fid_vs_steps(steps: pd.DataFrame, fid: pd.DataFrame | None = None):
    """FID (left) and KID (right) of unconditional samples against the number of sampler steps, one line per
    sampler; error bars are the sd over independent sets where a point has several (none for one set). The
    real-vs-real values of ``fid`` are the dashed reference. Sets below ``metrics.min_images`` are left out
    and named in a note under the axes: a point there would be a number that means nothing."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    real = None
    if fid is not None and len(fid) and "real-halves" in set(fid["method"]):
        real = fid.set_index("method").loc["real-halves"]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    df = _present(steps, "fid_mean")
    for ax, value, sd, scale, ylabel in ((axes[0], "fid_mean", "fid_sd", 1.0, "FID vs real training images"),
                                         (axes[1], "kid_mean", "kid_sd", 1000.0, "KID x 1000 vs real training images")):
        for sampler, g in (df.groupby("sampler") if len(df) else []):
            g = g.sort_values("steps")
            err = scale * g[sd].to_numpy(float) if sd in g else np.full(len(g), np.nan)
            ax.errorbar(g["steps"].to_numpy(float), scale * g[value].to_numpy(float), yerr=np.where(np.isfinite(err), err, 0) if np.isfinite(err).any()
                        else None, marker="o", capsize=3, label=sampler)
        if real is not None and real.get("status") == "ok" and np.isfinite(float(real.get(value, np.nan))):
            ax.axhline(scale * float(real[value]), color="grey", ls="--", lw=1, label="real vs real")
        if df.empty:
            why = "every unconditional set has too few images:\nno curve" if len(steps) else "no unconditional sets on disk"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_xscale("log")
            ax.set_xticks(sorted(df["steps"].unique()))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=8)
        ax.set_xlabel("sampler steps (log scale)")
        ax.set_ylabel(ylabel)
    fig.suptitle(_with_protocol("Unconditional samples: FID and KID against steps", df), fontsize=10)
    note = refused_note(steps.assign(label=_steps_names(steps))) if len(steps) else ""
    if real is not None and real.get("status") == TOO_FEW:
        note += ("; " if note else "") + f"real vs real line: {real.get('refusal', TOO_FEW)}"
    finish(fig, note)
    return fig


def steps_measured(steps: pd.DataFrame) -> bool:
    """Whether any unconditional set has enough images (``metrics.min_images``) for an FID."""
    return not _present(steps, "fid_mean").empty


def steps_figure(run, steps: pd.DataFrame, fid: pd.DataFrame | None = None):
    """Notebook 04's sampler-steps figure: ``(figure, name, line to print)``.

    When at least one unconditional set has ``metrics.min_images`` images (or there is none at all), the
    curve of :func:`fid_vs_steps` (``04_fid_vs_steps``). Otherwise the sets are a picture, not numbers: stage
    03's sample grid of the same sets (:func:`polyplib.sampling.figures.unconditional_grid`,
    ``04_unconditional_samples``) and a line that says why no curve is drawn."""
    if steps.empty or steps_measured(steps):
        line = "" if steps.empty else refused_note(steps.assign(label=_steps_names(steps)))
        return fid_vs_steps(steps, fid), "04_fid_vs_steps", line
    from ..sampling.figures import unconditional_grid

    m, n = run.cfg.metrics.min_images, run.cfg.sampling.n_unconditional
    counts = ", ".join(sorted({_count(v) for v in steps["n_images"]}, key=lambda c: (len(c), c)))
    line = (f"No FID/KID-against-steps curve: the unconditional sets hold {counts} images each "
            f"(sampling.n_unconditional = {n}), fewer than metrics.min_images = {m}; at that n the values would be "
            f"bias and noise, so the samples are shown as a picture instead.")
    fig = unconditional_grid(run, {"methods": [{"method": name} for name in steps["method"]]}, n=6)
    fig.suptitle(f"Unconditional samples (a picture, not a measurement: n < {m} per set)", fontsize=9)
    fig.tight_layout()
    return fig, "04_unconditional_samples", line


def review_grid(run, ncols: int = 6):
    """The kit's items as the rater sees them (item names only; the key is not used for titles)."""
    from ..data.prepared import PreparedSet, load_dataset
    from ..plots import pair_grid

    key = pd.read_csv(run.path("metrics", "review", "key.csv"), dtype=str, keep_default_na=False)
    ds = load_dataset(run)
    pairs = [ds.load(r.pair_id) if r.source == "real"
             else PreparedSet(set_dir(run, r.method)).load(r.pair_id) for r in key.itertuples()]
    return pair_grid(pairs, list(key["item"]), ncols=ncols, suptitle="Blinded review items")


def fidelity_figure(table: pd.DataFrame):
    """Label fidelity (judge IoU; the real test images' value and interval as the green band) and the
    seam check's accuracy (0.5 = chance, dashed), one row per synthetic set, with 95 % intervals."""
    import matplotlib.pyplot as plt

    ref = table[table["method"] == "real-test"]
    sets = table[table["method"] != "real-test"].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * max(3, len(sets)) + 1.3), sharey=True)
    y = np.arange(len(sets))
    panels = (("judge_iou", "judge_iou_lo", "judge_iou_hi", "judge_status",
               "label fidelity: IoU of the generated mask\nwith a real-only segmenter's prediction"),
              ("seam_accuracy", "seam_lo", "seam_hi", "seam_status",
               "seam check: accuracy telling generated\nfrom real polyp regions"))
    for ax, (col, lo, hi, status, title) in zip(axes, panels):
        ok = (sets[status] == "ok").to_numpy()
        mean = sets[col].to_numpy(float)
        err = np.vstack([mean - sets[lo].to_numpy(float), sets[hi].to_numpy(float) - mean])
        ax.errorbar(mean[ok], y[ok], xerr=err[:, ok], fmt="o", color="C0", capsize=3)
        for yi in y[~ok]:
            ax.text(0.02, yi, sets.loc[yi, status], va="center", fontsize=8, color="0.4",
                    transform=ax.get_yaxis_transform())
        if col == "judge_iou" and len(ref) and ref["judge_status"].iloc[0] == "ok":
            r = ref.iloc[0]
            ax.axvspan(r["judge_iou_lo"], r["judge_iou_hi"], color="C2", alpha=0.2)
            ax.axvline(r["judge_iou"], color="C2", label=f"real test images: {r['judge_iou']:.2f}")
        if col == "seam_accuracy":
            ax.axvline(0.5, color="0.5", ls="--", label="chance: indistinguishable")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08 - 0.3 / max(3, len(sets))), fontsize=8, ncol=1)
        ax.set_xlim(0, 1.02)
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(y, sets["label"])
    axes[0].set_ylim(len(sets) - 0.5, -0.5)          # first set on top, every row half a row from the edges
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the samplers' cost study
def budget_display(budget: pd.DataFrame) -> pd.DataFrame:
    """The quality-vs-cost table as a reader wants it: KID x 1000 with its 95 % interval, the paired
    difference to the authors' schedule, cost, diversity and mask sanity (values below
    ``metrics.min_images`` say why they are missing). No study: one row that says so."""
    if budget.empty:
        return pd.DataFrame({"study": ["not run (sampling.budget_study.pairs = 0)"]})   # <= 50 chars: pandas shows it whole

    def ci(v, lo, hi):
        return f"{1000 * v:.2f} [{1000 * lo:.2f}, {1000 * hi:.2f}]" if np.isfinite(v) else None

    rows = []
    for r in budget.to_dict("records"):
        ok = r.get("status") == "ok"
        rows.append({
            "set": r["method"], "sampler": r["sampler"], "steps": r["steps"], "jumps": r["jumps"],
            "UNet calls / pair": r["unet_calls"], "s / pair": round(r["seconds_per_pair"], 3),
            "speed-up": f"{r['speedup']:.1f}x",
            "KID x 1000 [95 % CI]": ci(r["kid"], r["kid_lo"], r["kid_hi"]) if ok else r["status"],
            "minus the authors' [95 % CI]": ci(r["kid_minus_reference"], r["diff_lo"], r["diff_hi"]) if ok else "",
            "indistinguishable": ("reference" if r["method"] == r["reference"] else
                                  "yes" if r["indistinguishable"] else "no") if ok else "",
            "FID (crops)": round(r["fid"], 1) if ok and np.isfinite(r["fid"]) else "",
            "MS-SSIM": round(r["msssim"], 3) if ok else "",
            "accepted": f"{r['accepted']}/{r['pairs']}",
            "mask coverage (real)": f"{r['mask_coverage']:.2f} ({r['real_mask_coverage']:.2f})",
            "coverage KS": f"{r['coverage_ks']:.2f}"})
    return pd.DataFrame(rows)


def budget_figure(budget: pd.DataFrame):
    """KID x 1000 of the redrawn regions (95 % intervals) against UNet calls per pair, one marker per
    sampler, with the authors' schedule's interval as a grey band; right: seconds per pair."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    df = budget[budget["status"] == "ok"] if len(budget) else budget
    if df.empty:
        why = budget["status"].iloc[0] if len(budget) else "the study was not run (sampling.budget_study.pairs = 0)"
        ax.text(0.5, 0.5, f"no KID: {why}", ha="center", va="center", transform=ax.transAxes, wrap=True)
    else:
        ref = df[df["method"] == df["reference"]].iloc[0]
        ax.axhspan(1000 * ref["kid_lo"], 1000 * ref["kid_hi"], color="grey", alpha=0.2,
                   label=f"{ref['method']} (reference) 95 % CI")
        for k, ((sampler, g), marker) in enumerate(zip(df.groupby("sampler", sort=False), "osD^v")):
            g = g.sort_values("unet_calls")
            x = g["unet_calls"].to_numpy(float) * 1.06 ** k          # side by side where budgets coincide
            y = 1000 * g["kid"].to_numpy(float)
            err = np.vstack([y - 1000 * g["kid_lo"].to_numpy(float), 1000 * g["kid_hi"].to_numpy(float) - y])
            ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, ls="none", label=sampler)
            for xi, (_, r) in zip(x, g.iterrows()):
                ax.annotate(f"{r['steps']} st." + ("" if r["jumps"] == "none" else f", {r['jumps']}"),
                            (xi, 1000 * r["kid"]), fontsize=6, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xticks(sorted(df["unet_calls"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.2), ncol=2, frameon=False)
    ax.set_xlabel("UNet calls per pair (log scale; st. = steps, jumps length x samples)", fontsize=8)
    ax.set_ylabel("KID x 1000, region crops vs the real ones")
    if len(budget):
        b = budget.sort_values("unet_calls")
        ax2.barh(b["method"], b["seconds_per_pair"], color="tab:blue")
        ax2.set_xlabel("seconds per pair (this run's device)")
        ax2.invert_yaxis()
        ax2.tick_params(axis="y", labelsize=7)
    n = int(budget["pairs"].iloc[0]) if len(budget) else 0
    fig.suptitle(f"Inpainting samplers: fidelity of the redrawn region against cost ({n} sources, the same seeds)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def memorisation_figure(run, table: pd.DataFrame, per_set: int = 3, size: float = 1.5):
    """For every measured set (and the held-out test images, the reference), its pairs whose polyp region is
    closest to a training image, each beside that training image: what a near-copy would look like."""
    import textwrap

    import matplotlib.pyplot as plt

    from ..data.prepared import PreparedSet, load_dataset
    from ..plots import overlay

    ds = load_dataset(run)
    rows = []
    for r in table.itertuples():
        path = run.path("metrics", "memorisation", f"{r.method}.csv")
        if path.is_file():
            pairs = pd.read_csv(path, dtype={"id": str, "nearest_train": str}, keep_default_na=False)
            rows.append((r, pairs.sort_values("region_train_dist").head(per_set)))
    fig, axes = plt.subplots(max(1, len(rows)), 2 * per_set, figsize=(size * 2 * per_set, size * 1.15 * max(1, len(rows))),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (r, pairs) in enumerate(rows):
        source = ds if r.method == "real-test" else PreparedSet(set_dir(run, r.method))
        for k, p in enumerate(pairs.itertuples()):
            flagged = bool(p.memorised)
            axes[i, 2 * k].imshow(overlay(*source.load(p.id)))
            axes[i, 2 * k].set_title(f"{textwrap.shorten(r.label, 26, placeholder='…')}\n{p.id[:20]}", fontsize=6,
                                     color="red" if flagged else "black")
            axes[i, 2 * k + 1].imshow(overlay(*ds.load(p.nearest_train)))
            axes[i, 2 * k + 1].set_title(f"nearest training image\n{p.region_train_dist * 255:.1f} grey levels"
                                         + (" (copy)" if flagged else ""), fontsize=6, color="red" if flagged else "black")
    threshold = table["region_threshold"].dropna()
    finish(fig, f"red: polyp region closer to a training image than {threshold.iloc[0]:.1f} grey levels (RMS), the "
                "1st percentile of the training images' distances to each other" if len(threshold) else "")
    return fig
