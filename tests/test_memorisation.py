"""Memorisation check (polyplib.synthetic.memorisation) on phantom frames and on random data.

Phantom frames stand in for real images: 120 "training" and 60 "test" frames of domain A at 64 px.
Perturbed copies of training frames must be flagged as near-copies, held-out frames must not, and
the nearest-neighbour search and the real-vs-real threshold must agree with brute force.
"""
import cv2
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from polyplib.errors import StageError
from polyplib.synthetic import memorisation as mem

SIZE = 64
N_TRAIN, N_TEST = 120, 60
TEST_OFFSET = 10_000          # test frames use other indices than training frames
N_INCEPTION_TRAIN = 40        # Inception on CPU is slow: 40 x 3 variants + 30 test + 30 synthetic images
N_INCEPTION_QUERY = 30


def _frames(indices):
    from polyplib.data.phantom import render_pairs

    return render_pairs("A", 7, indices, SIZE)


def _perturb(img, mask, rng, jpeg_quality=75):
    """A near-copy: flipped left-right or up-down, Gaussian noise (sigma 3 grey levels), JPEG."""
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    else:
        img, mask = img[::-1], mask[::-1]
    img = np.clip(img + rng.normal(0, 3, img.shape) + 0.5, 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(mask)


@pytest.fixture(scope="module")
def real():
    """Training and test frames with their region references (flips, thresholds)."""
    train_x, train_m = _frames(range(N_TRAIN))
    test_x, test_m = _frames(range(TEST_OFFSET, TEST_OFFSET + N_TEST))
    return {"train_x": train_x, "train_m": train_m, "test_x": test_x, "test_m": test_m,
            "train_ref": mem.region_reference(train_x, train_m),
            "test_ref": mem.region_reference(test_x, test_m)}


def _perturbed_set(real, picks, seed, jpeg_quality=75):
    rng = np.random.default_rng(seed)
    pairs = [_perturb(real["train_x"][i], real["train_m"][i], rng, jpeg_quality) for i in picks]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module")
def inception():
    """The FID Inception extractor on CPU with one torch thread, or a skip saying why not."""
    torch = pytest.importorskip("torch")
    from polyplib.features.inception import InceptionFeatures
    from polyplib.features.inception_weights import resolve_fid_weights

    try:
        weights = resolve_fid_weights(None, None)
    except StageError as exc:
        pytest.skip(f"FID Inception weights cannot be resolved: {exc}")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield InceptionFeatures(weights, device="cpu", resize="clean")
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------ phantom behaviour
def test_perturbed_training_copies_are_flagged_by_region(real):
    picks = np.random.default_rng(1).choice(N_TRAIN, 60, replace=False)
    x, m = _perturbed_set(real, picks, seed=2)
    table = mem.copy_check({"region": mem.Measure(mem.region_descriptors(x, m), real["train_ref"])})
    assert table["near_train"].mean() >= 0.95
    assert (table["region_train_owner"].to_numpy() == picks).mean() >= 0.95
    assert not table["near_test"].any()            # no test reference given: nothing can be near a test image
    s = mem.summary(table)
    assert s["n_pairs"] == 60 and s["near_train_count"] == int(table["near_train"].sum())
    assert s["by_measure"]["region"]["near_train_share"] == pytest.approx(table["near_train"].mean())


def test_held_out_test_images_are_not_flagged_by_region(real):
    desc = mem.region_descriptors(real["test_x"], real["test_m"])
    table = mem.copy_check({"region": mem.Measure(desc, real["train_ref"])})
    assert table["near_train"].mean() <= 0.02
    # and the threshold is a real-vs-real distance, far above what the perturbed copies are at
    assert 0 < real["train_ref"].threshold < np.median(table["region_train_dist"])


def test_perturbed_copies_and_held_out_images_with_inception(real, inception):
    """Region AND Inception. The copies here are flipped + noisy but not JPEG-compressed: at 64 px a
    JPEG-75 copy is, to FID Inception, about as far from its original as another phantom frame is
    (measured: the AND then flags none), so that perturbation is checked with the region alone."""
    k, q = N_INCEPTION_TRAIN, N_INCEPTION_QUERY
    x3, m3, owner = mem.flipped(real["train_x"][:k], real["train_m"][:k])
    inc_ref = mem.Reference(inception(list(x3)), owner).with_threshold()
    reg_ref = mem.Reference(mem.region_descriptors(x3, m3), owner).with_threshold()
    picks = np.random.default_rng(3).choice(k, q, replace=False)
    px, pm = _perturbed_set(real, picks, seed=4, jpeg_quality=None)
    copies = mem.copy_check({"region": mem.Measure(mem.region_descriptors(px, pm), reg_ref),
                             "inception": mem.Measure(inception(list(px)), inc_ref)})
    assert copies["near_train"].mean() >= 0.95
    assert (copies["inception_train_owner"].to_numpy() == picks).mean() >= 0.95
    tx, tm = real["test_x"][:q], real["test_m"][:q]
    held_out = mem.copy_check({"region": mem.Measure(mem.region_descriptors(tx, tm), reg_ref),
                               "inception": mem.Measure(inception(list(tx)), inc_ref)})
    assert held_out["near_train"].mean() <= 0.02
    assert set(mem.summary(held_out)["by_measure"]) == {"region", "inception"}


def test_leaked_test_images_are_named(real):
    leaked = np.array([3, 17, 29, 41, 52])
    picks = np.random.default_rng(5).choice(N_TRAIN, 10, replace=False)
    px, pm = _perturbed_set(real, picks, seed=6)
    x = np.concatenate([px[:4], real["test_x"][leaked], px[4:]])
    m = np.concatenate([pm[:4], real["test_m"][leaked], pm[4:]])
    is_leak = np.zeros(len(x), bool)
    is_leak[4:4 + len(leaked)] = True
    table = mem.copy_check({"region": mem.Measure(mem.region_descriptors(x, m), real["train_ref"],
                                                  real["test_ref"])})
    np.testing.assert_array_equal(table["near_test"].to_numpy(), is_leak)
    np.testing.assert_array_equal(table["region_test_owner"].to_numpy()[is_leak], leaked)
    np.testing.assert_allclose(table["region_test_dist"].to_numpy()[is_leak], 0, atol=1e-6)
    np.testing.assert_array_equal(table["near_train"].to_numpy(), ~is_leak)
    s = mem.summary(table)
    assert (s["near_test_count"], s["near_train_count"]) == (5, 10)
    assert s["near_test_share"] == pytest.approx(5 / 15)


# ------------------------------------------------------------------------------ units, random data
@pytest.mark.parametrize("use_exclude", [False, True])
@pytest.mark.parametrize("block_bytes", [8 * 5 * 7, 8 * 5 * 53, mem._BLOCK_BYTES])
def test_nearest_matches_brute_force(use_exclude, block_bytes):
    rng = np.random.default_rng(11)
    n_images, d = 18, 5
    reference = rng.normal(size=(3 * n_images - 1, d)).astype(np.float32)   # 53 rows: blocks do not divide it
    owner = np.tile(np.arange(n_images), 3)[:len(reference)]
    query = rng.normal(size=(37, d)).astype(np.float32)
    query[:6] = reference[[0, 5, 17, 18, 40, 52]]                           # exact hits, incl. last row
    exclude = rng.integers(0, n_images, len(query)) if use_exclude else None
    if use_exclude:
        exclude[:3] = owner[[0, 5, 17]]                                     # exact hit of an excluded owner
    dist, who = mem.nearest(query, reference, owner, exclude, block_bytes=block_bytes)
    full = cdist(query.astype(np.float64), reference.astype(np.float64))
    if use_exclude:
        full[exclude[:, None] == owner[None, :]] = np.inf
    j = np.argmin(full, axis=1)
    np.testing.assert_allclose(dist, full[np.arange(len(j)), j], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(who, owner[j])
    if use_exclude:
        assert (dist[:3] > 0).all() and (who[:3] != exclude[:3]).all()


def test_nearest_with_nothing_admissible():
    ref = np.zeros((3, 4))
    dist, who = mem.nearest(np.ones((2, 4)), ref, np.zeros(3, int), exclude=np.zeros(2, int))
    assert np.isinf(dist).all() and (who == -1).all()
    with pytest.raises(StageError):
        mem.nearest(np.ones((2, 4)), np.ones((3, 5)), np.zeros(3, int))


def test_real_threshold_never_uses_own_flips():
    """Left-right symmetric images: each one's own left-right flip is an exact copy, so a threshold
    that let an image see its own variants would be 0."""
    rng = np.random.default_rng(21)
    half = rng.integers(0, 256, (10, 16, 8, 3), dtype=np.uint8)
    images = np.concatenate([half, half[:, :, ::-1]], axis=2)
    masks = np.zeros((10, 16, 16), bool)
    masks[:, 4:12, 3:13] = True
    x3, m3, owner = mem.flipped(images, masks)
    desc = mem.region_descriptors(x3, m3)
    threshold = mem.real_threshold(desc, owner, percentile=1.0)
    full = cdist(desc[:10].astype(np.float64), desc.astype(np.float64))
    full[np.arange(10)[:, None] == owner[None, :]] = np.inf
    assert threshold > 0
    assert threshold == pytest.approx(np.percentile(full.min(axis=1), 1.0), rel=1e-6)
    ref = mem.region_reference(images, masks)                    # variant by variant: same rows
    np.testing.assert_allclose(ref.desc, desc, atol=1e-7)
    np.testing.assert_array_equal(ref.owner, owner)
    assert ref.threshold == pytest.approx(threshold) and ref.n_images == 10
    with pytest.raises(StageError):
        mem.real_threshold(desc[:3], owner[:3] * 0)


def test_region_descriptor_is_the_polyp_box():
    rng = np.random.default_rng(31)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 20:40] = True                     # box 20 x 20, margin 2 -> rows 8:32, cols 18:42
    d = mem.region_descriptors([img], [mask], size=8)[0]
    assert d.shape == (8 * 8 * 3,) and d.dtype == np.float32
    outside = img.copy()
    outside[:8] = 0
    outside[:, 42:] = 255
    np.testing.assert_array_equal(mem.region_descriptors([outside], [mask], size=8)[0], d)
    inside = img.copy()
    inside[8, 18] ^= 0xFF                         # a corner pixel of the grown box matters
    assert not np.array_equal(mem.region_descriptors([inside], [mask], size=8)[0], d)
    # an empty mask describes the whole frame; distances are RMS on a 0..1 scale
    whole = mem.region_descriptors([img], [np.zeros_like(mask)], size=8)[0]
    expect = cv2.resize(img.astype(np.float32), (8, 8), interpolation=cv2.INTER_AREA).reshape(-1) / 255
    np.testing.assert_allclose(whole * np.sqrt(8 * 8 * 3), expect, atol=1e-5)
    dark = img // 2                               # + 10 without clipping: every pixel differs by 10
    a, b = (mem.region_descriptors([v], [np.zeros_like(mask)], size=8)[0] for v in (dark, dark + 10))
    assert np.linalg.norm(b - a) == pytest.approx(10 / 255, rel=1e-4)


def test_flipped_pair_matches_flipped_descriptor(real):
    x, m = real["train_x"][80:100], real["train_m"][80:100]   # 87: crop shrinks in y, grows in x
    d = mem.region_descriptors(x, m).reshape(20, 24, 24, 3)
    lr = mem.region_descriptors(x[:, :, ::-1], m[:, :, ::-1]).reshape(20, 24, 24, 3)
    ud = mem.region_descriptors(x[:, ::-1], m[:, ::-1]).reshape(20, 24, 24, 3)
    np.testing.assert_allclose(lr, d[:, :, ::-1], atol=1e-6)       # cv2.INTER_AREA would fail this
    np.testing.assert_allclose(ud, d[:, ::-1], atol=1e-6)
    listed = mem.flipped(list(x), list(m))                      # sequences of arrays work the same
    arrays = mem.flipped(x, m)
    assert len(listed[0]) == 60 and np.array_equal(np.stack(listed[0]), arrays[0])
    np.testing.assert_array_equal(listed[2], arrays[2])


def test_copy_check_requires_every_measure():
    rng = np.random.default_rng(41)
    base = rng.normal(size=(6, 4))
    ref = mem.Reference(np.concatenate([base, base + 10]), np.tile(np.arange(6), 2), threshold=0.5)
    near_a = base + np.where(np.arange(6)[:, None] < 4, 0.01, 3.0)      # pairs 0-3 close under "a"
    near_b = base + np.where(np.arange(6)[:, None] >= 2, 0.01, 3.0)     # pairs 2-5 close under "b"
    table = mem.copy_check({"a": mem.Measure(near_a, ref, ref),
                            "b": {"synthetic": near_b, "train": ref, "test": ref, "threshold_test": 0.0}})
    np.testing.assert_array_equal(table["near_train"].to_numpy(), [False, False, True, True, False, False])
    assert not table["near_test"].any()                                 # "b" has a test threshold of 0
    assert table["a_near_test"].sum() == 4
    s = mem.summary(table)
    assert s["measures"] == ["a", "b"] and s["near_train_count"] == 2
    assert s["by_measure"]["b"]["thresholds"] == {"train": 0.5, "test": 0.0}
    assert mem.summary(table.iloc[:0])["near_train_share"] is None
    with pytest.raises(StageError):
        mem.copy_check({"a": mem.Measure(near_a, ref), "b": mem.Measure(near_b[:3], ref)})
    with pytest.raises(StageError):
        mem.copy_check({"a": mem.Measure(near_a, mem.Reference(ref.desc, ref.owner))})   # no threshold
