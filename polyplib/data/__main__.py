"""Command line for the real data: ``python -m polyplib.data {download,verify,layout} ...``.

Why: getting and checking the data is the first thing a user does, often on a machine without
a notebook. Exit codes are script-friendly: 0 ok, 1 verification found problems, 2 error
(printed as one ``error: ...`` line, no traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from polyplib.errors import PolypError

from .download import DOWNLOADS, download, verify
from .loaders import LAYOUTS, find_pairs


def _default_dest() -> Path:
    return Path(os.environ.get("POLYP_DATA") or "data")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m polyplib.data", description="Download, verify and inspect the real polyp data sets."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="download, unpack and verify a data set")
    p.add_argument("name", choices=sorted(DOWNLOADS))
    p.add_argument("--dest", type=Path, default=None, help="target folder (default: $POLYP_DATA or ./data)")
    p.add_argument("--url", default=None, help="alternative URL (mirror) for the zip")
    p.add_argument("--timeout", type=float, default=30, help="network timeout in seconds (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("verify", help="check a data-set folder against its SHA-256 manifest")
    p.add_argument("folder", type=Path)
    p.add_argument("--manifest", type=Path, default=None, help="CSV path,sha256,bytes (default: Kvasir-SEG)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("layout", help="print the detected folder layout and the number of pairs")
    p.add_argument("folder", type=Path)
    p.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "download":
        dest = args.dest if args.dest is not None else _default_dest()
        folder = download(args.name, dest, url=args.url, timeout=args.timeout, progress=not args.quiet)
        print(f"{args.name}: ready and verified in {folder}")
        return 0
    if args.command == "verify":
        report = verify(args.folder, args.manifest, progress=not args.quiet)
        print(report.summary())
        problems = report.problems(10)
        n_all = len(report.problems(None))
        if problems:
            print(f"problems (first {len(problems)} of {n_all}):" if n_all > len(problems) else "problems:")
            for line in problems:
                print(f"  {line}")
        return 0 if report.ok else 1
    if args.command == "layout":
        pairs = find_pairs(args.folder, args.layout)
        print(f"layout: {pairs[0].dataset}")
        print(f"pairs: {len(pairs)}")
        subsets = Counter(p.subset for p in pairs if p.subset)
        for name, n in sorted(subsets.items()):
            print(f"  {name}: {n}")
        return 0
    raise AssertionError(args.command)  # argparse guarantees one of the above


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting (testable)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2); argparse has printed why
        return int(exc.code or 0)
    try:
        return _run(args)
    except (PolypError, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
