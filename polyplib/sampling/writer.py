"""A resumable synthetic data set on disk, in the same layout as the prepared real data.

Why: sampling with the paper's settings takes hours, so a killed run must continue where it
stopped, without duplicating or losing pairs. Each pair is written as two atomic PNGs, then a
per-pair JSON record; only a record marks a pair as finished. ``manifest.csv`` (accepted pairs,
readable by :class:`polyplib.data.prepared.PreparedSet`) and ``rejected.csv`` are rebuilt from
the records in plan order, so they never list a pair whose files are not in place. A folder made
for another plan (other settings or models) is detected by its key and started afresh.

Layout of ``synthetic/<method>/``::

    images/<file>.png, masks/<file>.png    accepted pairs (the data set)
    manifest.csv                           one row per accepted pair (id, file, source_id, seed, ...)
    rejected/images|masks/<file>.png       rejected pairs, kept for inspection only
    rejected.csv                           one row per rejected pair, with the reason
    records/<id>.json                      per-pair record: the source of truth for resuming
    plan.json                              key of the settings, planned ids, complete flag
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.imageio import write_png
from ..runs import atomic_write_json, atomic_write_text

MANIFEST_FIRST = ["id", "file", "source_id", "cluster", "model", "method", "sampler", "steps",
                  "seed", "sample_index", "accepted", "reason", "coverage"]


class SyntheticWriter:
    """One method folder; ``write`` a pair, ``finish`` when every planned pair is written."""

    def __init__(self, folder: str | Path, key: str, plan: list[str], info: dict | None = None,
                 fresh: bool = False):
        self.folder = Path(folder)
        self.plan = list(plan)
        self.key = key
        old = self._read_plan()
        if fresh or (old is not None and old.get("key") != key) or (old is None and self.folder.exists()):
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records = self._read_records()
        atomic_write_json(self.folder / "plan.json", {"key": key, "complete": self.complete,
                                                     "info": info or {}, "ids": self.plan})
        self._info = info or {}

    def _read_plan(self) -> dict | None:
        try:
            return json.loads((self.folder / "plan.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _read_records(self) -> dict[str, dict]:
        planned, records = set(self.plan), {}
        for path in sorted((self.folder / "records").glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # cannot happen with atomic writes; treated as unfinished
            if rec.get("id") in planned and all(p.exists() for p in self.paths(rec)):
                records[rec["id"]] = rec
        return records

    def paths(self, record: dict) -> tuple[Path, Path]:
        base = self.folder if record["accepted"] else self.folder / "rejected"
        return base / "images" / f"{record['file']}.png", base / "masks" / f"{record['file']}.png"

    @property
    def complete(self) -> bool:
        return all(i in self.records for i in self.plan)

    def is_done(self, pair_id: str) -> bool:
        return pair_id in self.records

    def write(self, record: dict, image: np.ndarray, mask: np.ndarray) -> None:
        """Both PNGs atomically, then the record; a crash in between only costs this pair."""
        img_path, msk_path = self.paths(record)
        write_png(img_path, np.asarray(image, np.uint8))
        write_png(msk_path, np.asarray(mask, bool))
        atomic_write_json(self.folder / "records" / f"{record['id']}.json", record)
        self.records[record["id"]] = record

    def table(self) -> pd.DataFrame:
        """All finished records (accepted and rejected) in plan order."""
        rows = [self.records[i] for i in self.plan if i in self.records]
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=MANIFEST_FIRST)
        return df[[c for c in MANIFEST_FIRST if c in df] + [c for c in df if c not in MANIFEST_FIRST]]

    def flush(self) -> None:
        """Rebuild manifest.csv (accepted) and rejected.csv from the records."""
        df = self.table()
        accepted = df["accepted"].astype(bool).to_numpy()
        atomic_write_text(self.folder / "manifest.csv", df[accepted].to_csv(index=False))
        atomic_write_text(self.folder / "rejected.csv", df[~accepted].to_csv(index=False))

    def finish(self) -> None:
        self.flush()
        atomic_write_json(self.folder / "plan.json", {"key": self.key, "complete": self.complete,
                                                     "info": self._info, "ids": self.plan})


def read_records(folder: str | Path) -> pd.DataFrame:
    """Every pair of a method folder, accepted and rejected (manifest.csv + rejected.csv)."""
    folder = Path(folder)
    parts = [pd.read_csv(folder / name, dtype={"id": str, "file": str, "source_id": str}, keep_default_na=False)
             for name in ("manifest.csv", "rejected.csv") if (folder / name).exists()
             and (folder / name).stat().st_size > 1]
    parts = [p for p in parts if len(p.columns)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=MANIFEST_FIRST)
