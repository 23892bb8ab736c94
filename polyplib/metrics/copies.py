"""Stage 04: is a synthetic set made of near-copies of real images? Memorisation and leakage, per set.

Why: diffusion models trained on a few hundred images memorise, which for medical data is a privacy
question; and a held-out test image copied into a synthetic set would inflate every result built on
that set. For every synthetic image the nearest real training image and the nearest real test image
are found under three measures (:mod:`polyplib.synthetic.memorisation`): the FID Inception features of
the frame, the pixels of the polyp region, the pixels of the whole frame. A pair counts as closer to a
real image than real images are to each other when its distance is below the 1st percentile of the
training images' nearest-neighbour distances to each other (flips included on the pixel measures).

The table gives, per set, the share of pairs whose polyp region is such a near-copy of a training image
(**memorised**: the verdict), the same share for the whole frame and for Inception (an inpainted frame is
its training frame outside the polyp by construction, so these are high for RePaint sets and say
nothing about the polyp), and the pairs that are a held-out test image (region and frame both; stage 06
refuses such a set). The real held-out test images, measured as if they were a set, are the reference:
the share a set of new real images gets by chance. Per-pair records: ``metrics/memorisation/<set>.csv``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..features.inception import cached_features
from ..runs import Run, atomic_write_text
from ..synthetic.memorisation import (PERCENTILE, Measure, Reference, copy_check, frame_descriptors,
                                      frame_reference, region_descriptors, region_reference, verdicts)
from .fid import TOO_FEW, too_few

COLUMNS = ["method", "label", "status", "pairs", "memorised", "memorised_share", "frame_near_train_share",
           "inception_near_train_share", "leaked_test_images", "median_region_distance", "region_threshold",
           "refusal", "note"]


class RealReferences:
    """The training and test images' descriptors under every measure, computed once for all sets."""

    def __init__(self, run: Run, extractor):
        from ..data.prepared import load_dataset
        from ..segmentation.data import load_pool

        ds, size = load_dataset(run), run.cfg.data.resolution
        self.train = load_pool(ds, ds.ids("train"), size)
        self.test = load_pool(ds, ds.ids("test"), size)
        self.extractor = extractor
        self.region = region_reference(self.train.images, self.train.masks)     # frames that show a polyp
        self.frame = frame_reference(self.train.images)
        self.region_test = region_reference(self.test.images, self.test.masks, percentile=None)
        self.frame_test = frame_reference(self.test.images, percentile=None)
        # Inception: the unflipped frames (the network is nearly flip-invariant; 3x the extraction is not worth it),
        # the features FID uses, from the same cache
        cache = run.cfg.metrics.cache_dir
        train, test = (cached_features(f"{ds.name}-{split}", pool.ids, [ds.paths(i)[0] for i in pool.ids], extractor,
                                       cache).features for split, pool in (("train", self.train), ("test", self.test)))
        self.inception = Reference(train, np.arange(len(self.train))).with_threshold(PERCENTILE)
        self.inception_test = Reference(test, np.arange(len(self.test)))

    def check(self, images, masks, features: np.ndarray | None = None, against_test: bool = True) -> pd.DataFrame:
        """copy_check's per-pair table for these pairs (``features``: their Inception features when already
        extracted; test thresholds are the training images'; ``against_test=False`` for the test images)."""
        features = self.extractor(list(images)) if features is None else features
        test = (lambda ref: ref) if against_test else (lambda ref: None)
        measures = {
            "region": Measure(region_descriptors(images, masks), self.region, test(self.region_test),
                              threshold_test=self.region.threshold),
            "frame": Measure(frame_descriptors(images), self.frame, test(self.frame_test),
                             threshold_test=self.frame.threshold),
            "inception": Measure(features, self.inception, test(self.inception_test),
                                 threshold_test=self.inception.threshold)}
        table = copy_check(measures)
        return pd.concat([table, verdicts(table)], axis=1)


def _row(method: str, label: str, ids: list[str], table: pd.DataFrame, refs: RealReferences, minimum: int) -> dict:
    n = len(table)
    refusal = too_few({"n": n, "real n": len(refs.train)}, minimum)
    leaked = int(table["leaked"].sum())
    row = {"method": method, "label": label, "status": TOO_FEW if refusal else "ok", "pairs": n,
           "leaked_test_images": leaked, "region_threshold": round(refs.region.threshold * 255, 2),
           "refusal": refusal or "", "note": "grey levels (RMS) for distances and threshold"}
    if not refusal:
        row.update(memorised=int(table["memorised"].sum()), memorised_share=float(table["memorised"].mean()),
                   frame_near_train_share=float(table["frame_near_train"].mean()),
                   inception_near_train_share=float(table["inception_near_train"].mean()),
                   median_region_distance=round(float(np.median(table["region_train_dist"])) * 255, 2))
    return row


def memorisation_table(run: Run, extractor, sets: dict) -> pd.DataFrame:
    """One row per measured set (``sets``: method -> SetInfo of stage 04) and the held-out test images as
    the reference; per-pair records in ``metrics/memorisation/<method>.csv``."""
    from ..data.prepared import PreparedSet
    from ..segmentation.data import load_pool

    m, size = run.cfg.metrics, run.cfg.data.resolution
    refs = RealReferences(run, extractor)
    rows = []
    polyps = refs.test.subset(np.flatnonzero(refs.test.masks.reshape(len(refs.test), -1).any(axis=1)))
    reference = refs.check(polyps.images, polyps.masks, against_test=False)
    rows.append(_row("real-test", "Real held-out test images (reference)", polyps.ids, reference, refs, m.min_images))
    for method, info in sets.items():
        if info.status != "ok":
            continue
        ids = [i for ids in info.sets for i in ids]
        pool = load_pool(PreparedSet(info.folder), ids, size)
        features = np.concatenate(info.features) if info.features else None   # FID's, when it measured the set
        table = refs.check(pool.images, pool.masks, features)
        named = table.assign(id=ids, nearest_train=[refs.train.ids[i] for i in table["region_train_owner"]],
                             nearest_test=[refs.test.ids[i] for i in table["region_test_owner"]])[
            ["id", "nearest_train", "nearest_test", *table.columns]]
        atomic_write_text(run.path("metrics", "memorisation", f"{method}.csv"), named.to_csv(index=False))
        rows.append(_row(method, info.label, ids, table, refs, m.min_images))
    atomic_write_text(run.path("metrics", "memorisation", "real-test.csv"), reference.assign(
        id=polyps.ids, nearest_train=[refs.train.ids[i] for i in reference["region_train_owner"]]).to_csv(index=False))
    return pd.DataFrame(rows, columns=COLUMNS)


def memorisation_display(table: pd.DataFrame) -> pd.DataFrame:
    """The notebook/report view: shares as percentages, counts beside them."""
    def pct(row, col):
        return row["refusal"] if row["status"] != "ok" else f"{row[col]:.0%}"

    return pd.DataFrame({
        "set": table["label"], "pairs": table["pairs"],
        "polyp region a near-copy of a training image (memorised)": [
            row["refusal"] if row["status"] != "ok" else f"{row['memorised_share']:.0%} ({int(row['memorised'])})"
            for _, row in table.iterrows()],
        "whole frame near a training image": [pct(r, "frame_near_train_share") for _, r in table.iterrows()],
        "Inception near a training image": [pct(r, "inception_near_train_share") for _, r in table.iterrows()],
        "held-out test images in the set": table["leaked_test_images"].astype(int)})
