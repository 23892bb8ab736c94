"""Stage 06 entry point: train and test every configuration of the plan (:mod:`.study`), save the tables."""
from __future__ import annotations

import pandas as pd

from ..runs import Run
from .study import (STAGE, filter_table, paper_tables, read_table, run_plan, summary_with_tests, synthetic_sources,
                    validation_choice)


def run_stage(run: Run, force: bool = False) -> pd.DataFrame:
    """Stage 06: train and test every planned configuration; one row per configuration and seed.

    Saves results/06_segmentation (that table), 06_per_image (per test image, for paired tests),
    06_summary (mean and bootstrap CI per configuration, seeds pooled), 06_paired (Wilcoxon vs
    real-only), 06_sources (which synthetic sets were found), 06_validation (synthetic-only runs
    tested with the checkpoint of either validation split), 06_filter (pairs the quality gate kept)
    and 06_table3..6 (paper layout).
    ``force`` recomputes the stage but reuses every finished configuration whose key (settings,
    data, synthetic set) is unchanged (on one machine its result is a function of that key). To
    retrain one, delete its folder under ``segmentation/``.
    """
    def compute() -> pd.DataFrame:
        sources = synthetic_sources(run)
        results, per_image = run_plan(run)
        summary, paired = summary_with_tests(per_image, run.cfg)
        for name, table in (("06_sources", sources.drop(columns="folder")), ("06_per_image", per_image),
                            ("06_summary", summary), ("06_paired", paired), ("06_segmentation", results),
                            ("06_validation", validation_choice(results)), ("06_filter", filter_table(run))):
            run.save_table(name, table, stage=STAGE)
        for name, table in paper_tables(summary, run, results, paired).items():
            run.save_table(f"06_table{name[1:]}", table, stage=STAGE)
        return results

    return run.cached(STAGE, compute, lambda: read_table(run, "06_segmentation"), force)
