"""Kill -9 at several points of ``run_all.py --profile smoke``; the rerun must finish with exactly the
metrics of an uninterrupted run, and no partial artefact may ever be read as complete.

Slow (three smoke runs' worth of work): ``python -m pytest -m slow tests/test_faults.py``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _start(run_dir: Path, figures: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_all.py"), "--profile", "smoke", "--run-dir", str(run_dir),
                             "--figures-dir", str(figures)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 900) -> bool:
    """SIGKILL the whole process group (run_all and its notebook kernel) once ``condition()`` holds."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def _any(run: Path, pattern: str, at_least: int = 1):
    return lambda: len(list(run.glob(pattern))) >= at_least


def _results(run: Path) -> dict[str, pd.DataFrame]:
    """The final metrics of a run: FID/KID, MS-SSIM, the GAN comparison, segmentation and transfer."""
    pick = {"04_fid": ["method", "fid_mean", "kid_mean"], "04_msssim": ["method", "msssim_mean"],
            "05_comparison": ["method", "fid_mean", "msssim_mean"],
            "06_segmentation": ["name", "dice", "iou", "best_epoch"],
            "07_summary": ["target", "regime", "source", "augmentation", "iou", "iou_lo", "iou_hi"]}
    return {name: pd.read_csv(run / "results" / f"{name}.csv")[cols] for name, cols in pick.items()}


def test_kill_9_anywhere_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    reference = tmp_path / "reference"
    assert _start(reference, tmp_path / "f0").wait() == 0
    run = tmp_path / "killed"
    points = [  # (what is happening, when to kill)
        ("DDPM training, after a checkpoint", _any(run, "models/ddpm/*/checkpoints/checkpoint-*")),
        ("a checkpoint being written", _any(run, "models/ddpm/*/checkpoints/.checkpoint-*.tmp")),
        ("RePaint sampling", _any(run, "synthetic/diff/records/*.json", 5)),
        ("stage 04: the label-fidelity judge training", _any(run, "segmentation/*/train/log.csv")),
        ("GAN training", _any(run, "models/gan/checkpoints/checkpoint-*")),
        ("segmentation training", _any(run, "segmentation/*/train/log.csv", 2)),
    ]
    killed_at = []
    for what, condition in points:
        proc = _start(run, tmp_path / "f1")
        if _kill_when(proc, condition):
            killed_at.append(what)
        elif proc.returncode == 0:
            break                         # the run finished before this point was reached
    assert len(killed_at) >= 4, killed_at
    assert _start(run, tmp_path / "f1").wait() == 0
    want, got = _results(reference), _results(run)
    for name in want:
        pd.testing.assert_frame_equal(want[name], got[name], check_exact=False, rtol=1e-9, atol=1e-12,
                                      obj=f"{name} after kills at {killed_at}")
    # what a kill cut off mid-write stays a hidden temporary (".name.*.tmp", ".name.*.building"), never a result
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".building"))]
    assert all(p.name.startswith(".") for p in leftovers), leftovers
