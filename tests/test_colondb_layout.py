"""CVC-ColonDB as its original release ships: one flat folder of N.tif(f) images, pN masks, cpN contours.

Each test writes a miniature copy in tmp_path: mixed .tiff/.tif, a bilevel mask, contours that are
not even valid TIFF (so reading one would fail), stray .DS_Store / Thumbs.db, two identical frames.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from polyplib.data.__main__ import main
from polyplib.data.loaders import LAYOUTS, detect_layout, find_duplicates, find_pairs, load_pair
from polyplib.data.stage import run_stage as prepare_data
from polyplib.data.prepared import load_dataset
from polyplib.errors import DataError
from polyplib.runs import open_run

REPO = Path(__file__).resolve().parents[1]
H, W = 24, 32
N = 7
TIF_IMAGE = 3  # saved as "3.tif" (by PIL), the others as "N.tiff" (by tifffile)
BILEVEL_MASK = 4  # "p4.tiff" stored as 1-bit
DUPLICATE = (2, 7)  # frame 7 is byte-identical to frame 2


def _frame(n: int) -> np.ndarray:
    return np.random.default_rng(DUPLICATE[0] if n == DUPLICATE[1] else n).integers(0, 256, (H, W, 3), np.uint8)


def _mask(n: int) -> np.ndarray:
    """A different mask per number (row n), so pairing the wrong mask with an image fails."""
    m = np.zeros((H, W), bool)
    m[n, 2 : 2 + 3 * n] = True
    return m


def _write_colondb(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The flat release in miniature; returns {id: (image, mask)}."""
    folder.mkdir(parents=True)
    expected = {}
    for n in range(1, N + 1):
        img, msk = _frame(n), _mask(n)
        if n == TIF_IMAGE:
            Image.fromarray(img).save(folder / f"{n}.tif", format="TIFF")
        else:
            tifffile.imwrite(folder / f"{n}.tiff", img, photometric="rgb")
        mask = msk if n == BILEVEL_MASK else msk.astype(np.uint8) * 255
        tifffile.imwrite(folder / f"p{n}.tiff", mask, photometric="minisblack")
        (folder / f"cp{n}.tiff").write_bytes(b"not a TIFF: contours must never be read")
        expected[str(n)] = (img, msk)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "Thumbs.db").write_bytes(b"junk")
    return expected


@pytest.fixture
def colondb(tmp_path):
    folder = tmp_path / "CVC-ColonDB"
    return folder, _write_colondb(folder)


def test_flat_folder_is_detected_and_paired_by_number(colondb):
    folder, expected = colondb
    assert "cvc-colondb-flat" in LAYOUTS
    assert detect_layout(folder) == "cvc-colondb-flat"
    assert detect_layout(folder.parent) == "cvc-colondb-flat"  # root may be the parent
    pairs = find_pairs(folder)
    assert [p.id for p in pairs] == sorted(expected)
    for p in pairs:
        assert p.dataset == "cvc-colondb-flat" and p.mask.name == f"p{p.id}.tiff"
        assert p.image.name == (f"{p.id}.tif" if p.id == str(TIF_IMAGE) else f"{p.id}.tiff")
        img, msk = load_pair(p)
        np.testing.assert_array_equal(img, expected[p.id][0])
        np.testing.assert_array_equal(msk, expected[p.id][1])
    assert find_duplicates(pairs) == [[str(n) for n in DUPLICATE]]


def test_cli_names_the_layout(colondb):
    folder, expected = colondb
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "polyplib.data", "layout", str(folder)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["layout: cvc-colondb-flat", f"pairs: {len(expected)}"]


def test_missing_mask_or_image_and_stray_images_name_the_file(colondb, capsys):
    folder, _ = colondb
    (folder / "p5.tiff").unlink()
    with pytest.raises(DataError) as ei:
        find_pairs(folder)
    msg = str(ei.value)
    assert msg.startswith(f"{folder / '5.tiff'}: image without mask") and str(folder / "p5") in msg
    assert main(["layout", str(folder)]) == 2
    assert "5.tiff" in capsys.readouterr().err

    (folder / "5.tiff").unlink()
    (folder / "6.tiff").unlink()
    with pytest.raises(DataError, match="mask without image") as ei:
        find_pairs(folder)
    assert str(ei.value).startswith(f"{folder / 'p6.tiff'}: ")

    (folder / "p6.tiff").unlink()
    tifffile.imwrite(folder / "copy of 1.tiff", _frame(1), photometric="rgb")
    with pytest.raises(DataError, match="unexpected image file") as ei:
        find_pairs(folder)
    assert str(ei.value).startswith(f"{folder / 'copy of 1.tiff'}: ")


def test_prepare_reads_it_as_transfer_and_as_training_set(tmp_path):
    data = tmp_path / "d"
    _write_colondb(data / "CVC-ColonDB")
    mine = data / "mine"
    for sub in ("images", "masks"):
        (mine / sub).mkdir(parents=True)
    for n in range(1, 6):
        Image.fromarray(_frame(10 + n)).save(mine / "images" / f"f{n}.png")
        Image.fromarray(_mask(n).astype(np.uint8) * 255).save(mine / "masks" / f"f{n}.png")
    common = [f"data.root={data}", "data.source=real", "data.split.kind=random", "data.split.n_train=3",
              "data.split.n_test=2", "data.resolution=32", "run.progress=false", "run.workers=1",
              "data.datasets={mine: mine, cvc-colondb: CVC-ColonDB}"]

    transfer = open_run("smoke", [*common, "data.train=mine"], tmp_path / "transfer")
    report = prepare_data(transfer)["datasets"]["cvc-colondb"]
    assert report["role"] == "transfer" and report["layout"] == "cvc-colondb-flat" and report["pairs"] == N
    assert report["duplicate_groups"] == [[str(n) for n in DUPLICATE]]

    train = open_run("smoke", [*common, "data.train=cvc-colondb"], tmp_path / "train")
    assert prepare_data(train)["datasets"]["cvc-colondb"]["duplicate_groups"] == [[str(n) for n in DUPLICATE]]
    split = load_dataset(train).split.set_index("id")["split"]
    assert split[str(DUPLICATE[0])] == split[str(DUPLICATE[1])]
