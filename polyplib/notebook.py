"""The opening cell every notebook shares: resolve the run, seed, and say what will run."""
from __future__ import annotations

import random

from .plots import show_figures_compactly
from .runs import Run, open_run, package_versions


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (where installed) so a rerun draws the same numbers."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def setup(profile: str = "smoke", overrides: list[str] | tuple[str, ...] = (), run_dir: str = "",
          stage: str | None = None) -> Run:
    """Open the run folder for this profile, show figures compactly (plots.inline_png) and print the
    configuration the stage depends on."""
    run = open_run(profile, overrides, run_dir or None)
    seed_everything(0)
    show_figures_compactly()
    versions = package_versions()
    print(f"profile: {run.cfg.profile}   run folder: {run.dir}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                   if k in ("python", "polyplib", "torch", "diffusers", "numpy") and v))
    if stage is not None:
        state = run.stage(stage)
        print(f"stage {state.stage.id} ({state.stage.name}) key {state.key}: "
              f"{'cached results will be shown' if state.is_done() else 'will be computed'}")
        for key in state.stage.depends_on:
            value = run.cfg.section(key)
            print(f"  {key}: {value.model_dump() if hasattr(value, 'model_dump') else value}")
    return run
