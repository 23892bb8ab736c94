"""Ways to use imperfect synthetic pairs (#31): the quality gate, the pretrain schedule, the loss weight,
and the words notebook 06 prints about harm, each against an expectation computed here."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from polyplib.config import load_config  # noqa: E402
from polyplib.segmentation import study  # noqa: E402
from polyplib.segmentation.train import batch_loss, dice_loss  # noqa: E402
from test_segmentation_training import LITE0, TINY, _open, write_synthetic_set  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["segmentation.models=[unet]", f"segmentation.encoder={LITE0}", "segmentation.lr=2e-3",
        "segmentation.batch_size=8", "segmentation.seeds=[0]", "segmentation.num_workers=0",
        "segmentation.patience=null", "segmentation.augmentation=[none]"]


@pytest.fixture(scope="module")
def corrupted_run(tmp_path_factory):
    """A 32 px phantom run (40 training images) whose synthetic set 'diff' holds one pair per training
    image, the odd ones with their mask moved 12 px away from the polyp (a set made deliberately worse)."""
    from polyplib.data.imageio import write_png
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.data.prepared import load_dataset

    run = _open(tmp_path_factory.mktemp("use-run"), FAST + ["segmentation.epochs=6"])
    prepare_data(run)
    ids = load_dataset(run).ids("train")
    folder = write_synthetic_set(run, "diff", ids, seed=77, per_image=1)
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str)
    manifest["accepted"] = True
    manifest["moved"] = [i % 2 == 1 for i in range(len(manifest))]
    from polyplib.data.imageio import read_mask
    for _, r in manifest[manifest["moved"]].iterrows():
        path = folder / "masks" / f"{r['file']}.png"
        write_png(path, np.roll(read_mask(path), (12, 12), axis=(0, 1)))
    manifest.to_csv(folder / "manifest.csv", index=False)
    return run


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> float:
    """smp's binary Dice loss written out: 1 - 2|p·y| / (|p| + |y|) over the whole batch (smooth 0, eps 1e-7)."""
    p = torch.sigmoid(logits).flatten().double()
    y = target.flatten().double()
    inter, total = float((p * y).sum()), float(p.sum() + y.sum())
    return 1.0 - 2.0 * inter / max(total, 1e-7)


def test_batch_loss_is_the_papers_at_weight_one_and_weights_the_two_parts_otherwise():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 1, 8, 8), (torch.rand(6, 1, 8, 8) > 0.6).float()
    synthetic = torch.tensor([False, True, False, True, True, False])
    fn = dice_loss()
    assert float(batch_loss(fn, logits, target, synthetic, 1.0)) == pytest.approx(_dice_loss(logits, target), abs=1e-6)
    real, syn = ~synthetic, synthetic
    for w in (0.0, 0.25, 3.0):
        expected = (3 * _dice_loss(logits[real], target[real]) + w * 3 * _dice_loss(logits[syn], target[syn])) / (3 + 3 * w)
        assert float(batch_loss(fn, logits, target, synthetic, w)) == pytest.approx(expected, abs=1e-6), w
    none = torch.zeros(6, dtype=torch.bool)           # a batch of real pairs: the paper's loss whatever the weight
    assert float(batch_loss(fn, logits, target, none, 0.25)) == pytest.approx(_dice_loss(logits, target), abs=1e-6)
    only = torch.ones(6, dtype=torch.bool)
    zero = batch_loss(fn, logits.requires_grad_(), target, only, 0.0)
    zero.backward()
    assert float(zero.detach()) == 0.0 and float(logits.grad.abs().sum()) == 0.0


def test_the_quality_gate_keeps_exactly_the_pairs_the_judge_agrees_with(corrupted_run):
    from sklearn.metrics import jaccard_score

    from polyplib.segmentation.evaluate import predict_masks
    from polyplib.segmentation.models import input_normalization, load_model

    run = _open(corrupted_run.dir, FAST + ["segmentation.epochs=6", "segmentation.synthetic_filter=[null,0.5]"])
    data = study._Data(run)
    pool = data.synthetic_pool("diff")
    judge = study.judge_configuration(run.cfg)
    ious = data.judge_iou("diff")                         # trains the judge (the real-only baseline) first
    model = load_model(run.path("segmentation", judge.name, "train", "model"))
    pred = predict_masks(model, pool.images, *input_normalization(LITE0, "imagenet"))
    expected = np.array([jaccard_score(m.ravel(), p.ravel(), zero_division=1.0) for p, m in zip(pred, pool.masks)])
    np.testing.assert_allclose(ious, expected, atol=1e-6)
    record = pd.read_csv(run.path("segmentation", "filter", "diff.csv"), dtype={"id": str, "source_id": str})
    assert record["id"].tolist() == pool.ids and (record["kept_at_0.5"] == (expected >= 0.5)).all()
    c = study.Configuration("mixed", "diff", None, 1, "none", "unet", 0, schedule="mixed", synthetic_filter=0.5)
    plan, _, _ = study._datasets(data, c, run.cfg)
    fit, _ = study.split_train_val(data.train_ids, run.cfg.segmentation.val_fraction, 0)
    kept = {pid for pid, s, keep in zip(pool.ids, pool.source_ids, expected >= 0.5) if keep and s in set(fit)}
    assert set(plan.synthetic.ids) == kept and len(kept) < len(fit)
    manifest = pd.read_csv(run.path("synthetic", "diff", "manifest.csv"), dtype={"id": str})
    moved = manifest.set_index("id").loc[pool.ids, "moved"].astype(str).eq("True").to_numpy()
    assert (expected >= 0.5)[moved].mean() < (expected >= 0.5)[~moved].mean()   # the gate finds the moved masks
    # the gate depends on the judge: retraining the judge under other settings changes a filtered run's key
    other = _open(corrupted_run.dir, FAST + ["segmentation.epochs=5", "segmentation.synthetic_filter=[null,0.5]"])
    assert study.configuration_key(run, c) != study.configuration_key(other, c)
    with pytest.raises(study.GateLeftNothing, match="judge IoU of at least 1"):
        study._datasets(data, study.Configuration("mixed", "diff", None, 1, "none", "unet", 0, schedule="mixed",
                                                  synthetic_filter=1.0), run.cfg)


def test_pretrain_trains_on_the_synthetic_pairs_then_fine_tunes_the_same_weights_on_the_real_images(
        corrupted_run, monkeypatch):
    run = _open(corrupted_run.dir, FAST + ["segmentation.epochs=2"])
    c = study.Configuration("mixed", "diff", None, 1, "none", "unet", 0, schedule="pretrain")
    assert c.name == "mixed-diff-nall-k1-none-unet-pretrain-s0"
    data = study._Data(run)
    fit, _ = study.split_train_val(data.train_ids, run.cfg.segmentation.val_fraction, 0)
    starts, real_train = [], study.train_model

    def spy(model, plan, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, plan, *args, **kwargs)

    monkeypatch.setattr(study, "train_model", spy)
    study.run_configuration(run, c, data)
    folder = run.path("segmentation", c.name)
    pre, fine = pd.read_csv(folder / "pretrain" / "log.csv"), pd.read_csv(folder / "train" / "log.csv")
    assert len(pre) == 2 and (pre["synthetic_fraction"] == 1.0).all() and (pre["samples"] == len(fit)).all()
    assert len(fine) == 2 and (fine["synthetic_fraction"] == 0.0).all() and (fine["samples"] == len(fit)).all()
    assert pre["lr"].tolist() == fine["lr"].tolist()           # each stage is the paper's protocol from epoch 1
    from polyplib.segmentation.models import load_model
    best = load_model(folder / "pretrain" / "model").state_dict()
    assert len(starts) == 2 and all(torch.equal(starts[1][k], v) for k, v in best.items())  # fine-tunes that model
    result = json.loads((folder / "result.json").read_text())
    assert result["pretrain"]["epochs_run"] == 2 and result["synthetic_pool"] == len(fit)
    assert result["train_images"] == int(pre["samples"].sum() + fine["samples"].sum())
    # the plan's estimate: epochs x (synthetic pairs + real images)
    n_train = len(data.train_ids)
    n_fit = n_train - max(1, int(round(n_train * 0.2)))
    assert study.estimated_images([c], run.cfg, n_train) == 2 * (n_fit + n_fit)


def test_the_plan_adds_each_schedule_and_filter_to_table_4_only_and_keeps_the_papers_names():
    base = ["segmentation.augmentation=[control]", "segmentation.seeds=[0]", "segmentation.synthetic_per_real=[1]",
            "segmentation.mix_r=[1]", "segmentation.small_n=[16]", "segmentation.models=[unet]"]
    paper_way = study.plan(load_config("smoke", base), ["diff"])
    both = study.plan(load_config("smoke", base + ["segmentation.synthetic_schedule=[mixed,pretrain]",
                                                  "segmentation.synthetic_filter=[null,0.5]"]), ["diff"])
    assert {c.name for c in paper_way} <= {c.name for c in both}
    assert "mixed-diff-nall-k1-control-unet-s0" in {c.name for c in paper_way}
    added = [c.name for c in both if c.name not in {p.name for p in paper_way}]
    assert sorted(added) == sorted(["mixed-diff-nall-k1-control-unet-f0.5-s0",
                                    "mixed-diff-nall-k1-control-unet-pretrain-s0",
                                    "mixed-diff-nall-k1-control-unet-pretrain-f0.5-s0"])   # Table 4 only
    weighted = study.plan(load_config("smoke", base + ["segmentation.synthetic_weight=0.5"]), ["diff"])
    assert sorted(c.name for c in weighted if c.synthetic_weight != 1.0) == [
        "mixed-diff-n16-k1-control-unet-w0.5-s0", "mixed-diff-nall-k1-control-unet-w0.5-s0"]  # every mixed run
    first = study.plan(load_config("smoke", base + ["segmentation.synthetic_filter=0.5"]), ["diff"])
    assert all(c.synthetic_filter == 0.5 for c in first if c.source)   # one value: every table uses it
    row = both[-1].row()
    assert study.Configuration.from_row(row) == both[-1]


def test_the_words_about_harm_follow_the_paired_intervals():
    def row(source, filt, diff, lo, hi):
        return {"regime": "mixed", "source": source, "n_real": "all", "per_real": 1, "augmentation": "control",
                "model": "unet", "schedule": "mixed", "synthetic_filter": filt, "synthetic_weight": 1.0,
                "baseline": "real", "n_images": 150, "diff": diff, "diff_lo": lo, "diff_hi": hi, "p": 0.01}

    paired = pd.DataFrame([row("diff", "none", -0.105, -0.137, -0.072), row("diff", "0.5", -0.01, -0.03, 0.01),
                           row("gan", "none", 0.02, 0.005, 0.04)])
    table = study.verdicts(paired)
    assert table["verdict"].tolist() == ["worse", "no difference resolved", "better"]
    text = study.harm_sentence(paired)
    assert "**worse** than real-only training in 1 of 3" in text and "real + diff r=1 · control (-0.105" in text
    assert "judge IoU ≥ 0.5" in table.loc[1, "training data"] and "1 comparison(s) resolved no difference" in text
    assert "In none of the 1" in study.harm_sentence(paired.iloc[[2]])


def test_the_benchmarks_worse_set_corrupts_half_of_the_masks_and_no_image(corrupted_run, tmp_path):
    import sys
    from pathlib import Path

    from polyplib.data.imageio import read_image, read_mask

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_synthetic_use import make_worse

    source = corrupted_run.path("synthetic", "diff")
    manifest = make_worse(source, tmp_path / "worse", seed=0)
    kinds = manifest["corrupted"].value_counts()
    assert kinds["none"] == len(manifest) - len(manifest) // 2 and kinds["moved"] + kinds["swapped"] == len(manifest) // 2
    for _, r in manifest.iterrows():
        before, after = (read_mask(f / "masks" / f"{r['file']}.png") for f in (source, tmp_path / "worse"))
        assert (read_image(source / "images" / f"{r['file']}.png") ==
                read_image(tmp_path / "worse" / "images" / f"{r['file']}.png")).all()
        if r["corrupted"] == "none":
            assert (before == after).all()
        elif r["corrupted"] == "moved":              # a quarter of the frame down and right, nothing wrapped round
            h, w = before.shape
            assert (after[h // 4:, w // 4:] == before[:h - h // 4, :w - w // 4]).all() and not after[:h // 4].any()
        else:
            assert not (before == after).all()
