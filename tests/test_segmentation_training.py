"""Stage 06 with real training on a tiny phantom run: learning, resuming, and the whole stage."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from polyplib.segmentation import data as sdata  # noqa: E402
from polyplib.segmentation import stage as seg_stage  # noqa: E402
from polyplib.segmentation.evaluate import evaluate_model, pair_scores  # noqa: E402
from polyplib.segmentation.models import build_model, input_normalization, load_model  # noqa: E402
from polyplib.segmentation.train import TrainSettings, train_model  # noqa: E402

TINY = ["data.phantom.n_source=60", "data.phantom.n_target=0", "data.split.n_train=40",
        "data.split.n_test=16", "data.resolution=32", "run.progress=false",
        "run.workers=1"]  # no process pool: forking after cv2 has started threads can hang (phantom)
LITE0 = "tu-efficientnet_lite0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def with_stage_06(monkeypatch):
    """Register stage 06 for this test if polyplib/stages.py does not list it yet."""
    import polyplib.stages as stages

    if not any(s.id == "06" for s in stages.STAGES):
        extra = stages.Stage("06", "segmentation", "06_segmentation.ipynb", "Segmentation", ("segmentation",))
        monkeypatch.setattr(stages, "STAGES", stages.STAGES + (extra,))


def _open(path, overrides=()):
    from polyplib.runs import open_run

    return open_run("smoke", TINY + list(overrides), path)


@pytest.fixture(scope="module")
def tiny_seg_run(tmp_path_factory):
    """A phantom run like conftest's tiny_run (32 px, 32 train + 8 val, 16 test) with stage 01 done
    and one synthetic set, 'diff' (3 samples per training image, phantom frames of another seed)."""
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.data.prepared import load_dataset

    run = _open(tmp_path_factory.mktemp("seg-run"))
    prepare_data(run)
    write_synthetic_set(run, "diff", load_dataset(run).ids("train"), seed=77)
    return run


def write_synthetic_set(run, method, source_ids, seed, per_image=3):
    """A synthetic set in the stage-03 layout: images/, masks/, manifest.csv (one rejected pair)."""
    import cv2

    from polyplib.data.imageio import write_png
    from polyplib.data.phantom import render_frame

    size, folder, rows = run.cfg.data.resolution, run.path("synthetic", method), []
    for j, sid in enumerate(source_ids):
        for k in range(per_image):
            img, msk = render_frame("A", seed=seed, index=j * per_image + k, scale=0.3)
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            msk = cv2.resize(msk.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
            name = f"{method}_{sid}_{k}"
            write_png(folder / "images" / f"{name}.png", img)
            write_png(folder / "masks" / f"{name}.png", msk)
            rows.append({"id": name, "file": name, "source_id": sid, "sample_index": k,
                         "accepted": not (j == 0 and k == 2)})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def _pools(run):
    from polyplib.data.prepared import load_dataset

    ds = load_dataset(run)
    fit, val = sdata.split_train_val(ds.ids("train"), 0.2, seed=0)
    size = run.cfg.data.resolution
    return load_pool(ds, fit, size), load_pool(ds, val, size), load_pool(ds, ds.ids("test"), size)


load_pool = sdata.load_pool


def test_trained_model_beats_untrained_and_all_background(tiny_seg_run, tmp_path):
    real, val, test = _pools(tiny_seg_run)
    mean, std = input_normalization(LITE0, "imagenet")
    torch.manual_seed(0)
    model = build_model("unet", LITE0, "imagenet")
    untrained = evaluate_model(model, test, mean, std)["iou"].mean()
    background = pair_scores(np.zeros_like(test.masks), test.masks)["iou"].mean()
    plan = sdata.EpochPlan(real, None, [(0, i) for i in range(len(real))], seed=0)
    settings = TrainSettings(epochs=6, lr=2e-3, lr_drop_epoch=6, batch_size=4, augmentation="none", seed=0)
    summary = train_model(model, plan, val, tmp_path / "t", settings, mean, std)
    trained = evaluate_model(load_model(tmp_path / "t" / "model"), test, mean, std)["iou"].mean()
    assert trained > untrained + 0.2 and trained > background + 0.2, (trained, untrained, background)
    log = pd.read_csv(tmp_path / "t" / "log.csv")
    assert len(log) == 6 and summary["best_val_iou"] == pytest.approx(log["val_iou"].max())
    assert summary["best_epoch"] == int(log.loc[log["val_iou"].idxmax(), "epoch"])


def _tiny_model(seed):
    torch.manual_seed(seed)
    return build_model("unet", "resnet18", None, encoder_depth=3, decoder_channels=(16, 8, 4))


def test_a_killed_training_resumes_to_identical_weights(tiny_seg_run, tmp_path):
    real, val, _ = _pools(tiny_seg_run)
    syn = sdata.load_synthetic_pool(tiny_seg_run.path("synthetic", "diff"), real.ids, 32)
    plan = sdata.EpochPlan(real, syn, [], seed=3, mix_alpha=0.5, mix_r=2)    # mixing + augmentation
    settings = TrainSettings(epochs=3, patience=2, lr=1e-3, lr_drop_epoch=2, lr_after_drop=1e-4, batch_size=8,
                             augmentation="control", seed=3)      # patience 2 of 3: stops at 3 either way
    mean, std = (0.5,) * 3, (0.5,) * 3
    whole = _tiny_model(3)
    summary = train_model(whole, plan, val, tmp_path / "whole", settings, mean, std)

    class Killed(Exception):
        pass

    def kill(epoch, row):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train_model(_tiny_model(3), plan, val, tmp_path / "cut", settings, mean, std, on_epoch_end=kill)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "train.json").exists()
    resumed = _tiny_model(99)                      # another init: everything must come from the checkpoint
    again = train_model(resumed, plan, val, tmp_path / "cut", settings, mean, std)
    for key in ("epochs_run", "stopped", "best_epoch", "best_val_iou", "best_is_last", "best_by"):
        assert again[key] == summary[key], key
    assert summary["epochs_run"] == 3 and summary["stopped"] == ("patience" if summary["best_epoch"] == 1
                                                                  else "max_epochs")
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    best_a, best_b = load_model(tmp_path / "whole" / "model"), load_model(tmp_path / "cut" / "model")
    assert all(torch.equal(a, b) for a, b in zip(best_a.state_dict().values(), best_b.state_dict().values()))
    cols = ["epoch", "lr", "train_loss", "val_loss", "val_iou", "samples", "synthetic_fraction"]
    log_a, log_b = pd.read_csv(tmp_path / "whole" / "log.csv"), pd.read_csv(tmp_path / "cut" / "log.csv")
    pd.testing.assert_frame_equal(log_a[cols], log_b[cols])
    assert log_a["lr"].tolist() == [1e-3, 1e-3, 1e-4] and log_a["synthetic_fraction"].gt(0).all()
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()     # removed once finished


@pytest.mark.parametrize("choice", ["synthetic", "real"])
def test_synthetic_only_runs_validate_on_both_pools_and_select_by_the_setting(tiny_seg_run, choice):
    from polyplib.config import load_config
    from polyplib.segmentation import study

    cfg = load_config("smoke", TINY + [f"segmentation.synthetic_validation={choice}"])
    data = study._Data(tiny_seg_run)
    syn = study.Configuration("synthetic", "diff", None, 1, "none", "unet", 0)
    _, pools, select = study._datasets(data, syn, cfg)
    assert select == choice and list(pools)[0] == choice and set(pools) == {"synthetic", "real"}
    assert pools["synthetic"].synthetic.all() and not pools["real"].synthetic.any()
    assert set(pools["synthetic"].source_ids) == set(pools["real"].ids)   # pairs of the real validation images
    for c in (syn.baseline(), study.Configuration("mixed", "diff", None, 1, "none", "unet", 0)):
        _, theirs, select = study._datasets(data, c, cfg)                  # real and mixed: real, as before
        assert list(theirs) == ["real"] and select == "real" and theirs["real"].ids == pools["real"].ids


def test_the_validation_choice_keys_only_synthetic_only_runs(tiny_seg_run):
    from polyplib.runs import Run
    from polyplib.config import load_config
    from polyplib.segmentation import study

    runs = [Run(load_config("smoke", TINY + o), tiny_seg_run.dir) for o in
            ([], ["segmentation.synthetic_validation=real"], ["segmentation.patience=3"])]
    for c in (study.Configuration("synthetic", "diff", None, 1, "none", "unet", 0),
              study.Configuration("mixed", "diff", None, 1, "none", "unet", 0),
              study.Configuration("real", None, None, 0, "none", "unet", 0)):
        base, flipped, patient = (study.configuration_key(r, c) for r in runs)
        assert (base != flipped) == (c.regime == "synthetic") and base != patient, c


def test_the_stage_runs_resumes_and_reports(tiny_seg_run, tmp_path, monkeypatch, with_stage_06):
    import shutil

    from polyplib.segmentation import study

    shutil.copytree(tiny_seg_run.dir, tmp_path / "run")
    overrides = ["segmentation.models=[unet]", f"segmentation.encoder={LITE0}", "segmentation.epochs=1",
                 "segmentation.lr=1e-3", "segmentation.batch_size=8", "segmentation.seeds=[0]",
                 "segmentation.sources=[diff,gan]", "segmentation.synthetic_per_real=[1]",
                 "segmentation.mix_r=[1]", "segmentation.small_n=[8]", "segmentation.small_source=diff",
                 "segmentation.bootstrap=200", "segmentation.num_workers=0"]
    run = _open(tmp_path / "run", overrides)
    expected = study.plan(run.cfg, ["diff"])
    assert len(expected) == 2 + 1 + 2 + 2
    calls = []
    real_train = study.train_model

    def dies_on_the_third(*args, **kwargs):
        calls.append(kwargs.get("name"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(study, "train_model", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        seg_stage.run_stage(run)
    finished = {c.name: run.path("segmentation", c.name, "result.json").stat().st_mtime for c in expected[:2]}
    monkeypatch.setattr(study, "train_model", real_train)
    results = seg_stage.run_stage(run)
    assert all(run.path("segmentation", n, "result.json").stat().st_mtime == t for n, t in finished.items())

    assert len(results) == len(expected) and set(results["name"]) == {c.name for c in expected}
    assert results[["dice", "iou"]].apply(lambda s: s.between(0, 1)).all().all()
    per_image = study.read_table(run, "per_image")
    assert len(per_image) == len(expected) * 16 and per_image["image_id"].nunique() == 16
    sources = study.read_table(run, "sources").set_index("source")
    assert bool(sources.loc["diff", "available"]) and not bool(sources.loc["gan", "available"])
    assert sources.loc["diff", "pairs"] == 3 * 40 - 1                   # the rejected pair is not used
    paired = study.read_table(run, "paired")
    assert len(paired) == 4 and paired["p"].between(0, 1).all()
    summary = study.read_table(run, "summary")
    assert (summary["iou_lo"] <= summary["iou"]).all() and (summary["iou"] <= summary["iou_hi"]).all()
    for name in ("table3", "table4", "table5"):
        assert len(study.read_table(run, name))
    meta = json.loads(run.path("results", "06_segmentation.json").read_text())
    assert meta["provenance"]["stage"] == "06" and len(meta["rows"]) == len(expected)
    syn_only = json.loads(run.path("segmentation", expected[2].name, "result.json").read_text())
    assert expected[2].regime == "synthetic" and syn_only["validation"] == "synthetic"
    assert syn_only["real_images"] == 0
    # one epoch: every best epoch is the last; synthetic-only runs also test the best by real validation
    assert results["best_is_last"].all() and (results["stopped"] == "max_epochs").all()
    assert (results["epochs_run"] == 1).all() and (results["max_epochs"] == 1).all()
    assert syn_only["other_validation"] == "real" and syn_only["best_epoch_other_validation"] == 1
    assert 0 <= syn_only["iou_other_validation"] <= 1
    assert run.path("segmentation", expected[2].name, "train", "model-real", "config.json").exists()
    others = results.set_index("name")["other_validation"]
    assert others[expected[2].name] == "real" and others.drop(expected[2].name).isna().all()
    choice = study.read_table(run, "validation")
    assert len(choice) == 1 and choice.loc[0, "chosen"] == "synthetic"
    assert choice.loc[0, "IoU (real validation)"] == pytest.approx(syn_only["iou_other_validation"], abs=1e-4)
    assert choice.loc[0, "best epoch (synthetic validation)"] == "1 †"
    t3 = study.read_table(run, "table3")
    assert t3["validation"].tolist() == ["real", "synthetic"] and t3["IoU (this run)"].str.endswith(" †").all()
    assert [float(v) for v in t3["IoU (paper)"]] == [0.809, 0.595]   # the paper's Table 3 beside the authors' method
    # a diffusion set drawn from the noised real pair is another method: the paper's IoU no longer stands beside it
    other = _open(tmp_path / "run", overrides + ["sampling.start=sdedit"])
    t3 = study.paper_tables(summary, other, results)["T3"]
    assert t3["IoU (paper)"].tolist() == [0.809, "—"]
    # served from the cache; and a forced rerun reuses every finished configuration
    assert study.read_table(run, "segmentation")["name"].tolist() == seg_stage.run_stage(run)["name"].tolist()
    calls.clear()
    monkeypatch.setattr(study, "train_model", dies_on_the_third)
    seg_stage.run_stage(run, force=True)
    assert calls == []
