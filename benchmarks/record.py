"""What every benchmark record carries, and how it is written.

A record names the machine it was measured on (cores usable, load average at the start: this is
often a shared machine), the package versions and the date; it is written atomically as JSON so a
killed benchmark never leaves half a record behind.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polyplib.runs import atomic_write_json, device_info, git_state, package_versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Device, usable cores, load average and package versions; call before the work starts."""
    return {**device_info(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_state(), "versions": package_versions()}


def write_record(path: str | Path, record: dict) -> Path:
    """Write ``record`` as indented JSON, atomically; print where it went."""
    path = Path(path)
    atomic_write_json(path, record)
    print(f"wrote {path}")
    return path
