"""Early stopping, the best model per validation pool, and resuming a stopped training (stage 06).

The training is real (a tiny smp UNet on in-memory pairs); the validation IoU of each pool is
scripted epoch by epoch, so that which epoch is best, and where patience stops, is known exactly.
"""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from polyplib.segmentation import data as sdata  # noqa: E402
from polyplib.segmentation import train as strain  # noqa: E402
from polyplib.segmentation.models import build_model, load_model  # noqa: E402
from polyplib.segmentation.train import TrainSettings, train_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN_STD = ((0.5,) * 3, (0.5,) * 3)

#: Validation IoU per epoch (1-based epoch i is index i - 1) of each pool. Synthetic peaks at epoch 2,
#: real at 4 and then again (higher) at 9: with patience 2 the synthetic choice stops after epoch 4,
#: the real one after epoch 6.
SCRIPT = {"synthetic": [0.10, 0.30, 0.20, 0.25, 0.50, 0.40, 0.45, 0.20, 0.10, 0.10],
          "real": [0.05, 0.10, 0.15, 0.50, 0.40, 0.30, 0.35, 0.45, 0.90, 0.10]}


def _pool(name: str, n: int, seed: int) -> sdata.PairPool:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((n, 32, 32), bool)
    for i in range(n):
        y, x, s = rng.integers(2, 14), rng.integers(2, 14), rng.integers(8, 16)
        masks[i, y:y + s, x:x + s] = True
        images[i][masks[i]] //= 3
    ids = [f"{name}-{i}" for i in range(n)]
    return sdata.PairPool(images, masks, ids, ids, np.full(n, name == "synthetic"))


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("unet", "tu-test_resnet", None, encoder_depth=3, decoder_channels=(16, 8, 4))   # 81k weights


class Scripted:
    """Stands in for train.validate: the IoU of SCRIPT for the pool's name, epoch by epoch."""

    def __init__(self, script=SCRIPT):
        self.script, self.calls = script, {k: 0 for k in script}

    def at(self, epochs_done: int) -> "Scripted":
        """Continue as if ``epochs_done`` epochs had been validated (a resumed training)."""
        self.calls = {k: epochs_done for k in self.script}
        return self

    def __call__(self, model, pool, mean, std, device, batch_size, loss_fn=None):
        name = pool.ids[0].split("-")[0]
        iou = self.script[name][self.calls[name]]
        self.calls[name] += 1
        return pd.DataFrame({"dice": [2 * iou / (1 + iou)] * len(pool), "iou": [iou] * len(pool)}), 1 - iou


@pytest.fixture
def pools():
    train = _pool("synthetic", 12, 0)
    plan = sdata.EpochPlan(None, train, [(1, i) for i in range(len(train))], seed=0)
    return plan, {"synthetic": _pool("synthetic", 4, 1), "real": _pool("real", 4, 2)}


def _train(folder, plan, val, settings, select, monkeypatch, scripted=None, on_epoch_end=None, seed=0):
    """Train with scripted validation; returns (summary, weights after each epoch by epoch, the model)."""
    monkeypatch.setattr(strain, "validate", scripted or Scripted())
    model, snapshots = _tiny_model(seed), {}

    def snapshot(epoch, row):
        snapshots[epoch] = copy.deepcopy(model.state_dict())
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    summary = train_model(model, plan, val, folder, settings, *MEAN_STD, select=select, on_epoch_end=snapshot)
    return summary, snapshots, model


def _same(state_a, state_b) -> bool:
    return all(torch.equal(a, state_b[k]) for k, a in state_a.items())


def _saved(folder) -> dict:
    return load_model(folder).state_dict()


SETTINGS = dict(epochs=10, lr=1e-3, lr_drop_epoch=5, lr_after_drop=1e-4, batch_size=4, seed=0)


@pytest.mark.parametrize("select, stop, best, other_best", [("synthetic", 4, 2, 4), ("real", 6, 4, 5)])
def test_patience_stops_after_patience_epochs_without_a_better_iou_and_keeps_the_best_of_each_pool(
        pools, tmp_path, monkeypatch, select, stop, best, other_best):
    plan, val = pools
    other = "real" if select == "synthetic" else "synthetic"
    summary, snaps, _ = _train(tmp_path / "t", plan, val, TrainSettings(patience=2, **SETTINGS), select, monkeypatch)
    assert summary["stopped"] == "patience" and summary["epochs_run"] == stop == summary["best_epoch"] + 2
    assert summary["best_epoch"] == best and summary["max_epochs"] == 10 and not summary["best_is_last"]
    assert summary["best_val_iou"] == SCRIPT[select][best - 1] and summary["validation"] == select
    assert summary["best_by"][other] == {"epoch": other_best, "val_iou": SCRIPT[other][other_best - 1],
                                         "model": f"model-{other}"}
    log = pd.read_csv(tmp_path / "t" / "log.csv")
    assert log["epoch"].tolist() == list(range(1, stop + 1)) and sorted(snaps) == log["epoch"].tolist()
    assert log["val_iou"].tolist() == log[f"val_iou_{select}"].tolist() == SCRIPT[select][:stop]
    assert log[f"val_iou_{other}"].tolist() == SCRIPT[other][:stop]
    # each saved model is the weights of the epoch its own log column peaks at, not of any other epoch
    for folder, column in (("model", f"val_iou_{select}"), (f"model-{other}", f"val_iou_{other}")):
        peak = int(log.loc[log[column].idxmax(), "epoch"])
        saved = _saved(tmp_path / "t" / folder)
        assert _same(saved, snaps[peak]) and not _same(saved, snaps[stop if peak != stop else 1]), folder
    assert json.loads((tmp_path / "t" / "train.json").read_text())["stopped"] == "patience"
    assert not (tmp_path / "t" / "checkpoint.pt").exists()


def test_the_two_validation_choices_train_the_same_epochs_until_one_stops(pools, tmp_path, monkeypatch):
    plan, val = pools
    settings = TrainSettings(patience=2, **SETTINGS)
    _, by_syn, _ = _train(tmp_path / "s", plan, val, settings, "synthetic", monkeypatch)
    _, by_real, _ = _train(tmp_path / "r", plan, val, settings, "real", monkeypatch)
    assert all(_same(by_syn[e], by_real[e]) for e in by_syn)      # selection never changes the training
    # the best by real validation within the 4 epochs both ran is one model, whichever pool selects
    assert _same(_saved(tmp_path / "s" / "model-real"), _saved(tmp_path / "r" / "model"))
    assert not _same(_saved(tmp_path / "s" / "model"), _saved(tmp_path / "r" / "model-synthetic"))   # 2 vs 5


def test_without_patience_every_epoch_runs_and_a_best_last_epoch_is_flagged(pools, tmp_path, monkeypatch):
    plan, val = pools
    rising = {"synthetic": [0.1, 0.2, 0.3], "real": [0.3, 0.2, 0.1]}
    settings = TrainSettings(**{**SETTINGS, "epochs": 3})
    summary, _, _ = _train(tmp_path / "a", plan, val, settings, "synthetic", monkeypatch, Scripted(rising))
    assert (summary["stopped"], summary["epochs_run"], summary["best_epoch"]) == ("max_epochs", 3, 3)
    assert summary["best_is_last"] and summary["patience"] is None and summary["best_by"]["real"]["epoch"] == 1
    summary, _, _ = _train(tmp_path / "b", plan, val, settings, "real", monkeypatch, Scripted(rising))
    assert summary["stopped"] == "max_epochs" and summary["best_epoch"] == 1 and not summary["best_is_last"]
    # patience that never runs out: still the maximum, still flagged
    summary, _, _ = _train(tmp_path / "c", plan, val, TrainSettings(patience=2, **{**SETTINGS, "epochs": 3}),
                        "synthetic", monkeypatch, Scripted(rising))
    assert (summary["stopped"], summary["epochs_run"], summary["best_is_last"]) == ("max_epochs", 3, True)


def test_stop_reason():
    s = TrainSettings(epochs=10, patience=3)
    assert [s.stop_reason(e, 0) for e in (0, 1, 2, 3)] == [None, None, None, "patience"]
    assert s.stop_reason(5, 4) is None and s.stop_reason(7, 4) == "patience" and s.stop_reason(10, 9) == "max_epochs"
    assert TrainSettings(epochs=4).stop_reason(3, 1) is None and TrainSettings(epochs=4).stop_reason(4, 1) == "max_epochs"


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [3, 6])      # mid-run, and right after the epoch patience stops at
def test_a_killed_training_with_patience_resumes_to_the_same_stop_and_weights(pools, tmp_path, monkeypatch, kill_at):
    plan, val = pools
    settings = TrainSettings(patience=2, **SETTINGS)
    whole, snaps, whole_model = _train(tmp_path / "whole", plan, val, settings, "real", monkeypatch)

    def kill(epoch, row):
        if epoch == kill_at:
            raise Killed

    with pytest.raises(Killed):
        _train(tmp_path / "cut", plan, val, settings, "real", monkeypatch, on_epoch_end=kill)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "train.json").exists()
    scripted = Scripted().at(kill_at)
    resumed, later, model = _train(tmp_path / "cut", plan, val, settings, "real", monkeypatch, scripted, seed=99)
    assert sorted(later) == list(range(kill_at + 1, whole["epochs_run"] + 1))   # nothing after the stop
    assert scripted.calls["real"] == whole["epochs_run"]
    for key in ("epochs_run", "stopped", "best_epoch", "best_val_iou", "best_is_last", "best_by"):
        assert resumed[key] == whole[key], key
    assert _same(model.state_dict(), whole_model.state_dict())      # another init: all from the checkpoint
    for folder in ("model", "model-synthetic"):
        assert _same(_saved(tmp_path / "whole" / folder), _saved(tmp_path / "cut" / folder)), folder
    cols = ["epoch", "lr", "train_loss", "val_iou", "val_iou_real", "val_iou_synthetic", "samples"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "log.csv")[cols],
                                  pd.read_csv(tmp_path / "cut" / "log.csv")[cols])


def test_an_unknown_selecting_pool_is_an_error(pools, tmp_path):
    plan, val = pools
    with pytest.raises(ValueError, match="select='test'"):
        train_model(_tiny_model(), plan, val, tmp_path / "t", TrainSettings(**SETTINGS), *MEAN_STD, select="test")
