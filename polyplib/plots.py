"""Figures shared by the notebooks: mask overlays, grids, histograms; saved as PNG and SVG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .runs import Run, atomic_write_bytes


def overlay(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 80), alpha: float = 0.35) -> np.ndarray:
    """The image with the mask tinted and its contour drawn, so image and label are seen together."""
    import cv2

    out = image.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, max(1, image.shape[0] // 128))
    return out


def pair_grid(pairs: Sequence[tuple[np.ndarray, np.ndarray]], titles: Sequence[str] | None = None,
              ncols: int = 6, size: float = 2.0, suptitle: str | None = None):
    """A grid of image+mask overlays (one panel per pair)."""
    import matplotlib.pyplot as plt

    n = max(1, len(pairs))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, msk) in enumerate(pairs):
        ax = axes.flat[i]
        ax.imshow(overlay(img, msk))
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


#: what a figure shown in a notebook is drawn at: the figures folder keeps the 120 dpi PNG and the SVG
INLINE_DPI = 72
#: a shown figure's PNG above this many bytes is stored with a 256-colour palette (sample grids of noisy
#: pixels are 3x smaller that way; a line plot stays in full colour)
INLINE_PALETTE_ABOVE = 150_000


def inline_png(fig) -> bytes:
    """The PNG a notebook stores for ``fig``: INLINE_DPI, and a palette once it grows large, so that an
    executed notebook stays within a few MB and two runs' notebooks can be compared with nbdime."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=INLINE_DPI, bbox_inches="tight", facecolor=fig.get_facecolor())
    if buf.tell() <= INLINE_PALETTE_ABOVE:
        return buf.getvalue()
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return out.getvalue()


def show_figures_compactly() -> None:
    """In a notebook kernel, show every matplotlib figure as one :func:`inline_png` (no other format).

    The inline backend registers its own PNG formatter when it is loaded, so it is loaded first; outside
    IPython nothing changes."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    plt.switch_backend(matplotlib.get_backend())      # loads the backend now, so nothing registers after us
    formatters = shell.display_formatter.formatters
    for mime, formatter in formatters.items():
        if mime != "text/plain":
            formatter.pop(Figure, None)
    formatters["image/png"].for_type(Figure, inline_png)


def save_figure(fig, run: Run, name: str) -> list[Path]:
    """Save a figure as PNG and SVG into the run's figures/ (run_all copies them to figures/)."""
    import io

    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight")
        paths.append(atomic_write_bytes(run.path("figures", f"{name}.{ext}"), buf.getvalue()))
    return paths


def dataset_grid(dataset, n: int = 12, seed: int = 0, ncols: int = 6):
    """Overlays of ``n`` seeded random pairs of a prepared data set."""
    rng = np.random.default_rng(seed)
    ids = list(dataset.ids())
    pick = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    pairs = [dataset.load(ids[i]) for i in pick]
    return pair_grid(pairs, [ids[i] for i in pick], ncols=ncols, suptitle=dataset.name)


def coverage_histogram(manifests: dict):
    """Polyp coverage (% of the frame) per data set, on a log axis: how big the polyps are."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.concat([m.assign(dataset=name) for name, m in manifests.items()], ignore_index=True)
    df = df[df["coverage"] > 0].assign(coverage_percent=lambda d: d["coverage"] * 100)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(df, x="coverage_percent", hue="dataset", log_scale=True, element="step",
                 stat="percent", common_norm=False, ax=ax)
    ax.set_xlabel("polyp coverage (% of frame, log scale)")
    ax.set_ylabel("% of frames")
    fig.tight_layout()
    return fig
