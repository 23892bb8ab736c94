"""Stage 03 building blocks: mask post-processing, MKL styling, samplers and their UNet cost."""
import numpy as np
import pytest
import torch

from polyplib.errors import StageError
from polyplib.synthetic.postprocess import PostProcess, clean_mask, dilate, judge, scaled_px


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are fastest on one thread, and 2 shared cores are often busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(size=32, seed=0, out_channels=4):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=4, out_channels=out_channels, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def scheduler_config():
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(1000).config)


class Counter:
    """Counts UNet forward calls with a forward hook (independent of what the samplers report)."""

    def __init__(self, unet):
        self.n = 0
        self.handle = unet.register_forward_hook(self)

    def __call__(self, *args):
        self.n += 1


# ----------------------------------------------------------------------------- post-processing
def test_kernels_scale_with_resolution():
    assert scaled_px(20, 256, 1) == 20 and scaled_px(16, 256, 3) == 16
    assert scaled_px(20, 64, 1) == 5 and scaled_px(16, 64, 3) == 4
    assert scaled_px(20, 8, 1) == 1 and scaled_px(16, 16, 3) == 3   # at least 1 px / 3 px
    assert scaled_px(0, 256, 3) == 0                                  # 0 switches the step off
    region = dilate(np.pad(np.ones((4, 4), bool), 10), 5)
    assert region.sum() > 16 and region[10:14, 10:14].all()


def test_specks_and_thin_bridge_are_cleaned():
    yy, xx = np.mgrid[:64, :64]
    blobs = ((yy - 32) ** 2 + (xx - 16) ** 2 <= 64) | ((yy - 32) ** 2 + (xx - 48) ** 2 <= 64)
    raw = np.where(blobs, 230, 20).astype(np.uint8)
    raw[32, 16:49] = 200                      # a 1-px bridge joining the two blobs
    for y, x in [(5, 5), (5, 58), (58, 30), (50, 50)]:
        raw[y:y + 2, x:x + 2] = 255           # 2x2 specks
    raw[10, 30] = 128                         # just above the threshold: a speck too
    post = PostProcess(opening_px=scaled_px(16, 64, 3), min_component_fraction=0.001, max_coverage=0.95)
    mask = clean_mask(raw, post)
    import cv2

    assert cv2.connectedComponents(mask.astype(np.uint8))[0] - 1 == 2      # bridge cut, specks gone
    assert not mask[:20].any() and not mask[48:].any()
    assert not mask[32, 28:37].any()                                      # the bridge's middle
    iou = (mask & blobs).sum() / (mask | blobs).sum()
    assert iou > 0.85
    assert judge(mask, post)[0] is True


def test_threshold_is_127_and_small_components_are_removed():
    post = PostProcess(opening_px=0, min_component_fraction=0.01, max_coverage=0.95)
    raw = np.zeros((32, 32), np.uint8)
    raw[:4, :4] = 128           # 16 px > 1 % of 1024: kept
    raw[20:22, 20:22] = 255     # 4 px < 10.24 px: removed
    raw[10:14, 10:14] = 127     # not above the threshold
    mask = clean_mask(raw, post)
    assert mask.sum() == 16 and mask[:4, :4].all()


def test_empty_and_degenerate_masks_are_rejected_with_a_reason():
    post = PostProcess(opening_px=3, min_component_fraction=0.001, max_coverage=0.95)
    ok, reason, coverage, comps = judge(clean_mask(np.full((32, 32), 10, np.uint8), post), post)
    assert (ok, coverage, comps) == (False, 0.0, 0) and "empty" in reason
    ok, reason, coverage, _ = judge(np.ones((32, 32), bool), post)
    assert not ok and coverage == 1.0 and "covers" in reason


def test_rejected_pairs_are_recorded_not_written_as_data(tmp_path):
    from polyplib.data.prepared import PreparedSet
    from polyplib.synthetic.folder import SyntheticWriter, read_records

    w = SyntheticWriter(tmp_path / "m", "k1", ["a", "b"])
    img = np.zeros((8, 8, 3), np.uint8)
    w.write({"id": "a", "file": "a", "accepted": True, "reason": ""}, img, np.eye(8, dtype=bool))
    w.write({"id": "b", "file": "b", "accepted": False, "reason": "empty mask after post-processing"},
            img, np.zeros((8, 8), bool))
    w.finish()
    ds = PreparedSet(tmp_path / "m")
    assert ds.ids() == ["a"] and ds.load("a")[1].sum() == 8
    assert not (tmp_path / "m" / "images" / "b.png").exists()
    assert (tmp_path / "m" / "rejected" / "images" / "b.png").exists()
    allrows = read_records(tmp_path / "m")
    assert list(allrows["id"]) == ["a", "b"] and allrows.loc[1, "reason"].startswith("empty")
    # same key: resumes with both records; another key (other settings): starts afresh
    assert SyntheticWriter(tmp_path / "m", "k1", ["a", "b"]).complete
    fresh = SyntheticWriter(tmp_path / "m", "k2", ["a", "b"])
    assert not fresh.records and not (tmp_path / "m" / "images" / "a.png").exists()


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_unconditional_samplers_shapes_and_unet_evaluations(sampler):
    from polyplib.diffusion.unconditional import sample_unconditional

    unet = tiny_unet()
    hook = Counter(unet)
    for steps in (3, 7):
        hook.n = 0
        images, masks, nfe = sample_unconditional(unet, scheduler_config(), sampler, steps, [1, 2])
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
        assert masks.shape == (2, 32, 32) and masks.dtype == np.uint8
        assert hook.n == nfe == steps
    again = sample_unconditional(unet, scheduler_config(), sampler, 3, [2])
    assert np.array_equal(again[0][0], sample_unconditional(unet, scheduler_config(), sampler, 3, [2])[0][0])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_learned_sigma_samples_are_seeded_per_pair_whatever_the_batch(sampler):
    """The one unconditional sampler (grids during training, notebook 02, stage 03) on a learned-sigma
    model: pairs in [-1, 1], a pair's seed alone decides it, other seeds give other pairs."""
    from polyplib.diffusion.unconditional import sample_tensor

    unet = tiny_unet(out_channels=8)                       # epsilon + the variance interpolation v
    config = {**scheduler_config(), "variance_type": "learned_range"}
    x, nfe = sample_tensor(unet, config, sampler, 4, [7, 8])
    assert x.shape == (2, 4, 32, 32) and x.abs().max() <= 1 and nfe == 4
    alone, _ = sample_tensor(unet, config, sampler, 4, [8])
    assert torch.allclose(alone[0], x[1], atol=1e-3)            # batched convolutions round differently
    assert torch.equal(sample_tensor(unet, config, sampler, 4, [8])[0], alone)
    assert not torch.allclose(x[0], x[1], atol=1e-2)


def test_repaint_schedule_is_the_authors():
    """(200, 10, 5) from pure noise: 960 denoising calls and 760 re-noising steps, as Lugmayr et al.'s
    schedule (checked against diffusers' RePaintScheduler, an independent implementation)."""
    from diffusers import RePaintScheduler

    from polyplib.sampling.repaint import count_calls, count_evaluations, jump_schedule, repaint_schedule

    times = jump_schedule(200, 10, 5)
    assert count_calls(times) == (960, 760) and times[0] == 199 and times[-1] == -1
    assert count_evaluations(200, 10, 5) == 960
    assert count_evaluations(200, 10, 5, 80, start="sdedit") == 600     # the SDEdit-style ablation
    reference = RePaintScheduler(1000)
    for steps, jl, jn in ((200, 10, 5), (25, 5, 2), (12, 3, 2)):
        reference.set_timesteps(steps, jl, jn)
        stride = 1000 // steps
        assert jump_schedule(steps, jl, jn)[:-1] == [int(t) // stride for t in reference.timesteps]
    assert repaint_schedule(20, 5, 2, "sdedit", 10)[0] == 9
    with pytest.raises(StageError, match="sampling.start"):
        repaint_schedule(20, 5, 2, "middle")


@pytest.mark.parametrize("variance,start,sampler", [("fixed_small", "sdedit", "repaint"), ("learned_range", "noise", "repaint"),
                                                    ("learned_range", "noise", "repaint-ddim"),
                                                    ("fixed_small", "sdedit", "repaint-ddim"),
                                                    ("learned_range", "noise", "dpm++"), ("fixed_small", "sdedit", "dpm++")])
def test_repaint_cost_and_known_region(variance, start, sampler):
    """Every joint inpainting sampler: the UNet calls it reports are the calls made (counted by a hook),
    the real pair stays exact outside the region, the region is redrawn, a pair does not depend on its batch."""
    from diffusers import UNet2DModel

    from polyplib.sampling.repaint import count_evaluations, repaint

    torch.manual_seed(0)
    learned = variance == "learned_range"
    unet = UNet2DModel(sample_size=32, in_channels=4, out_channels=8 if learned else 4, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    config = {**scheduler_config(), "variance_type": variance}
    hook = Counter(unet)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 10:20, 12:22] = True
    regions = np.stack([dilate(m, 5) for m in masks])
    out, raw, nfe = repaint(unet, config, images, masks, regions, [3, 4], steps=12, start=start, skip_steps=3,
                            jump_length=3, jump_n_sample=2, sampler=sampler)
    assert nfe == hook.n == count_evaluations(12, 3, 2, 3, start, sampler)
    assert nfe == {"dpm++": 12 - 3 * (start == "sdedit")}.get(sampler, nfe)
    assert np.array_equal(out[~regions], images[~regions]) and not raw[~regions].any()
    assert (out[regions] != images[regions]).mean() > 0.5
    again = repaint(unet, config, images[1:], masks[1:], regions[1:], [4], steps=12, start=start, skip_steps=3,
                    jump_length=3, jump_n_sample=2, sampler=sampler)
    assert np.abs(again[0][0].astype(int) - out[1].astype(int)).max() <= 1     # a pair does not depend on its batch
    if start == "sdedit":
        with pytest.raises(StageError, match="skip_steps"):
            repaint(unet, config, images, masks, regions, [3, 4], steps=5, start=start, skip_steps=5,
                    jump_length=2, jump_n_sample=2, sampler=sampler)


def test_pair_seeds_are_stable_and_distinct():
    from polyplib.synthetic.generate import pair_seed

    assert pair_seed(0, "img1", 0) == pair_seed(0, "img1", 0)
    assert len({pair_seed(s, i, k) for s in (0, 1) for i in ("a", "b") for k in range(3)}) == 12
