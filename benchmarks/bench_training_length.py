"""When does the authors' method start to work? The course's Full model with the authors' settings, trained longer.

At 900 steps on 2 CPU cores the authors' settings (learned sigma with the hybrid loss, learning rate 5e-4,
RePaint from pure noise) fill most redrawn regions with background (`course_ddpm.json`), so the course
departs from them in three settings. This benchmark trains the same Full model with the authors' settings
for longer (900 and 2,700 steps by default, 8,100 where an hour or two more is available) and scores each
with the study's own stages 01-04 (``bench_course_ddpm.run_study``): how many of the 291 redrawn regions keep
a mask, label fidelity (a real-only segmenter's IoU with the generated mask) and the seam check (how well a
classifier tells a generated polyp region from a real one; 0.5 = indistinguishable), each with its 95 %
interval. Everything else is the course's: data, seeds, batch 8, 25-step RePaint with 5 x 2 jumps.

The record is rewritten after every length, so a stopped run keeps the lengths it finished, and a rerun
serves finished lengths from their run folders' caches. Usage (about 30 min for 900 steps and 12 min more
per further 900 on 2 CPU cores):

    python benchmarks/bench_training_length.py                         # 900 and 2,700 steps
    python benchmarks/bench_training_length.py --steps 900 --steps 2700 --steps 8100
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_course_ddpm import COMMON, VARIANTS, collect, run_study  # noqa: E402
from record import RESULTS, machine, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUTHORS = VARIANTS["authors"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="course")
    parser.add_argument("--steps", type=int, action="append", help="training steps (default: 900 and 2700)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for every length (a test shrinks the course with them)")
    parser.add_argument("--root", default=str(ROOT / "runs" / "bench-training-length"), help="one run folder per length")
    parser.add_argument("--out", default=str(RESULTS / "training_length.json"))
    args = parser.parse_args()
    lengths = sorted(set(args.steps or [900, 2700]))
    record = {"benchmark": "training_length", "profile": args.profile, "authors_settings": AUTHORS,
              "common_overrides": COMMON + args.extra, "machine": machine(), "lengths": {},
              "note": ("the course's Full model with the authors' settings, trained for each length (the checkpoint and "
                       "sample cadence of the profile unchanged), its RePaint pairs from pure noise scored by stage 04: "
                       "accepted = redrawn regions that keep a mask; judge IoU: bootstrap 95 % interval; seam accuracy: "
                       "5-fold CV on equal classes against the real training regions, Wilson 95 % interval. The course's "
                       "own settings at 900 steps, for comparison: course_ddpm.json")}
    for steps in lengths:
        overrides = [*AUTHORS, f"ddpm.max_steps={steps}", *args.extra]
        folder = Path(args.root) / f"steps-{steps}"
        seconds = run_study(args.profile, folder, overrides)
        record["lengths"][str(steps)] = {"overrides": overrides, **collect(folder), "study_seconds": round(seconds, 1)}
        print(steps, json.dumps(record["lengths"][str(steps)]), flush=True)
        write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
