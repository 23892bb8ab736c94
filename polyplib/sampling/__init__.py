"""Stage 03: synthetic labelled pairs from the stage-02 diffusion models (entry point: ``stage.run_stage``).

Modules: ``stage`` (the methods' plans and computations, run through :mod:`polyplib.synthetic.generate`),
``repaint`` (RePaint inpainting), ``guided`` + ``style`` + ``feature_nets`` (Styled-Diff), ``figures``.
"""
