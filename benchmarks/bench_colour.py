"""Colours no training frame has (#31): is it a bug, or the training length?

On real Kvasir-SEG, the course's 900-step Full model drew unconditional samples in green, cyan, magenta
and yellow. This benchmark reproduces that on the phantom with more colour variation between frames
(``data.phantom.colour_jitter``): the course's Full model (its settings, 64 px) is trained with its EMA
weights kept every ``--every`` steps, once with the authors' GroupNorm(32) (at the course's 32-channel
first level: one channel per group) and once with 8 groups (``ddpm.norm_groups``). At each measured step
it records (``polyplib.diffusion.colour``):

- the model's prediction of the clean frame at the first reverse step (t = T - 1) from 16 noise draws:
  the range of its opponent colour means, and the share outside the range the training frames span;
- the same for 16 unconditional samples (ancestral sampling on a ``--sample-steps`` respacing);
- the mean squared error of the predicted noise's channel means at t = T - 1 on training frames (the
  first step's colour depends on it, x 1 / sqrt(abar_T) in x0), beside the variance of the noise's own
  channel means (what a model that predicts no channel mean at all scores);
- the DC gain: how much of a shift of the input's red-channel mean reaches the predicted noise's (the
  ideal at t = T - 1 is about 1: the noise is almost all of the input there).

With ``--course-run``, the course run's own Full model (the default phantom colours) is measured too.
The record is rewritten after every measurement. Usage (about 25 min on 2 cores):

    python benchmarks/bench_colour.py [--steps 1800] [--steps-other 900] [--jitter 0.3] [--course-run runs/course]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, machine, write_record  # noqa: E402

SEEDS = list(range(1000, 1016))


def dc_gain(unet, scheduler_config: dict, shift: float = 0.1) -> float:
    """How much of a shift of the input's red-channel mean reaches the predicted noise's red-channel mean at
    t = T - 1 (1: passed on, as the noise it has to predict is almost all of the input there; 0: blocked)."""
    from polyplib.diffusion.gaussian import Chain

    chain = Chain.from_config(scheduler_config)
    x = torch.randn(8, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                    generator=torch.Generator().manual_seed(11))
    t = chain.model_timesteps(chain.indices(len(chain) - 1, 8, "cpu"))
    moved = x.clone()
    moved[:, 0] += shift
    with torch.no_grad():
        a, b = unet(x, t).sample[:, 0].float().mean(), unet(moved, t).sample[:, 0].float().mean()
    return float((b - a) / shift)


def measure(unet, scheduler_config: dict, training: torch.Tensor, sample_steps: int) -> dict:
    from polyplib.diffusion.colour import colour_table, x0_at_first_step
    from polyplib.diffusion.gaussian import Chain
    from polyplib.diffusion.unconditional import sample_tensor

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
            "noise_channel_mean_variance": 1.0 / (training.shape[2] * training.shape[3]),
            "dc_gain_at_T": round(dc_gain(unet, scheduler_config), 4),
            "x0_outside": _share(table.iloc[1, -1]), "samples_outside": _share(table.iloc[2, -1])}


def _share(count: str) -> float:
    """"k of n" -> k / n."""
    k, n = count.split(" of ")
    return int(k) / int(n)


def training_frames(run) -> torch.Tensor:
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.dataset import to_tensor

    ds = load_dataset(run)
    return torch.stack([to_tensor(*ds.load(i)) for i in ds.ids("train")])


def ema_unet(folder: Path):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(folder).eval()


#: name -> overrides of the course profile (with the colour-varied phantom)
VARIANTS = {"groups-32": [], "groups-8": ["ddpm.norm_groups=8"]}


def measure_variant(name: str, overrides: list[str], args, record: dict) -> None:
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.diffusion.clustering import cluster_training_set
    from polyplib.diffusion.model import load_pipeline, model_dir
    from polyplib.diffusion.train import train_one
    from polyplib.runs import open_run
    from polyplib.training import torch_threads

    steps = args.steps if name == "groups-32" else args.steps_other
    run = open_run("course", [f"data.phantom.colour_jitter={args.jitter}", "clustering.features=handcrafted",
                              "ddpm.train_clusters=false", f"ddpm.max_steps={steps}",
                              f"ddpm.checkpoint_every={args.every}", "ddpm.keep_checkpoints=true",
                              "ddpm.checkpoints_total_limit=100", f"ddpm.sample_every={steps}", "run.progress=false",
                              *overrides, *args.set], args.work / name)
    prepare_data(run)
    cluster_training_set(run)
    trained = train_one(run, "full")
    frames = training_frames(run)
    folder = model_dir(run, "full")
    pipe = load_pipeline(folder)
    config = dict(pipe.scheduler.config)
    kept = {int(p.name.split("-")[1]): p / "unet_ema" for p in (folder / "checkpoints").glob("checkpoint-*")}
    out = {"overrides": overrides, "norm_groups": pipe.unet.config.norm_num_groups, "steps": steps,
           "train_status": trained.status, "train_seconds": trained.seconds, "by_step": {}}
    record["variants"][name] = out
    with torch_threads(run.cfg.run.torch_threads, "cpu"):
        for step in [k for k in sorted(kept) if k in args.measure_at] + [steps]:
            unet = pipe.unet if step == steps else ema_unet(kept[step])
            r = out["by_step"][str(step)] = measure(unet, config, frames, args.sample_steps)
            print(f"{name} step {step}: x0 outside {r['x0_outside']:.2f}, samples outside {r['samples_outside']:.2f}, "
                  f"eps channel-mean MSE {r['eps_channel_mean_mse_at_T']:.2e}, DC gain {r['dc_gain_at_T']:.3f}",
                  flush=True)
            write_record(args.out, record)          # a killed run keeps what it measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1800, help="training steps of the authors' GroupNorm(32) model")
    ap.add_argument("--steps-other", type=int, default=900, help="training steps of the other variants")
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--measure-at", type=int, nargs="+", default=[300, 900], help="kept steps measured (and the last)")
    ap.add_argument("--jitter", type=float, default=0.3)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    ap.add_argument("--course-only", action="store_true", help="measure only --course-run's model; keep the "
                    "variants of the existing record")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-colour")
    ap.add_argument("--course-run", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="more overrides (tests: tiny sizes)")
    ap.add_argument("--out", type=Path, default=RESULTS / "colour.json")
    args = ap.parse_args()
    from polyplib.diffusion.colour import amplification
    from polyplib.diffusion.model import build_scheduler, load_pipeline, model_dir
    from polyplib.config import load_config

    record = {"benchmark": "colour", "machine": machine(), "jitter": args.jitter, "sample_steps": args.sample_steps,
              "seeds": SEEDS, "variants": {},
              "x0_amplification_at_T": round(amplification(dict(build_scheduler(load_config("course").ddpm).config)), 1)}
    started = time.time()
    if args.course_only and args.out.exists():
        record["variants"] = json.loads(args.out.read_text())["variants"]
    for name in [] if args.course_only else args.variant or list(VARIANTS):
        measure_variant(name, VARIANTS[name], args, record)
    if args.course_run:
        from polyplib.runs import Run

        course = Run(load_config("course"), args.course_run)
        if (model_dir(course, "full") / "model_index.json").exists():
            course_pipe = load_pipeline(model_dir(course, "full"))
            record["course_colours"] = {"steps": course.cfg.ddpm.max_steps, **measure(
                course_pipe.unet, dict(course_pipe.scheduler.config), training_frames(course), args.sample_steps)}
            print(f"course phantom: samples outside {record['course_colours']['samples_outside']:.2f}, DC gain "
                  f"{record['course_colours']['dc_gain_at_T']:.3f}", flush=True)
        else:
            record["course_colours"] = f"{args.course_run}: no finished Full model (run stage 02 of the course first)"
    record["seconds"] = round(time.time() - started, 1)
    write_record(args.out, record)


if __name__ == "__main__":
    main()
