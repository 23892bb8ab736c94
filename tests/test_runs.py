"""Atomic writes, atomic folders and stage done-markers: nothing partial is ever taken as finished."""
import json
import os

import pytest

from polyplib.runs import atomic_dir, atomic_write_json, open_run


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"v": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind


def test_atomic_dir_swaps_whole_folder_or_nothing(tmp_path):
    dest = tmp_path / "data"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (dest / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "a.txt").write_text("two")
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("crash while building")
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]
    assert (dest / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_cached_stage_computes_once_and_recomputes_on_config_change(tmp_path):
    calls = []
    run = open_run("smoke", [], tmp_path / "run")
    compute = lambda: calls.append("compute") or "fresh"  # noqa: E731
    load = lambda: "from cache"  # noqa: E731
    assert run.cached("01", compute, load) == "fresh"
    assert run.cached("01", compute, load) == "from cache"
    assert run.cached("01", compute, load, force=True) == "fresh"
    assert calls == ["compute", "compute"]
    marker = json.loads(run.stage("01").marker.read_text())
    assert marker["key"] == run.stage("01").key and marker["depends_on"]["data"]["resolution"] == 64

    other = open_run("smoke", ["data.split.seed=9"], tmp_path / "run")
    assert not other.stage("01").is_done()
    assert other.cached("01", compute, load) == "fresh"
    assert (tmp_path / "run" / "config.yaml").read_text().count("seed: 9") == 1


def test_failed_compute_leaves_stage_unfinished(tmp_path):
    run = open_run("smoke", [], tmp_path / "run")
    run.cached("01", lambda: 1, lambda: 1)

    def crash():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.cached("01", crash, lambda: 1, force=True)
    assert not run.stage("01").is_done()


def test_save_table_records_provenance(tmp_path):
    run = open_run("smoke", [], tmp_path / "run")
    run.save_table("numbers", [{"a": 1, "b": 2.5}], stage="01")
    record = json.loads((tmp_path / "run" / "results" / "numbers.json").read_text())
    assert record["rows"] == [{"a": 1, "b": 2.5}]
    prov = record["provenance"]
    assert prov["stage_key"] == run.stage("01").key
    assert prov["config"]["data"]["split"]["seed"] == 0 and prov["versions"]["torch"]
    assert (tmp_path / "run" / "results" / "numbers.csv").read_text().splitlines() == ["a,b", "1,2.5"]
