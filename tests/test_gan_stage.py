"""Stage 05 end to end at 64 px: GAN + SinGAN-Seg trained and sampled, every generator's compute
accounted, FID / MS-SSIM with stage 04's functions, the comparison table, the cache."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from polyplib import paper


@pytest.fixture(scope="module")
def stage05():
    """Register stage 05 for these tests if the project has not registered it (yet)."""
    from polyplib import stages

    with pytest.MonkeyPatch.context() as mp:
        if not any(s.id == "05" for s in stages.STAGES):
            upstream = tuple(s.id for s in stages.STAGES if s.id in ("01", "02", "03"))
            mp.setattr(stages, "STAGES", stages.STAGES + (
                stages.Stage("05", "gan", "05_gan.ipynb", "GAN comparison", ("gan", "metrics"), upstream),))
        yield


@pytest.fixture(scope="module")
def run(stage05, tmp_path_factory):
    """A 64 px phantom run with stage 01 done, fake stage-02 records and a 'diff' set standing in for stage 03.

    A GAN trained for 4 steps draws near-full masks; ``sampling.max_coverage=1.0`` keeps them so that
    the GAN set has pairs to measure (the rejection rule itself is tested with the sampling stage)."""
    from polyplib.data.imageio import write_png
    from polyplib.data.phantom import render_frame
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.data.prepared import load_dataset
    from polyplib.data.preprocess import fit
    from polyplib.runs import open_run

    cache = str(tmp_path_factory.getbasetemp() / "polyplib-metrics-cache")
    run = open_run("smoke", [
        "data.phantom.n_source=24", "data.phantom.n_target=4", "data.split.n_train=12", "data.split.n_test=6",
        "data.resolution=64", "run.progress=false", "run.device=cpu", f"metrics.cache_dir={cache}",
        "metrics.fid_sets=2", "metrics.msssim_pairs=20", "gan.base_channels=8", "gan.z_dim=16", "gan.batch_size=4",
        "gan.max_steps=4", "gan.checkpoint_every=2", "sampling.max_coverage=1.0", "gan.n_samples=6",
        "gan.mixed_precision=no", "metrics.min_images=3",   # SinGAN-Seg's sets (<= 2 images) stay below it
        "run.torch_threads=1", "gan.singan_images=2", "gan.singan_scales=2", "gan.singan_iters=4",
        "gan.singan_channels=8", "gan.singan_samples_per_image=2"], tmp_path_factory.mktemp("gan-stage"))
    prepare_data(run)
    train = load_dataset(run).ids("train")
    for name, seconds in (("cluster-00", 12.0), ("full", 30.0)):
        folder = run.path("models", "ddpm", name)
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text(json.dumps({"finished": True, "steps": 10, "pairs": 6,
                                                             "seconds": seconds}))
        pd.DataFrame({"step": range(1, 11), "loss": 0.1, "images": [2 * i for i in range(1, 11)],
                      "elapsed_s": [seconds * i / 10 for i in range(1, 11)]}).to_csv(folder / "loss.csv", index=False)
    rows = []
    for k in range(2):
        for i, sid in enumerate(train):
            image, mask = fit(*render_frame("A", 5 + k, i, scale=0.25), 64, "stretch")
            name = f"{sid}_s{k}"
            write_png(run.path("synthetic", "diff", "images", f"{name}.png"), image)
            write_png(run.path("synthetic", "diff", "masks", f"{name}.png"), mask)
            rows.append({"id": name, "file": name, "source_id": sid, "sample_index": k, "accepted": True, "seed": i})
    pd.DataFrame(rows).to_csv(run.path("synthetic", "diff", "manifest.csv"), index=False)
    run.path("synthetic", "summary.json").write_text(json.dumps({"device": "cpu", "methods": [
        {"method": "diff", "pairs": len(rows), "nfe_per_pair": 20.0, "seconds_per_pair": 0.5}]}))
    return run


@pytest.fixture(scope="module")
def tables(run):
    from polyplib.gan.stage import run_stage as run_comparison

    return run_comparison(run)


def test_stage_writes_every_table_with_provenance(tables, run):
    from polyplib.gan.stage import TABLES

    assert set(tables) == set(TABLES)
    for name in TABLES:
        saved = json.loads(run.path("results", f"{name}.json").read_text())
        assert saved["provenance"]["stage"] == "05"
    assert (run.path("synthetic", "gan", "manifest.csv")).exists() and run.path("synthetic", "singan").is_dir()
    record = json.loads(run.path("metrics", "gan_comparison.json").read_text())
    assert len(record["settings"]["weights"]["sha256"]) == 64
    assert record["settings"]["diffusion_sets_from"] == "stage 05"        # stage 04 not run here


def test_comparison_has_this_runs_metrics_and_measured_compute(tables):
    table = tables["05_comparison"].set_index("method")
    for method in ("gan", "diff"):
        assert table.loc[method, "status"] == "ok", method
        assert np.isfinite(table.loc[method, "fid_mean"]) and table.loc[method, "fid_mean"] > 0
        assert 0 < table.loc[method, "msssim_mean"] < 1
    for method in ("gan", "singan", "diff"):
        assert table.loc[method, "train_s_measured"] > 0 and table.loc[method, "paper_scale_h_extrapolated"] > 0
    assert table.loc["diff", "train_s_measured"] == pytest.approx(12.0)
    assert table.loc["diff", "n_sets"] == 2 and table.loc["diff", "n_images"] == "12/12"
    # SinGAN-Seg after a few iterations: one set per sample index, 2 sources each, below metrics.min_images = 3:
    # 'too few images' with its n and no FID (none accepted at all: 'empty')
    synthetic = tables["05_synthetic_sets"].set_index("method")
    assert synthetic.loc["singan", "pairs"] == 4
    if int(synthetic.loc["singan", "accepted"]) == 0:
        assert table.loc["singan", "status"] == "empty"
    else:
        assert table.loc["singan", "status"] == "too few images" and np.isnan(table.loc["singan", "fid_mean"])
        assert re.fullmatch(r"too few images \(n = [0-2] < 3\)", table.loc["singan", "fid (mean ± sd)"])
    assert table.loc["full-diff", "status"] == "absent" and np.isnan(table.loc["full-diff", "fid_mean"])
    assert table.loc["real", "fid_mean"] > 0 and table.loc["diff", "fid_paper_reference"] == paper.fid("diff")
    compute = tables["05_compute"].set_index("item")
    assert {"ddpm-cluster", "ddpm-full", "gan", "singan", "diff", "gan-sample", "singan-sample"} <= set(compute.index)
    assert compute.loc["gan", "measured_s"] == pytest.approx(tables["05_training"].iloc[0]["seconds"], abs=1e-3)
    training = tables["05_training"]
    assert list(training["model"])[0] == "gan" and len(training) == 3 and (training["seconds"] > 0).all()


def test_second_call_is_served_from_the_cache(tables, run, capsys):
    from polyplib.gan.stage import run_stage as run_comparison

    again = run_comparison(run)
    assert "cached results" in capsys.readouterr().out
    pd.testing.assert_series_equal(again["05_comparison"]["fid_mean"], tables["05_comparison"]["fid_mean"],
                                   check_names=False)


def test_figures_render_and_save(tables, run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polyplib.gan import figures
    from polyplib.plots import save_figure

    made = {
        "05_side_by_side": figures.side_by_side(run, n=4),
        "05_singan": figures.singan_figure(run, n_images=2, n_samples=2),
        "05_pyramid": figures.pyramid_figure(run),
        "05_gan_loss": figures.gan_loss_figure(run),
        "05_fid_compute": figures.fid_compute_figure(tables["05_comparison"]),
        "05_compute": figures.compute_figure(tables["05_compute"]),
    }
    for name, fig in made.items():
        paths = save_figure(fig, run, name)
        assert all(p.exists() and p.stat().st_size > 0 for p in paths)
        plt.close(fig)
    singan_rows = int(tables["05_synthetic_sets"].set_index("method").loc["singan", "accepted"] > 0)
    assert len(made["05_side_by_side"].axes) == (3 + singan_rows) * 4   # real, diff, gan (+ singan if any accepted)
