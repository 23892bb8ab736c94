"""The catalogue of synthetic sets: every method's name, display label, folder, and the paper value it
may stand beside. The one place where method names are spelled.

A set is named after the method that made it; its folder is ``synthetic/<method>/`` (the budget study's
sets, which train nothing, sit apart in ``synthetic/budget/``). A set imported from another generator
(:mod:`.external`) keeps the name its user gives it and never stands beside a paper value; the
published SinGAN-Seg set is the one imported set the paper reports.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .. import paper

#: Methods in the paper's table order (folders under synthetic/), with their display names.
METHOD_LABELS = {"singan": "SinGAN-Seg (trained here)", "singan-published": "SinGAN-Seg (published set)",
                 "gan": "4-channel GAN", "diff": "Diff", "full-diff": "Full-Diff",
                 "styled-diff": "Styled-Diff", "full-styled-diff": "Full-Styled-Diff",
                 "mkl-diff": "Diff + colour match (MKL only)", "mkl-full-diff": "Full-Diff + colour match (MKL only)",
                 "full-diff-fixed-sigma": "Full-Diff, fixed sigma (ablation)",
                 "full-diff-learned-sigma": "Full-Diff, learned sigma (ablation)"}
#: the paper's sets, always listed by stage 04 (absent ones as absent); the others only when the run plans them
PAPER_SETS = ("singan", "gan", "diff", "full-diff", "styled-diff", "full-styled-diff")
#: RePaint methods and the model that redraws each source ("cluster": the source's own cluster model)
REPAINT_MODELS = {"diff": "cluster", "full-diff": "full",
                  "full-diff-fixed-sigma": "full-fixed-sigma", "full-diff-learned-sigma": "full-learned-sigma"}
#: styled sets: name -> (how: "mkl" colour matching alone | "guided" the paper's Styled-Diff, the method it styles)
STYLED_METHODS = {"mkl-diff": ("mkl", "diff"), "mkl-full-diff": ("mkl", "full-diff"),
                  "styled-diff": ("guided", "diff"), "full-styled-diff": ("guided", "full-diff")}
#: the sets made by stage 05's GANs, and the diffusion sets it compares them with
GAN_SETS = ("singan", "singan-published", "gan")
DIFFUSION_SETS = ("diff", "full-diff", "mkl-diff", "mkl-full-diff", "styled-diff", "full-styled-diff")
#: unconditional samplers' step study: ``uncond-<sampler>-<steps>``; the budget study: ``budget-<sampler>-<calls>``
UNCONDITIONAL = re.compile(r"^uncond-(?P<sampler>.+)-(?P<steps>\d+)$")
BUDGET_PREFIX = "budget-"
#: an imported set's name: letters, digits, '-', '_' (it becomes a folder and a table row)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def unconditional_name(sampler: str, steps: int) -> str:
    return f"uncond-{sampler}-{steps}"


def budget_name(sampler: str, calls: int) -> str:
    return f"{BUDGET_PREFIX}{sampler}-{calls}"


def set_dir(run, method: str | None = None) -> Path:
    """A method's folder (``synthetic/`` itself without a method)."""
    if method and method.startswith(BUDGET_PREFIX):
        return run.path("synthetic", "budget", method)
    return run.path("synthetic", method) if method else run.path("synthetic")


def is_reserved(name: str) -> bool:
    """A name the study's own generators write: an imported set may not take it."""
    return (name in METHOD_LABELS or name in ("budget", "real", "real-test", "real-halves")
            or bool(UNCONDITIONAL.match(name)) or name.startswith(BUDGET_PREFIX))


def imported_label(folder: Path) -> str | None:
    """The label of a set imported by :mod:`.external` (its ``plan.json`` says so), else None."""
    try:
        info = json.loads((Path(folder) / "plan.json").read_text()).get("info", {})
    except (OSError, json.JSONDecodeError):      # no plan, not a folder, half-written
        return None
    return info.get("label") if info.get("imported") else None


def singan_label(sources: int) -> str:
    """SinGAN-Seg trained here names its N: the paper's set was made from SinGAN-Seg's 1000 images."""
    return f"SinGAN-Seg (trained here, N = {sources} source image{'s' if sources != 1 else ''})"


def label(method: str, sources: int | None = None, imported: str | None = None) -> str:
    """The display name of a set (``imported``: the label an imported set was given)."""
    if imported:
        return imported
    if method == "singan" and sources is not None:
        return singan_label(sources)
    return METHOD_LABELS.get(method, method)


def paper_key(method: str, sources: int | None = None, departures: tuple[str, ...] = (),
              imported: bool = False) -> str | None:
    """The paper set whose numbers may stand beside this set (None: none may; see ``paper.like_for_like``).
    An imported set is another generator's: no paper value stands beside it."""
    if imported:
        return None
    return paper.like_for_like(method, sources, departures)
