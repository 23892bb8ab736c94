"""Splits: seeded, the promised sizes, duplicates on one side, the paper's list honoured."""
from pathlib import Path

import pandas as pd
import pytest

from polyplib.data.splits import check_no_leakage, kfold_split, paper_clusters, paper_split, random_split
from polyplib.errors import DataError

IDS = [f"img{i:03d}" for i in range(60)]
GROUPS = {"img001": "img000", "img002": "img000", "img010": "img009"}  # two duplicate groups


def test_random_split_sizes_determinism_and_groups():
    a = random_split(IDS, 30, 12, seed=0, groups=GROUPS)
    b = random_split(IDS, 30, 12, seed=0, groups=GROUPS)
    c = random_split(IDS, 30, 12, seed=1, groups=GROUPS)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["split"]) != list(c["split"])
    counts = a["split"].value_counts()
    assert 12 <= counts["test"] <= 14 and 30 <= counts["train"] <= 32  # a group may overshoot by its size
    for group in ("img000", "img009"):
        assert a.loc[a["group"] == group, "split"].nunique() == 1


def test_random_split_too_large_is_an_error():
    with pytest.raises(DataError, match="60 pairs"):
        random_split(IDS, 50, 20, seed=0)


def test_kfold_partitions_every_id_once():
    tests = [set(kfold_split(IDS, 5, k, seed=0, groups=GROUPS).query("split == 'test'")["id"]) for k in range(5)]
    assert set().union(*tests) == set(IDS)
    assert sum(len(t) for t in tests) == len(IDS)
    with pytest.raises(DataError, match="fold"):
        kfold_split(IDS, 5, 5, seed=0)


def test_paper_split_uses_the_shipped_list():
    clusters = paper_clusters()
    assert len(clusters) == 348 and clusters["cluster_k20"].between(0, 19).all()
    names = [Path(n).stem for n in clusters["image"]]
    others = [f"other{i:03d}" for i in range(300)]
    split = paper_split(names + others, n_test=200, seed=0)
    assert set(split.query("split == 'train'")["id"]) == set(names)
    test = split.query("split == 'test'")["id"]
    assert len(test) == 200 and set(test) <= set(others)
    assert split.set_index("id").loc[names[0], "cluster_k20"] == clusters["cluster_k20"][0]
    again = paper_split(names + others, n_test=200, seed=0)
    pd.testing.assert_frame_equal(split, again)


def test_paper_split_on_other_data_says_why():
    with pytest.raises(DataError, match="348 training images"):
        paper_split(IDS, n_test=10, seed=0)


def test_leakage_is_detected():
    bad = pd.DataFrame({"id": ["a", "b"], "split": ["train", "test"], "group": ["g", "g"]})
    with pytest.raises(DataError, match="leaks"):
        check_no_leakage(bad)
