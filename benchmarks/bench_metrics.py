"""Time the stage-04 metrics on this machine: Inception features, the Fréchet distance, MS-SSIM.

- FID Inception (torch-fidelity, converted fid-helper weights) images/s, batch 16, at 64 and 256 px
  input (every image is resized to 299 px first, with the stage's default clean-fid resize, so the
  input size changes only the resize's share), in the
  channels-last (what the stage uses) and the default memory format, alternating batch by batch;
- Fréchet distance of two 100 x 2048 feature sets: the stage's low-rank formula vs torch-fidelity's
  ``fid_statistics_to_metric`` (2048 x 2048 general eigenproblem) - same value, different cost;
- MS-SSIM pairs/s at 64, 96 and 256 px with the stage's window rule.
Usage:  python benchmarks/bench_metrics.py [--images 32] [--out benchmarks/results/metrics.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polyplib.features.inception import InceptionFeatures  # noqa: E402
from polyplib.metrics.fid import fid_from_features, statistics  # noqa: E402
from polyplib.features.inception_weights import resolve_fid_weights  # noqa: E402
from polyplib.metrics.msssim import msssim_pairs  # noqa: E402
from record import machine, write_record  # noqa: E402




def bench_inception(extractor: InceptionFeatures, n: int, size: int) -> list[dict]:
    """Images/s in channels-last and default memory format, alternating batches of 16 (the machine
    is shared, so the two formats are measured under the same load), median over the batches."""
    import torch

    images = list(np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    extractor(images[:2])  # warm-up
    rates: dict[bool, list[float]] = {True: [], False: []}
    for start in range(0, n, extractor.batch_size):
        batch = images[start:start + extractor.batch_size]
        for channels_last in (True, False):
            extractor.model = extractor.model.to(memory_format=torch.channels_last if channels_last
                                                 else torch.contiguous_format)
            t = time.perf_counter()
            extractor(batch)
            rates[channels_last].append(len(batch) / (time.perf_counter() - t))
    extractor.model = extractor.model.to(memory_format=torch.channels_last)
    return [{"case": "inception_features", "input_px": size, "n": n, "batch": extractor.batch_size,
             "channels_last": cl, "images_per_s_median": round(float(np.median(r)), 2),
             "images_per_s_per_batch": [round(v, 2) for v in r]} for cl, r in rates.items()]


def bench_frechet(n: int = 100) -> list[dict]:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(0)
    a, b = rng.gamma(1.0, 0.3, (n, 2048)), rng.gamma(1.1, 0.3, (n, 2048))
    start = time.perf_counter()
    ours = fid_from_features(a, b)
    t_ours = time.perf_counter() - start
    sa, sb = statistics(a), statistics(b)
    start = time.perf_counter()
    theirs = fid_statistics_to_metric(sa, sb, verbose=False)["frechet_inception_distance"]
    t_theirs = time.perf_counter() - start
    return [{"case": "frechet_distance", "method": "low-rank (stage)", "n": n, "seconds": round(t_ours, 4),
             "fid": ours},
            {"case": "frechet_distance", "method": "torch-fidelity eigvals", "n": n, "seconds": round(t_theirs, 3),
             "fid": theirs, "relative_difference": abs(ours - theirs) / abs(theirs)}]


def bench_msssim(size: int, pairs: int) -> dict:
    images = np.random.default_rng(1).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    msssim_pairs(images, 8, seed=0)  # warm-up
    start = time.perf_counter()
    _, win = msssim_pairs(images, pairs, seed=0)
    seconds = time.perf_counter() - start
    return {"case": "msssim", "px": size, "pairs": pairs, "win_size": win["win_size"], "seconds": round(seconds, 3),
            "pairs_per_s": round(pairs / seconds, 1)}




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="images per Inception case")
    ap.add_argument("--pairs", type=int, default=256, help="pairs per MS-SSIM case")
    ap.add_argument("--cache", default=None, help="weights cache (default: metrics cache rules)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metrics.json")
    args = ap.parse_args(argv)
    host = machine()  # before the work: the load average then says how busy the machine was
    with tempfile.TemporaryDirectory() as tmp:
        weights = resolve_fid_weights(None, args.cache or os.environ.get("POLYP_CACHE") or tmp)
        extractor = InceptionFeatures(weights, device="cpu", batch_size=16)
        results = bench_inception(extractor, args.images, 64) + bench_inception(extractor, args.images, 256)
    results += bench_frechet()
    results += [bench_msssim(size, args.pairs) for size in (64, 96, 256)]
    for r in results:
        print(json.dumps(r))
    record = {"benchmark": "metrics (stage 04)", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": host, "results": results,
              "note": "2 shared CPU cores; other jobs ran at the same time, so timings are noisy"}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
