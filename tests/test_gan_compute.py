"""Compute accounting of stage 05 on a run folder with fake but structurally correct stage-02/03/05
records: the arithmetic, resumed DDPMs, labelling of measured vs extrapolated vs paper numbers, and a
comparison table made of this run's numbers only."""
import json

import numpy as np
import pandas as pd
import pytest

from polyplib import paper


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, pd.DataFrame):
        obj.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _loss(steps, elapsed, batch=2):
    return pd.DataFrame({"step": steps, "loss": 0.1, "ema_decay": 0.9, "lr": 1e-4,
                         "images": np.asarray(steps) * batch, "elapsed_s": elapsed})


@pytest.fixture
def run(tmp_path):
    from polyplib.runs import open_run

    run = open_run("smoke", ["run.progress=false"], tmp_path / "run")
    ddpm = run.path("models", "ddpm")
    steps = np.arange(1, 101)
    # cluster-00: one session, 20 s, 200 training images
    _write(ddpm / "cluster-00" / "train_state.json", {"finished": True, "steps": 100, "pairs": 5, "seconds": 20.0})
    _write(ddpm / "cluster-00" / "loss.csv", _loss(steps, steps * 0.2))
    # cluster-01: killed at step 40 and resumed; train_state holds the last session only (7 s)
    elapsed = np.where(steps <= 40, steps * 0.1, 0.5 + (steps - 40) * 0.1)
    _write(ddpm / "cluster-01" / "train_state.json", {"finished": True, "steps": 100, "pairs": 4, "seconds": 7.0})
    _write(ddpm / "cluster-01" / "loss.csv", _loss(steps, elapsed))
    # cluster-02: unfinished (no train_state "finished") -> not counted
    _write(ddpm / "cluster-02" / "loss.csv", _loss(steps[:10], steps[:10] * 0.1))
    # full: no loss.csv; batch from its config.yaml
    _write(ddpm / "full" / "train_state.json", {"finished": True, "steps": 100, "pairs": 9, "seconds": 50.0})
    _write(ddpm / "full" / "config.yaml", "ddpm:\n  batch_size: 2\n  gradient_accumulation_steps: 1\n")
    _write(run.path("run_meta.json"), {"device": {"processor": "x86_64", "torch_threads": 2, "cpu_count": 2,
                                                  "cuda_available": False}})
    _write(run.path("synthetic", "summary.json"), {"device": "cpu", "methods": [
        {"method": "diff", "pairs": 10, "nfe_per_pair": 50.0, "seconds_per_pair": 2.0},
        {"method": "mkl-diff", "pairs": 10, "nfe_per_pair": 0.0, "seconds_per_pair": 0.003},
        {"method": "styled-diff", "pairs": 10, "nfe_per_pair": 0.0, "seconds_per_pair": 0.01},
        {"method": "uncond-ddim-4", "pairs": 3, "nfe_per_pair": 4.0, "seconds_per_pair": 0.5}]})
    _write(run.path("models", "gan", "train_state.json"), {
        "finished": True, "steps": 50, "images": 400, "batch_size": 8, "seconds": 40.0, "seconds_cumulative": True,
        "sessions": 2, "device": "cpu (1 torch threads, 2 cores)"})
    _write(run.path("synthetic", "gan", "summary.json"), {"pairs": 20, "seconds_total": 0.2, "device": "cpu (gan)"})
    from polyplib.gan.singan import model_key

    for name, seconds in (("a", 6.0), ("b", 9.0), ("old", 99.0)):
        key = model_key(run.cfg, name) if name != "old" else "of-another-configuration"
        _write(run.path("models", "singan", name, "train_state.json"), {
            "finished": True, "key": key, "file": name, "source_id": name, "scales": 3, "iters_per_scale": 10,
            "seconds": seconds, "device": "cpu (singan)"})
    _write(run.path("synthetic", "singan", "summary.json"), {"pairs": 6, "seconds_total": 0.6, "device": "cpu"})
    return run


def test_resumed_ddpm_sessions_are_added_from_the_loss_log():
    from polyplib.gan.compute import training_seconds

    steps = np.arange(1, 11)
    one = pd.DataFrame({"step": steps, "elapsed_s": steps * 1.0})
    assert training_seconds({"seconds": 10.5}, one) == (10.5, 1)
    two = pd.DataFrame({"step": steps, "elapsed_s": [1, 2, 3, 4, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]})
    assert training_seconds({"seconds": 6.0}, two) == (4 + 6.0, 2)
    three = pd.DataFrame({"step": steps, "elapsed_s": [1, 2, 0.3, 0.6, 0.9, 0.2, 0.4, 0.6, 0.8, 1.0]})
    assert training_seconds({"seconds": 1.1}, three) == pytest.approx((2 + 0.9 + 1.1, 3))
    # the GAN's and SinGAN-Seg's seconds already cover every session
    assert training_seconds({"seconds": 6.0, "seconds_cumulative": True, "sessions": 2}, two) == (6.0, 2)


def test_accounting_arithmetic_and_labels(run):
    from polyplib.config import load_config
    from polyplib.gan.compute import compute_table, ddpm_models
    from polyplib.sampling.repaint import count_evaluations

    models = ddpm_models(run).set_index("model")
    assert list(models.index) == ["cluster-00", "cluster-01", "full"]           # unfinished cluster-02 left out
    assert models.loc["cluster-01", "seconds"] == pytest.approx(4.0 + 7.0)
    assert models.loc["cluster-01", "sessions"] == 2 and models.loc["full", "images"] == 200
    assert "from run_meta.json" in models.loc["full", "device"]

    paper = load_config("paper")
    table = compute_table(run, paper).set_index("item")
    assert list(table.index) == ["ddpm-cluster", "ddpm-full", "gan", "singan", "diff", "mkl-diff", "styled-diff",
                                 "gan-sample", "singan-sample"]               # unconditional sets are not a method here
    c = table.loc["ddpm-cluster"]
    assert c["models"] == 2 and c["measured_s"] == pytest.approx(31.0)
    assert c["s_per_unit"] == pytest.approx(31.0 / 400)
    assert c["paper_models"] == paper.clustering.k == 20 and c["paper_work_per_model"] == 110_000
    assert c["extrapolated_s"] == pytest.approx(31.0 / 400 * 110_000 * 20)
    assert c["extrapolated_h"] == pytest.approx(c["extrapolated_s"] / 3600)
    assert "110,000 steps x batch 1" in c["formula"] and "x 20 model(s)" in c["formula"]
    assert "16 h" in c["paper_reported"] and "1 resumed" in c["note"]
    f = table.loc["ddpm-full"]
    assert f["extrapolated_s"] == pytest.approx(50.0 / 200 * 110_000) and f["paper_models"] == 1
    g = table.loc["gan"]
    assert g["measured_s"] == 40.0
    assert g["extrapolated_s"] == pytest.approx(0.1 * paper.gan.max_steps * paper.gan.batch_size)
    s = table.loc["singan"]
    assert s["measured_s"] == 15.0 and s["s_per_unit"] == pytest.approx(15.0 / 60)
    assert s["extrapolated_s"] == pytest.approx(0.25 * paper.gan.singan_scales * paper.gan.singan_iters * 1000)
    nfe = count_evaluations(200, 10, 5, 80)
    d = table.loc["diff"]
    assert d["measured_s"] == pytest.approx(20.0) and d["s_per_unit"] == pytest.approx(20.0 / 500)
    assert d["extrapolated_s"] == pytest.approx(20.0 / 500 * nfe * 348 * 3)
    assert table.loc["styled-diff", "extrapolated_s"] == pytest.approx(0.01 * 348 * 3)
    assert "A6000" in table.loc["styled-diff", "paper_reported"]
    assert table.loc["mkl-diff", "paper_reported"] == "" and "not a paper step" in table.loc["mkl-diff", "note"]
    assert table.loc["singan-sample", "extrapolated_s"] == pytest.approx(0.1 * 10_000)
    assert table.loc["gan-sample", "device"] == "cpu (gan)"
    assert table["basis"].str.contains("extrapolated").all() and table["basis"].str.contains("ignores GPU").all()
    assert (table["measured_s"] > 0).all()


def _metrics():
    fid = pd.DataFrame([
        {"method": "real-halves", "label": "Real vs real", "status": "ok", "n_sets": 2, "n_images": "8 vs 8",
         "fid_mean": 5.0, "fid_sd": 1.0, "kid_mean": 0.001, "computed_in": "stage 05", "note": "reference"},
        {"method": "gan", "label": "4-channel GAN", "status": "ok", "n_sets": 1, "n_images": "20",
         "fid_mean": 150.0, "fid_sd": np.nan, "kid_mean": 0.2, "computed_in": "stage 05", "note": ""},
        {"method": "singan", "label": "SinGAN-Seg (trained here, N = 2 source images)", "status": "ok", "n_sets": 3,
         "n_images": "2/2/2",
         "fid_mean": 210.0, "fid_sd": 12.0, "kid_mean": 0.3, "computed_in": "stage 05", "note": ""},
        {"method": "diff", "label": "Diff", "status": "ok", "n_sets": 3, "n_images": "10/10/10",
         "fid_mean": 80.0, "fid_sd": 4.0, "kid_mean": 0.05, "computed_in": "stage 04 (results/04_fid.csv)",
         "note": ""},
        {"method": "styled-diff", "label": "Styled-Diff", "status": "ok", "n_sets": 3, "n_images": "10/10/10",
         "fid_mean": 90.0, "fid_sd": 5.0, "kid_mean": 0.06, "computed_in": "stage 04 (results/04_fid.csv)",
         "note": ""},
        {"method": "mkl-diff", "label": "Diff + colour match (MKL only)", "status": "ok", "n_sets": 3,
         "n_images": "10/10/10", "fid_mean": 85.0, "fid_sd": 5.0, "kid_mean": 0.055,
         "computed_in": "stage 04 (results/04_fid.csv)", "note": ""},
        {"method": "full-diff", "label": "Full-Diff", "status": "absent", "n_sets": 0, "note": "no folder"},
        {"method": "full-styled-diff", "label": "Full-Styled-Diff", "status": "absent", "n_sets": 0, "note": "no folder"}])
    ms = pd.DataFrame([{"method": m, "msssim_mean": v, "msssim_sd": 0.01} for m, v in
                       (("real", 0.15), ("gan", 0.4), ("singan", 0.5), ("diff", 0.2), ("styled-diff", 0.21))])
    # the paper columns as stages 04/05 write them: like for like (SinGAN-Seg trained here on 2 images has none)
    fid["paper_fid"] = [paper.fid(paper.like_for_like(m, 2)) for m in fid["method"]]
    fid["resize"] = fid["status"].map({"ok": "clean-fid: PIL bicubic to 299 px"})    # NaN for absent rows
    ms["paper_msssim"] = [paper.msssim(paper.like_for_like(m, 2)) for m in ms["method"]]
    return fid, ms


def test_comparison_table_is_this_runs_numbers_with_paper_columns_apart(run):
    from polyplib.gan.stage import comparison_table
    from polyplib.gan.compute import compute_table

    fid, ms = _metrics()
    table = comparison_table(fid, ms, compute_table(run)).set_index("method")
    assert list(table.index) == ["real", "real-test", "singan", "singan-published", "gan", "diff", "full-diff",
                                 "mkl-diff", "mkl-full-diff", "styled-diff", "full-styled-diff"]
    # this run's numbers, unchanged
    assert table.loc["gan", "fid_mean"] == 150.0 and np.isnan(table.loc["gan", "fid_sd"])
    assert table.loc["gan", "fid (mean ± sd)"] == "150.0 (one set)"
    assert table.loc["diff", "fid (mean ± sd)"] == "80.0 ± 4.0" and table.loc["diff", "msssim_mean"] == 0.2
    assert table.loc["diff", "fid_resize"].startswith("clean-fid") and table.loc["full-diff", "fid_resize"] == ""
    assert table.loc["real", "fid_mean"] == 5.0 and table.loc["real", "msssim_mean"] == 0.15
    assert table.loc["diff", "metrics_from"].startswith("stage 04")
    # measured compute of this run
    assert table.loc["diff", "train_s_measured"] == pytest.approx(31.0)
    assert table.loc["diff", "generate_s_measured"] == pytest.approx(20.0)
    assert table.loc["styled-diff", "generate_s_measured"] == pytest.approx(20.1)
    assert table.loc["gan", "train_s_measured"] == 40.0 and table.loc["gan", "generate_s_measured"] == 0.2
    assert table.loc["singan", "train_s_measured"] == 15.0
    assert table.loc["full-diff", "train_s_measured"] == 50.0
    assert np.isnan(table.loc["full-diff", "generate_s_measured"])
    assert np.isnan(table.loc["full-diff", "paper_scale_h_extrapolated"])     # its set was never generated
    assert "not generated in this run" in table.loc["full-diff", "extrapolation"]
    assert "x86_64" in table.loc["diff", "device_measured"]
    assert table.loc["diff", "paper_scale_h_extrapolated"] > table.loc["diff", "train_s_measured"] / 3600
    assert "[ddpm-cluster]" in table.loc["diff", "extrapolation"] and "[diff]" in table.loc["diff", "extrapolation"]
    # absent sets stay absent: no number of the paper leaks into this run's columns
    for method in ("full-diff", "full-styled-diff", "singan-published", "real-test"):
        assert np.isnan(table.loc[method, "fid_mean"]) and table.loc[method, "fid (mean ± sd)"] == ""
    assert table.loc["full-diff", "status"] == "absent" and table.loc["full-styled-diff", "status"] == "absent"
    assert np.isnan(table.loc["singan-published", "train_s_measured"])
    # the paper's numbers only in the columns labelled as the paper's
    paper_cols = [c for c in table.columns if "paper" in c and "extrapolated" not in c]
    assert paper_cols == ["fid_paper_reference", "msssim_paper_reference"]
    assert table.loc["diff", "fid_paper_reference"] == paper.fid("diff")
    assert table.loc["full-styled-diff", "fid_paper_reference"] == paper.fid("full-styled-diff")  # absent here
    assert table.loc["mkl-diff", "fid_mean"] == 85.0          # colour matching alone is not the paper's Styled-Diff:
    assert np.isnan(table.loc["mkl-diff", "fid_paper_reference"])               # no paper value beside it
    assert np.isnan(table.loc["mkl-diff", "msssim_paper_reference"])
    # SinGAN-Seg trained here on 2 source images is not the paper's set (made from 1000): its N, no paper value
    assert table.loc["singan", "label"].endswith("N = 2 source images)")
    assert np.isnan(table.loc["singan", "fid_paper_reference"]) and np.isnan(table.loc["gan", "fid_paper_reference"])
    assert not (table["fid_mean"].dropna().isin([paper.fid(m) for m in paper.FID_PER_SET])).any()


def test_models_of_another_configuration_are_not_counted(run):
    """With clusters.csv present, only the DDPMs this configuration plans, with its model key, count."""
    from polyplib.diffusion.train import model_key
    from polyplib.gan.compute import ddpm_models

    ids = ["p1", "p2", "p3", "p4"]
    pd.DataFrame({"id": ids, "cluster": [0, 0, 0, 0]}).to_csv(run.path("clusters.csv"), index=False)
    for name in ("cluster-00", "full"):
        path = run.path("models", "ddpm", name, "train_state.json")
        state = json.loads(path.read_text())
        path.write_text(json.dumps({**state, "key": model_key(run.cfg, ids, 1), "processes": 1}))
    # cluster-01 (key missing) is a leftover: this configuration has one cluster
    assert list(ddpm_models(run)["model"]) == ["cluster-00", "full"]


def test_a_set_with_too_few_images_has_no_fid_in_the_comparison(run):
    """A SinGAN-Seg set below metrics.min_images: its cell says why, no FID or KID, no point in the figure
    (named under the axes instead); the other sets are unchanged."""
    import matplotlib.pyplot as plt

    from polyplib.gan.stage import comparison_table
    from polyplib.gan.compute import compute_table
    from polyplib.gan.figures import comparison_display, fid_compute_figure

    fid, ms = _metrics()
    singan = fid["method"] == "singan"
    fid.loc[singan, ["fid_mean", "fid_sd", "kid_mean"]] = np.nan
    fid.loc[singan, "status"] = "too few images"
    fid.loc[singan, "refusal"] = "too few images (n = 2 < 100)"
    table = comparison_table(fid, ms, compute_table(run))
    rows = table.set_index("method")
    assert rows.loc["singan", "fid (mean ± sd)"] == "too few images (n = 2 < 100)"
    assert rows.loc["singan", "status"] == "too few images" and np.isnan(rows.loc["singan", "kid_mean"])
    assert rows.loc["gan", "fid (mean ± sd)"] == "150.0 (one set)" and rows.loc["gan", "refusal"] == ""
    shown = comparison_display(table).set_index("label")
    assert shown.loc["SinGAN-Seg (trained here, N = 2 source images)", "fid (mean ± sd)"] == \
        "too few images (n = 2 < 100)"
    fig = fid_compute_figure(table)
    note = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "SinGAN-Seg (trained here, N = 2 source images) (n = 2 < 100)" in note
    assert not any("SinGAN" in t.get_text() for t in fig.axes[0].texts)      # no point, no label for it
    plt.close(fig)

