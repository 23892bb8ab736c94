"""Stage 04: FID / KID, MS-SSIM, label fidelity, memorisation and the review kit (entry point: ``stage.run_stage``).

Modules: ``stage``, ``fid`` (FID and KID from features), ``msssim``, ``fidelity`` (label fidelity and the
seam check), ``budget`` (the samplers' quality-vs-cost study), ``review`` (blinded expert review), ``figures``.
"""
