"""Stage 02 entry point: cluster the training pairs and train every planned DDPM, cached.

Clusters are kept when the stage reruns (``recluster=False``): a changed training setting retrains the
models on the same clusters; ``python -m polyplib.diffusion.train --force`` reclusters.
"""
from __future__ import annotations

import pandas as pd

from ..runs import Run
from .train import load_summary, train_all


def run_stage(run: Run, force: bool = False) -> pd.DataFrame:
    """Stage 02: one row per model (trained, resumed, cached or pretrained), also ``models/ddpm/summary.csv``."""
    return run.cached("02", lambda: train_all(run, force=force, recluster=False), lambda: load_summary(run), force)
