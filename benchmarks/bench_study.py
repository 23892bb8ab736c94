"""Whole-study wall time and peak memory of one profile, run end to end from an empty run folder.

    python benchmarks/bench_study.py --profile course      # about 45 min on 2 CPU cores
    python benchmarks/bench_study.py --profile smoke       # about 5 min

Runs ``run_all.py`` as a user does (a fresh run folder under a temporary directory, or ``--run-dir``),
then records per-stage seconds (from the run's run_meta.json), total wall time, the peak resident
memory of the largest process (the notebook kernels and run_all; Linux ``ru_maxrss`` of the
children), each notebook's slowest cells, and the machine's load average before and after, in
``results/study_<profile>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import RESULTS, machine, write_record

ROOT = Path(__file__).resolve().parent.parent


def key_results(run_dir: Path) -> dict:
    """The run's headline numbers (FID per set, test IoU/Dice per segmentation configuration), so the
    record says what the timed run produced, not only how long it took."""
    import pandas as pd

    out = {}
    fid, seg = run_dir / "results" / "04_fid.csv", run_dir / "results" / "06_segmentation.csv"
    if fid.exists():
        df = pd.read_csv(fid)
        out["fid"] = {m: round(float(v), 2) for m, v in zip(df["method"], df["fid_mean"]) if pd.notna(v)}
    if seg.exists():
        df = pd.read_csv(seg)
        out["segmentation_test_iou"] = {n: round(float(v), 4) for n, v in zip(df["name"], df["iou"])}
    for name in ("fidelity", "fidelity_gan"):   # label fidelity and the seam check (stages 04 and 05)
        path = run_dir / "metrics" / f"{name}.json"
        if path.exists():
            out[name] = {r["method"]: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                       if k.startswith(("judge_iou", "seam_", "n_pairs"))}
                         for r in json.loads(path.read_text())["fidelity"]}
    return out


def slowest_cells(run_dir: Path, n: int = 3) -> dict[str, list[dict]]:
    """Per executed notebook, its ``n`` slowest cells (papermill's per-cell seconds) and what they call:
    where a stage's time goes."""
    out = {}
    for path in sorted((run_dir / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        timed = []
        for index, cell in enumerate(cells):
            seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            calls = [line.strip() for line in source.splitlines()
                     if line.strip() and not line.lstrip().startswith(("#", "import ", "from "))]
            if seconds is not None and calls:
                timed.append({"cell": index, "seconds": round(seconds, 1), "code": calls[0][:100]})
        out[path.name] = sorted(timed, key=lambda c: -c["seconds"])[:n]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="course")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--run-dir", default=None, help="run folder (default: a new temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="default: results/study_<profile>.json")
    args = ap.parse_args(argv)
    host = machine()
    with tempfile.TemporaryDirectory(prefix=f"bench_study_{args.profile}_") as tmp:
        run_dir = Path(args.run_dir or Path(tmp) / "run")
        cmd = [sys.executable, str(ROOT / "run_all.py"), "--profile", args.profile, "--run-dir", str(run_dir),
               "--figures-dir", str(Path(tmp) / "figures")]
        for o in args.overrides:
            cmd += ["--set", o]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT)
        seconds = time.perf_counter() - start
        meta = json.loads((run_dir / "run_meta.json").read_text())
        results = key_results(run_dir)
        cells = slowest_cells(run_dir)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    record = {
        "benchmark": f"whole study, profile {args.profile}", "command": " ".join(cmd[1:]),
        "machine": host, "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "returncode": proc.returncode, "wall_s": round(seconds, 1), "wall_min": round(seconds / 60, 1),
        "peak_rss_mib_largest_process": round(peak_kib / 1024, 1),
        "stages": [{"stage": s["stage"], "notebook": s["notebook"], "status": s["status"],
                    "seconds": s["seconds"]} for s in meta["stages"]],
        "slowest_cells": cells,
        "key_results": results,
        "note": "per-stage seconds include kernel start-up (~2 s); on a shared machine compare with the load average",
    }
    write_record(args.out or RESULTS / f"study_{args.profile}.json", record)
    for s in record["stages"]:
        print(f"  {s['stage']} {s['notebook']:<28} {s['seconds'] / 60:6.1f} min")
    print(f"  total {record['wall_min']} min, peak RSS {record['peak_rss_mib_largest_process']} MiB")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
