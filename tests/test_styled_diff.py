"""Styled-Diff: the authors' guided style transfer and their colour matching.

The feature networks here are TINY RANDOMLY INITIALISED stand-ins (a 6-module VGG-shaped stack, a
2-block ViT): they exercise the mechanics of the pass and are never used for a reported number.
The loss weights are the paper's scaled by (32 / 256)^2: the authors' losses are per-pixel means
tuned at 256 px, so on a 32-px test image the same weights give 64 times larger steps per pixel.
"""
import dataclasses

import numpy as np
import pytest
import torch

from polyplib.errors import StageError
from polyplib.sampling.feature_nets import (FeatureNets, load_dino, load_feature_nets, load_vgg, missing_reason,
                                            vgg_features)
from polyplib.sampling.guided import LOSS_TERMS, StyleSettings, guided_style
from polyplib.sampling.style import colour_match, mkl_transfer

SIZE = 32
SCALE = (SIZE / 256) ** 2


def tiny_random_vgg() -> torch.nn.Module:
    """Random, VGG-shaped: conv1_1 at module 0, conv2_1 at module 5. Not ImageNet weights."""
    torch.manual_seed(1)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1)).eval().requires_grad_(False)


def tiny_random_vit() -> torch.nn.Module:
    """Random 2-block ViT at 32 px. Not DINO weights."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(2)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             num_classes=0).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def setup():
    from diffusers import DDPMScheduler, UNet2DModel

    from polyplib.config import load_config
    from polyplib.diffusion.model import scheduler_kwargs, unet_config

    ddpm = load_config("smoke").ddpm      # the authors' UNet flags and learned sigma, smoke widths
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config(ddpm, SIZE)).eval()
    sconf = dict(DDPMScheduler(**scheduler_kwargs(ddpm.num_train_timesteps, ddpm.beta_schedule, ddpm.variance)).config)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.stack([(yy - 14) ** 2 + (xx - 15) ** 2 < 36, (yy - 18) ** 2 + (xx - 12) ** 2 < 30])
    regions = np.stack([(yy - 14) ** 2 + (xx - 15) ** 2 < 81, (yy - 18) ** 2 + (xx - 12) ** 2 < 75])
    images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)          # the inpainted pairs
    targets = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)         # their source frames
    nets = FeatureNets(tiny_random_vgg(), tiny_random_vit(), {"note": "tiny random test networks"})
    paper = StyleSettings.paper()
    settings = dataclasses.replace(paper, steps=20, skip_steps=8, weights={k: v * SCALE for k, v in paper.weights.items()})
    return dict(unet=unet, sconf=sconf, images=images, masks=masks, targets=targets, target_masks=masks,
                regions=regions, nets=nets, settings=settings)


def run_pass(setup, guide=True, seeds=(11, 12), **changes):
    settings = dataclasses.replace(setup["settings"], **changes)
    kw = {k: setup[k] for k in ("images", "masks", "targets", "target_masks", "regions")}
    return guided_style(setup["unet"], setup["sconf"], seeds=list(seeds), settings=settings, nets=setup["nets"],
                        guide=guide, **kw)


def test_guidance_lowers_the_weighted_loss_against_the_same_pass_unguided(setup):
    for seeds in ((11, 12), (5, 6)):
        _, _, guided = run_pass(setup, True, seeds)
        _, _, plain = run_pass(setup, False, seeds)
        assert (guided["final_loss"] < 0.5 * plain["final_loss"]).all(), (guided["final_loss"], plain["final_loss"])
        assert guided["loss_terms"]["l2"].sum() < plain["loss_terms"]["l2"].sum()   # pulled toward the source frame


def test_costs_are_counted_per_pair(setup):
    _, _, info = run_pass(setup)
    steps = 20 - 8                                     # indices 11 ... 0
    divergence = sum(i > 50 for i in range(steps))     # divergence_above=50: never at this length
    assert info["costs"] == {"unet_forward": steps, "unet_backward": steps, "unet_encoder_calls": 2 * steps,
                             "vgg_calls": 2 * steps, "dino_calls": steps + 1 + (1 if divergence else 0)}


def test_without_keep_context_the_whole_frame_is_restyled_with_it_only_the_region(setup):
    images, masks, _ = run_pass(setup, keep_context=False)
    outside = ~setup["regions"]
    assert (images[outside] != setup["targets"][outside]).mean() > 0.5       # the authors' pass: every pixel
    images, masks, _ = run_pass(setup, keep_context=True)
    assert np.array_equal(images[outside], setup["targets"][outside])
    assert np.array_equal(masks[outside] > 127, setup["target_masks"][outside])
    assert (images[setup["regions"]] != setup["targets"][setup["regions"]]).mean() > 0.5


def test_same_seed_same_bytes_other_seed_other_bytes(setup):
    a, am, _ = run_pass(setup)
    b, bm, _ = run_pass(setup)
    c, _, _ = run_pass(setup, seeds=(13, 12))
    assert np.array_equal(a, b) and np.array_equal(am, bm)
    assert not np.array_equal(a[0], c[0])
    single, _, _ = run_pass({**setup, **{k: setup[k][1:] for k in ("images", "masks", "targets", "target_masks",
                                                                    "regions")}}, seeds=(12,))
    assert np.abs(single[0].astype(int) - a[1].astype(int)).max() <= 1      # a pair does not depend on its batch


@pytest.fixture(scope="module")
def every_term(setup):
    images, _, info = run_pass(setup, divergence_above=-1)     # every term active up to the last step
    assert set(info["loss_terms"]) == set(LOSS_TERMS)
    return images


@pytest.mark.parametrize("term", LOSS_TERMS)
def test_each_loss_weight_at_zero_removes_its_term(setup, every_term, term):
    weights = dict(setup["settings"].weights, **{term: 0.0})
    images, _, info = run_pass(setup, divergence_above=-1, weights=weights)
    assert set(info["loss_terms"]) == set(LOSS_TERMS) - {term}
    assert not np.array_equal(images, every_term)              # the term did move the pass


def test_all_weights_zero_is_the_unguided_pass_byte_for_byte(setup):
    zero = {t: 0.0 for t in LOSS_TERMS}
    images, masks, info = run_pass(setup, weights=zero)
    plain, plain_masks, _ = run_pass(setup, guide=False)
    assert info["costs"]["unet_backward"] == 0 and not info["loss_terms"]
    assert np.array_equal(images, plain) and np.array_equal(masks, plain_masks)


# ----------------------------------------------------------------------------- weights from files
def test_missing_weights_name_both_keys_and_download_is_explicit():
    from polyplib.config import load_config

    style = load_config("smoke").sampling.style
    reason = missing_reason(style)
    assert "sampling.style.vgg_weights" in reason and "sampling.style.dino_weights" in reason
    assert missing_reason(load_config("smoke", ["sampling.style.download=true"]).sampling.style) is None
    assert "dino_weights" in missing_reason(load_config("smoke", ["sampling.style.vgg_weights=/x"]).sampling.style)
    assert "vgg_weights" not in missing_reason(load_config("smoke", ["sampling.style.vgg_weights=/x"]).sampling.style)


def test_weight_files_are_checked_key_by_key_and_shape_by_shape(tmp_path):
    with pytest.raises(StageError, match=r"nope\.pth: sampling\.style\.vgg_weights names no file"):
        load_vgg(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(StageError, match=r"junk\.pth: sampling\.style\.vgg_weights is not a readable"):
        load_vgg(str(tmp_path / "junk.pth"))

    # a VGG-19 features state dict with random values (the file layout of torchvision's vgg19-*.pth)
    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in vgg_features(full=True).state_dict().items()}
    torch.save(features, tmp_path / "vgg19.pth")
    net, origin = load_vgg(str(tmp_path / "vgg19.pth"))
    assert torch.equal(net[5].weight, features["features.5.weight"]) and len(origin["sha256"]) == 64
    vgg16_like = {k: v for k, v in features.items() if not k.startswith("features.34")}   # VGG-19's last conv missing
    torch.save(vgg16_like, tmp_path / "vgg16.pth")
    with pytest.raises(StageError, match=r"vgg16\.pth: sampling\.style\.vgg_weights has no 'features\.34\.weight' "
                                         r"\(expected shape \(512, 512, 3, 3\)\)"):
        load_vgg(str(tmp_path / "vgg16.pth"))
    wrong = dict(features, **{"features.5.weight": torch.zeros(128, 64, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(StageError, match=r"wrong\.pth: sampling\.style\.vgg_weights 'features\.5\.weight' has shape "
                                         r"\(128, 64, 1, 1\), expected \(128, 64, 3, 3\)"):
        load_vgg(str(tmp_path / "wrong.pth"))

    # DINO: a random ViT-Tiny/16 state dict is accepted for that model and refused for ViT-S/16
    import timm

    torch.manual_seed(0)
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in tiny.state_dict().items()}}, tmp_path / "dino.pth")
    net, _ = load_dino(str(tmp_path / "dino.pth"), "vit_tiny_patch16_224")    # DINO's checkpoint layout
    assert torch.equal(net.pos_embed, tiny.pos_embed)
    with pytest.raises(StageError, match=r"dino\.pth: sampling\.style\.dino_weights 'cls_token' has shape "
                                         r"\(1, 1, 192\), expected \(1, 1, 384\)"):
        load_dino(str(tmp_path / "dino.pth"), "vit_small_patch16_224")
    with pytest.raises(StageError, match="dino_weights is not set"):
        load_dino(None, "vit_tiny_patch16_224")


def test_a_bad_weight_file_stops_stage_03_before_any_pair(tmp_path):
    from polyplib.config import load_config

    style = load_config("smoke", [f"sampling.style.vgg_weights={tmp_path / 'missing.pth'}",
                                  f"sampling.style.dino_weights={tmp_path / 'missing.pth'}"]).sampling.style
    assert missing_reason(style) is None                        # both given: the pass must run, or fail clearly
    with pytest.raises(StageError, match="missing.pth: sampling.style.vgg_weights names no file"):
        load_feature_nets(style)


# ----------------------------------------------------------------------------- colour matching
def test_colour_match_is_color_matchers_mkl_as_the_authors_called_it():
    color_matcher = pytest.importorskip("color_matcher")
    from color_matcher.normalizer import Normalizer

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] / 64.0
    base = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.4 + 0.2 * yy, 0.3 + 0.2 * xx * yy], -1)
    image = np.clip((base + rng.normal(0, 0.05, base.shape)) * 200 + 20, 0, 255).astype(np.uint8)
    ref = np.clip(base @ np.array([[0.7, 0.2, 0.0], [0.1, 0.5, 0.1], [0.0, 0.2, 0.4]]).T * 255 + 30
                  + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    # diffuse-gen image_editor.py, --use_colormatch:
    src = Normalizer(image).type_norm()
    trg = Normalizer(ref).type_norm()
    expected = Normalizer(color_matcher.ColorMatcher().transfer(src=src, ref=trg, method="mkl")).uint8_norm()
    ours = colour_match(image, ref)
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(ours.astype(int) - image.astype(int)).mean() > 10          # it really had to move


def test_mkl_transfer_gives_the_reference_colour_mean_and_covariance():
    rng = np.random.default_rng(1)
    image = rng.normal([100, 80, 60], [20, 10, 5], (5000, 3)) @ np.array([[1, 0.2, 0], [0, 1, 0.3], [0, 0, 1]])
    reference = rng.normal([150, 90, 70], [30, 15, 8], (5000, 3))
    out = mkl_transfer(image.reshape(50, 100, 3), reference.reshape(50, 100, 3)).reshape(-1, 3)
    assert np.allclose(out.mean(0), reference.mean(0), atol=1e-6)
    assert np.allclose(np.cov(out, rowvar=False), np.cov(reference, rowvar=False), rtol=1e-6, atol=1e-6)
