"""DDPM training throughput: polyplib's trainer vs a plain diffusers-style fp32 loop, same process.

Both train the same 4-channel UNet2DModel (default: the smoke model, 64 px, batch 8) on the same
random pairs. The plain loop is what diffusers' train_unconditional.py does without accelerate:
fp32, torch's default AdamW (a per-tensor loop on CPU), EMAModel(foreach=False). Each single change
is also measured on the plain loop (bf16 autocast, channels_last, oneDNN's bf16 math on fp32 tensors,
fused AdamW, foreach EMA, and the classic attention processor instead of SDPA), so the report says what
each optimisation gives.
The machine may be shared: configurations are interleaved over several short rounds, every
optimiser step is timed, and throughput is reported from the median step time and from the 20th
percentile (the steps least disturbed by other jobs). Usage:

    python benchmarks/bench_ddpm_train.py [--steps 10] [--rounds 3] [--set ddpm.batch_size=16]
    python benchmarks/bench_ddpm_train.py --profile      # where the trainer's step time goes

Writes benchmarks/results/ddpm_train.json (atomically).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from polyplib.config import load_config  # noqa: E402
from record import machine, write_record  # noqa: E402

MODEL = ["data.resolution=64", "ddpm.block_out_channels=[32,64,64]", "ddpm.layers_per_block=1",
         "ddpm.attention_resolutions=[16]", "ddpm.batch_size=8", "ddpm.num_train_timesteps=1000",
         "ddpm.variance=fixed_small",   # epsilon only, as the plain loop (a learned sigma adds the VLB term)
         "run.progress=false", "ddpm.checkpoint_every=100000", "ddpm.sample_every=100000", "ddpm.hflip=true"]
WARMUP = 3  # steps excluded from every timing (allocator and oneDNN primitive caches)


class RandomPairs:
    """Stands in for a PreparedSet: seeded random images with disc masks, at the model's resolution."""

    def __init__(self, n: int, res: int):
        rng = np.random.default_rng(0)
        self.items = {}
        yy, xx = np.mgrid[:res, :res]
        for i in range(n):
            cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.25)]
            mask = (yy / res - cy) ** 2 + (xx / res - cx) ** 2 < r ** 2
            self.items[f"p{i:03d}"] = (rng.integers(0, 256, (res, res, 3), dtype=np.uint8), mask)

    def load(self, pair_id):
        return self.items[pair_id]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plain_loop(cfg, data: torch.Tensor, steps: int, *, bf16=False, channels_last=False, fused=False,
               ema_foreach=False, classic_attention=False, threads=0, onednn_bf16=False) -> list[float]:
    """Step times of a train_unconditional-style loop (no accelerate) with one change switched on.
    ``onednn_bf16``: fp32 tensors, but oneDNN's convolutions and matmuls compute in bf16 inside the kernel
    (``torch.backends.mkldnn.*.fp32_precision``): mixed precision without autocast's casts."""
    default = torch.get_num_threads()
    mkldnn = (torch.backends.mkldnn.conv, torch.backends.mkldnn.matmul)
    precision = [b.fp32_precision for b in mkldnn]
    try:
        if threads:
            torch.set_num_threads(threads)
        if onednn_bf16:
            for b in mkldnn:
                b.fp32_precision = "bf16"
        return _plain_loop(cfg, data, steps, bf16, channels_last, fused, ema_foreach, classic_attention)
    finally:
        torch.set_num_threads(default)
        for b, p in zip(mkldnn, precision):
            b.fp32_precision = p


def _plain_loop(cfg, data, steps, bf16, channels_last, fused, ema_foreach, classic_attention) -> list[float]:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.models.attention_processor import Attention, AttnProcessor
    from diffusers.training_utils import EMAModel

    from polyplib.diffusion.model import unet_config

    torch.manual_seed(0)
    model = UNet2DModel(**unet_config(cfg.ddpm, cfg.data.resolution))
    if classic_attention:
        for m in model.modules():
            if isinstance(m, Attention):
                m.set_processor(AttnProcessor())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sched = DDPMScheduler(num_train_timesteps=cfg.ddpm.num_train_timesteps)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.ddpm.learning_rate, fused=True if fused else None)
    ema = EMAModel(model.parameters(), decay=cfg.ddpm.ema_decay, use_ema_warmup=True, power=3 / 4,
                   foreach=ema_foreach)
    bs = cfg.ddpm.batch_size
    times = []
    for step in range(steps + WARMUP):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(data), (bs,))
        clean = data[idx].float() / 127.5 - 1
        noise = torch.randn(clean.shape)
        t = torch.randint(0, sched.config.num_train_timesteps, (bs,))
        noisy = sched.add_noise(clean, noise, t)
        if channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(noisy, t).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(model.parameters())
        if step >= WARMUP:
            times.append(time.perf_counter() - t0)
    return times


def train_step_flops(cfg) -> int:
    """FLOPs of one training step (forward + backward of the UNet on one batch), by torch's counter."""
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    from polyplib.diffusion.model import unet_config

    model = UNet2DModel(**unet_config(cfg.ddpm, cfg.data.resolution))
    x = torch.randn(cfg.ddpm.batch_size, 4, cfg.data.resolution, cfg.data.resolution)
    t = torch.randint(0, cfg.ddpm.num_train_timesteps, (cfg.ddpm.batch_size,))
    with FlopCounterMode(display=False) as counter:
        model(x, t).sample.float().pow(2).mean().backward()
    return int(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """This machine's dense matmul rate in GFLOP/s (best of ``repeats`` n x n products)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def polyplib_trainer(cfg, pairs: RandomPairs, steps: int, threads: int = 0) -> list[float]:
    """Step times of polyplib.diffusion.train.Trainer (accelerate, auto precision), from its loss log."""
    import pandas as pd

    from polyplib.diffusion.train import Trainer

    cfg = cfg.model_copy(deep=True)
    cfg.run.torch_threads = threads
    cfg.ddpm.max_steps = steps + WARMUP
    cfg.ddpm.sample_every = 10 ** 6
    with tempfile.TemporaryDirectory(prefix="bench_ddpm_") as tmp:
        Trainer(cfg, pairs, list(pairs.items), Path(tmp) / "model").run(force=True)
        log = pd.read_csv(Path(tmp) / "model" / "loss.csv")
    return log["elapsed_s"].diff().iloc[WARMUP:].tolist()


def profile_trainer(cfg, pairs: RandomPairs, steps: int, top: int = 20) -> list[dict]:
    """Where the trainer's step time goes: torch.profiler over ``steps`` steps after the warm-up, the
    operators with the most self CPU time (forward and backward kernels, optimiser, EMA, data)."""
    from torch.profiler import ProfilerActivity, profile

    from polyplib.diffusion.train import Trainer

    cfg = cfg.model_copy(deep=True)
    cfg.ddpm.max_steps = WARMUP
    cfg.ddpm.sample_every = 10 ** 6
    with tempfile.TemporaryDirectory(prefix="bench_ddpm_") as tmp:
        trainer = Trainer(cfg, pairs, list(pairs.items), Path(tmp) / "model")
        trainer.run(force=True, stop_after=WARMUP)          # builds the model, warms the caches
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(WARMUP, WARMUP + steps):
                trainer._step(step)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
             "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count // steps}
            for e in events[:top]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ddpm_train.json")
    ap.add_argument("--profile", action="store_true",
                    help="instead: profile the trainer's steps (torch.profiler), write ddpm_train_profile.json")
    args = ap.parse_args(argv)

    cfg = load_config("smoke", MODEL + args.overrides)
    res, bs = cfg.data.resolution, cfg.ddpm.batch_size
    pairs = RandomPairs(32, res)
    if args.profile:
        ops = profile_trainer(cfg, pairs, args.steps)
        for op in ops:
            print(f"{op['op'][:48]:48s} {op['self_ms_per_step']:8.2f} ms/step {100 * op['share']:5.1f} %")
        write_record(args.out.with_name("ddpm_train_profile.json"),
                     {"benchmark": "ddpm_train_profile", "machine": {**machine(), "cpu": cpu_name()},
                      "setup": {"resolution": res, "batch_size": bs, "profiled_steps": args.steps,
                                "block_out_channels": cfg.ddpm.block_out_channels},
                      "top_ops_by_self_cpu_time": ops})
        return 0
    data = torch.stack([torch.from_numpy(np.concatenate([im, m[..., None].astype(np.uint8) * 255], -1))
                        .permute(2, 0, 1) for im, m in pairs.items.values()])
    variants = {
        "plain fp32 (diffusers-style)": lambda: plain_loop(cfg, data, args.steps),
        "plain + bf16 autocast": lambda: plain_loop(cfg, data, args.steps, bf16=True),
        "plain + channels_last": lambda: plain_loop(cfg, data, args.steps, channels_last=True),
        "plain + bf16 + channels_last": lambda: plain_loop(cfg, data, args.steps, bf16=True, channels_last=True),
        "plain + oneDNN bf16 math (fp32 tensors)": lambda: plain_loop(cfg, data, args.steps, onednn_bf16=True),
        "plain + fused AdamW": lambda: plain_loop(cfg, data, args.steps, fused=True),
        "plain + foreach EMA": lambda: plain_loop(cfg, data, args.steps, ema_foreach=True),
        "plain, classic attention (no SDPA)": lambda: plain_loop(cfg, data, args.steps, classic_attention=True),
        "plain, 1 torch thread": lambda: plain_loop(cfg, data, args.steps, threads=1),
        "polyplib trainer": lambda: polyplib_trainer(cfg, pairs, args.steps),
        "polyplib trainer, run.torch_threads=1": lambda: polyplib_trainer(cfg, pairs, args.steps, threads=1),
    }
    steps: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            times = fn()
            steps[name] += times
            print(f"round {r + 1}/{args.rounds}  {name:38s} {bs / statistics.median(times):7.2f} img/s", flush=True)
    median = {k: bs / statistics.median(v) for k, v in steps.items()}
    fast = {k: bs / float(np.percentile(v, 20)) for k, v in steps.items()}
    base, base_fast = median["plain fp32 (diffusers-style)"], fast["plain fp32 (diffusers-style)"]
    from polyplib.training import resolve_mixed_precision
    flops = train_step_flops(cfg)
    peak = {"fp32": round(matmul_peak(torch.float32), 1), "bf16": round(matmul_peak(torch.bfloat16), 1)}
    steps_per_s = {k: v / bs for k, v in median.items()}
    achieved = {k: round(flops * v / 1e9, 2) for k, v in steps_per_s.items()}
    trainer_precision = resolve_mixed_precision(cfg.ddpm.mixed_precision, torch.device("cpu"))
    result = {
        "benchmark": "ddpm_train",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "cpu": cpu_name(),
                    "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())},
        "setup": {"resolution": res, "batch_size": bs, "block_out_channels": cfg.ddpm.block_out_channels,
                  "layers_per_block": cfg.ddpm.layers_per_block, "variance": cfg.ddpm.variance,
                  "attention_resolutions": cfg.ddpm.attention_resolutions, "timed_steps": args.steps,
                  "warmup_steps": WARMUP, "rounds": args.rounds,
                  "trainer_precision": trainer_precision,
                  "note": "every step timed, configurations interleaved over rounds; other jobs may share the "
                          "CPU (machine.load_average_at_start)"},
        "images_per_s_median_step": {k: round(v, 2) for k, v in median.items()},
        "images_per_s_p20_step": {k: round(v, 2) for k, v in fast.items()},
        "speedup_vs_plain_median": {k: round(v / base, 2) for k, v in median.items()},
        "speedup_vs_plain_p20": {k: round(v / base_fast, 2) for k, v in fast.items()},
        "step_seconds": {k: [round(x, 4) for x in v] for k, v in steps.items()},
        "ratio_trainer_vs_plain": round(median["polyplib trainer"] / base, 2),
        "ratio_trainer_vs_plain_p20": round(fast["polyplib trainer"] / base_fast, 2),
        "flops_per_train_step": flops,
        "matmul_peak_gflops": peak,
        "achieved_gflops_median_step": achieved,
        "fraction_of_peak": {
            "plain fp32 vs fp32 peak": round(achieved["plain fp32 (diffusers-style)"] / peak["fp32"], 3),
            f"polyplib trainer ({trainer_precision}) vs {'bf16' if trainer_precision == 'bf16' else 'fp32'} peak":
                round(achieved["polyplib trainer"] / peak["bf16" if trainer_precision == "bf16" else "fp32"], 3)},
    }
    write_record(args.out, result)
    print(f"polyplib trainer / plain fp32 loop: {result['ratio_trainer_vs_plain']:.2f}x (median step), "
          f"{result['ratio_trainer_vs_plain_p20']:.2f}x (20th percentile step)  -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
