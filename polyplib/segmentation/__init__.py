"""Stage 06: segmentation models (smp) trained on real, synthetic and mixed data, tested on real.

Entry point: :func:`run_study`. Modules: ``models`` (smp models, offline encoder weights), ``data``
(pairs, Control augmentation, mixing rule), ``train`` (the paper's protocol, resumable), ``evaluate``
(per-image Dice/IoU, bootstrap CIs, Wilcoxon), ``study`` (the plan and the paper's tables),
``figures``.
"""
from .evaluate import bootstrap_ci, dice_iou, pair_scores, paired_test
from .models import build_model, load_model, save_model
from .study import (Configuration, harm_sentence, paper_tables, plan, plan_table, read_table, run_study,
                    synthetic_sources, verdicts)

__all__ = ["Configuration", "bootstrap_ci", "build_model", "dice_iou", "load_model", "pair_scores",
           "harm_sentence", "paired_test", "paper_tables", "plan", "plan_table", "read_table", "run_study",
           "save_model", "synthetic_sources", "verdicts"]
