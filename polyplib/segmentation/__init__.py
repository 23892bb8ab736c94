"""Stage 06: segmentation models (smp) trained on real, synthetic and mixed data, tested on real.

Entry point: ``stage.run_stage``. Modules: ``models`` (smp models, offline encoder weights), ``data``
(pairs, Control augmentation, mixing rule), ``train`` (the paper's protocol, resumable), ``evaluate``
(per-image Dice/IoU, bootstrap CIs, Wilcoxon), ``study`` (the plan, the paper's tables and the
label-fidelity judge), ``figures``.
"""
