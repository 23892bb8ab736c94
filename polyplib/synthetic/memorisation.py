"""Memorisation check: is a synthetic pair a near-copy of a real training (or test) image?

A generator that memorises its training set, or a set that leaked a test image, produces pairs
that are much closer to one real image than real images ever are to each other. So for every
synthetic pair the nearest real training image and the nearest real test image are found under
each measure, and a pair is flagged when its distance is below the ``percentile``-th percentile
(1 % by default) of the real-vs-real nearest-neighbour distances (:func:`real_threshold`).

Measures map an image (with its mask) to a descriptor vector; distances are Euclidean:

* ``inception``: FID Inception pool3 features (N, 2048), computed by the caller and passed in;
* ``region``: the polyp region in pixels (:func:`region_descriptors`), scaled so that the L2
  distance is the RMS pixel difference on a 0..1 scale (x 255 = grey levels);
* ``frame``: the whole frame in pixels (:func:`frame_descriptors`), on the same scale.

What the study flags (:func:`verdicts`): a pair is **memorised** when its polyp region is a near-copy
of a training image's (the ``region`` measure: an inpainted frame is its training frame outside the
polyp by construction, so the frame and Inception say little about the generated polyp; they are
reported beside it), and a pair is a **leaked test image** when both its polyp region and its whole
frame are near-copies of a held-out test image (``region`` and ``frame``, each below the training
images' own threshold): a test frame copied into a training set, even flipped, noised or re-saved.
Inception alone misses JPEG-compressed copies of phantom frames (measured: a JPEG-75 copy moves its
features further than the nearest other real frame), which is why it flags nothing by itself.

Real references are described in three variants, as is, flipped left-right and flipped up-down
(:func:`flipped`), because a flipped copy is still a copy; every variant row keeps the index of
the real image it came from, its ``owner``. Descriptors of the real train and test images are
computed once (:class:`Reference`, :func:`region_reference`) and reused for every synthetic set.

numpy and pandas only: no torch here; features come in as arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import StageError

#: Side of the square the polyp region is resized to (region measure): small enough that sensor
#: noise and JPEG artefacts average out, large enough to tell different polyps apart.
REGION_SIZE = 24
#: Margin added to each side of the mask's bounding box, as a fraction of the box size (context).
REGION_MARGIN = 0.10
#: Default percentile of real-vs-real nearest-neighbour distances below which a pair is a near-copy.
PERCENTILE = 1.0
#: The variants every real reference is described in, in the order of :func:`flipped`.
VARIANTS = ("as-is", "flip-lr", "flip-ud")
#: Upper bound on the float64 distance block held at once by :func:`nearest` (bytes).
_BLOCK_BYTES = 32 * 2 ** 20

Images = np.ndarray | Sequence[np.ndarray]


# ------------------------------------------------------------------------------ descriptors
def _region_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the mask's bounding box grown by ``margin`` of its size each side and
    clipped to the frame; the whole frame when the mask is empty. Symmetric under flips, so the
    box of a flipped pair is the flipped box."""
    H, W = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, H, 0, W
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    my, mx = int(round(margin * (y1 - y0))), int(round(margin * (x1 - x0)))
    return max(0, y0 - my), min(H, y1 + my), max(0, x0 - mx), min(W, x1 + mx)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of area resampling: output cell i averages the input over
    [i, i + 1) * n_in / n_out, each input pixel weighted by its overlap. What cv2.INTER_AREA does
    when shrinking, but mirror-symmetric on both axes in every case (cv2's is not when one axis
    grows and the other shrinks: up to 0.34 of the range apart on a flipped crop, measured), so a
    flipped pair gets the flipped descriptor."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _area_resize(img: np.ndarray, size: int) -> np.ndarray:
    """An HxWxC image resampled to size x size x C by :func:`_area_weights` (float64)."""
    h, w, c = img.shape
    rows = _area_weights(h, size) @ img.reshape(h, w * c).astype(np.float64)
    return np.einsum("jw,iwc->ijc", _area_weights(w, size), rows.reshape(size, w, c))


def region_descriptors(images: Images, masks: Images, size: int = REGION_SIZE,
                       margin: float = REGION_MARGIN) -> np.ndarray:
    """Pixel descriptor of each pair's polyp region: float32 (N, size * size * 3).

    The image is cropped to its mask's bounding box (grown by ``margin`` each side, clipped to the
    frame; the whole frame for an empty mask), resized to size x size by area averaging
    (:func:`_area_weights`), taken to [0, 1] and flattened, then divided by sqrt(size * size * 3) so that the Euclidean distance
    between two descriptors is their RMS pixel difference (0..1; x 255 for grey levels) and a
    threshold reads the same whatever ``size``. Why the region and not the frame: a memorised polyp
    pasted on another background, or the same frame re-cropped, still matches here. ``images`` are
    uint8 RGB (N, H, W, 3) or a sequence of HxWx3 arrays of any sizes; ``masks`` the same with HxW."""
    if len(images) != len(masks):
        raise StageError(f"region descriptors: {len(images)} images but {len(masks)} masks")
    dim = size * size * 3
    out = np.empty((len(images), dim), np.float32)
    for i, (img, mask) in enumerate(zip(images, masks)):
        img, mask = np.asarray(img), np.asarray(mask).astype(bool)
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != mask.shape:
            raise StageError(f"region descriptors: pair {i} has image {img.shape} and mask {mask.shape}; "
                             "expected HxWx3 and HxW")
        y0, y1, x0, x1 = _region_box(mask, margin)
        out[i] = _area_resize(img[y0:y1, x0:x1], size).reshape(-1)
    out *= np.float32(1 / (255 * np.sqrt(dim)))
    return out


def frame_descriptors(images: Images, size: int = REGION_SIZE) -> np.ndarray:
    """Pixel descriptor of each whole frame, on the scale of :func:`region_descriptors`."""
    return region_descriptors(images, [np.ones(np.asarray(i).shape[:2], bool) for i in images], size, 0.0)


def frame_reference(images: Images, percentile: float | None = PERCENTILE) -> Reference:
    """:func:`region_reference` of whole frames (the frame measure's real reference)."""
    return region_reference(images, [np.ones(np.asarray(i).shape[:2], bool) for i in images], margin=0.0,
                            percentile=percentile)


def flipped(images: Images, masks: Images) -> tuple[Images, Images, np.ndarray]:
    """The references' variants: all as is, then all flipped left-right, then all flipped up-down
    (image and mask together), and ``owner``, the index of the real image each row came from.

    Why: a generator trained with flip augmentation can reproduce a training image mirrored; that
    is still a copy and must be at distance ~0 from its original. Arrays in give arrays out
    (3N, ...), sequences give lists. The first row of every owner is its unflipped image."""
    n = len(images)
    if len(masks) != n:
        raise StageError(f"flipped: {n} images but {len(masks)} masks")
    owner = np.tile(np.arange(n), len(VARIANTS))
    if isinstance(images, np.ndarray) and isinstance(masks, np.ndarray):
        return (np.concatenate([images, images[:, :, ::-1], images[:, ::-1]]),
                np.concatenate([masks, masks[:, :, ::-1], masks[:, ::-1]]), owner)
    imgs = [np.asarray(i) for i in images]
    msks = [np.asarray(m) for m in masks]
    return (imgs + [i[:, ::-1] for i in imgs] + [i[::-1] for i in imgs],
            msks + [m[:, ::-1] for m in msks] + [m[::-1] for m in msks], owner)


@dataclass(frozen=True)
class Reference:
    """Descriptors of a real set with its flips (rows in :func:`flipped`'s order) and each row's
    owner, plus the set's own real-vs-real threshold; computed once per real set and measure and
    reused for every synthetic set."""

    desc: np.ndarray                  # (M, D) descriptors of the variants
    owner: np.ndarray                 # (M,) index of the real image each row came from
    threshold: float = field(default=float("nan"))   # real_threshold(desc, owner) when known

    def __post_init__(self):
        if self.desc.ndim != 2 or self.owner.shape != (self.desc.shape[0],):
            raise StageError(f"reference: descriptors {self.desc.shape} and owners {self.owner.shape} "
                             "do not match (expected (M, D) and (M,))")

    @property
    def n_images(self) -> int:
        """Number of real images (not variants) in the reference."""
        return int(np.unique(self.owner).size)

    @property
    def originals(self) -> np.ndarray:
        """Row indices of the unflipped images: the first row of every owner, in owner order."""
        return _first_rows(self.owner)

    def with_threshold(self, percentile: float = PERCENTILE) -> "Reference":
        """The same reference with ``threshold`` set to its own real-vs-real percentile."""
        return Reference(self.desc, self.owner, real_threshold(self.desc, self.owner, percentile))


def region_reference(images: Images, masks: Images, size: int = REGION_SIZE, margin: float = REGION_MARGIN,
                     percentile: float | None = PERCENTILE) -> Reference:
    """Region descriptors of a real set and its flips, variant by variant, so that the flipped
    copies of a large set are never all held in memory; same rows as describing :func:`flipped`'s
    output. A frame without a polyp has no polyp region to copy and is left out, but owners stay
    indices into ``images``. With ``percentile`` the set's real-vs-real threshold is computed too.
    (The frame measure, :func:`frame_reference`, passes full masks: every frame takes part.)"""
    keep = np.asarray([i for i, m in enumerate(masks) if np.asarray(m).any()], int)
    if keep.size == 0:
        raise StageError("memorisation reference: no real frame shows a polyp")
    imgs = [np.asarray(images[i]) for i in keep]
    msks = [np.asarray(masks[i]) for i in keep]
    parts = [region_descriptors(imgs, msks, size, margin),
             region_descriptors([i[:, ::-1] for i in imgs], [m[:, ::-1] for m in msks], size, margin),
             region_descriptors([i[::-1] for i in imgs], [m[::-1] for m in msks], size, margin)]
    ref = Reference(np.concatenate(parts), np.tile(keep, len(VARIANTS)))
    return ref if percentile is None else ref.with_threshold(percentile)


# ------------------------------------------------------------------------------ neighbours
def _first_rows(owner: np.ndarray) -> np.ndarray:
    _, first = np.unique(np.asarray(owner), return_index=True)
    return np.sort(first)


def nearest(query: np.ndarray, reference: np.ndarray, owner: np.ndarray, exclude: np.ndarray | None = None,
            block_bytes: int = _BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference row of every query row: (Euclidean distance (N,), its owner (N,)).

    With ``exclude``, reference rows whose owner equals ``exclude[i]`` are skipped for query i, so
    that a real image and its own flips are never its own neighbour (real-vs-real). A query with no
    admissible row gets distance inf and owner -1. The distance matrix is built block by block
    (at most ``block_bytes`` of float64 at a time) with ||a||^2 - 2 a.b + ||b||^2 in float64,
    negatives from rounding clipped to 0: 15000 x 15000 x 2048 fits in a few hundred MB.
    Ties go to the first reference row."""
    q = np.asarray(query)
    r = np.asarray(reference)
    owner = np.asarray(owner)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1] or owner.shape != (r.shape[0],):
        raise StageError(f"nearest: query {q.shape}, reference {r.shape} and owner {owner.shape} do not match")
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.shape != (q.shape[0],):
            raise StageError(f"nearest: exclude {exclude.shape} does not match the {q.shape[0]} queries")
    n, m, d = q.shape[0], r.shape[0], q.shape[1]
    best = np.full(n, np.inf)
    arg = np.full(n, -1, np.int64)
    if n == 0 or m == 0:
        return best, np.full(n, -1, np.int64)
    # blocks: cols reference rows (float64 copy) and rows x cols distances both within the budget
    cols = int(max(1, min(m, block_bytes // (8 * max(d, 1)))))
    rows = int(max(1, min(n, block_bytes // (8 * max(cols, d)))))
    for c0 in range(0, m, cols):
        rb = r[c0:c0 + cols].astype(np.float64)
        rr = np.einsum("ij,ij->i", rb, rb)
        ob = owner[c0:c0 + cols]
        for q0 in range(0, n, rows):
            qb = q[q0:q0 + rows].astype(np.float64)
            d2 = np.einsum("ij,ij->i", qb, qb)[:, None] - 2 * (qb @ rb.T) + rr[None, :]
            if exclude is not None:
                d2[exclude[q0:q0 + rows, None] == ob[None, :]] = np.inf
            j = np.argmin(d2, axis=1)
            v = d2[np.arange(len(j)), j]
            better = v < best[q0:q0 + rows]           # strict: an earlier block wins ties
            best[q0:q0 + rows][better] = v[better]
            arg[q0:q0 + rows][better] = c0 + j[better]
    dist = np.sqrt(np.clip(best, 0, None))
    return dist, np.where(arg >= 0, owner[np.clip(arg, 0, None)], -1)


def real_threshold(reference_desc: np.ndarray, owner: np.ndarray, percentile: float = PERCENTILE) -> float:
    """The ``percentile``-th percentile of every real image's distance to its nearest *other* real
    image (any variant of the others; its own variants excluded by owner). Queries are the
    unflipped rows (first row of each owner). Why: "closer than real images ever are to each
    other" is a threshold in the data's own units, for any measure. Needs two real images."""
    owner = np.asarray(owner)
    first = _first_rows(owner)
    if first.size < 2:
        raise StageError(f"memorisation threshold: needs at least 2 real images, got {first.size}")
    dist, _ = nearest(np.asarray(reference_desc)[first], reference_desc, owner, exclude=owner[first])
    return float(np.percentile(dist, percentile))


# ------------------------------------------------------------------------------ the check
@dataclass(frozen=True)
class Measure:
    """One measure's inputs to :func:`copy_check`: the synthetic set's descriptors and the real
    train and test references (with flips and thresholds), which are reused across synthetic sets.
    ``threshold_train`` / ``threshold_test`` override the references' own thresholds; a common
    choice is the training set's threshold for both (the test set is usually smaller, so its own
    nearest neighbours are farther and its percentile larger)."""

    synthetic: np.ndarray             # (N, D), unflipped
    train: Reference
    test: Reference | None = None
    threshold_train: float | None = None
    threshold_test: float | None = None

    def thresholds(self) -> tuple[float, float]:
        """(train, test) thresholds in use; a missing one is a StageError."""
        tr = self.train.threshold if self.threshold_train is None else self.threshold_train
        te = (self.test.threshold if self.test is not None else np.nan) if self.threshold_test is None \
            else self.threshold_test
        if not np.isfinite(tr) or (self.test is not None and not np.isfinite(te)):
            raise StageError("memorisation check: a measure has no threshold (compute the references with "
                             "Reference.with_threshold / region_reference, or pass threshold_train/test)")
        return float(tr), float(te)


def copy_check(measures: Mapping[str, Measure | Mapping]) -> pd.DataFrame:
    """One row per synthetic pair: for each measure ``m`` the nearest real training image
    (``{m}_train_owner``, ``{m}_train_dist``) and test image (``{m}_test_owner``, ``{m}_test_dist``),
    the per-measure flags ``{m}_near_train`` / ``{m}_near_test`` (distance strictly below the
    threshold), and the overall flags ``near_train`` / ``near_test``: below the threshold under
    EVERY measure given. Works with any subset of measures (e.g. only ``region`` when Inception
    features are unavailable). A measure without a test reference gets no test columns and
    ``near_test`` is False. Thresholds in use are in ``table.attrs["thresholds"]``."""
    if not measures:
        raise StageError("memorisation check: no measures given")
    ms = {name: m if isinstance(m, Measure) else Measure(**m) for name, m in measures.items()}
    sizes = {name: m.synthetic.shape[0] for name, m in ms.items()}
    if len(set(sizes.values())) != 1:
        raise StageError(f"memorisation check: measures describe different numbers of synthetic pairs: {sizes}")
    n = next(iter(sizes.values()))
    cols: dict[str, np.ndarray] = {}
    near = {"train": np.ones(n, bool), "test": np.ones(n, bool) if all(m.test is not None for m in ms.values())
            else np.zeros(n, bool)}
    thresholds = {}
    for name, m in ms.items():
        t_train, t_test = m.thresholds()
        thresholds[name] = {"train": t_train, "test": t_test if m.test is not None else None}
        for split, ref, t in (("train", m.train, t_train), ("test", m.test, t_test)):
            if ref is None:
                continue
            dist, own = nearest(m.synthetic, ref.desc, ref.owner)
            cols[f"{name}_{split}_owner"] = own
            cols[f"{name}_{split}_dist"] = dist
            cols[f"{name}_near_{split}"] = flag = dist < t
            near[split] &= flag
    table = pd.DataFrame(cols, index=pd.RangeIndex(n, name="pair"))
    table["near_train"] = near["train"]
    table["near_test"] = near["test"]
    table.attrs["thresholds"] = thresholds
    return table


def summary(table: pd.DataFrame) -> dict:
    """Counts and shares of pairs flagged near a training / test image (all measures) and per
    measure, with the thresholds used: what a report states about a synthetic set. Shares are None
    for an empty set."""
    n = int(len(table))

    def counted(column: str) -> tuple[int, float | None]:
        c = int(table[column].sum()) if column in table else 0
        return c, (c / n if n else None)

    out: dict = {"n_pairs": n}
    for split in ("train", "test"):
        out[f"near_{split}_count"], out[f"near_{split}_share"] = counted(f"near_{split}")
    names = [c[: -len("_near_train")] for c in table.columns if c.endswith("_near_train")]
    out["measures"] = names
    out["by_measure"] = {}
    for name in names:
        entry = {}
        for split in ("train", "test"):
            entry[f"near_{split}_count"], entry[f"near_{split}_share"] = counted(f"{name}_near_{split}")
            dist = table.get(f"{name}_{split}_dist")
            entry[f"median_{split}_dist"] = float(np.median(dist)) if dist is not None and n else None
        entry["thresholds"] = table.attrs.get("thresholds", {}).get(name)
        out["by_measure"][name] = entry
    return out


#: the measures that must both find a held-out test image for a pair to count as a leaked test image
LEAK_MEASURES = ("region", "frame")


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """``memorised`` (the polyp region is a near-copy of a training image's) and ``leaked`` (region and
    frame are near-copies of one held-out test image) for each row of :func:`copy_check`'s table."""
    out = pd.DataFrame(index=table.index)
    out["memorised"] = table["region_near_train"].astype(bool)
    leaked = np.ones(len(table), bool)
    for m in LEAK_MEASURES:
        leaked &= table[f"{m}_near_test"].to_numpy(bool) if f"{m}_near_test" in table else False
    same = table[f"{LEAK_MEASURES[0]}_test_owner"].to_numpy() == table[f"{LEAK_MEASURES[1]}_test_owner"].to_numpy() \
        if all(f"{m}_test_owner" in table for m in LEAK_MEASURES) else np.zeros(len(table), bool)
    out["leaked"] = leaked & same
    return out


def leaked_pairs(images: Images, masks: Images, train: tuple[Images, Images],
                 test: tuple[Images, Images]) -> list[tuple[int, int]]:
    """[(pair index, test image index)] of the pairs that are a held-out test image (region and frame
    measures, thresholds from the training images): what stage 06 refuses to train on. Pixels only, so
    it needs no network."""
    train_region = region_reference(*train)
    train_frame = frame_reference(train[0])
    table = copy_check({
        "region": Measure(region_descriptors(images, masks), train_region, region_reference(*test, percentile=None),
                          threshold_test=train_region.threshold),
        "frame": Measure(frame_descriptors(images), train_frame, frame_reference(test[0], percentile=None),
                         threshold_test=train_frame.threshold)})
    flags = verdicts(table)["leaked"].to_numpy()
    return [(int(i), int(table["region_test_owner"].iat[i])) for i in np.flatnonzero(flags)]

