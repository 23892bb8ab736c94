"""The paper's settings and numbers, each with where it comes from: the one place they are written.

Sources: the authors' Sep-2023 draft (arXiv 2310.16794; Tables A.1-A.3 of its appendix) and, where
the draft is vague, the authors' code (github.com/dsaragih/diffuse-gen), as summarised in the
project's STUDY.md ("What the authors' code does"). Settings are keyed by the configuration key
that holds them, so a resolved configuration can be compared with the paper value for value
(``differences``), and the ``paper`` profile is tested to equal them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fact:
    """One value of the paper and where it comes from."""

    value: Any
    source: str


A1 = "draft Table A.1 / diffuse-gen optimization/image_editor.py"
A2 = "draft Table A.2 / diffuse-gen guided_diffusion/gaussian_diffusion.py (p_sample_loop_progressive)"

# Table A.1: the diffusion model and its training (guided-diffusion flags -> ddpm.* keys)
DDPM: dict[str, Fact] = {
    "data.resolution": Fact(256, f"{A1}: image_size 256"),
    "ddpm.block_out_channels": Fact([256, 256, 512, 512, 1024, 1024],
                                    f"{A1}: num_channels 256 x guided-diffusion's channel_mult (1,1,2,2,4,4) at 256 px"),
    "ddpm.layers_per_block": Fact(2, f"{A1}: num_res_blocks 2"),
    "ddpm.attention_resolutions": Fact([16, 8], f"{A1}: attention_resolutions \"16, 8\" (the sampling script says "
                                               "\"16\"; the authors told users \"32,16,8 or 16,8\")"),
    "ddpm.num_head_channels": Fact(64, f"{A1}: num_head_channels 64"),
    "ddpm.scale_shift_norm": Fact(True, f"{A1}: use_scale_shift_norm True"),
    "ddpm.resblock_updown": Fact(True, f"{A1}: resblock_updown True"),
    "ddpm.dropout": Fact(0.0, f"{A1}: dropout 0"),
    "ddpm.variance": Fact("learned_range", f"{A1}: learn_sigma True; loss MSE(eps) + L_vlb, use_kl False, "
                                           "rescale_learned_sigmas False"),
    "ddpm.num_train_timesteps": Fact(1000, f"{A1}: diffusion_steps 1000"),
    "ddpm.beta_schedule": Fact("linear", f"{A1}: noise_schedule linear"),
    "ddpm.learning_rate": Fact(1e-4, f"{A1}: lr 1e-4"),
    "ddpm.batch_size": Fact(1, f"{A1}: batch_size 1"),
    "ddpm.max_steps": Fact(110_000, "draft, Methods: 110k iterations per model"),
    "ddpm.mixed_precision": Fact("fp16", f"{A1}: use_fp16 True"),
}

# Table A.2: RePaint inpainting of all four channels
SAMPLING: dict[str, Fact] = {
    "sampling.steps": Fact(200, f"{A2}: timestep_respacing 200"),
    "sampling.start": Fact("noise", f"{A2}: the inpainting path starts from pure noise (skip_timesteps is ignored)"),
    "sampling.skip_steps": Fact(80, f"{A2}: skip_timesteps 80 (used only by the style-transfer pass)"),
    "sampling.jump_length": Fact(10, f"{A2}: get_schedule_jump jump_length 10"),
    "sampling.jump_n_sample": Fact(5, f"{A2}: get_schedule_jump jump_n_sample 5"),
    "sampling.dilation_px": Fact(20, f"{A2}: mask dilated with a 20 x 20 elliptical kernel"),
    "sampling.opening_px": Fact(16, "draft, Methods: morphological opening with a 16 x 16 ellipse"),
    "sampling.samples_per_image": Fact(3, "draft, Methods: 3 samples per real image"),
}

A3 = "draft Table A.3 / diffuse-gen optimization/arguments.py (defaults) and image_editor.py"

# Table A.3: Styled-Diff, the guided style transfer after inpainting, then colour matching
STYLE: dict[str, Fact] = {
    "sampling.style.guided": Fact(True, "draft, Methods: Styled-Diff = guided style transfer, then colour matching"),
    "sampling.style.colour_match": Fact(True, f"{A3}: --use_colormatch, color-matcher method 'mkl'"),
    "sampling.style.keep_context": Fact(False, f"{A3}: the style pass runs with inpainting=False (the whole frame)"),
    "sampling.style.steps": Fact(200, f"{A3}: style_timestep_respacing 200"),
    "sampling.style.skip_steps": Fact(80, f"{A3}: style_skip_timesteps 80 (120 guided steps)"),
    "sampling.style.lambda_zecon": Fact(500.0, f"{A3}: lambda_zecon 500"),
    "sampling.style.lambda_vgg": Fact(100.0, f"{A3}: lambda_vgg 100 (conv1_1 + conv2_1)"),
    "sampling.style.lambda_mse": Fact(5000.0, f"{A3}: lambda_mse 5000"),
    "sampling.style.lambda_dino": Fact(10000.0, f"{A3}: lambda_trg 10000 (DINO [CLS] style)"),
    "sampling.style.lambda_l2": Fact(10000.0, f"{A3}: l2_trg_lambda 10000"),
    "sampling.style.lambda_divergence": Fact(40000.0, f"{A3}: lambda_dir_cls 40000 (semantic divergence)"),
    "sampling.style.lambda_range": Fact(200.0, f"{A3}: range_lambda 200"),
    "sampling.style.divergence_above": Fact(50, f"{A3}: diff_iter 50"),
    "sampling.style.zecon_patches": Fact(256, "diffuse-gen optimization/losses.py: zecon_loss_direct num_patches 256"),
    "sampling.style.dino_model": Fact("vit_base_patch8_224.dino", "DiffuseIT model_vit/config.yaml: dino_vitb8 at "
                                      "224 px (the extractor the authors' Loss_vit uses)"),
}

# Consequences of Table A.2, stated separately so that a test can check the code reproduces them
REPAINT_CALLS_PER_PAIR = Fact(960, f"{A2}: get_schedule_jump(t_T=200, n_sample=1, jump_length=10, jump_n_sample=5)")
REPAINT_RENOISE_STEPS_PER_PAIR = Fact(760, f"{A2}: the same schedule's upward steps")

SETTINGS: dict[str, Fact] = {**DDPM, **SAMPLING, **STYLE}


def differences(cfg, keys: dict[str, Fact] = SETTINGS) -> list[tuple[str, Any, Any, str]]:
    """(key, this run's value, the paper's, source) for every setting where the two differ."""
    out = []
    for key, fact in keys.items():
        value = cfg.section(key)
        if value != fact.value:
            out.append((key, value, fact.value, fact.source))
    return out
