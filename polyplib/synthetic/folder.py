"""A synthetic set on disk: the resumable writer, the readers and the manifest, in the layout of the
prepared real data.

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
    summary.json                           what the set cost and how many pairs were kept (set_summary)

Stage 03 records, in ``synthetic/summary.json``, the planned sets it could not make and why
(:func:`absent_methods`); later stages skip them by that reason.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.imageio import read_image, read_mask, write_png
from ..errors import StageError
from ..runs import Run, atomic_write_json, atomic_write_text
from .catalogue import set_dir

MANIFEST_FIRST = ["id", "file", "source_id", "cluster", "model", "method", "sampler", "steps",
                  "seed", "sample_index", "accepted", "reason", "coverage"]


def pair_paths(folder: str | Path, record: dict) -> tuple[Path, Path]:
    """(image, mask) files of one record of a set, accepted (the data set) or rejected (kept aside)."""
    base = Path(folder) if str(record["accepted"]) == "True" else Path(folder) / "rejected"
    return base / "images" / f"{record['file']}.png", base / "masks" / f"{record['file']}.png"


def read_pair(folder: str | Path, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, bool mask) of one record of a set, accepted or rejected."""
    image, mask = pair_paths(folder, record)
    return read_image(image), read_mask(mask)


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
        return pair_paths(self.folder, record)

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


def accepted(manifest: pd.DataFrame) -> pd.DataFrame:
    """The accepted rows of a manifest (a manifest without an ``accepted`` column is all accepted)."""
    if "accepted" not in manifest:
        return manifest
    return manifest[manifest["accepted"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])]


def read_manifest(folder: str | Path) -> pd.DataFrame:
    """Accepted pairs of a synthetic set, sorted by source and sample, with ids read as text ("0012")."""
    path = Path(folder) / "manifest.csv"
    if not path.exists():
        raise StageError(f"{path}: missing; not a synthetic set")
    df = pd.read_csv(path, dtype={"id": str, "file": str, "source_id": str}, keep_default_na=False)
    missing = {"id", "file", "source_id"} - set(df.columns)
    if missing:
        raise StageError(f"{path}: columns {sorted(missing)} missing")
    df = accepted(df)
    if "sample_index" not in df:
        df = df.assign(sample_index=df.groupby("source_id").cumcount())
    return df.sort_values(["source_id", "sample_index", "id"], kind="stable").reset_index(drop=True)


def load_set(run: Run, method: str):
    """A finished synthetic set as a :class:`polyplib.data.prepared.PreparedSet` (accepted pairs only)."""
    from ..data.prepared import PreparedSet

    return PreparedSet(set_dir(run, method))


def source_count(manifest: pd.DataFrame) -> int | None:
    """Distinct source frames of the accepted pairs of a manifest (None when it records none)."""
    m = accepted(manifest)
    if "source_id" not in m:
        return None
    ids = m["source_id"].astype(str).str.strip()
    return int(ids[(ids != "") & (ids != "nan")].nunique())


def sources_of(run: Run, method: str) -> int | None:
    """How many source images a set on disk was made from (e.g. SinGAN-Seg trained here); None: no set."""
    folder = set_dir(run, method)
    if not (folder / "manifest.csv").is_file():
        return None
    return source_count(pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False))


def absent_methods(run: Run) -> dict[str, str]:
    """{method: reason} of the sets stage 03 reported absent; later stages skip them by this reason."""
    path = set_dir(run) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    return {a["method"]: a["reason"] for a in summary.get("absent", [])}


#: per-pair costs of the guided style transfer besides its UNet forward calls (manifest columns)
STYLE_COSTS = ("unet_backward", "unet_encoder_calls", "vgg_calls", "dino_calls")


def set_summary(run: Run, method: str, df: pd.DataFrame, **extra) -> dict:
    """What a finished set holds and cost: pairs, acceptance and its reasons, UNet calls and seconds per pair."""
    n = len(df)
    kept = int(df["accepted"].astype(bool).sum()) if n else 0
    total_s = float(df["seconds"].sum()) if "seconds" in df and n else 0.0
    first = df.iloc[0] if n else {}
    return {
        "method": method, "folder": str(set_dir(run, method).relative_to(run.dir)),
        "sampler": first.get("sampler", "") if n else "", "steps": int(first.get("steps", 0)) if n else 0,
        "pairs": int(n), "accepted": kept, "rejected": int(n - kept),
        "reasons": dict(Counter(r for r in df.get("reason", []) if r)),
        "models": sorted(set(df["model"])) if n else [],
        "nfe_per_pair": float(df["nfe"].mean()) if "nfe" in df and n else 0.0,
        **{f"{c}_per_pair": float(df[c].mean()) for c in STYLE_COSTS if c in df and n},
        "seconds_per_pair": round(total_s / n, 6) if n else 0.0,
        "seconds_per_accepted_pair": round(total_s / kept, 6) if kept else None,
        "seconds_total": round(total_s, 3), **extra,
    }

