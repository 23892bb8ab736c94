"""Stage 02 training: exact resume, atomic final folders, per-cluster training, data parallelism, overfit."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from polyplib.config import config_from_dict
from polyplib.errors import StageError
from polyplib.runs import open_run

# the data of conftest's tiny_run (32 px phantom pairs), plus a tiny fp32 DDPM
TINY_DATA = ["data.phantom.n_source=40", "data.phantom.n_target=12", "data.split.n_train=24",
             "data.split.n_test=10", "data.resolution=32", "run.progress=false", "run.device=cpu"]
TINY_DDPM = ["ddpm.block_out_channels=[32,32]", "ddpm.layers_per_block=1", "ddpm.attention_resolutions=[16]",
             "ddpm.num_train_timesteps=50", "ddpm.batch_size=4", "ddpm.learning_rate=1e-3",
             "ddpm.ema_decay=0.99", "ddpm.mixed_precision=no", "ddpm.checkpoint_every=2",
             "ddpm.checkpoints_total_limit=2", "ddpm.sample_every=3", "ddpm.sample_steps=3",
             "run.torch_threads=1", "clustering.features=handcrafted", "clustering.k=3", "clustering.min_size=3"]


def _run(tiny_run, folder, extra=()):
    if not (folder / "data").exists():
        shutil.copytree(tiny_run.path("data"), folder / "data")
    return open_run("smoke", TINY_DATA + TINY_DDPM + list(extra), folder)


@pytest.fixture(scope="module")
def ddpm_run(tiny_run, tmp_path_factory):
    return _run(tiny_run, tmp_path_factory.mktemp("ddpm-run"))


@pytest.fixture(scope="module")
def finished_model(ddpm_run, tmp_path_factory):
    """One tiny model trained to the end (4 steps) on 6 pairs."""
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.train import Trainer

    cfg = ddpm_run.cfg.model_copy(deep=True)
    cfg.ddpm.max_steps = 4
    ids = load_dataset(ddpm_run).ids("train")[:6]
    folder = tmp_path_factory.mktemp("finished") / "cluster-07"
    result = Trainer(cfg, load_dataset(ddpm_run), ids, folder).run()
    assert result.status == "trained" and result.steps == 4
    return cfg, ids, folder


def _samples(pipe, n, seed, steps=None, sampler="ddpm"):
    """(n x 4 x H x W tensor in [-1, 1], UNet calls) from the one unconditional sampler; sample k has the seed
    ``pair_seed(seed, "samples", k)``, as the notebook and the training grids draw them."""
    from polyplib.diffusion.unconditional import sample_tensor
    from polyplib.synthetic.generate import pair_seed

    config = dict(pipe.scheduler.config)
    seeds = [pair_seed(seed, "samples", k) for k in range(n)]
    return sample_tensor(pipe.unet, config, sampler, steps or config["num_train_timesteps"], seeds)


def _unet_state(folder):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(str(folder), subfolder="unet").state_dict()


def test_resume_after_a_kill_ends_with_the_weights_of_an_uninterrupted_run(ddpm_run, tmp_path):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.train import Trainer, checkpoints, is_finished

    cfg = ddpm_run.cfg.model_copy(deep=True)
    cfg.ddpm.max_steps = 9
    cfg.ddpm.gradient_accumulation_steps = 2
    prepared = load_dataset(ddpm_run)
    ids = prepared.ids("train")[:6]

    whole = Trainer(cfg, prepared, ids, tmp_path / "whole").run()
    assert whole.status == "trained"

    killed = tmp_path / "killed"
    first = Trainer(cfg, prepared, ids, killed).run(stop_after=7)   # "killed" after step 7: no save
    assert first.status == "stopped" and first.steps == 7
    assert not is_finished(killed) and not (killed / "model_index.json").exists()
    assert [s for s, _ in checkpoints(killed / "checkpoints")] == [4, 6]             # total limit 2 of 2, 4, 6
    ckpt = killed / "checkpoints" / "checkpoint-6"
    for item in ("unet", "unet_ema", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"):
        assert (ckpt / item).exists(), item
    assert config_from_dict(yaml.safe_load((ckpt / "config.yaml").read_text())) == cfg
    assert json.loads((ckpt / "train_ids.json").read_text()) == ids
    (killed / "checkpoints" / ".checkpoint-8.tmp").mkdir()          # a checkpoint cut off mid-write

    second = Trainer(cfg, prepared, ids, killed).run()
    assert second.status == "resumed" and second.steps == 9

    a, b = _unet_state(tmp_path / "whole"), _unet_state(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "EMA weights differ after resume"
    state_a = json.loads((tmp_path / "whole" / "train_state.json").read_text())
    state_b = json.loads((killed / "train_state.json").read_text())
    assert state_a["rank_digests"] == state_b["rank_digests"]       # raw weights and EMA, hashed
    log_a, log_b = pd.read_csv(tmp_path / "whole" / "loss.csv"), pd.read_csv(killed / "loss.csv")
    assert log_b["step"].tolist() == list(range(1, 10))              # steps 5-7 of the killed run were dropped
    assert log_a["loss"].tolist() == log_b["loss"].tolist()


def test_a_damaged_checkpoint_is_a_clear_error_naming_it(ddpm_run, tmp_path):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.train import Trainer

    cfg = ddpm_run.cfg.model_copy(deep=True)
    cfg.ddpm.max_steps = 4
    prepared = load_dataset(ddpm_run)
    ids = prepared.ids("train")[:4]
    folder = tmp_path / "model"
    assert Trainer(cfg, prepared, ids, folder).run(stop_after=2).status == "stopped"
    ckpt = folder / "checkpoints" / "checkpoint-2"
    optimizer = ckpt / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])          # bit rot / a disk that lied
    with pytest.raises(StageError) as err:
        Trainer(cfg, prepared, ids, folder).run()
    assert str(ckpt) in str(err.value) and "--force" in str(err.value)
    assert ckpt.exists() and not (folder / "model_index.json").exists()   # nothing deleted, nothing "finished"
    assert Trainer(cfg, prepared, ids, folder).run(force=True).status == "trained"


def test_final_folder_reloads_as_a_pipeline_and_splits_image_and_mask(finished_model):
    from diffusers import DDPMPipeline

    from polyplib.diffusion.dataset import from_tensor
    from polyplib.diffusion.model import load_pipeline
    from polyplib.diffusion.unconditional import split_pair

    cfg, ids, folder = finished_model
    pipe = DDPMPipeline.from_pretrained(str(folder))
    # learned sigma (the smoke default, as the paper's): epsilon + v, and a learned_range scheduler
    assert pipe.unet.config.in_channels == 4 and pipe.unet.config.out_channels == 8
    assert pipe.scheduler.config.variance_type == "learned_range"
    # DDPMPipeline itself samples it and returns all 4 channels in [0, 1] for output_type="np"; we split them
    raw = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
    assert raw.images.shape == (1, 32, 32, 4)
    x, nfe = _samples(pipe, 3, seed=5, steps=4)
    assert x.shape == (3, 4, 32, 32) and x.min() >= -1 and x.max() <= 1 and nfe == 4
    images, masks = from_tensor(x)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (3, 32, 32) and masks.dtype == bool
    assert np.array_equal(split_pair(x)[1] > 127, masks)        # the stage-03 split thresholds alike
    again, _ = _samples(load_pipeline(folder), 3, seed=5, steps=4)   # reloaded from the folder
    other, _ = _samples(pipe, 3, seed=6, steps=4)
    assert torch.equal(x, again) and not torch.equal(x, other)
    x = x[:2]
    from polyplib.diffusion.figures import learned_variance_table

    table = learned_variance_table(folder, x, steps=10, indices=[1, 5, 9])
    assert table["t"].tolist() == [5, 27, 49] and table["v_interpolation"].notna().all()    # 10 of T = 50
    assert (table["noise_std_posterior"] < table["noise_std_beta"]).all() and (table["noise_std_model"] > 0).all()
    assert config_from_dict(yaml.safe_load((folder / "config.yaml").read_text())) == cfg
    assert json.loads((folder / "train_ids.json").read_text()) == ids
    assert pd.read_csv(folder / "loss.csv")["step"].tolist() == [1, 2, 3, 4]
    assert sorted(p.name for p in (folder / "samples").glob("*.png")) == ["step-000003.png", "step-000004.png"]
    assert not (folder / "checkpoints").exists()                     # ddpm.keep_checkpoints=false


def test_a_partial_rerun_never_replaces_a_finished_model(finished_model, ddpm_run):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.train import Trainer, is_finished

    cfg, ids, folder = finished_model
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert Trainer(cfg, _Unreadable(), ids, folder).run().status == "cached"
    cut = Trainer(cfg, load_dataset(ddpm_run), ids, folder).run(force=True, stop_after=3)
    assert cut.status == "stopped"
    assert is_finished(folder) and hashlib.sha256(weights.read_bytes()).hexdigest() == before
    assert (folder / "checkpoints" / "checkpoint-2").exists()        # the partial run's own progress


class _Unreadable:
    """A data set that must not be read: a finished model needs no data."""

    folder = "unreadable"

    def load(self, pair_id):
        raise AssertionError("a finished model was retrained")


def test_train_all_trains_each_cluster_and_the_full_model_then_skips_them(tiny_run, tmp_path):
    from polyplib.diffusion.clustering import cluster_table
    from polyplib.diffusion.train import is_finished, load_summary, model_dir, train_all, train_one

    run = _run(tiny_run, tmp_path, ["ddpm.max_steps=2", "ddpm.sample_every=100"])
    summary = train_all(run)
    clusters = pd.read_csv(run.path("clusters.csv"), dtype={"id": str})
    k = clusters["cluster"].nunique()
    assert summary["model"].tolist() == [f"cluster-{i:02d}" for i in range(k)] + ["full"]
    assert (summary["status"] == "trained").all() and (summary["steps"] == 2).all()
    assert summary["pairs"].tolist() == clusters.groupby("cluster").size().tolist() + [len(clusters)]
    assert all(is_finished(model_dir(run, name)) for name in summary["model"])
    assert set(cluster_table(run)["model"]) == set(summary["model"]) - {"full"}
    again = train_all(run)
    assert (again["status"] == "cached").all()
    assert load_summary(run)["status"].tolist() == ["cached"] * len(summary)
    with pytest.raises(StageError, match="unknown model"):
        train_one(run, "cluster-99")


def test_compare_variance_trains_a_fixed_sigma_full_model_alike(tiny_run, tmp_path):
    """``ddpm.compare_variance``: one more Full model, the same in everything but the variance."""
    from diffusers import DDPMPipeline

    from polyplib.diffusion.train import model_key, train_all
    from polyplib.sampling.stage import planned_methods

    run = _run(tiny_run, tmp_path, ["ddpm.max_steps=2", "ddpm.sample_every=100", "ddpm.train_clusters=false",
                                    "ddpm.compare_variance=true"])
    summary = train_all(run)
    assert summary["model"].tolist() == ["full", "full-fixed-sigma"] and (summary["status"] == "trained").all()
    learned, fixed = (DDPMPipeline.from_pretrained(str(run.path("models", "ddpm", m))) for m in summary["model"])
    assert (learned.unet.config.out_channels, learned.scheduler.config.variance_type) == (8, "learned_range")
    assert (fixed.unet.config.out_channels, fixed.scheduler.config.variance_type) == (4, "fixed_small")
    from polyplib.diffusion.figures import learned_variance_table

    table = learned_variance_table(run.path("models", "ddpm", "full-fixed-sigma"), torch.zeros(2, 4, 32, 32), steps=10)
    assert (table["model_over_posterior"] == 1.0).all() and table["v_interpolation"].isna().all()
    assert json.loads((run.path("models", "ddpm", "full-fixed-sigma") / "train_ids.json").read_text()) == \
        json.loads((run.path("models", "ddpm", "full") / "train_ids.json").read_text())
    saved = config_from_dict(yaml.safe_load((run.path("models", "ddpm", "full-fixed-sigma") / "config.yaml").read_text()))
    assert saved.ddpm.variance == "fixed_small" and saved.ddpm.max_steps == run.cfg.ddpm.max_steps
    # the main models' key ignores the switch: turning it on retrains nothing
    off = run.cfg.model_copy(deep=True)
    off.ddpm.compare_variance = False
    assert model_key(off, ["a"], 1) == model_key(run.cfg, ["a"], 1)
    assert "full-diff-fixed-sigma" in planned_methods(run.cfg) and "full-diff-fixed-sigma" not in planned_methods(off)


@pytest.mark.slow   # the README's `accelerate launch --num_processes 4` promise; CI's second call runs it
def test_two_processes_train_data_parallel_with_identical_weights(tiny_run, tmp_path):
    """accelerate launch with 2 CPU processes (gloo): killed, resumed, and every rank ends identical."""
    from polyplib.diffusion.train import train_one

    extra = ["ddpm.max_steps=3", "ddpm.sample_every=100"]
    run = _run(tiny_run, tmp_path, extra)
    sets = [a for o in TINY_DATA + TINY_DDPM + extra for a in ("--set", o)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "polyplib.diffusion.train", "--profile", "smoke", "--run-dir", str(run.dir), *sets,
           "--model", "cluster-00"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    first = subprocess.run(cmd + ["--stop-after", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = run.path("models", "ddpm", "cluster-00", "checkpoints", "checkpoint-2")
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()
    with pytest.raises(StageError, match="2 process"):   # one process cannot resume a 2-process run exactly
        train_one(run, "cluster-00")

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.strip().splitlines()[-1])["status"] == "resumed"
    state = json.loads((run.path("models", "ddpm", "cluster-00", "train_state.json")).read_text())
    assert state["finished"] and state["processes"] == 2 and state["steps"] == 3
    digests = state["rank_digests"]
    assert [d["rank"] for d in digests] == [0, 1]
    assert digests[0]["weights"] == digests[1]["weights"] and digests[0]["ema"] == digests[1]["ema"]


class _Downsampled:
    """The pairs of a prepared set at a smaller size (a 16 px model overfits in a few hundred steps)."""

    def __init__(self, prepared, size):
        self.prepared, self.size, self.folder = prepared, size, prepared.folder

    def load(self, pair_id):
        import cv2

        image, mask = self.prepared.load(pair_id)
        s = (self.size, self.size)
        return (cv2.resize(image, s, interpolation=cv2.INTER_AREA),
                cv2.resize(mask.astype(np.uint8), s, interpolation=cv2.INTER_NEAREST).astype(bool))


def _mask_quality(folder, target):
    """Per sample: IoU of the mask channel (> 0) with ``target``, and how threshold-independent it is."""
    from polyplib.diffusion.model import load_pipeline

    masks = _samples(load_pipeline(folder), 8, seed=1)[0][:, 3]
    target = torch.from_numpy(target)
    iou = [((m > 0) & target).sum().item() / max(1, ((m > 0) | target).sum().item()) for m in masks]
    stable = [((m > -0.25) == (m > 0.25)).float().mean().item() for m in masks]
    return np.array(iou), np.array(stable), masks


@pytest.mark.slow   # 400 training steps: that the trainer learns an image and its mask; CI's second call runs it
def test_a_model_overfit_to_one_pair_generates_clean_masks_of_that_pair(ddpm_run, tmp_path):
    """The mask channel of the reloaded pipeline's samples binarises cleanly and matches the pair.

    Clean: the binary mask is the same at thresholds -0.25 and +0.25 on >= 95 % of pixels. An
    untrained model fails the same check (its samples are noise-shaped), so the test can fail.
    """
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.train import Trainer

    cfg = ddpm_run.cfg.model_copy(deep=True)
    d = cfg.ddpm
    d.block_out_channels, d.attention_resolutions, d.num_train_timesteps = [64, 64], [8], 50
    d.batch_size, d.learning_rate, d.ema_decay, d.hflip, d.max_steps = 16, 2e-3, 0.9, False, 400
    d.checkpoint_every = d.sample_every = 10 ** 6
    data = _Downsampled(load_dataset(ddpm_run), 16)
    ids = load_dataset(ddpm_run).ids("train")[:1]
    target = data.load(ids[0])[1]
    assert 0 < target.mean() < 0.5

    untrained = cfg.model_copy(deep=True)
    untrained.ddpm.max_steps = 1
    Trainer(untrained, data, ids, tmp_path / "untrained").run()
    iou0, stable0, _ = _mask_quality(tmp_path / "untrained", target)
    assert (iou0 >= 0.8).sum() <= 2, "an untrained model must not pass the check"

    Trainer(cfg, data, ids, tmp_path / "overfit").run()
    iou, stable, masks = _mask_quality(tmp_path / "overfit", target)
    near = float((masks.abs() > 0.5).float().mean())
    assert (iou >= 0.8).sum() >= 7, f"IoU with the training mask: {iou.round(2)}"
    assert (stable >= 0.95).sum() >= 7, f"threshold stability: {stable.round(3)}, |v| > 0.5: {near:.2f}"
