"""Stage 04, the quality-vs-cost study of the inpainting samplers (``sampling.budget_study``).

Why its own protocol: every point redraws the SAME sources from the SAME seeds with the same model,
so the points can be compared pair by pair, and only the redrawn region differs between them. The
images are therefore compared where they differ: a square crop around each source's inpainted
region (the dilated real mask, padded by a quarter of its size), against the same crop of the real
source (the real polyp the point replaced). On whole frames the shared context would dilute every
difference.

KID (the polynomial-kernel MMD^2 of torch-fidelity, here on all n crops at once, as its U-statistic
that leaves out each crop's comparison with its own source) gets a 95 % bootstrap interval by resampling sources, and the difference of each point
to the reference point (the first: the authors' 960-call schedule) a paired bootstrap interval
with the same resampled sources. A point whose difference interval holds 0 is statistically
indistinguishable from the reference at this n; the cheapest such point is named. In a resample a
source drawn twice is not compared with its own copy (as the estimator leaves out the diagonal).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import StageError
from ..runs import Run
from ..features.inception import InceptionFeatures
from .fid import fid_from_features, too_few
from .msssim import msssim_pairs

BOOTSTRAPS = 1000
#: side of the crops MS-SSIM compares (its 5 scales need at least 48 px)
MSSSIM_SIDE = 96


def region_box(region: np.ndarray, pad: float = 0.25) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a square around the True pixels of ``region``, padded by
    ``pad`` of its side and kept inside the frame (a smaller frame than the square: the frame)."""
    ys, xs = np.nonzero(region)
    h, w = region.shape
    if len(ys) == 0:
        return 0, 0, h, w
    side = int(np.ceil(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * (1 + 2 * pad)))
    side = min(side, h, w)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    return top, left, top + side, left + side


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = box
    return np.ascontiguousarray(image[top:bottom, left:right])


def kid_kernel(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """KID's kernel (x . y / d + 1)^3 between the rows of two feature sets (scikit-learn's polynomial kernel)."""
    from sklearn.metrics.pairwise import polynomial_kernel

    return polynomial_kernel(np.asarray(f1, np.float64), np.asarray(f2, np.float64), degree=3,
                             gamma=1.0 / f1.shape[1], coef0=1)


def _mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, w: np.ndarray) -> float:
    """torch-fidelity's MMD^2 U-statistic (``mmd_est="u-statistic"``) of two paired sets, each row counted
    ``w`` times (a bootstrap draw; all ones: the estimate itself). Every term leaves out the pairs of a
    row with itself, the cross term included: row k of both sets comes from the same source and shares
    its real context, which must not count as likeness. A resample's duplicates are left out the same way."""
    pairs = w.sum() ** 2 - (w * w).sum()

    def off_diagonal(k: np.ndarray) -> float:
        return (w @ k @ w - (w * w * np.diag(k)).sum()) / pairs

    return float(off_diagonal(kxx) + off_diagonal(kyy) - 2 * off_diagonal(kxy))


def paired_kid(generated: dict[str, np.ndarray], real: np.ndarray, reference: str, seed: int = 0,
               bootstraps: int = BOOTSTRAPS) -> pd.DataFrame:
    """KID of each generated set against ``real`` (rows paired: row k of every set is source k), with a
    95 % bootstrap interval over sources, and its difference to ``generated[reference]`` with a paired one."""
    n = len(real)
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, n, n), minlength=n).astype(float) for _ in range(bootstraps)]
    draws = [w for w in draws if np.count_nonzero(w) > 1]     # one source drawn n times has no pair to compare
    kyy = kid_kernel(real, real)
    kernels = {k: (kid_kernel(f, f), kid_kernel(f, real)) for k, f in generated.items()}
    full = np.ones(n)

    def values(name: str) -> tuple[float, np.ndarray]:
        kxx, kxy = kernels[name]
        return _mmd2(kxx, kyy, kxy, full), np.array([_mmd2(kxx, kyy, kxy, d) for d in draws])

    ref, ref_boot = values(reference)
    rows = []
    for name in generated:
        kid, boot = (ref, ref_boot) if name == reference else values(name)
        diff = boot - ref_boot
        rows.append({"method": name, "kid": kid, "kid_lo": float(np.percentile(boot, 2.5)),
                     "kid_hi": float(np.percentile(boot, 97.5)), "kid_minus_reference": kid - ref,
                     "diff_lo": float(np.percentile(diff, 2.5)), "diff_hi": float(np.percentile(diff, 97.5))})
    return pd.DataFrame(rows)


def _resized(images: list[np.ndarray], side: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BICUBIC)) for im in images])


def budget_table(run: Run, extractor: InceptionFeatures) -> pd.DataFrame:
    """One row per point of the study: cost (UNet calls, seconds per pair, speed-up), fidelity of the
    redrawn regions (KID with its interval, the paired difference to the authors' point, FID where n
    allows), diversity (MS-SSIM of the crops) and mask sanity (acceptance, the generated masks'
    coverage of their region against the real masks', Kolmogorov-Smirnov)."""
    from scipy.stats import ks_2samp

    from ..data.imageio import read_image, read_mask
    from ..data.prepared import load_dataset
    from ..sampling.stage import budget_points
    from ..synthetic.catalogue import set_dir
    from ..synthetic.postprocess import dilate, scaled_px
    from ..synthetic.folder import read_records

    cfg = run.cfg
    points = budget_points(cfg)
    if not points:
        return pd.DataFrame()
    ds = load_dataset(run)
    dilation = scaled_px(cfg.sampling.dilation_px, cfg.data.resolution, 1)
    manifests = {name: read_records(set_dir(run, name)).sort_values("id", ignore_index=True)   # all pairs
                 for name in points}
    reference = next(iter(points))
    sources = list(manifests[reference]["source_id"])
    for name, df in manifests.items():
        if list(df["source_id"]) != sources:
            raise StageError(f"{set_dir(run, name)}: not the sources of {reference}; rerun stage 03")
    n = len(sources)
    refused = too_few({"n": n}, cfg.metrics.min_images)   # no KID, FID or MS-SSIM below metrics.min_images
    boxes, regions, real_crops, real_cover = [], [], [], []
    for sid in sources:
        image, mask = ds.load(sid)
        region = dilate(mask, dilation)
        box = region_box(region)
        boxes.append(box)
        regions.append(region)
        real_crops.append(crop(image, box))
        real_cover.append(mask[region].mean())
    real_feats = None if refused else extractor(real_crops)     # nothing extracted for a refused study
    feats, crops, covers = {}, {}, {}
    for name, df in manifests.items():
        folders = [set_dir(run, name) / ("" if ok else "rejected") for ok in df["accepted"].astype(bool)]
        images = [read_image(d / "images" / f"{f}.png") for d, f in zip(folders, df["file"])]
        masks = [read_mask(d / "masks" / f"{f}.png") for d, f in zip(folders, df["file"])]
        crops[name] = [crop(im, b) for im, b in zip(images, boxes)]
        covers[name] = np.array([m[r].mean() for m, r in zip(masks, regions)])
        feats[name] = None if refused else extractor(crops[name])
    kid = (paired_kid(feats, real_feats, reference, seed=cfg.metrics.seed) if not refused else
           pd.DataFrame({"method": list(points)}).reindex(columns=["method", "kid", "kid_lo", "kid_hi",
                                                                    "kid_minus_reference", "diff_lo", "diff_hi"]))
    kid = kid.set_index("method")
    ref_seconds = float(manifests[reference]["seconds"].mean())
    rows = []
    for name, point in points.items():
        df = manifests[name]
        seconds = float(df["seconds"].mean())
        div = [np.nan] if refused else msssim_pairs(_resized(crops[name], MSSSIM_SIDE), cfg.metrics.msssim_pairs,
                                                     cfg.metrics.seed)[0]
        k = kid.loc[name]
        ks = ks_2samp(covers[name], real_cover)
        rows.append({
            "method": name, "sampler": point["sampler"], "steps": point["steps"],
            "jumps": "none" if point["sampler"] == "dpm++" else f"{point['jump_length']} x {point['jump_n_sample']}",
            "unet_calls": int(df["nfe"].iloc[0]), "pairs": n, "accepted": int(df["accepted"].astype(bool).sum()),
            "seconds_per_pair": seconds, "speedup": ref_seconds / seconds if seconds > 0 else float("nan"),
            "kid": k["kid"], "kid_lo": k["kid_lo"], "kid_hi": k["kid_hi"],
            "kid_minus_reference": k["kid_minus_reference"], "diff_lo": k["diff_lo"], "diff_hi": k["diff_hi"],
            "indistinguishable": bool(not refused and k["diff_lo"] <= 0 <= k["diff_hi"]),
            "interval_overlaps_reference": bool(not refused and k["kid_lo"] <= kid.loc[reference, "kid_hi"]
                                                and kid.loc[reference, "kid_lo"] <= k["kid_hi"]),
            "fid": np.nan if refused else fid_from_features(feats[name], real_feats, cfg.metrics.min_images),
            "status": refused or "ok", "msssim": float(np.mean(div)),
            "mask_coverage": float(covers[name].mean()), "real_mask_coverage": float(np.mean(real_cover)),
            "coverage_ks": float(ks.statistic), "coverage_ks_p": float(ks.pvalue), "reference": reference})
    return pd.DataFrame(rows)


def cheapest_indistinguishable(table: pd.DataFrame) -> dict | None:
    """The point with the fewest UNet calls whose paired KID difference to the reference holds 0, or None."""
    if table.empty:
        return None
    ok = table[table["indistinguishable"].astype(bool)].sort_values(["unet_calls", "seconds_per_pair"])
    return ok.iloc[0].to_dict() if len(ok) else None


def budget_summary(cfg, table: pd.DataFrame) -> str:
    """What notebook 04 prints above the study: that it is off (and how to run it), that it has too few
    pairs, or the cheapest point indistinguishable from the reference and its speed-up."""
    pairs = cfg.sampling.budget_study.pairs
    if table.empty:
        return (f"The samplers' quality-vs-cost study is off in the '{cfg.profile}' profile (sampling.budget_study.pairs"
                f" = {pairs}): its reference point alone is the authors' 960 UNet calls per pair, hours on a CPU. Run "
                "it on a GPU with overrides = ['sampling.budget_study.pairs=300'] or benchmarks/bench_inpaint_budget.py.")
    if (table["status"] != "ok").all():
        return (f"No KID, FID or MS-SSIM for the study: {table['status'].iloc[0]} (sampling.budget_study.pairs = "
                f"{pairs}, metrics.min_images = {cfg.metrics.min_images}).")
    ref = table[table["method"] == table["reference"]].iloc[0]
    best = cheapest_indistinguishable(table[table["method"] != table["reference"]])
    head = f"{int(ref['pairs'])} sources, reference {ref['method']} ({int(ref['unet_calls'])} UNet calls per pair). "
    if best is None:
        return head + "No cheaper point is statistically indistinguishable from it (every paired KID difference " \
                      "interval excludes 0)."
    return head + (f"Cheapest point indistinguishable from it: {best['method']} ({int(best['unet_calls'])} calls, "
                   f"KID difference x 1000 {1000 * best['kid_minus_reference']:.2f} "
                   f"[{1000 * best['diff_lo']:.2f}, {1000 * best['diff_hi']:.2f}]), {best['speedup']:.1f}x faster per pair.")
