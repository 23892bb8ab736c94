"""The seam check and the Min-SNR loss weighting, against independent references."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from polyplib.metrics.fidelity import FEATURES, MIN_REGIONS, features_of, region_features, seam_check


def _frames(n: int, seed: int, grain: float = 0.0, size: int = 64):
    """Smooth tissue-like frames with one elliptical polyp each; ``grain``: colour speckle inside it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        base = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 4) for _ in range(3)], -1)
        image = np.array([170.0, 90.0, 70.0]) + 25 * base / (np.abs(base).max() + 1e-9)
        cy, cx = rng.uniform(18, size - 18, 2)
        ry, rx = rng.uniform(6, 14, 2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[mask] += np.array([20.0, 15.0, 5.0]) + 8 * rng.normal(0, 1, 3)
        image[..., 0] += 6 * ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.0)   # mild real texture
        if grain:
            image[mask] += grain * rng.normal(0, 1, (int(mask.sum()), 3))
        out.append((np.clip(image, 0, 255).astype(np.uint8), mask))
    return out


def test_features_describe_a_region_and_skip_tiny_ones():
    image, mask = _frames(1, 0)[0]
    f = region_features(image, mask)
    assert f.shape == (len(FEATURES),) and np.isfinite(f).all()
    speck = np.zeros_like(mask)
    speck[10, 10] = True
    assert region_features(image, speck) is None
    assert features_of([(image, speck), (image, mask)]).shape == (1, len(FEATURES))


def test_regions_from_one_distribution_cannot_be_told_apart():
    a, b = features_of(_frames(80, 1)), features_of(_frames(80, 2))
    r = seam_check(a, b, seed=0)
    assert r["seam_status"] == "ok" and r["seam_regions"] == 80
    assert r["seam_lo"] < 0.5 < r["seam_hi"]
    assert abs(r["seam_auc"] - 0.5) < 0.15


def test_grainy_generated_regions_are_found():
    real, grainy = features_of(_frames(80, 1)), features_of(_frames(80, 2, grain=18.0))
    r = seam_check(real, grainy, seed=0)
    assert r["seam_lo"] > 0.9 and r["seam_auc"] > 0.95
    # weaker grain is harder to find: the check measures, it does not just flag
    faint = seam_check(real, features_of(_frames(80, 2, grain=0.25)), seed=0)
    assert 0.55 < faint["seam_accuracy"] < r["seam_accuracy"] - 0.1


def test_too_few_regions_give_no_accuracy():
    r = seam_check(features_of(_frames(MIN_REGIONS - 1, 1)), features_of(_frames(40, 2)), seed=0)
    assert r["seam_status"].startswith("too few regions") and np.isnan(r["seam_accuracy"])


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_match_diffusers(gamma):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from polyplib.diffusion.gaussian import Chain

    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    scheduler = DDPMScheduler(**config)
    t = torch.tensor([0, 1, 10, 100, 400, 999])
    snr = compute_snr(scheduler, t)
    reference = torch.stack([snr, gamma * torch.ones_like(snr)], 1).min(1)[0] / snr   # diffusers' train scripts
    ours = Chain.from_config(dict(scheduler.config)).snr_weights(t, gamma)
    torch.testing.assert_close(ours, reference.float(), rtol=1e-3, atol=1e-7)   # diffusers: float32


def test_min_snr_weights_only_the_noise_mse():
    from polyplib.diffusion.gaussian import Chain

    chain = Chain.from_config({"num_train_timesteps": 100, "beta_schedule": "linear",
                               "beta_start": 1e-3, "beta_end": 0.05})
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 4, 8, 8, generator=g) * 2 - 1, torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 5, 50, 99])
    xt = chain.q_sample(x0, t, noise)
    out = torch.randn(4, 8, 8, 8, generator=g)
    plain = chain.training_losses(out, x0, xt, t, noise, "learned_range")
    weighted = chain.training_losses(out, x0, xt, t, noise, "learned_range", snr_gamma=5.0)
    torch.testing.assert_close(weighted["mse"], plain["mse"])
    torch.testing.assert_close(weighted["vb"], plain["vb"])
    torch.testing.assert_close(weighted["loss"], plain["mse"] * chain.snr_weights(t, 5.0) + plain["vb"])
    assert (chain.snr_weights(t, 5.0)[:2] < 1).all() and chain.snr_weights(t, 5.0)[-1] == 1
