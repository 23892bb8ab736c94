"""Stage 06 units: metrics, bootstrap, paired test, mixing rule, splits, augmentation, plan, models."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from polyplib.config import load_config  # noqa: E402
from polyplib.errors import StageError  # noqa: E402
from polyplib.segmentation import data as sdata  # noqa: E402
from polyplib.synthetic.folder import read_manifest  # noqa: E402
from polyplib.segmentation.evaluate import bootstrap_ci, dice_iou, pair_scores, paired_test, summarise  # noqa: E402
from polyplib.segmentation.models import (build_model, lite0_timm_state_dict, load_model,  # noqa: E402
                                          save_model, wheel_weights_file)
from polyplib.segmentation.study import Configuration, plan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMOKE_SEGMENTATION = [  # the values proposed for the smoke profile
    "segmentation.models=[unet]", "segmentation.encoder=tu-efficientnet_lite0", "segmentation.epochs=3",
    "segmentation.lr=1e-3", "segmentation.lr_drop_epoch=2", "segmentation.lr_after_drop=1e-4",
    "segmentation.batch_size=8", "segmentation.seeds=[0]", "segmentation.synthetic_per_real=[1,3]",
    "segmentation.mix_r=[1]", "segmentation.small_n=[16]", "segmentation.bootstrap=500",
    "segmentation.num_workers=0", "run.torch_threads=1"]


# ----------------------------------------------------------------------------- metrics
def test_dice_and_iou_agree_with_a_hand_computed_case():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True                       # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[0:2, 1:3] = True                     # 4 pixels, 2 overlap
    dice, iou = dice_iou(pred, gt)
    assert dice == pytest.approx(2 * 2 / (4 + 4))           # 0.5
    assert iou == pytest.approx(2 / 6)                       # intersection 2, union 6
    assert dice_iou(np.zeros((4, 4)), np.zeros((4, 4))) == (1.0, 1.0)   # empty and empty: perfect
    assert dice_iou(np.zeros((4, 4)), gt) == (0.0, 0.0)
    assert dice_iou(gt, np.zeros((4, 4))) == (0.0, 0.0)
    table = pair_scores(np.stack([pred, np.zeros((4, 4), bool), gt]), np.stack([gt, np.zeros((4, 4), bool), gt]),
                        ids=["a", "b", "c"])
    assert table["image_id"].tolist() == ["a", "b", "c"]
    assert np.allclose(table["dice"], [0.5, 1, 1]) and np.allclose(table["iou"], [1 / 3, 1, 1])


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 80, 320):
        values = rng.beta(5, 2, size=n)
        mean, lo, hi = bootstrap_ci(values, 1000, seed=0)
        assert lo <= mean <= hi and mean == pytest.approx(values.mean())
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)   # ~ 1 / sqrt(n)
    assert bootstrap_ci(values, 500, seed=3) == bootstrap_ci(values, 500, seed=3)   # seeded


def test_summary_averages_seeds_per_image_before_the_bootstrap():
    df = pd.DataFrame({"g": "x", "seed": [0, 0, 1, 1], "image_id": ["a", "b", "a", "b"],
                       "dice": [0.2, 0.4, 0.6, 0.8], "iou": [0.1, 0.3, 0.5, 0.7]})
    row = summarise(df, ["g"], 200, seed=0).iloc[0]
    assert row["n_images"] == 2 and row["n_seeds"] == 2
    assert row["iou"] == pytest.approx(0.4) and row["iou_seed_sd"] == pytest.approx(np.std([0.2, 0.6], ddof=1))


def test_paired_test_finds_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(1)
    ids = [f"i{k}" for k in range(40)]
    base = pd.Series(rng.uniform(0.3, 0.8, 40), index=ids)
    better = base + rng.uniform(0.02, 0.08, 40)
    t = paired_test(better, base, 500)
    assert t["p"] < 1e-6 and t["diff_lo"] > 0 and t["n_images"] == 40
    assert paired_test(base, base, 500)["p"] == 1.0
    noisy = base + rng.normal(0, 0.05, 40)
    assert paired_test(noisy, base, 500)["p"] > 0.01
    assert paired_test(better.iloc[::-1], base, 500)["diff"] == pytest.approx(t["diff"])   # matched by id


# ----------------------------------------------------------------------------- data
def _pool(n, synthetic=False, source_ids=None):
    return sdata.PairPool(np.zeros((n, 8, 8, 3), np.uint8), np.zeros((n, 8, 8), bool),
                          [f"p{i}" for i in range(n)], source_ids or [f"r{i}" for i in range(n)],
                          np.full(n, synthetic))


@pytest.mark.parametrize("alpha,r", [(0.5, 1), (0.5, 3), (0.25, 2)])
def test_mixing_rule_gives_the_expected_share_of_synthetic_samples(alpha, r):
    n_real = 200
    real = _pool(n_real)
    syn = _pool(3 * n_real, True, [f"r{i}" for i in range(n_real) for _ in range(3)])
    plan_ = sdata.EpochPlan(real, syn, [], seed=0, mix_alpha=alpha, mix_r=r)
    shares, counts = [], []
    for epoch in range(20):
        items = plan_.items(epoch)
        real_items = [i for p, i, _ in items if p == 0]
        syn_items = [i for p, i, _ in items if p == 1]
        assert sorted(real_items) == list(range(n_real))          # every real image, once
        assert len(set(syn_items)) == len(syn_items)              # drawn without replacement
        by_real = pd.Series([syn.source_ids[i] for i in syn_items]).value_counts()
        assert set(by_real.unique()) <= {r}                       # r of its own samples, or none
        shares.append(len(syn_items) / len(items))
        counts.append(len(by_real))
    assert np.mean(shares) == pytest.approx(alpha * r / (1 + alpha * r), abs=0.02)
    assert np.mean(counts) / n_real == pytest.approx(alpha, abs=0.03)
    assert plan_.items(3) == plan_.items(3) and plan_.items(3) != plan_.items(4)   # per epoch, seeded


def test_mixing_rule_uses_only_the_samples_a_real_image_has():
    real = _pool(2)
    syn = _pool(1, True, ["r0"])                                  # r1 has no synthetic sample
    items = sdata.mix_epoch(2, [[0], []], alpha=1.0, r=3, rng=np.random.default_rng(0))
    assert sorted(items) == [(0, 0), (0, 1), (1, 0)]
    assert sdata.EpochPlan(real, syn, [], 0, 1.0, 3).synthetic_fraction(0) == pytest.approx(1 / 3)


def test_a_set_without_source_images_is_dealt_out_to_the_real_images(tmp_path):
    """GAN and unconditional sets have no source image per pair: pair i goes to real image i mod n,
    and a pair dealt to one image is never dealt to another (no fit/validation overlap)."""
    from polyplib.data.imageio import write_png

    rows = []
    for i in range(7):
        image = np.full((8, 8, 3), 30 * i, np.uint8)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = 255
        write_png(tmp_path / "images" / f"g{i}.png", image)
        write_png(tmp_path / "masks" / f"g{i}.png", mask)
        rows.append({"id": f"g{i}", "file": f"g{i}", "source_id": "", "accepted": True})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    assert sdata.is_unconditional(read_manifest(tmp_path))
    real = ["0003", "0001", "0002"]
    pool = sdata.load_synthetic_pool(tmp_path, real, 8)
    assert len(pool) == 7
    groups = {k: sorted(v) for k, v in sdata.by_source(pool).items()}
    assert {k: len(v) for k, v in groups.items()} == {"0003": 3, "0001": 2, "0002": 2}
    dealt = [i for v in groups.values() for i in v]
    assert len(set(dealt)) == 7
    # the first sample of each real image is the lowest-numbered pair dealt to it
    firsts = {pool.source_ids[i]: int(pool.images[i][0, 0, 0]) for i in sdata.first_per_source(pool, 1)}
    assert firsts == {"0003": 0, "0001": 30, "0002": 60}


def test_splits_are_seeded_disjoint_and_sized():
    ids = [f"{i:04d}" for i in range(100)]
    fit, val = sdata.split_train_val(ids, 0.2, seed=0)
    assert len(val) == 20 and len(fit) == 80 and not set(fit) & set(val)
    assert sdata.split_train_val(ids[::-1], 0.2, seed=0) == (fit, val)      # order of input irrelevant
    assert sdata.split_train_val(ids, 0.2, seed=1)[1] != val
    small = sdata.small_subset(fit, 16, seed=0)
    assert len(small) == 16 and set(small) <= set(fit) and small == sdata.small_subset(fit, 16, seed=0)
    assert sdata.small_subset(fit, 500, seed=0) == sorted(fit)


def test_control_augmentation_is_the_papers_and_seeded():
    import albumentations as A

    aug = sdata.control_augmentation()
    flip, affine, oneof = aug.transforms
    assert isinstance(flip, A.HorizontalFlip) and isinstance(affine, A.Affine) and isinstance(oneof, A.OneOf)
    assert affine.keep_ratio and affine.p == 1 and tuple(affine.scale["x"]) == (0.5, 1.5)
    assert tuple(affine.translate_percent["x"]) == (-0.1, 0.1) and tuple(affine.rotate) == (0, 0)
    assert {type(t).__name__ for t in oneof.transforms} == {"CLAHE", "RandomBrightnessContrast", "RandomGamma"}
    assert oneof.p == pytest.approx(0.9)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    pool = sdata.PairPool(image[None], mask[None].astype(bool), ["a"], ["a"], np.zeros(1, bool))
    ds = sdata.PairDataset([pool], "control", (0.5,) * 3, (0.5,) * 3)
    a, b, c = ds[(0, 0, 7)], ds[(0, 0, 7)], ds[(0, 0, 8)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    ys, xs = np.nonzero(a[1][0].numpy())                          # isotropic scale: the square stays square
    assert abs((ys.max() - ys.min()) - (xs.max() - xs.min())) <= 1
    x, y, synthetic = sdata.PairDataset([_pool(1)], "none", (0.5,) * 3, (0.5,) * 3)[(0, 0, 0)]
    assert x.shape == (3, 8, 8) and float(x.min()) == -1.0 and y.shape == (1, 8, 8) and synthetic is False


# ----------------------------------------------------------------------------- plan
def test_plan_for_the_smoke_config_is_small_and_covers_the_tables():
    cfg = load_config("smoke", SMOKE_SEGMENTATION)
    configs = plan(cfg, ["diff", "styled-diff"])
    # 2 real baselines + T3 2 sources x 2 N + T4 2 sources x 2 augmentations + small 1 N x (real + 1 r)
    assert len(configs) == 2 + 4 + 4 + 2 == len(set(configs))
    assert {c.regime for c in configs} == {"real", "synthetic", "mixed"}
    assert len(plan(cfg, [])) == 3                                   # absent sources: real only
    names = [c.name for c in configs]
    assert len(set(names)) == len(names)
    paper = load_config("paper")
    full = plan(paper, list(paper.segmentation.sources))
    assert len(full) == (2 + 6 * 3 + 6 * 2 + 4 * (1 + 3)) * 3     # 6 sources: not the full cross product
    c = Configuration("mixed", "diff", 16, 2, "control", "unet", 1)
    assert c.baseline() == Configuration("real", None, 16, 0, "control", "unet", 1)
    assert Configuration.from_row(c.row()) == c


# ----------------------------------------------------------------------------- models
def test_efficientnet_lite0_wheel_weights_load_into_every_encoder_tensor():
    torch.manual_seed(0)
    random_init = build_model("unet", "tu-efficientnet_lite0", None).encoder.state_dict()
    model = build_model("unet", "tu-efficientnet_lite0", "imagenet")
    file_state = lite0_timm_state_dict(torch.load(wheel_weights_file(), map_location="cpu", weights_only=True))
    own = model.encoder.state_dict()
    assert model.weights_report["loaded"] == len(own) > 250
    for key, value in own.items():
        assert torch.equal(value, file_state[key[len("model."):]]), key          # loaded = the file's
        if value.is_floating_point() and "running_var" not in key and value.numel() > 1:
            assert not torch.equal(value, random_init[key]), key                 # no tensor left at init
    # what the encoder leaves out is the ImageNet head only
    assert {k.split(".")[1] for k in model.weights_report["unused"]} == {"conv_head", "bn2", "classifier"}


def test_encoder_weights_errors_are_clear(tmp_path):
    with pytest.raises(StageError, match="encoder_weights"):
        build_model("unetplusplus", "se_resnext50_32x4d", "imagenet")            # not available offline
    with pytest.raises(StageError, match="not found"):
        build_model("unet", "tu-efficientnet_lite0", str(tmp_path / "missing.pth"))
    with pytest.raises(StageError, match="does not fit"):
        build_model("unet", "resnet18", str(wheel_weights_file()), encoder_depth=3, decoder_channels=(16, 8, 4))
    with pytest.raises(StageError, match="unknown segmentation model"):
        build_model("segformer", "resnet18", None)


def test_models_build_save_and_reload_offline(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    for name in ("unetplusplus", "unet", "fpn", "deeplabv3plus"):
        model = build_model(name, "tu-efficientnet_lite0", None).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 1, 32, 32)
    model = build_model("unet", "tu-efficientnet_lite0", "imagenet").eval()
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    # a saved whole model is also a valid encoder_weights file
    other = build_model("fpn", "tu-efficientnet_lite0", str(tmp_path / "m" / "model.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(other.encoder.state_dict().values(),
                                                  model.encoder.state_dict().values()))


def test_a_channels_last_model_saves_in_the_default_layout_and_reloads_equal(tmp_path):
    """CPU training runs channels-last (training.memory_format); safetensors writes only contiguous
    tensors, so save_model writes the default layout and gives the model its layout back."""
    import torch

    from polyplib.segmentation.models import build_model, load_model, save_model

    torch.manual_seed(0)
    model = build_model("unet", "tu-efficientnet_lite0", None).eval().to(memory_format=torch.channels_last)
    params = list(model.parameters())
    save_model(model, tmp_path / "m")
    assert all(a is b for a, b in zip(params, model.parameters()))
    conv = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    loaded = load_model(tmp_path / "m").eval()
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())     # the same weights, exactly
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():     # the two layouts run different kernels: equal up to float rounding
        assert torch.allclose(loaded(x), model(x), atol=1e-4, rtol=1e-4)
