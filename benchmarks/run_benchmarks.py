"""Run every benchmark and write one record: ``results/summary.json`` and ``results/SUMMARY.md``.

    python benchmarks/run_benchmarks.py                 # all quick ones (about 17 min on 2 cores)
    python benchmarks/run_benchmarks.py --with-study    # also the whole smoke and course studies, the
                                                        # learned-vs-fixed sigma comparison, the ways to use
                                                        # imperfect synthetic pairs and the colour study (+2.5 h)
    python benchmarks/run_benchmarks.py --with-tests    # also the test suite and CI from a fresh clone (+40 min)
    python benchmarks/run_benchmarks.py --only ddpm_train metrics

Each benchmark is its own script (run on its own too) and writes ``results/<name>.json``; this runner
runs them one after another (never in parallel: they time the same CPU), then gathers the headline
numbers (each a ratio or a rate measured within one run, with the machine and load beside it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from record import RESULTS, machine, write_record

HERE = Path(__file__).resolve().parent
QUICK = ["phantom", "ddpm_train", "cpu_layout", "sampling", "metrics", "min_images", "segmentation"]
STUDY = ["study_smoke", "study_course", "variance", "style", "synthetic_use", "colour"]
#: run on a GPU machine (its reference point is hours on a CPU); summarised whenever its record exists
GPU = ["inpaint_budget"]
#: the README's test command and CI's script, each from a fresh clone of HEAD (--with-tests)
SUITE = ["tests", "ci"]


def _command(name: str) -> list[str]:
    if name.startswith("study_"):
        return [sys.executable, str(HERE / "bench_study.py"), "--profile", name.split("_", 1)[1]]
    if name in SUITE:
        return [sys.executable, str(HERE / "bench_tests.py")] + (["--ci"] if name == "ci" else [])
    return [sys.executable, str(HERE / f"bench_{name}.py")]


def headline(name: str, rec: dict) -> list[str]:
    """The numbers a reader wants from one record, as Markdown bullet text."""
    if name == "phantom":
        return [f"phantom: {r['domain']} {r['n']} frames in {r['seconds']} s ({r['frames_per_s']} frames/s)"
                for r in rec.get("results", [])]
    if name == "ddpm_train":
        out = [f"DDPM trainer vs plain diffusers-style fp32 loop: {rec['ratio_trainer_vs_plain']}x (median step), "
               f"{rec['ratio_trainer_vs_plain_p20']}x (20th percentile); goal 2x"]
        for k, v in rec.get("speedup_vs_plain_median", {}).items():
            out.append(f"  {k}: {v}x")
        if "matmul_peak_gflops" in rec:
            out.append(f"matmul peak {rec['matmul_peak_gflops']} GFLOP/s; {rec['flops_per_train_step'] / 1e9:.1f} "
                       f"GFLOP per step; fraction of peak {rec['fraction_of_peak']}")
        return out
    if name == "cpu_layout":
        return [f"{m} training step on the CPU vs fp32 in the default layout: " + ", ".join(f"{v} {x}x" for v, x in mv.items())
                + f" (trainer uses {rec['trainers_use'][m]})" for m, mv in rec["speedup_vs_fp32_default_layout"].items()]
    if name == "sampling":
        return [f"sampling {r['method']}: {r['seconds_per_pair']} s and {r['nfe_per_pair']} UNet evaluations per pair"
                for r in rec.get("results", [])]
    if name == "metrics":
        return [f"{r['case']}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("case", "images_per_s_per_batch"))
                for r in rec.get("results", [])]
    if name == "min_images":
        return [f"{r['kind']} n={r['n']}: FID {r['fid']['mean']} ± {r['fid']['sd']}, KID x 1000 "
                f"{r['kid_x1000']['mean']} ± {r['kid_x1000']['sd']}" for r in rec.get("results", []) if "fid" in r] + \
               [f"MS-SSIM of one set, n={r['n']}: {r['msssim']['mean']} ± {r['msssim']['sd']}"
                for r in rec.get("msssim", {}).get("results", []) if "msssim" in r]
    if name == "segmentation":
        r = rec.get("results", {})
        return [f"segmentation training images/s {r.get('images_per_s')}; ratio vs plain smp loop "
                f"{r.get('ratio_polyplib_none_to_plain')} (no augmentation), {r.get('ratio_polyplib_control_to_plain')} (Control)"]
    if name == "variance":
        return [f"{r['variance']}: {r.get('method')} FID {r['fid']:.1f}, KID {r['kid']:.4f}, n = {r['n_images']}"
                + (f", {r['nfe_per_pair']:.0f} UNet calls and {r['seconds_per_pair']} s per pair, {r['accepted']} of "
                   f"{r['pairs']} pairs accepted" if "nfe_per_pair" in r else "") for r in rec.get("rows", [])]
    if name == "style":
        return [f"Styled-Diff guided pass at {r['resolution']} px: {r['seconds_per_pair']} s per styled pair "
                f"({r['seconds_per_step']} s per guided step x {rec['paper_guided_steps']}"
                f"{', extrapolated from %d steps' % r['guided_steps_measured'] if r['extrapolated'] else ''}; "
                "random weights, cost only)" for r in rec.get("results", [])]
    if name == "inpaint_budget":
        best = rec.get("cheapest_indistinguishable") or {}
        return [f"{r['method']}: {r['unet_calls']} UNet calls, {r['seconds_per_pair']:.3g} s/pair ({r['speedup']:.1f}x), KID x 1000 "
                f"{1000 * r['kid']:.2f} [{1000 * r['kid_lo']:.2f}, {1000 * r['kid_hi']:.2f}], minus the reference "
                f"{1000 * r['kid_minus_reference']:.2f} [{1000 * r['diff_lo']:.2f}, {1000 * r['diff_hi']:.2f}]"
                for r in rec.get("points", []) if r.get("status") == "ok"] + [
                f"cheapest indistinguishable from the reference: {best.get('method', 'none')}"]
    if name == "synthetic_use":
        return [f"{r['label']}: IoU {r['iou']:.3f}" + (f", ΔIoU vs real {r['diff']:+.3f} [{r['diff_lo']:+.3f}, "
                f"{r['diff_hi']:+.3f}]" if "diff" in r else "") for r in rec.get("rows", [])] + [
                f"{k}: {v}" for k, v in rec.get("must_show", {}).items()]
    if name == "colour":
        course = rec.get("course_colours")
        return [f"{name_}, step {step}: samples outside the training colours {r['samples_outside']:.2f}, "
                f"channel-mean shift passed {r['dc_gain_at_T']}" for name_, v in rec.get("variants", {}).items()
                for step, r in v["by_step"].items()] + (
               [f"course run's Full model ({course['steps']} steps): samples outside {course['samples_outside']:.2f}, "
                f"shift passed {course['dc_gain_at_T']}"] if isinstance(course, dict) else [])
    if name in SUITE:
        return [f"{rec['benchmark']}: {rec['wall_min']} min (goal {rec['goal_min']} min), exit {rec['returncode']}; "
                + "; ".join(r["result"] for r in rec.get("pytest_runs", []))]
    if name.startswith("study_"):
        return [f"{rec['benchmark']}: {rec['wall_min']} min, peak RSS {rec['peak_rss_mib_largest_process']} MiB; "
                + ", ".join(f"{s['stage']} {s['seconds'] / 60:.1f} min" for s in rec.get("stages", []))]
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help=f"names among {QUICK + STUDY + SUITE + GPU}")
    ap.add_argument("--with-study", action="store_true", help="also time the whole smoke and course studies, "
                    "run the learned-vs-fixed sigma comparison and time the Styled-Diff pass")
    ap.add_argument("--with-tests", action="store_true", help="also time the test suite and CI's script from a "
                    "fresh clone of HEAD (about 10 and 30 min)")
    ap.add_argument("--collect-only", action="store_true", help="rerun nothing; summarise the records there are")
    args = ap.parse_args(argv)
    names = args.only or (QUICK + (STUDY if args.with_study else []) + (SUITE if args.with_tests else []))
    ran = {}
    for name in [] if args.collect_only else names:
        print(f"== {name}: {' '.join(_command(name)[1:])}", flush=True)
        t0 = time.time()
        ran[name] = {"returncode": subprocess.call(_command(name)), "seconds": round(time.time() - t0, 1)}
    records = {}
    for name in QUICK + STUDY + SUITE + GPU:
        path = RESULTS / f"{name}.json"
        if path.exists():
            records[name] = json.loads(path.read_text())
    summary = {"benchmark": "summary", "machine": machine(), "ran_now": ran,
               "headlines": {name: headline(name, rec) for name, rec in records.items()},
               "records": {name: str((RESULTS / f"{name}.json").relative_to(HERE.parent)) for name in records}}
    write_record(RESULTS / "summary.json", summary)
    lines = ["# Benchmark record", "", f"Machine: {summary['machine'].get('processor')} x {summary['machine'].get('cpu_count')} "
             f"cores, load average at start {summary['machine'].get('load_average_at_start')}, "
             f"torch {summary['machine']['versions'].get('torch')}; written {summary['machine']['date']}.", "",
             "Each line comes from the record named in its heading (`benchmarks/results/<name>.json`), with the date and "
             "machine it was measured on; ratios are measured within one run.", ""]
    for name, items in summary["headlines"].items():
        rec = records[name]
        date = rec.get("date") or (rec.get("machine") or rec.get("sampling_machine") or {}).get("date", "?")
        lines += [f"## {name} ({date})", ""]
        lines += [f"- {x}" for x in items] + [""]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'SUMMARY.md'}")
    return 0 if all(r["returncode"] == 0 for r in ran.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
