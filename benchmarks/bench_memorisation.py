"""Does the memorisation check find near-copies, and only them? And how many does the course's Diff set hold?

1. Phantom frames (domain A, 64 px): a set made of training frames with small perturbations (a flip, Gaussian
   noise of 3 grey levels, JPEG at quality 75) and the held-out test frames that show a polyp, scored by the study's
   verdict (``memorised``: the polyp region closer to a training image than the 1st percentile of the training
   images' distances to each other) and by each measure alone.
2. With ``--course RUN_DIR`` (a run whose stage 03 is done, e.g. ``runs/course``): stage 04's memorisation table of
   that run's sets, as notebook 04 shows it.

    python benchmarks/bench_memorisation.py [--train 300 --test 150] [--course runs/course]

Writes ``benchmarks/results/memorisation.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from record import RESULTS, machine, write_record  # noqa: E402

SIZE = 64


def frames(indices):
    from polyplib.data.phantom import render_pairs

    return render_pairs("A", 7, indices, SIZE)


def perturbed(images, masks, seed):
    """Each frame flipped (left-right or up-down), noised (sigma 3) and saved as JPEG 75."""
    rng = np.random.default_rng(seed)
    out_i, out_m = [], []
    for img, mask in zip(images, masks):
        flip = (slice(None), slice(None, None, -1)) if rng.random() < 0.5 else (slice(None, None, -1), slice(None))
        img, mask = img[flip], mask[flip]
        img = np.clip(img + rng.normal(0, 3, img.shape) + 0.5, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 75])
        out_i.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
        out_m.append(mask)
    return np.stack(out_i), np.stack(out_m)


def phantom_check(n_train: int, n_test: int, extractor) -> dict:
    from polyplib.synthetic import memorisation as mem

    train_x, train_m = frames(range(n_train))
    test_x, test_m = frames(range(10_000, 10_000 + n_test))
    polyp = test_m.reshape(len(test_m), -1).any(axis=1)          # a frame without a polyp has no region to copy
    test_x, test_m = test_x[polyp], test_m[polyp]
    copies_x, copies_m = perturbed(train_x[: n_test], train_m[: n_test], seed=0)
    region = mem.region_reference(train_x, train_m)
    inception = mem.Reference(extractor(list(train_x)), np.arange(n_train)).with_threshold()
    out = {"train_frames": n_train, "test_frames": n_test, "size_px": SIZE,
           "thresholds": {"region_grey_levels": round(region.threshold * 255, 2), "inception": inception.threshold}}
    for name, (x, m) in {"perturbed_training_frames": (copies_x, copies_m), "held_out_test_frames": (test_x, test_m)}.items():
        table = mem.copy_check({"region": mem.Measure(mem.region_descriptors(x, m), region),
                                "inception": mem.Measure(extractor(list(x)), inception)})
        verdict = mem.verdicts(table)
        out[name] = {"pairs": len(x), "memorised_share": float(verdict["memorised"].mean()),
                     "inception_near_train_share": float(table["inception_near_train"].mean()),
                     "median_region_distance_grey_levels": round(float(np.median(table["region_train_dist"])) * 255, 2)}
    return out


def course_table(run_dir: Path, extractor) -> list[dict]:
    from polyplib.config import load_config
    from polyplib.metrics.copies import memorisation_table
    from polyplib.metrics.stage import discover_sets
    from polyplib.runs import Run
    from polyplib.synthetic.catalogue import UNCONDITIONAL

    run = Run(load_config(str(run_dir / "config.yaml")), run_dir)
    sets = {k: v for k, v in discover_sets(run, run.cfg.metrics.fid_sets).items()
            if v.status == "ok" and not UNCONDITIONAL.match(k)}
    table = memorisation_table(run, extractor, sets)
    return table.to_dict("records")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--course", type=Path, default=None, help="a run folder whose stage 03 is done")
    parser.add_argument("--out", type=Path, default=RESULTS / "memorisation.json")
    args = parser.parse_args()

    import torch

    from polyplib.features.inception import InceptionFeatures
    from polyplib.features.inception_weights import resolve_fid_weights

    torch.set_num_threads(2)
    record = {"machine": machine(), "what": __doc__.split("\n\n")[0]}
    extractor = InceptionFeatures(resolve_fid_weights(None, None), device="cpu")
    t0 = time.time()
    record["phantom"] = phantom_check(args.train, args.test, extractor)
    record["phantom"]["seconds"] = round(time.time() - t0, 1)
    if args.course:
        t0 = time.time()
        record["course"] = {"run": str(args.course), "table": course_table(args.course, extractor),
                            "seconds": round(time.time() - t0, 1)}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
