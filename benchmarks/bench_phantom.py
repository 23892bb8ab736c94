"""Time write_phantom: 1000 frames of domain A at ~256 px (scale 0.7) and of domain B (288x384).

Goal: each set generated and written in < 60 s on one core (workers=1). Usage:
    python benchmarks/bench_phantom.py [--n 1000] [--out benchmarks/results/phantom.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polyplib.data.phantom import write_phantom  # noqa: E402
from record import machine, write_record  # noqa: E402

GOAL_S = 60.0
CASES = (("A", 0.7), ("B", 1.0))        # A: frames 210-294 x 240-380 px; B: native 288x384




def run_case(domain: str, scale: float, n: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench_phantom_{domain}_") as tmp:
        start = time.perf_counter()
        write_phantom(Path(tmp) / domain, domain, n, seed=seed, scale=scale, workers=1, progress=False)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    return {"domain": domain, "scale": scale, "n": n, "workers": 1, "seconds": round(seconds, 3),
            "frames_per_s": round(n / seconds, 1), "bytes_written": size, "goal_s": GOAL_S,
            "pass": seconds < GOAL_S * n / 1000}




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="frames per domain (goal scales linearly)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "phantom.json")
    args = ap.parse_args(argv)
    results = []
    for domain, scale in CASES:
        r = run_case(domain, scale, args.n, args.seed)
        print(f"domain {domain} scale {scale}: {r['n']} frames in {r['seconds']:.1f} s = "
              f"{r['frames_per_s']:.0f} frames/s ({'PASS' if r['pass'] else 'FAIL'}, goal {GOAL_S:.0f} s / 1000)")
        results.append(r)
    record = {"benchmark": "phantom.write_phantom", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "results": results, "pass": all(r["pass"] for r in results)}
    write_record(args.out, record)
    return 0 if record["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
