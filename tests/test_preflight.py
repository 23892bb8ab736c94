"""Before any kernel starts: one run per run folder (the second stops at once, a kill -9 blocks nothing)
and the preflight (missing data root, empty data folder, missing weights file: one error line each)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyplib.config import load_config
from polyplib.preflight import absolute_paths, data_root_environment, preflight
from polyplib.runlock import HOLDER_FILE, LOCK_FILE, RunFolderBusy, run_folder_lock

from test_run_all import ROOT, TINY     # stage 01 of a tiny phantom: a run of about 10 s
KERNEL_TRACES = ("[01]", "IPKernelApp", "kernel", "Traceback")


def run_all(*args, cwd=ROOT):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    return proc, time.monotonic() - t0


def start_run_all(*args) -> subprocess.Popen:
    """run_all.py in its own process group (so a kill reaches its kernel too)."""
    return subprocess.Popen([sys.executable, str(ROOT / "run_all.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_holder(run: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (run / HOLDER_FILE).exists():
            return json.loads((run / HOLDER_FILE).read_text())
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the first run never took the folder's lock")


# ----------------------------------------------------------------------------- one run per folder
def test_a_second_run_on_a_folder_in_use_stops_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    first = start_run_all(*TINY, "--run-dir", str(run), "--figures-dir", str(tmp_path / "f"), "--quiet",
                          "--set", "run.workers=1", "--set", "run.torch_threads=1")    # one core each
    try:
        who = wait_for_holder(run, first)
        assert who["pid"] == first.pid and who["host"] == socket.gethostname()
        second, seconds = run_all(*TINY, "--run-dir", str(run), "--figures-dir", str(tmp_path / "f2"))
        assert second.returncode == 2 and seconds < 5, (seconds, second.stderr)
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: ") and "in use by another run" in errors[0]
        assert f"PID {first.pid} on {socket.gethostname()}, started {who['started']}" in errors[0]
        assert not any(trace in second.stdout for trace in KERNEL_TRACES), second.stdout
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err          # the holder was not disturbed
    assert not (run / HOLDER_FILE).exists()    # released on exit
    lines = [line for line in out.splitlines() if line.strip()]     # --quiet: the stage's start and end only
    assert lines[0] == "[01] Data preparation: notebooks/01_data_prep.ipynb"
    assert re.fullmatch(r"\[01\] ran in [\d.]+ s", lines[1]) and lines[2].split() == ["stage", "notebook", "status", "seconds"]
    assert not any(line.startswith("[01]") for line in lines[2:])


def test_a_run_killed_with_kill_9_blocks_nothing_and_the_next_says_it_took_over(tmp_path):
    run = tmp_path / "run"
    first = start_run_all(*TINY, "--run-dir", str(run), "--figures-dir", str(tmp_path / "f"))
    who = wait_for_holder(run, first)
    os.killpg(first.pid, signal.SIGKILL)       # run_all and its kernel, mid-stage
    first.wait()
    assert (run / HOLDER_FILE).exists()        # what a kill leaves behind
    nxt, _ = run_all(*TINY, "--run-dir", str(run), "--figures-dir", str(tmp_path / "f"))
    assert nxt.returncode == 0, nxt.stderr
    assert f"PID {who['pid']} on {who['host']}, started {who['started']} ended without releasing" in nxt.stdout
    assert "[01] ran in" in nxt.stdout and not (run / HOLDER_FILE).exists()


def test_the_lock_is_exclusive_and_ends_with_its_holder(tmp_path):
    notes = []
    with run_folder_lock(tmp_path, note=notes.append) as me:
        assert me["pid"] == os.getpid() and json.loads((tmp_path / HOLDER_FILE).read_text()) == me
        # another process (not another lock object of this one) is refused without waiting
        probe = ("import sys; from polyplib.runlock import run_folder_lock, RunFolderBusy\n"
                 "try:\n    with run_folder_lock(sys.argv[1]): sys.exit(0)\n"
                 "except RunFolderBusy as e:\n    print(e); sys.exit(3)")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 3 and f"PID {os.getpid()}" in proc.stdout and time.monotonic() - t0 < 5
    assert not notes and not (tmp_path / HOLDER_FILE).exists()
    with run_folder_lock(tmp_path, note=notes.append):       # free again
        pass
    assert not notes


# ----------------------------------------------------------------------------- preflight
def _real(tmp_path, root, *extra):
    return [*TINY, "--run-dir", str(tmp_path / "run"), "--figures-dir", str(tmp_path / "f"), "--set", "data.source=real",
            "--set", "data.train=mine", "--set", "data.datasets={mine: mine}", "--set", f"data.root={root}", *extra]


def _one_error_and_no_kernel(proc, seconds, *needles):
    assert proc.returncode == 2 and seconds < 5, (seconds, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not any(trace in proc.stdout + proc.stderr.replace(errors[0], "") for trace in KERNEL_TRACES), proc.stdout
    return errors[0]


def test_a_missing_data_root_fails_in_seconds_with_no_kernel(tmp_path):
    proc, seconds = run_all(*_real(tmp_path, tmp_path / "nowhere"))
    _one_error_and_no_kernel(proc, seconds, str(tmp_path / "nowhere"), "not found")
    assert not (tmp_path / "run" / "notebooks").exists()


def test_an_empty_data_folder_fails_in_seconds_with_no_kernel(tmp_path):
    (tmp_path / "data" / "mine").mkdir(parents=True)
    proc, seconds = run_all(*_real(tmp_path, tmp_path / "data"))
    _one_error_and_no_kernel(proc, seconds, str(tmp_path / "data" / "mine"), "empty folder")


def test_a_missing_weights_file_fails_in_seconds_with_no_kernel(tmp_path):
    missing = tmp_path / "vgg19.pth"
    proc, seconds = run_all(*TINY, "--run-dir", str(tmp_path / "run"), "--set", "sampling.style.guided=true",
                            "--set", f"sampling.style.vgg_weights={missing}")
    _one_error_and_no_kernel(proc, seconds, str(missing), "not found", "sampling.style.vgg_weights")


def test_every_problem_is_listed_at_once(tmp_path):
    cfg = load_config("smoke", ["data.source=real", f"data.root={tmp_path / 'nowhere'}", "run.disk_gb=1e9",
                                f"metrics.fid_weights={tmp_path / 'inception.pt'}", f"ddpm.pretrained={tmp_path}/x"])
    (tmp_path / "run").mkdir()
    problems = preflight(cfg, tmp_path / "run")
    assert len(problems) == 4, problems
    assert "run.disk_gb" in problems[0] and str(tmp_path / "nowhere") in problems[3]
    assert {"ddpm.pretrained", "metrics.fid_weights"} == {p.split("(")[1].split(",")[0] for p in problems[1:3]}
    assert preflight(cfg, tmp_path / "run", data=False) == problems[:3]    # stage 01 not to run: no data read


def test_a_valid_real_data_set_passes_and_relative_paths_reach_the_notebooks_resolved(tmp_path, monkeypatch):
    mine = tmp_path / "data" / "mine"
    for sub in ("images", "masks"):
        (mine / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(mine / "images" / f"f{i}.png")
        Image.fromarray(np.pad(np.full((6, 6), 255, np.uint8), 7)[:20, :24]).save(mine / "masks" / f"f{i}.png")
    cfg = load_config("smoke", ["data.source=real", "data.root=data", "data.train=mine", "data.datasets={mine: mine}",
                                "segmentation.encoder_weights=enc.pth"])
    resolved = absolute_paths(cfg, cwd=tmp_path)
    assert resolved == [f"segmentation.encoder_weights={tmp_path / 'enc.pth'}", f"data.root={tmp_path / 'data'}"]
    cfg = load_config("smoke", ["data.source=real", "data.train=mine", "data.datasets={mine: mine}", *resolved])
    (tmp_path / "enc.pth").write_bytes(b"weights")
    assert preflight(cfg, tmp_path) == [] and data_root_environment(cfg) == {}
    assert absolute_paths(load_config("smoke"), cwd=tmp_path) == []     # the phantom names no path
    # no data.root: $POLYP_DATA (or ./data) reaches the kernels resolved, and the stage keys stay as they were
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYP_DATA", "data")
    plain = load_config("smoke", ["data.source=real", "data.train=mine", "data.datasets={mine: mine}"])
    assert absolute_paths(plain) == [] and data_root_environment(plain) == {"POLYP_DATA": str(tmp_path / "data")}
    assert preflight(plain, tmp_path) == []
