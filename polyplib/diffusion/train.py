"""Stage 02, part 2: train the per-cluster and Full 4-channel DDPMs with accelerate.

The loop follows diffusers' ``examples/unconditional_image_generation/train_unconditional.py``:
accelerate for devices, data parallelism, mixed precision and gradient accumulation; an EMA of the
weights (``diffusers.training_utils.EMAModel``, swapped in with store/restore for sample grids);
``checkpoint-N`` folders written by ``accelerator.save_state`` with a total limit; resume from the
latest one. What this version adds:

* **Exact resume.** Batches, flips, noise and timesteps are pure functions of (seed, micro-step,
  rank) (see dataset.py), and a checkpoint holds the weights, the EMA, the optimiser, accelerate's
  RNG states and the step. A run killed at any point and resumed from its latest checkpoint ends
  with exactly the weights of an uninterrupted run (tested on CPU in fp32).
* **Nothing half-written is trusted.** Checkpoints are built under a temporary name and renamed;
  the final ``save_pretrained`` folder is built with ``runs.atomic_dir`` and swapped in whole.
  A model folder counts as finished only with its ``train_state.json`` (finished, config key).
* **Provenance.** The resolved configuration (``config.yaml``) and the training ids
  (``train_ids.json``) sit in every checkpoint and in the final folder.

Layout of one model, ``runs/<profile>/models/ddpm/<name>/`` (name: ``cluster-00`` ... or ``full``)::

    model_index.json, unet/, scheduler/      DDPMPipeline.from_pretrained(folder) (EMA weights)
    config.yaml, train_ids.json, train_state.json
    loss.csv                                 step, loss (mse + vb), mse, ema_decay, lr, images, elapsed_s
    samples/step-000100.png                  sample grids: images (top), mask overlays (bottom)
    checkpoints/checkpoint-N/                unet/, unet_ema/, optimizer.bin, random_states_*.pkl,
                                             config.yaml, train_ids.json, trainer_state.json

While a model trains, its loss.csv and samples/ live in checkpoints/ and move up when the final
folder is swapped in, so a rerun (even a forced one) never touches a finished model's files.

Scale-out (the same code on several GPUs or nodes)::

    accelerate config                                  # once per machine
    accelerate launch -m polyplib.diffusion.train --profile paper --model full
    accelerate launch --num_processes 4 -m polyplib.diffusion.train --profile paper --model cluster-03

``ddpm.batch_size`` is per process: N processes train on N x batch_size pairs per micro-step. A run
resumes only with the process count it started with (the data order is split per process); on
several nodes the run folder must be on a shared filesystem. On a CPU-only machine
``accelerate launch --multi_gpu --num_processes 2 ...`` starts 2 CPU processes (gloo backend).
The per-cluster models are independent, so on a cluster they fan out as a job array, one job per model.
Run stage 01 and the clustering once first (``--model none`` only clusters), then e.g. with Slurm::

    #!/bin/bash
    #SBATCH --job-name=ddpm
    #SBATCH --array=0-20              # 0..K-1: cluster-00..; K: the Full model
    #SBATCH --gres=gpu:1 --cpus-per-task=8 --time=16:00:00
    #SBATCH --requeue                 # a preempted job restarts and resumes from its latest checkpoint
    K=20
    if [ "$SLURM_ARRAY_TASK_ID" -lt "$K" ]; then MODEL=$(printf "cluster-%02d" "$SLURM_ARRAY_TASK_ID"); else MODEL=full; fi
    accelerate launch --num_processes 1 -m polyplib.diffusion.train \\
        --profile paper --run-dir "$RUNS/paper" --model "$MODEL"

A rerun of the array skips finished models and resumes unfinished ones.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..config import StudyConfig
from ..errors import StageError
from ..runs import Run, atomic_write_text
from ..training import (StepLog, checkpoints, finished_folder, final_losses, launch_state, make_accelerator,
                        on_main_process, read_json, resolve_device, resume_latest, save_checkpoint, step_seed,
                        torch_threads, trainer_arguments, weights_digest, weights_key, write_final_folder)
from .dataset import PairDataset
from .gaussian import Chain
from .model import build_scheduler, build_unet, model_dir, models_root, variance_ablation

# ddpm.* values that do not change the trained weights (so they are left out of the model key)
BOOKKEEPING = ("checkpoint_every", "checkpoints_total_limit", "sample_every", "sample_steps",
               "keep_checkpoints", "train_clusters", "train_full", "pretrained", "compare_variance")
LOSS_COLUMNS = "step,loss,mse,ema_decay,lr,images,elapsed_s\n"   # loss = mse (+ vb with learned sigma)
GRID_SAMPLES = 8


@dataclass
class TrainResult:
    """What happened to one model; one row of the stage's summary table."""

    model: str
    pairs: int
    status: str          # trained | resumed | cached | stopped | pretrained (ddpm.pretrained: not trained here)
    steps: int
    final_loss: float | None
    mixed_precision: str
    processes: int
    seconds: float
    path: str


# ----------------------------------------------------------------------------- configuration
def model_key(cfg: StudyConfig, ids: Sequence[str], processes: int | None) -> str:
    """Hash of everything that decides a model's weights: ddpm settings, data, ids, process count."""
    ddpm = {k: v for k, v in cfg.ddpm.model_dump(mode="json").items() if k not in BOOKKEEPING}
    return weights_key("ddpm", ddpm, cfg, ids, processes)


def process_count(cfg: StudyConfig) -> int:
    """Processes of this launch (1 under plain python, N under ``accelerate launch``)."""
    return launch_state(cfg.run.device).num_processes


def is_main_process(cfg: StudyConfig) -> bool:
    return launch_state(cfg.run.device).is_main_process


# ----------------------------------------------------------------------------- folders
def is_finished(folder: str | Path, key: str | None = None) -> bool:
    """A complete model folder (optionally: trained with this model key)."""
    return finished_folder(folder, key, ["model_index.json"])


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Trains one DDPM on the pairs ``ids`` into ``folder``; ``run()`` resumes from the latest checkpoint."""

    def __init__(self, cfg: StudyConfig, prepared, ids: Sequence[str], folder: str | Path, name: str | None = None):
        self.cfg, self.ddpm = cfg, cfg.ddpm
        self.ids = list(ids)
        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.prepared = prepared
        self.work = self.folder / "checkpoints"   # checkpoints, loss log and grids of the run in progress

    # -- setup
    def _setup(self):
        from diffusers import UNet2DModel
        from diffusers.training_utils import EMAModel

        # ddpm.mixed_precision=auto: bf16 (fp16 on older GPUs) on CUDA, bf16 on CPUs that have it, else no
        acc = self.accelerator = make_accelerator(self.cfg.run.device, self.ddpm.mixed_precision,
                                                  self.ddpm.gradient_accumulation_steps)
        self.dataset = PairDataset(self.prepared, self.ids, hflip=self.ddpm.hflip, seed=self.ddpm.seed).to(acc.device)
        model = build_unet(self.ddpm, self.dataset.resolution, seed=self.ddpm.seed)
        self.scheduler = build_scheduler(self.ddpm)
        self.chain = Chain.from_config(self.scheduler.config)   # the full T-step chain
        fused = acc.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.ddpm.learning_rate, weight_decay=0.0,
                                      fused=fused or None)
        self.ema = EMAModel(model.parameters(), decay=self.ddpm.ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                            power=3 / 4, foreach=True, model_cls=UNet2DModel, model_config=model.config)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema.to(acc.device)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    def _save_hook(self, models, weights, output_dir):
        if self.accelerator.is_main_process:
            self.ema.save_pretrained(os.path.join(output_dir, "unet_ema"))
            for m in models:
                self.accelerator.unwrap_model(m).save_pretrained(os.path.join(output_dir, "unet"))
        weights.clear()  # saved above in diffusers' format; accelerate must not save them again

    def _load_hook(self, models, input_dir):
        from diffusers import UNet2DModel
        from diffusers.training_utils import EMAModel

        with warnings.catch_warnings():  # diffusers' EMAModel.from_pretrained uses a deprecated call inside
            warnings.simplefilter("ignore", FutureWarning)
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), UNet2DModel, foreach=True)
        self.ema.load_state_dict(loaded.state_dict())
        self.ema.to(self.accelerator.device)
        while models:
            m = models.pop()
            src = UNet2DModel.from_pretrained(input_dir, subfolder="unet")
            self.accelerator.unwrap_model(m).load_state_dict(src.state_dict())

    # -- checkpoints
    def _resume_point(self, force: bool) -> int:
        """Load the latest matching checkpoint (stale or forced ones are deleted); return its step."""
        acc = self.accelerator
        states = [read_json(d / "trainer_state.json") or {} for _, d in checkpoints(self.work)]
        other = [st for st in states if st.get("key") != self.key
                 and st.get("config_key") == model_key(self.cfg, self.ids, None)]
        if other and not force:
            raise StageError(f"{self.work}: checkpoints of {self.name} were written by {other[-1].get('processes')} "
                             f"process(es), this run has {acc.num_processes}; an exact resume needs the same "
                             "number (the data order is split per process). Relaunch with that many processes, "
                             "or pass --force (force=True) to start this model over.")
        step, _ = resume_latest(acc, self.work, self.key, force, self.name)
        if not step and acc.is_main_process:
            shutil.rmtree(self.work / "samples", ignore_errors=True)
        return step

    def _save_checkpoint(self, step: int, seconds: float) -> None:
        save_checkpoint(self.accelerator, self.work, step, {
            "key": self.key, "config_key": model_key(self.cfg, self.ids, None), "name": self.name,
            "seconds": round(seconds, 2)}, self.cfg, self.ids, self.ddpm.checkpoints_total_limit)

    # -- samples
    def _sample_grid(self, step: int) -> None:
        """EMA weights swapped in (store/restore), a seeded DDIM grid written to samples/step-N.png."""
        from ..data.imageio import write_png
        from ..plots import overlay
        from ..synthetic.generate import pair_seed
        from .unconditional import sample_unconditional

        unet = self.accelerator.unwrap_model(self.model)
        self.ema.store(unet.parameters())
        self.ema.copy_to(unet.parameters())
        unet.eval()
        seeds = [pair_seed(self.ddpm.seed, "samples", k) for k in range(GRID_SAMPLES)]
        try:
            images, raw_masks, _ = sample_unconditional(unet, dict(self.scheduler.config), "ddim",
                                                        self.ddpm.sample_steps, seeds)
        finally:
            unet.train()
            self.ema.restore(unet.parameters())
        top = np.concatenate(list(images), axis=1)
        bottom = np.concatenate([overlay(i, m > 127) for i, m in zip(images, raw_masks)], axis=1)
        write_png(self.work / "samples" / f"step-{step:06d}.png", np.concatenate([top, bottom], axis=0))

    # -- the loop
    def run(self, force: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``ddpm.max_steps`` (resuming); ``stop_after``: stop after that step, as if killed."""
        with torch_threads(self.cfg.run.torch_threads, resolve_device(self.cfg.run.device)):
            return self._run(force, stop_after)

    def _run(self, force: bool, stop_after: int | None) -> TrainResult:
        started = time.time()
        self.key = model_key(self.cfg, self.ids, process_count(self.cfg))
        if not force and is_finished(self.folder, self.key):
            return self._result("cached", started)
        self._setup()
        acc, ddpm = self.accelerator, self.ddpm
        on_main_process(acc, lambda: self.work.mkdir(parents=True, exist_ok=True))
        step = start = self._resume_point(force)
        if acc.is_main_process:
            print(f"{self.name}: {len(self.ids)} pairs, {ddpm.max_steps} steps, batch {ddpm.batch_size} x "
                  f"{acc.num_processes} process(es) x {ddpm.gradient_accumulation_steps} accumulation, "
                  f"precision {acc.mixed_precision}" + (f", resuming from step {step}" if step else ""))
        images_per_step = ddpm.gradient_accumulation_steps * ddpm.batch_size * acc.num_processes
        self.model.train()
        with StepLog(acc, self.work / "loss.csv", LOSS_COLUMNS, step, ddpm.max_steps, self.name,
                     self.cfg.run.progress) as log:
            while step < ddpm.max_steps and (stop_after is None or step < stop_after):
                loss, mse = self._step(step)
                step += 1
                log.record(step, [loss, mse, self.ema.cur_decay_value], ddpm.learning_rate, step * images_per_step,
                           time.time() - started, loss=f"{loss:.4f}")
                if step % ddpm.checkpoint_every == 0 and step < ddpm.max_steps:
                    self._save_checkpoint(step, time.time() - started)
                if step % ddpm.sample_every == 0 or step == ddpm.max_steps:
                    on_main_process(acc, self._sample_grid, step)
        if step < ddpm.max_steps:
            return self._result("stopped", started, step)
        self._finish(step, time.time() - started)
        return self._result("resumed" if start else "trained", started, step)

    def _step(self, step: int) -> tuple[float, float]:
        """One optimiser step (``ddpm.gradient_accumulation_steps`` micro-batches), then the EMA;
        returns (loss, its MSE part), averaged over micro-batches and processes."""
        acc, ddpm = self.accelerator, self.ddpm
        accum, bs, rank, world = ddpm.gradient_accumulation_steps, ddpm.batch_size, acc.process_index, acc.num_processes
        timesteps = self.scheduler.config.num_train_timesteps
        losses = []
        for micro in range(step * accum, (step + 1) * accum):
            clean = self.dataset.batch((micro * world + rank) * bs, bs).to(acc.device)
            gen = torch.Generator(device=acc.device).manual_seed(step_seed(ddpm.seed, micro, rank))
            noise = torch.randn(clean.shape, generator=gen, device=acc.device)
            t = torch.randint(0, timesteps, (bs,), generator=gen, device=acc.device)
            noisy = self.chain.q_sample(clean, t, noise)
            with acc.accumulate(self.model):
                out = self.model(noisy, t).sample
                # MSE(eps) (Min-SNR weighted if set), plus L_vlb for the variance channels with a learned sigma
                terms = self.chain.training_losses(out, clean, noisy, t, noise, ddpm.variance, ddpm.snr_gamma)
                loss = terms["loss"].mean()
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(torch.stack([loss.detach(), terms["mse"].mean().detach()]))
        self.ema.step(self.model.parameters())
        loss_value, mse_value = acc.reduce(torch.stack(losses).mean(0), reduction="mean").tolist()
        return loss_value, mse_value

    def _finish(self, step: int, seconds: float) -> None:
        """The final DDPMPipeline folder (EMA weights), written atomically; logs and checkpoints carried over."""
        from diffusers import DDPMPipeline, UNet2DModel

        acc = self.accelerator
        unet = acc.unwrap_model(self.model)

        def write_weights(tmp: Path) -> None:
            final = UNet2DModel.from_config(unet.config)
            self.ema.copy_to(final.parameters())
            DDPMPipeline(unet=final, scheduler=build_scheduler(self.ddpm)).save_pretrained(str(tmp))

        move = {"loss.csv": self.work / "loss.csv", "samples": self.work / "samples"}
        if self.ddpm.keep_checkpoints:
            move["checkpoints"] = self.work
        write_final_folder(acc, self.folder, self.cfg, self.ids,
                           {"weights": weights_digest(unet.parameters()), "ema": weights_digest(self.ema.shadow_params)},
                           {"key": self.key, "name": self.name, "steps": step, "pairs": len(self.ids),
                            "seconds": round(seconds, 2), "weights": "EMA"}, write_weights, move)

    def _result(self, status: str, started: float, step: int | None = None) -> TrainResult:
        state = read_json(self.folder / "train_state.json") or {}
        acc = getattr(self, "accelerator", None)
        log = self.folder / "loss.csv" if status in ("cached", "trained", "resumed") else self.work / "loss.csv"
        (loss,) = final_losses(log, ["loss"])
        return TrainResult(self.name, len(self.ids), status, step if step is not None else state.get("steps", 0),
                           loss, acc.mixed_precision if acc else state.get("mixed_precision", "?"),
                           acc.num_processes if acc else state.get("processes", 1),
                           round(time.time() - started, 2), str(self.folder))


# ----------------------------------------------------------------------------- the stage
def planned_models(run: Run, clusters: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(name, training ids) of every model the configuration asks for, clusters first, then full."""
    from .clustering import cluster_name

    ids = clusters["id"].tolist()
    models = []
    if run.cfg.ddpm.train_clusters:
        for c, group in clusters.groupby("cluster", sort=True):
            models.append((cluster_name(c), group["id"].tolist()))
    if run.cfg.ddpm.train_full:
        models.append(("full", ids))
    if run.cfg.ddpm.compare_variance and not run.cfg.ddpm.pretrained:
        models.append((variance_ablation(run.cfg.ddpm)[0], ids))
    return models


def model_config(run: Run, name: str) -> StudyConfig:
    """The configuration model ``name`` trains with: the run's, with the other variance for the ablation."""
    ablation, variance = variance_ablation(run.cfg.ddpm)
    if name != ablation:
        return run.cfg
    cfg = run.cfg.model_copy(deep=True)
    cfg.ddpm.variance = variance
    return cfg


def train_one(run: Run, name: str, force: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train (or resume, or skip if finished) the model ``name`` of this run."""
    from ..data.prepared import load_dataset
    from .clustering import load_clusters

    if run.cfg.ddpm.pretrained:
        raise StageError(f"ddpm.pretrained={run.cfg.ddpm.pretrained} is set: this run uses converted models and "
                         "trains none; unset it to train")
    clusters, _ = load_clusters(run)
    wanted = dict(planned_models(run, clusters)) | {"full": clusters["id"].tolist()}
    if name not in wanted:
        raise StageError(f"unknown model '{name}'; this run has: {', '.join(sorted(wanted))}")
    return Trainer(model_config(run, name), load_dataset(run), wanted[name], model_dir(run, name), name).run(
        force, stop_after)


def pretrained_model(run: Run, name: str, ids: Sequence[str]) -> TrainResult:
    """Check the converted model ``<ddpm.pretrained>/<name>`` fits this run; nothing is trained.

    Converted models come from ``python -m polyplib.diffusion.convert`` (the authors' checkpoints).
    """
    from .model import check_model

    root, folder = models_root(run), model_dir(run, name)
    if not (folder / "model_index.json").exists() or not (folder / "unet").is_dir():
        found = sorted(p.name for p in root.glob("*") if (p / "model_index.json").exists()) if root.is_dir() else []
        raise StageError(f"ddpm.pretrained={root}: no converted model '{name}' ({folder}/model_index.json is "
                         f"missing); this run needs {name} (found: {', '.join(found) or 'none'}). Convert the "
                         f"authors' checkpoint with: python -m polyplib.diffusion.convert <model.pt> {folder}")
    features = run.cfg.clustering.features
    if name.startswith("cluster-") and (folder / "convert.json").exists() and features != "paper":
        raise StageError(f"{folder}: converted from an authors' checkpoint, whose cluster number is the authors'; it "
                         f"matches this run's {name} only with clustering.features=paper (the shipped assignment), "
                         f"but this run clusters with clustering.features={features}")
    check_model(folder, run.cfg.data.resolution)
    return TrainResult(name, len(ids), "pretrained", 0, None, "-", 0, 0.0, str(folder))


def ensure_clusters(run: Run, force: bool = False) -> pd.DataFrame:
    """Cluster on the main process only (others wait), then everyone reads clusters.csv."""
    from .clustering import cluster_training_set, load_clusters

    on_main_process(launch_state(run.cfg.run.device), lambda: cluster_training_set(run, force=force))
    return load_clusters(run)[0]


def train_all(run: Run, force: bool = False, recluster: bool | None = None) -> pd.DataFrame:
    """Stage 02 entry point: cluster, then train every planned model (finished ones are skipped).

    ``force`` retrains every model; ``recluster`` (default: ``force``) recomputes the clusters.
    Returns the summary table (one row per model), also written to ``models/ddpm/summary.csv``.
    """
    clusters = ensure_clusters(run, force=force if recluster is None else recluster)
    models = planned_models(run, clusters)
    rows = []
    for i, (name, ids) in enumerate(models, 1):
        result = pretrained_model(run, name, ids) if run.cfg.ddpm.pretrained else train_one(run, name, force=force)
        rows.append(asdict(result))
        print(f"[{i}/{len(models)}] {name}: {result.pairs} pairs, {result.status}, {result.steps} steps, "
              f"{result.seconds:.1f} s" + (f", final loss {result.final_loss:.4f}" if result.final_loss else ""))
    summary = pd.DataFrame(rows, columns=list(TrainResult.__dataclass_fields__))
    if is_main_process(run.cfg):
        atomic_write_text(run.path("models", "ddpm", "summary.csv"), summary.to_csv(index=False))
    return summary


def load_summary(run: Run) -> pd.DataFrame:
    """The summary table written by ``train_all`` (for a cached stage)."""
    path = run.path("models", "ddpm", "summary.csv")
    if not path.exists():
        raise StageError(f"{path}: missing; run stage 02 (train_all)")
    return pd.read_csv(path)


# ----------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = trainer_arguments("python -m polyplib.diffusion.train", (
        "Train stage-02 DDPMs; under `accelerate launch` the same training runs data-parallel."), "finished models")
    parser.add_argument("--model", default="all",
                        help="cluster-NN, full, all (every planned model) or none (clustering only)")
    args = parser.parse_args(argv)

    from ..runs import open_run

    if args.model == "all" and args.stop_after is not None:
        parser.error("--stop-after needs a single --model")
    run = open_run(args.profile, args.overrides, args.run_dir)
    if args.model == "all":
        train_all(run, force=args.force)
        return 0
    ensure_clusters(run, force=args.force and args.model == "none")
    if args.model != "none":
        result = train_one(run, args.model, force=args.force, stop_after=args.stop_after)
        if is_main_process(run.cfg):
            print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
