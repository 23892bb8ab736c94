"""Real-data readers: every folder layout, every file quirk, every bad input -> one clear DataError.

No real data exists here: each test writes a miniature tree of tiny images in tmp_path.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from polyplib.data.imageio import (
    MASK_THRESHOLD,
    content_hash,
    file_sha256,
    read_image,
    read_mask,
    write_png,
)
from polyplib.data.loaders import LAYOUTS, Pair, detect_layout, find_duplicates, find_pairs, load_pair
from polyplib.errors import DataError

H, W = 24, 32


# --------------------------------------------------------------------------- helpers


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Block-aligned rectangle (multiples of 8), so JPEG ringing cannot cross the threshold."""
    m = np.zeros((h, w), bool)
    y, x = 8 * (seed % 2), 8 * (seed % 3)
    m[y : y + 8, x : x + 16] = True
    return m


def _save(path: Path, arr: np.ndarray) -> Path:
    """Write by extension: TIFF via tifffile, others via PIL (JPEG at quality 100, no subsampling)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    ext = path.suffix.lower()
    if ext in (".tif", ".tiff"):
        tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
    elif ext in (".jpg", ".jpeg"):
        Image.fromarray(arr).save(path, format="JPEG", quality=100, subsampling=0)
    else:
        Image.fromarray(arr).save(path, format={".png": "PNG", ".bmp": "BMP"}[ext])
    return path


def _write_set(images: Path, masks: Path, stems, img_ext=".png", mask_ext=".png", mask_name="{}"):
    """Write pairs; returns {stem: (image array, mask array)}; extensions may be per stem (dict)."""
    out = {}
    for i, stem in enumerate(stems):
        ie = img_ext[stem] if isinstance(img_ext, dict) else img_ext
        me = mask_ext[stem] if isinstance(mask_ext, dict) else mask_ext
        img, msk = _rgb(i), _mask(i)
        _save(images / f"{stem}{ie}", img)
        _save(masks / f"{mask_name.format(stem)}{me}", msk)
        out[stem] = (img, msk)
    return out


def _check_pairs(pairs, expected: dict, exact_image=True):
    """ids match, and load_pair returns the arrays that were written."""
    assert [p.id for p in pairs] == sorted(expected)
    for p in pairs:
        img, msk = load_pair(p)
        want_img, want_msk = expected[p.id]
        assert img.dtype == np.uint8 and img.shape == (H, W, 3)
        assert msk.dtype == bool and msk.shape == (H, W)
        np.testing.assert_array_equal(msk, want_msk)
        if exact_image:
            np.testing.assert_array_equal(img, want_img)
        else:  # JPEG: close, not exact
            assert np.abs(img.astype(int) - want_img.astype(int)).mean() < 4


def _single_error(excinfo, path) -> str:
    """The error names the file first and is not chained to a library exception."""
    err = excinfo.value
    assert str(err).startswith(f"{path}: "), str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return str(err)


# --------------------------------------------------------------------------- layouts


def test_layout_kvasir_seg(tmp_path):
    top = tmp_path / "Kvasir-SEG"
    exp = _write_set(top / "Images", top / "masks", ["a", "b", "c"], img_ext=".jpg",
                     mask_ext={"a": ".jpg", "b": ".png", "c": ".JPG"})
    (top / "kavsir_bboxes.json").write_text("{}")
    assert detect_layout(tmp_path) == "kvasir-seg"
    assert detect_layout(top) == "kvasir-seg"
    for root in (tmp_path, top):
        pairs = find_pairs(root)
        assert {p.dataset for p in pairs} == {"kvasir-seg"} and {p.subset for p in pairs} == {""}
        _check_pairs(pairs, exp, exact_image=False)
    assert find_pairs(tmp_path)[1].mask.name == "b.png"


def test_layout_hyperkvasir_seg(tmp_path):
    top = tmp_path / "segmented-images"
    exp = _write_set(top / "images", top / "MASKS", ["x1", "x2"], img_ext=".jpg", mask_ext=".jpg")
    (top / "bounding-boxes.json").write_text("{}")
    assert detect_layout(tmp_path) == "hyperkvasir-seg"
    assert detect_layout(top) == "hyperkvasir-seg"
    pairs = find_pairs(tmp_path)
    assert {p.dataset for p in pairs} == {"hyperkvasir-seg"}
    _check_pairs(pairs, exp, exact_image=False)


def test_layout_cvc_clinicdb_tiff_and_png_copies(tmp_path):
    tif_root, png_root = tmp_path / "CVC-ClinicDB", tmp_path / "copy"
    exp = _write_set(tif_root / "Original", tif_root / "Ground Truth", ["1", "2", "10"], ".tif", ".tif")
    assert detect_layout(tif_root) == "cvc-clinicdb" and detect_layout(tmp_path) == "cvc-clinicdb"
    _check_pairs(find_pairs(tif_root), exp)
    exp = _write_set(png_root / "PNG" / "original", png_root / "PNG" / "ground truth", ["1", "2"],
                     ".png", {"1": ".png", "2": ".tif"})
    assert detect_layout(png_root) == "cvc-clinicdb"
    _check_pairs(find_pairs(png_root), exp)


def test_layout_cvc_colondb(tmp_path):
    exp = _write_set(tmp_path / "CVC-ColonDB" / "images", tmp_path / "CVC-ColonDB" / "Masks", ["1", "2"],
                     ".tiff", ".bmp")
    assert detect_layout(tmp_path) == "cvc-colondb"
    _check_pairs(find_pairs(tmp_path), exp)
    # a plain images/ + masks/ copy is "generic" unless the layout is named
    plain = tmp_path / "CVC-ColonDB"
    plain_copy = tmp_path / "colon-copy"
    plain.rename(plain_copy)
    assert detect_layout(plain_copy) == "generic"
    assert {p.dataset for p in find_pairs(plain_copy, "cvc-colondb")} == {"cvc-colondb"}


def test_layout_etis_larib(tmp_path):
    outer = tmp_path / "ETIS-LaribPolypDB"
    exp = _write_set(outer / "ETIS-LaribPolypDB", outer / "GroundTruth", ["1", "2", "3"], ".tif", ".tif",
                     mask_name="p{}")
    assert detect_layout(tmp_path) == "etis-larib" and detect_layout(outer) == "etis-larib"
    pairs = find_pairs(tmp_path)
    assert [p.mask.name for p in pairs] == ["p1.tif", "p2.tif", "p3.tif"]
    _check_pairs(pairs, exp)
    # images/ + masks/ variant with plain mask names
    other = tmp_path / "other" / "etis-laribpolypdb"
    exp = _write_set(other / "images", other / "masks", ["7", "8"])
    assert detect_layout(other) == "etis-larib"
    _check_pairs(find_pairs(other), exp)


def test_layout_pranet_train(tmp_path):
    exp = _write_set(tmp_path / "TrainDataset" / "images", tmp_path / "TrainDataset" / "masks",
                     ["cju1", "cju2", "101"])
    assert detect_layout(tmp_path) == "pranet-train"
    assert detect_layout(tmp_path / "TrainDataset") == "pranet-train"
    _check_pairs(find_pairs(tmp_path), exp)


def test_layout_pranet_test(tmp_path):
    test = tmp_path / "testdataset"
    exp = {}
    for sub, stems in (("Kvasir", ["a", "b"]), ("CVC-300", ["a"]), ("ETIS-LaribPolypDB", ["1"])):
        got = _write_set(test / sub / "images", test / sub / "Masks", stems)
        exp.update({f"{sub}/{k}": v for k, v in got.items()})
    assert detect_layout(tmp_path) == "pranet-test" and detect_layout(test) == "pranet-test"
    pairs = find_pairs(tmp_path)
    assert [(p.id, p.subset) for p in pairs] == [
        ("CVC-300/a", "CVC-300"), ("ETIS-LaribPolypDB/1", "ETIS-LaribPolypDB"),
        ("Kvasir/a", "Kvasir"), ("Kvasir/b", "Kvasir")]
    _check_pairs(pairs, exp)


def test_pranet_train_and_test_together_is_ambiguous(tmp_path):
    _write_set(tmp_path / "TrainDataset" / "images", tmp_path / "TrainDataset" / "masks", ["a"])
    _write_set(tmp_path / "TestDataset" / "Kvasir" / "images", tmp_path / "TestDataset" / "Kvasir" / "masks", ["b"])
    with pytest.raises(DataError, match="ambiguous.*pranet-train.*pranet-test"):
        detect_layout(tmp_path)
    assert [p.id for p in find_pairs(tmp_path, "pranet-train")] == ["a"]
    assert [p.id for p in find_pairs(tmp_path, "pranet-test")] == ["Kvasir/b"]


def test_layout_polypgen(tmp_path):
    top = tmp_path / "PolypGen2021_MultiCenterData_v3"
    exp = {}
    for c, stems in (("1", ["100H0050", "100H0051"]), ("2", ["200"])):
        got = _write_set(top / f"data_C{c}" / f"images_C{c}", top / f"data_C{c}" / f"masks_C{c}", stems,
                         ".jpg", ".jpg", mask_name="{}_mask")
        exp.update({f"C{c}/{k}": v for k, v in got.items()})
    seq = top / "sequenceData" / "positive" / "seq1"
    got = _write_set(seq / "images_seq1", seq / "masks_seq1", ["s0"], ".jpg", ".jpg", mask_name="{}_mask")
    exp.update({f"seq1/{k}": v for k, v in got.items()})
    assert detect_layout(tmp_path) == "polypgen" and detect_layout(top) == "polypgen"
    pairs = find_pairs(top)
    assert [p.subset for p in pairs] == ["C1", "C1", "C2", "seq1"]
    _check_pairs(pairs, exp, exact_image=False)


def test_layout_generic_ignores_hidden_and_other_files(tmp_path):
    exp = _write_set(tmp_path / "images", tmp_path / "masks", ["a", "b"], ".png", {"a": ".PNG", "b": ".png"})
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "images" / "._a.png").write_bytes(b"\0\x05\x16\x07 mac resource fork")
    (tmp_path / "masks" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "manifest.csv").write_text("id\n")
    assert detect_layout(tmp_path) == "generic"
    pairs = find_pairs(tmp_path)
    assert all(isinstance(p, Pair) and p.dataset == "generic" for p in pairs)
    _check_pairs(pairs, exp)


def test_layouts_table_lists_every_layout():
    assert list(LAYOUTS)[-1] == "generic" and len(LAYOUTS) == 10
    assert all(isinstance(v, str) and v for v in LAYOUTS.values())


def test_allow_missing_masks(tmp_path):
    _write_set(tmp_path / "images", tmp_path / "masks", ["a"])
    _save(tmp_path / "images" / "b.png", _rgb(5))
    pairs = find_pairs(tmp_path, allow_missing_masks=True)
    assert [(p.id, p.mask is None) for p in pairs] == [("a", False), ("b", True)]
    with pytest.raises(DataError, match="no mask"):
        load_pair(pairs[1])


# --------------------------------------------------------------------------- quirks


def test_jpeg_mask_values_near_0_and_255_binarise_exactly(tmp_path):
    rng = np.random.default_rng(1)
    want = np.zeros((32, 48), bool)
    want[8:24, 16:40] = True
    arr = np.where(want, rng.integers(248, 255, want.shape), rng.integers(1, 8, want.shape)).astype(np.uint8)
    png = _save(tmp_path / "m.png", arr)  # lossless: exactly the 1-7 / 248-254 values
    jpg = tmp_path / "m.jpg"
    Image.fromarray(arr).save(jpg, quality=75)
    dec = np.asarray(Image.open(jpg))
    assert 0 < dec[~want].max() <= 20 and dec[want].min() < 255  # really not binary
    for path in (png, jpg):
        got = read_mask(path)
        assert got.dtype == bool and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert MASK_THRESHOLD == 127


def test_three_channel_and_rgba_masks_use_max_over_colours(tmp_path):
    want = _mask(0)
    white = np.repeat(want[:, :, None].astype(np.uint8) * 255, 3, axis=2)
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = want * 255
    rgba = np.dstack([white, np.full((H, W), 255, np.uint8)])
    for name, arr in (("white.png", white), ("red.png", red), ("rgba.png", rgba)):
        np.testing.assert_array_equal(read_mask(_save(tmp_path / name, arr)), want)
    jpg = tmp_path / "rgb.jpg"
    Image.fromarray(white).save(jpg, quality=90)
    np.testing.assert_array_equal(read_mask(jpg), want)


def test_mask_with_faint_background(tmp_path):
    want = _mask(1)
    arr = np.where(want, 200, 0).astype(np.uint8)
    arr[~want] = np.random.default_rng(0).integers(0, 60, int((~want).sum()))
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "m.png", arr)), want)


def test_grayscale_rgba_and_16bit_images_become_rgb_uint8(tmp_path):
    gray = _rgb(0)[..., 0]
    got = read_image(_save(tmp_path / "g.png", gray))
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    assert all((got[..., c] == gray).all() for c in range(3))

    rgba = np.dstack([_rgb(1), np.full((H, W), 7, np.uint8)])
    np.testing.assert_array_equal(read_image(_save(tmp_path / "a.png", rgba)), rgba[..., :3])

    g16 = (gray.astype(np.uint16) * 257)  # full 16-bit range
    p16 = tmp_path / "g16.png"
    Image.fromarray(g16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    got = read_image(p16)
    assert got.dtype == np.uint8 and (got[..., 0] == gray).all()

    rgb16 = _rgb(2).astype(np.uint16) * 257
    t16 = tmp_path / "rgb16.tif"
    tifffile.imwrite(t16, rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_image(t16), _rgb(2))


def test_tiff_that_pil_cannot_open_is_read_with_tifffile(tmp_path):
    img = _rgb(3)
    path = tmp_path / "1.tif"
    tifffile.imwrite(path, np.moveaxis(img, -1, 0), photometric="minisblack", planarconfig="separate")
    with pytest.raises(Exception):
        with Image.open(path) as im:
            im.load()
    np.testing.assert_array_equal(read_image(path), img)
    mask = np.stack([_mask(0)] * 3).astype(np.uint8) * 255
    mpath = tmp_path / "m.tif"
    tifffile.imwrite(mpath, mask, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(read_mask(mpath), _mask(0))


def test_exif_orientation_applied_to_image_and_mask_alike(tmp_path):
    img, msk = _rgb(4), _mask(4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(img).save(images / "a.png", exif=exif)
    Image.fromarray(msk.astype(np.uint8) * 255).save(masks / "a.png", exif=exif)
    got_img, got_msk = load_pair(find_pairs(tmp_path)[0])
    np.testing.assert_array_equal(got_img, np.rot90(img, k=-1))
    np.testing.assert_array_equal(got_msk, np.rot90(msk, k=-1))


def test_write_png_is_atomic_and_round_trips(tmp_path):
    img, msk = _rgb(5), _mask(5)
    write_png(tmp_path / "sub" / "i.png", img)
    write_png(tmp_path / "sub" / "m.png", msk)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "i.png"), img)
    np.testing.assert_array_equal(read_mask(tmp_path / "sub" / "m.png"), msk)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["i.png", "m.png"]  # no temp left
    with pytest.raises(DataError):
        write_png(tmp_path / "bad.png", np.zeros((4, 4, 2), np.float32))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert len(file_sha256(tmp_path / "sub" / "i.png")) == 64


# --------------------------------------------------------------------------- bad inputs


def _good_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(6, 64, 64)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_zero_byte_file(tmp_path, reader):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError) as ei:
        reader(path)
    assert "empty" in _single_error(ei, path)


@pytest.mark.parametrize("fmt,name", [("JPEG", "t.jpg"), ("PNG", "t.png")])
def test_truncated_jpeg_and_png(tmp_path, fmt, name):
    data = _good_bytes(fmt)
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as ei:
        read_image(path)
    assert "truncated" in _single_error(ei, path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")  # PIL, trying the junk TIFF
def test_corrupt_and_truncated_tiff(tmp_path):
    good = io.BytesIO()
    tifffile.imwrite(good, _rgb(7), photometric="rgb")
    data = good.getvalue()
    for name, content in (("cut.tif", data[: len(data) // 2]), ("junk.tif", data[:8] + b"\xff" * 200),
                          ("notiff.tiff", b"this is not a tiff at all")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError) as ei:
            read_image(path)
        msg = _single_error(ei, path)
        assert "TIFF" in msg and "neither tifffile nor PIL" in msg


def test_not_an_image_and_missing_file(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("hello, I am text")
    with pytest.raises(DataError) as ei:
        read_image(path)
    assert "not an image" in _single_error(ei, path)
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError) as ei:
        read_mask(missing)
    assert "not found" in _single_error(ei, missing)


def test_permission_denied(tmp_path, monkeypatch):
    import polyplib.data.imageio as imageio

    path = _save(tmp_path / "locked.png", _rgb(8))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: chmod cannot lock the file; simulate it
            def deny(file, *args, **kwargs):
                if Path(file) == path:
                    raise PermissionError(13, "Permission denied", str(file))
                return open(file, *args, **kwargs)

            monkeypatch.setattr(imageio, "open", deny, raising=False)
        with pytest.raises(DataError) as ei:
            read_image(path)
        assert "permission" in _single_error(ei, path)
    finally:
        path.chmod(0o644)


def test_size_mismatch_names_both_files(tmp_path):
    img = _save(tmp_path / "images" / "a.png", _rgb(0))
    msk = _save(tmp_path / "masks" / "a.png", np.zeros((H + 2, W), bool))
    with pytest.raises(DataError) as ei:
        load_pair(find_pairs(tmp_path)[0])
    msg = _single_error(ei, img)
    assert str(msk) in msg and f"{W}x{H}" in msg and f"{W}x{H + 2}" in msg


def test_image_without_mask(tmp_path):
    _write_set(tmp_path / "images", tmp_path / "masks", ["a"])
    img = _save(tmp_path / "images" / "b.jpg", _rgb(1))
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path)
    msg = _single_error(ei, img)
    assert "without mask" in msg and str(tmp_path / "masks" / "b") in msg


def test_image_without_mask_etis_says_where_it_looked(tmp_path):
    outer = tmp_path / "ETIS-LaribPolypDB"
    _write_set(outer / "ETIS-LaribPolypDB", outer / "GroundTruth", ["1"], ".tif", ".tif", mask_name="p{}")
    img = _save(outer / "ETIS-LaribPolypDB" / "2.tif", _rgb(2))
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path)
    assert str(outer / "GroundTruth" / "p2") in _single_error(ei, img)


def test_mask_without_image(tmp_path):
    _write_set(tmp_path / "images", tmp_path / "masks", ["a"])
    msk = _save(tmp_path / "masks" / "zz.png", _mask(0))
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path)
    assert "mask without image" in _single_error(ei, msk)


def test_duplicate_stems_name_both_files(tmp_path):
    _write_set(tmp_path / "images", tmp_path / "masks", ["a"], ".jpg")
    dup = _save(tmp_path / "images" / "a.png", _rgb(0))
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path)
    msg = str(ei.value)
    assert str(dup) in msg and str(tmp_path / "images" / "a.jpg") in msg


def test_empty_folder(tmp_path):
    with pytest.raises(DataError) as ei:
        detect_layout(tmp_path)
    assert "empty folder" in _single_error(ei, tmp_path)
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path, "kvasir-seg")
    assert "empty folder" in str(ei.value) and LAYOUTS["kvasir-seg"] in str(ei.value)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path)
    msg = _single_error(ei, tmp_path)
    assert "empty folder: no images found; expected" in msg


def test_wrong_layout_lists_expected_and_found(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError) as ei:
        find_pairs(tmp_path)
    msg = _single_error(ei, tmp_path)
    assert "'labels'" in msg and "'pictures'" in msg
    assert all(name in msg for name in LAYOUTS)
    with pytest.raises(DataError, match="does not look like layout 'cvc-clinicdb'.*'pictures'"):
        find_pairs(tmp_path, "cvc-clinicdb")
    with pytest.raises(DataError, match="folder not found"):
        find_pairs(tmp_path / "absent")


# --------------------------------------------------------------------------- duplicates


def test_find_duplicates_finds_reencoded_copy(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _write_set(images, masks, ["a", "b", "c"], ".jpg", ".png")
    decoded = np.asarray(Image.open(images / "b.jpg").convert("RGB"))
    _save(images / "b_copy.png", decoded)  # lossless re-encoding of the decoded JPEG frame
    _save(masks / "b_copy.png", _mask(1))
    pairs = find_pairs(tmp_path)
    assert content_hash(images / "b.jpg") == content_hash(images / "b_copy.png")
    assert file_sha256(images / "b.jpg") != file_sha256(images / "b_copy.png")
    assert find_duplicates(pairs) == [["b", "b_copy"]]
