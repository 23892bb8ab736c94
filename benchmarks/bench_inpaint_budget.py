"""Labelled pairs at a tenth of the authors' UNet calls: the inpainting samplers' quality against cost.

The authors' RePaint walks 960 UNet calls per pair (200 respaced steps, jumps of 10 resampled 5
times). This benchmark redraws the same training sources with the same seeds and the same model
(the course's Full model) with every point of ``sampling.budget_study`` (the authors' 960, about
200, two samplers at <= 96 and two at <= 50 calls; ``polyplib.config.BudgetStudySection``) and
records stage 04's table (``polyplib.metrics.budget``): KID of the redrawn regions with 95 %
bootstrap intervals, the paired difference to the 960-call schedule, FID, MS-SSIM, mask sanity and
seconds per pair, plus the cheapest point indistinguishable from the authors' schedule.

The 960-call point costs about 2.5 h for 291 pairs on 2 CPU cores and seconds on a GPU, so the
two halves can run on different machines:

    python benchmarks/bench_inpaint_budget.py --run-dir RUN --phase sample   # on the GPU machine
    python benchmarks/bench_inpaint_budget.py --run-dir RUN --phase score    # anywhere: Inception, KID, record

``RUN`` is a course run with stages 01-02 done (default: made here, Full model only). Seconds per
pair are the sampling machine's, at the batch size given (``--batch``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, machine, write_record  # noqa: E402

from polyplib.runs import open_run  # noqa: E402

COMMON = ["ddpm.train_clusters=false", "sampling.model=full", "sampling.also_full=false",
          "sampling.style.guided=false", "sampling.style.mkl_only=false", "sampling.n_unconditional=0"]


def prepare(profile: str, folder: Path) -> None:
    """Stages 01-02 (data and the Full model) of a fresh run, through run_all.py."""
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--profile", profile, "--run-dir", str(folder), "--quiet",
           "--figures-dir", str(folder.parent / f"{folder.name}-figures"),
           *[f"--set={o}" for o in COMMON], "--only", "01", "--only", "02"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="course")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-inpaint-budget"))
    parser.add_argument("--pairs", type=int, default=1000, help="sources (one pair each; at most all training sources)")
    parser.add_argument("--batch", type=int, default=32, help="pairs per UNet batch (sampling.batch_size)")
    parser.add_argument("--phase", choices=["all", "sample", "score"], default="all")
    parser.add_argument("--set", action="append", default=[], help="more configuration overrides")
    parser.add_argument("--out", default=str(RESULTS / "inpaint_budget.json"))
    args = parser.parse_args()
    folder = Path(args.run_dir)
    if not (folder / "models" / "ddpm" / "full" / "unet").is_dir():
        prepare(args.profile, folder)
    overrides = [*COMMON, f"sampling.budget_study.pairs={args.pairs}", f"sampling.batch_size={args.batch}", *args.set]
    run = open_run(args.profile, overrides, run_dir=folder)
    from polyplib.sampling.stage import budget_points, sample_methods

    if args.phase in ("all", "sample"):
        info = machine()
        for summary in sample_methods(run, list(budget_points(run.cfg))):
            print(summary["method"], summary["nfe_per_pair"], "calls,", summary["seconds_per_pair"], "s/pair", flush=True)
        write_record(folder / "budget_sampling_machine.json", info)
    if args.phase == "sample":
        return 0
    import json

    from polyplib.features.inception import InceptionFeatures
    from polyplib.features.inception_weights import resolve_fid_weights
    from polyplib.metrics.budget import cheapest_indistinguishable, budget_table

    m = run.cfg.metrics
    table = budget_table(run, InceptionFeatures(resolve_fid_weights(m.fid_weights, m.cache_dir), device=run.cfg.run.device,
                                                resize=m.fid_resize))
    rows = table.to_dict("records")
    reference = rows[0]
    fast = [r for r in rows if r["unet_calls"] <= 96 and r["interval_overlaps_reference"]]
    sampled_on = folder / "budget_sampling_machine.json"
    record = {"benchmark": "inpaint_budget", "profile": args.profile, "overrides": overrides,
              "sampling_machine": json.loads(sampled_on.read_text()) if sampled_on.exists() else None,
              "scoring_machine": machine(), "points": rows,
              "cheapest_indistinguishable": cheapest_indistinguishable(table),
              "at_most_96_calls_overlapping_the_reference": [
                  {"method": r["method"], "unet_calls": r["unet_calls"], "speedup": r["speedup"],
                   "seconds_per_pair": r["seconds_per_pair"]} for r in fast],
              "reference": {"method": reference["method"], "unet_calls": reference["unet_calls"],
                            "seconds_per_pair": reference["seconds_per_pair"]},
              "note": "KID of region crops (the dilated real mask's square, padded) against the same crops of the real "
                      "sources; 95 % bootstrap intervals over sources, the difference paired. Seconds per pair: the "
                      "sampling machine's wall clock per batch / batch size."}
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
