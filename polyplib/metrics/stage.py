"""Stage 04: how faithful (FID, KID) and how diverse (MS-SSIM) are the synthetic sets, and do their
masks label their polyps (label fidelity, the seam check: :mod:`.fidelity`)?

The paper's protocol: the FID of each synthetic set against the real training images, over
``metrics.fid_sets`` independent sets (mean ± sd), beside the real-vs-real reference (two disjoint
halves of the real images); FID against sampler steps for the unconditional samplers; MS-SSIM
within each set (real set as reference); and a blinded expert-review kit. Sets absent on disk are
reported as absent, never faked. Without the real FID Inception weights the stage stops with a
StageError before anything is computed, so no number ever appears under the name FID.

Independent sets: a method whose manifest has a ``source_id`` and at least two ``sample_index``
values (the paper's 3 samples per real image) gives one set per sample index, i.e. one synthetic
pair per source frame, the first ``fid_sets`` of them. Any other method is one set (n = 1, no sd;
the table says so in ``protocol``): it is not split, because FID is biased upwards at small n and
a subset's FID would not be comparable with the full set's.

Too few images: a comparison in which a set, or the real images it is compared with, holds fewer than
``metrics.min_images`` images gets no FID and no KID (nor KID's sd): its row has status ``too few
images`` and ``refusal`` says which count was short (``too few images (n = 9 < 100)``). The real
references (real-halves, real-test) obey the same rule; nothing is extracted or computed for them.
A set below the same minimum has no MS-SSIM either: one set's value would move by more, by chance,
than the paper's methods differ (``benchmarks/results/min_images.json``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paper
from ..errors import StageError
from ..features.inception import RESIZE_POLICY, InceptionFeatures, cached_features
from ..features.inception_weights import resolve_fid_weights
from ..runs import Run, atomic_write_json
from ..sampling.stage import planned_methods, unconditional_methods
from ..synthetic.catalogue import (METHOD_LABELS, PAPER_SETS, UNCONDITIONAL as UNCOND, imported_label, label,
                                  paper_key, set_dir)
from ..synthetic.folder import absent_methods, accepted as _accepted, source_count
from ..training import resolve_device
from .budget import BOOTSTRAPS, budget_table
from .copies import memorisation_table
from .fid import TOO_FEW, fid_from_features, kid_from_features, real_halves, too_few
from .fidelity import label_fidelity
from .msssim import msssim_pairs
from .review import REVIEW_SOURCES, choose_items, write_kit

KID_SUBSETS = 100


@dataclass
class SetInfo:
    """The independent sets of one method on disk (or why there are none)."""

    method: str
    folder: Path
    status: str = "ok"                        # ok | absent | empty
    protocol: str = ""
    sets: list[list[str]] = field(default_factory=list)   # pair ids of each set
    note: str = ""
    sources: int | None = None            # distinct source images of its accepted pairs (None: not recorded)
    departures: tuple[str, ...] = ()      # the run's non-authors' diffusion settings (paper.method_departures)

    imported: str | None = None           # the label of a set imported from another generator
    features: list = field(default_factory=list, repr=False)   # Inception features of each set, once extracted

    @property
    def label(self) -> str:
        return label(self.method, self.sources, self.imported)

    @property
    def paper_key(self) -> str | None:
        """The paper set whose numbers may stand beside this one (None: none may; see paper.like_for_like)."""
        return paper_key(self.method, self.sources, self.departures, self.imported is not None)


def split_sets(manifest: pd.DataFrame, fid_sets: int) -> tuple[list[list[str]], str]:
    """Independent sets of accepted pair ids and the protocol used (see the module docstring)."""
    m = _accepted(manifest)
    has_source = "source_id" in m and (m["source_id"].astype(str).str.len() > 0).all()
    if has_source and "sample_index" in m and m["sample_index"].nunique() >= 2:
        groups = [list(g["id"].astype(str)) for _, g in sorted(m.groupby("sample_index"), key=lambda t: t[0])]
        sets = groups[:fid_sets]
        return sets, (f"one set per sample_index (one pair per source frame): {len(sets)} of "
                      f"{len(groups)} on disk, {fid_sets} requested")
    return [list(m["id"].astype(str))], "single set on disk (n=1, no sd)"


def discover_sets(run: Run, fid_sets: int, expected: list[str] | None = None) -> dict[str, SetInfo]:
    """Every method folder under synthetic/ (plus ``expected`` ones, reported absent if missing)."""
    from ..data.prepared import PreparedSet

    absent = absent_methods(run)   # reported absent by stage 03 (a stale folder from another run is not read)
    root = set_dir(run)
    found = sorted(p.name for p in root.iterdir() if (p / "manifest.csv").is_file()) if root.is_dir() else []
    names = list(dict.fromkeys([*(expected or []), *found]))
    out = {}
    for method in names:
        folder = root / method
        info = SetInfo(method, folder, departures=paper.method_departures(run.cfg))
        if method in absent:
            info.status, info.note = "absent", absent[method]
        elif method not in found:
            info.status, info.note = "absent", f"no {folder}/manifest.csv"
        else:
            manifest = PreparedSet(folder).manifest
            info.sets, info.protocol = split_sets(manifest, fid_sets)
            info.sources = source_count(manifest)
            info.imported = imported_label(folder)
            if not info.sets or not info.sets[0]:
                info.status, info.note, info.sets = "empty", "no accepted pairs", []
        out[method] = info
    return out


def _images(folder: Path, ids: list[str]) -> list[np.ndarray]:
    from ..data.prepared import PreparedSet
    from ..data.imageio import read_image

    ps = PreparedSet(folder)
    return [read_image(ps.paths(i)[0]) for i in ids]


def _size(images) -> str:
    shapes = sorted({f"{im.shape[0]}x{im.shape[1]}" for im in images})
    return shapes[0] if len(shapes) == 1 else "mixed: " + ", ".join(shapes[:3])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else float("nan"))


# ----------------------------------------------------------------------------- FID / KID
def _summary(method: str, label: str, protocol: str, n_images: str, pairs: list[tuple[np.ndarray, np.ndarray]],
             size: str, m, resize: str, note: str = "", paper_key: str | None = None) -> dict:
    """One table row: FID and KID of each (set, reference) feature pair, mean ± sd over the pairs;
    ``m`` is the metrics section, ``resize`` the name of the resize protocol that made the features.
    The callers refuse a comparison below ``m.min_images`` first (:func:`_refused_row`); the metric
    functions refuse it again."""
    fids = [fid_from_features(a, b, m.min_images) for a, b in pairs]
    kids = [kid_from_features(a, b, m.kid_subset_size, KID_SUBSETS, m.seed, m.min_images) for a, b in pairs]
    fid_mean, fid_sd = _mean_sd(fids)
    kid_mean, kid_sd = _mean_sd([k["kid_mean"] for k in kids])
    return {"method": method, "label": label, "status": "ok", "n_sets": len(fids), "protocol": protocol,
            "n_images": n_images, "fid_mean": fid_mean, "fid_sd": fid_sd,
            "fid_per_set": "; ".join(f"{v:.3f}" for v in fids), "kid_mean": kid_mean, "kid_sd": kid_sd,
            "kid_subset_size": min(k["kid_subset_size"] for k in kids), "n_real": len(pairs[0][1]),
            "image_size": size, "resize": resize, "paper_fid": paper.fid(paper_key),
            "paper_fid_per_set": paper.fid_per_set(paper_key), "min_images": m.min_images, "note": note}


def _refused_row(method: str, label: str, protocol: str, n_images: str, n_sets: int, n_real: int, size: str, m,
                 refusal: str, note: str = "", paper_key: str | None = None) -> dict:
    """A comparison below ``metrics.min_images``: the counts and why, no FID, no KID (the paper's value stays)."""
    print(f"{method}: {refusal}; no FID or KID computed")
    return {"method": method, "label": label, "status": TOO_FEW, "n_sets": n_sets, "protocol": protocol,
            "n_images": n_images, "n_real": n_real, "image_size": size, "paper_fid": paper.fid(paper_key),
            "paper_fid_per_set": paper.fid_per_set(paper_key), "min_images": m.min_images, "refusal": refusal,
            "note": note}


def _absent_row(info: SetInfo, kind: str) -> dict:
    return {"method": info.method, "label": info.label, "status": info.status, "n_sets": 0,
            "protocol": info.protocol, "note": info.note,
            **({"paper_fid": paper.fid(info.paper_key)} if kind == "fid"
               else {"paper_msssim": paper.msssim(info.paper_key)})}


def _versus_test(feats: list[np.ndarray], test: np.ndarray | None, m) -> dict:
    """FID and KID of a set's features against the held-out real test images (mean over the sets), or why not."""
    refusal = too_few({"n": min(len(f) for f in feats), "test n": 0 if test is None else len(test)}, m.min_images)
    if refusal:
        return {"test_refusal": refusal}
    fids = [fid_from_features(f, test, m.min_images) for f in feats]
    kids = [kid_from_features(f, test, m.kid_subset_size, KID_SUBSETS, m.seed, m.min_images)["kid_mean"] for f in feats]
    return {"fid_test_mean": float(np.mean(fids)), "kid_test_mean": float(np.mean(kids)), "test_refusal": ""}


def _method_row(info: SetInfo, extractor: InceptionFeatures, real: np.ndarray | None, n_real: int, m,
                test: np.ndarray | None = None) -> dict:
    """A synthetic method's row; ``real`` is None when the real reference itself is too small; ``test``: the
    held-out test images' features (None: too few), against which FID / KID are given too."""
    if info.status != "ok":
        return _absent_row(info, "fid")
    sizes = [len(ids) for ids in info.sets]
    refusal = too_few({"n": min(sizes), "real n": n_real}, m.min_images)
    if refusal or real is None:
        return _refused_row(info.method, info.label, info.protocol, "/".join(map(str, sizes)), len(sizes), n_real,
                            _size(_images(info.folder, info.sets[0][:1])) if min(sizes) else "", m,
                            refusal or too_few({"real n": n_real}, m.min_images), paper_key=info.paper_key)
    feats = []
    for k, ids in enumerate(info.sets):
        print(f"FID {info.method}: set {k + 1}/{len(info.sets)} ({len(ids)} images)")
        feats.append(extractor(_images(info.folder, ids)))
    info.features = feats
    return {**_summary(info.method, info.label, info.protocol, "/".join(str(len(f)) for f in feats),
                       [(f, real) for f in feats], _size(_images(info.folder, info.sets[0][:1])), m,
                       extractor.protocol, paper_key=info.paper_key), **_versus_test(feats, test, m)}


def fid_tables(run: Run, extractor: InceptionFeatures,
               sets: dict[str, SetInfo]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(FID table in the paper's format, FID against sampler steps, what was cached)."""
    from ..data.prepared import load_dataset

    m = run.cfg.metrics
    ds = load_dataset(run)
    train, test = ds.ids("train"), ds.ids("test")
    if len(train) < 4:
        raise StageError(f"FID needs at least 4 real training images (two halves of 2), found {len(train)}")
    short = too_few({"real n": len(train)}, m.min_images)    # the reference of every row: none is computed
    real = None if short else cached_features(f"{ds.name}-train", train, [ds.paths(i)[0] for i in train], extractor,
                                              m.cache_dir)
    print(f"real training images: {len(train)} " + (f"({'cached' if real.hit else 'extracted'}: {real.path.name})"
                                                      if real else f"({short}: not extracted)"))
    size = _size(_images(ds.folder, train[:1]))
    halves = real_halves(len(train), m.fid_sets, m.seed)
    half = (f"{len(halves)} seeded random splits of the training images", f"{len(halves[0][0])} vs {len(halves[0][1])}")
    refusal = too_few({"n": len(halves[0][0])}, m.min_images)
    note = "reference: FID of real against real at this n"
    rows = [_refused_row("real-halves", "Real vs real (disjoint halves)", *half, len(halves), len(halves[0][1]), size,
                         m, refusal or short, note) if refusal or real is None else
            _summary("real-halves", "Real vs real (disjoint halves)", *half,
                     [(real.features[a], real.features[b]) for a, b in halves], size, m, extractor.protocol, note=note)]
    held_out = None
    if len(test) >= 2:
        label, protocol, note = ("Real held-out test vs train", "the held-out real test images, one set",
                                 "reference: unseen real images; FID vs test: the training images' own")
        refusal = too_few({"n": len(test), "real n": len(train)}, m.min_images)
        if refusal or real is None:
            rows.append(_refused_row("real-test", label, protocol, str(len(test)), 1, len(train), size, m,
                                     refusal, note))
        else:
            held_out = cached_features(f"{ds.name}-test", test, [ds.paths(i)[0] for i in test], extractor,
                                       m.cache_dir)
            row = _summary("real-test", label, protocol, str(len(test)), [(held_out.features, real.features)],
                           size, m, extractor.protocol, note=note)
            rows.append({**row, "fid_test_mean": row["fid_mean"], "kid_test_mean": row["kid_mean"], "test_refusal": ""})
    steps_rows = []
    for method, info in sets.items():
        row = _method_row(info, extractor, real.features if real else None, len(train), m,
                          held_out.features if held_out is not None else None)
        uncond = UNCOND.match(method)
        if uncond:
            steps_rows.append({"sampler": uncond["sampler"], "steps": int(uncond["steps"]), **row})
        else:
            rows.append(row)
    steps = _with_value_columns(pd.DataFrame(steps_rows))
    if len(steps):
        steps = steps.sort_values(["sampler", "steps"]).reset_index(drop=True)
    cache = {"real_train": {"path": str(real.path), "key": real.key, "hit": real.hit, "n": len(train)} if real
             else {"n": len(train), "extracted": False, "why": short}}
    return _with_value_columns(pd.DataFrame(rows)), steps, cache


#: the measured columns, present (empty) even when no row has a value, e.g. when every set is too small
VALUE_COLUMNS = ("fid_mean", "fid_sd", "fid_per_set", "kid_mean", "kid_sd", "kid_subset_size", "resize",
                 "fid_test_mean", "kid_test_mean")
MSSSIM_VALUE_COLUMNS = ("n_pairs", "msssim_mean", "msssim_sd", "pair_sd", "win_size", "win_sigma", "scales",
                        "image_size")


def _with_value_columns(table: pd.DataFrame, columns: tuple[str, ...] = VALUE_COLUMNS) -> pd.DataFrame:
    if len(table):
        for column in columns:
            if column not in table:
                table[column] = np.nan
    return table


# ----------------------------------------------------------------------------- MS-SSIM
def msssim_table(run: Run, sets: dict[str, SetInfo]) -> tuple[pd.DataFrame, dict]:
    """MS-SSIM within each set (same number of seeded pairs everywhere), real training set first."""
    from ..data.prepared import load_dataset

    m = run.cfg.metrics
    device = str(resolve_device(run.cfg.run.device))
    ds = load_dataset(run)
    real = SetInfo("real", ds.folder, protocol="the real training images, one set", sets=[ds.ids("train")])
    rows, window = [], {}
    for method, info in {"real": real, **sets}.items():
        if info.status != "ok":
            rows.append(_absent_row(info, "msssim"))
            continue
        counts = "/".join(str(len(ids)) for ids in info.sets)
        label = "Real (training images)" if method == "real" else info.label
        refusal = too_few(min(len(ids) for ids in info.sets), m.min_images)
        if refusal:      # a few images give a value that moves more by chance than the methods differ
            rows.append({**_absent_row(info, "msssim"), "label": label, "status": TOO_FEW, "refusal": refusal,
                         "n_sets": len(info.sets), "n_images": counts})
            continue
        means, sds = [], []
        for ids in info.sets:
            images = _images(info.folder, ids)
            if len({im.shape for im in images}) != 1:
                raise StageError(f"{info.folder}: MS-SSIM needs images of one size, found {_size(images)}")
            values, window = msssim_pairs(np.stack(images), m.msssim_pairs, m.seed, device=device)
            means.append(float(values.mean()))
            sds.append(float(values.std(ddof=1)))
        mean, sd = _mean_sd(means)
        rows.append({"method": method, "label": label, "status": "ok", "n_sets": len(means), "protocol": info.protocol,
                     "n_images": counts, "n_pairs": m.msssim_pairs,
                     "msssim_mean": mean, "msssim_sd": sd, "pair_sd": float(np.mean(sds)),
                     "win_size": window["win_size"], "win_sigma": window["win_sigma"], "scales": window["scales"],
                     "image_size": _size(images[:1]), "paper_msssim": paper.msssim(info.paper_key), "note": ""})
    return _with_value_columns(pd.DataFrame(rows), MSSSIM_VALUE_COLUMNS), window


# ----------------------------------------------------------------------------- review kit
def review_kit(run: Run, sets: dict[str, SetInfo]) -> pd.DataFrame:
    """Write metrics/review/kit/ (blinded) and metrics/review/key.csv; a summary without the key."""
    from ..data.prepared import PreparedSet, load_dataset

    m = run.cfg.metrics
    ds = load_dataset(run)
    synthetic, notes = {}, []
    for source, method in REVIEW_SOURCES.items():
        if method is None:
            continue
        info = sets.get(method)
        if info is None or info.status != "ok":
            notes.append(f"{source}: method folder '{method}' {'absent' if info is None else info.status}; left out")
            continue
        synthetic[source] = _accepted(PreparedSet(info.folder).manifest).reset_index(drop=True)
    items, more = choose_items(ds.ids("train"), synthetic, m.review_per_source, m.seed)
    notes += more
    pairs = [ds.load(r.pair_id) if r.source == "real" else PreparedSet(sets[r.method].folder).load(r.pair_id)
             for r in items.itertuples()]
    paths = write_kit(run.path("metrics", "review"), items, pairs)
    counts = items.groupby("source").size().reindex(list(REVIEW_SOURCES)).fillna(0).astype(int)
    return pd.DataFrame({"source": counts.index, "items": counts.values,
                         "kit": str(paths["html"].parent), "key": str(paths["key"]),
                         "note": "; ".join(notes) or "every source present"})


# ----------------------------------------------------------------------------- the stage
TABLES = ("04_fid", "04_fid_steps", "04_msssim", "04_review_kit", "04_label_fidelity", "04_budget", "04_memorisation")
MIN_IMAGES_RULE = ("a comparison whose set or real reference holds fewer than {m} images (metrics.min_images) has "
                   "status 'too few images' and no FID, KID or KID sd")
MSSSIM_MIN_IMAGES_RULE = ("a set of fewer than {m} images (metrics.min_images) has status 'too few images' and no "
                          "MS-SSIM")


def json_records(table: pd.DataFrame) -> list[dict]:
    """A table's rows for a JSON record; a row without a measurement (absent, too few images) holds no
    empty value fields at all, so that nothing stands where a number would."""
    out = []
    for row in table.to_dict("records"):
        if row.get("status") != "ok":
            row = {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}
        out.append(row)
    return out


def _expected(run: Run) -> list[str]:
    """The paper's sets (absent ones are listed as absent), this run's other sets (colour match only, the
    variance ablation), its unconditional sets."""
    planned = planned_methods(run.cfg)
    return [m for m in METHOD_LABELS if m in PAPER_SETS or m in planned] + unconditional_methods(run.cfg)


def _compute(run: Run) -> dict[str, pd.DataFrame]:
    m = run.cfg.metrics
    weights = resolve_fid_weights(m.fid_weights, m.cache_dir)   # first: no weights, no FID, nothing written
    print(f"FID Inception weights: {weights.path} ({weights.origin}, sha256 {weights.sha256[:12]}…)")
    extractor = InceptionFeatures(weights, device=run.cfg.run.device, resize=m.fid_resize)
    sets = discover_sets(run, m.fid_sets, _expected(run))
    fid, steps, cache = fid_tables(run, extractor, sets)
    msssim, window = msssim_table(run, sets)
    kit = review_kit(run, sets)
    # the labelled sets the segmentation study can train on (the unconditional step study is a picture)
    fidelity = label_fidelity(run, {k: info.label for k, info in sets.items()
                                    if info.status == "ok" and not UNCOND.match(k)})
    budget = budget_table(run, extractor)   # the samplers' quality-vs-cost study (empty when it is off)
    copies = memorisation_table(run, extractor, {k: info for k, info in sets.items()
                                                 if info.status == "ok" and not UNCOND.match(k)})
    settings = {"weights": weights.record(), "features": extractor.settings(), "fid_resize": extractor.resize,
                "resize": extractor.protocol, "resize_policy": RESIZE_POLICY[extractor.resize],
                "fid_sets": m.fid_sets, "kid_subset_size": m.kid_subset_size, "kid_subsets": KID_SUBSETS,
                "seed": m.seed, "real_features_cache": cache, "min_images": m.min_images,
                "min_images_rule": MIN_IMAGES_RULE.format(m=m.min_images),
                "note": "FID is biased upwards at small n; compare numbers only at equal n and image size"}
    atomic_write_json(run.path("metrics", "fid.json"), {
        "settings": settings, "fid": json_records(fid), "fid_steps": json_records(steps)})
    atomic_write_json(run.path("metrics", "msssim.json"), {
        "settings": {"pairs_per_set": m.msssim_pairs, "seed": m.seed, "window": window,
                     "rule": "largest odd win_size <= 11 with (win-1)*16 < min side and win <= min side/16",
                     "min_images": m.min_images, "min_images_rule": MSSSIM_MIN_IMAGES_RULE.format(m=m.min_images)},
        "msssim": json_records(msssim)})
    if len(budget):
        atomic_write_json(run.path("metrics", "budget.json"), {
            "settings": {"protocol": "region crops vs the same crops of the real sources; KID on all pairs, 95 % "
                         f"bootstrap intervals over sources ({BOOTSTRAPS} draws, paired across points)",
                         "seed": m.seed, "min_images": m.min_images, "points": run.cfg.sampling.budget_study.model_dump()},
            "budget": json_records(budget)})
    atomic_write_json(run.path("metrics", "memorisation.json"), {
        "settings": {"measures": {"region": "polyp region (mask box + 10 %) at 24x24 px, RMS grey levels",
                                  "frame": "whole frame at 24x24 px, RMS grey levels",
                                  "inception": "FID Inception pool3 features, L2"},
                     "threshold": "1st percentile of the training images' nearest-neighbour distances to each "
                                  "other (pixel measures: flips of the training images included)",
                     "memorised": "polyp region below the threshold to a training image",
                     "leaked": "region and frame both below the threshold to the same held-out test image",
                     "min_images": m.min_images},
        "memorisation": json_records(copies)})
    tables = dict(zip(TABLES, (fid, steps, msssim, kit, fidelity, budget, copies)))
    run.save_tables(tables, stage="04")
    return tables



def run_stage(run: Run, force: bool = False) -> dict[str, pd.DataFrame]:
    """Stage 04 entry point: tables ``04_fid``, ``04_fid_steps``, ``04_msssim``, ``04_review_kit``."""
    return run.cached("04", lambda: _compute(run), lambda: run.load_tables(TABLES), force)
