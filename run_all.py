#!/usr/bin/env python
"""Run the study: execute the notebooks in order with papermill, for one profile.

    python run_all.py --profile smoke                 # the whole study on the embedded phantom
    python run_all.py --profile paper --set data.root=/data/polyps
    python run_all.py --list                          # stages, notebooks, cached or not
    python run_all.py --only 03 | --from 04 | --force

Executed notebooks, artefacts, tables and run_meta.json go to runs/<profile>/. A stage whose
configuration is unchanged is served from its cache (the notebook still runs and shows it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the study never downloads weights from a hub

from polyplib import differences  # noqa: E402
from polyplib.config import load_config, profiles  # noqa: E402
from polyplib.errors import ConfigError, PolypError  # noqa: E402
from polyplib.runs import PROJECT_ROOT, Run, atomic_write_json, device_info, git_state, package_versions  # noqa: E402
from polyplib.report import write_report  # noqa: E402
from polyplib.sampling.feature_nets import missing_reason  # noqa: E402
from polyplib.stages import STAGES, Stage  # noqa: E402

NOTEBOOKS = PROJECT_ROOT / "notebooks"
KERNEL = "python3"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke", help=f"one of {', '.join(profiles())}, or a YAML path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a configuration value, e.g. --set data.resolution=128 (repeatable)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--only", action="append", metavar="NN", help="run only this stage (repeatable)")
    group.add_argument("--from", dest="start", metavar="NN", help="run this stage and every later one")
    ap.add_argument("--force", action="store_true", help="recompute the selected stages even if cached")
    ap.add_argument("--list", action="store_true", help="list the stages and their cache state, run nothing")
    ap.add_argument("--run-dir", help="run folder (default runs/<profile>, or $POLYP_RUNS/<profile>)")
    ap.add_argument("--figures-dir", help="where final figures are copied (default figures/<profile>)")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default python3)")
    return ap.parse_args(argv)


def select(stages: tuple[Stage, ...], only: list[str] | None, start: str | None) -> list[Stage]:
    ids = {s.id: s for s in stages} | {s.name: s for s in stages}
    wanted = (only or []) + ([start] if start else [])
    for key in wanted:
        if key.zfill(2) not in ids and key not in ids:
            raise ConfigError(f"unknown stage '{key}'; available: {', '.join(s.id + ' ' + s.name for s in stages)}")
    pick = lambda k: ids.get(k.zfill(2)) or ids[k]  # noqa: E731
    if only:
        chosen = {pick(k).id for k in only}
        return [s for s in stages if s.id in chosen]
    if start:
        return [s for s in stages if s.id >= pick(start).id]
    return list(stages)


def execute(stage: Stage, run: Run, args: argparse.Namespace) -> None:
    """Run one notebook with papermill; on failure name the notebook and cell, keep the copy."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = NOTEBOOKS / stage.notebook
    target = run.path("notebooks", stage.notebook)
    target.parent.mkdir(parents=True, exist_ok=True)
    params = {"profile": args.profile, "overrides": list(args.overrides), "run_dir": str(run.dir),
              "force": bool(args.force)}
    try:
        pm.execute_notebook(
            str(source), str(target), parameters=params, kernel_name=args.kernel,
            cwd=str(NOTEBOOKS), execution_timeout=run.cfg.run.notebook_timeout_s,
            progress_bar=False, request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as exc:
        raise StageFailed(
            f"notebook {source.relative_to(PROJECT_ROOT)} failed in cell {exc.cell_index} "
            f"(execution count {exc.exec_count}): {exc.ename}: {exc.evalue}\n"
            f"  partially executed copy kept at {target}"
        ) from None


class StageFailed(RuntimeError):
    pass


def copy_figures(run: Run, dest: Path) -> int:
    """Copy the run's final figures (PNG and SVG) to ``dest`` (figures/<profile>/ by default)."""
    source = run.path("figures")
    if not source.is_dir() or dest.resolve() == source.resolve():   # --figures-dir may be the run's own folder
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(source.iterdir()):
        if f.suffix in (".png", ".svg"):
            shutil.copy2(f, dest / f.name)
            n += 1
    return n


def print_table(rows: list[dict]) -> None:
    print("\n stage  notebook                       status     seconds")
    for r in rows:
        print(f" {r['stage']:<6} {r['notebook']:<30} {r['status']:<10} {r['seconds']:>7.1f}")
    print(f" total{'':<44}{sum(r['seconds'] for r in rows):>7.1f}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.profile, args.overrides)  # validates everything before any work
        selected = select(STAGES, args.only, args.start)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run = Run(cfg, args.run_dir)
    except PolypError as exc:        # e.g. the run folder cannot be created
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.list:
        for s in STAGES:
            state = "cached" if run.stage(s.id).is_done() else "to run"
            reads = f"; reads {', '.join(s.upstream)}" if s.upstream else ""
            print(f"{s.id} {s.name:<14} notebooks/{s.notebook:<30} {state:<7} depends on {', '.join(s.depends_on)}{reads}")
        return 0

    chosen = {s.id for s in selected}
    for s in selected:  # stages whose artefacts the selection reads must be finished for this config
        for up in s.upstream:
            if up not in chosen and not run.stage(up).is_done():
                print(f"error: stage {s.id} ({s.name}) reads the results of stage {up}, which has none for this "
                      f"configuration in {run.dir}; run it first (e.g. --from {up})", file=sys.stderr)
                return 2

    try:
        run.save_config()
    except PolypError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {
        "profile": cfg.profile, "overrides": args.overrides, "run_dir": str(run.dir),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(), "git": git_state(), "device": device_info(),
        "config": cfg.to_dict(), "stages": [],
    }
    rows, code = [], 0
    if any(s.id == "03" for s in selected) and cfg.sampling.style.guided:
        reason = missing_reason(cfg.sampling.style)
        if reason:   # said once, up front: the run goes on without the set, nothing is made under its name
            print(f"note: Styled-Diff will be reported absent: {reason}", flush=True)
    if any(s.id == "05" for s in selected) and cfg.data.source == "real" and not cfg.gan.singan_published:
        print(f"note: SinGAN-Seg (the paper's GAN baseline): {differences.singan(cfg, differences.Context()).text}",
              flush=True)
    for stage in selected:
        state = run.stage(stage.id)
        before = state.read_marker() if state.is_done() else None
        print(f"[{stage.id}] {stage.title}: notebooks/{stage.notebook}", flush=True)
        t0 = time.time()
        status = "failed"
        try:
            execute(stage, run, args)
            if not state.is_done():
                raise StageFailed(f"notebook {stage.notebook} finished but stage {stage.id} recorded no completion")
            status = "cached" if before is not None and state.read_marker() == before else "ran"
        except StageFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
        row = {"stage": stage.id, "notebook": stage.notebook, "status": status,
               "seconds": round(time.time() - t0, 2), "key": state.key,
               "executed_notebook": str(run.path("notebooks", stage.notebook))}
        rows.append(row)
        meta["stages"].append(row)
        meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(run.path("run_meta.json"), meta)
        if code:
            break
    figures = Path(args.figures_dir) if args.figures_dir else PROJECT_ROOT / "figures" / Path(cfg.profile).stem
    meta["figures_copied"] = copy_figures(run, figures)
    atomic_write_json(run.path("run_meta.json"), meta)
    meta["report"] = write_report(run)     # after run_meta.json: the report quotes it
    atomic_write_json(run.path("run_meta.json"), meta)
    print_table(rows)
    print(f"run folder: {run.dir}")
    print(f"report:     {meta['report']['markdown']} (and .html)")
    return code


if __name__ == "__main__":
    sys.exit(main())
