"""SinGAN-Seg of stage 05: trains on one image pair at 2-3 scales, samples have the source's size and a
binarisable mask, the set is written with source ids in stage 03's layout, reproducibly."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

OVERRIDES = [
    "data.phantom.n_source=30", "data.phantom.n_target=4", "data.split.n_train=16", "data.split.n_test=6",
    "data.resolution=32", "run.progress=false", "run.device=cpu", "run.torch_threads=1",
    "gan.singan_images=2", "gan.singan_scales=3", "gan.singan_iters=4", "gan.singan_channels=8",
    "gan.singan_samples_per_image=3",
]


def test_pyramid_sizes_are_geometric_and_end_at_the_image_size():
    from polyplib.gan.singan import pyramid_sizes

    assert pyramid_sizes(32, 32, 3) == [(18, 18), (24, 24), (32, 32)]
    sizes = pyramid_sizes(256, 256, 8)
    assert sizes[-1] == (256, 256) and sizes[0] == (34, 34)
    assert all(a[0] < b[0] for a, b in zip(sizes, sizes[1:]))
    assert pyramid_sizes(64, 64, 8)[0] == (12, 12)              # never below 12 px
    assert pyramid_sizes(48, 80, 2) == [(36, 60), (48, 80)]     # not square: both sides scale


def test_singan_trains_on_one_pair_and_samples_at_its_size():
    from polyplib.data.phantom import render_frame
    from polyplib.data.preprocess import fit
    from polyplib.gan.singan import SinGANSettings, train_singan
    from polyplib.synthetic.postprocess import PostProcess, clean_mask

    torch.set_num_threads(1)
    image, mask = fit(*render_frame("A", 0, 3, scale=0.4), 40, "stretch")
    image, mask = image[:, :36], mask[:, :36]                   # 40 x 36: not square, not a power of two
    model = train_singan(image, mask, SinGANSettings(scales=2, iters=6, channels=8), seed=1)
    assert [tuple(s) for s in model.sizes][-1] == (40, 36) and len(model.generators) == 2
    assert model.amps[0] == 1.0 and 0 < model.amps[1] < 1       # 0.1 x the RMSE left by the coarser scale
    assert model.info["seconds"] > 0 and np.isfinite(model.info["reconstruction_rmse"])
    images, raws = model.sample([7, 8, 9])
    assert images.shape == (3, 40, 36, 3) and images.dtype == np.uint8
    assert raws.shape == (3, 40, 36) and raws.dtype == np.uint8
    post = PostProcess(opening_px=0, min_component_fraction=0.0, max_coverage=1.0)
    cleaned = clean_mask(raws[0], post)
    assert cleaned.dtype == bool and cleaned.shape == (40, 36)  # the 4th channel binarises at 127
    again, raws_again = model.sample([7, 8, 9])
    assert np.array_equal(again, images) and np.array_equal(raws_again, raws)
    assert not np.array_equal(images[0], images[1])             # different seeds, different samples


def test_singan_model_round_trips_through_disk(tmp_path):
    from polyplib.data.phantom import render_frame
    from polyplib.data.preprocess import fit
    from polyplib.gan.singan import SinGANModel, SinGANSettings, train_singan

    torch.set_num_threads(1)
    image, mask = fit(*render_frame("A", 0, 5, scale=0.4), 24, "stretch")
    model = train_singan(image, mask, SinGANSettings(scales=2, iters=2, channels=4), seed=0)
    model.save(tmp_path / "singan.pt")
    loaded = SinGANModel.load(tmp_path / "singan.pt")
    assert loaded.sizes == model.sizes and loaded.amps == model.amps
    a, b = model.sample([3]), loaded.sample([3])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.fixture(scope="module")
def singan_run(tmp_path_factory):
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.gan.singan import sample_all, train_all
    from polyplib.runs import open_run

    run = open_run("smoke", OVERRIDES, tmp_path_factory.mktemp("singan"))
    prepare_data(run)
    table = train_all(run)
    return run, table, sample_all(run)


def test_singan_set_has_source_ids_measured_cost_and_stage03_layout(singan_run):
    from polyplib.data.prepared import load_dataset
    from polyplib.gan.singan import singan_sources
    from polyplib.synthetic.folder import read_records

    run, table, summary = singan_run
    sources = singan_sources(run)
    assert len(sources) == 2 and set(sources) <= set(load_dataset(run).ids("train"))
    assert singan_sources(run) == sources                        # a seeded choice
    assert list(table["source_id"]) == sources and (table["status"] == "trained").all()
    assert (table["seconds"] > 0).all() and (table["scales"] == 3).all() and (table["iters_per_scale"] == 4).all()
    for path in table["path"]:
        state = json.loads((Path(path) / "train_state.json").read_text())
        assert state["finished"] and state["seconds_cumulative"] and "cpu" in state["device"]
    records = read_records(run.path("synthetic", "singan"))
    assert len(records) == 6 == summary["pairs"]
    assert sorted(records["source_id"].unique()) == sorted(sources)
    assert sorted(records["sample_index"].unique()) == [0, 1, 2]
    assert records["seed"].nunique() == 6 and records["height"].eq(32).all()
    assert json.loads(run.path("synthetic", "singan", "summary.json").read_text())["pairs"] == 6


def test_singan_models_are_reused_and_samples_are_reproducible(singan_run):
    from polyplib.gan.singan import sample_all, train_all

    run, _, _ = singan_run
    folder = run.path("synthetic", "singan")
    before = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    assert (train_all(run)["status"] == "cached").all()
    sample_all(run, force=True)
    after = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    assert before == after and len(before) == 12                 # 6 pairs x (image + mask), accepted or rejected
