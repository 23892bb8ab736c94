"""Embedded phantom data set: endoscopy-like RGB frames with exact binary polyp masks.

No real data can be shipped with the project, so every pipeline stage can run on this phantom
instead. A frame is composed like a colonoscopy picture: a mucosa albedo with low-frequency
texture and vessels, a height field (haustral folds, polyp domes, micro bumps) shaded by a light
at the scope tip, a dark lumen, specular glare, an optional instrument and on-screen text, the
dark field-of-view border, then motion blur and sensor noise. The mask is the geometric polyp
region (before blur) restricted to visible pixels, so it is exact by construction.

Frames depend only on (domain, seed, index, scale): the generator is
``np.random.default_rng([seed, domain.rng_key, index])``. All geometry and all random textures
are drawn in relative units (1 = half the frame height, textures on fixed-size grids that are
resized), so ``scale`` changes the sampling, not the picture; only per-pixel sensor noise and
text glyphs depend on the pixel size. The two domains stand in for Kvasir-SEG ("A") and
CVC-ClinicDB ("B"); their parameters follow the real-data statistics in STUDY.md.
"""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from ..runs import atomic_write_bytes

F32 = np.float32


@dataclass(frozen=True)
class PhantomDomain:
    """Acquisition and appearance of one domain. Lengths are in units of half the frame height
    unless they say pixels; colours are albedos in 0..1 (RGB)."""
    name: str                                  # "A" or "B"
    stands_in_for: str                         # real data set this domain imitates
    rng_key: int                               # 2nd entry of the rng seed [seed, rng_key, index]
    height_range: tuple[int, int]              # frame height at scale 1, drawn uniformly (pixels)
    aspect_range: tuple[float, float]          # width / height, drawn uniformly
    mucosa_rgb: tuple[float, float, float]     # mean mucosa albedo
    mucosa_jitter: float                       # per-frame log-normal spread of that colour
    polyp_gain: tuple[float, float, float]     # mean per-channel albedo ratio polyp / mucosa
    polyp_gain_spread: float                   # per-polyp log spread of the ratio (colour overlap)
    exposure_range: tuple[float, float]        # per-frame global gain (auto-exposure variation)
    light_falloff: float                       # radial fall-off of the scope light (vignetting)
    shadow_tint: tuple[float, float, float]    # per-channel exponent on light: shadows turn red-brown
    coverage_quantiles: tuple[tuple[float, float], ...]  # (quantile, total polyp area / frame area)
    n_polyp_probs: tuple[float, float, float, float]     # P(0, 1, 2, 3 polyps)
    shape_probs: tuple[float, float, float, float]       # P(round, lobulated, sessile, pedunculated)
    border: str                                # field of view: "octagon" or "circle"
    fov_extent: tuple[float, float]            # field-of-view half width / frame half width, range
    lumen_prob: float                          # probability that the dark lumen is in view
    fold_count: tuple[int, int]                # bright haustral folds (ridges), inclusive range
    vessel_count: tuple[int, int]              # vessel trees
    highlight_count: tuple[int, int]           # explicit glare blobs
    occluder_prob: float                       # grey instrument entering from the border
    text_prob: float                           # on-screen date/time text in a corner
    black_box_prob: float                      # black box over a removed scope marker (Kvasir quirk)
    motion_blur_px: tuple[float, float]        # motion blur length at scale 1 (pixels)
    noise_sigma: float                         # sensor noise (grey levels at 0..255)
    interlace: bool                            # field-shifted rows of interlaced video


DOMAINS: dict[str, PhantomDomain] = {
    "A": PhantomDomain(
        name="A", stands_in_for="kvasir-seg", rng_key=1,
        height_range=(300, 420), aspect_range=(1.1, 1.3),
        mucosa_rgb=(0.74, 0.42, 0.30), mucosa_jitter=0.08,
        polyp_gain=(1.31, 1.17, 1.15), polyp_gain_spread=0.10,
        exposure_range=(0.85, 1.45), light_falloff=0.55, shadow_tint=(1.0, 1.2, 1.35),
        coverage_quantiles=((0.0, 0.005), (0.05, 0.038), (0.25, 0.068), (0.5, 0.125),
                            (0.75, 0.18), (0.95, 0.42), (1.0, 0.6)),
        n_polyp_probs=(0.03, 0.84, 0.12, 0.01), shape_probs=(0.35, 0.25, 0.2, 0.2),
        border="octagon", fov_extent=(0.91, 1.0), lumen_prob=0.7, fold_count=(1, 4),
        vessel_count=(2, 6), highlight_count=(2, 9), occluder_prob=0.08, text_prob=0.35,
        black_box_prob=0.08, motion_blur_px=(0.0, 4.0), noise_sigma=2.5, interlace=False),
    "B": PhantomDomain(
        name="B", stands_in_for="cvc-clinicdb", rng_key=2,
        height_range=(288, 288), aspect_range=(4 / 3, 4 / 3),
        mucosa_rgb=(0.55, 0.38, 0.25), mucosa_jitter=0.08,
        polyp_gain=(1.24, 1.07, 1.06), polyp_gain_spread=0.06,
        exposure_range=(1.0, 1.4), light_falloff=0.6, shadow_tint=(1.0, 1.12, 1.25),
        coverage_quantiles=((0.0, 0.004), (0.05, 0.016), (0.25, 0.039), (0.5, 0.073),
                            (0.75, 0.14), (0.95, 0.28), (1.0, 0.45)),
        n_polyp_probs=(0.03, 0.86, 0.09, 0.02), shape_probs=(0.35, 0.2, 0.3, 0.15),
        border="circle", fov_extent=(0.85, 0.95), lumen_prob=0.7, fold_count=(1, 4),
        vessel_count=(2, 6), highlight_count=(3, 10), occluder_prob=0.06, text_prob=0.2,
        black_box_prob=0.0, motion_blur_px=(1.0, 5.0), noise_sigma=4.0, interlace=True),
}
PHANTOM_LAYOUTS: dict[str, str] = {"A": "kvasir-seg", "B": "cvc-clinicdb"}


def _domain(domain: PhantomDomain | str) -> PhantomDomain:
    if isinstance(domain, PhantomDomain):
        return domain
    if domain not in DOMAINS:
        raise DataError(None, f"unknown phantom domain {domain!r}; known: {', '.join(DOMAINS)}")
    return DOMAINS[domain]


class _Canvas:
    """Pixel grid of one frame in relative units: u across (±aspect), v down (±1)."""

    def __init__(self, H: int, W: int, asp: float):
        self.H, self.W, self.asp = H, W, asp
        self.u = (((np.arange(W, dtype=F32) + 0.5) / W * 2 - 1) * asp)[None, :]
        self.v = ((np.arange(H, dtype=F32) + 0.5) / H * 2 - 1)[:, None]
        self.px = H / 2.0                                  # pixels per unit

    def to_px(self, u, v):
        """Relative units -> pixel coordinates (float)."""
        return (np.asarray(u) / self.asp + 1) * 0.5 * self.W - 0.5, (np.asarray(v) + 1) * 0.5 * self.H - 0.5

    def window(self, cu: float, cv: float, radius: float) -> tuple[slice, slice]:
        """Pixel rows/columns of the square of half side `radius` (units) around (cu, cv)."""
        (x0, x1), (y0, y1) = self.to_px([cu - radius, cu + radius], [cv - radius, cv + radius])
        return (slice(max(0, int(y0)), min(self.H, int(y1) + 2)),
                slice(max(0, int(x0)), min(self.W, int(x1) + 2)))

    def noise(self, rng, grid: tuple[int, int]) -> np.ndarray:
        """Smooth noise from a fixed-size random grid (scale-independent), about unit variance."""
        g = rng.standard_normal(grid).astype(F32)
        return cv2.resize(g, (self.W, self.H), interpolation=cv2.INTER_CUBIC)


def _uniform(rng, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _mucosa(rng, c: _Canvas, d: PhantomDomain) -> np.ndarray:
    """Albedo HxWx3: domain colour, per-frame hue jitter, blotchy low-frequency texture."""
    base = np.array(d.mucosa_rgb, F32) * np.exp(rng.normal(0, d.mucosa_jitter, 3)).astype(F32)
    coarse, fine = c.noise(rng, (4, 5)), c.noise(rng, (14, 18))
    tone = 0.07 * coarse + 0.035 * fine
    return base * (1 + tone[..., None] * np.array([0.6, 1.0, 1.3], F32))


def _vessels(rng, c: _Canvas, d: PhantomDomain) -> np.ndarray:
    """Thin branching dark-red curves (random walks with branches), HxW in 0..1."""
    canvas = np.zeros((c.H, c.W), np.uint8)
    for _ in range(int(rng.integers(d.vessel_count[0], d.vessel_count[1] + 1))):
        stack = [(rng.uniform(-c.asp, c.asp), rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi), 1.0)]
        while stack:
            u, v, ang, width = stack.pop()
            steps = rng.normal(0, 0.35, int(rng.integers(8, 20))).cumsum() + ang
            pts = np.stack([u + np.cos(steps).cumsum() * 0.04, v + np.sin(steps).cumsum() * 0.04], 1)
            x, y = c.to_px(pts[:, 0], pts[:, 1])
            poly = np.round(np.stack([x, y], 1) * 16).astype(np.int32)
            thick = max(1, int(round(width * 0.012 * c.px)))
            cv2.polylines(canvas, [poly], False, int(120 + 100 * width), thick, cv2.LINE_AA, shift=4)
            if width > 0.5 and len(stack) < 6 and rng.random() < 0.6:
                k = int(rng.integers(2, len(pts)))
                stack.append((pts[k, 0], pts[k, 1], steps[k] + rng.choice([-1, 1]) * 0.8, width * 0.6))
    return cv2.GaussianBlur(canvas, (0, 0), 0.4 + 0.004 * c.px).astype(F32) / 255


def _lumen_and_folds(rng, c: _Canvas, d: PhantomDomain):
    """Dark lumen (0..1 darkness) and haustral fold ridges (height) arranged around it."""
    lu, lv = rng.uniform(-0.8, 0.8) * c.asp, rng.uniform(-0.8, 0.8)
    has_lumen = rng.random() < d.lumen_prob
    if not has_lumen:                                      # lumen outside the view: folds still curve
        ang = rng.uniform(0, 2 * np.pi)
        lu, lv = float(2.2 * np.cos(ang) * c.asp), float(2.2 * np.sin(ang))
    warp = c.noise(rng, (3, 4))
    dist = np.sqrt((c.u - lu) ** 2 + (c.v - lv) ** 2) * (1 + 0.12 * warp)
    sigma = rng.uniform(0.15, 0.35)
    dark = np.exp(-(dist / sigma) ** 2) * rng.uniform(0.75, 0.95) if has_lumen else np.zeros_like(dist)
    height = np.zeros_like(dist)
    for _ in range(int(rng.integers(d.fold_count[0], d.fold_count[1] + 1))):
        radius, width, amp = rng.uniform(0.3, 1.8), rng.uniform(0.04, 0.12), rng.uniform(0.03, 0.08)
        height += amp * np.exp(-((dist - radius) / width) ** 2)
    return dark.astype(F32), height.astype(F32)


def _polyp_specs(rng, c: _Canvas, d: PhantomDomain, fov: float) -> list[dict]:
    """Draw number, size (from the domain's coverage quantiles), shape and place of the polyps."""
    k = int(rng.choice(4, p=d.n_polyp_probs))
    qs = np.array(d.coverage_quantiles, float)
    total = float(np.interp(rng.random(), qs[:, 0], qs[:, 1])) * 4 * c.asp   # area in units^2
    shares = np.maximum(rng.dirichlet([4.0] + [1.5] * (k - 1)), 0.15) if k > 1 else np.ones(1)
    specs: list[dict] = []
    for share in sorted(shares / shares.sum(), reverse=True)[:k]:
        shape = ["round", "lobulated", "sessile", "pedunculated"][rng.choice(4, p=d.shape_probs)]
        ecc = rng.uniform(0.6, 1.0) if shape != "sessile" else rng.uniform(0.35, 0.7)
        amps = rng.uniform(0, 0.06, 5) if shape != "lobulated" else rng.uniform(0.04, 0.16, 5)
        amps *= np.array([1.0, 0.8, 0.6, 0.45, 0.3])    # smooth lobes, not stars
        r0 = np.sqrt(total * share / (np.pi * ecc * (1 + 0.5 * float((amps ** 2).sum()))))
        if shape == "pedunculated":
            r0 *= 0.85                                     # the stalk takes part of the area
        r0 = max(r0, 0.04)
        reach = np.maximum(np.array([fov * c.asp, min(1.0, fov * c.asp)]) - 0.8 * r0, 0.05)
        for _ in range(8):                                 # inside the view, apart from the others
            ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.random())
            centre = reach * rad * np.array([np.cos(ang), np.sin(ang)])
            if all(np.hypot(*(centre - s["centre"])) > 1.1 * (r0 + s["r0"]) for s in specs):
                break
        specs.append(dict(
            shape=shape, centre=centre.astype(F32), r0=float(r0), ecc=ecc, amps=amps,
            rot=rng.uniform(0, np.pi), phases=rng.uniform(0, 2 * np.pi, 5),
            stalk_dir=rng.uniform(0, 2 * np.pi), stalk_len=rng.uniform(1.0, 1.8) * r0,
            height=rng.uniform(0.12, 0.3) if shape == "sessile" else rng.uniform(0.35, 0.9),
            soft=rng.uniform(0.08, 0.25),
            gain=np.array(d.polyp_gain) * np.exp(rng.normal(0, d.polyp_gain_spread)
                                                 + rng.normal(0, 0.03, 3)),
            pit_amp=rng.uniform(0.02, 0.1), pit_cell=rng.uniform(0.025, 0.05)))
    return specs


def _polyp_field(u: np.ndarray, v: np.ndarray, s: dict) -> np.ndarray:
    """Normalised radius rho (<1 inside) of one polyp, incl. a stalk for pedunculated ones."""
    du, dv = u - s["centre"][0], v - s["centre"][1]
    cr, sr = float(np.cos(s["rot"])), float(np.sin(s["rot"]))
    a, b = du * cr + dv * sr, (-du * sr + dv * cr) / s["ecc"]
    theta = np.arctan2(b, a)
    radial = 1 + sum(float(s["amps"][i]) * np.cos((i + 2) * theta + float(s["phases"][i])) for i in range(5))
    rho = np.sqrt(a * a + b * b) / (s["r0"] * radial)
    if s["shape"] == "pedunculated":                       # capsule from the head outwards
        ex, ey = float(np.cos(s["stalk_dir"])), float(np.sin(s["stalk_dir"]))
        t = np.clip(du * ex + dv * ey, 0, s["stalk_len"])
        dist = np.sqrt((du - t * ex) ** 2 + (dv - t * ey) ** 2)
        rho = np.minimum(rho, dist / (0.38 * s["r0"]) + 0.15)
    return rho.astype(F32)


def _fov(rng, c: _Canvas, d: PhantomDomain):
    """Field of view of the scope (1 inside, soft edge), and its half width in units."""
    ext = _uniform(rng, d.fov_extent)
    au, av = ext * c.asp, min(1.0, ext * c.asp * rng.uniform(0.9, 1.0))
    if d.border == "octagon":
        cut = rng.uniform(1.35, 1.6)
        inside = np.minimum(np.minimum(1 - np.abs(c.u) / au, 1 - np.abs(c.v) / av),
                            (cut - np.abs(c.u) / au - np.abs(c.v) / av) / 1.4)
    else:
        inside = 1 - np.sqrt((c.u / au) ** 2 + (c.v / av) ** 2)
    edge = 0.01 + 1.0 / c.px
    return np.clip(inside / edge + 0.5, 0, 1).astype(F32), ext


def _occluder(rng, c: _Canvas, target):
    """A grey metallic bar from the border towards `target`: (alpha, shade)."""
    ang = rng.uniform(0, 2 * np.pi)
    start = np.array([1.8 * c.asp * np.cos(ang), 1.8 * np.sin(ang)])
    tip = np.asarray(target) + rng.normal(0, 0.15, 2)
    half = rng.uniform(0.06, 0.14)
    seg = tip - start
    t = np.clip(((c.u - start[0]) * seg[0] + (c.v - start[1]) * seg[1]) / (seg @ seg), 0, 1)
    cu_, cv_ = start[0] + t * seg[0] - c.u, start[1] + t * seg[1] - c.v
    dist = np.sqrt(cu_ * cu_ + cv_ * cv_)
    alpha = np.clip((half - dist) * c.px / 1.5 + 0.5, 0, 1)
    across = np.clip(dist / half, 0, 1)                   # cylinder shading + a bright stripe
    shade = 0.35 + 0.4 * np.sqrt(1 - across ** 2) + 0.35 * np.exp(-((across - 0.4) / 0.12) ** 2)
    return alpha.astype(F32), shade.astype(F32)


def _highlights(rng, c: _Canvas, d: PhantomDomain, specs) -> np.ndarray:
    """Small saturated glare blobs, on mucosa and on polyps (lit side), HxW alpha 0..1."""
    canvas = np.zeros((c.H, c.W), np.uint8)
    spots = [(rng.uniform(-c.asp, c.asp), rng.uniform(-1, 1), rng.uniform(0.006, 0.03))
             for _ in range(int(rng.integers(d.highlight_count[0], d.highlight_count[1] + 1)))]
    for s in specs:
        for _ in range(int(rng.integers(0, 4))):
            off = rng.normal(0, 0.35, 2) * s["r0"]
            spots.append((s["centre"][0] + off[0], s["centre"][1] + off[1], rng.uniform(0.006, 0.03)))
    for u, v, r in spots:
        x, y = c.to_px(u, v)
        axes = (max(1, int(r * c.px * 16)), max(1, int(r * c.px * 16 * rng.uniform(0.3, 1))))
        cv2.ellipse(canvas, (int(x * 16), int(y * 16)), axes, rng.uniform(0, 180), 0, 360, 255, -1,
                    cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(canvas, (0, 0), 0.5 + 0.005 * c.px).astype(F32) / 255


def _shade(c: _Canvas, height: np.ndarray, tilt) -> tuple[np.ndarray, np.ndarray]:
    """Lambert and specular terms for a light at the scope tip (at the optical centre)."""
    gy, gx = np.gradient(height, 2.0 / c.H, 2.0 * c.asp / c.W)
    gx, gy = gx + float(tilt[0]), gy + float(tilt[1])
    lx, ly, lz = -c.u, -c.v, F32(1.3)
    ndotl = (gx * c.u + gy * c.v + lz) / np.sqrt((1 + gx * gx + gy * gy) * (lx * lx + ly * ly + lz * lz))
    ndotl = np.clip(ndotl, 0, 1)
    spec = np.clip((ndotl - 0.985) / 0.015, 0, 1) ** 2
    return ndotl, spec


def _degrade(rng, img: np.ndarray, c: _Canvas, d: PhantomDomain, scale: float) -> np.ndarray:
    """Motion blur along a random direction, interlace field shift, sensor noise."""
    length = _uniform(rng, d.motion_blur_px) * scale
    ang = rng.uniform(0, np.pi)
    noise_rng = np.random.default_rng(rng.integers(2 ** 63))
    shift = int(round(rng.uniform(0.5, 2.0) * scale))
    if length >= 1.5:
        k = int(np.ceil(length)) | 1
        kern = np.zeros((k, k), F32)
        h = (k - 1) / 2
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        ends = [(int(round(h + sgn * dx)), int(round(h + sgn * dy))) for sgn in (-1, 1)]
        cv2.line(kern, ends[0], ends[1], 1.0)
        img = cv2.filter2D(img, -1, kern / kern.sum(), borderType=cv2.BORDER_REFLECT)
    if d.interlace and shift:
        img[1::2] = np.roll(img[1::2], shift, axis=1)
        img = cv2.filter2D(img, -1, np.array([[0.25], [0.5], [0.25]], F32))
    tri = noise_rng.random(img.shape, dtype=F32) + noise_rng.random(img.shape, dtype=F32) - 1
    img += tri * F32(d.noise_sigma * 6 ** 0.5) * (1 + 0.01 * img)     # unit-variance triangular noise
    return img


def _overlays(rng, img: np.ndarray, c: _Canvas, d: PhantomDomain) -> np.ndarray:
    """Black box over a removed scope marker and on-screen date/time text; returns covered pixels."""
    covered = np.zeros((c.H, c.W), np.uint8)
    if rng.random() < d.black_box_prob:
        bw, bh = int(rng.uniform(0.18, 0.28) * c.W), int(rng.uniform(0.2, 0.3) * c.H)
        covered[c.H - bh:, :bw] = 1
        img[c.H - bh:, :bw] = 0
    if rng.random() < d.text_prob:
        stamp = (f"{rng.integers(2005, 2016)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d} "
                 f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}")
        font_scale, grey = c.H / 900, int(rng.integers(190, 256))
        (tw, th), _ = cv2.getTextSize(stamp, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x = 3 if rng.random() < 0.5 else c.W - tw - 3
        y = th + 3 if rng.random() < 0.5 else c.H - 4
        text = np.zeros((c.H, c.W), np.uint8)
        cv2.putText(text, stamp, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, 1, cv2.LINE_AA)
        a = text.astype(F32)[..., None] / 255
        img[:] = img * (1 - a) + grey * a
        covered |= text > 127
    return covered.astype(bool)


def render_frame(domain: PhantomDomain | str, seed: int, index: int,
                 scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Frame `index` of the domain for `seed`: (image uint8 HxWx3 RGB, mask bool HxW).

    Depends only on (domain, seed, index, scale); uses np.random.default_rng([seed, rng_key, index])."""
    d = _domain(domain)
    rng = np.random.default_rng([int(seed), d.rng_key, int(index)])
    h0 = _uniform(rng, d.height_range)
    asp = _uniform(rng, d.aspect_range)
    H, W = max(16, int(round(h0 * scale))), max(16, int(round(h0 * asp * scale)))
    c = _Canvas(H, W, asp)                  # drawn aspect, not W / H: rounding must not change draws
    fov, ext = _fov(rng, c, d)
    albedo = _mucosa(rng, c, d)
    vessels = _vessels(rng, c, d)
    lumen, height = _lumen_and_folds(rng, c, d)
    albedo *= (1 + 1.5 * height)[..., None]                         # folds look paler
    height += 0.004 * c.noise(rng, (30, 40))                        # micro relief -> glints
    specs = _polyp_specs(rng, c, d, ext)
    mask = np.zeros((H, W), bool)
    vessel_vis = np.ones((H, W), F32)
    for s in specs:
        pit = c.noise(rng, (max(3, int(2 / s["pit_cell"])), max(3, int(2 * c.asp / s["pit_cell"]))))
        reach = s["r0"] * (1 + float(s["amps"].sum())) * (1 + s["soft"])    # bounds rho < 1 + soft
        reach += s["stalk_len"] if s["shape"] == "pedunculated" else 0.0
        win = c.window(float(s["centre"][0]), float(s["centre"][1]), reach)
        rho = _polyp_field(c.u[:, win[1]], c.v[win[0]], s)
        mask[win] |= rho < 1
        alpha = np.clip((1 + s["soft"] - rho) / (2 * s["soft"]), 0, 1)
        alpha = alpha * alpha * (3 - 2 * alpha)                     # smoothstep: soft boundary
        dome = np.clip(1 - rho * rho, 0, None) ** F32(1.2) * F32(s["height"] * s["r0"])
        height[win] = np.maximum(height[win], dome + 0.003 * pit[win] * alpha)
        gain = (s["gain"] - 1).astype(F32)
        albedo[win] *= (1 + gain * alpha[..., None]) * (1 + s["pit_amp"] * pit[win] * alpha)[..., None]
        vessel_vis[win] *= 1 - 0.7 * alpha
    albedo *= 1 - (vessels * vessel_vis * rng.uniform(0.3, 0.6))[..., None] * np.array([0.5, 0.85, 0.85], F32)
    tilt = rng.normal(0, 0.45, 2)
    lambert, spec = _shade(c, height, tilt)
    exposure = _uniform(rng, d.exposure_range)
    light = exposure * (0.35 + 0.65 * lambert) / (1 + d.light_falloff * (c.u ** 2 + c.v ** 2))
    light *= (1 - lumen) * (1 + 1.5 * np.minimum(height, 0.2))      # nearer surfaces are brighter
    light = np.clip(light, 1e-3, None)
    img = albedo * 255
    for ch, gamma in enumerate(d.shadow_tint):
        img[..., ch] *= light if gamma == 1 else light ** F32(gamma)
    glare = np.clip(spec + _highlights(rng, c, d, specs), 0, 1)[..., None]
    img = img * (1 - glare) + F32(252) * glare
    img = np.tanh(img * F32(1.1 / 255)) * F32(255 / np.tanh(1.1))   # soft shoulder, no hard clipping
    if len(specs) == 1 and rng.random() < d.occluder_prob:
        occ, shade = _occluder(rng, c, specs[0]["centre"])
        metal = (shade * 200 * exposure)[..., None] * np.array([0.95, 0.97, 1.0], F32)
        img = img * (1 - occ[..., None]) + metal * occ[..., None]
        mask &= occ < 0.5
    img = img * fov[..., None] + rng.uniform(0, 6) * (1 - fov[..., None])
    mask &= fov > 0.5
    img = _degrade(rng, img, c, d, scale)
    mask &= ~_overlays(rng, img, c, d)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


# ----------------------------------------------------------------------------------------- writing
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 3]



def render_pairs(domain: PhantomDomain | str, seed: int, indices, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``indices`` squeezed to size x size, as arrays (images N x size x size x 3, masks N x size x size):
    a set of phantom pairs in memory for checks that need realistic frames but no run folder."""
    images, masks = [], []
    for i in indices:
        image, mask = render_frame(domain, seed, int(i), scale=size / 300)
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
    return np.stack(images), np.stack(masks)


def _frame_paths(dest: Path, d: PhantomDomain, index: int) -> tuple[Path, Path]:
    if PHANTOM_LAYOUTS.get(d.name, "kvasir-seg") == "kvasir-seg":
        name = f"ph{d.name}{index:05d}"
        return dest / "images" / f"{name}.jpg", dest / "masks" / f"{name}.png"
    return dest / "Original" / f"{index + 1}.png", dest / "Ground Truth" / f"{index + 1}.png"


def _write_frames(dest: Path, d: PhantomDomain, seed: int, scale: float, indices: list[int]) -> int:
    """Render and write the missing files of the given frames; returns how many frames it did."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)                                   # frames are small: threads only cost
    try:
        for index in indices:
            _write_frame(dest, d, seed, scale, index)
    finally:
        cv2.setNumThreads(threads)
    return len(indices)


def _write_frame(dest: Path, d: PhantomDomain, seed: int, scale: float, index: int) -> None:
    """Render one frame and write whichever of its two files is missing (fixed encoder settings)."""
    img_path, mask_path = _frame_paths(dest, d, index)
    if img_path.exists() and mask_path.exists():
        return
    image, mask = render_frame(d, seed, index, scale)
    if not img_path.exists():
        bgr = np.ascontiguousarray(image[..., ::-1])
        params = _JPEG if img_path.suffix == ".jpg" else _PNG
        atomic_write_bytes(img_path, _encode(img_path.suffix, bgr, params))
    if not mask_path.exists():
        atomic_write_bytes(mask_path, _encode(".png", mask.astype(np.uint8) * 255, _PNG))


def _encode(ext: str, array: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:
        raise DataError(None, f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


def write_phantom(dest: str | Path, domain: str | PhantomDomain, n: int, seed: int, scale: float = 1.0,
                  workers: int = 1, progress: bool = True) -> Path:
    """Write n frames to dest in the folder layout of the real data set the domain stands in for.

    A -> Kvasir-SEG layout images/phA00000.jpg (JPEG q95) + masks/phA00000.png (0/255);
    B -> CVC-ClinicDB layout Original/<k>.png + 'Ground Truth'/<k>.png, k = 1..n.
    Files are written atomically; files already present under their final name are kept (resume).
    Output bytes do not depend on `workers`. A phantom.json records how the folder was made; a
    folder made with another domain, seed or scale is refused rather than mixed."""
    from ..progress import tqdm

    d = _domain(domain)
    dest = Path(dest)
    for sub in {p.parent for p in _frame_paths(dest, d, 0)}:
        sub.mkdir(parents=True, exist_ok=True)
    record = {"generator": "polyplib.data.phantom", "domain": d.name, "layout": PHANTOM_LAYOUTS.get(d.name),
              "seed": int(seed), "n": int(n), "scale": float(scale), "fields": asdict(d)}
    record = json.loads(json.dumps(record))
    meta = dest / "phantom.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        diff = [k for k in ("domain", "seed", "scale", "fields") if old.get(k) != record[k]]
        if diff:
            raise DataError(meta, f"folder was made with other {', '.join(diff)}; use an empty folder")
    atomic_write_bytes(meta, (json.dumps(record, indent=2) + "\n").encode())
    chunks = [list(range(i, min(n, i + 16))) for i in range(0, n, 16)]
    with tqdm(total=n, disable=not progress, desc=f"phantom {d.name}", unit="frame") as bar:
        if workers <= 1:
            for chunk in chunks:
                bar.update(_write_frames(dest, d, seed, scale, chunk))
        else:
            # spawn, not fork: a forked child of a process that already used cv2 can deadlock
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for done in pool.map(_write_frames, *zip(*[(dest, d, seed, scale, ch) for ch in chunks])):
                    bar.update(done)
    return dest
