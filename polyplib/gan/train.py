"""Stage 05, part 1: train the 4-channel (RGB + mask) GAN baseline with accelerate, then sample it.

The harness is the DDPM trainer's (``polyplib.diffusion.train``), so the two are compared on equal
terms: the same training pairs (``ds.ids("train")``), resolution and 4-channel [-1, 1] tensors
(``PairDataset`` with seeded flips), accelerate for devices and precision, ``checkpoint-N`` folders
with a total limit, resume from the latest, a CSV loss log, and a final folder built with
``runs.atomic_dir`` that holds the configuration and the training ids.

The GAN (see models.py): hinge loss, spectral norm on every discriminator layer, optional R1 penalty
on real pairs (``gan.r1_gamma``), DiffAugment on everything the discriminator sees
(``gan.diffaugment``, colour on RGB only), Adam (0.5, 0.999) for both networks, one D step then one
G step per iteration, and an EMA of the generator weights (decay ``gan.ema_decay`` with a warm-up
``min(decay, (1 + t) / (10 + t))``) which is the generator that samples.

The generator samples in eval mode (batch-norm running statistics), so a pair depends only on its z.

**Exact resume.** Batches come from ``PairDataset.batch`` at stream positions, and z, the
augmentations and the R1 inputs from a CPU generator seeded by (seed, step, rank); a checkpoint holds
G, D, the EMA, both optimisers, accelerate's RNG states and the step. A run killed at any point and
resumed from its latest checkpoint ends with exactly the weights of an uninterrupted run (tested on
CPU in fp32). **Measured compute:** ``seconds`` in checkpoints and in ``train_state.json`` accumulate
over sessions (``seconds_cumulative: true``); ``loss.csv``'s ``elapsed_s`` is cumulative as well. Time a
killed session spent after its last checkpoint is lost work and is not counted.

Layout of ``runs/<profile>/models/gan/``::

    generator_ema.safetensors, generator.safetensors, discriminator.safetensors, arch.json
    config.yaml, train_ids.json, train_state.json
    loss.csv                        step, loss_d, loss_g, d_real, d_fake, r1, ema_decay, lr, images, elapsed_s
    samples/step-000100.png         EMA sample grids (top: images, bottom: mask overlays)
    checkpoints/checkpoint-N/       model*.safetensors, optimizer*.bin, random_states_*.pkl,
                                    custom_checkpoint_0.pkl (EMA), config.yaml, train_ids.json, trainer_state.json

Synthetic pairs go to ``runs/<profile>/synthetic/gan/`` through the one loop of
:mod:`polyplib.synthetic.generate` (the layout, manifest, rejected-pair records and mask post-processing
of every synthetic set).

Command line (also under ``accelerate launch``)::

    python -m polyplib.gan.train --profile smoke [--stop-after N] [--sample]
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..config import StudyConfig
from ..diffusion.dataset import PairDataset
from ..training import (StepLog, config_key, describe_device, final_losses, finished_folder, launch_state,
                        make_accelerator, memory_format, on_main_process, read_json, resolve_device, resume_latest,
                        save_checkpoint, step_seed, torch_threads, trainer_arguments, weights_digest, weights_key,
                        write_final_folder)
from ..errors import StageError
from ..runs import Run, atomic_write_json
from ..synthetic.catalogue import set_dir
from ..synthetic.folder import set_summary
from ..synthetic.generate import SetPlan, chunks, pair_seed, write_set
from ..synthetic.postprocess import PostProcess
from .diffaugment import diff_augment, parse_policy
from .models import Generator, GanArch, build_models, count_parameters

#: gan.* values that decide the GAN's weights (the rest are SinGAN-Seg, sampling or bookkeeping)
WEIGHT_KEYS = ("base_channels", "z_dim", "learning_rate", "batch_size", "max_steps", "r1_gamma", "diffaugment",
               "ema_decay", "mixed_precision", "seed")
LOGGED = ("loss_d", "loss_g", "d_real", "d_fake", "r1", "ema_decay")   # a step's values in loss.csv
LOSS_COLUMNS = ",".join(("step", *LOGGED, "lr", "images", "elapsed_s")) + "\n"
BETAS = (0.5, 0.999)
GRID_SAMPLES = 8
GRID_SEED = 12345


@dataclass
class GanTrainResult:
    """What happened to the GAN; one row of the stage's training table."""

    model: str
    pairs: int
    status: str          # trained | resumed | cached | stopped
    steps: int
    final_loss_d: float | None
    final_loss_g: float | None
    mixed_precision: str
    processes: int
    seconds: float       # measured training seconds, all sessions
    device: str
    path: str


# ----------------------------------------------------------------------------- configuration
def model_key(cfg: StudyConfig, ids: Sequence[str], processes: int) -> str:
    """Hash of everything that decides the GAN's weights: gan settings, data, ids, process count."""
    gan = {k: v for k, v in cfg.gan.model_dump(mode="json").items() if k in WEIGHT_KEYS}
    return weights_key("gan", gan, cfg, ids, processes)


def make_gan_accelerator(cfg: StudyConfig):
    """A fresh Accelerator for the GAN; ``gan.mixed_precision=auto``: bf16 on CUDA GPUs and CPUs that have
    it, else full precision.

    Not fp16: the R1 penalty differentiates D's gradient, which a loss scaler does not protect. bf16 on
    a CPU with native bf16, in channels-last layout: the course's GAN step is about 2x faster than fp32
    in torch's default layout (benchmarks/bench_cpu_layout.py)."""
    return make_accelerator(cfg.run.device, cfg.gan.mixed_precision, fp16=False)


# ----------------------------------------------------------------------------- folders
def gan_dir(run: Run) -> Path:
    return run.path("models", "gan")


def is_finished(folder: str | Path, key: str | None = None) -> bool:
    """A complete GAN folder (optionally: trained with this model key)."""
    return finished_folder(folder, key, ["generator_ema.safetensors", "arch.json"])


def load_generator(folder: str | Path, device: str | torch.device = "cpu", which: str = "ema") -> Generator:
    """The trained generator of a finished GAN folder (``which``: 'ema' (default) or 'raw')."""
    from safetensors.torch import load_file

    folder = Path(folder)
    name = "generator_ema.safetensors" if which == "ema" else "generator.safetensors"
    if not (folder / name).exists() or not (folder / "arch.json").exists():
        raise StageError(f"{folder}: not a finished GAN folder (no {name} / arch.json); train it first "
                         "(polyplib.gan.train_gan or python -m polyplib.gan.train)")
    arch = GanArch(**json.loads((folder / "arch.json").read_text()))
    g = Generator(arch)
    g.load_state_dict(load_file(str(folder / name)))
    return g.to(device).eval()


# ----------------------------------------------------------------------------- EMA
class EmaGenerator(torch.nn.Module):
    """An exponential moving average of the generator's weights AND batch-norm statistics (as timm's
    ModelEmaV2), so the averaged weights sample with matching running statistics; with the usual
    warm-up ``min(decay, (1 + t) / (10 + t))``."""

    def __init__(self, generator: Generator, decay: float):
        super().__init__()
        self.module = Generator(generator.arch)
        self.module.load_state_dict(generator.state_dict())
        self.module.requires_grad_(False).eval()
        self.decay = decay

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, generator: torch.nn.Module, step: int) -> float:
        d = self.decay_at(step)
        source = generator.state_dict()
        for name, e in self.module.state_dict().items():
            v = source[name].detach()
            if e.is_floating_point():
                e.lerp_(v.to(e.dtype), 1.0 - d)
            else:
                e.copy_(v)
        return d


# ----------------------------------------------------------------------------- the trainer
class GanTrainer:
    """Trains the 4-channel GAN on the pairs ``ids`` into ``folder``; ``run()`` resumes from the latest checkpoint."""

    def __init__(self, cfg: StudyConfig, prepared, ids: Sequence[str], folder: str | Path, name: str = "gan"):
        self.cfg, self.gan = cfg, cfg.gan
        self.ids = list(ids)
        self.folder = Path(folder)
        self.name = name
        self.prepared = prepared
        self.policy = parse_policy(self.gan.diffaugment)

    # -- setup
    def _setup(self):
        acc = self.accelerator = make_gan_accelerator(self.cfg)
        self.dataset = PairDataset(self.prepared, self.ids, hflip=True, seed=self.gan.seed).to(acc.device)
        self.arch = GanArch(self.dataset.resolution, self.gan.z_dim, self.gan.base_channels)
        g, d = build_models(self.arch, self.gan.seed)
        self.layout = memory_format(acc.device)
        g, d = g.to(memory_format=self.layout), d.to(memory_format=self.layout)
        self.ema = EmaGenerator(g, self.gan.ema_decay).to(acc.device)
        opt_g = torch.optim.Adam(g.parameters(), lr=self.gan.learning_rate, betas=BETAS)
        opt_d = torch.optim.Adam(d.parameters(), lr=self.gan.learning_rate, betas=BETAS)
        self.g, self.d, self.opt_g, self.opt_d = acc.prepare(g, d, opt_g, opt_d)
        acc.register_for_checkpointing(self.ema)
        self.device_text = describe_device(acc.device)

    # -- checkpoints
    def _resume_point(self, force: bool) -> tuple[int, float, int]:
        """Load the latest matching checkpoint (stale or forced ones are deleted): (step, seconds, sessions)."""
        step, state = resume_latest(self.accelerator, self.folder / "checkpoints", self.key, force, self.name)
        if not step:
            return 0, 0.0, 0
        return step, float(state.get("seconds", 0.0)), int(state.get("sessions", 1))

    def _save_checkpoint(self, step: int, seconds: float, sessions: int) -> None:
        save_checkpoint(self.accelerator, self.folder / "checkpoints", step, {
            "key": self.key, "name": self.name, "seconds": round(seconds, 3), "sessions": sessions,
            "device": self.device_text}, self.cfg, self.ids, self.gan.checkpoints_total_limit)

    # -- samples
    def _sample_grid(self, step: int) -> None:
        """EMA generator, fixed z: samples/step-N.png (top: images, bottom: mask overlays)."""
        from ..data.imageio import write_png
        from ..plots import overlay
        from ..diffusion.unconditional import split_pair

        gen = torch.Generator().manual_seed(GRID_SEED)
        z = torch.randn(GRID_SAMPLES, self.gan.z_dim, generator=gen).to(self.accelerator.device)
        with torch.no_grad():
            images, raw = split_pair(self.ema.module(z))
        top = np.concatenate(list(images), axis=1)
        bottom = np.concatenate([overlay(i, m > 127) for i, m in zip(images, raw)], axis=1)
        write_png(self.folder / "samples" / f"step-{step:06d}.png", np.concatenate([top, bottom], axis=0))

    # -- one iteration
    def _step(self, step: int) -> dict:
        acc, gan = self.accelerator, self.gan
        bs, rank, world = gan.batch_size, acc.process_index, acc.num_processes
        gen = torch.Generator().manual_seed(step_seed(gan.seed, step, rank))
        real = self.dataset.batch((step * world + rank) * bs, bs).to(acc.device, memory_format=self.layout)
        aug = lambda x: diff_augment(x, self.policy, gen)  # noqa: E731
        # discriminator: hinge loss (+ R1 on the real pairs, through the augmentation)
        z = torch.randn(bs, gan.z_dim, generator=gen).to(acc.device)
        with torch.no_grad():
            fake = self.g(z).float()
        self.opt_d.zero_grad(set_to_none=True)
        real_in = real.detach().requires_grad_(gan.r1_gamma > 0)
        d_real = self.d(aug(real_in)).float()
        d_fake = self.d(aug(fake)).float()
        loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        r1 = torch.zeros((), device=acc.device)
        if gan.r1_gamma > 0:
            (grad,) = torch.autograd.grad(d_real.sum(), real_in, create_graph=True)
            r1 = grad.float().pow(2).sum(dim=(1, 2, 3)).mean()
            loss_d = loss_d + 0.5 * gan.r1_gamma * r1
        acc.backward(loss_d)
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        # generator: non-saturating hinge form -D(G(z)); D's own gradients are discarded
        z = torch.randn(bs, gan.z_dim, generator=gen).to(acc.device)
        self.opt_g.zero_grad(set_to_none=True)
        with acc.no_sync(self.d):
            loss_g = -self.d(aug(self.g(z))).float().mean()
            acc.backward(loss_g)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        decay = self.ema.update(acc.unwrap_model(self.g), step)
        values = torch.stack([loss_d.detach(), loss_g.detach(), d_real.detach().mean(), d_fake.detach().mean(),
                              r1.detach()])
        values = acc.reduce(values, reduction="mean").tolist()
        return dict(zip(("loss_d", "loss_g", "d_real", "d_fake", "r1"), values), ema_decay=decay)

    # -- the loop
    def run(self, force: bool = False, stop_after: int | None = None) -> GanTrainResult:
        """Train to ``gan.max_steps`` (resuming); ``stop_after``: stop after that step, as if killed."""
        session_start = time.time()
        self.key = model_key(self.cfg, self.ids, launch_state(self.cfg.run.device).num_processes)
        if not force and is_finished(self.folder, self.key):
            return self._result("cached")
        with torch_threads(self.cfg.run.torch_threads, resolve_device(self.cfg.run.device)):
            return self._train(force, stop_after, session_start)

    def _train(self, force: bool, stop_after: int | None, session_start: float) -> GanTrainResult:
        self._setup()
        acc, gan = self.accelerator, self.gan
        on_main_process(acc, lambda: self.folder.mkdir(parents=True, exist_ok=True))
        step, before, sessions = self._resume_point(force)
        start = step
        sessions += 1
        elapsed = lambda: before + time.time() - session_start  # noqa: E731
        if step == 0 and acc.is_main_process:
            shutil.rmtree(self.folder / "samples", ignore_errors=True)
        if acc.is_main_process:
            print(f"{self.name}: {len(self.ids)} pairs at {self.arch.resolution} px, {gan.max_steps} steps, batch "
                  f"{gan.batch_size} x {acc.num_processes} process(es), G {count_parameters(self.ema.module):,} "
                  f"parameters, precision {acc.mixed_precision}, {self.device_text}"
                  + (f", resuming from step {step}" if step else ""))
        self.g.train()
        self.d.train()
        with StepLog(acc, self.folder / "loss.csv", LOSS_COLUMNS, step, gan.max_steps, self.name,
                     self.cfg.run.progress) as log:
            while step < gan.max_steps and (stop_after is None or step < stop_after):
                values = self._step(step)
                step += 1
                log.record(step, [values[c] for c in LOGGED], gan.learning_rate,
                           step * gan.batch_size * acc.num_processes, elapsed(),
                           d=f"{values['loss_d']:.3f}", g=f"{values['loss_g']:.3f}")
                if step % gan.checkpoint_every == 0 and step < gan.max_steps:
                    self._save_checkpoint(step, elapsed(), sessions)
                if step % gan.checkpoint_every == 0 or step == gan.max_steps:   # with each checkpoint, and at the end
                    on_main_process(acc, self._sample_grid, step)
        if step < gan.max_steps:
            return self._result("stopped", step, elapsed())
        self._finish(step, elapsed(), sessions)
        return self._result("resumed" if start else "trained", step)

    def _finish(self, step: int, seconds: float, sessions: int) -> None:
        """The final folder (EMA, raw G, D, arch, provenance, logs), written atomically."""
        from safetensors.torch import save_file

        acc = self.accelerator
        g, d = acc.unwrap_model(self.g), acc.unwrap_model(self.d)

        def write_weights(tmp: Path) -> None:
            state = lambda m: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}  # noqa: E731
            save_file(state(self.ema.module), str(tmp / "generator_ema.safetensors"))
            save_file(state(g), str(tmp / "generator.safetensors"))
            save_file(state(d), str(tmp / "discriminator.safetensors"))
            atomic_write_json(tmp / "arch.json", self.arch.to_dict())

        write_final_folder(acc, self.folder, self.cfg, self.ids,
                           {"generator": weights_digest(g), "ema": weights_digest(self.ema.module)}, {
                               "key": self.key, "name": self.name, "steps": step, "pairs": len(self.ids),
                               "batch_size": self.gan.batch_size,
                               "images": step * self.gan.batch_size * acc.num_processes,
                               "seconds": round(seconds, 3), "seconds_cumulative": True, "sessions": sessions,
                               "seconds_per_step": round(seconds / max(step, 1), 6), "device": self.device_text,
                               "generator_parameters": count_parameters(g),
                               "discriminator_parameters": count_parameters(d),
                               "weights": "EMA (generator_ema) is the sampling generator"},
                           write_weights, {item: self.folder / item for item in ("loss.csv", "samples")})

    def _result(self, status: str, step: int | None = None, seconds: float | None = None) -> GanTrainResult:
        state = read_json(self.folder / "train_state.json") or {}
        acc = getattr(self, "accelerator", None)
        loss_d, loss_g = final_losses(self.folder / "loss.csv", ["loss_d", "loss_g"])
        return GanTrainResult(
            self.name, len(self.ids), status, step if step is not None else state.get("steps", 0), loss_d, loss_g,
            acc.mixed_precision if acc else state.get("mixed_precision", "?"),
            acc.num_processes if acc else state.get("processes", 1),
            round(seconds if seconds is not None else float(state.get("seconds", 0.0)), 3),
            getattr(self, "device_text", state.get("device", "?")), str(self.folder))


# ----------------------------------------------------------------------------- the stage's parts
def train_gan(run: Run, force: bool = False, stop_after: int | None = None) -> GanTrainResult:
    """Train (or resume, or skip if finished) the GAN of this run on the training pairs."""
    from ..data.prepared import load_dataset

    ds = load_dataset(run)
    return GanTrainer(run.cfg, ds, ds.ids("train"), gan_dir(run)).run(force, stop_after)


def _gan_plan(run: Run, model: dict, folder: Path) -> SetPlan:
    """The GAN set's jobs (one seeded z per pair) in fixed batches; ``model``: what decides the weights."""
    gan = run.cfg.gan
    jobs = [{"id": f"gan_{i:05d}", "file": f"gan_{i:05d}", "source_id": "", "cluster": -1, "model": "gan",
             "method": "gan", "sampler": "gan", "steps": 1, "nfe": 1, "seed": pair_seed(gan.seed, "gan", i),
             "sample_index": i} for i in range(gan.n_samples)]
    key = config_key({"method": "gan", **model, "ids": [j["id"] for j in jobs], "batch": gan.batch_size,
                      "seed": gan.seed})
    return SetPlan("gan", chunks(jobs, gan.batch_size), key, {"key": key, "model": str(folder),
                                                              "params": model["post"]})


@torch.no_grad()
def generate(generator: Generator, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One batch of pairs, each from its own seeded z: (uint8 images, uint8 raw mask channels)."""
    from ..diffusion.unconditional import split_pair

    device = next(generator.parameters()).device
    z = torch.stack([torch.randn(generator.arch.z_dim, generator=torch.Generator().manual_seed(int(s)))
                     for s in seeds]).to(device)
    return split_pair(generator(z))


def sample_gan(run: Run, force: bool = False) -> dict:
    """Write ``gan.n_samples`` pairs of the trained GAN (EMA weights) to ``synthetic/gan/``; resumable."""
    folder, cfg = gan_dir(run), run.cfg
    state = read_json(folder / "train_state.json")
    if not is_finished(folder):
        raise StageError(f"{folder}: no finished GAN; train it first (polyplib.gan.train.train_gan)")
    post = PostProcess.from_config(cfg)
    plan = _gan_plan(run, {"model": state["key"], "weights": state.get("rank_digests"), "post": post.as_row()},
                     folder)
    device = resolve_device(cfg.run.device)
    generator: list[Generator] = []

    def compute(batch: list[dict]):
        if not generator:
            generator.append(load_generator(folder, device))
        images, raws = generate(generator[0], [j["seed"] for j in batch])
        return [(image, raw, {}) for image, raw in zip(images, raws)]

    with torch_threads(cfg.run.torch_threads, device):
        table = write_set(set_dir(run, "gan"), plan, compute, post, fresh=force, progress=cfg.run.progress)
    summary = set_summary(run, "gan", table, device=describe_device(device))
    atomic_write_json(set_dir(run, "gan") / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = trainer_arguments("python -m polyplib.gan.train", (
        "Train the stage-05 4-channel GAN; under `accelerate launch` the same training runs data-parallel."),
        "the finished model")
    parser.add_argument("--sample", action="store_true", help="then write synthetic/gan (main process)")
    args = parser.parse_args(argv)

    from ..runs import open_run

    run = open_run(args.profile, args.overrides, args.run_dir)
    result = train_gan(run, force=args.force, stop_after=args.stop_after)
    state = launch_state(run.cfg.run.device)
    if state.is_main_process:
        print(json.dumps(asdict(result)))
        if args.sample and result.status != "stopped":
            print(json.dumps(sample_gan(run, force=args.force)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
