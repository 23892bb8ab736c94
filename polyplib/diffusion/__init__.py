"""Stage 02: cluster the training pairs and train 4-channel (RGB + mask) DDPMs on them.

Modules: ``clustering`` (features from the FID Inception of ``polyplib.metrics.fid``, KMeans,
small-cluster merging), ``dataset`` (pairs as 4-channel tensors in [-1, 1]), ``model``
(UNet2DModel + DDPMScheduler; sampled by ``polyplib.diffusion.unconditional``),
``train`` (accelerate trainer, ``train_all``, the ``python -m polyplib.diffusion.train`` command) and
``figures`` (the notebook's pictures). Submodules are imported on use: torch and diffusers load
only when a stage needs them.
"""
