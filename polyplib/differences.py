"""What separates a run from the paper, setting by setting, computed from the configuration.

Every line compares the resolved configuration with :mod:`polyplib.paper` and is one of:

* ``differs`` - this run does something else than the authors (the line says what, and what they did);
* ``equal`` - the same as the authors (the line says so, with the paper's value);
* ``extra`` - something this study adds that the paper has no counterpart for (a set, a baseline);
* ``note`` - context a reader needs (where the run's seconds come from, where the paper's numbers do).

The study report prints all four groups; tests change each setting and watch its line change. A
line never states a paper value of its own: it reads it from ``paper.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import paper

DIFFERS, EQUAL, EXTRA, NOTE = "differs", "equal", "extra", "note"


@dataclass(frozen=True)
class Line:
    """One topic of the comparison: its status and the sentence the report prints."""

    topic: str
    status: str
    text: str


@dataclass
class Context:
    """What a finished (or partly finished) run adds to its configuration: the sets stage 03 reported
    absent, how many source images the SinGAN-Seg set trained here has, and the device it ran on."""

    absent: dict[str, str] = field(default_factory=dict)
    singan_sources: int | None = None
    device: str | None = None
    imported: dict[str, str] = field(default_factory=dict)    # sets imported from other generators: name -> label

    @classmethod
    def of(cls, run) -> "Context":
        import json

        from .synthetic.catalogue import imported_label, set_dir
        from .synthetic.folder import absent_methods, sources_of

        try:
            meta = json.loads(run.path("run_meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            meta = {}
        device = meta.get("device") or {}
        gpus = device.get("gpus")
        text = (", ".join(gpus) if gpus else "CPU only") + f" ({device.get('cpu_count', '?')} cores)" if device else None
        root = set_dir(run)
        imported = {p.name: imported_label(p) for p in sorted(root.iterdir()) if p.is_dir() and imported_label(p)} \
            if root.is_dir() else {}
        return cls(absent_methods(run), sources_of(run, "singan"), text, imported)


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _keyed(topic: str, cfg, keys: list[str], equal_text: str, consequence: str = "") -> Line:
    """A topic decided by configuration keys alone: equal, or each differing key with the paper's value
    (then ``consequence``, what the difference does, if given)."""
    found = paper.differences(cfg, {k: paper.SETTINGS[k] for k in keys})
    if not found:
        return Line(topic, EQUAL, f"{equal_text} (as the paper: {_values(keys)}).")
    text = "; ".join(f"`{k}` = {_show(v)} (paper: {_show(p)})" for k, v, p, _ in found)
    return Line(topic, DIFFERS, text + (f": {consequence}" if consequence else "") + ".")


def _values(keys: list[str]) -> str:
    return ", ".join(f"`{k}` = {_show(paper.SETTINGS[k].value)}" for k in keys)


# ----------------------------------------------------------------------------- the topics
def data(cfg, ctx: Context) -> Line:
    if cfg.data.source == "phantom":
        return Line("Data", DIFFERS, "the embedded procedural phantom (domain A for training, domain B for transfer), "
                    "not Kvasir-SEG: its numbers test the code paths and say nothing about real polyps.")
    return _keyed("Data", cfg, ["data.source", "data.train"], "Kvasir-SEG (HyperKvasir's segmented images)")


def resolution(cfg, ctx: Context) -> Line:
    return _keyed("Resolution", cfg, ["data.resolution"], "256 px", "FID, MS-SSIM and IoU all depend on it")


def split(cfg, ctx: Context) -> Line:
    from .data.splits import training_images

    sp = cfg.data.split
    if sp.kind != "paper":
        return _keyed("Split", cfg, ["data.split.kind", "data.split.n_train", "data.split.n_test"],
                      "the paper's named training images", f"a {sp.kind} split, not the paper's named training images")
    n = training_images(sp)          # what ran: the shipped list, whatever `n_train` says
    what = (f"the paper's {n:,} named training images (`data.split.kind` = paper, which does not read "
            f"`data.split.n_train`)")
    test = _keyed("Split", cfg, ["data.split.n_test"], "")
    if test.status == EQUAL:
        return Line("Split", EQUAL, f"{what} and {sp.n_test:,} test images drawn from the rest (as the paper: "
                    f"{_values(['data.split.n_train', 'data.split.n_test'])}).")
    return Line("Split", DIFFERS, f"{what}; {test.text[:-1]}: fewer test images than the authors' (their "
                f"{paper.SETTINGS['data.split.n_train'].value:,} training images are the same).")


def test_draw(cfg, ctx: Context) -> Line:
    sp = cfg.data.split
    return Line("Test images", DIFFERS,
                f"drawn with `data.split.seed` = {sp.seed} (the authors' test images came from an "
                f"{paper.TEST_SET_DRAW.value} shuffle, so which {paper.DATA['data.split.n_test'].value} they were is "
                "unknown; no run can test on the same images).")


def clusters(cfg, ctx: Context) -> Line:
    c = cfg.clustering
    if c.features == "paper" and c.k == paper.SETTINGS["clustering.k"].value:
        return Line("Clusters", EQUAL, f"the authors' own assignment of the 348 images into K = {c.k} clusters "
                    "(shipped with polyplib).")
    how = {"inception": f"KMeans (random_state {c.seed}) on FID Inception pool features of image and mask, "
                        "recomputed here (the authors' assignment: `clustering.features=paper`)",
           "handcrafted": "KMeans on a colour and mask-shape descriptor (no Inception features)",
           "paper": "the authors' assignment"}[c.features]
    return Line("Clusters", DIFFERS, f"K = {c.k}, {how} (paper: K = {paper.SETTINGS['clustering.k'].value}, the "
                "authors' assignment from ImageNet Inception-v3 features).")


UNET_KEYS = ["ddpm.block_out_channels", "ddpm.layers_per_block", "ddpm.attention_resolutions",
             "ddpm.num_head_channels", "ddpm.norm_groups", "ddpm.scale_shift_norm", "ddpm.resblock_updown",
             "ddpm.dropout"]


def unet(cfg, ctx: Context) -> Line:
    return _keyed("UNet", cfg, UNET_KEYS, "the authors' guided-diffusion UNet (Table A.1)")


def variance(cfg, ctx: Context) -> Line:
    return _keyed("Variance", cfg, ["ddpm.variance"], "learned sigma, trained on MSE + L_vlb",
                  "fixed posterior variance, noise MSE only")


def noise_schedule(cfg, ctx: Context) -> Line:
    return _keyed("Noise schedule", cfg, ["ddpm.num_train_timesteps", "ddpm.beta_schedule"], "T = 1000, linear betas")


def training_length(cfg, ctx: Context) -> Line:
    d = cfg.ddpm
    if d.pretrained:
        return Line("DDPM training", NOTE, f"converted checkpoints from `{d.pretrained}` (`ddpm.pretrained`), not "
                    "trained in this run; the DDPM settings describe the configuration, not how they were trained.")
    keys = ["ddpm.max_steps", "ddpm.batch_size", "ddpm.learning_rate", "ddpm.snr_gamma"]
    images = d.max_steps * d.batch_size * d.gradient_accumulation_steps
    ref = paper.SETTINGS["ddpm.max_steps"].value * paper.SETTINGS["ddpm.batch_size"].value
    return _keyed("DDPM training", cfg, keys, "110k steps of batch 1 at lr 1e-4",
                  f"{images:,} training images seen per model (paper: {ref:,})")


def ema(cfg, ctx: Context) -> Line:
    return _keyed("EMA", cfg, ["ddpm.ema_decay"], "EMA of the weights")


def precision(cfg, ctx: Context) -> Line:
    auto = ("bf16 autocast where the GPU or the CPU has native bf16, else fp16 on a GPU and fp32 on a CPU, "
            "in training and in sampling" if cfg.ddpm.mixed_precision == "auto" else "")
    return _keyed("Precision", cfg, ["ddpm.mixed_precision"], "fp16 mixed precision", auto)


def repaint_start(cfg, ctx: Context) -> Line:
    keys = ["sampling.start"] + (["sampling.skip_steps"] if cfg.sampling.start == "sdedit" else [])
    return _keyed("RePaint start", cfg, keys, "pure noise at the top of the jump schedule")


def repaint_schedule(cfg, ctx: Context) -> Line:
    from .sampling.repaint import count_calls, count_evaluations, repaint_schedule as schedule

    s = cfg.sampling
    keys = ["sampling.sampler", "sampling.steps"] + (["sampling.jump_length", "sampling.jump_n_sample"]
                                                     if s.sampler != "dpm++" else [])
    line = _keyed("RePaint schedule", cfg, keys, "ancestral steps on 200 respaced steps, jumps of 10 resampled 5 times")
    if s.sampler == "dpm++":
        calls, renoise = count_evaluations(s.steps, 0, 0, s.skip_steps, s.start, s.sampler), 0
    else:
        calls, renoise = count_calls(schedule(s.steps, s.jump_length, s.jump_n_sample, s.start, s.skip_steps))
    cost = (f"{calls} UNet calls and {renoise} re-noising steps per pair (the authors: "
            f"{paper.REPAINT_CALLS_PER_PAIR.value} and {paper.REPAINT_RENOISE_STEPS_PER_PAIR.value})")
    if line.status == EQUAL and calls == paper.REPAINT_CALLS_PER_PAIR.value:
        return Line(line.topic, EQUAL, line.text[:-1] + f"; {cost}.")
    return Line(line.topic, DIFFERS, (line.text[:-1] + "; " if line.status == DIFFERS else "") + cost + ".")


def inpainting(cfg, ctx: Context) -> Line:
    return _keyed("Inpainted region", cfg, ["sampling.dilation_px", "sampling.opening_px", "sampling.samples_per_image"],
                  "mask dilated by 20 px, opened with a 16 px ellipse (both at 256 px), 3 pairs per real image")


def styling(cfg, ctx: Context) -> Line:
    from .sampling.feature_nets import missing_reason

    st = cfg.sampling.style
    if not st.guided:
        return Line("Styling", DIFFERS, "no Styled-Diff (`sampling.style.guided=false`); the paper's Styled-Diff is a "
                    "guided style transfer, then MKL colour matching.")
    reason = next((ctx.absent[m] for m in ("styled-diff", "full-styled-diff") if m in ctx.absent), None)
    if reason or missing_reason(st):
        return Line("Styling", DIFFERS, f"Styled-Diff absent: {reason or missing_reason(st)}. Nothing is reported "
                    "under its name.")
    line = _keyed("Styling", cfg, list(paper.STYLE), "Styled-Diff by the authors' guided style transfer, then MKL "
                  "colour matching, every setting of Table A.3")
    return line if line.status == DIFFERS else Line(line.topic, EQUAL, "Styled-Diff by the authors' guided style "
                                                    f"transfer, then MKL colour matching; all {len(paper.STYLE)} "
                                                    "settings equal to Table A.3.")


def fid_protocol(cfg, ctx: Context) -> Line:
    return _keyed("FID protocol", cfg, ["metrics.fid_resize"], "clean-fid's resize (PIL bicubic to 299 px) into the "
                  "TF FID Inception", "torch-fidelity's TF1 bilinear resize, which gives other FID values on the same "
                  "images")


def fid_sets(cfg, ctx: Context) -> Line:
    from .data.splits import training_images

    m = cfg.metrics
    return _keyed("FID sets", cfg, ["metrics.fid_sets"], "three synthetic sets per method",
                  ("one set has no sd; " if m.fid_sets == 1 else "") + "each set holds one pair per real training "
                  f"image ({training_images(cfg.data.split)} here), and FID is biased upwards at small n")


def singan(cfg, ctx: Context) -> Line:
    n_paper = paper.SINGAN_SEG_SOURCE_IMAGES.value
    g = cfg.gan
    if g.singan_published:
        return Line("SinGAN-Seg", EQUAL, f"the published SinGAN-Seg set from `{g.singan_published}`, the paper's GAN "
                    f"baseline ({n_paper:,} source images).")
    n = ctx.singan_sources if ctx.singan_sources is not None else g.singan_images
    if n == 0:
        return Line("SinGAN-Seg", DIFFERS, f"no SinGAN-Seg set (the paper's GAN baseline: the published set, "
                    f"{paper.SINGAN_SEG_DOWNLOAD}; set `gan.singan_published` to its folder).")
    return Line("SinGAN-Seg", DIFFERS, f"trained here on {n} source image(s) (paper: the published set from "
                f"{n_paper:,}); its rows name N and carry no paper value. For the paper's set download "
                f"{paper.SINGAN_SEG_DOWNLOAD} and set `gan.singan_published`.")


def segmentation_model(cfg, ctx: Context) -> Line:
    return _keyed("Segmentation model", cfg, ["segmentation.models", "segmentation.encoder",
                                              "segmentation.encoder_weights"], "smp UNet++ with an ImageNet encoder")


SEG_TRAINING = ["segmentation.epochs", "segmentation.lr", "segmentation.lr_drop_epoch", "segmentation.lr_after_drop",
                "segmentation.batch_size", "segmentation.val_fraction"]


def segmentation_training(cfg, ctx: Context) -> Line:
    s = cfg.segmentation
    line = _keyed("Segmentation training", cfg, SEG_TRAINING + ["segmentation.patience"],
                  "Adam, Dice loss, lr drop at epoch 50, every epoch run, best checkpoint by validation IoU")
    if s.patience is None:
        return line
    return Line(line.topic, DIFFERS, line.text[:-1] + f": training stops once {s.patience} epoch(s) pass without a "
                f"better validation IoU, or after {s.epochs:,} epochs (the authors ran every epoch and kept the best); a "
                "run whose best epoch is its last was still improving, and the tables mark it.")


def synthetic_validation(cfg, ctx: Context) -> Line:
    key = "segmentation.synthetic_validation"
    chosen, theirs = cfg.segmentation.synthetic_validation, paper.SETTINGS[key].value
    split = {"synthetic": "the synthetic pairs of the validation images", "real": "the real validation images"}
    other = "real" if chosen == "synthetic" else "synthetic"
    unused = "" if "synthetic" in cfg.segmentation.regimes else " (no synthetic-only runs are planned here)"
    what = (f"synthetic-only runs keep the checkpoint with the best IoU on {split[chosen]}{unused}; the one best "
            f"on {split[other]} is tested too and shown beside it in notebook 06; Table 3 uses the first")
    if chosen == theirs:
        return Line("Synthetic-only validation", EQUAL, f"{what} (as the paper: `{key}` = {_show(theirs)}).")
    return Line("Synthetic-only validation", DIFFERS, f"`{key}` = {_show(chosen)} (paper: {_show(theirs)}): {what}; "
                "real images now pick the epoch (and drive any patience), so these models are not free of real data.")


def segmentation_runs(cfg, ctx: Context) -> Line:
    seeds = cfg.segmentation.seeds
    return Line("Segmentation runs", DIFFERS,
                f"{len(seeds)} seeded run(s) per configuration (seeds {seeds}), pooled, with bootstrap intervals "
                f"(paper: {paper.SEGMENTATION_RUNS.value} run per configuration, no seed stated, no intervals).")


SEG_DATA = ["segmentation.augmentation", "segmentation.mix_alpha", "segmentation.mix_r",
            "segmentation.synthetic_per_real", "segmentation.small_n"]


def segmentation_data(cfg, ctx: Context) -> Line:
    return _keyed("Segmentation data", cfg, SEG_DATA, "the paper's augmentations, mixing rule and set sizes")


SYNTHETIC_USE = ["segmentation.synthetic_schedule", "segmentation.synthetic_filter", "segmentation.synthetic_weight"]


def synthetic_use(cfg, ctx: Context) -> Line:
    s = cfg.segmentation
    first = [s.synthetic_schedule[0], s.synthetic_filter[0]] == [paper.setting(k)[0] for k in SYNTHETIC_USE[:2]]
    return _keyed("Use of synthetic pairs", cfg, SYNTHETIC_USE,
                  "every synthetic pair is used, mixed into the real training images by the mixing rule, and weighs "
                  "as much as a real one in the loss",
                  "Table 4 shows every schedule and filter listed, each with its paired ΔIoU against real only, "
                  "and a paper value only beside the paper's way; "
                  + ("the other tables use the paper's way" if first and s.synthetic_weight == 1.0 else
                     "the other tables use the first listed, and so are not the paper's protocol"))


TOPICS = [data, resolution, split, test_draw, clusters, unet, variance, noise_schedule, training_length, ema,
          precision, repaint_start, repaint_schedule, inpainting, styling, fid_protocol, fid_sets, singan,
          segmentation_model, segmentation_training, synthetic_validation, segmentation_runs, segmentation_data,
          synthetic_use]


def extras(cfg, ctx: Context | None = None) -> list[Line]:
    """What this study adds that the paper has no counterpart for."""
    ctx = ctx or Context()
    out = [Line("4-channel GAN", EXTRA, "a 4-channel GAN trained in the DDPMs' harness (`gan`): not the paper's GAN "
                "baseline (that is SinGAN-Seg); no paper value stands beside it.")]
    if cfg.sampling.style.mkl_only:
        out.append(Line("Colour matching alone", EXTRA, "`mkl-diff`: the inpainted pairs after MKL colour matching "
                        "alone, a cheap comparison set; not the paper's Styled-Diff."))
    if cfg.ddpm.compare_variance:
        out.append(Line("Variance ablation", EXTRA, "the Full model also trained with the other variance and compared."))
    if cfg.sampling.n_unconditional > 0:
        out.append(Line("Unconditional samplers", EXTRA, "DDPM / DDIM / DPM-Solver++ samples of the Full model, FID "
                        "against steps (the paper samples only by inpainting)."))
    departures = paper.method_departures(cfg)
    if departures:
        mine = ", ".join(f"`{k}` = {_show(cfg.section(k))}" for k in departures)
        out.append(Line("Paper values withheld", NOTE, f"{mine} (the authors': {_values(list(departures))}): this run's "
                        "diffusion sets are made by another method, so no paper FID, MS-SSIM or IoU stands beside them."))
    out.append(Line("KID", EXTRA, "KID beside every FID (the paper reports FID only)."))
    out.append(Line("Label fidelity and seam check", EXTRA, "per synthetic set, the IoU of each generated mask with a "
                    "real-only segmenter's prediction, and how well a small classifier tells generated from real polyp "
                    "regions (notebooks 04 and 05; the paper judged masks only by expert review)."))
    out.append(Line("FID against unseen images", EXTRA, "every set's FID and KID also against the held-out real test "
                    "images, beside the training images' own (the paper compares with the training images only, which "
                    "rewards an inpainted frame for being mostly its own training frame)."))
    out.append(Line("Memorisation and leakage", EXTRA, "per set, the share of pairs whose polyp region (also the whole "
                    "frame, and the Inception features) is closer to a training image than the 1st percentile of the "
                    "training images' distances to each other, and the held-out test images found in it; stage 06 "
                    "refuses a set that holds any."))
    if ctx.imported:
        out.append(Line("Sets from other generators", EXTRA, ", ".join(f"`{k}` ({v})" for k, v in ctx.imported.items())
                        + ": imported with `python -m polyplib.synthetic import` and scored by this study's protocol; "
                        "no paper value stands beside them."))
    out.append(Line("Minimum set size", EXTRA, f"no FID or KID for a set, or a real reference, of fewer than "
                    f"{cfg.metrics.min_images:,} images (`metrics.min_images`): such rows say 'too few images' with their "
                    "n (the paper states no minimum; its sets hold hundreds of images)."))
    return out


def notes(ctx: Context) -> list[Line]:
    device = ctx.device or "not recorded yet"
    return [Line("Compute", NOTE, f"{device}; the paper used GPUs ({paper.COMPUTE_REPORTED['ddpm'].value}), so "
                 "measured seconds compare methods within this run, not with the paper."),
            Line("Paper numbers", NOTE, "from the authors' Sep-2023 draft and code (polyplib/paper.py, with the source "
                 "of each); where the published version differs, the reference columns may be off by its corrections.")]


def compare(cfg, ctx: Context | None = None) -> list[Line]:
    """Every topic's line, then the extras and the notes."""
    ctx = ctx or Context()
    return [topic(cfg, ctx) for topic in TOPICS] + extras(cfg, ctx) + notes(ctx)
