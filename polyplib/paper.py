"""The paper's settings and numbers, each with where it comes from: the one place they are written.

Sources: the authors' Sep-2023 draft (arXiv 2310.16794; Tables A.1-A.3 of its appendix) and, where
the draft is vague, the authors' code (github.com/dsaragih/diffuse-gen), as summarised in the
project's STUDY.md ("What the authors' code does").

* Settings (Tables A.1-A.3, the data, clustering, FID and segmentation protocol) are keyed by the
  configuration key that holds them, so a resolved configuration is compared with the paper value
  for value (:func:`differences`, and :mod:`polyplib.differences` for the report); the ``paper``
  profile is tested to equal them, and the configuration's defaults read them from here.
* What the authors did that no key of ours can equal (an unseeded test-set draw, one segmentation
  run per configuration) is stated as a fact and compared in words.
* The results (Tables 1-5 and 7, with their per-set values) are what the tables and figures put in
  their *paper* columns, through the accessors below, which also decide which of this run's sets a
  paper value may stand beside (:func:`like_for_like`). Table 6 (Dice of the small-data study) is not
  held: STUDY.md does not give its values, so no Dice column has a paper value.

A test greps the project for copies of the distinctive values: they are written here only.
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
    "ddpm.norm_groups": Fact(32, "guided-diffusion nn.normalization: GroupNorm32(32, channels), 8 channels per group "
                                 "at the authors' 256-channel first level"),
    "ddpm.resblock_updown": Fact(True, f"{A1}: resblock_updown True"),
    "ddpm.dropout": Fact(0.0, f"{A1}: dropout 0"),
    "ddpm.variance": Fact("learned_range", f"{A1}: learn_sigma True; loss MSE(eps) + L_vlb, use_kl False, "
                                           "rescale_learned_sigmas False"),
    "ddpm.num_train_timesteps": Fact(1000, f"{A1}: diffusion_steps 1000"),
    "ddpm.beta_schedule": Fact("linear", f"{A1}: noise_schedule linear"),
    "ddpm.snr_gamma": Fact(None, f"{A1}: guided-diffusion's loss, the epsilon MSE averaged uniformly over "
                                 "timesteps (no Min-SNR weighting)"),
    "ddpm.learning_rate": Fact(1e-4, f"{A1}: lr 1e-4"),
    "ddpm.batch_size": Fact(1, f"{A1}: batch_size 1"),
    "ddpm.max_steps": Fact(110_000, "draft, Methods: 110k iterations per model"),
    "ddpm.mixed_precision": Fact("fp16", f"{A1}: use_fp16 True"),
    "ddpm.ema_decay": Fact(0.9999, "guided-diffusion's image_train.py default ema_rate (the draft and the authors' "
                                   "code state no other)"),
}

# Table A.2: RePaint inpainting of all four channels
SAMPLING: dict[str, Fact] = {
    "sampling.sampler": Fact("repaint", f"{A2}: p_sample_loop_progressive, ancestral steps on the jump schedule"),
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

# The data, the clusters, FID and segmentation: the settings that have a configuration key
D = "draft, Methods"
SEG = "dsaragih/divergent-nets (the authors' segmentation code) and draft, Methods"
DATA: dict[str, Fact] = {
    "data.source": Fact("real", f"{D}: HyperKvasir's segmented polyp images (the 1000 pairs of Kvasir-SEG)"),
    "data.train": Fact("kvasir-seg", f"{D}: HyperKvasir segmented images = Kvasir-SEG"),
    "data.split.kind": Fact("paper", f"{D}: 348 named training images (shipped with polyplib, with their clusters)"),
    "data.split.n_train": Fact(348, f"{D}: 348 image/mask pairs for the generators"),
    "data.split.n_test": Fact(200, f"{D}: a disjoint set of 200 real test images"),
    "clustering.k": Fact(20, f"{D}: K = 20 (ablation 10/20/30/40)"),
    "clustering.features": Fact("paper", f"{D}: KMeans (random_state 0) on ImageNet Inception-v3 features of image "
                                "and mask; the authors' own assignment ships with polyplib (paper_clusters.csv)"),
    "clustering.seed": Fact(0, f"{D}: KMeans random_state 0"),
}
METRICS: dict[str, Fact] = {
    "metrics.fid_resize": Fact("clean", f"{D}: FID with clean-fid (Parmar et al.: PIL bicubic resize to 299 px)"),
    "metrics.fid_sets": Fact(3, "draft Table 1: three FID values per method, one per synthetic set"),
}
SEGMENTATION: dict[str, Fact] = {
    "segmentation.models": Fact(["unetplusplus"], f"{SEG}: smp UNet++"),
    "segmentation.encoder": Fact("se_resnext50_32x4d", f"{SEG}: encoder se_resnext50_32x4d"),
    "segmentation.encoder_weights": Fact("imagenet", f"{SEG}: ImageNet encoder weights"),
    "segmentation.epochs": Fact(150, f"{SEG}: 150 epochs, best checkpoint by validation IoU"),
    "segmentation.lr": Fact(1e-4, f"{SEG}: Adam lr 1e-4"),
    "segmentation.lr_drop_epoch": Fact(50, f"{SEG}: lr 1e-5 from epoch 50"),
    "segmentation.lr_after_drop": Fact(1e-5, f"{SEG}: lr 1e-5 from epoch 50"),
    "segmentation.batch_size": Fact(16, f"{SEG}: batch 16"),
    "segmentation.val_fraction": Fact(0.2, f"{SEG}: 80/20 train/validation split"),
    "segmentation.augmentation": Fact(["none", "control"], "draft Table 4: with and without the Control augmentation"),
    "segmentation.mix_alpha": Fact(0.5, f"{SEG}: a real image is joined by its synthetic samples with probability 0.5"),
    "segmentation.mix_r": Fact([1, 2, 3], f"{SEG}: r in 1, 2, 3 synthetic samples per real image"),
    "segmentation.synthetic_per_real": Fact([1, 2, 3], "draft Table 3: N = 1, 2, 3 synthetic pairs per real image"),
    "segmentation.small_n": Fact([16, 32, 64, 128], "draft Tables 5-6: N = 16, 32, 64, 128 real images"),
    "segmentation.patience": Fact(None, "dsaragih/divergent-nets unet_plusplus.py: train_model runs every one of "
                                        "--num_epochs (no early stopping) and keeps the best checkpoint by validation IoU"),
    "segmentation.synthetic_validation": Fact("synthetic", "dsaragih/divergent-nets: synthetic-only runs choose their "
                                                           "best checkpoint on a synthetic validation split"),
    "segmentation.synthetic_schedule": Fact(["mixed"], f"{SEG}: synthetic pairs join the real images in the same "
                                                       "training, by the mixing rule (no pretraining stage)"),
    "segmentation.synthetic_filter": Fact([None], f"{SEG}: every generated pair is used (no quality filter)"),
    "segmentation.synthetic_weight": Fact(1.0, f"{SEG}: one Dice loss over the batch; synthetic pairs weigh as "
                                               "much as real ones"),
}

SETTINGS: dict[str, Fact] = {**DATA, **DDPM, **SAMPLING, **STYLE, **METRICS, **SEGMENTATION}

# What the authors did that no configuration key of ours can equal (stated, compared in words)
TEST_SET_DRAW = Fact("unseeded", "dsaragih/divergent-nets: the 200 test images come from an unseeded shuffle")
SEGMENTATION_RUNS = Fact(1, "draft Tables 3-6: one training run per configuration, no seed stated")
SYNTHETIC_VALIDATION = SEGMENTATION["segmentation.synthetic_validation"]    # a setting since it has a key
SINGAN_SEG_SOURCE_IMAGES = Fact(1000, "SinGAN-Seg (Thambawita et al. 2022): one SinGAN per HyperKvasir polyp image, "
                                      "10 samples each; the paper's GAN is its published set (osf.io/xrgz8)")
SINGAN_SEG_SAMPLES_PER_IMAGE = Fact(10, "SinGAN-Seg's published set: 10 synthetic pairs per real image")
SINGAN_SEG_DOWNLOAD = "osf.io/xrgz8"

# ----------------------------------------------------------------------------- the paper's results
T1 = "draft Table 1 (FID against real, clean-fid, 256 px; one value per synthetic set)"
#: Table 1: FID of each synthetic set. The paper's "GAN" is SinGAN-Seg (its published set).
FID_PER_SET: dict[str, Fact] = {
    "singan-published": Fact((118.73, 119.45, 116.92), T1),
    "diff": Fact((36.01, 37.90, 37.78), T1),
    "styled-diff": Fact((66.17, 65.48, 66.32), T1),
    "full-diff": Fact((40.59, 40.77, 40.27), T1),
    "full-styled-diff": Fact((60.15, 59.98, 59.95), T1),
}
T2 = "draft Table 2 (MS-SSIM within a set; the synthetic values as the draft's text gives them, approximate)"
#: Table 2: MS-SSIM within a set (lower = more diverse).
MSSSIM: dict[str, Fact] = {
    "real": Fact(0.1813, "draft Table 2: the real training images"),
    "singan-published": Fact(0.20, T2), "diff": Fact(0.21, T2), "styled-diff": Fact(0.23, T2),
}
T3 = "draft Table 3 (synthetic data only, IoU on the 200 real test images; N synthetic per real image)"
#: Table 3: IoU of a segmenter trained on synthetic pairs only, by N synthetic pairs per real image.
#: The draft's GAN and Diff rows repeat one value for N = 1, 2, 3.
IOU_SYNTHETIC_ONLY: dict[str, Fact] = {
    "real": Fact({0: 0.809}, T3),
    "singan-published": Fact({1: 0.579, 2: 0.579, 3: 0.579}, T3),
    "diff": Fact({1: 0.595, 2: 0.595, 3: 0.595}, T3),
    "styled-diff": Fact({1: 0.684, 2: 0.703, 3: 0.740}, T3),
    "full-diff": Fact({1: 0.615, 2: 0.598, 3: 0.550}, T3),
    "full-styled-diff": Fact({1: 0.575, 2: 0.553, 3: 0.521}, T3),
}
T4 = "draft Table 4 (real + synthetic, with the Control augmentation, IoU)"
#: Table 4: IoU of real alone and real + synthetic, trained with the Control augmentation.
IOU_REAL_PLUS: dict[str, Fact] = {
    "real": Fact(0.809, T4), "singan-published": Fact(0.802, T4), "styled-diff": Fact(0.808, T4),
}
T5 = "draft Table 5 (N real images alone, and + Styled-Diff at its best r, IoU)"
#: Table 5: IoU with N real images, alone and with Styled-Diff pairs (the best r).
IOU_SMALL: dict[int, Fact] = {
    16: Fact((0.526, 0.607), T5), 32: Fact((0.620, 0.681), T5),
    64: Fact((0.693, 0.729), T5), 128: Fact((0.798, 0.753), T5),
}
#: Table 5's synthetic set.
SMALL_SOURCE = "styled-diff"
T7 = "draft Table 7 (blinded expert review of 30 pairs, judged real / fake of 10)"
#: Table 7: how many of 10 pairs per source the expert judged real and fake.
REVIEW: dict[str, Fact] = {"real": Fact((4, 6), T7), "diff": Fact((3, 7), T7), "styled": Fact((3, 7), T7)}
REVIEW_KAPPA = Fact(0.428, "draft Table 7: Cohen's kappa of the expert's real/fake judgement")

#: What the paper states about its own compute (reference only; never used in a computation).
COMPUTE_REPORTED: dict[str, Fact] = {
    "ddpm": Fact("each DDPM <= 16 h on one V100 (110k iterations)", "draft, Methods"),
    "guided": Fact("guided style transfer ~1 min per image on an A6000", "draft, Methods"),
}


def setting(key: str) -> Any:
    """The paper's value of a configuration key (a copy: lists may be handed to pydantic defaults)."""
    import copy

    return copy.deepcopy(SETTINGS[key].value)


#: the settings that make a diffusion set the authors' method rather than another one. Scale (model size,
#: training length, steps) is not among them: a smaller run of the same method keeps the paper's numbers beside it
DIFFUSION_METHOD_KEYS = ("ddpm.variance", "sampling.start", "sampling.sampler")


def method_departures(cfg) -> tuple[str, ...]:
    """The keys of ``DIFFUSION_METHOD_KEYS`` whose value in ``cfg`` is not the authors'."""
    return tuple(k for k in DIFFUSION_METHOD_KEYS if cfg.section(k) != SETTINGS[k].value)


def like_for_like(method: str, singan_sources: int | None = None, departures: tuple[str, ...] = ()) -> str | None:
    """The paper's set whose numbers may stand beside this run's set ``method``, or None.

    A SinGAN-Seg trained here on fewer source images than SinGAN-Seg's 1000 is not the paper's GAN
    set, and a diffusion set drawn with a variance or RePaint start other than the authors'
    or sampler (``departures``, from :func:`method_departures`) is another method: their rows get no paper value.
    Everything else is compared with the paper set of its name."""
    if method == "singan":
        return "singan-published" if (singan_sources or 0) >= SINGAN_SEG_SOURCE_IMAGES.value else None
    if departures and "diff" in method:
        return None
    return method


def fid(method: str | None) -> float:
    """The paper's FID of a set, the mean of Table 1's three per-set values (NaN where it has none)."""
    fact = FID_PER_SET.get(method)
    return round(sum(fact.value) / len(fact.value), 2) if fact else float("nan")


def fid_per_set(method: str | None) -> str:
    """Table 1's per-set values as text ('' where the paper has none)."""
    fact = FID_PER_SET.get(method)
    return " / ".join(f"{v:.2f}" for v in fact.value) if fact else ""


def msssim(method: str | None) -> float:
    return MSSSIM[method].value if method in MSSSIM else float("nan")


def iou_synthetic_only(method: str | None, per_real: int) -> float | None:
    fact = IOU_SYNTHETIC_ONLY.get(method)
    return fact.value.get(per_real) if fact else None


def iou_real_plus(method: str | None) -> float | None:
    return IOU_REAL_PLUS[method].value if method in IOU_REAL_PLUS else None


def differences(cfg, keys: dict[str, Fact] = SETTINGS) -> list[tuple[str, Any, Any, str]]:
    """(key, this run's value, the paper's, source) for every setting where the two differ."""
    out = []
    for key, fact in keys.items():
        value = cfg.section(key)
        if value != fact.value:
            out.append((key, value, fact.value, fact.source))
    return out
