"""Train/test splits of the training data set, saved as CSV; duplicate frames never cross sides.

Every split is a table with one row per pair: ``id, split, group`` where split is ``train``,
``test`` or ``unused`` and ``group`` names the duplicate group (the id itself when unique).
Splits are drawn over groups, so exact-duplicate frames always land on the same side.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError

PAPER_CLUSTERS = "paper_clusters.csv"


def paper_clusters() -> pd.DataFrame:
    """The paper's 348 training images (``image`` file names) and their cluster ids for K=10…40."""
    with resources.as_file(resources.files("polyplib.data") / "manifests" / PAPER_CLUSTERS) as p:
        return pd.read_csv(p)


def _groups(ids: Sequence[str], groups: dict[str, str] | None) -> pd.DataFrame:
    df = pd.DataFrame({"id": list(ids)})
    df["group"] = [(groups or {}).get(i, i) for i in df["id"]]
    return df


def _shuffled_groups(df: pd.DataFrame, seed: int) -> list[str]:
    unique = sorted(df["group"].unique())
    order = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in order]


def _fill(df: pd.DataFrame, order: list[str], quotas: list[tuple[str, int]]) -> pd.DataFrame:
    """Walk the shuffled groups and fill each side up to its quota; the rest is 'unused'."""
    sizes = df.groupby("group").size().to_dict()
    side: dict[str, str] = {}
    q = 0
    counts = {name: 0 for name, _ in quotas}
    for g in order:
        while q < len(quotas) and counts[quotas[q][0]] >= quotas[q][1]:
            q += 1
        if q == len(quotas):
            side[g] = "unused"
            continue
        name = quotas[q][0]
        side[g] = name
        counts[name] += sizes[g]
    out = df.copy()
    out["split"] = out["group"].map(side)
    return out[["id", "split", "group"]]


def random_split(ids: Sequence[str], n_train: int, n_test: int, seed: int,
                 groups: dict[str, str] | None = None) -> pd.DataFrame:
    """Seeded split: ``n_test`` test pairs, then ``n_train`` training pairs, the rest unused."""
    df = _groups(ids, groups)
    if n_train + n_test > len(df):
        raise DataError(None, f"the data set has {len(df)} pairs but the split asks for "
                              f"{n_train} train + {n_test} test; lower data.split.n_train/n_test")
    return check_no_leakage(_fill(df, _shuffled_groups(df, seed), [("test", n_test), ("train", n_train)]))


def training_images(split) -> int:
    """How many training images a split section gives: the shipped list's length for the paper split
    (which does not read ``n_train``), ``n_train`` for the others."""
    return len(paper_clusters()) if split.kind == "paper" else split.n_train


def paper_split(ids: Sequence[str], n_test: int, seed: int,
                groups: dict[str, str] | None = None) -> pd.DataFrame:
    """The paper's 348 training images (shipped list, with cluster ids) + ``n_test`` drawn from the rest."""
    clusters = paper_clusters()
    stems = {Path(n).stem: row for n, row in zip(clusters["image"], clusters.to_dict("records"))}
    df = _groups(ids, groups)
    missing = sorted(set(stems) - set(df["id"]))
    if missing:
        raise DataError(None, f"the paper split needs the Kvasir-SEG/HyperKvasir images it was made on; "
                              f"{len(missing)} of its 348 training images are not in the data set "
                              f"(first: {', '.join(missing[:3])}). Use data.split.kind=random for other data.")
    train_groups = set(df.loc[df["id"].isin(stems), "group"])
    rest = df[~df["group"].isin(train_groups)]
    order = _shuffled_groups(rest, seed)
    out = _fill(df, [g for g in sorted(train_groups)] + order,
                [("train", sum(df["group"].isin(train_groups))), ("test", n_test)])
    for k in ("cluster_k10", "cluster_k20", "cluster_k30", "cluster_k40"):
        out[k] = [stems[i][k] if i in stems else pd.NA for i in out["id"]]
    return check_no_leakage(out)


def kfold_split(ids: Sequence[str], n_folds: int, fold: int, seed: int,
                groups: dict[str, str] | None = None) -> pd.DataFrame:
    """Seeded k-fold over duplicate groups: fold ``fold`` is the test side, the rest trains."""
    if not 0 <= fold < n_folds:
        raise DataError(None, f"data.split.fold={fold} must be in 0..{n_folds - 1}")
    df = _groups(ids, groups)
    order = _shuffled_groups(df, seed)
    fold_of = {g: i % n_folds for i, g in enumerate(order)}
    out = df.copy()
    out["fold"] = out["group"].map(fold_of)
    out["split"] = np.where(out["fold"] == fold, "test", "train")
    return check_no_leakage(out[["id", "split", "group", "fold"]])


def pranet_split(train_ids: Sequence[str], test_ids: Sequence[str]) -> pd.DataFrame:
    """PraNet's published split: every TrainDataset pair trains, every TestDataset pair tests."""
    df = pd.DataFrame({"id": list(train_ids) + list(test_ids),
                       "split": ["train"] * len(train_ids) + ["test"] * len(test_ids)})
    df["group"] = df["id"]
    return check_no_leakage(df)


def check_no_leakage(split: pd.DataFrame) -> pd.DataFrame:
    """Raise if an id or a duplicate group appears on both the train and the test side."""
    sides = split[split["split"].isin(["train", "test"])]
    both = sides.groupby("group")["split"].nunique()
    leaked = list(both[both > 1].index)
    if leaked or split["id"].duplicated().any():
        raise DataError(None, f"split leaks between train and test: groups {leaked[:5]}")
    return split
