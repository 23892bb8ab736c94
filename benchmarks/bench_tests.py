"""Wall time of the README's test command, and of CI's whole script, from a fresh clone.

    python benchmarks/bench_tests.py          # `python -m pytest` in a fresh clone of HEAD (goal: 10 min)
    python benchmarks/bench_tests.py --ci     # `bash .ci/run` in a fresh clone of HEAD (goal: 30 min)

The clone is of the committed HEAD (commit first), in a temporary folder, so nothing of this working
tree but its history is used; it runs with the packages this machine has (what `pip install -e
".[test]"` would find installed) and PYTHONPATH set to the clone, so the clone's code is what runs.
Records ``results/tests.json`` (or ``results/ci.json``): total seconds, the passed/failed counts from
pytest's closing lines, and the slowest tests.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import RESULTS, machine, write_record

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"=+ (.*(?:passed|failed).*) in ([\d.]+)s")
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", re.M)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="run .ci/run (install, tests, slow tests), not only pytest")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    host = machine()
    with tempfile.TemporaryDirectory(prefix="bench_tests_") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONUNBUFFERED": "1"}
        if args.ci:
            cmd, env["CI"] = ["bash", ".ci/run"], "true"
        else:
            cmd = [sys.executable, "-m", "pytest"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
    if args.ci:   # .ci/run installed the clone in editable mode: point the install back at this checkout
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    out = proc.stdout
    sys.stdout.write(out)
    summaries = [{"result": m[1], "pytest_seconds": float(m[2])} for m in SUMMARY.finditer(out)]
    slowest = sorted(((float(s), phase, test) for s, phase, test in DURATION.findall(out)), reverse=True)[:15]
    record = {
        "benchmark": "CI script from a fresh clone" if args.ci else "README test command from a fresh clone",
        "command": " ".join(cmd), "machine": host, "returncode": proc.returncode,
        "wall_s": round(seconds, 1), "wall_min": round(seconds / 60, 1),
        "goal_min": 30 if args.ci else 10, "pytest_runs": summaries,
        "slowest": [{"seconds": s, "phase": p, "test": t} for s, p, t in slowest],
        "note": "packages already installed on this machine (pip finds them); the clone's code runs",
    }
    write_record(args.out or RESULTS / ("ci.json" if args.ci else "tests.json"), record)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
