"""Cost of one Styled-Diff pair: the authors' guided style transfer, seconds per pair on this CPU.

COST MEASUREMENT ONLY: every network here has RANDOM weights (the study's small UNet, VGG-19
features up to conv2_1, and the paper's DINO ViT-B/8 at 224 px, built by timm without weights).
The arithmetic of a step does not depend on the weight values, so the seconds are what the pass
costs; the images it makes mean nothing. The pass runs the paper's schedule (a 200-step respacing,
skip 80: 120 guided steps, each a UNet forward and backward, two ZeCon encoder passes, two VGG calls
and one DINO call with its backward) at 64 px and 256 px; ``--steps`` measures fewer guided steps
and extrapolates per step (every step costs the same; the record says which). Usage:
    python benchmarks/bench_style.py [--threads 2] [--steps 120] [--out benchmarks/results/style.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polyplib.sampling.feature_nets import FeatureNets, vgg_features  # noqa: E402
from polyplib.sampling.guided import StyleSettings, guided_style  # noqa: E402
from polyplib.synthetic.postprocess import dilate, scaled_px  # noqa: E402
from record import machine, write_record  # noqa: E402

MODEL = ["ddpm.block_out_channels=[32,64,64]", "ddpm.layers_per_block=1", "ddpm.attention_resolutions=[16]"]
DINO = "vit_base_patch8_224.dino"


def random_nets() -> FeatureNets:
    import timm

    torch.manual_seed(0)
    vgg = vgg_features().eval().requires_grad_(False)
    dino = timm.create_model(DINO, pretrained=False, num_classes=0).eval().requires_grad_(False)
    return FeatureNets(vgg, dino, {"vgg": "random (cost only)", "dino": f"random {DINO} (cost only)"})


def small_model(resolution: int):
    from polyplib.config import load_config
    from polyplib.diffusion.model import build_scheduler, build_unet

    ddpm = load_config("course", MODEL).ddpm
    return build_unet(ddpm, resolution, seed=0).eval(), dict(build_scheduler(ddpm).config)


def pair(resolution: int):
    yy, xx = np.mgrid[:resolution, :resolution] / resolution
    frame = (np.stack([0.6 + 0.2 * xx, 0.35 + 0.1 * yy, 0.25 + 0.05 * xx * yy], -1) * 255).astype(np.uint8)
    mask = ((yy - 0.55) / 0.18) ** 2 + ((xx - 0.45) / 0.14) ** 2 <= 1
    return frame[None], mask[None], dilate(mask, scaled_px(20, resolution, 1))[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--steps", type=int, default=120, help="guided steps measured (the paper's pass: 120)")
    ap.add_argument("--resolutions", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "style.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = machine()
    nets = random_nets()
    paper = StyleSettings.paper()                             # 200 steps, skip 80: 120 guided steps
    full_steps = paper.start + 1
    measured = dataclasses.replace(paper, steps=args.steps + paper.skip_steps)   # the same losses, fewer steps
    results = []
    for resolution in args.resolutions:
        unet, config = small_model(resolution)
        images, masks, regions = pair(resolution)
        t0 = time.perf_counter()
        _, _, info = guided_style(unet, config, images, masks, images, masks, regions, [0], measured, nets)
        seconds = time.perf_counter() - t0
        per_step = seconds / args.steps
        results.append({"resolution": resolution, "guided_steps_measured": args.steps,
                        "seconds_measured": round(seconds, 2), "seconds_per_step": round(per_step, 3),
                        "seconds_per_pair": round(per_step * full_steps, 1),
                        "extrapolated": args.steps != full_steps, "costs_measured": info["costs"],
                        "unet_parameters": sum(p.numel() for p in unet.parameters())})
        print(f"{resolution:4d} px: {per_step:.2f} s per guided step, {per_step * full_steps:.0f} s per styled pair"
              f"{' (extrapolated from %d steps)' % args.steps if args.steps != full_steps else ''}")
    record = {"benchmark": "style.seconds_per_styled_pair",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": started,
              "threads": args.threads, "paper_guided_steps": full_steps, "unet": {"overrides": MODEL},
              "feature_nets": nets.origin,
              "note": "COST ONLY: random weights everywhere; seconds per styled pair, batch 1, on this CPU "
                      "(colour matching not included: milliseconds)",
              "results": results}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
