#!/usr/bin/env python
"""Run the study: execute the notebooks in order with papermill, for one profile.

    python run_all.py --profile smoke                 # the whole study on the embedded phantom
    python run_all.py --profile paper --set data.root=/data/polyps
    python run_all.py --list                          # stages, notebooks, cached or not
    python run_all.py --only 03 | --from 04 | --force | --quiet

Executed notebooks, artefacts, tables and run_meta.json go to runs/<profile>/. A stage whose
configuration is unchanged and whose executed notebook is in the run folder is reported cached and
not run again. While a notebook runs, a terminal shows a live status line (cell, its latest output,
the progress bars); a log gets a plain progress line every --log-every seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the study never downloads weights from a hub
# Executed notebooks carry their figures, as JupyterLab draws them, whatever backend this shell sets
# (a headless server or CI often exports MPLBACKEND=Agg, under which plt.show() draws nothing).
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
# Text progress bars in the kernels it starts: their output becomes the terminal's status line
# (polyplib.progress; in JupyterLab itself the bars are widgets).
os.environ["POLYP_TEXT_PROGRESS"] = "1"

from polyplib import differences  # noqa: E402
from polyplib.config import load_config, profiles  # noqa: E402
from polyplib.errors import ConfigError, PolypError  # noqa: E402
from polyplib.preflight import absolute_paths, data_root_environment, preflight  # noqa: E402
from polyplib.runs import PROJECT_ROOT, Run, atomic_write_json, device_info, git_state, package_versions  # noqa: E402
from polyplib.report import write_report  # noqa: E402
from polyplib.runlock import run_folder_lock  # noqa: E402
from polyplib.stages import STAGES, Stage, stage_keys  # noqa: E402

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
    ap.add_argument("--quiet", action="store_true", help="print only each stage's start and end, and the summary")
    ap.add_argument("--log-every", type=float, default=20.0, metavar="S",
                    help="when the output is not a terminal, one progress line per stage every S seconds (default 20)")
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


def execute(stage: Stage, run: Run, args: argparse.Namespace, display: "StageDisplay") -> None:
    """Run one notebook with papermill; on failure name the notebook and cell, keep the copy.

    The kernel's output streams and cell starts feed ``display``; the saved notebook is not touched."""
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
            progress_bar=False, request_save_on_cell_execute=True, config=kernel_config(),
            coalesce_streams=True,     # a cell's stream output saved as its final text, not every bar redraw
            stdout_file=display, stderr_file=display,
            on_notebook_start=display.notebook_start, on_cell_execute=display.cell_start,
        )
    except PapermillExecutionError as exc:
        raise StageFailed(
            f"notebook {source.relative_to(PROJECT_ROOT)} failed in cell {exc.cell_index} "
            f"(execution count {exc.exec_count}): {exc.ename}: {exc.evalue}\n"
            f"  partially executed copy kept at {target}"
        ) from None


def kernel_config():
    """Kernel sockets encrypted with CurveZMQ keys the kernel manager provisions, where jupyter_client
    and pyzmq can: ipykernel warns on every start of a kernel it talks to in plain TCP."""
    from jupyter_client import KernelManager
    from traitlets import TraitError
    from traitlets.config import Config

    if "transport_encryption" not in KernelManager.class_trait_names():
        return Config()                   # jupyter_client < 8.9: no encryption, and no warning either
    try:
        KernelManager(transport_encryption="auto")    # refused where pyzmq was built without CURVE
    except TraitError:
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def notebook_is_current(stage: Stage, run: Run) -> bool:
    """Whether the stage's executed notebook in the run folder completed, for the stage's current key.

    Only then may a rerun skip the stage: the done-marker alone does not say that this notebook shows
    its results (a later call with other settings may have stopped in it before touching the marker)."""
    try:
        nb = json.loads(run.path("notebooks", stage.notebook).read_text())
        papermill = nb["metadata"]["papermill"]
        if papermill["exception"] or any(c["metadata"]["papermill"]["status"] != "completed" for c in nb["cells"]):
            return False
        params = papermill["parameters"]
        cfg = load_config(params["profile"], list(params["overrides"]))
    except (OSError, ValueError, KeyError, TypeError, PolypError):
        return False
    return stage_keys(cfg)[stage.id] == run.keys[stage.id]


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_line(text: str) -> str:
    """The newest non-blank line of a stream chunk: a progress bar redraws itself after a ``\\r``."""
    lines = [ANSI.sub("", part).strip() for part in re.split(r"[\r\n]", text)]
    return next((line for line in reversed(lines) if line), "")


def first_statement(source: str) -> str:
    """What a cell does, for the status line before it prints: its first line that is not an import."""
    lines = [line.strip() for line in source.splitlines()]
    return next((line for line in lines if line and not line.startswith(("#", "import ", "from "))), "")


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class StageDisplay:
    """What the terminal shows while one stage's notebook runs: the stage, its elapsed time, the cell
    and the cell's latest output line (a tqdm bar redraws it: step n of N, rate, time left).

    ``mode`` "live" redraws one status line in place (a terminal), "lines" writes a plain line every
    ``every`` seconds (a log), "quiet" nothing between the start and the end lines. papermill hands
    it every output chunk of the kernel (as its stdout/stderr file) and nbclient every cell start."""

    def __init__(self, stage: Stage, mode: str, every: float = 20.0, out=None):
        self.stage, self.mode, self.every, self.out = stage, mode, every, out or sys.stdout
        self.started = self.last_line = time.monotonic()
        self.n_cells, self.where, self.text = 0, "starting the kernel", ""
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.ticker = threading.Thread(target=self.tick, daemon=True)

    # -- fed by papermill and nbclient (the main thread)
    def write(self, chunk: str) -> None:
        line = last_line(chunk)
        if line:
            with self.lock:
                self.text = line

    def flush(self) -> None:
        pass

    def notebook_start(self, notebook, **_) -> None:
        self.n_cells = len(notebook.cells)

    def cell_start(self, cell, cell_index: int, **_) -> None:
        with self.lock:
            self.where, self.text = f"cell {cell_index + 1}/{self.n_cells}", first_statement(cell.source)

    # -- drawn by the ticker thread
    def status(self) -> str:
        with self.lock:
            text = f": {self.text}" if self.text else ""
            return f"[{self.stage.id}] {clock(time.monotonic() - self.started)} {self.where}{text}"

    def tick(self) -> None:
        while not self.stopped.wait(0.5):
            if self.mode == "live":
                width = shutil.get_terminal_size((100, 24)).columns - 1
                self.emit("\r" + self.status()[:width] + "\x1b[K")
            elif time.monotonic() - self.last_line >= self.every:
                self.last_line = time.monotonic()
                self.emit(self.status()[:200] + "\n")

    def emit(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def __enter__(self) -> "StageDisplay":
        self.emit(f"[{self.stage.id}] {self.stage.title}: notebooks/{self.stage.notebook}\n")
        if self.mode != "quiet":
            self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.ticker.is_alive():
            self.ticker.join()
        if self.mode == "live":
            self.emit("\r\x1b[K")


def display_mode(args: argparse.Namespace) -> str:
    if args.quiet:
        return "quiet"
    return "live" if sys.stdout.isatty() else "lines"


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


def run_stage(stage: Stage, run: Run, args: argparse.Namespace, reuse: bool) -> tuple[str, bool]:
    """Run one stage's notebook, or reuse it: its status ("ran", or "cached" when served from the
    stage's cache) and whether its notebook was executed; StageFailed when it fails.

    ``reuse``: a finished stage whose executed notebook matches its key is not run again (no kernel
    starts); False under --force and when the notebook of a stage it reads ran in this call."""
    state = run.stage(stage.id)
    done = state.is_done()
    if reuse and done and notebook_is_current(stage, run):
        print(f"[{stage.id}] {stage.title}: cached, notebooks/{stage.notebook} kept as it was", flush=True)
        return "cached", False
    before = state.read_marker() if done else None
    with StageDisplay(stage, display_mode(args), args.log_every) as display:
        execute(stage, run, args, display)
    seconds = time.monotonic() - display.started
    if not state.is_done():
        raise StageFailed(f"notebook {stage.notebook} finished but stage {stage.id} recorded no completion")
    status = "cached" if before is not None and state.read_marker() == before else "ran"
    print(f"[{stage.id}] {status} in {seconds:.1f} s", flush=True)
    return status, True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.profile, args.overrides)  # validates everything before any work
        selected = select(STAGES, args.only, args.start)
        resolved = absolute_paths(cfg)   # the kernels run in notebooks/: paths reach them resolved
        if resolved:
            args.overrides = [*args.overrides, *resolved]
            cfg = load_config(args.profile, args.overrides)
        os.environ.update(data_root_environment(cfg))
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
    try:
        with run_folder_lock(run.dir, note=lambda text: print(text, flush=True)):
            return study(run, selected, args)
    except PolypError as exc:        # RunFolderBusy: another run holds the folder
        print(f"error: {exc}", file=sys.stderr)
        return 2


def study(run: Run, selected: list[Stage], args: argparse.Namespace) -> int:
    """The stages of one call, in a run folder this call holds: preflight, notebooks, report."""
    cfg = run.cfg
    problems = preflight(cfg, run.dir, data=any(s.id == "01" for s in selected) and not run.stage("01").is_done())
    chosen = {s.id for s in selected}
    for s in selected:  # stages whose artefacts the selection reads must be finished for this config
        for up in s.upstream:
            if up not in chosen and not run.stage(up).is_done():
                problems.append(f"stage {s.id} ({s.name}) reads the results of stage {up}, which has none for "
                                f"this configuration in {run.dir}; run it first (e.g. --from {up})")
    for problem in dict.fromkeys(problems):
        print(f"error: {problem}", file=sys.stderr)
    if problems:
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
        from polyplib.sampling.feature_nets import missing_reason   # imports torch: not before the checks

        reason = missing_reason(cfg.sampling.style)
        if reason:   # said once, up front: the run goes on without the set, nothing is made under its name
            print(f"note: Styled-Diff will be reported absent: {reason}", flush=True)
    if any(s.id == "05" for s in selected) and cfg.data.source == "real" and not cfg.gan.singan_published:
        print(f"note: SinGAN-Seg (the paper's GAN baseline): {differences.singan(cfg, differences.Context()).text}",
              flush=True)
    executed: set[str] = set()     # stages whose notebook ran in this call: the stages reading them run too
    for stage in selected:
        state = run.stage(stage.id)
        t0 = time.time()
        try:
            status, ran = run_stage(stage, run, args, reuse=not args.force and not executed & set(stage.upstream))
        except StageFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            status, ran, code = "failed", True, 1
        if ran:
            executed.add(stage.id)
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
