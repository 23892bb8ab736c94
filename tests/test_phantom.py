"""The embedded phantom: determinism, exact masks, difficulty, domain differences, layout, resume."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from polyplib.data.phantom import DOMAINS, PHANTOM_LAYOUTS, PhantomDomain, render_frame, write_phantom
from polyplib.errors import DataError


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _frames(domain: str | PhantomDomain, n: int, scale: float, seed: int = 0):
    return [render_frame(domain, seed, i, scale) for i in range(n)]


def best_threshold_dice(frames, bins: int = 64) -> tuple[float, str]:
    """Best mean Dice of one global threshold (and direction) on red, brightness or red-green."""
    best = (0.0, "")
    for name, feat in {"red": lambda im: im[..., 0].astype(np.float32),
                       "brightness": lambda im: im.astype(np.float32).mean(2),
                       "red-green": lambda im: im[..., 0].astype(np.float32) - im[..., 1]}.items():
        edges = np.linspace(-255, 255, 2 * bins + 1)
        fg, bg = [], []
        for im, m in frames:
            f = feat(im)
            fg.append(np.histogram(f[m], edges)[0])
            bg.append(np.histogram(f[~m], edges)[0])
        fg, bg = np.array(fg, float), np.array(bg, float)             # frames x bins
        for above in (True, False):
            tp = np.cumsum(fg[:, ::-1], 1)[:, ::-1] if above else np.cumsum(fg, 1)
            fp = np.cumsum(bg[:, ::-1], 1)[:, ::-1] if above else np.cumsum(bg, 1)
            total = fg.sum(1, keepdims=True)
            denom = tp + fp + total
            dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0).mean(0)
            if dice.max() > best[0]:
                best = (float(dice.max()), f"{name} {'>' if above else '<'} {edges[dice.argmax()]:.0f}")
    return best


# ------------------------------------------------------------------------------------------ API
def test_api_shapes_and_domains():
    assert set(DOMAINS) == {"A", "B"} and PHANTOM_LAYOUTS == {"A": "kvasir-seg", "B": "cvc-clinicdb"}
    assert isinstance(DOMAINS["A"], PhantomDomain) and DOMAINS["B"].stands_in_for == "cvc-clinicdb"
    img, mask = render_frame("B", 0, 0)
    assert img.dtype == np.uint8 and img.shape == (288, 384, 3)
    assert mask.dtype == bool and mask.shape == (288, 384)
    img2, mask2 = render_frame(DOMAINS["B"], 0, 0)                    # object or name, same frame
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)


def test_unknown_domain_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="unknown phantom domain 'C'; known: A, B"):
        render_frame("C", 0, 0)
    with pytest.raises(DataError, match="'kvasir'"):
        write_phantom(tmp_path / "x", "kvasir", 2, seed=0, progress=False)


def test_scale_draws_the_same_picture():
    for domain in "AB":
        for i in range(4):
            img1, m1 = render_frame(domain, 3, i, 1.0)
            img2, m2 = render_frame(domain, 3, i, 0.5)
            up = cv2.resize(m2.astype(np.uint8), m1.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            if m1.sum() > 200:
                iou = (up & m1).sum() / (up | m1).sum()
                assert iou > 0.85, (domain, i, iou)
            small = cv2.resize(img1, img2.shape[1::-1], interpolation=cv2.INTER_AREA).astype(float)
            assert np.abs(small - img2).mean() < 12, (domain, i)


# --------------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_any_workers(tmp_path):
    for domain in "AB":
        a = write_phantom(tmp_path / f"{domain}1", domain, 6, seed=5, scale=0.3, progress=False)
        b = write_phantom(tmp_path / f"{domain}2", domain, 6, seed=5, scale=0.3, workers=2, progress=False)
        fa, fb = _files(a), _files(b)
        assert len(fa) == 2 * 6 + 1 and fa == fb
    c = write_phantom(tmp_path / "A3", "A", 6, seed=6, scale=0.3, progress=False)
    diff = [k for k, v in _files(c).items() if k.startswith("images") and v != fa.get(k)]
    assert len(diff) == 6                                              # another seed, other images


def test_render_frame_equals_written_frame(tmp_path):
    dest = write_phantom(tmp_path / "A", "A", 4, seed=2, scale=0.4, progress=False)
    for i in range(4):
        img, mask = render_frame("A", 2, i, 0.4)
        jpg = _read_rgb(dest / "images" / f"phA{i:05d}.jpg").astype(int)
        png = cv2.imread(str(dest / "masks" / f"phA{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(png > 0, mask)
        blur = lambda x: cv2.GaussianBlur(x.astype(np.float32), (0, 0), 1.0)  # noqa: E731
        err = np.abs(blur(jpg) - blur(img))                             # JPEG q95 drops chroma noise
        assert err.mean() < 2 and np.percentile(err, 99) < 10, (err.mean(), np.percentile(err, 99))
        assert np.abs(jpg.mean((0, 1)) - img.mean((0, 1))).max() < 1
    dest = write_phantom(tmp_path / "B", "B", 3, seed=2, scale=0.4, progress=False)
    for i in range(3):
        img, mask = render_frame("B", 2, i, 0.4)
        assert np.array_equal(_read_rgb(dest / "Original" / f"{i + 1}.png"), img)  # PNG: lossless
        gt = cv2.imread(str(dest / "Ground Truth" / f"{i + 1}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(gt > 0, mask)


# -------------------------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def frames_a():
    return _frames("A", 200, 0.3)


@pytest.fixture(scope="module")
def frames_b():
    return _frames("B", 200, 0.3)


def test_masks_exact_sizes_and_components(frames_a, frames_b):
    for frames, lo, hi in ((frames_a, 0.02, 0.30), (frames_b, 0.02, 0.20)):
        cover = np.array([m.mean() for _, m in frames])
        comps = np.array([cv2.connectedComponents(m.astype(np.uint8))[0] - 1 for _, m in frames])
        assert cover.min() < lo and cover.max() > hi, (cover.min(), cover.max())
        assert comps.max() <= 3 and (comps == 0).mean() < 0.08 and (comps == 1).mean() > 0.7
        assert 0 < (comps >= 2).mean() < 0.25


def test_written_masks_are_binary_single_channel(tmp_path):
    dest = write_phantom(tmp_path / "A", "A", 5, seed=1, scale=0.3, progress=False)
    for p in sorted((dest / "masks").glob("*.png")):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.ndim == 2 and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}


def test_mask_sits_on_the_drawn_polyp(frames_a, frames_b):
    """Inside the mask the picture is brighter and redder than in a ring just outside it, and a
    mask displaced by a few pixels fits the picture worse than the true mask."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    for frames in (frames_a, frames_b):
        wins, total = 0, 0
        for img, m in frames:
            if m.sum() < 150:
                continue
            mu8 = m.astype(np.uint8)
            inner = cv2.erode(mu8, k) > 0
            ring = (cv2.dilate(mu8, k) > 0) & ~m & (img.max(2) > 20)
            if inner.sum() < 30 or ring.sum() < 30:
                continue
            red = img[..., 0].astype(float)
            total += 1
            wins += red[inner].mean() > red[ring].mean()
        assert total > 50 and wins / total > 0.85, (wins, total)


def test_mask_moves_with_the_contrast():
    """Exaggerate the polyp colour: a per-frame threshold then finds the masked region well, and
    fits a mask displaced by 1/8 of the frame far worse, so the mask is where the polyp is drawn."""
    loud = replace(DOMAINS["A"], polyp_gain=(2.2, 2.2, 2.2), polyp_gain_spread=0.0, highlight_count=(0, 0),
                   lumen_prob=0.0, light_falloff=0.0, exposure_range=(0.5, 0.5), occluder_prob=0.0)
    frames = [f for f in _frames(loud, 30, 0.3) if f[1].sum() > 100]
    true = np.median([best_threshold_dice([f])[0] for f in frames])
    moved = np.median([best_threshold_dice([(im, np.roll(m, m.shape[1] // 8, 1))])[0] for im, m in frames])
    assert len(frames) > 20 and true > 0.75 and moved < true - 0.25, (true, moved)


# --------------------------------------------------------------------------------- difficulty
def test_best_global_threshold_is_poor(frames_a, frames_b):
    for name, frames in (("A", frames_a[:100]), ("B", frames_b[:100])):
        dice, how = best_threshold_dice(frames)
        print(f"domain {name}: best global threshold mean Dice {dice:.3f} ({how})")
        assert 0.15 < dice < 0.8


def test_domains_are_measurably_different(frames_a, frames_b):
    def stats(frames):
        bg = np.concatenate([im[~m] for im, m in frames]).mean(0)
        cover = np.median([m.mean() for _, m in frames])
        dark = np.median([(im.mean(2) < 20).mean() for im, _ in frames])
        return bg, cover, dark
    bg_a, cov_a, dark_a = stats(frames_a)
    bg_b, cov_b, dark_b = stats(frames_b)
    assert np.abs(bg_a - bg_b).max() > 15 and bg_a[0] > bg_b[0]        # A warmer and brighter
    assert cov_a > cov_b * 1.2                                          # A has larger polyps
    assert dark_b > dark_a + 0.05                                       # B has the stronger border
    sizes_a = {im.shape for im, _ in frames_a}
    assert len(sizes_a) > 20 and {im.shape for im, _ in frames_b} == {(86, 115, 3)}


# ---------------------------------------------------------------------------- layout, resume
def test_layouts_and_record(tmp_path):
    a = write_phantom(tmp_path / "A", "A", 3, seed=4, scale=0.3, progress=False)
    assert sorted(p.name for p in (a / "images").iterdir()) == ["phA00000.jpg", "phA00001.jpg", "phA00002.jpg"]
    assert sorted(p.name for p in (a / "masks").iterdir()) == ["phA00000.png", "phA00001.png", "phA00002.png"]
    rec = json.loads((a / "phantom.json").read_text())
    assert (rec["domain"], rec["seed"], rec["n"], rec["scale"]) == ("A", 4, 3, 0.3)
    assert rec["fields"]["stands_in_for"] == "kvasir-seg" and rec["layout"] == "kvasir-seg"
    b = write_phantom(tmp_path / "B", "B", 3, seed=4, scale=0.3, progress=False)
    assert sorted(p.name for p in (b / "Original").iterdir()) == ["1.png", "2.png", "3.png"]
    assert sorted(p.name for p in (b / "Ground Truth").iterdir()) == ["1.png", "2.png", "3.png"]
    assert sorted(p.name for p in b.iterdir()) == ["Ground Truth", "Original", "phantom.json"]
    with pytest.raises(DataError, match="seed"):                      # never mix two phantoms
        write_phantom(b, "B", 3, seed=5, scale=0.3, progress=False)


def test_resume_rewrites_only_missing_files(tmp_path):
    dest = write_phantom(tmp_path / "A", "A", 5, seed=8, scale=0.3, progress=False)
    before = _files(dest)
    frames = [p for p in dest.rglob("*") if p.is_file() and p.name != "phantom.json"]
    for p in frames:
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))                  # an old, recognisable mtime
    (dest / "images" / "phA00002.jpg").unlink()
    (dest / "masks" / "phA00004.png").unlink()
    leftover = dest / "masks" / ".phA00004.png.999.tmp"                # a crashed writer's temp file
    leftover.write_bytes(b"half a png")
    write_phantom(dest, "A", 5, seed=8, scale=0.3, progress=False)
    after = _files(dest)
    after.pop("masks/.phA00004.png.999.tmp")
    assert after == before
    rewritten = {"images/phA00002.jpg", "masks/phA00004.png"}
    for p in frames:
        old = p.stat().st_mtime_ns == 1_000_000_000
        assert old != (str(p.relative_to(dest)) in rewritten), p
    assert not [p for p in dest.rglob("*.tmp") if p != leftover]         # no temp files of ours left
