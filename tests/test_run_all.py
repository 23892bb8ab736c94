"""run_all.py end to end on the smoke profile, as a user runs it: executed notebooks, caching,
selective reruns, early configuration errors and a failing notebook named with its cell."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import browser_check
from polyplib.config import load_config
from polyplib.stages import STAGES, downstream, stage_keys

ROOT = Path(__file__).resolve().parent.parent


NETGUARD = ROOT / "tests" / "netguard"


def _env(netlog: Path | None) -> dict:
    """With ``netlog``, the network guard (tests/netguard): it refuses every non-local connection in
    every process and records the attempts in ``netlog``."""
    env = dict(os.environ)
    if netlog is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["POLYP_NETGUARD_LOG"] = str(netlog)
    return env


def run_all(*args, cwd=ROOT, netlog: Path | None = None):
    """``python run_all.py ARGS`` with its output captured (not a terminal)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1800, env=_env(netlog))
    return proc, time.time() - t0


def run_all_on_a_terminal(*args, netlog: Path | None = None, timeout: float = 1800):
    """``python run_all.py ARGS`` with its stdout on a pseudo-terminal 120 columns wide (stderr to a
    file), as a person sees it; the result's ``chunks`` are (time, text) of every read of the terminal."""
    import fcntl
    import pty
    import select
    import struct
    import tempfile
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks, t0 = [], time.time()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_all.py"), *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=slave, stderr=err, env=_env(netlog))
        os.close(slave)
        while time.time() - t0 < timeout:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:              # EIO: every holder of the terminal closed it
                    data = b""
                if not data:
                    break
                chunks.append((time.monotonic(), data.decode("utf-8", "replace")))
            elif proc.poll() is not None:
                break
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
        err.seek(0)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(c for _, c in chunks), err.read())
    result.chunks = chunks
    return result, time.time() - t0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One full smoke run of every notebook (the first run computes everything), on a terminal."""
    base = tmp_path_factory.mktemp("e2e")
    args = ["--profile", "smoke", "--run-dir", str(base / "run"), "--figures-dir", str(base / "figures")]
    proc, seconds = run_all_on_a_terminal(*args, netlog=base / "network_attempts.log")
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


def test_each_executed_notebook_is_at_most_2_mb_and_shows_its_figures_as_png_only(smoke):
    """Figures are stored once, as PNG (plots.inline_png); the figures folder keeps PNG and SVG."""
    from PIL import Image
    import base64
    import io

    for stage in STAGES:
        path = smoke[0] / "run" / "notebooks" / stage.notebook
        assert path.stat().st_size <= 2_000_000, (stage.notebook, path.stat().st_size)
        outputs = [o for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])]
        images = [o["data"] for o in outputs if any(k.startswith("image/") for k in o.get("data", {}))]
        assert all({k for k in d if k.startswith(("image/", "application/pdf"))} == {"image/png"} for d in images)
        for data in images:
            width = Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).width
            assert 100 < width < 1400, (stage.notebook, width)      # drawn at 72 dpi, not a thumbnail


def _silences(chunks: list[tuple[float, str]]) -> dict[str, float]:
    """Per stage, the longest time the terminal received nothing while the stage's notebook ran
    (from its start line to its end line)."""
    text, ends = "", []
    for t, chunk in chunks:
        text += chunk
        ends.append((len(text), t))
    at = lambda pos: next(t for end, t in ends if end > pos)  # noqa: E731
    out = {}
    for start in re.finditer(r"\[(\d\d)\] [^\r\n]*: notebooks/", text):
        end = re.compile(rf"\[{start[1]}\] (ran|cached) in").search(text, start.end())
        times = [t for _, t in ends if at(start.start()) <= t <= at(end.start())]
        out[start[1]] = max(b - a for a, b in zip(times, times[1:]))
    return out


def test_a_terminal_shows_every_running_stage_at_least_every_5_seconds(smoke):
    """The first run ran on a pseudo-terminal: each stage redraws one status line (its cell and what
    the cell prints, the library's tqdm bars), never silent for 5 s; no kernel warnings."""
    base, _, proc, _ = smoke
    silences = _silences(proc.chunks)
    print("longest silence per stage (s):", {k: round(v, 2) for k, v in silences.items()})
    assert sorted(silences) == [s.id for s in STAGES]
    assert max(silences.values()) <= 5, silences
    for stage in STAGES:
        assert re.search(rf"\r\[{stage.id}\] \d+:\d\d cell \d+/\d+: ", proc.stdout), stage.id
    assert re.search(r"\[02\] \d+:\d\d cell \d+/\d+: \S+: +\d+%\|.*\| \d+/\d+ \[", proc.stdout)  # a training bar
    assert "without encryption" not in proc.stdout + proc.stderr
    assert "[IPKernelApp] WARNING" not in proc.stdout + proc.stderr
    for stage in STAGES:   # tqdm.auto (imported by diffusers) finds ipywidgets: no warning in the notebooks
        assert "IProgress not found" not in (base / "run" / "notebooks" / stage.notebook).read_text()


TINY = ["--profile", "smoke", "--only", "01", "--set", "data.phantom.n_source=40", "--set", "data.phantom.n_target=12",
        "--set", "data.split.n_train=24", "--set", "data.split.n_test=10", "--set", "data.resolution=32"]


def test_a_log_gets_a_progress_line_every_log_every_seconds(tmp_path):
    args = [*TINY, "--run-dir", str(tmp_path / "run"), "--figures-dir", str(tmp_path / "f")]
    proc, _ = run_all(*args, "--log-every", "2")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[01]")]
    assert lines[0] == "[01] Data preparation: notebooks/01_data_prep.ipynb"
    end = re.fullmatch(r"\[01\] ran in ([\d.]+) s", lines[-1])
    clocks = [int(m[1]) * 60 + int(m[2]) for m in (re.match(r"\[01\] (\d+):(\d\d) ", line) for line in lines[1:-1])]
    assert end and len(clocks) == len(lines) - 2 >= 2, lines
    assert len(clocks) <= float(end[1]) / 2 + 1 and all(b - a >= 1 for a, b in zip(clocks, clocks[1:])), lines
    assert any(re.search(r"cell \d+/\d+: ", line) for line in lines[1:-1])
    assert "without encryption" not in proc.stderr
    # --quiet (only each stage's start and end, then the summary): test_preflight.py, whose lock holder runs so


def _executed_notebooks(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "notebooks").iterdir())}


def test_second_run_is_all_cached_and_starts_no_kernel(smoke):
    base, args, _, first_seconds = smoke
    marker = (base / "run" / "stages" / "01_data.done").read_text()
    notebooks = _executed_notebooks(base / "run")
    proc, seconds = run_all(*args)
    print(f"cached rerun: {seconds:.1f} s")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((base / "run" / "run_meta.json").read_text())
    assert all(s["status"] == "cached" for s in meta["stages"])
    for stage in STAGES:
        assert f"[{stage.id}] {stage.title}: cached, notebooks/{stage.notebook} kept" in proc.stdout
    assert _executed_notebooks(base / "run") == notebooks       # papermill would have rewritten them
    assert seconds < 30, seconds                                 # about 5 s on 2 cores, most of it imports
    assert (base / "run" / "stages" / "01_data.done").read_text() == marker
    assert "phantom-a" in json.dumps(json.loads(notebooks[STAGES[0].notebook])["cells"])  # still shows its tables
    assert "(cached in the last run_all call" in (base / "run" / "report.md").read_text()


def test_set_reruns_the_dependent_stage_and_only_what_reads_it(smoke):
    base, args, _, _ = smoke
    stage = next(s for s in STAGES if s.name == "segmentation")
    override = "segmentation.bootstrap=600"
    before, after = stage_keys(load_config("smoke")), stage_keys(load_config("smoke", [override]))
    expected = {k for k in before if before[k] != after[k]}   # 06, 07 (both read segmentation.*)
    assert expected == {stage.id, *downstream(stage.id)} and "01" not in expected
    notebooks = _executed_notebooks(base / "run")
    proc, _ = run_all(*args, "--set", override)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((base / "run" / "run_meta.json").read_text())
    status = {s["stage"]: s["status"] for s in meta["stages"]}
    assert {k for k, v in status.items() if v == "ran"} == expected, status
    assert all(v == "cached" for k, v in status.items() if k not in expected)
    again = _executed_notebooks(base / "run")
    assert {s.notebook for s in STAGES if again[s.notebook] != notebooks[s.notebook]} == \
        {s.notebook for s in STAGES if s.id in expected}          # only those notebooks ran
    assert meta["overrides"] == [override]
    listed, _ = run_all(*args, "--set", override, "--list")
    assert f"{stage.id} segmentation" in listed.stdout and "to run" not in listed.stdout
    other, _ = run_all(*args, "--list")
    assert "to run" in other.stdout  # the default configuration's stage 04 was replaced


def _fake_execute(executed: list[str]):
    """Stands in for papermill: records the stage and does what its notebook does with the cache (a
    new marker unless the stage is done and not forced), then writes a completed executed notebook."""
    def execute(stage, run, args, display):
        executed.append(stage.id)
        state = run.stage(stage.id)
        if args.force or not state.is_done():
            state.mark_done(time.time(), computed=time.time_ns())
        params = {"profile": args.profile, "overrides": list(args.overrides), "run_dir": str(run.dir), "force": args.force}
        nb = {"cells": [{"cell_type": "code", "metadata": {"papermill": {"status": "completed"}}}],
              "metadata": {"papermill": {"exception": None, "parameters": params}}}
        run.path("notebooks").mkdir(exist_ok=True)
        run.path("notebooks", stage.notebook).write_text(json.dumps(nb))
    return execute


def test_a_cached_stage_runs_only_when_its_key_changed_forced_or_a_stage_it_reads_ran(tmp_path, monkeypatch):
    import run_all as script

    executed: list[str] = []
    monkeypatch.setattr(script, "execute", _fake_execute(executed))
    monkeypatch.setattr(script, "write_report", lambda run: {"markdown": "report.md"})
    run = tmp_path / "run"

    def main(*extra):
        executed.clear()
        assert script.main(["--profile", "smoke", "--run-dir", str(run), "--figures-dir", str(tmp_path / "f"),
                            "--quiet", *extra]) == 0
        meta = json.loads((run / "run_meta.json").read_text())
        return list(executed), {s["stage"]: s["status"] for s in meta["stages"]}

    ids = [s.id for s in STAGES]
    assert main() == (ids, dict.fromkeys(ids, "ran"))
    assert main() == ([], dict.fromkeys(ids, "cached"))
    (run / "stages" / "05_gan.done").unlink()        # 06 reads 05, 07 reads 06: their notebooks run again
    assert main() == (["05", "06", "07"], {**dict.fromkeys(ids, "cached"), "05": "ran"})
    assert main("--only", "03", "--force") == (["03"], {"03": "ran"})
    notebook = run / "notebooks" / STAGES[3].notebook     # a notebook cut off mid-run is not the stage's
    notebook.write_text(notebook.read_text().replace('"completed"', '"running"'))
    assert main()[0] == ["04"]
    assert main("--set", "segmentation.bootstrap=600") == (ids[5:], {**dict.fromkeys(ids, "cached"), "06": "ran", "07": "ran"})
    assert main()[0] == ["06", "07"]                  # back to the default key
    notebook = run / "notebooks" / STAGES[5].notebook     # executed for another key (a run with it failed early)
    notebook.write_text(notebook.read_text().replace('"overrides": []', '"overrides": ["segmentation.bootstrap=600"]'))
    assert main()[0] == ["06", "07"]


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
    mine = tmp_path / "data" / "mine"       # lists as pairs (the preflight passes); one image cannot be decoded
    for sub in ("images", "masks"):
        (mine / sub).mkdir(parents=True)
    for i in range(3):
        (mine / "images" / f"f{i}.png").write_bytes(b"not a PNG")
        (mine / "masks" / f"f{i}.png").write_bytes(b"not a PNG either")
    proc, _ = run_all("--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--figures-dir", str(tmp_path / "f"),
                      "--set", "data.source=real", "--set", "data.train=mine", "--set", "data.datasets={mine: mine}",
                      "--set", f"data.root={tmp_path / 'data'}")
    assert proc.returncode == 1
    assert "notebooks/01_data_prep.ipynb failed in cell" in proc.stderr and "DataError" in proc.stderr
    assert str(mine) in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    kept = tmp_path / "run" / "notebooks" / "01_data_prep.ipynb"
    assert kept.exists() and "partially executed copy kept at" in proc.stderr
    meta = json.loads((tmp_path / "run" / "run_meta.json").read_text())
    assert meta["stages"][0]["status"] == "failed"


def _markdown_sections(text: str) -> dict[str, list[list[str]]]:
    """Body rows (cells) of every Markdown table in the report, by the notebook its section names."""
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
    for table, value in ((fid, "fid_mean"), (ms, "msssim_mean")):       # smoke's sets are below metrics.min_images
        assert table.loc["mkl-diff", "status"] == "too few images" and pd.isna(table.loc["mkl-diff", value])
        assert table.loc["mkl-diff", "refusal"].startswith("too few images (n = ")
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


def test_an_imported_copy_of_the_diff_set_scores_what_the_diff_set_scores(smoke, tmp_path, monkeypatch):
    """Another generator's folder, scored by the study's protocol: the smoke run's own Diff set written out as
    images/ + masks/ (with its manifest) and in CVC-ClinicDB's layout (sources given by --manifest), imported
    with ``python -m polyplib.synthetic import``, gets the Diff set's FID, KID, label fidelity and segmentation
    IoU exactly. (The smoke sets are below metrics.min_images and the label-fidelity minimum: both are lowered
    for this comparison, which then computes every number.)"""
    import dataclasses
    import shutil

    import pandas as pd

    from polyplib.config import load_config
    from polyplib.features.inception import InceptionFeatures
    from polyplib.features.inception_weights import resolve_fid_weights
    from polyplib.metrics import fidelity
    from polyplib.metrics.stage import discover_sets, fid_tables
    from polyplib.runs import Run
    from polyplib.segmentation import study
    from polyplib.synthetic.__main__ import main

    copy = tmp_path / "run"
    # without the smoke run's trained segmenters: the Diff set's reference is trained here too, in this process
    # (a model cached by the run's kernel can differ from one trained here in the last float bits)
    shutil.copytree(smoke[0] / "run", copy,
                    ignore=shutil.ignore_patterns("notebooks", "models", "raw", "figures", "segmentation"))
    diff = copy / "synthetic" / "diff"
    manifest = pd.read_csv(diff / "manifest.csv", dtype=str, keep_default_na=False)
    plain, cvc = tmp_path / "plain", tmp_path / "cvc" / "CVC-ClinicDB" / "PNG"
    for folder, images, masks in ((plain, "images", "masks"), (cvc, "Original", "Ground Truth")):
        for sub, name in ((images, "images"), (masks, "masks")):
            (folder / sub).mkdir(parents=True)
            for f in manifest["file"]:
                shutil.copy(diff / name / f"{f}.png", folder / sub / f"{f}.png")
    manifest.to_csv(plain / "manifest.csv", index=False)
    assert main(["import", str(plain), "--name", "ext-plain", "--run-dir", str(copy)]) == 0
    assert main(["import", str(tmp_path / "cvc"), "--name", "ext-cvc", "--run-dir", str(copy),
                 "--manifest", str(diff / "manifest.csv")]) == 0
    names = ["diff", "ext-plain", "ext-cvc"]
    run = Run(load_config(str(copy / "config.yaml"), ["metrics.min_images=2"]), copy)
    m = run.cfg.metrics
    sets = {k: v for k, v in discover_sets(run, m.fid_sets, names).items() if k in names}
    assert [len(i) for i in sets["ext-cvc"].sets] == [len(i) for i in sets["diff"].sets]
    fid = fid_tables(run, InceptionFeatures(resolve_fid_weights(m.fid_weights, m.cache_dir), resize=m.fid_resize),
                     sets)[0].set_index("method")
    monkeypatch.setattr(fidelity, "MIN_REGIONS", 2)
    judged = fidelity.label_fidelity(run, {k: k for k in names}, name="fidelity_import").set_index("method")
    for ext in names[1:]:
        for column in ("fid_mean", "kid_mean"):
            assert np.isfinite(fid.at["diff", column]) and fid.at[ext, column] == fid.at["diff", column], column
        assert np.isfinite(judged.at["diff", "judge_iou"]) and judged.at[ext, "judge_iou"] == judged.at["diff", "judge_iou"]
        seam = ["seam_regions", "seam_status", "seam_accuracy"]     # the smoke's 7 pairs hold 1 region large enough
        assert judged.loc[ext, seam].fillna("-").tolist() == judged.loc["diff", seam].fillna("-").tolist()
    planned = [c for c in study.plan(run.cfg, ["diff"]) if c.source == "diff" and c.n_real is None and c.seed == 0]
    for c in [c for c in planned if c.regime in ("synthetic", "mixed")][:2]:
        _, reference = study.train_configuration(run, c)
        for ext in names[1:]:
            _, result = study.train_configuration(run, dataclasses.replace(c, source=ext))
            assert (result["iou"], result["dice"]) == (reference["iou"], reference["dice"]), (c.name, ext)


# ----------------------------------------------------------------------------- as a person opens them
BROWSER_NOTEBOOKS = ("04_fid_msssim.ipynb", "06_segmentation.ipynb")
needs_chromium = pytest.mark.skipif(browser_check.chromium() is None, reason="Chromium is not installed (apt-get "
                                    "install chromium; .ci/run does): the JupyterLab / report rendering check needs it")


def _outputs(nb: dict, mime: str) -> int:
    return sum(mime in o.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])


@pytest.fixture(scope="module")
def lab(smoke, tmp_path_factory):
    """JupyterLab (headless) serving the smoke run folder, and a scratch folder for Chromium."""
    run = smoke[0] / "run"
    with browser_check.jupyterlab(run, tmp_path_factory.mktemp("lab")) as url:
        yield run, url, tmp_path_factory.mktemp("chrome")


@needs_chromium
@pytest.mark.parametrize("name", BROWSER_NOTEBOOKS)
def test_an_executed_notebook_renders_its_figures_and_tables_in_jupyterlab(lab, name):
    run, url, scratch = lab
    nb = json.loads((run / "notebooks" / name).read_text())
    figures, tables = _outputs(nb, "image/png"), _outputs(nb, "text/html")
    assert figures > 0 and tables > 0, f"{name}: the executed notebook holds no figures or no tables"
    assert not [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if o["output_type"] == "error"]
    page = browser_check.dom(f"{url}/lab/tree/notebooks/{name}?token={browser_check.TOKEN}", scratch)
    assert "jp-Notebook" in page, f"{name}: JupyterLab did not render the notebook"
    assert len(re.findall(r'<img[^>]+src="data:image/png', page)) >= figures     # every figure drawn (HTML
    # outputs may hold images of their own)
    assert page.count('data-mime-type="text/html"') >= tables and "<table" in page
    assert "Traceback (most recent call last)" not in page and "IProgress not found" not in page


@needs_chromium
def test_the_report_shows_its_tables_and_every_figure_loads(lab):
    run, url, scratch = lab
    page = browser_check.dom(f"{url}/files/report.html?token={browser_check.TOKEN}", scratch, budget_ms=5000)
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 4 and page.count("<table") >= 6 and "Differences from the paper" in page
    for src in images:
        status, kind, body = browser_check.fetch(f"{url}/files/{src}?token={browser_check.TOKEN}")
        assert status == 200 and kind.startswith("image/png") and body[:8] == b"\x89PNG\r\n\x1a\n", src
