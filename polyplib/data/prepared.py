"""Read what stage 01 prepared: the report, the splits, and the pairs of each data set.

Real, phantom and synthetic sets share one on-disk form (``images/<file>.png`` +
``masks/<file>.png`` + ``manifest.csv``), so this one reader serves every later stage.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StageError
from ..runs import Run
from .imageio import read_image, read_mask


def load_report(run: Run) -> dict:
    path = run.path("data", "dataset_report.json")
    if not path.exists():
        raise StageError(f"{path}: no prepared data; run notebook 01 (python run_all.py --only 01)")
    return json.loads(path.read_text())


class PreparedSet:
    """One prepared data set: its manifest, and pairs as arrays on demand."""

    def __init__(self, folder: str | Path, split: pd.DataFrame | None = None):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.csv"
        if not manifest.exists():
            raise StageError(f"{manifest}: missing; the folder is not a prepared data set")
        self.manifest = pd.read_csv(manifest, dtype={"id": str, "file": str, "subset": str}, keep_default_na=False)
        self.split = split
        self._file = dict(zip(self.manifest["id"], self.manifest["file"]))

    @property
    def name(self) -> str:
        return self.folder.name

    def __len__(self) -> int:
        return len(self.manifest)

    def ids(self, split: str | None = None) -> list[str]:
        """Pair ids, optionally only those on one side (``train``/``test``) of the split."""
        if split is None:
            return list(self.manifest["id"])
        if self.split is None:
            raise StageError(f"{self.folder}: data set has no split (it is a transfer/test set)")
        wanted = set(self.split.loc[self.split["split"] == split, "id"])
        return [i for i in self.manifest["id"] if i in wanted]

    def paths(self, pair_id: str) -> tuple[Path, Path]:
        f = self._file[pair_id]
        return self.folder / "images" / f"{f}.png", self.folder / "masks" / f"{f}.png"

    def load(self, pair_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 HxWx3, bool HxW) of one pair."""
        img, msk = self.paths(pair_id)
        return read_image(img), read_mask(msk)


def load_dataset(run: Run, name: str | None = None) -> PreparedSet:
    """A prepared data set of the run; default: the training set, with its split attached."""
    report = load_report(run)
    name = name or report["train"]
    if name not in report["datasets"]:
        raise StageError(f"data set '{name}' was not prepared in {run.path('data')}; "
                         f"prepared: {', '.join(report['datasets'])}")
    split = None
    if name == report["train"]:
        split = pd.read_csv(run.path("data", report["split"]["file"]), dtype={"id": str, "group": str})
    return PreparedSet(run.path("data", name), split)
