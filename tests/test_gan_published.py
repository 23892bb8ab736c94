"""Importing the published SinGAN-Seg set: every naming its authors' code writes, mapped through the
loaders' conventions into synthetic/singan-published/ at the run's resolution, with a manifest."""
import numpy as np
import pytest
from PIL import Image


def _pair(h=48, w=40, seed=0, empty=False):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    if not empty:
        mask[h // 4:h // 2, w // 4:w // 2] = 255
    return image, mask


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


@pytest.fixture
def run(tmp_path):
    from polyplib.runs import open_run

    return open_run("smoke", ["data.resolution=32", "run.progress=false"], tmp_path / "run")


def test_per_image_folders_are_imported_with_source_ids(tmp_path, run):
    from polyplib.gan.published import import_singan_seg
    from polyplib.synthetic.folder import read_records

    root = tmp_path / "singan-seg"
    for s, source in enumerate(["cju0qkwl35piu0993l0dewei2", "cju1amqw6p8pw0993d9gc5crl"]):
        for k in range(2):
            image, mask = _pair(seed=10 * s + k, empty=(s == 1 and k == 1))
            _save(root / source / f"img_{k}.png", image)
            if s == 0 and k == 1:   # plt.imsave-style: RGBA image, 3-channel mask with JPEG-like noise
                _save(root / source / f"img_{k}.png", np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]))
                noisy = np.where(mask > 0, 250, 4).astype(np.uint8)
                _save(root / source / f"mask_{k}.png", np.dstack([noisy] * 3))
            else:
                _save(root / source / f"mask_{k}.png", mask)
    ps = import_singan_seg(root, run)
    assert ps.folder == run.path("synthetic", "singan-published")
    records = read_records(ps.folder).sort_values("id").reset_index(drop=True)
    assert len(records) == 4 and list(records["sample_index"]) == [0, 1, 0, 1]
    assert list(records["source_id"]) == ["cju0qkwl35piu0993l0dewei2"] * 2 + ["cju1amqw6p8pw0993d9gc5crl"] * 2
    assert list(records["accepted"].astype(str)) == ["True", "True", "True", "False"]
    assert "empty mask" in records.loc[3, "reason"]
    assert records["original_height"].eq(48).all() and records["height"].eq(32).all()
    assert len(ps) == 3                                           # the manifest lists the accepted pairs
    image, mask = ps.load(ps.ids()[1])
    assert image.shape == (32, 32, 3) and mask.dtype == bool and 0 < mask.mean() < 0.2
    first = {p: p.stat().st_mtime_ns for p in sorted(ps.folder.rglob("*.png"))}
    import_singan_seg(root, run)                                  # same files: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in sorted(ps.folder.rglob("*.png"))} == first


def test_flat_singan_seg_polyp_package_naming(tmp_path, run):
    from polyplib.gan.published import find_published_pairs, import_singan_seg

    root = tmp_path / "generated"
    for source in ("cjuaaa", "cjubbb"):
        for k in range(3):
            image, mask = _pair(seed=k)
            _save(root / f"chk_id_{source}_gen_scale_5_{k}_img.png", image)
            _save(root / f"chk_id_{source}_gen_scale_5_{k}_mask.png", np.dstack([mask] * 3))
    found = find_published_pairs(root)
    assert [(s, k) for _, s, k in found] == [("cjuaaa", 0), ("cjuaaa", 1), ("cjuaaa", 2),
                                             ("cjubbb", 0), ("cjubbb", 1), ("cjubbb", 2)]
    manifest = import_singan_seg(root, run).manifest
    assert len(manifest) == 6 and set(manifest["source_id"]) == {"cjuaaa", "cjubbb"}
    assert manifest["file"].str.startswith("chk_id_").all()


def test_images_and_masks_folders(tmp_path, run):
    from polyplib.gan.published import import_singan_seg

    root = tmp_path / "flat"
    for k in range(3):
        image, mask = _pair(seed=k)
        _save(root / "images" / f"{k:04d}.jpg", image)
        _save(root / "masks" / f"{k:04d}.png", mask)
    manifest = import_singan_seg(root, run).manifest
    assert len(manifest) == 3 and (manifest["source_id"] == "").all()
    assert list(manifest["sample_index"]) == [0, 1, 2]


def test_bad_folders_are_errors_naming_the_problem(tmp_path, run):
    from polyplib.errors import DataError
    from polyplib.gan.published import import_singan_seg

    with pytest.raises(DataError, match="osf.io/xrgz8"):
        import_singan_seg(tmp_path / "missing", run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no SinGAN-Seg pairs found"):
        import_singan_seg(tmp_path / "empty", run)
    image, mask = _pair()
    _save(tmp_path / "orphan" / "src" / "img_0.png", image)
    with pytest.raises(DataError, match="image without mask.*mask_0"):
        import_singan_seg(tmp_path / "orphan", run)
    _save(tmp_path / "sizes" / "src" / "img_0.png", image)
    _save(tmp_path / "sizes" / "src" / "mask_0.png", mask[:20])
    with pytest.raises(DataError, match="size mismatch"):
        import_singan_seg(tmp_path / "sizes", run)
