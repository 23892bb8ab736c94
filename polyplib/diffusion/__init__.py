"""Stage 02: cluster the training pairs and train 4-channel (RGB + mask) DDPMs on them.

Modules: ``clustering`` (features, KMeans, small-cluster merging), ``inception`` (the FID
Inception, loaded offline; reused by the FID of notebook 04), ``dataset`` (pairs as 4-channel
tensors in [-1, 1]), ``model`` (UNet2DModel + DDPMScheduler, ``sample_pairs``), ``train``
(accelerate trainer, ``train_all``, the ``python -m polyplib.diffusion.train`` command) and
``figures`` (the notebook's pictures). Submodules are imported on use: torch and diffusers load
only when a stage needs them.
"""
