"""Stage 01 entry point: prepare the data sets of the run (:func:`polyplib.data.prepare.build`), cached."""
from __future__ import annotations

from ..runs import Run
from .prepare import build
from .prepared import load_report


def run_stage(run: Run, force: bool = False) -> dict:
    """Stage 01: the dataset report, computed or loaded from the finished cache."""
    return run.cached("01", lambda: build(run), lambda: load_report(run), force=force)
