"""Stage 01 on small data: prepared pairs, report, duplicates, empty masks, bad input, caching."""

import numpy as np
import pytest
from PIL import Image

from polyplib.data.prepare import report_table
from polyplib.data.stage import run_stage as prepare_data
from polyplib.data.prepared import load_dataset, load_report
from polyplib.data.preprocess import fit
from polyplib.errors import DataError
from polyplib.runs import open_run


def test_phantom_run_prepares_both_domains(tiny_run):
    report = load_report(tiny_run)
    assert set(report["datasets"]) == {"phantom-a", "phantom-b"}
    a, b = report["datasets"]["phantom-a"], report["datasets"]["phantom-b"]
    assert a["pairs"] == 40 and b["pairs"] == 12 and a["role"] == "train" and b["role"] == "transfer"
    assert a["layout"] == "kvasir-seg" and b["layout"] == "cvc-clinicdb"
    assert a["mean_rgb_background"] != b["mean_rgb_background"]
    train = load_dataset(tiny_run)
    img, msk = train.load(train.ids()[0])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and msk.shape == (32, 32) and msk.dtype == bool
    raw = np.asarray(Image.open(train.paths(train.ids()[0])[1]))
    assert set(np.unique(raw)) <= {0, 255}
    counts = train.split["split"].value_counts()
    assert counts["test"] == 10 and counts["train"] == 24 and counts["unused"] == 6
    assert not set(train.ids("train")) & set(train.ids("test"))
    table = report_table(report)
    assert list(table["dataset"]) == ["phantom-a", "phantom-b"] and table["pairs"].tolist() == [40, 12]
    assert report["provenance"]["stage_key"] == tiny_run.stage("01").key


def _write_generic(root, n=6, size=(40, 48), empty=(), duplicate_of=None):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frames = []
    for i in range(n):
        img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        if duplicate_of is not None and i == n - 1:
            img = frames[duplicate_of]
        frames.append(img)
        m = np.zeros(size, np.uint8)
        if i not in empty:
            m[5:5 + 3 * (i + 1), 10:25] = 255
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        Image.fromarray(m).save(root / "masks" / f"f{i}.png")


def _real_run(tmp_path, data, extra=()):
    return open_run("smoke", ["data.source=real", f"data.root={data}", "data.train=mine",
                              "data.datasets={mine: mine}", "data.split.kind=random", "data.split.n_train=3",
                              "data.split.n_test=2", "data.resolution=32", "run.progress=false", *extra],
                    tmp_path / "run")


def test_real_layout_duplicates_and_empty_masks(tmp_path):
    _write_generic(tmp_path / "d" / "mine", n=6, empty=(2,), duplicate_of=0)
    run = _real_run(tmp_path, tmp_path / "d")
    report = prepare_data(run)["datasets"]["mine"]
    assert report["pairs"] == 6 and report["empty_masks"] == 1
    assert report["duplicate_groups"] == [["f0", "f5"]]
    assert any("empty" in p for p in report["problems"]) and any("duplicate" in p for p in report["problems"])
    split = load_dataset(run).split.set_index("id")["split"]
    assert split["f0"] == split["f5"]

    dropped = _real_run(tmp_path, tmp_path / "d", ["data.empty_masks=drop", "data.split.n_train=2"])
    rep = prepare_data(dropped)["datasets"]["mine"]
    assert rep["pairs"] == 5 and rep["dropped_empty"] == ["f2"]
    assert not (tmp_path / "run" / "data" / "mine" / "images" / "f2.png").exists()


def test_bad_pair_names_files_and_keeps_finished_cache(tmp_path):
    _write_generic(tmp_path / "d" / "mine", n=6)
    run = _real_run(tmp_path, tmp_path / "d")
    prepare_data(run)
    before = (tmp_path / "run" / "data" / "dataset_report.json").read_bytes()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "d" / "mine" / "masks" / "f3.png")
    with pytest.raises(DataError) as err:
        prepare_data(run, force=True)
    assert "f3.png" in str(err.value)
    assert (tmp_path / "run" / "data" / "dataset_report.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []
    assert not run.stage("01").is_done()  # the marker is gone, so nothing reads the old data as this config's


def test_missing_training_set_explains_how_to_get_it(tmp_path):
    run = open_run("smoke", ["data.source=real", f"data.root={tmp_path}", "run.progress=false",
                             "data.train=kvasir-seg"], tmp_path / "run")
    with pytest.raises(DataError) as err:
        prepare_data(run)
    assert "Kvasir-SEG" in str(err.value) and "python -m polyplib.data download kvasir-seg" in str(err.value)


@pytest.mark.parametrize("policy", ["stretch", "center-crop", "pad"])
def test_resize_policies_keep_masks_binary_and_aligned(policy):
    img = np.zeros((60, 100, 3), np.uint8)
    mask = np.zeros((60, 100), bool)
    mask[20:40, 40:60] = True
    img[mask] = 200
    out_img, out_mask = fit(img, mask, 32, policy)
    assert out_img.shape == (32, 32, 3) and out_mask.shape == (32, 32) and out_mask.dtype == bool
    assert out_mask.any()
    inside, outside = out_img[out_mask].mean(), out_img[~out_mask].mean()
    assert inside > 150 and outside < 50
    if policy == "pad":
        assert (out_img[:5] == 0).all()  # letterbox rows
    if policy == "center-crop":
        assert out_mask.mean() > mask.mean()  # cropping the sides enlarges the polyp's share


def test_pranet_split_trains_on_traindataset_and_tests_on_seen_subsets(tmp_path):
    root = tmp_path / "d" / "pranet"
    _write_generic(root / "TrainDataset", n=5)
    _write_generic(root / "TestDataset" / "Kvasir", n=3)
    _write_generic(root / "TestDataset" / "CVC-ClinicDB", n=2)
    _write_generic(root / "TestDataset" / "CVC-ColonDB", n=4)
    run = _real_run(tmp_path, tmp_path / "d", ["data.datasets={mine: pranet}", "data.split.kind=pranet"])
    report = prepare_data(run)
    assert set(report["datasets"]) == {"mine", "pranet-cvc-colondb"}
    assert report["datasets"]["mine"]["pairs"] == 10 and report["datasets"]["pranet-cvc-colondb"]["pairs"] == 4
    ds = load_dataset(run)
    assert sorted(ds.ids("test")) == sorted([f"Kvasir/f{i}" for i in range(3)] + ["CVC-ClinicDB/f0", "CVC-ClinicDB/f1"])
    assert sorted(ds.ids("train")) == [f"f{i}" for i in range(5)]
    img, msk = ds.load("Kvasir/f2")
    assert img.shape == (32, 32, 3) and msk.any()
