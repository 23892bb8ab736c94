"""Cost of a synthetic labelled pair: seconds and UNet evaluations per pair, per sampler.

One run, one small random 4-channel UNet at 64 px (the cost of a step does not depend on the
weights; the authors' guided-diffusion layout with learned sigma, as the study trains it):
unconditional DDPM / DDIM / DPM-Solver++ at several step counts, and RePaint with the authors'
settings (200 respaced steps from pure noise, jump length 10, jump n-sample 5: 960 calls), the
SDEdit-style ablation (start after skipping 80: 600 calls) and the smoke profile's. Seconds are per generated pair (batch time / batch size); how many of them pass
the mask post-processing depends on a trained model, not on the sampler's cost. Usage:
    python benchmarks/bench_sampling.py [--batch 4] [--threads 1] [--out benchmarks/results/sampling.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polyplib.synthetic.postprocess import dilate, scaled_px  # noqa: E402
from polyplib.sampling.repaint import repaint  # noqa: E402
from polyplib.diffusion.unconditional import sample_unconditional  # noqa: E402
from record import machine, write_record  # noqa: E402

RESOLUTION = 64
UNCONDITIONAL = [("ddpm", 1000), ("ddpm", 100), ("ddpm", 25), ("ddim", 100), ("ddim", 25),
                 ("dpm++", 25), ("dpm++", 10)]
REPAINT = {"paper": dict(steps=200, start="noise", jump_length=10, jump_n_sample=5),
           "paper-sdedit-80": dict(steps=200, start="sdedit", skip_steps=80, jump_length=10, jump_n_sample=5),
           "smoke": dict(steps=20, start="noise", jump_length=5, jump_n_sample=2)}
MODEL = ["ddpm.block_out_channels=[32,64,64]", "ddpm.layers_per_block=1", "ddpm.attention_resolutions=[16]"]


def small_model():
    """(UNet, scheduler config): the study's model builder at a small width (learned sigma, T = 1000)."""
    from polyplib.config import load_config
    from polyplib.diffusion.model import build_scheduler, build_unet

    ddpm = load_config("course", MODEL).ddpm
    return build_unet(ddpm, RESOLUTION, seed=0).eval(), dict(build_scheduler(ddpm).config)


def source_batch(batch: int):
    """Real-looking stand-ins: a smooth frame and an elliptical polyp mask (~8 % of the frame)."""
    yy, xx = np.mgrid[:RESOLUTION, :RESOLUTION] / RESOLUTION
    frame = np.stack([0.6 + 0.2 * xx, 0.35 + 0.1 * yy, 0.25 + 0.05 * xx * yy], -1)
    images = np.repeat((frame * 255).astype(np.uint8)[None], batch, 0)
    masks = np.repeat((((yy - 0.55) / 0.18) ** 2 + ((xx - 0.45) / 0.14) ** 2 <= 1)[None], batch, 0)
    regions = np.stack([dilate(m, scaled_px(20, RESOLUTION, 1)) for m in masks])
    return images, masks, regions


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    *_, nfe = fn()
    return time.perf_counter() - start, nfe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="pairs per batch (sampling.batch_size)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    unet, config = small_model()
    seeds = list(range(args.batch))
    results = []
    for sampler, steps in UNCONDITIONAL:
        seconds, nfe = timed(lambda: sample_unconditional(unet, config, sampler, steps, seeds))
        results.append({"method": f"uncond-{sampler}-{steps}", "sampler": sampler, "steps": steps})
        results[-1].update(nfe_per_pair=nfe, seconds_per_pair=round(seconds / args.batch, 4),
                           ms_per_evaluation=round(1000 * seconds / nfe, 2))
        print(f"{results[-1]['method']:>18}: {nfe:4d} UNet evaluations, {seconds / args.batch:7.2f} s per pair")
    images, masks, regions = source_batch(args.batch)
    for name, kw in REPAINT.items():
        seconds, nfe = timed(lambda: repaint(unet, config, images, masks, regions, seeds, **kw))
        results.append({"method": f"repaint-{name}", "sampler": "repaint", **kw, "nfe_per_pair": nfe,
                        "seconds_per_pair": round(seconds / args.batch, 4),
                        "ms_per_evaluation": round(1000 * seconds / nfe, 2)})
        print(f"{results[-1]['method']:>18}: {nfe:4d} UNet evaluations, {seconds / args.batch:7.2f} s per pair")
    record = {"benchmark": "sampling.cost_per_pair",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "resolution": RESOLUTION, "batch": args.batch,
              "unet": {"overrides": MODEL, "out_channels": unet.config.out_channels,
                       "parameters": sum(p.numel() for p in unet.parameters())},
              "note": "random weights: cost only; seconds are per generated pair (batch time / batch size)",
              "results": results}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
