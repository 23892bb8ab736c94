"""Do two run folders hold the same synthetic bytes and the same tables? A recorded before/after check.

Why: moving code (the synthetic-set layer of issue #29) must not change a single generated pair or a
single number. Run the smoke study with the old and the new code into two folders, then::

    python benchmarks/compare_runs.py RUN_BEFORE RUN_AFTER --out benchmarks/results/synthetic_layer_move.json

Compared: every image and mask PNG under ``synthetic/`` (SHA-256 of the file), and every ``results/*.csv``
cell, except the columns that hold wall-clock time (or what is extrapolated from it), the device or a
folder, with the run folder and measured durations inside text cells masked (they differ between any two
runs). Exit code 1 when anything differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd

#: columns that differ between two runs of the same code: timings, devices, paths
VOLATILE = re.compile(r"(second|_s$|_s_|^s$|per_unit|time|elapsed|device|path|folder|kit|key$|created|hours|_h_|_h$|"
                      r"extrapolation|formula)", re.I)
#: a measured duration inside a text cell ("3.19 s per image")
DURATION = re.compile(r"\d+(\.\d+)? s\b")


def _text(values, run: Path):
    """Cells with the run folder and measured durations masked."""
    return [DURATION.sub("<t> s", v.replace(str(run), "<run>")) for v in values]


def png_digests(run: Path) -> dict[str, str]:
    root = run / "synthetic"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def _read(path: Path) -> pd.DataFrame:
    """A results table as text (an empty table: no columns)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def table_differences(before: Path, after: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    names = sorted({p.name for p in (before / "results").glob("*.csv")} | {p.name for p in (after / "results").glob("*.csv")})
    for name in names:
        a, b = before / "results" / name, after / "results" / name
        if not (a.exists() and b.exists()):
            out[name] = [f"only in {'before' if a.exists() else 'after'}"]
            continue
        ta, tb = (_read(p) for p in (a, b))
        problems = []
        if len(ta) != len(tb):
            problems.append(f"{len(ta)} rows before, {len(tb)} after")
        for col in sorted(set(ta.columns) | set(tb.columns)):
            if VOLATILE.search(col):
                continue
            if col not in ta or col not in tb:
                problems.append(f"column {col} only {'before' if col in ta else 'after'}")
                continue
            if len(ta) == len(tb):
                va, vb = _text(ta[col], before), _text(tb[col], after)
                diff = [i for i, (x, y) in enumerate(zip(va, vb)) if x != y]
                if diff:
                    i = diff[0]
                    problems.append(f"{col}: {len(diff)} cells differ (row {i}: {va[i]!r} vs {vb[i]!r})")
        if problems:
            out[name] = problems
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    a, b = png_digests(args.before), png_digests(args.after)
    files = {"before": len(a), "after": len(b), "identical": sum(a.get(k) == v for k, v in b.items()),
             "only_before": sorted(set(a) - set(b))[:20], "only_after": sorted(set(b) - set(a))[:20],
             "different": sorted(k for k in set(a) & set(b) if a[k] != b[k])[:20]}
    tables = table_differences(args.before, args.after)
    same = files["before"] == files["after"] == files["identical"] and not tables
    record = {"what": "smoke study before and after a code move: synthetic PNG bytes and results tables",
              "before": str(args.before), "after": str(args.after), "note": args.note,
              "synthetic_png_files": files, "tables_compared": len(list((args.before / "results").glob("*.csv"))),
              "table_differences": tables, "volatile_columns_skipped": VOLATILE.pattern, "identical": same}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
