"""Stage 04 end to end on a small phantom run with synthetic folders written here; MS-SSIM; review kit."""
import base64
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from polyplib import paper
from polyplib.errors import StageError


@pytest.fixture(scope="module")
def stage04():
    """Register stage 04 for these tests if the project has not registered it (yet)."""
    from polyplib import stages

    with pytest.MonkeyPatch.context() as mp:
        if not any(s.id == "04" for s in stages.STAGES):
            mp.setattr(stages, "STAGES", stages.STAGES + (
                stages.Stage("04", "metrics", "04_metrics.ipynb", "Metrics", ("metrics",)),))
        yield


def _options(cache: str) -> list[str]:
    return ["data.phantom.n_source=30", "data.phantom.n_target=6", "data.split.n_train=16",
            "data.split.n_test=6", "data.resolution=64", "run.progress=false", "run.device=cpu",
            "run.workers=1",  # the phantom writer forks workers; a fork after torch ran can deadlock
            f"metrics.cache_dir={cache}", "metrics.fid_sets=2", "metrics.msssim_pairs=40",
            "metrics.review_per_source=3", "sampling.n_unconditional=0",
            "metrics.min_images=4"]  # sets of 4-16 images here; the tests of the rule itself copy the run


def _write_method(folder, rows_and_pairs):
    from polyplib.data.imageio import write_png

    rows = []
    for row, (image, mask) in rows_and_pairs:
        if row["accepted"]:
            write_png(folder / "images" / f"{row['file']}.png", image)
            write_png(folder / "masks" / f"{row['file']}.png", mask)
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)


@pytest.fixture(scope="module")
def run(stage04, tmp_path_factory):
    """A 64 px phantom run with stage 01 done and synthetic folders standing in for stage 03:
    diff = domain A frames of another seed (2 samples per source, one rejected pair),
    styled-diff = domain B frames (another acquisition: must score a worse FID),
    uncond-ddpm-10 / -50 = single sets without sources."""
    from polyplib.data.phantom import render_frame
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.data.prepared import load_dataset
    from polyplib.data.preprocess import fit
    from polyplib.runs import open_run

    cache = str(tmp_path_factory.getbasetemp() / "polyplib-metrics-cache")
    run = open_run("smoke", _options(cache), tmp_path_factory.mktemp("metrics-run"))
    prepare_data(run)
    train = load_dataset(run).ids("train")[:8]

    def frame(domain, seed, index):
        return fit(*render_frame(domain, seed, index, scale=0.25), 64, "stretch")

    for method, domain in (("diff", "A"), ("styled-diff", "B")):
        entries = []
        for k in range(2):
            for i, sid in enumerate(train):
                name = f"{sid}_s{k}"
                accepted = not (method == "diff" and k == 1 and i == 0)
                entries.append(({"id": name, "file": name, "source_id": sid, "sample_index": k,
                                 "accepted": accepted, "seed": 100 * k + i}, frame(domain, 7 + k, i)))
        _write_method(run.path("synthetic", method), entries)
    for steps in (10, 50):
        entries = [({"id": f"sample_{i:05d}", "file": f"sample_{i:05d}", "source_id": "", "sample_index": i,
                     "accepted": True}, frame("A", 20 + steps, i)) for i in range(4)]
        _write_method(run.path("synthetic", f"uncond-ddpm-{steps}"), entries)
    return run


@pytest.fixture(scope="module")
def tables(run):
    from polyplib.metrics.stage import run_stage as evaluate

    return evaluate(run)


def test_fid_table_reports_every_method_and_the_real_reference(tables):
    fid = tables["04_fid"].set_index("method")
    assert list(fid.index[:2]) == ["real-halves", "real-test"]
    for absent in ("singan", "gan", "full-diff", "full-styled-diff"):
        assert fid.loc[absent, "status"] == "absent" and np.isnan(fid.loc[absent, "fid_mean"])
    diff, styled = fid.loc["diff"], fid.loc["styled-diff"]
    assert diff["status"] == styled["status"] == "ok"
    assert diff["n_sets"] == 2 and "sample_index" in diff["protocol"]
    assert diff["n_images"] == "8/7"  # the rejected pair does not count
    assert len(diff["fid_per_set"].split(";")) == 2 and diff["fid_sd"] >= 0
    assert styled["fid_mean"] > diff["fid_mean"] > 0  # another domain is further from the real set
    assert styled["kid_mean"] > diff["kid_mean"]
    assert diff["image_size"] == "64x64" and diff["resize"] == "clean-fid: PIL bicubic to 299 px"  # the default
    assert diff["paper_fid"] == paper.fid("diff") and np.isnan(fid.loc["real-halves", "paper_fid"])
    assert fid.loc["real-halves", "n_sets"] == 2 and fid.loc["real-halves", "n_images"] == "8 vs 8"


def test_fid_against_steps_and_the_single_set_protocol(tables):
    steps = tables["04_fid_steps"]
    assert list(steps["steps"]) == [10, 50] and set(steps["sampler"]) == {"ddpm"}
    assert (steps["n_sets"] == 1).all() and steps["protocol"].str.contains("n=1").all()
    assert steps["fid_sd"].isna().all() and (steps["fid_mean"] > 0).all()


def test_msssim_table_same_pairs_everywhere_and_window_recorded(tables, run):
    ms = tables["04_msssim"].set_index("method")
    ok = ms[ms["status"] == "ok"]
    assert {"real", "diff", "styled-diff", "uncond-ddpm-10"} <= set(ok.index)
    assert (ok["n_pairs"] == 40).all() and (ok["win_size"] == 3).all() and (ok["scales"] == 5).all()
    assert ((ok["msssim_mean"] > 0) & (ok["msssim_mean"] < 1)).all()
    assert ms.loc["real", "paper_msssim"] == paper.msssim("real")
    record = json.loads(run.path("metrics", "msssim.json").read_text())
    assert record["settings"]["window"]["win_size"] == 3 and record["settings"]["pairs_per_set"] == 40


def test_records_and_tables_are_written_with_provenance(tables, run):
    record = json.loads(run.path("metrics", "fid.json").read_text())
    settings = record["settings"]
    assert len(settings["weights"]["sha256"]) == 64 and "inception-2015-12-05" in settings["weights"]["network"]
    assert settings["fid_resize"] == settings["features"]["fid_resize"] == "clean"
    assert "299" in settings["resize_policy"] and "PIL bicubic" in settings["resize_policy"]
    assert settings["real_features_cache"]["real_train"]["n"] == 16
    assert {r["method"] for r in record["fid"]} >= {"diff", "styled-diff", "real-halves"}
    for name in ("04_fid", "04_fid_steps", "04_msssim", "04_review_kit"):
        saved = json.loads(run.path("results", f"{name}.json").read_text())
        assert saved["provenance"]["stage"] == "04" and saved["rows"]


def test_second_call_is_served_from_the_cache(tables, run, capsys):
    from polyplib.metrics.stage import run_stage as evaluate

    again = evaluate(run)
    assert "cached results" in capsys.readouterr().out
    pd.testing.assert_frame_equal(again["04_fid"][["method", "status"]], tables["04_fid"][["method", "status"]])
    np.testing.assert_allclose(again["04_fid"]["fid_mean"], tables["04_fid"]["fid_mean"], rtol=1e-9)


def test_real_features_are_cached_by_content(run):
    from polyplib.data.prepared import load_dataset
    from polyplib.features.inception import data_key

    ds = load_dataset(run)
    ids = ds.ids("train")
    paths = [ds.paths(i)[0] for i in ids]
    key = data_key(paths, ids, {"s": 1})
    assert key == data_key(paths, ids, {"s": 1})
    assert key != data_key(paths, ids, {"s": 2})                     # settings
    assert key != data_key(paths[::-1], ids[::-1], {"s": 1})         # file list


# ----------------------------------------------------------------------------- review kit
def test_review_kit_is_blinded_and_complete(tables, run):
    folder = run.path("metrics", "review")
    key = pd.read_csv(folder / "key.csv", dtype=str, keep_default_na=False)
    assert sorted(key["source"].value_counts().items()) == [("diff", 3), ("real", 3), ("styled", 3)]
    assert key["source_id"].is_unique  # no frame appears twice, in any version
    page = (folder / "kit" / "review.html").read_text()
    assert not (folder / "kit" / "key.csv").exists()
    assert page.count('src="data:image/png;base64,') == 2 * len(key)
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", page)
    for word in ["key.csv", "http", "styled", "diff", *key["pair_id"], *key["source_id"]]:
        assert word not in text
    assert all(item in text for item in key["item"])
    b64 = re.search(r"base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    template = pd.read_csv(folder / "kit" / "ratings_template.csv", dtype=str, keep_default_na=False)
    assert list(template.columns) == ["item", "rater", "image_quality", "mask_quality", "judged", "comment"]
    assert list(template["item"]) == list(key["item"])
    summary = tables["04_review_kit"].set_index("source")
    assert summary.loc["real", "items"] == 3 and summary.loc["styled", "items"] == 3


def test_scorer_reports_table7_accuracy_and_kappa(tables, run, tmp_path):
    from sklearn.metrics import cohen_kappa_score

    from polyplib.metrics.review import score_review

    key = pd.read_csv(run.path("metrics", "review", "key.csv"), dtype=str, keep_default_na=False)
    # rater A: calls every real image real and the first synthetic of each source real too
    judged, seen = [], set()
    for src in key["source"]:
        judged.append("real" if src == "real" or src not in seen else "fake")
        seen.add(src)
    a = pd.DataFrame({"item": key["item"], "rater": "A", "image_quality": 4, "mask_quality": 3,
                      "judged": judged, "comment": ""})
    b = a.assign(rater="B", judged=["Fake"] * len(a))  # case is forgiven
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    result = score_review([tmp_path / "a.csv"], run.path("metrics", "review", "key.csv"))
    table = result["table"].set_index("source")
    assert list(table.index) == ["real", "diff", "styled"]
    assert table.loc["real", "judged real"] == 3 and table.loc["diff", "judged real"] == 1
    assert table.loc["styled", "judged fake"] == 2
    truth = np.where(key["source"] == "real", "real", "fake")
    assert result["accuracy"] == pytest.approx((np.array(judged) == truth).mean())
    assert result["kappa"] == pytest.approx(cohen_kappa_score(truth, judged))
    both = score_review([tmp_path / "a.csv", tmp_path / "b.csv"], key)
    assert both["n"] == 18 and set(both["per_rater"]["rater"]) == {"A", "B"}
    assert both["inter_rater"].loc[0, "kappa"] == pytest.approx(cohen_kappa_score(judged, ["fake"] * 9))
    with pytest.raises(StageError, match="real' or 'fake"):
        score_review(a.assign(judged="maybe"), key)


def test_cohen_kappa_hand_case_and_sklearn():
    from sklearn.metrics import cohen_kappa_score

    from polyplib.metrics.review import cohen_kappa

    # The paper's Table 7 counts: 10 real (4 judged real), 20 synthetic (6 judged real).
    truth = ["real"] * 10 + ["fake"] * 20
    judged = ["real"] * 4 + ["fake"] * 6 + ["real"] * 6 + ["fake"] * 14
    # by hand: p_o = 18/30 = 0.6, p_e = (10/30)(10/30) + (20/30)(20/30) = 5/9, kappa = (0.6 - 5/9)/(4/9) = 0.1
    assert cohen_kappa(truth, judged) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
        y[:15] = x[:15]
        assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    # every rating the same label: chance agreement is 1 and kappa undefined, reported as NaN without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(cohen_kappa(["a", "a"], ["a", "a"]))
        assert np.isnan(cohen_kappa(["fake"] * 5, ["fake"] * 5, ["real", "fake"]))
    with pytest.raises(ValueError, match="equal length"):
        cohen_kappa(["real"], ["real", "fake"])


# ----------------------------------------------------------------------------- units
def test_msssim_window_rule_and_pairs():
    from polyplib.metrics.msssim import msssim_pairs, pair_indices, window_for

    assert [window_for(s)["win_size"] for s in (48, 64, 96, 128, 160, 176, 256)] == [3, 3, 5, 7, 9, 11, 11]
    with pytest.raises(StageError, match="48 px"):
        window_for(32)
    i, j = pair_indices(3, 500, seed=0)
    assert len(i) == 500 and (i != j).all() and set(i) == set(j) == {0, 1, 2}
    rng = np.random.default_rng(0)
    for size in (64, 96):
        noise = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
        same, _ = msssim_pairs(np.stack([noise[0]] * 3), 6, seed=1)
        np.testing.assert_allclose(same, 1.0, atol=1e-5)
        values, win = msssim_pairs(noise, 6, seed=1)
        assert (values < 0.5).all() and win["min_side"] == size


def test_independent_sets_from_the_manifest():
    from polyplib.metrics.stage import split_sets

    m = pd.DataFrame({"id": [f"x{k}{i}" for k in range(3) for i in range(4)],
                      "source_id": [f"s{i}" for _ in range(3) for i in range(4)],
                      "sample_index": [k for k in range(3) for _ in range(4)],
                      "accepted": [True] * 11 + [False]})
    sets, protocol = split_sets(m, 2)
    assert sets == [["x00", "x01", "x02", "x03"], ["x10", "x11", "x12", "x13"]] and "2 of 3" in protocol
    sets, _ = split_sets(m, 5)
    assert [len(s) for s in sets] == [4, 4, 3]
    sets, protocol = split_sets(m.assign(source_id=""), 3)
    assert len(sets) == 1 and len(sets[0]) == 11 and "n=1" in protocol


def test_no_weights_means_no_fid_anywhere(stage04, tmp_path, capsys):
    from polyplib.metrics.stage import run_stage as evaluate
    from polyplib.runs import open_run

    run = open_run("smoke", _options(str(tmp_path / "cache")) + [f"metrics.fid_weights={tmp_path}/none.pth"],
                   tmp_path / "run")
    with pytest.raises(StageError, match="none.pth: file not found"):
        evaluate(run)
    assert not run.path("metrics", "fid.json").exists() and not run.path("results").exists()
    assert "FID" not in capsys.readouterr().out


def test_figures_and_display_tables(tables, run):
    import matplotlib.pyplot as plt

    from polyplib.metrics import figures

    shown = figures.fid_display(tables["04_fid"])
    assert shown.loc["Diff", "FID (the paper: real data, 256 px)"] == f"{paper.fid('diff'):g}"
    assert shown.loc["SinGAN-Seg (trained here)", "status"] == "absent"        # stage 05 makes it
    assert shown.loc["SinGAN-Seg (trained here)", "FID (this run, mean ± sd over sets)"] == "–"
    assert shown.loc["SinGAN-Seg (trained here)", "FID (the paper: real data, 256 px)"] == ""   # not its set
    assert "±" in shown.loc["Diff", "FID (this run, mean ± sd over sets)"]
    assert shown.loc["Diff", "FID resize"] == shown.loc["Real vs real (disjoint halves)", "FID resize"] \
        == "clean-fid: PIL bicubic to 299 px"
    assert (shown.loc[shown["status"] == "absent", "FID resize"] == "").all()
    assert (figures.steps_display(tables["04_fid_steps"])["FID resize"] == "clean-fid: PIL bicubic to 299 px").all()
    assert "clean-fid" in figures.fid_bars(tables["04_fid"]).axes[0].get_title()
    assert figures.msssim_display(tables["04_msssim"]).loc["Real (training images)", "window"] == 3
    assert list(figures.steps_display(tables["04_fid_steps"])["steps"]) == [10, 50]
    assert figures.steps_display(pd.DataFrame()).empty
    for fig in (figures.fid_bars(tables["04_fid"]), figures.msssim_bars(tables["04_msssim"]),
                figures.fid_vs_steps(tables["04_fid_steps"], tables["04_fid"]),
                figures.fid_vs_steps(pd.DataFrame()), figures.review_grid(run)):
        assert fig.axes
        plt.close(fig)


def test_a_run_without_synthetic_sets_reports_them_absent(stage04, run, tmp_path):
    """Same data as the module's run (copied; the cached real features are reused), no synthetic/."""
    import shutil

    from polyplib.metrics.stage import run_stage as evaluate
    from polyplib.metrics.review import demo_ratings, score_review
    from polyplib.runs import open_run

    bare = open_run("smoke", _options(run.cfg.metrics.cache_dir), tmp_path / "bare")
    shutil.copytree(run.path("data"), bare.path("data"))
    out = evaluate(bare)
    fid = out["04_fid"].set_index("method")
    assert fid.loc[["real-halves", "real-test"], "status"].eq("ok").all()
    assert fid.drop(index=["real-halves", "real-test"])["status"].eq("absent").all()
    assert out["04_fid_steps"].empty
    kit = out["04_review_kit"].set_index("source")
    assert kit.loc["real", "items"] == 3 and kit.loc["diff", "items"] == 0 and "absent" in kit.loc["real", "note"]
    key = bare.path("metrics", "review", "key.csv")
    scores = score_review(demo_ratings(key, seed=0), key)
    assert list(scores["table"]["source"]) == ["real"] and scores["n"] == 3


# ----------------------------------------------------------------------------- metrics.min_images
def _copy(run, tmp_path, extra=()):
    """The module's run (data and synthetic sets copied; cached real features reused) with other options."""
    import shutil

    from polyplib.runs import open_run

    options = [o for o in _options(run.cfg.metrics.cache_dir) if not o.startswith("metrics.min_images")]
    other = open_run("smoke", options + list(extra), tmp_path / "run")
    for part in ("data", "synthetic"):
        shutil.copytree(run.path(part), other.path(part))
    return other


def test_a_set_below_min_images_gets_no_fid_kid_or_msssim_and_says_why(stage04, run, tmp_path, capsys):
    """min_images = 8: real halves (8 vs 8) and styled-diff (8/8) are measured at the boundary; diff (8/7),
    the held-out test images (6) and the unconditional sets (4) are refused everywhere, with their n."""
    import matplotlib.pyplot as plt

    from polyplib.metrics import figures
    from polyplib.metrics.stage import run_stage as evaluate

    other = _copy(run, tmp_path, ["metrics.min_images=8"])
    out = evaluate(other)
    printed = capsys.readouterr().out
    fid = out["04_fid"].set_index("method")
    assert fid.loc["real-halves", "status"] == fid.loc["styled-diff", "status"] == "ok"
    assert fid.loc["real-halves", "fid_mean"] > 0 and fid.loc["styled-diff", "kid_mean"] > 0
    for method, n in (("diff", 7), ("real-test", 6)):
        assert fid.loc[method, "status"] == "too few images"
        assert fid.loc[method, "refusal"] == f"too few images (n = {n} < 8)"
        assert fid.loc[method, ["fid_mean", "fid_sd", "kid_mean", "kid_sd"]].astype(float).isna().all()
    assert fid.loc["diff", "n_images"] == "8/7" and fid.loc["diff", "paper_fid"] == paper.fid("diff")
    assert "FID diff" not in printed and "too few images (n = 7 < 8)" in printed        # nothing extracted for it
    steps = out["04_fid_steps"]
    assert list(steps["status"]) == ["too few images"] * 2
    assert steps[["fid_mean", "kid_mean", "kid_sd"]].isna().all().all()
    assert (steps["refusal"] == "too few images (n = 4 < 8)").all()
    record = json.loads(other.path("metrics", "fid.json").read_text())
    rows = {r["method"]: r for r in record["fid"] + record["fid_steps"]}
    for method in ("diff", "real-test", "uncond-ddpm-10"):
        assert not {"fid_mean", "fid_sd", "kid_mean", "kid_sd", "fid_per_set"} & set(rows[method]), method
        assert rows[method]["status"] == "too few images" and rows[method]["refusal"].endswith("< 8)")
    assert rows["styled-diff"]["fid_mean"] > 0 and record["settings"]["min_images"] == 8
    saved = json.loads(other.path("results", "04_fid.json").read_text())["rows"]
    assert next(r for r in saved if r["method"] == "diff")["fid_mean"] is None
    shown = figures.fid_display(out["04_fid"])
    assert shown.loc["Diff", "FID (this run, mean ± sd over sets)"] == "too few images (n = 7 < 8)"
    assert shown.loc["Diff", "KID x 1000"] == "too few images" and shown.loc["Diff", "status"] == "too few images"
    assert shown.loc["Diff", "FID (the paper: real data, 256 px)"] == f"{paper.fid('diff'):g}"   # the paper's stays
    assert "±" in shown.loc["Styled-Diff", "FID (this run, mean ± sd over sets)"]
    assert (figures.steps_display(steps)["FID (n=1 set)"] == "too few images (n = 4 < 8)").all()
    # MS-SSIM obeys the same minimum: the real training images (16) and styled-diff (8/8) are measured
    ms = out["04_msssim"].set_index("method")
    assert ms.loc["real", "status"] == ms.loc["styled-diff", "status"] == "ok"
    assert 0 < ms.loc["styled-diff", "msssim_mean"] < 1 and ms.loc["styled-diff", "n_images"] == "8/8"
    for method, n in (("diff", 7), ("uncond-ddpm-10", 4)):
        assert ms.loc[method, "status"] == "too few images" and np.isnan(ms.loc[method, "msssim_mean"])
        assert ms.loc[method, "refusal"] == f"too few images (n = {n} < 8)"
    assert ms.loc["diff", "n_images"] == "8/7" and ms.loc["diff", "paper_msssim"] == paper.msssim("diff")
    saved = json.loads(other.path("metrics", "msssim.json").read_text())
    diff = next(r for r in saved["msssim"] if r["method"] == "diff")
    assert "msssim_mean" not in diff and diff["refusal"] == "too few images (n = 7 < 8)"
    assert saved["settings"]["min_images"] == 8 and "no MS-SSIM" in saved["settings"]["min_images_rule"]
    shown = figures.msssim_display(out["04_msssim"])
    assert shown.loc["Diff", "MS-SSIM (this run, mean ± sd over sets)"] == "too few images (n = 7 < 8)"
    assert shown.loc["Diff", "MS-SSIM (the paper: real data, 256 px)"] == f"{paper.msssim('diff'):g}"
    bars = figures.msssim_bars(out["04_msssim"])
    note = " ".join(t.get_text() for t in bars.texts)
    assert "not drawn, too few images (metrics.min_images)" in note and "Diff (n = 7 < 8)" in note
    assert len(bars.axes[0].patches) == (out["04_msssim"]["status"] == "ok").sum()
    plt.close("all")


def test_smoke_tables_show_too_few_images(stage04, run, tmp_path):
    """The smoke profile keeps the default minimum (100): on a small run every FID and KID is refused, the
    real references too, and no Inception feature is extracted; the tables, the JSON and the figures say so."""
    import matplotlib.pyplot as plt

    from polyplib.metrics import figures
    from polyplib.metrics.stage import run_stage as evaluate

    other = _copy(run, tmp_path)
    assert other.cfg.metrics.min_images == 100
    out = evaluate(other)
    fid = out["04_fid"]
    assert set(fid["status"]) == {"too few images", "absent"}
    assert fid[["fid_mean", "kid_mean"]].isna().all().all()
    shown = figures.fid_display(fid)
    column = shown["FID (this run, mean ± sd over sets)"]
    assert column["Real vs real (disjoint halves)"] == "too few images (n = 8 < 100)"
    assert column["Real held-out test vs train"] == "too few images (n = 6 < 100)"
    assert column["Diff"] == "too few images (n = 7 < 100)" and column["Styled-Diff"] == "too few images (n = 8 < 100)"
    record = json.loads(other.path("metrics", "fid.json").read_text())
    assert record["settings"]["real_features_cache"]["real_train"]["extracted"] is False
    assert not any("fid_mean" in r for r in record["fid"])
    bars = figures.fid_bars(fid)
    assert "not drawn, too few images" in " ".join(t.get_text() for t in bars.texts)
    assert not bars.axes[0].patches                                        # no bar at all
    ms = out["04_msssim"]                                                  # nor any MS-SSIM, the real set's too
    assert set(ms["status"]) == {"too few images", "absent"} and ms["msssim_mean"].isna().all()
    assert figures.msssim_display(ms).loc["Real (training images)", "MS-SSIM (this run, mean ± sd over sets)"] \
        == "too few images (n = 16 < 100)"
    bars = figures.msssim_bars(ms)
    assert not bars.axes[0].patches and "no set with a value" in " ".join(t.get_text() for t in bars.axes[0].texts)
    other.cfg.sampling.n_unconditional = 4                                 # what made the sets (the fixture wrote 4)
    fig, name, why = figures.steps_figure(other, out["04_fid_steps"], fid)
    assert name == "04_unconditional_samples" and "metrics.min_images = 100" in why and "4 images" in why
    assert sum(bool(ax.images) for ax in fig.axes) == 8                     # the samples, 4 per set, as a picture
    for f in (bars, fig):
        plt.close(f)


def test_fid_vs_steps_leaves_out_refused_points_and_names_them():
    import matplotlib.pyplot as plt

    from polyplib.metrics import figures

    steps = pd.DataFrame([
        {"method": "uncond-ddim-10", "sampler": "ddim", "steps": 10, "status": "ok", "n_images": "120",
         "fid_mean": 50.0, "fid_sd": np.nan, "kid_mean": 0.02, "kid_sd": 0.004, "resize": "clean-fid"},
        {"method": "uncond-ddim-25", "sampler": "ddim", "steps": 25, "status": "ok", "n_images": "120",
         "fid_mean": 40.0, "fid_sd": np.nan, "kid_mean": 0.01, "kid_sd": 0.003, "resize": "clean-fid"},
        {"method": "uncond-ddpm-10", "sampler": "ddpm", "steps": 10, "status": "too few images", "n_images": "8",
         "refusal": "too few images (n = 8 < 100)"}])
    fid = pd.DataFrame([{"method": "real-halves", "status": "too few images", "refusal": "too few images (n = 50 < 100)"}])
    fig = figures.fid_vs_steps(steps, fid)
    fid_ax, kid_ax = fig.axes[:2]
    for ax in (fid_ax, kid_ax):
        assert [c.get_label() for c in ax.containers] == ["ddim"]               # no ddpm curve
        assert "real vs real" not in [line.get_label() for line in ax.get_lines()]   # its reference was refused too
    np.testing.assert_allclose(fid_ax.containers[0].lines[0].get_ydata(), [50.0, 40.0])
    np.testing.assert_allclose(kid_ax.containers[0].lines[0].get_ydata(), [20.0, 10.0])
    assert kid_ax.containers[0].has_yerr and not fid_ax.containers[0].has_yerr  # KID's sd over sets; FID has none
    note = " ".join(t.get_text() for t in fig.texts)
    assert "ddpm, 10 steps (n = 8 < 100)" in note.replace("\n", " ") and "real vs real line" in note
    run = None   # a measured set exists: the curve, not the picture (the run is not needed for it)
    _, name, _ = figures.steps_figure(run, steps, fid)
    assert name == "04_fid_vs_steps"
    plt.close("all")



# ----------------------------------------------------------------------------- label fidelity
def test_label_fidelity_is_refused_below_the_minimum_and_recorded(tables, run):
    fid = tables["04_label_fidelity"].set_index("method")
    assert list(fid.index) == ["real-test", "diff", "styled-diff"]          # no unconditional sets
    assert fid.loc["diff", "n_pairs"] == 15 and fid.loc["styled-diff", "n_pairs"] == 16
    assert fid.loc["diff", "judge_status"].startswith("too few pairs") and np.isnan(fid.loc["diff", "judge_iou"])
    assert fid.loc["real-test", "judge_status"] == "too few pairs (n = 6 < 20)"
    record = json.loads(run.path("metrics", "fidelity.json").read_text())
    assert record["settings"]["judge"]["judge_fit_images"] > 0 and len(record["fidelity"]) == 3
    # the judge is stage 06's real-only baseline, trained once: stage 06 finds it finished
    from polyplib.segmentation.study import judge_configuration, plan
    c = judge_configuration(run.cfg)
    assert record["settings"]["judge"]["judge_configuration"] == c.name and c in plan(run.cfg, [])
    result = json.loads(run.path("segmentation", c.name, "result.json").read_text())
    assert result["configuration"]["regime"] == "real" and result["best_epoch"] == record["settings"]["judge"]["judge_best_epoch"]


def test_label_fidelity_of_real_like_pairs_matches_the_real_reference(run, monkeypatch):
    """The diff stand-in is phantom domain A, like the real frames: its masks label its polyps as
    well as the real test masks do. (Its frames are rendered at another scale, which the seam check
    may find; the check's null case is in test_fidelity.py.)"""
    from polyplib.metrics import fidelity

    monkeypatch.setattr(fidelity, "MIN_REGIONS", 5)
    table = fidelity.label_fidelity(run, {"diff": "Diff", "styled-diff": "B"}, name="fidelity-test").set_index("method")
    ref, diff = table.loc["real-test"], table.loc["diff"]
    assert diff["judge_status"] == "ok" and ref["judge_status"] == "ok"
    assert diff["judge_iou_lo"] <= ref["judge_iou_hi"] and ref["judge_iou_lo"] <= diff["judge_iou_hi"]
    assert diff["seam_status"] == "ok" and 0 <= diff["seam_lo"] <= diff["seam_accuracy"] <= diff["seam_hi"] <= 1
    assert table.loc["styled-diff", "judge_status"] == "ok" and diff["seam_regions"] >= 5
