"""One run per run folder: run_all.py holds an exclusive lock on the folder for the whole call.

The lock is the operating system's file lock (``filelock``: ``flock`` on Unix), so it ends with its
process: a run killed with kill -9 leaves nothing that blocks the next one. Beside it a holder file
says who holds the lock (PID, host, start, command), for the error a second run prints; one left
behind by a run that died is the trace of a lock taken over, and the next run says so.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from .errors import PolypError
from .runs import atomic_write_json

LOCK_FILE = ".run.lock"
HOLDER_FILE = ".run.lock.json"


class RunFolderBusy(PolypError):
    """Another run holds the run folder."""


def holder(folder: Path) -> dict | None:
    """Who holds (or, after a crash, last held) the folder's lock; None when nobody wrote it."""
    try:
        return json.loads((Path(folder) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe(who: dict | None) -> str:
    if not who:
        return "a run that has not yet recorded itself"
    return f"PID {who.get('pid')} on {who.get('host')}, started {who.get('started')}"


@contextlib.contextmanager
def run_folder_lock(folder: str | Path, note: Callable[[str], None] = print) -> Iterator[dict]:
    """Hold ``folder``'s lock for the block; RunFolderBusy at once (no waiting) if another run holds it."""
    folder = Path(folder)
    lock = FileLock(folder / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderBusy(f"{folder}: in use by another run ({describe(holder(folder))}); wait for it to "
                            "finish, stop it, or choose another --run-dir") from None
    except OSError as exc:      # a read-only folder, a full disk
        raise PolypError(f"{folder}: run folder cannot be written, its lock cannot be taken "
                         f"({exc.strerror or exc}); choose another --run-dir") from None
    try:
        previous = holder(folder)
        if previous:
            note(f"note: {folder}: the run of {describe(previous)} ended without releasing the folder "
                 "(killed?); its lock is taken over, and its finished stages are kept")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": sys.argv}
        atomic_write_json(folder / HOLDER_FILE, me)
        yield me
    finally:
        with contextlib.suppress(FileNotFoundError):
            (folder / HOLDER_FILE).unlink()
        lock.release()
