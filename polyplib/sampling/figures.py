"""Figures of notebook 03: real vs inpainted vs styled pairs, and unconditional samples.

Why a module: the notebook only calls these; all reading of method folders lives here.
"""
from __future__ import annotations

import numpy as np

from ..plots import overlay
from ..runs import Run
from ..synthetic.catalogue import STYLED_METHODS, set_dir
from ..synthetic.folder import read_pair, read_records
from ..synthetic.postprocess import dilate


def load_pair(run: Run, method: str, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of one record of a method's set, accepted or rejected."""
    return read_pair(set_dir(run, method), record)


def _outline(image: np.ndarray, region: np.ndarray, colour=(255, 220, 0)) -> np.ndarray:
    """Draw the border of ``region`` (the redrawn area) on ``image``."""
    import cv2

    out = image.copy()
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, 1)
    return out


def _methods(summary: dict) -> list[str]:
    return [m["method"] for m in summary["methods"]]


def inpainting_grid(run: Run, summary: dict, n_clusters: int = 4, size: float = 2.2):
    """One row per cluster (first accepted pair of each): real with the redrawn region outlined in
    yellow, the RePaint pair, and its styled copies (colour match alone, Styled-Diff); masks tinted green."""
    import matplotlib.pyplot as plt

    from ..data.prepared import load_dataset

    methods = _methods(summary)
    base = next(m for m in ("diff", "full-diff") if m in methods)
    styled = [m for m, (_, of) in STYLED_METHODS.items() if of == base and m in methods]
    styled_records = {m: read_records(set_dir(run, m)).set_index("id", drop=False) for m in styled}
    df = read_records(set_dir(run, base))
    df = df[df["accepted"].astype(str) == "True"].drop_duplicates("cluster").head(n_clusters)
    ds = load_dataset(run)
    cols = 2 + len(styled)
    fig, axes = plt.subplots(max(1, len(df)), cols, figsize=(size * cols, size * max(1, len(df))), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, rec in enumerate(df.to_dict("records")):
        image, mask = ds.load(rec["source_id"])
        real = _outline(overlay(image, mask), dilate(mask, summary["dilation_px"]))
        panels = [(real, f"real {rec['source_id']} (cluster {rec['cluster']})"),
                  (overlay(*load_pair(run, base, rec)), f"{base} ({rec['model']})")]
        for m in styled:
            if rec["id"] in styled_records[m].index:
                srec = styled_records[m].loc[rec["id"]].to_dict()
                title = m if str(srec["accepted"]) == "True" else f"{m} (rejected)"
                panels.append((overlay(*load_pair(run, m, srec)), title))
        for col, (panel, title) in enumerate(panels):
            axes[row, col].imshow(panel)
            axes[row, col].set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def unconditional_grid(run: Run, summary: dict, n: int = 6, size: float = 1.6):
    """One row per unconditional set (sampler x steps): its first ``n`` pairs, rejected ones marked."""
    import matplotlib.pyplot as plt

    methods = [m for m in _methods(summary) if m.startswith("uncond-")]
    fig, axes = plt.subplots(max(1, len(methods)), n, figsize=(size * n, size * max(1, len(methods))), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, method in enumerate(methods):
        for col, rec in enumerate(read_records(set_dir(run, method)).head(n).to_dict("records")):
            axes[row, col].imshow(overlay(*load_pair(run, method, rec)))
            ok = str(rec["accepted"]) == "True"
            axes[row, col].set_title(method if col == 0 else ("" if ok else "rejected"), fontsize=7,
                                     color="black" if ok else "red")
    if not methods:
        axes[0, 0].text(0.5, 0.5, "no unconditional sets (sampling.n_unconditional = 0)", ha="center")
    fig.tight_layout()
    return fig


def cost_plot(table, size=(6.0, 3.2)):
    """Seconds per pair against UNet evaluations per pair, one point per method."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    for sampler, part in table.groupby("sampler"):
        ax.plot(part["nfe_per_pair"], part["seconds_per_pair"], "o", label=sampler)
        for _, r in part.iterrows():
            ax.annotate(r["method"], (r["nfe_per_pair"], r["seconds_per_pair"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("UNet evaluations per pair")
    ax.set_ylabel("seconds per pair")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
