"""What the authors' method costs on one GPU: the paper-size trainer, the paper profile's hours, the `gpu` study.

1. The device's matmul rate in the trainer's precision (bf16 on a GPU that has it), measured here: the peak the
   model FLOPs utilisation is measured against.
2. The paper-size trainer: polyplib's own ``Trainer`` (accelerate, bf16 autocast, fused AdamW, EMA) on the
   `paper` profile's UNet (548 M parameters, 256 px, learned sigma and the hybrid loss) at the authors' batch
   of 1 and at the largest batch that fits (doubling until the device runs out of memory or ``--max-batch``):
   images/s, peak device memory, FLOPs per image (torch's counter, forward and backward) and MFU.
3. The UNet's forward pass at the sampling batch (bf16 autocast, no gradients), the unit RePaint spends.
4. The `paper` profile's hours, extrapolated from 2 and 3 with the profile's own settings: stage 02 (every
   cluster model and the Full model, ``ddpm.max_steps`` steps of ``ddpm.batch_size``; and the same images
   seen at the best batch) and stage 03 (the authors' RePaint, its UNet calls per pair, ``samples_per_image``
   pairs per training image, the Diff and Full-Diff sets; the Styled-Diff pass is not included).
5. With ``--study RUN_DIR``: the `gpu` profile's run in that folder (``python run_all.py --profile gpu``):
   seconds per stage, and the figures the method is judged by (Diff regions that keep a mask, label
   fidelity, seam accuracy, Diff-only test IoU against real only).

``--tiny`` runs all of it on a CPU at toy sizes (UNet widths / 16, 64 px, batches up to 4): the test that
keeps this script working where no GPU is. Writes benchmarks/results/gpu.json (``--out``). Usage:

    python benchmarks/bench_gpu.py [--study runs/gpu]          # on the GPU machine, about 3 minutes
    python benchmarks/bench_gpu.py --tiny --out /tmp/gpu.json  # anywhere
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from bench_ddpm_train import RandomPairs  # noqa: E402
from record import RESULTS, machine, write_record  # noqa: E402

from polyplib import paper  # noqa: E402
from polyplib.config import load_config  # noqa: E402
from polyplib.diffusion.model import build_unet  # noqa: E402
from polyplib.training import resolve_device, resolve_mixed_precision  # noqa: E402

WARMUP, STEPS = 3, 8
TINY = ["ddpm.block_out_channels=[16,16,32,32,64,64]", "ddpm.num_head_channels=16", "data.resolution=64"]


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """The device's dense matmul rate in FLOP/s (best of ``repeats`` n x n products)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def train_flops_per_image(cfg, device: torch.device) -> tuple[int, int]:
    """(FLOPs of one training image, forward and backward of the UNet by torch's counter; parameters)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = build_unet(cfg.ddpm, cfg.data.resolution, seed=0).to(device)
    x = torch.randn(1, 4, cfg.data.resolution, cfg.data.resolution, device=device)
    t = torch.full((1,), 500, device=device)
    with FlopCounterMode(display=False) as counter:
        unet(x, t).sample.float().pow(2).mean().backward()
    n_params = sum(p.numel() for p in unet.parameters())
    del unet
    free_memory(device)
    return int(counter.get_total_flops()), n_params


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


def trainer_throughput(cfg, batch: int, steps: int = STEPS) -> dict:
    """polyplib's Trainer for WARMUP + ``steps`` steps of ``batch`` random pairs: images/s from its own step log
    (the loss is read back every step, so each step's time is the device's), peak device memory."""
    import pandas as pd

    from polyplib.diffusion.train import Trainer

    cfg = cfg.model_copy(deep=True)
    cfg.ddpm.batch_size = batch
    cfg.ddpm.max_steps = 10 ** 7                       # stopped after WARMUP + steps: no final 2 GB folder
    cfg.ddpm.checkpoint_every = cfg.ddpm.sample_every = 10 ** 7
    cfg.run.progress = False
    device = resolve_device(cfg.run.device)
    free_memory(device)
    pairs = RandomPairs(max(batch, 8), cfg.data.resolution)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        Trainer(cfg, pairs, list(pairs.items), Path(tmp) / "model").run(force=True, stop_after=WARMUP + steps)
        log = pd.read_csv(Path(tmp) / "model" / "checkpoints" / "loss.csv")
    seconds = float(log["elapsed_s"].diff().iloc[WARMUP:].median())
    return {"batch": batch, "seconds_per_step": round(seconds, 4), "images_per_s": round(batch / seconds, 2),
            "peak_memory_gb": peak_memory_gb(device)}


def largest_batch(cfg, max_batch: int) -> tuple[list[dict], str]:
    """Trainer throughput at batch 1, 2, 4, ... until out of memory or ``max_batch``; (rows, why it stopped)."""
    rows, batch = [], 1
    device = resolve_device(cfg.run.device)
    while batch <= max_batch:
        full = False
        try:
            rows.append(trainer_throughput(cfg, batch))
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not out_of_memory(exc):
                raise
            full = True
        if full:                 # outside the except block: its traceback no longer holds the failed model
            free_memory(device)
            return rows, f"out of memory at batch {batch}"
        print(json.dumps(rows[-1]), flush=True)
        batch *= 2
    return rows, f"--max-batch {max_batch} reached"


def forward_throughput(cfg, max_batch: int, calls: int = 6) -> dict:
    """The UNet's forward pass under the sampling precision, no gradients, at the largest batch (doubling) that
    fits: model evaluations per second."""
    device = resolve_device(cfg.run.device)
    precision = resolve_mixed_precision(cfg.ddpm.mixed_precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    unet = build_unet(cfg.ddpm, cfg.data.resolution, seed=0).to(device).eval()
    best, batch = None, 1
    while batch <= max_batch:
        try:
            x = torch.randn(batch, 4, cfg.data.resolution, cfg.data.resolution, device=device)
            t = torch.full((batch,), 500, device=device)
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                unet(x, t)
                sync(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    unet(x, t)
                sync(device)
            rate = batch * calls / (time.perf_counter() - t0)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not out_of_memory(exc):
                raise
            break
        if best is None or rate > best["evaluations_per_s"]:
            best = {"batch": batch, "evaluations_per_s": round(rate, 2), "precision": precision}
        batch *= 2
    del unet
    free_memory(device)
    return best


def paper_hours(cfg, train: list[dict], forward: dict) -> dict:
    """The `paper` profile's stage 02 and 03 on one such device, from its own settings."""
    from polyplib.sampling.repaint import count_calls, repaint_schedule

    d, s = cfg.ddpm, cfg.sampling
    models = cfg.clustering.k + int(d.train_full)
    images = models * d.max_steps * d.batch_size
    at_paper_batch = next(r for r in train if r["batch"] == d.batch_size)
    best = max(train, key=lambda r: r["images_per_s"])
    calls, _ = count_calls(repaint_schedule(s.steps, s.jump_length, s.jump_n_sample, s.start, s.skip_steps))
    pairs = s.samples_per_image * paper.SETTINGS["data.split.n_train"].value * (1 + int(s.also_full))
    return {"stage_02": {"models": models, "steps_per_model": d.max_steps, "batch": d.batch_size,
                         "images_seen": images,
                         "hours_at_paper_batch": round(images / at_paper_batch["images_per_s"] / 3600, 1),
                         "hours_at_best_batch": round(images / best["images_per_s"] / 3600, 1),
                         "best_batch": best["batch"]},
            "stage_03": {"pairs": pairs, "unet_calls_per_pair": calls,
                         "hours": round(pairs * calls / forward["evaluations_per_s"] / 3600, 1),
                         "not_included": "the Styled-Diff pass (guided, with VGG-19 and DINO)"}}


def study_summary(folder: Path) -> dict:
    """Seconds per stage of a `gpu` run and the figures its method is judged by."""
    import pandas as pd

    meta = json.loads((folder / "run_meta.json").read_text())
    stages = {s["stage"]: {"status": s["status"], "seconds": s["seconds"]} for s in meta["stages"]}
    fidelity = {r["method"]: r for r in json.loads((folder / "metrics" / "fidelity.json").read_text())["fidelity"]}
    sets = {m["method"]: m for m in json.loads((folder / "synthetic" / "summary.json").read_text())["methods"]}
    seg = pd.read_csv(folder / "results" / "06_segmentation.csv")
    seg = seg[(seg["n_real"].astype(str) == "all") & (seg["augmentation"] == "control")]
    real = seg[seg["regime"] == "real"]["iou"].mean()
    diff_only = seg[(seg["regime"] == "synthetic") & (seg["source"] == "diff")]["iou"].mean()
    diff, judged = sets.get("diff", {}), fidelity.get("diff", {})
    return {"run_dir": str(folder), "profile": meta.get("profile"), "device": meta.get("device"),
            "stages": stages, "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
            "all_stages_ran": all(s["status"] != "cached" for s in stages.values()),
            "diff_pairs": diff.get("pairs"), "diff_kept": diff.get("accepted"),
            "diff_kept_share": round(diff["accepted"] / diff["pairs"], 3) if diff.get("pairs") else None,
            "judge_iou": judged.get("judge_iou"), "seam_accuracy": judged.get("seam_accuracy"),
            "test_iou_real_only": None if pd.isna(real) else round(float(real), 4),
            "test_iou_diff_only": None if pd.isna(diff_only) else round(float(diff_only), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized: exercises the code without a GPU")
    parser.add_argument("--max-batch", type=int, default=None, help="largest training batch tried (default 256; "
                        "--tiny: 4)")
    parser.add_argument("--study", type=Path, default=None, help="a `gpu` run folder to summarise")
    parser.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    # the paper's UNet and settings; bf16 autocast where the device has it (the authors trained in fp16)
    cfg = load_config("paper", ["run.progress=false", "ddpm.mixed_precision=auto",
                                *(TINY + ["run.device=cpu"] if args.tiny else [])])
    device = resolve_device(cfg.run.device)
    max_batch = args.max_batch or (4 if args.tiny else 256)
    precision = resolve_mixed_precision(cfg.ddpm.mixed_precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    record = {"benchmark": "gpu", "tiny": args.tiny, "machine": machine(), "device": str(device)}
    peak = matmul_peak(device, dtype, 512 if args.tiny else 8192)      # in the precision the trainer computes in
    record["matmul_peak"] = {"dtype": str(dtype).removeprefix("torch."), "tflops": round(peak / 1e12, 3)}
    flops, n_params = train_flops_per_image(cfg, device)
    train, stopped = largest_batch(cfg, max_batch)
    if not train:
        raise SystemExit(f"bench_gpu: not even batch 1 of the paper-size trainer fits on {device} ({stopped})")
    for row in train:
        row["mfu"] = round(flops * row["images_per_s"] / peak, 4)
    record["trainer"] = {"model": "paper profile UNet" + (" (widths / 16)" if args.tiny else ""),
                         "parameters": n_params, "resolution": cfg.data.resolution, "variance": cfg.ddpm.variance,
                         "precision": precision,
                         "train_flops_per_image": flops, "batches": train, "search_stopped": stopped}
    record["forward"] = forward_throughput(cfg, max_batch * 4)
    record["paper_profile"] = paper_hours(cfg, train, record["forward"])
    if args.study:
        record["gpu_study"] = study_summary(args.study)
    record["seconds"] = round(time.perf_counter() - started, 1)
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
