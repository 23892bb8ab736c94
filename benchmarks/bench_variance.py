"""What learned sigma buys: a learned-range and a fixed-small DDPM trained alike, RePaint pairs, FID/KID.

The authors' model learns its variance (Nichol & Dhariwal 2021: with a respaced chain of few steps
the learned variance keeps sample quality where a fixed one loses it). This benchmark runs the
study's own stages 01-04 (the notebooks, via ``run_all.py``) twice on the ``course`` profile,
changing only ``ddpm.variance``: the Full model is trained with the same data, seed and steps,
every training image is redrawn by RePaint from pure noise at the course's step count (the same
per-pair seeds), and stage 04 computes FID and KID of the ``full-diff`` set against the real
training images with the real FID Inception. Per variance it records FID, KID, the UNet calls
per pair, seconds per pair, accepted pairs and training time; the two run folders keep the
executed notebooks whose tables hold the same numbers. Usage (about 30 min on 2 CPU cores):

    python benchmarks/bench_variance.py [--profile course] [--root runs/bench-variance]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, machine, write_record  # noqa: E402

VARIANCES = ("learned_range", "fixed_small")
# only what the comparison needs: the Full model, its RePaint set, no styling, no unconditional sets
COMMON = ["ddpm.train_clusters=false", "sampling.model=full", "sampling.also_full=false", "sampling.style=none",
          "sampling.n_unconditional=0"]


def run_study(profile: str, folder: Path, variance: str, extra: list[str]) -> float:
    sets = [f"--set={o}" for o in COMMON + [f"ddpm.variance={variance}"] + extra]
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--profile", profile, "--run-dir", str(folder),
           "--figures-dir", str(folder / "figures"), *sets] + [a for s in ("01", "02", "03", "04") for a in ("--only", s)]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def collect(folder: Path, variance: str, seconds: float) -> dict:
    fid = pd.read_csv(folder / "results" / "04_fid.csv")
    row = fid[fid["method"] == "full-diff"].iloc[0].to_dict()
    sampling = json.loads((folder / "synthetic" / "summary.json").read_text())
    method = next(m for m in sampling["methods"] if m["method"] == "full-diff")
    train = pd.read_csv(folder / "models" / "ddpm" / "summary.csv").set_index("model").loc["full"]
    return {"variance": variance, "fid": row.get("fid_mean"), "kid": row.get("kid_mean"),
            "fid_status": row.get("status"), "n_images": row.get("n_images"), "n_real": row.get("n_real"),
            "nfe_per_pair": method["nfe_per_pair"], "seconds_per_pair": method["seconds_per_pair"],
            "pairs": method["pairs"], "accepted": method["accepted"], "rejected": method["rejected"],
            "train_steps": int(train["steps"]), "train_seconds": float(train["seconds"]),
            "final_loss": float(train["final_loss"]), "study_seconds": round(seconds, 1), "run_dir": str(folder)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="course")
    parser.add_argument("--root", default=str(ROOT / "runs" / "bench-variance"))
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(RESULTS / "variance.json"))
    args = parser.parse_args()
    record = {"benchmark": "variance", "profile": args.profile, "overrides": COMMON + args.extra,
              "machine": machine(), "rows": []}
    for variance in VARIANCES:
        folder = Path(args.root) / variance
        seconds = run_study(args.profile, folder, variance, args.extra)
        record["rows"].append(collect(folder, variance, seconds))
        print(json.dumps(record["rows"][-1]), flush=True)
    record["note"] = ("same data, seed, training steps and RePaint seeds; only ddpm.variance differs. FID/KID of "
                      "the full-diff set against the real training images (stage 04); the fit of a KID/FID "
                      "difference at this n is rough: compare with the real-vs-real reference row of 04_fid.")
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
