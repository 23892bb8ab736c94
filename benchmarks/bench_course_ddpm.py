"""Does the course-size DDPM draw polyps a segmenter can learn from? The authors' settings against the course's.

At the course's scale (1.1 M parameters, 900 steps of batch 8 on 2 CPU cores) the authors' choices
draw regions that no real polyp looks like (#18): the learned-variance head is still untrained and
adds a multicoloured grain, and RePaint from pure noise mostly fills the hole with background. The
course profile therefore trains a fixed variance at a higher learning rate and starts RePaint from
the forward-noised real pair (its YAML says why; the report lists all three as differences).

This benchmark runs the study's own stages 01-04 (the notebooks, via ``run_all.py``) once per variant,
each in its own run folder, with the Full model only (no clusters, styling or unconditional sets), and
records what stage 04 measured on the redrawn training pairs: the seam check (how well a classifier
tells a generated polyp region from a real one; 0.5 = indistinguishable) and label fidelity (the IoU
of a real-only segmenter's prediction with the generated mask; the real test images are the
reference), both with 95 % intervals, plus accepted pairs and FID/KID. Usage (about 11 min per
variant on 2 CPU cores):

    python benchmarks/bench_course_ddpm.py                       # the authors' settings and the course's
    python benchmarks/bench_course_ddpm.py --variant authors --variant fixed-noise
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

# only what the comparison needs: the Full model and its RePaint set
COMMON = ["ddpm.train_clusters=false", "sampling.model=full", "sampling.also_full=false",
          "sampling.style.guided=false", "sampling.style.mkl_only=false", "sampling.n_unconditional=0"]
#: name -> overrides of the course profile (the course itself: none)
VARIANTS = {
    "authors": ["ddpm.variance=learned_range", "ddpm.learning_rate=5e-4", "sampling.start=noise"],
    "course": [],
    "fixed-noise": ["sampling.start=noise"],
    "learned-sdedit": ["ddpm.variance=learned_range"],
    "min-snr": ["ddpm.snr_gamma=5", "sampling.start=noise"],
}
METHOD = "full-diff"


def run_study(profile: str, folder: Path, overrides: list[str]) -> float:
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--profile", profile, "--run-dir", str(folder),
           "--figures-dir", str(folder.parent / f"{folder.name}-figures"), "--quiet",
           *[f"--set={o}" for o in COMMON + overrides]] + [a for s in ("01", "02", "03", "04") for a in ("--only", s)]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def collect(folder: Path) -> dict:
    fidelity = {r["method"]: r for r in json.loads((folder / "metrics" / "fidelity.json").read_text())["fidelity"]}
    sampling = {m["method"]: m for m in json.loads((folder / "synthetic" / "summary.json").read_text())["methods"]}
    fid = pd.read_csv(folder / "results" / "04_fid.csv").set_index("method")
    train = pd.read_csv(folder / "models" / "ddpm" / "summary.csv").set_index("model").loc["full"]
    row, s = fidelity.get(METHOD, {}), sampling[METHOD]
    keep = ("n_pairs", "judge_status", "judge_iou", "judge_iou_lo", "judge_iou_hi", "seam_regions", "seam_status",
            "seam_accuracy", "seam_lo", "seam_hi", "seam_auc")
    return {**{k: row.get(k) for k in keep},
            "judge_iou_real_test": fidelity["real-test"]["judge_iou"],
            "pairs": s["pairs"], "accepted": s["accepted"], "rejected": s["rejected"], "nfe_per_pair": s["nfe_per_pair"],
            "fid": fid.loc[METHOD].get("fid_mean"), "kid": fid.loc[METHOD].get("kid_mean"),
            "fid_status": fid.loc[METHOD].get("status"),
            "train_seconds": float(train["seconds"]), "final_loss": float(train["final_loss"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="course")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="default: authors and course")
    parser.add_argument("--root", default=str(ROOT / "runs" / "bench-course-ddpm"), help="one run folder per variant")
    parser.add_argument("--out", default=str(RESULTS / "course_ddpm.json"))
    args = parser.parse_args()
    names = args.variant or ["authors", "course"]
    record = {"benchmark": "course_ddpm", "profile": args.profile, "common_overrides": COMMON,
              "machine": machine(), "variants": {}}
    for name in names:
        folder = Path(args.root) / name
        seconds = run_study(args.profile, folder, VARIANTS[name])
        record["variants"][name] = {"overrides": VARIANTS[name], **collect(folder), "study_seconds": round(seconds, 1)}
        print(name, json.dumps(record["variants"][name]), flush=True)
    record["note"] = ("same data, seeds, steps and frames; stage 04's seam check and label fidelity of the Full model's "
                      "RePaint pairs (one per training image). Seam accuracy: 5-fold CV on equal classes against the real "
                      "training regions, Wilson 95 % interval; judge IoU: bootstrap 95 % interval.")
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
