"""How much do FID, KID and MS-SSIM move with the number of images? The measurement behind
``metrics.min_images``.

On the ``course`` profile's phantom (domain A, 64 px; the data a course run prepares), the real
images' FID Inception features are taken exactly as stage 04 takes them (``cached_features``, the
same cache, names and keys, so a later course run reuses them). Then, for n = 25, 50, 100, 200:

- ``pairs``: two disjoint random subsets of n real images each (the real-vs-real reference at n,
  as the ``real-halves`` row): FID here is pure small-n bias (the true value is 0), KID should be ~0;
- ``vs_reference``: n random held-out images against all the training images (the shape of a
  synthetic set's row: n images against the fixed real reference); n <= the held-out count.

Each is repeated ``--repeats`` times with seeded draws; the record holds mean, sd, min and max of FID
and KID x 1000 per n, beside the FID differences between methods that the course study recorded
(``results/study_course.json``), the differences a reader of the tables is asked to believe.

The same for MS-SSIM within a set (the same minimum applies to it): n random real
images (n = 5 ... 200), ``metrics.msssim_pairs`` seeded pairs among them, exactly as stage 04 scores a set;
the sd of that value over draws against the gaps between the paper's Table 2 values (0.01-0.05).
Usage (about 5 min on 2 CPU cores, most of it Inception features; about a minute once cached):

    python benchmarks/bench_min_images.py [--repeats 20] [--out benchmarks/results/min_images.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, machine, write_record  # noqa: E402

SIZES = (25, 50, 100, 200)


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": round(float(a.mean()), 3), "sd": round(float(a.std(ddof=1)), 3),
            "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}


def spread(train: np.ndarray, test: np.ndarray, repeats: int, kid_subset_size: int, seed: int) -> list[dict]:
    from polyplib.metrics.fid import fid_from_features, kid_from_features

    pool = np.concatenate([train, test])
    rng = np.random.default_rng(seed)
    rows = []
    for n in SIZES:
        for kind in ("pairs", "vs_reference"):
            if (kind == "pairs" and 2 * n > len(pool)) or (kind == "vs_reference" and n > len(test)):
                rows.append({"kind": kind, "n": n, "skipped": f"needs {2 * n if kind == 'pairs' else n} images"})
                continue
            fids, kids = [], []
            for _ in range(repeats):
                if kind == "pairs":
                    perm = rng.permutation(len(pool))
                    a, b = pool[perm[:n]], pool[perm[n:2 * n]]
                else:
                    a, b = test[rng.choice(len(test), n, replace=False)], train
                fids.append(fid_from_features(a, b))
                kids.append(1000 * kid_from_features(a, b, kid_subset_size, 100, int(rng.integers(1 << 31)))["kid_mean"])
            rows.append({"kind": kind, "n": n, "n_reference": n if kind == "pairs" else len(train), "repeats": repeats,
                         "fid": _stats(fids), "kid_x1000": _stats(kids)})
            print(f"{kind:13s} n={n:4d}: FID {rows[-1]['fid']}  KIDx1000 {rows[-1]['kid_x1000']}", flush=True)
    return rows


MSSSIM_SIZES = (5, 10, 25, 50, 100, 200)


def msssim_spread(images: np.ndarray, repeats: int, n_pairs: int, seed: int) -> list[dict]:
    """MS-SSIM within n random images (``n_pairs`` seeded pairs, as stage 04 scores one set), ``repeats``
    draws per n: its mean (the small-n bias) and sd (what a table of single sets can resolve)."""
    from polyplib.metrics.msssim import msssim_pairs

    rng = np.random.default_rng(seed)
    rows = []
    for n in MSSSIM_SIZES:
        if n > len(images):
            rows.append({"n": n, "skipped": f"needs {n} images"})
            continue
        values = [float(msssim_pairs(images[rng.choice(len(images), n, replace=False)], n_pairs,
                                     int(rng.integers(1 << 31)))[0].mean()) for _ in range(repeats)]
        rows.append({"n": n, "pairs": n_pairs, "repeats": repeats, "msssim": _stats(values)})
        print(f"MS-SSIM       n={n:4d}: {rows[-1]['msssim']}", flush=True)
    return rows


def paper_msssim_gaps() -> dict:
    """The paper's Table 2 values and their pairwise gaps: what a reader is asked to tell apart."""
    from polyplib import paper

    values = {k: f.value for k, f in paper.MSSSIM.items()}
    gaps = [abs(a - b) for a, b in itertools.combinations(values.values(), 2)]
    return {"values": values, "smallest_gap": round(min(gaps), 4), "largest_gap": round(max(gaps), 4)}


def study_differences() -> dict:
    """The FIDs the course study recorded and their pairwise differences (what the tables invite readers to compare)."""
    path = RESULTS / "study_course.json"
    if not path.exists():
        return {}
    fid = json.loads(path.read_text()).get("key_results", {}).get("fid", {})
    diffs = {f"{a} - {b}": round(fid[a] - fid[b], 2) for a, b in itertools.combinations(fid, 2)}
    return {"source": "benchmarks/results/study_course.json (key_results.fid)", "fid": fid,
            "differences": diffs, "median_abs_difference": round(float(np.median(np.abs(list(diffs.values())))), 2)
            if diffs else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--run-dir", default="", help="a run folder to prepare the course phantom in (default: temporary)")
    parser.add_argument("--out", default=str(RESULTS / "min_images.json"))
    args = parser.parse_args()
    info = machine()

    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.data.prepared import load_dataset
    from polyplib.features.inception import InceptionFeatures, cached_features
    from polyplib.features.inception_weights import resolve_fid_weights
    from polyplib.runs import open_run

    with tempfile.TemporaryDirectory(prefix="bench-min-images-") as tmp:
        run = open_run("course", ["run.progress=false", "run.device=cpu"], args.run_dir or tmp)
        start = time.perf_counter()
        prepare_data(run)
        m = run.cfg.metrics
        extractor = InceptionFeatures(resolve_fid_weights(m.fid_weights, m.cache_dir), device="cpu", resize=m.fid_resize)
        ds = load_dataset(run)
        feats = {}
        for part in ("train", "test"):
            ids = ds.ids(part)
            got = cached_features(f"{ds.name}-{part}", ids, [ds.paths(i)[0] for i in ids], extractor, m.cache_dir)
            print(f"{part}: {len(ids)} images ({'cached' if got.hit else 'extracted'}: {got.path})", flush=True)
            feats[part] = got.features
        features_s = time.perf_counter() - start
        rows = spread(feats["train"], feats["test"], args.repeats, m.kid_subset_size, m.seed)
        from polyplib.data.imageio import read_image

        pool = np.stack([read_image(ds.paths(i)[0]) for part in ("train", "test") for i in ds.ids(part)])
        msssim_rows = msssim_spread(pool, args.repeats, m.msssim_pairs, m.seed)
    record = {"benchmark": "FID / KID / MS-SSIM spread against the number of images (metrics.min_images)",
              "machine": info, "profile": "course", "data": f"{ds.name}: {len(feats['train'])} training + "
              f"{len(feats['test'])} held-out phantom frames at {run.cfg.data.resolution} px",
              "fid_resize": m.fid_resize, "kid_subset_size": m.kid_subset_size, "kid_subsets": 100,
              "seconds_data_and_features": round(features_s, 1), "results": rows,
              "study_differences": study_differences(),
              "msssim": {"setting": "metrics.min_images", "pool": len(pool), "results": msssim_rows,
                         "paper_table_2": paper_msssim_gaps(),
                         "note": "n real images drawn from the pool without replacement, msssim_pairs seeded pairs "
                                 "among them; sd over draws: how far one set's value moves by chance alone"},
              "note": "pairs: the true FID is 0, so its mean is the small-n bias; vs_reference: n held-out images "
                      "against all training images, as a synthetic set's row; KID is unbiased but its sd grows as n "
                      "falls"}
    write_record(args.out, record)


if __name__ == "__main__":
    main()
