"""Stage 02, part 1: group the training pairs so that each DDPM learns one kind of polyp.

The paper embeds image and mask with ImageNet Inception-v3, concatenates the two vectors and runs
scikit-learn KMeans (random_state=0, K=20). Here:

* ``clustering.features: inception`` — FID Inception pool3 features (2048-d) of the image and of the
  mask (as a grey 3-channel image), concatenated to 4096-d; real weights only, through stage 04's
  feature path (``polyplib.features.inception.InceptionFeatures``, see :func:`inception_extractor`).
* ``clustering.features: handcrafted`` — a documented stand-in when no Inception weights exist:
  colour statistics inside and outside the mask (mean and std of R, G, B: 12 values) and mask shape
  (coverage, centroid y/x, bounding-box height/width, connected components, compactness: 7 values),
  each column standardised. It is named ``handcrafted (colour statistics + mask shape)`` wherever
  it appears.
* ``clustering.features: paper`` — the paper's own assignment shipped with polyplib (K=10/20/30/40),
  usable only when the training ids are the paper's Kvasir-SEG images.

Clusters smaller than ``clustering.min_size`` are merged, smallest first, into the cluster whose
centroid is nearest; every merge is recorded in ``clusters.json``. No pair is ever dropped.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import StageError
from ..runs import Run, atomic_write_json, atomic_write_text

HANDCRAFTED_NAME = "handcrafted (colour statistics + mask shape)"
INCEPTION_NAME = "fid-inception-v3 (inception-2015-12-05, pool3 2048-d)"
PAPER_KS = (10, 20, 30, 40)
#: The resize of the clustering features: fixed, not ``metrics.fid_resize`` (see inception_extractor).
CLUSTERING_RESIZE = "legacy-tf"


# ----------------------------------------------------------------------------- features
def handcrafted_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """19 numbers: RGB mean/std inside and outside the mask, then 7 mask-shape descriptors."""
    import cv2

    img = image.astype(np.float32) / 255.0
    m = mask.astype(bool)
    h, w = m.shape
    inside = img[m] if m.any() else np.zeros((1, 3), np.float32)
    outside = img[~m] if (~m).any() else np.zeros((1, 3), np.float32)
    colour = np.concatenate([inside.mean(0), inside.std(0), outside.mean(0), outside.std(0)])
    if m.any():
        ys, xs = np.nonzero(m)
        n_comp = cv2.connectedComponents(m.astype(np.uint8))[0] - 1
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        perimeter = sum(cv2.arcLength(c, True) for c in contours)
        compact = 4 * np.pi * m.sum() / max(perimeter, 1.0) ** 2
        shape = [m.mean(), ys.mean() / h, xs.mean() / w, (np.ptp(ys) + 1) / h, (np.ptp(xs) + 1) / w,
                 n_comp, compact]
    else:
        shape = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    return np.concatenate([colour, np.asarray(shape, np.float32)]).astype(np.float32)


def standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def inception_extractor(cfg, device: str = "cpu"):
    """Stage 04's FID Inception (``InceptionFeatures``) with the ``clustering.weights`` weights.

    The resize is :data:`CLUSTERING_RESIZE`, not the run's ``metrics.fid_resize``: stage 02 depends on
    the clustering and ddpm settings only, so a change of how FID is measured must not change the
    clusters (and silently leave DDPMs trained on other ones). TF1 bilinear is the resize clustering
    has always used: the features agree with the former TorchScript path's within 4e-5 (checked on
    64 px phantom pairs), so earlier runs' clusters are reproduced. Missing or unusable weights: a
    StageError that names them and the ``clustering.features=handcrafted`` way out."""
    from ..features.inception import InceptionFeatures
    from ..features.inception_weights import resolve_fid_weights

    try:
        weights = resolve_fid_weights(cfg.clustering.weights, cfg.metrics.cache_dir, setting="clustering.weights")
        return InceptionFeatures(weights, device=device, resize=CLUSTERING_RESIZE)
    except StageError as exc:
        raise StageError(f"{exc}; or set clustering.features=handcrafted") from None


def inception_features(pairs: Sequence[tuple[np.ndarray, np.ndarray]], extractor,
                       progress: bool = False) -> np.ndarray:
    """N x 4096: FID Inception pool features of each image, then of its mask (grey, 3 channels)."""
    from ..progress import tqdm

    def rows(what: str):
        return tqdm(pairs, desc=f"inception features ({what})", disable=not progress)

    images = extractor(image for image, _ in rows("images"))
    masks = extractor(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1) for _, mask in rows("masks"))
    return np.concatenate([images, masks], axis=1)


# ----------------------------------------------------------------------------- clustering
def merge_small(labels: np.ndarray, features: np.ndarray, min_size: int) -> tuple[np.ndarray, list[dict]]:
    """Merge clusters below ``min_size`` (smallest first) into the one with the nearest centroid."""
    labels = labels.copy()
    merges: list[dict] = []
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        small = [(c, k) for k, c in zip(ids, counts) if c < min_size]
        if len(ids) <= 1 or not small:
            break
        size, victim = min(small)
        centroids = {k: features[labels == k].mean(0) for k in ids}
        others = [k for k in ids if k != victim]
        into = min(others, key=lambda k: float(np.linalg.norm(centroids[k] - centroids[victim])))
        merges.append({"cluster": int(victim), "size": int(size), "into": int(into)})
        labels[labels == victim] = into
    return labels, merges


def kmeans_labels(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(features)


def paper_labels(ids: Sequence[str], k: int) -> np.ndarray:
    """The paper's shipped cluster ids for these training ids (file stems of its Kvasir-SEG images)."""
    from ..data.splits import paper_clusters

    if k not in PAPER_KS:
        raise StageError(f"clustering.features=paper needs clustering.k in {PAPER_KS}, got {k}")
    table = paper_clusters()
    by_stem = dict(zip((Path(n).stem for n in table["image"]), table[f"cluster_k{k}"]))
    missing = [i for i in ids if i not in by_stem]
    if missing:
        raise StageError(f"clustering.features=paper: {len(missing)} of {len(ids)} training ids are not among "
                         f"the paper's 348 Kvasir-SEG images (first: {', '.join(missing[:3])}); use "
                         "clustering.features=inception or handcrafted for other data")
    return np.asarray([by_stem[i] for i in ids], dtype=int)


def feature_kind(cfg) -> str:
    kind = cfg.clustering.features
    if kind == "inception":
        from ..features.inception import RESIZE_SHORT
        return f"{INCEPTION_NAME} of image + mask ({RESIZE_SHORT[CLUSTERING_RESIZE]})"
    if kind == "handcrafted":
        return HANDCRAFTED_NAME
    return f"paper assignment (K={cfg.clustering.k})"


def _cached(path: Path | None, key: str, ids: Sequence[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Features from ``path`` when it holds these ids under this key, else computed and saved there."""
    import io

    from ..runs import atomic_write_bytes

    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key and z["ids"].tolist() == list(ids):
                return z["features"]
    feats = compute()
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, key=key, ids=np.asarray(list(ids)), features=feats)
        atomic_write_bytes(path, buf.getvalue())
    return feats


def cluster_pairs(ids: Sequence[str], load: Callable[[str], tuple[np.ndarray, np.ndarray]], cfg,
                  device: str = "cpu", cache: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Cluster the pairs ``ids``; returns the table (id, cluster, features) and a report dict.

    ``cache``: an .npz file that keeps the Inception features, so a new K or seed reuses them.
    """
    c = cfg.clustering
    report: dict = {"features": feature_kind(cfg), "k_requested": c.k, "min_size": c.min_size,
                    "seed": c.seed, "merges": [], "notes": []}
    if c.features == "paper":
        labels = paper_labels(ids, c.k)
        report["notes"].append("paper assignment used as shipped; small clusters are not merged")
    else:
        if c.features == "inception":
            extractor = inception_extractor(cfg, device)
            report["weights"], report["feature_settings"] = extractor.weights.record(), extractor.settings()
            data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k != "root"}
            key = hashlib.sha256(json.dumps([extractor.settings(), data], sort_keys=True).encode()).hexdigest()
            feats = _cached(cache, key[:16], ids, lambda: inception_features(
                [load(i) for i in ids], extractor, progress=cfg.run.progress))
        else:
            feats = standardise(np.stack([handcrafted_features(*load(i)) for i in ids]))
        k = min(c.k, len(ids))
        if k < c.k:
            report["notes"].append(f"K lowered from {c.k} to {k}: only {len(ids)} training pairs")
        labels = kmeans_labels(feats, k, c.seed)
        labels, report["merges"] = merge_small(labels, feats, c.min_size)
    # renumber 0..K'-1 keeping the original order; record the mapping beside the merges
    kept = sorted(np.unique(labels).tolist())
    renumber = {old: new for new, old in enumerate(kept)}
    report["renumbered"] = {str(k): v for k, v in renumber.items()}
    table = pd.DataFrame({"id": list(ids), "cluster": [renumber[int(l)] for l in labels],
                          "features": report["features"]})
    sizes = table.groupby("cluster").size()
    report["k_final"] = int(len(sizes))
    report["sizes"] = {int(k): int(v) for k, v in sizes.items()}
    return table, report


# ----------------------------------------------------------------------------- stage artefacts
def clustering_key(cfg, ids: Sequence[str]) -> str:
    payload = {"clustering": cfg.clustering.model_dump(mode="json"),
               "data": {k: v for k, v in cfg.data.model_dump(mode="json").items() if k != "root"},
               "ids": sorted(ids)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cluster_name(cluster: int) -> str:
    return f"cluster-{int(cluster):02d}"


def load_clusters(run: Run) -> tuple[pd.DataFrame, dict]:
    """The run's clusters.csv and clusters.json (StageError if clustering has not run)."""
    csv, meta = run.path("clusters.csv"), run.path("clusters.json")
    if not csv.exists() or not meta.exists():
        raise StageError(f"{csv}: no clusters yet; run stage 02 (notebook 02 or train_all)")
    return pd.read_csv(csv, dtype={"id": str}), json.loads(meta.read_text())


def cluster_training_set(run: Run, force: bool = False) -> pd.DataFrame:
    """Cluster the run's training pairs into ``clusters.csv`` (+ ``clusters.json``), reusing a match."""
    from ..data.prepared import load_dataset
    from ..training import resolve_device

    prepared = load_dataset(run)
    ids = prepared.ids("train")
    key = clustering_key(run.cfg, ids)
    if not force and run.path("clusters.json").exists():
        table, meta = load_clusters(run)
        if meta.get("key") == key:
            return table
    table, report = cluster_pairs(ids, prepared.load, run.cfg, device=str(resolve_device(run.cfg.run.device)),
                                  cache=run.path("models", "ddpm", "inception_features.npz"))
    report["key"] = key
    for m in report["merges"]:
        print(f"clustering: cluster {m['cluster']} had {m['size']} pairs (< min_size "
              f"{run.cfg.clustering.min_size}); merged into cluster {m['into']}")
    atomic_write_text(run.path("clusters.csv"), table.to_csv(index=False))
    atomic_write_json(run.path("clusters.json"), report)
    return table


def cluster_table(run: Run) -> pd.DataFrame:
    """One row per cluster: model name, pairs, feature kind and what was merged into it."""
    table, meta = load_clusters(run)
    merged_into: dict[int, list[str]] = {}
    for m in meta.get("merges", []):
        new = meta["renumbered"].get(str(m["into"]))
        if new is not None:
            merged_into.setdefault(int(new), []).append(f"{m['cluster']} ({m['size']} pairs)")
    rows = [{"model": cluster_name(c), "cluster": int(c), "pairs": int(n), "features": meta["features"],
             "merged_in (KMeans cluster, size)": ", ".join(merged_into.get(int(c), [])) or "-"}
            for c, n in table.groupby("cluster").size().items()]
    return pd.DataFrame(rows)
