"""run_all.py end to end on the smoke profile, as a user runs it: executed notebooks, caching,
selective reruns, early configuration errors and a failing notebook named with its cell."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyplib.config import load_config
from polyplib.stages import STAGES, downstream, stage_keys

ROOT = Path(__file__).resolve().parent.parent


NETGUARD = ROOT / "tests" / "netguard"


def run_all(*args, cwd=ROOT, netlog: Path | None = None):
    """``python run_all.py ARGS``; with ``netlog``, under the network guard (tests/netguard), which
    refuses every non-local connection in every process and records the attempts in ``netlog``."""
    env = dict(os.environ)
    if netlog is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["POLYP_NETGUARD_LOG"] = str(netlog)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1800, env=env)
    return proc, time.time() - t0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One full smoke run of every notebook (the first run computes everything)."""
    base = tmp_path_factory.mktemp("e2e")
    args = ["--profile", "smoke", "--run-dir", str(base / "run"), "--figures-dir", str(base / "figures")]
    proc, seconds = run_all(*args, netlog=base / "network_attempts.log")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return base, args, proc, seconds


def test_the_study_runs_offline_with_networking_disabled(smoke, tmp_path):
    """The first run ran under the guard: no process tried to reach the network."""
    base = smoke[0]
    log = base / "network_attempts.log"
    assert not log.exists() or log.read_text() == "", log.read_text()
    # and the guard does refuse: the same environment cannot open a connection
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('pypi.org', 443), 3)"],
                           env={**os.environ, "PYTHONPATH": str(NETGUARD), "POLYP_NETGUARD_LOG": str(tmp_path / "l")},
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "disabled by the test guard" in probe.stderr
    assert "pypi.org" in (tmp_path / "l").read_text()


def test_first_run_executes_every_notebook(smoke):
    base, _, proc, _ = smoke
    meta = json.loads((base / "run" / "run_meta.json").read_text())
    assert [s["stage"] for s in meta["stages"]] == [s.id for s in STAGES]
    assert all(s["status"] == "ran" for s in meta["stages"])
    assert meta["versions"]["torch"] and meta["versions"]["papermill"] and "dirty" in meta["git"]
    assert meta["config"]["profile"] == "smoke" and meta["device"]["cpu_count"] >= 1
    for stage in STAGES:
        nb = json.loads((base / "run" / "notebooks" / stage.notebook).read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] for c in code)
        assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and str(base / "run") in "".join(injected[0]["source"])
    assert (base / "run" / "config.yaml").exists()
    assert (base / "run" / "data" / "dataset_report.json").exists()
    assert sorted(p.suffix for p in (base / "figures").iterdir()) and \
        {p.suffix for p in (base / "figures").iterdir()} == {".png", ".svg"}
    assert "ran" in proc.stdout and "total" in proc.stdout


def test_second_run_is_all_cached_and_faster(smoke):
    base, args, _, first_seconds = smoke
    marker = (base / "run" / "stages" / "01_data.done").read_text()
    proc, seconds = run_all(*args)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((base / "run" / "run_meta.json").read_text())
    assert all(s["status"] == "cached" for s in meta["stages"])
    assert (base / "run" / "stages" / "01_data.done").read_text() == marker
    nb = json.loads((base / "run" / "notebooks" / STAGES[0].notebook).read_text())
    text = json.dumps(nb["cells"])
    assert "cached results" in text and "phantom-a" in text  # still shows the cached tables


def test_set_reruns_the_dependent_stage_and_only_what_reads_it(smoke):
    base, args, _, _ = smoke
    stage = next(s for s in STAGES if s.name == "segmentation")
    override = "segmentation.bootstrap=600"
    before, after = stage_keys(load_config("smoke")), stage_keys(load_config("smoke", [override]))
    expected = {k for k in before if before[k] != after[k]}   # 06, 07 (both read segmentation.*)
    assert expected == {stage.id, *downstream(stage.id)} and "01" not in expected
    proc, _ = run_all(*args, "--set", override)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((base / "run" / "run_meta.json").read_text())
    status = {s["stage"]: s["status"] for s in meta["stages"]}
    assert {k for k, v in status.items() if v == "ran"} == expected, status
    assert all(v == "cached" for k, v in status.items() if k not in expected)
    assert meta["overrides"] == [override]
    listed, _ = run_all(*args, "--set", override, "--list")
    assert f"{stage.id} segmentation" in listed.stdout and "to run" not in listed.stdout
    other, _ = run_all(*args, "--list")
    assert "to run" in other.stdout  # the default configuration's stage 04 was replaced


@pytest.mark.parametrize("args, needle", [
    (["--profile", "nonsense"], "unknown profile 'nonsense'"),
    (["--set", "data.resolutoin=3"], "unknown key 'data.resolutoin'"),
    (["--set", "data.resolution=big"], "'data.resolution' = 'big'"),
    (["--set", "data.source=web"], "'phantom', 'real'"),
    (["--only", "42"], "unknown stage '42'"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, args, needle):
    proc, seconds = run_all(*args, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert not (tmp_path / "run").exists()


def test_failing_notebook_is_named_with_its_cell_and_kept(tmp_path):
    proc, _ = run_all("--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--figures-dir", str(tmp_path / "f"),
                      "--set", "data.source=real", "--set", "data.train=kvasir-seg",
                      "--set", f"data.root={tmp_path / 'nothing'}")
    assert proc.returncode == 1
    assert "notebooks/01_data_prep.ipynb failed in cell" in proc.stderr and "DataError" in proc.stderr
    assert "Kvasir-SEG" in proc.stderr
    kept = tmp_path / "run" / "notebooks" / "01_data_prep.ipynb"
    assert kept.exists() and "partially executed copy kept at" in proc.stderr
    meta = json.loads((tmp_path / "run" / "run_meta.json").read_text())
    assert meta["stages"][0]["status"] == "failed"


def _markdown_sections(text: str) -> dict[str, list[list[str]]]:
    """Body rows (cells) of every Markdown table in the report, by the notebook its section names."""
    import re

    out, notebook, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"## .*\(notebook (\d\d)\)", line)
        if heading:
            notebook = heading.group(1)
        is_header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if notebook and line.startswith("| ") and not is_header:
            out.setdefault(notebook, []).append([c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")])
    return out


def test_report_numbers_are_exactly_the_executed_notebooks_numbers(smoke):
    """run_all ends with report.md/.html; every number in its tables is printed by its notebook."""
    import html

    base = smoke[0] / "run"
    report = (base / "report.md").read_text()
    assert (base / "report.html").read_text().startswith("<!doctype html>")
    assert "Differences from the paper" in report and "phantom" in report
    sections = _markdown_sections(report)
    assert set(sections) == {"04", "05", "06", "07"}
    checked = intervals = 0
    for nb_id, rows in sections.items():
        stage = next(s for s in STAGES if s.id == nb_id)
        nb = json.loads((base / "notebooks" / stage.notebook).read_text())
        shown = "".join("".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"] if c["cell_type"] == "code"
                        for o in c["outputs"])
        for row in rows:
            for cell in row:
                if any(ch.isdigit() for ch in cell):
                    assert html.escape(cell, quote=False) in shown, f"notebook {nb_id}: '{cell}' not shown"
                    checked += 1
                    intervals += "[" in cell
    assert checked > 50 and intervals > 10, (checked, intervals)


def test_styled_diff_is_absent_with_its_reason_and_no_paper_value_stands_beside_another_set(smoke):
    """Smoke has no VGG / DINO weights: Styled-Diff is absent everywhere, with the keys to set; the
    colour-matched set mkl-diff is measured, and the paper's Styled-Diff values never sit beside it."""
    import pandas as pd

    from polyplib import paper

    base = smoke[0] / "run"
    fid = pd.read_csv(base / "results" / "04_fid.csv").set_index("method")
    ms = pd.read_csv(base / "results" / "04_msssim.csv").set_index("method")
    for table in (fid, ms):
        assert table.loc["styled-diff", "status"] == "absent"
        assert "sampling.style.vgg_weights" in table.loc["styled-diff", "note"]
        assert table.loc["mkl-diff", "status"] == "ok"
    assert pd.isna(fid.loc["mkl-diff", "paper_fid"]) and pd.isna(ms.loc["mkl-diff", "paper_msssim"])
    assert fid.loc["styled-diff", "paper_fid"] == paper.fid("styled-diff") and pd.isna(fid.loc["styled-diff", "fid_mean"])
    sources = pd.read_csv(base / "results" / "06_sources.csv").set_index("source")
    assert not sources.loc["styled-diff", "available"] and "sampling.style.dino_weights" in sources.loc["styled-diff", "note"]
    assert sources.loc["mkl-diff", "available"]
    seg = pd.read_csv(base / "results" / "06_segmentation.csv")
    assert not seg["source"].astype(str).str.contains("styled").any()        # nothing trained under its name
    assert not (base / "synthetic" / "styled-diff").exists()
    report = (base / "report.md").read_text()
    assert "Styled-Diff absent" in report
    styled_values = {"66.0", "66.17", "0.23", "0.684", "0.740", "0.74", "0.808", "0.607", "0.681", "0.729", "0.753"}
    for rows in _markdown_sections(report).values():
        for row in rows:
            if any("mkl-diff" in c or "colour match" in c for c in row):
                assert not styled_values & set(row), row


def test_same_profile_and_seed_give_identical_segmentation_results(smoke, tmp_path):
    """Determinism on one machine: segmentation models retrained from scratch (their folders deleted in
    a copy of the run) reproduce every Dice and IoU exactly, and their transfer scores."""
    import shutil

    import pandas as pd

    base = smoke[0]
    copy = tmp_path / "run"
    shutil.copytree(base / "run", copy, ignore=shutil.ignore_patterns("notebooks"))
    first = pd.read_csv(base / "run" / "results" / "06_segmentation.csv")
    retrain = [n for n in first["name"] if n.startswith(("real-none-nall", "mixed-mkl-diff-nall", "synthetic-gan"))]
    assert len(retrain) >= 3
    for name in retrain:
        shutil.rmtree(copy / "segmentation" / name)
    proc, _ = run_all("--profile", "smoke", "--run-dir", str(copy), "--figures-dir", str(tmp_path / "f"), "--from", "06",
                      "--force")
    assert proc.returncode == 0, proc.stderr
    assert all((copy / "segmentation" / n / "train" / "log.csv").exists() for n in retrain)
    columns = ["name", "dice", "iou", "best_epoch", "best_val_iou"]
    again = pd.read_csv(copy / "results" / "06_segmentation.csv")
    pd.testing.assert_frame_equal(first[columns], again[columns], check_exact=True)
    per_image = ["target", "regime", "source", "n_real", "augmentation", "image_id", "dice", "iou"]
    pd.testing.assert_frame_equal(pd.read_csv(base / "run" / "results" / "07_per_image.csv")[per_image],
                                  pd.read_csv(copy / "results" / "07_per_image.csv")[per_image], check_exact=True)
