"""Stage 02: cluster the training pairs and train 4-channel (RGB + mask) DDPMs on them (entry point:
``stage.run_stage``).

Modules: ``clustering`` (features from the FID Inception of ``polyplib.features``, KMeans,
small-cluster merging), ``dataset`` (pairs as 4-channel tensors in [-1, 1]), ``model``
(UNet2DModel + DDPMScheduler, and the one loader of a saved model), ``gaussian`` (the chain with
learned sigma), ``unconditional`` (DDPM / DDIM / DPM-Solver++ sampling of a trained model), ``train``
(accelerate trainer, ``train_all``, the ``python -m polyplib.diffusion.train`` command), ``convert``,
``colour`` and ``figures`` (the notebook's pictures). Submodules are imported on use: torch and diffusers
load only when a stage needs them.
"""
