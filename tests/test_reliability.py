"""Reliability: bad inputs and failing writes give one clear error naming the file or key, and leave
finished results untouched.

The cases, and where each is tested:
- corrupt or truncated JPEG / PNG / TIFF, zero-byte file, not an image, missing file, permission denied,
  image without mask, mask without image, size mismatch, empty folder, wrong layout, duplicate stems:
  one file at a time in test_loaders.py; here again through stage 01 on a finished run (below), which
  must keep the finished data;
- non-binary (JPEG), 3-channel and RGBA masks are binarised by a documented rule (test_loaders.py);
  empty masks are kept or dropped by ``data.empty_masks`` and reported (test_prepare.py); a training set
  whose masks are *all* empty is an error (below);
- bad YAML, unknown key, wrong type, value out of range: test_config.py and test_run_all.py; zero and
  negative sizes (below);
- missing weights file, weights with a wrong checksum: test_diffusion_units.py (Inception),
  test_metrics_fid.py (FID weights), test_segmentation_units.py (encoder weights);
- corrupt checkpoint: test_diffusion_train.py;
- output folder not writable and disk full while writing (below).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyplib.config import load_config
from polyplib.data.stage import run_stage as prepare_data
from polyplib.errors import ConfigError, DataError, StageError
from polyplib.runs import WriteError, atomic_write_text, open_run

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- stage 01 on a finished run
def _write_set(root: Path, n: int = 6, size=(40, 48)) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"f{i}.jpg",
                                                                              quality=95)
        m = np.zeros(size, np.uint8)
        m[5:5 + 3 * (i + 1), 10:25] = 255
        Image.fromarray(m).save(root / "masks" / f"f{i}.png")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _lock(root: Path) -> None:
    """f2.jpg unreadable: chmod 0, and where that does not bind (root) the read itself is denied."""
    import polyplib.data.imageio as imageio

    path = root / "images" / "f2.jpg"
    path.chmod(0)
    if os.access(path, os.R_OK):
        def deny(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return open(file, *args, **kwargs)

        _MONKEY.setattr(imageio, "open", deny, raising=False)


_MONKEY = pytest.MonkeyPatch()


BAD_DATA = {
    "truncated JPEG image": (lambda r: _truncate(r / "images" / "f1.jpg"), "f1.jpg"),
    "truncated PNG mask": (lambda r: _truncate(r / "masks" / "f4.png"), "f4.png"),
    "zero-byte image": (lambda r: (r / "images" / "f3.jpg").write_bytes(b""), "f3.jpg"),
    "text file named .png": (lambda r: (r / "masks" / "f0.png").write_text("not an image"), "f0.png"),
    "image without mask": (lambda r: (r / "masks" / "f5.png").unlink(), "f5"),
    "mask without image": (lambda r: (r / "images" / "f5.jpg").unlink(), "f5"),
    "mask size differs from image": (
        lambda r: Image.fromarray(np.zeros((20, 20), np.uint8)).save(r / "masks" / "f2.png"), "f2.png"),
    "unreadable image (permission denied)": (_lock, "f2.jpg"),
    "empty data set folder": (lambda r: [p.unlink() for p in sorted(r.rglob("*.*"))], "mine"),
    "wrong folder layout": (lambda r: (r / "images").rename(r / "frames"), "images"),
    "every mask empty": (lambda r: [Image.fromarray(np.zeros((40, 48), np.uint8)).save(p)
                                    for p in (r / "masks").glob("*.png")], "mask"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_clear_error_and_finished_data_is_kept(tmp_path, case):
    data = tmp_path / "d"
    _write_set(data / "mine")
    run = open_run("smoke", ["data.source=real", f"data.root={data}", "data.train=mine", "data.datasets={mine: mine}",
                             "data.split.kind=random", "data.split.n_train=3", "data.split.n_test=2",
                             "data.resolution=32", "run.progress=false"], tmp_path / "run")
    prepare_data(run)
    prepared = run.path("data")
    before = {p.relative_to(prepared): p.read_bytes() for p in prepared.rglob("*") if p.is_file()}
    damage, must_name = BAD_DATA[case]
    try:
        damage(data / "mine")
        with pytest.raises(DataError) as err:
            prepare_data(run, force=True)
    finally:
        _MONKEY.undo()
    message = str(err.value)
    assert must_name in message, message
    assert message.count("\n") < 12            # one error, not a traceback dump
    after = {p.relative_to(prepared): p.read_bytes() for p in prepared.rglob("*") if p.is_file()}
    assert after == before                      # the finished data is untouched, byte for byte
    assert not [p for p in run.dir.iterdir() if p.name.startswith(".")]   # no half-built folder left


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("override, key", [
    ("data.resolution=0", "data.resolution"), ("data.resolution=-64", "data.resolution"),
    ("ddpm.batch_size=0", "ddpm.batch_size"), ("ddpm.max_steps=-5", "ddpm.max_steps"),
    ("segmentation.epochs=0", "segmentation.epochs"), ("data.phantom.n_source=-1", "data.phantom.n_source"),
    ("metrics.msssim_pairs=0", "metrics.msssim_pairs"), ("gan.batch_size=0", "gan.batch_size"),
])
def test_zero_and_negative_sizes_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [override])
    assert key in str(err.value)


# ----------------------------------------------------------------------------- writing
def test_a_file_in_the_way_of_the_run_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--profile", "smoke", "--run-dir",
                           str(blocker / "smoke"), "--only", "01"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert str(blocker / "smoke") in proc.stderr and "cannot be written" in proc.stderr
    assert "Traceback" not in proc.stderr and blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "table.csv").write_text("old")
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="table.csv"):
            atomic_write_text(folder / "table.csv", "new")
        assert (folder / "table.csv").read_text() == "old"
    finally:
        folder.chmod(0o755)


DISK_FULL = """
import resource, signal, sys
from polyplib.runs import atomic_write_bytes, WriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # no file may grow beyond 4 KiB
try:
    atomic_write_bytes(sys.argv[1], b"x" * 100_000)
except WriteError as exc:
    print(exc)
    sys.exit(3)
"""


def test_disk_full_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results" / "04_fid.csv"
    atomic_write_text(target, "method,fid\ndiff,37.2\n")
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, str(target)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert str(target) in proc.stdout and "larger than this system allows" in proc.stdout
    assert target.read_text() == "method,fid\ndiff,37.2\n"
    assert [p.name for p in target.parent.iterdir()] == ["04_fid.csv"]


def test_write_error_is_a_stage_error_and_an_os_error():
    assert issubclass(WriteError, StageError) and issubclass(WriteError, OSError)
