"""Stage 05: GAN baselines in the diffusion models' harness (entry point: ``stage.run_stage``).

Modules: ``stage``, ``train`` (the 4-channel GAN), ``singan`` (SinGAN-Seg), ``published`` (the published
SinGAN-Seg set), ``compute`` (what every generator cost), ``models``, ``diffaugment``, ``figures``.
"""
