"""Training step time of the stage-05 GAN and the stage-06 segmenter on the CPU: fp32 or bf16 autocast,
torch's default (NCHW) or channels-last layout, same process, configurations interleaved over rounds.

Why: both trainers used fp32 in the default layout on CPUs; oneDNN's convolutions take channels-last
tensors without reordering them every call, and its bf16 kernels (AVX512-BF16 / AMX) halve the bytes.
The step is the trainers' own: the GAN's hinge D step and G step through DiffAugment (gan/train.py,
R1 off as in every profile), the segmenter's Dice-loss Adam step (segmentation/train.py), at the
course profile's sizes (64 px; GAN batch 16, base 32; U-Net / EfficientNet-Lite0, batch 16). Usage:

    python benchmarks/bench_cpu_layout.py [--steps 8] [--rounds 3]

Writes benchmarks/results/cpu_layout.json (atomically).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from polyplib.config import load_config  # noqa: E402
from record import machine, write_record  # noqa: E402

WARMUP = 3
VARIANTS = {"fp32, default layout": (False, False), "fp32, channels-last": (False, True),
            "bf16, default layout": (True, False), "bf16, channels-last": (True, True)}


def gan_steps(cfg, bf16: bool, channels_last: bool, steps: int) -> list[float]:
    from polyplib.gan.diffaugment import diff_augment, parse_policy
    from polyplib.gan.models import GanArch, build_models

    g, d = build_models(GanArch(cfg.data.resolution, cfg.gan.z_dim, cfg.gan.base_channels), cfg.gan.seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    g, d = g.to(memory_format=layout), d.to(memory_format=layout)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.gan.learning_rate, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.gan.learning_rate, betas=(0.0, 0.99))
    bs, res, policy = cfg.gan.batch_size, cfg.data.resolution, parse_policy(cfg.gan.diffaugment)
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(bs, 4, res, res, generator=gen) * 2 - 1).contiguous(memory_format=layout)
    times = []
    for step in range(steps + WARMUP):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                fake = g(torch.randn(bs, cfg.gan.z_dim, generator=gen)).float()
            loss_d = F.relu(1 - d(diff_augment(real, policy, gen)).float()).mean() + \
                F.relu(1 + d(diff_augment(fake, policy, gen)).float()).mean()
        loss_d.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_g = -d(diff_augment(g(torch.randn(bs, cfg.gan.z_dim, generator=gen)), policy, gen)).float().mean()
        loss_g.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    return times


def segmenter_steps(cfg, bf16: bool, channels_last: bool, steps: int) -> list[float]:
    from polyplib.segmentation.models import build_model
    from polyplib.segmentation.train import dice_loss

    s, res = cfg.segmentation, cfg.data.resolution
    torch.manual_seed(0)
    model = build_model(s.models[0], s.encoder, s.encoder_weights).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt, loss_fn = torch.optim.Adam(model.parameters(), lr=s.lr), dice_loss()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch_size, 3, res, res, generator=gen).contiguous(memory_format=layout)
    y = (torch.rand(s.batch_size, 1, res, res, generator=gen) > 0.7).float()
    times = []
    for step in range(steps + WARMUP):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        opt.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_layout.json")
    args = ap.parse_args(argv)
    host = machine()
    cfg = load_config("course")
    models = {"gan": gan_steps, "segmenter": segmenter_steps}
    times = {m: {v: [] for v in VARIANTS} for m in models}
    for r in range(args.rounds):
        for m, fn in models.items():
            for v, (bf16, cl) in VARIANTS.items():
                times[m][v] += fn(cfg, bf16, cl, args.steps)
                print(f"round {r + 1}/{args.rounds}  {m:9s} {v:22s} {1000 * statistics.median(times[m][v]):7.1f} ms/step",
                      flush=True)
    median = {m: {v: statistics.median(t) for v, t in tv.items()} for m, tv in times.items()}
    base = "fp32, default layout"
    result = {
        "benchmark": "cpu_layout", "machine": host,
        "setup": {"profile": "course", "resolution": cfg.data.resolution, "gan_batch_size": cfg.gan.batch_size,
                  "gan_base_channels": cfg.gan.base_channels, "segmenter": f"{cfg.segmentation.models[0]} / "
                  f"{cfg.segmentation.encoder}", "segmenter_batch_size": cfg.segmentation.batch_size,
                  "timed_steps": args.steps, "warmup_steps": WARMUP, "rounds": args.rounds},
        "median_step_ms": {m: {v: round(1000 * t, 1) for v, t in mv.items()} for m, mv in median.items()},
        "speedup_vs_fp32_default_layout": {m: {v: round(mv[base] / t, 2) for v, t in mv.items()}
                                           for m, mv in median.items()},
        "step_seconds": {m: {v: [round(x, 4) for x in t] for v, t in tv.items()} for m, tv in times.items()},
        "trainers_use": {"gan": "bf16 (gan.mixed_precision=auto on a CPU with native bf16), channels-last",
                         "segmenter": "fp32, channels-last"},
    }
    write_record(args.out, result)
    for m, mv in result["speedup_vs_fp32_default_layout"].items():
        print(m, mv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
