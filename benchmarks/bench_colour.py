"""Colours no training frame has (#31): is it a bug, or the training length?

On real Kvasir-SEG, the course's 900-step Full model drew unconditional samples in green, cyan, magenta
and yellow. This benchmark reproduces that on the phantom with more colour variation between frames
(``data.phantom.colour_jitter``) and follows it over training: the course's Full model (its settings,
64 px) is trained for ``--steps`` steps with its EMA weights kept every ``--every`` steps, and at each
kept step it records (``polyplib.diffusion.colour``):

- the model's prediction of the clean frame at the first reverse step (t = T - 1) from 16 noise draws:
  the range of its opponent colour means, and the share outside the range the training frames span;
- the same for 16 unconditional samples (ancestral sampling on a ``--sample-steps`` respacing);
- the mean squared error of the predicted noise's channel means at t = T - 1 on training frames,
  the quantity the first step's colour depends on (x 1 / sqrt(abar_T) in x0).

With ``--course-run``, the course run's own Full model (the default phantom colours) is measured too.
Usage (about 15 min on 2 cores for 1800 steps):

    python benchmarks/bench_colour.py [--steps 1800] [--every 300] [--jitter 0.3] [--course-run runs/course]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, machine, write_record  # noqa: E402

SEEDS = list(range(1000, 1016))


def measure(unet, scheduler_config: dict, training: torch.Tensor, sample_steps: int) -> dict:
    from polyplib.diffusion.colour import colour_table, x0_at_first_step
    from polyplib.diffusion.gaussian import Chain
    from polyplib.sampling.unconditional import sample_tensor

    with torch.no_grad():
        x0 = x0_at_first_step(unet, scheduler_config, SEEDS)
        samples, _ = sample_tensor(unet, scheduler_config, "ddpm", sample_steps, SEEDS)
        chain = Chain.from_config(scheduler_config)        # the noise's channel-mean error at t = T - 1
        gen = torch.Generator().manual_seed(7)
        noise = torch.randn(training.shape, generator=gen)
        i = chain.indices(len(chain) - 1, len(training), "cpu")
        eps = torch.cat([unet(chain.q_sample(x, j, z), chain.model_timesteps(j)).sample[:, :x.shape[1]].float()
                         for x, j, z in zip(training.split(64), i.split(64), noise.split(64))])
        mean_error = ((eps - noise).mean(dim=(2, 3))[:, :3] ** 2).mean().item()
    table = colour_table(training, **{"x0 predicted at the first step (t = T-1)": x0,
                                      f"samples ({sample_steps}-step ancestral)": samples.float().cpu()})
    return {"table": table.to_dict(orient="records"), "eps_channel_mean_mse_at_T": mean_error,
            "x0_outside": float(table.iloc[1, -1]), "samples_outside": float(table.iloc[2, -1])}


def training_frames(run) -> torch.Tensor:
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.dataset import to_tensor

    ds = load_dataset(run)
    return torch.stack([to_tensor(*ds.load(i)) for i in ds.ids("train")])


def ema_unet(folder: Path):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(folder).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--jitter", type=float, default=0.3)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-colour")
    ap.add_argument("--course-run", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="more overrides (tests: tiny sizes)")
    ap.add_argument("--out", type=Path, default=RESULTS / "colour.json")
    args = ap.parse_args()
    from polyplib.data.prepare import prepare_data
    from polyplib.diffusion.clustering import cluster_training_set
    from polyplib.diffusion.model import load_pipeline, model_dir
    from polyplib.diffusion.train import train_one
    from polyplib.runs import open_run
    from polyplib.training import torch_threads

    record = {"machine": machine(), "steps": args.steps, "every": args.every, "jitter": args.jitter,
              "sample_steps": args.sample_steps, "seeds": SEEDS}
    started = time.time()
    overrides = [f"data.phantom.colour_jitter={args.jitter}", "clustering.features=handcrafted",
                 "ddpm.train_clusters=false", f"ddpm.max_steps={args.steps}", f"ddpm.checkpoint_every={args.every}",
                 "ddpm.keep_checkpoints=true", "ddpm.checkpoints_total_limit=100", f"ddpm.sample_every={args.steps}",
                 "run.progress=false", *args.set]
    run = open_run("course", overrides, args.work)
    prepare_data(run)
    cluster_training_set(run)
    trained = train_one(run, "full")
    record["overrides"], record["train_seconds"] = overrides, trained.seconds
    frames = training_frames(run)
    folder = model_dir(run, "full")
    pipe = load_pipeline(folder)
    config = dict(pipe.scheduler.config)
    from polyplib.diffusion.colour import amplification
    record["x0_amplification_at_T"] = round(amplification(config), 1)
    steps = {int(p.name.split("-")[1]): p / "unet_ema" for p in (folder / "checkpoints").glob("checkpoint-*")}
    record["varied_colours"] = {}
    with torch_threads(run.cfg.run.torch_threads, "cpu"):
        for step in sorted(steps) + [args.steps]:
            unet = pipe.unet if step == args.steps else ema_unet(steps[step])
            result = measure(unet, config, frames, args.sample_steps)
            record["varied_colours"][str(step)] = result
            print(f"step {step}: x0 outside {result['x0_outside']:.2f}, samples outside {result['samples_outside']:.2f}, "
                  f"eps channel-mean MSE {result['eps_channel_mean_mse_at_T']:.2e}", flush=True)
        if args.course_run:
            from polyplib.runs import Run
            from polyplib.config import load_config

            course = Run(load_config("course"), args.course_run)
            course_pipe = load_pipeline(model_dir(course, "full"))
            record["course_colours"] = {"steps": course.cfg.ddpm.max_steps, **measure(
                course_pipe.unet, dict(course_pipe.scheduler.config), training_frames(course), args.sample_steps)}
            print(f"course phantom: samples outside {record['course_colours']['samples_outside']:.2f}", flush=True)
    record["seconds"] = round(time.time() - started, 1)
    write_record(args.out, record)


if __name__ == "__main__":
    main()
