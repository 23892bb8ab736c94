"""The 4-channel GAN of stage 05: trains and samples, same seed -> same bytes, a killed and resumed run
ends with exactly the weights of an uninterrupted one, DiffAugment keeps image and mask aligned,
sizes that are not powers of two work."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

OVERRIDES = [
    "data.phantom.n_source=30", "data.phantom.n_target=4", "data.split.n_train=16", "data.split.n_test=6",
    "data.resolution=32", "run.progress=false", "run.device=cpu",
    "gan.base_channels=8", "gan.z_dim=16", "gan.batch_size=4", "gan.max_steps=6", "gan.checkpoint_every=2",
    "gan.checkpoints_total_limit=2", "gan.n_samples=10", "gan.r1_gamma=1.0", "gan.mixed_precision=no",
    "run.torch_threads=1", "gan.ema_decay=0.9",
]


def make_run(folder, extra=()):
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.runs import open_run

    run = open_run("smoke", OVERRIDES + list(extra), folder)
    prepare_data(run)
    return run


def weights(folder):
    from safetensors.torch import load_file

    return {name: load_file(str(folder / f"{name}.safetensors"))
            for name in ("generator_ema", "generator", "discriminator")}


def synthetic_bytes(run):
    folder = run.path("synthetic", "gan")
    out = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    for name in ("manifest.csv", "rejected.csv"):
        out[name] = pd.read_csv(folder / name).drop(columns=["seconds"]).to_csv(index=False).encode()
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from polyplib.gan.train import sample_gan, train_gan

    run = make_run(tmp_path_factory.mktemp("gan-a"))
    result = train_gan(run)
    summary = sample_gan(run)
    return run, result, summary


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Stopped after step 5 (checkpoints 2 and 4 on disk), then resumed to the end."""
    from polyplib.gan.train import gan_dir, sample_gan, train_gan

    run = make_run(tmp_path_factory.mktemp("gan-b"))
    stopped = train_gan(run, stop_after=5)
    on_disk = sorted(p.name for p in (gan_dir(run) / "checkpoints").glob("checkpoint-*"))
    log = pd.read_csv(gan_dir(run) / "loss.csv")
    result = train_gan(run)
    return run, stopped, on_disk, log, result, sample_gan(run)


def test_gan_trains_samples_and_writes_the_stage03_layout(uninterrupted):
    from polyplib.data.prepared import PreparedSet
    from polyplib.synthetic.folder import read_records

    run, result, summary = uninterrupted
    folder = run.path("models", "gan")
    assert result.status == "trained" and result.steps == 6 and result.mixed_precision == "no"
    state = json.loads((folder / "train_state.json").read_text())
    assert state["finished"] and state["seconds_cumulative"] and state["seconds"] > 0 and "cpu" in state["device"]
    assert state["images"] == 6 * 4 and state["sessions"] == 1
    from polyplib.data.prepared import load_dataset

    assert json.loads((folder / "train_ids.json").read_text()) == load_dataset(run).ids("train")
    assert "gan:" in (folder / "config.yaml").read_text() and not (folder / "checkpoints").exists()
    log = pd.read_csv(folder / "loss.csv")
    assert list(log["step"]) == list(range(1, 7)) and (log["r1"] > 0).all() and log["elapsed_s"].is_monotonic_increasing
    assert sorted(p.name for p in (folder / "samples").glob("*.png")) == [
        "step-000002.png", "step-000004.png", "step-000006.png"]
    records = read_records(run.path("synthetic", "gan"))
    assert len(records) == 10 and summary["pairs"] == 10 == summary["accepted"] + summary["rejected"]
    assert set(records["source_id"]) == {""} and list(records["sample_index"]) == list(range(10))
    assert records["seed"].nunique() == 10 and {"coverage", "components", "reason"} <= set(records.columns)
    accepted = PreparedSet(run.path("synthetic", "gan"))
    assert len(accepted) == summary["accepted"]
    if len(accepted):
        image, mask = accepted.load(accepted.ids()[0])
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32) and mask.dtype == bool
    assert json.loads(run.path("synthetic", "gan", "summary.json").read_text())["pairs"] == 10


def test_killed_and_resumed_training_ends_with_identical_weights(uninterrupted, resumed):
    run_a, _, _ = uninterrupted
    run_b, stopped, on_disk, log, result, _ = resumed
    assert stopped.status == "stopped" and stopped.steps == 5
    assert on_disk == ["checkpoint-2", "checkpoint-4"]       # limit 2, nothing half-written
    assert list(log["step"]) == [1, 2, 3, 4, 5]
    assert result.status == "resumed" and result.steps == 6
    a, b = weights(run_a.path("models", "gan")), weights(run_b.path("models", "gan"))
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs after resume"
    log_a = pd.read_csv(run_a.path("models", "gan", "loss.csv"))
    log_b = pd.read_csv(run_b.path("models", "gan", "loss.csv"))
    assert list(log_b["step"]) == list(range(1, 7))         # rows of the killed session after step 4 dropped
    cols = ["loss_d", "loss_g", "d_real", "d_fake", "r1"]
    np.testing.assert_array_equal(log_a[cols].to_numpy(), log_b[cols].to_numpy())
    state = json.loads(run_b.path("models", "gan", "train_state.json").read_text())
    assert state["sessions"] == 2 and state["seconds"] >= log_b["elapsed_s"].iloc[3]


def test_same_seed_same_sample_bytes(uninterrupted, resumed):
    from polyplib.gan.train import sample_gan

    run_a, _, _ = uninterrupted
    run_b = resumed[0]
    first = synthetic_bytes(run_a)
    assert first == synthetic_bytes(run_b)                    # same weights, same seeds -> same files
    sample_gan(run_a, force=True)                             # drawn again from scratch
    assert synthetic_bytes(run_a) == first


def test_a_finished_model_is_reused_and_only_weight_settings_change_its_key(uninterrupted, tmp_path):
    from polyplib.gan.train import model_key, train_gan

    run, _, _ = uninterrupted
    assert train_gan(run).status == "cached"
    changed = make_run(tmp_path / "changed", ["gan.learning_rate=1e-3"])
    ids = json.loads(run.path("models", "gan", "train_ids.json").read_text())
    assert model_key(changed.cfg, ids, 1) != model_key(run.cfg, ids, 1)
    same_but_bookkeeping = make_run(tmp_path / "bk", ["gan.checkpoint_every=3", "gan.n_samples=4",
                                                      "gan.singan_images=1"])
    assert model_key(same_but_bookkeeping.cfg, ids, 1) == model_key(run.cfg, ids, 1)


def test_auto_precision_rules_of_the_two_trainers(monkeypatch, tmp_path):
    """``auto``: the DDPM may pick fp16 (older GPUs); the GAN never does (its R1 penalty under a loss
    scaler). Both pick bf16 on a CPU with native bf16, where the GAN also trains channels-last
    (benchmarks/bench_cpu_layout.py: 1.96x per step). Set values are kept as they are."""
    import polyplib.training as training
    from polyplib.gan.train import make_gan_accelerator
    from polyplib.training import memory_format, resolve_mixed_precision as resolve

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cfg = make_run(tmp_path / "auto", ["gan.mixed_precision=auto", "run.device=cpu"]).cfg
    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        monkeypatch.setattr(training, "cpu_has_bf16", lambda: bf16)
        assert resolve("auto", cuda) == ("bf16" if bf16 else "fp16")
        assert resolve("auto", cuda, fp16=False) == ("bf16" if bf16 else "no")
        assert resolve("auto", cpu) == ("bf16" if bf16 else "no")
        assert make_gan_accelerator(cfg).mixed_precision == ("bf16" if bf16 else "no")
    assert resolve("fp16", cpu, fp16=False) == "fp16"
    assert memory_format("cpu") == torch.channels_last and memory_format("cuda") == torch.contiguous_format


def test_the_gan_trains_channels_last_on_the_cpu_and_saves_the_default_layout(tmp_path):
    from safetensors.torch import load_file

    from polyplib.data.prepared import load_dataset
    from polyplib.gan.train import GanTrainer

    run = make_run(tmp_path / "layout", ["gan.max_steps=2", "gan.checkpoint_every=1"])
    trainer = GanTrainer(run.cfg, load_dataset(run), load_dataset(run).ids("train"), run.path("models", "gan"))
    trainer.run(stop_after=1)
    convs = [m.weight for m in trainer.d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    trainer.run()
    saved = load_file(str(run.path("models", "gan", "discriminator.safetensors")))
    assert all(t.is_contiguous() for t in saved.values())


# ----------------------------------------------------------------------------- DiffAugment
def test_diffaugment_translation_and_cutout_keep_image_and_mask_aligned():
    from polyplib.gan.diffaugment import FILL, color, cutout, diff_augment, translation

    g = torch.Generator().manual_seed(0)
    base = torch.rand(8, 1, 24, 24) * 2 - 1
    x = base.repeat(1, 4, 1, 1)                                # all four channels equal
    for fn in (translation, cutout):
        y = fn(x.clone(), torch.Generator().manual_seed(1))
        assert y.shape == x.shape
        for c in range(1, 4):
            assert torch.equal(y[:, c], y[:, 0]), f"{fn.__name__}: channel {c} no longer aligned with channel 0"
    moved = translation(x, torch.Generator().manual_seed(1))
    assert not torch.equal(moved, x) and (moved == FILL).any()
    cut = cutout(x, torch.Generator().manual_seed(2))
    blank = (cut == FILL).float().mean(dim=(1, 2, 3))
    assert ((blank > 0) & (blank <= 0.25)).all()              # a 12x12 square per sample, clipped at the border
    # the whole policy: colour changes RGB only, the geometry stays shared
    pair = torch.rand(4, 4, 24, 24) * 2 - 1
    pair[:, 3] = torch.where(pair[:, 0] > 0, 1.0, -1.0)      # a mask that is a function of channel 0's pixels
    col = color(pair, torch.Generator().manual_seed(3))
    assert torch.equal(col[:, 3], pair[:, 3]) and not torch.equal(col[:, :3], pair[:, :3])
    geo_only = diff_augment(pair, "translation,cutout", torch.Generator().manual_seed(4))
    kept = geo_only[:, 0] != FILL
    assert torch.equal(geo_only[:, 3][kept], torch.where(geo_only[:, 0] > 0, 1.0, -1.0)[kept])
    # seeded: same generator seed -> same augmentation; gradients flow through every part
    a = diff_augment(pair, "color,translation,cutout", torch.Generator().manual_seed(5))
    b = diff_augment(pair, "color,translation,cutout", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    leaf = pair.clone().requires_grad_(True)
    diff_augment(leaf, "color,translation,cutout", g).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_diffaugment_policy_is_checked():
    from polyplib.errors import ConfigError
    from polyplib.gan.diffaugment import parse_policy

    assert parse_policy("") == [] and parse_policy("none") == []
    assert parse_policy("color, cutout") == ["color", "cutout"]
    with pytest.raises(ConfigError, match="gan.diffaugment"):
        parse_policy("color,zoom")


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("resolution,base,levels", [(32, 4, 3), (48, 6, 3), (64, 4, 4), (96, 6, 4), (100, 7, 4),
                                                    (120, 4, 5), (256, 4, 6)])
def test_networks_work_at_sizes_that_are_not_powers_of_two(resolution, base, levels):
    from polyplib.gan.models import Discriminator, GanArch, Generator, layout

    assert layout(resolution) == (base, levels)
    arch = GanArch(resolution, 8, 4)
    g, d = Generator(arch), Discriminator(arch)
    x = g(torch.randn(2, 8))
    assert x.shape == (2, 4, resolution, resolution) and x.abs().max() <= 1
    assert d(x).shape == (2,)


def test_training_at_a_non_power_of_two_resolution(tmp_path):
    from polyplib.gan.train import sample_gan, train_gan

    run = make_run(tmp_path, ["data.resolution=40", "gan.max_steps=2", "gan.n_samples=2", "gan.r1_gamma=0"])
    assert train_gan(run).status == "trained"
    summary = sample_gan(run)
    assert summary["pairs"] == 2
    from polyplib.gan.train import load_generator

    g = load_generator(run.path("models", "gan"))
    assert g.arch.resolution == 40 and g(torch.randn(1, 16)).shape == (1, 4, 40, 40)
