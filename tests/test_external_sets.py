"""Another generator's pairs imported into a run (``python -m polyplib.synthetic import``), and what the study
then does with them: the checks that name a bad pair, the registration that makes stage 04 measure the set,
the memorisation table, and stage 06 refusing a set that holds held-out test images."""
import cv2
import numpy as np
import pandas as pd
import pytest

from polyplib.data.imageio import read_image, write_png
from polyplib.errors import DataError, StageError


OVERRIDES = ["data.phantom.n_source=40", "data.phantom.n_target=12", "data.split.n_train=24", "data.split.n_test=10",
             "data.resolution=32", "run.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny phantom run of its own (the imports below write into it), stage 01 done."""
    from polyplib.data.stage import run_stage
    from polyplib.runs import open_run

    run = open_run("smoke", OVERRIDES, tmp_path_factory.mktemp("external-run"))
    run_stage(run)
    return run


def _pairs(run, split):
    from polyplib.data.prepared import load_dataset

    ds = load_dataset(run)
    return [(i, image, mask) for i in ds.ids(split) for image, mask in [ds.load(i)] if mask.any()]   # with a polyp


def write_folder(folder, pairs, manifest: bool = True, size: int | None = None):
    """images/ + masks/ (PNG) and, optionally, a manifest naming each pair's source image."""
    rows = []
    for k, (sid, image, mask) in enumerate(pairs):
        if size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        name = f"{sid}_x{k}"
        write_png(folder / "images" / f"{name}.png", image)
        write_png(folder / "masks" / f"{name}.png", mask)
        rows.append({"file": name, "source_id": sid, "sample_index": 0})
    if manifest:
        pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def test_a_folder_of_pairs_becomes_a_set_of_the_run_at_its_resolution(run, tmp_path):
    from polyplib.synthetic.catalogue import imported_label, set_dir
    from polyplib.synthetic.external import import_folder
    from polyplib.synthetic.folder import read_manifest

    pairs = _pairs(run, "train")[:6]
    folder = write_folder(tmp_path / "other", pairs, size=48)        # another generator's size: resized to 32
    for stage in ("03", "04", "06"):
        run.stage(stage).mark_done(0.0)
    imported = import_folder(run, folder, "other-gen", label="Other generator")
    assert len(imported) == 6                                      # stages 04 and 06 will measure and use it
    assert [run.stage(s).is_done() for s in ("03", "04", "06")] == [True, False, False]
    manifest = read_manifest(set_dir(run, "other-gen"))
    assert sorted(manifest["source_id"]) == sorted(sid for sid, _, _ in pairs)   # sources from its manifest
    assert imported_label(set_dir(run, "other-gen")) == "Other generator"
    for row in manifest.to_dict("records"):
        image, mask = imported.load(row["id"])
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        src = read_image(folder / "images" / f"{row['file']}.png")
        expected = cv2.resize(src, (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1   # data.resize "stretch", as real data
    again = import_folder(run, folder, "other-gen", label="Other generator")   # same files: nothing rewritten
    assert again.manifest.equals(imported.manifest)


def test_a_set_at_the_runs_resolution_is_imported_bit_for_bit(run, tmp_path):
    from polyplib.synthetic.external import import_folder

    pairs = _pairs(run, "train")[6:10]
    folder = write_folder(tmp_path / "same", pairs, manifest=False)
    imported = import_folder(run, folder, "same-size")
    assert set(imported.manifest["source_id"]) == {""}          # no manifest: no source (dealt out like the GAN's)
    for sid, image, mask in pairs:
        pid = next(i for i in imported.manifest["id"] if i.startswith(f"{sid}_"))
        got_image, got_mask = imported.load(pid)
        assert np.array_equal(got_image, image) and np.array_equal(got_mask, mask)


@pytest.mark.parametrize("fault, needle", [
    ("size", "size mismatch"), ("empty", "is empty"), ("grey", "not binary"), ("unreadable", "cannot")])
def test_one_bad_pair_is_one_error_naming_that_pair_and_nothing_is_imported(run, tmp_path, fault, needle):
    from polyplib.synthetic.catalogue import set_dir
    from polyplib.synthetic.external import import_folder

    pairs = _pairs(run, "train")[:5]
    folder = write_folder(tmp_path / fault, pairs, manifest=False)
    bad = f"{pairs[2][0]}_x2"
    if fault == "size":
        write_png(folder / "masks" / f"{bad}.png", np.zeros((20, 32), bool))
    elif fault == "empty":
        write_png(folder / "masks" / f"{bad}.png", np.zeros((32, 32), bool))
    elif fault == "grey":
        write_png(folder / "masks" / f"{bad}.png", read_image(folder / "images" / f"{bad}.png")[..., 0])
    else:
        (folder / "images" / f"{bad}.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        import_folder(run, folder, f"bad-{fault}")
    message = str(err.value)
    assert bad in message and needle in message.lower() and "1 bad pair," in message
    assert all(f"{sid}_x{k}" not in message for k, (sid, _, _) in enumerate(pairs) if k != 2)
    assert not set_dir(run, f"bad-{fault}").exists()


def test_duplicate_images_and_the_study_s_own_names_are_refused(run, tmp_path):
    from polyplib.synthetic.external import import_folder

    pairs = _pairs(run, "train")[:3]
    folder = write_folder(tmp_path / "dup", pairs + [pairs[0]], manifest=False)
    with pytest.raises(DataError, match="the same image 2 times"):
        import_folder(run, folder, "dups")
    ok = write_folder(tmp_path / "ok", pairs, manifest=False)
    for name in ("diff", "gan", "uncond-ddim-25", "budget-x", "bad name"):
        with pytest.raises(DataError, match="set name"):
            import_folder(run, ok, name)


def test_the_command_line_imports_into_an_existing_run_folder_and_says_errors_in_one_line(run, tmp_path, capsys):
    from polyplib.synthetic.__main__ import main

    folder = write_folder(tmp_path / "cli", _pairs(run, "train")[:4])
    assert main(["import", str(folder), "--name", "cli-set", "--run-dir", str(run.dir)]) == 0
    assert (run.dir / "synthetic" / "cli-set" / "manifest.csv").is_file()
    assert "cli-set: 4 pairs" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "missing"), "--name", "x", "--run-dir", str(run.dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and len(err.strip().splitlines()) == 1
    # not while a run holds the folder: it reads the sets; nothing is written
    from polyplib.runlock import run_folder_lock

    with run_folder_lock(run.dir):
        assert main(["import", str(folder), "--name", "while-busy", "--run-dir", str(run.dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in use by another run" in err and str(run.dir) in err
    assert not (run.dir / "synthetic" / "while-busy").exists()


def test_a_set_holding_held_out_test_images_is_refused_for_segmentation_naming_them(run, tmp_path):
    from polyplib.segmentation.study import _Data
    from polyplib.synthetic.external import find_external, import_pairs

    train, test = _pairs(run, "train"), _pairs(run, "test")
    rng = np.random.default_rng(0)
    mixed = [(sid, image, mask) for sid, image, mask in train[:8]]
    leaked = []
    for sid, image, mask in test[:2]:           # a flipped, slightly noised copy of a test image, said to be of train[0]
        noisy = np.clip(image[:, ::-1].astype(int) + rng.normal(0, 2, image.shape).round().astype(int), 0, 255)
        mixed.append((train[0][0], noisy.astype(np.uint8), mask[:, ::-1]))
        leaked.append(f"{train[0][0]}_x{len(mixed) - 1}")
    import_pairs(run, "leaky", find_external(write_folder(tmp_path / "leaky", mixed)))
    data = _Data(run)
    with pytest.raises(StageError) as err:
        data.synthetic_pool("leaky")
    message = str(err.value)
    assert "2 copied" in message and all(pid in message for pid in leaked)
    assert all(f"test image {sid}" in message for sid, _, _ in test[:2])
    import_pairs(run, "clean", find_external(write_folder(tmp_path / "clean", train[:8])))
    assert len(data.synthetic_pool("clean")) == 8          # copies of training images are not a leak


def test_the_memorisation_table_flags_copied_training_polyps_and_counts_leaked_test_images(run, tmp_path):
    """Stage 04's table on a set of perturbed training images plus two test images: every pair memorised,
    the two test images counted, the held-out test images themselves mostly not flagged."""
    from polyplib.config import load_config
    from polyplib.features.inception import InceptionFeatures
    from polyplib.features.inception_weights import resolve_fid_weights
    from polyplib.metrics.copies import memorisation_table
    from polyplib.metrics.stage import discover_sets
    from polyplib.runs import Run
    from polyplib.synthetic.external import find_external, import_pairs

    train, test = _pairs(run, "train"), _pairs(run, "test")
    rng = np.random.default_rng(1)
    copies = []
    for k, (sid, image, mask) in enumerate(train):
        flip = (slice(None), slice(None, None, -1)) if k % 2 else (slice(None, None, -1), slice(None))
        noisy = np.clip(image[flip].astype(int) + rng.normal(0, 2, image.shape).round().astype(int), 0, 255)
        copies.append((sid, noisy.astype(np.uint8), mask[flip]))
    import_pairs(run, "copies", find_external(write_folder(tmp_path / "copies", copies + test[:2], manifest=False)))
    extractor = InceptionFeatures(resolve_fid_weights(None, run.cfg.metrics.cache_dir), device="cpu")
    sets = {k: v for k, v in discover_sets(run, 1, ["copies"]).items() if k == "copies"}
    few = Run(load_config("smoke", [*OVERRIDES, "metrics.min_images=2"]), run.dir)    # shares on 10-26 images
    table = memorisation_table(few, extractor, sets).set_index("method")
    assert table.at["copies", "pairs"] == len(train) + 2
    assert table.at["copies", "memorised"] >= len(train)             # every perturbed training polyp
    assert table.at["copies", "leaked_test_images"] == 2
    assert table.at["real-test", "leaked_test_images"] == 0 and table.at["real-test", "memorised_share"] <= 0.2
    per_pair = pd.read_csv(run.path("metrics", "memorisation", "copies.csv"), dtype=str)
    assert set(per_pair.loc[per_pair["leaked"] == "True", "nearest_test"]) == {sid for sid, _, _ in test[:2]}
