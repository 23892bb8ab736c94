"""Do the synthetic pairs teach? Label fidelity and the seam check, per synthetic set.

Why: FID says how real a set looks as a whole; it does not say whether a generated mask labels the
generated polyp, nor whether a generated region carries a give-away (grain, seams, wrong colour)
that real polyps never have. A segmenter trained on such pairs learns the give-away and fails on
real frames. Two checks answer this without a human:

- **Label fidelity** (the judge, :func:`polyplib.segmentation.study.judge_model`): a segmenter trained on real pairs only (the study's first
  segmentation model, its training protocol, real validation) is applied to every synthetic image;
  the IoU between its prediction and the generated mask, per pair, averaged with a bootstrap 95 %
  interval. The same segmenter on the real test images is the reference: a set whose masks label
  its polyps scores close to it.
- **Seam check** (``seam_check``): how well a small classifier tells a generated polyp region from a
  real one. Each region (the pair's mask) is described by texture statistics (high-frequency energy
  of the luminance and of the two colour-opponent channels at two scales, inside the region),
  the gradient on its outline against its inside (a seam), and its colour contrast with its
  surroundings; a standardised logistic regression (scikit-learn) is scored by stratified 5-fold
  cross-validation on equal numbers of real and generated regions. Accuracy 0.5 means the regions
  cannot be told apart by these statistics; its 95 % interval is Wilson's (scipy). ROC AUC is
  reported beside it.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..runs import Run, atomic_write_json

#: fewer regions per class (or pairs) than this: no seam accuracy and no judge IoU (the 95 % interval of
#: an accuracy near 0.5 would be wider than +-0.15)
MIN_REGIONS = 20
#: bootstrap resamples of the judge IoU's interval (seeded by ``metrics.seed``)
BOOTSTRAP = 2000
#: the region statistics, in the order of ``region_features``
FEATURES = tuple(
    [f"hf{s}_{c}_{q}" for s in (1, 2) for c in ("lum", "rg", "yb") for q in ("p50", "p90")]
    + ["seam_gradient_ratio", "seam_chroma_ratio", "contrast_lum", "contrast_rg", "contrast_yb", "chroma_sd"])


def _opponent(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W x 3 float (luminance, red-green, yellow-blue), in [0, 1] units."""
    rgb = np.asarray(image, np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([(r + g + b) / 3.0, (r - g) / 2.0, (r + g - 2.0 * b) / 4.0], -1)


def region_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The statistics of ``FEATURES`` for the region ``mask`` of ``image``; None when it is too small."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    inside = ndimage.binary_erosion(mask, iterations=1)
    if inside.sum() < 9:
        return None
    ring = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
    around = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=1)
    opp = _opponent(image)
    out = []
    for sigma in (1.0, 2.0):
        for c in range(3):
            residual = np.abs(opp[..., c] - ndimage.gaussian_filter(opp[..., c], sigma))[inside]
            out += [np.log(np.median(residual) + 1e-4), np.log(np.quantile(residual, 0.9) + 1e-4)]

    def gradient(channel: np.ndarray) -> np.ndarray:
        return np.hypot(ndimage.sobel(channel, 0), ndimage.sobel(channel, 1))

    lum_grad = gradient(opp[..., 0])
    chroma_grad = gradient(opp[..., 1]) + gradient(opp[..., 2])
    core = ~ring & inside if (~ring & inside).sum() >= 4 else inside
    out.append(np.log((np.median(lum_grad[ring]) + 1e-4) / (np.median(lum_grad[core]) + 1e-4)))
    out.append(np.log((np.median(chroma_grad[ring]) + 1e-4) / (np.median(chroma_grad[core]) + 1e-4)))
    ref = around if around.sum() >= 4 else ~mask
    out += [float(opp[..., c][inside].mean() - opp[..., c][ref].mean()) for c in range(3)]
    out.append(float(np.log(opp[..., 1:][inside].std() + 1e-4)))
    return np.asarray(out, np.float64)


def features_of(pairs) -> np.ndarray:
    """Rows of ``region_features`` for the pairs whose region is large enough."""
    rows = [region_features(image, mask) for image, mask in pairs]
    rows = [r for r in rows if r is not None]
    return np.stack(rows) if rows else np.zeros((0, len(FEATURES)))


def seam_check(real: np.ndarray, generated: np.ndarray, seed: int = 0, folds: int = 5) -> dict:
    """Cross-validated accuracy (Wilson 95 % CI) and AUC of telling ``generated`` region features
    from ``real`` ones, on equal numbers of each (the larger class is subsampled, seeded)."""
    from scipy.stats import binomtest
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(real), len(generated))
    row = {"seam_regions": int(n)}
    if n < MIN_REGIONS:
        return {**row, "seam_status": f"too few regions (n = {n} < {MIN_REGIONS})",
                "seam_accuracy": np.nan, "seam_lo": np.nan, "seam_hi": np.nan, "seam_auc": np.nan}
    rng = np.random.default_rng([seed, 5151])
    x = np.concatenate([real[rng.choice(len(real), n, replace=False)],
                        generated[rng.choice(len(generated), n, replace=False)]])
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    proba = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    correct = int(((proba > 0.5).astype(int) == y).sum())
    ci = binomtest(correct, len(y)).proportion_ci(0.95, method="wilson")
    return {**row, "seam_status": "ok", "seam_accuracy": correct / len(y), "seam_lo": float(ci.low),
            "seam_hi": float(ci.high), "seam_auc": float(roc_auc_score(y, proba))}


def _iou_row(ious: np.ndarray, n_resamples: int, seed: int) -> dict:
    from ..segmentation.evaluate import bootstrap_ci

    if len(ious) < MIN_REGIONS:
        return {"n_pairs": int(len(ious)), "judge_status": f"too few pairs (n = {len(ious)} < {MIN_REGIONS})",
                "judge_iou": np.nan, "judge_iou_lo": np.nan, "judge_iou_hi": np.nan}
    mean, lo, hi = bootstrap_ci(ious, n_resamples, seed)
    return {"n_pairs": int(len(ious)), "judge_status": "ok", "judge_iou": mean, "judge_iou_lo": lo,
            "judge_iou_hi": hi}


def label_fidelity(run: Run, labels: dict[str, str], name: str = "fidelity") -> pd.DataFrame:
    """One row per synthetic set (``labels``: folder under synthetic/ -> display name), and the real
    test images as reference: judge IoU with its interval, and the seam check against the real
    training regions. Written to ``metrics/<name>.json``."""
    from ..data.prepared import load_dataset
    from ..segmentation.data import load_pool
    from ..segmentation.evaluate import evaluate_model
    from ..segmentation.study import judge_model
    from ..synthetic.catalogue import set_dir
    from ..synthetic.folder import load_set, read_manifest
    from ..training import resolve_device, torch_threads

    cfg = run.cfg
    size, seed, boot = cfg.data.resolution, cfg.metrics.seed, BOOTSTRAP
    device = str(resolve_device(cfg.run.device))
    ds = load_dataset(run)
    train = load_pool(ds, ds.ids("train"), size)
    test = load_pool(ds, ds.ids("test"), size)
    real_features = features_of(zip(train.images, train.masks))
    rows = []
    with torch_threads(cfg.run.torch_threads, resolve_device(cfg.run.device)):
        model, mean, std, record = judge_model(run)
        batch = cfg.segmentation.batch_size
        reference = evaluate_model(model, test, mean, std, device, batch)["iou"].to_numpy()
        rows.append({"method": "real-test", "label": "real test images (reference)", **_iou_row(reference, boot, seed),
                     "seam_regions": np.nan, "seam_status": "reference", "seam_accuracy": np.nan, "seam_lo": np.nan,
                     "seam_hi": np.nan, "seam_auc": np.nan})
        for method, label in labels.items():
            manifest = read_manifest(set_dir(run, method))
            if manifest.empty:
                continue
            pool = load_pool(load_set(run, method), manifest["id"].tolist(), size, synthetic=True)
            ious = evaluate_model(model, pool, mean, std, device, batch)["iou"].to_numpy()
            generated = features_of(zip(pool.images, pool.masks))
            rows.append({"method": method, "label": label, **_iou_row(ious, boot, seed),
                         **seam_check(real_features, generated, seed)})
    table = pd.DataFrame(rows).assign(**record)
    atomic_write_json(run.path("metrics", f"{name}.json"), {
        "settings": {"judge": record, "seam_features": list(FEATURES), "seam_min_regions": MIN_REGIONS,
                     "seam_classifier": "StandardScaler + LogisticRegression(C=1), stratified 5-fold CV, "
                     "equal classes; Wilson 95 % interval", "bootstrap": boot, "seed": seed},
        "fidelity": json.loads(table.to_json(orient="records"))})
    return table


def fidelity_display(table: pd.DataFrame) -> pd.DataFrame:
    """The notebook/report view: judge IoU [CI] and seam accuracy [CI] as text."""
    def ci(mean, lo, hi):
        return "—" if pd.isna(mean) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"

    return pd.DataFrame({
        "set": table["label"], "pairs": table["n_pairs"],
        "judge IoU (mask vs real-only segmenter) [95% CI]": [
            ci(r.judge_iou, r.judge_iou_lo, r.judge_iou_hi) if r.judge_status == "ok" else r.judge_status
            for r in table.itertuples()],
        "seam accuracy (0.5 = indistinguishable) [95% CI]": [
            ci(r.seam_accuracy, r.seam_lo, r.seam_hi) if r.seam_status == "ok" else r.seam_status
            for r in table.itertuples()],
        "seam AUC": [("—" if pd.isna(a) else f"{a:.3f}") for a in table["seam_auc"]]})

