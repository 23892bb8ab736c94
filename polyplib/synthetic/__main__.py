"""Command line: ``python -m polyplib.synthetic import FOLDER --name NAME [--run-dir DIR | --profile P]``.

Imports another generator's labelled pairs into a run (:mod:`polyplib.synthetic.external`): stage 04 then
measures the set beside the study's own, and ``--set segmentation.sources=[diff,NAME]`` trains on it.
Exit codes: 0 imported, 2 error (printed as one ``error: ...`` line naming the file and the problem; a run
folder that ``run_all.py`` holds is one).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..errors import PolypError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m polyplib.synthetic",
                                     description="Synthetic sets of a run: import another generator's pairs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="import a folder of image/mask pairs as a synthetic set of the run")
    p.add_argument("folder", type=Path, help="images/ + masks/, or any layout the data loaders know")
    p.add_argument("--name", required=True, help="the set's name: its folder under synthetic/ and its table row")
    p.add_argument("--label", default=None, help="display name in tables and figures (default: the name)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="CSV with file (or id), source_id[, sample_index]: the real image each pair was made from "
                        "(default: FOLDER/manifest.csv if present)")
    p.add_argument("--layout", default="auto", help="the folder's layout (default: detected)")
    p.add_argument("--profile", default=None, help="profile of the run (default: the run folder's config.yaml, "
                                                   "else smoke)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<profile>)")
    return parser


def open_target_run(profile: str | None, overrides: list[str], run_dir: str | None):
    """The run to import into: an existing run folder keeps its own configuration."""
    from ..config import load_config
    from ..runs import Run, open_run

    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if profile is None and saved is not None and saved.is_file():
        return Run(load_config(str(saved), overrides), run_dir)
    return open_run(profile or "smoke", overrides, run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from ..runlock import run_folder_lock
        from .external import import_folder

        run = open_target_run(args.profile, args.overrides, args.run_dir)
        with run_folder_lock(run.dir):      # not while run_all.py works in the folder: it reads the sets
            imported = import_folder(run, args.folder, args.name, manifest=args.manifest, layout=args.layout,
                                     label=args.label)
    except PolypError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: {len(imported)} pairs in {imported.folder}; stage 04 and later will measure it "
          f"(python run_all.py --run-dir {run.dir} --from 04); add it to segmentation.sources to train on it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
