"""Stage 01: turn the configured data (phantom or real) into prepared pairs, splits and a report.

Output, built in a temporary folder and swapped in whole (``runs.atomic_dir``)::

    data/<dataset>/images/<file>.png, masks/<file>.png, manifest.csv   (at data.resolution)
    data/splits/<train dataset>.csv                                    (id, split, group, ...)
    data/dataset_report.json

Every later stage reads these through :mod:`polyplib.data.prepared`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ..progress import tqdm

from ..config import StudyConfig, data_root
from ..errors import DataError
from ..runs import Run, atomic_dir, atomic_write_json, provenance
from . import splits as splitting
from .imageio import MASK_THRESHOLD, write_png
from .loaders import Pair, detect_layout, find_pairs, load_pair
from .preprocess import fit, pair_stats

MANIFEST_COLUMNS = ["id", "file", "subset", "source_image", "source_mask", "height", "width", "coverage",
                    "components", "empty", "dup_group", "content_hash",
                    "polyp_r", "polyp_g", "polyp_b", "bg_r", "bg_g", "bg_b", "dark_fraction"]


# PraNet's test sub-sets that come from its training domains: with the PraNet split they are the
# test side of the training data set; the other sub-sets are transfer targets.
PRANET_SEEN = ("Kvasir", "CVC-ClinicDB")
PRANET_UNSEEN = ("CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300")


@dataclass(frozen=True)
class Source:
    """One data set to prepare: its name, folder, role (train, or transfer target) and layout(s)."""

    name: str
    folder: Path
    role: str                              # "train" | "transfer"
    layouts: tuple[str, ...] = ("auto",)   # read and concatenated in order
    subsets: tuple[str, ...] | None = None  # keep only these sub-sets (and pairs without one)


def phantom_sources(run: Run) -> list[Source]:
    """Generate (or reuse) the phantom domains under raw/, keyed by everything that shapes them."""
    from dataclasses import replace

    from .phantom import DOMAINS, PHANTOM_LAYOUTS, write_phantom

    p = run.cfg.data.phantom
    out = []
    for domain, n, role in (("A", p.n_source, "train"), ("B", p.n_target, "transfer")):
        if n == 0:
            continue
        jitter = "" if p.colour_jitter is None else f"-jitter{p.colour_jitter:g}"
        folder = run.path("raw", f"phantom-{domain.lower()}-seed{p.seed}-scale{p.scale:g}-n{n}{jitter}")
        look = DOMAINS[domain] if p.colour_jitter is None else replace(DOMAINS[domain], mucosa_jitter=p.colour_jitter)
        write_phantom(folder, look, n, p.seed, scale=p.scale, workers=run.cfg.run.workers,
                      progress=run.cfg.run.progress)
        out.append(Source(f"phantom-{domain.lower()}", folder, role, (PHANTOM_LAYOUTS[domain],)))
    return out


def real_sources(cfg: StudyConfig) -> tuple[list[Source], list[str]]:
    """The configured real data sets that exist; the training set must, the others may be absent."""
    root = data_root(cfg)
    if cfg.data.train not in cfg.data.datasets:
        raise DataError(None, f"data.train='{cfg.data.train}' is not a key of data.datasets "
                              f"({', '.join(cfg.data.datasets)})")
    sources, notes = [], []
    for name, rel in cfg.data.datasets.items():
        folder = Path(rel) if Path(rel).is_absolute() else root / rel
        role = "train" if name == cfg.data.train else "transfer"
        if not folder.exists():
            if role == "train":
                raise DataError(folder, f"training data set '{name}' not found. Download it with "
                                        f"`python -m polyplib.data download {name} --dest {root}` or unpack it "
                                        f"there by hand, or set POLYP_DATA / data.root to the folder holding it")
            notes.append(f"{name}: {folder} not present, skipped")
            continue
        if role == "train" and cfg.data.split.kind == "pranet":
            sources += pranet_sources(name, folder)
        else:
            sources.append(Source(name, folder, role))
    return sources, notes


def pranet_sources(name: str, folder: Path) -> list[Source]:
    """PraNet's published split: TrainDataset trains; TestDataset/Kvasir and /CVC-ClinicDB test it;
    the unseen TestDataset sub-sets become transfer targets."""
    sources = [Source(name, folder, "train", ("pranet-train", "pranet-test"), PRANET_SEEN)]
    present = {p.subset for p in find_pairs(folder, "pranet-test")}
    for subset in (s for s in PRANET_UNSEEN if s in present):
        sources.append(Source(f"pranet-{subset.lower()}", folder, "transfer", ("pranet-test",), (subset,)))
    return sources


def _safe_file(pair_id: str) -> str:
    return pair_id.replace("/", "__")


def _prepare_one(pair: Pair, size: int, policy: str, images: Path, masks: Path) -> dict:
    image, mask = load_pair(pair)
    stats = pair_stats(image, mask)
    img, msk = fit(image, mask, size, policy)
    file = _safe_file(pair.id)
    write_png(images / f"{file}.png", img)
    write_png(masks / f"{file}.png", msk.astype(np.uint8) * 255)
    return {"id": pair.id, "file": file, "subset": pair.subset, "source_image": str(pair.image),
            "source_mask": str(pair.mask), "empty": not bool(mask.any()), **stats}


def source_pairs(source: Source) -> tuple[list[Pair], str]:
    """The image/mask pairs of one data set and the layout they were read with; DataError naming the
    folder when it is empty, of no known layout, or holds an image without its mask. Lists files only
    (no image is decoded), so run_all.py's preflight calls it before any kernel starts."""
    layouts = [detect_layout(source.folder) if lay == "auto" else lay for lay in source.layouts]
    pairs = [p for lay in layouts for p in find_pairs(source.folder, lay)
             if source.subsets is None or p.subset in source.subsets or (p.subset == "" and source.role == "train")]
    if not pairs:
        raise DataError(source.folder, f"no pairs of sub-sets {', '.join(source.subsets or ())} found")
    return pairs, "+".join(layouts)


def prepare_source(source: Source, dest: Path, cfg: StudyConfig) -> tuple[pd.DataFrame, dict]:
    """Read, check, measure and resize every pair of one data set into ``dest``."""
    pairs, layout = source_pairs(source)
    images, masks = dest / "images", dest / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    work = lambda p: _prepare_one(p, cfg.data.resolution, cfg.data.resize, images, masks)  # noqa: E731
    with ThreadPoolExecutor(cfg.run.workers) as pool:
        rows = list(tqdm(pool.map(work, pairs), total=len(pairs), desc=f"prepare {source.name}",
                         disable=not cfg.run.progress))
    df = pd.DataFrame(rows)
    # exact duplicate frames (same decoded pixels) share a group named after their first id
    first = df.groupby("content_hash")["id"].transform("min")
    df["dup_group"] = first
    dropped = []
    if cfg.data.empty_masks == "drop":
        dropped = sorted(df.loc[df["empty"], "id"])
        for f in df.loc[df["empty"], "file"]:
            (images / f"{f}.png").unlink()
            (masks / f"{f}.png").unlink()
        df = df[~df["empty"]]
    df = df[MANIFEST_COLUMNS].sort_values("id").reset_index(drop=True)
    df.to_csv(dest / "manifest.csv", index=False)
    return df, {"layout": layout, "folder": str(source.folder), "role": source.role, "dropped_empty": dropped}


def _percentiles(values: pd.Series, qs=(5, 25, 50, 75, 95)) -> dict:
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in qs} if len(values) else {}


def describe(df: pd.DataFrame, info: dict) -> dict:
    """The report of one prepared data set: counts, sizes, coverage, components, colours, problems."""
    dups = [sorted(g) for _, g in df.groupby("dup_group")["id"] if len(g) > 1]
    comps = df["components"].clip(upper=3).value_counts().sort_index()
    problems = []
    if df["empty"].any():
        problems.append(f"{int(df['empty'].sum())} empty masks (kept): {', '.join(df.loc[df['empty'], 'id'][:5])}")
    if info["dropped_empty"]:
        problems.append(f"{len(info['dropped_empty'])} empty masks dropped: {', '.join(info['dropped_empty'][:5])}")
    if dups:
        problems.append(f"{len(dups)} groups of exact-duplicate frames (kept on one side of every split)")
    return {
        **info,
        "pairs": int(len(df)),
        "height": {"min": int(df["height"].min()), "median": float(df["height"].median()), "max": int(df["height"].max())},
        "width": {"min": int(df["width"].min()), "median": float(df["width"].median()), "max": int(df["width"].max())},
        "coverage_percent": _percentiles(df["coverage"] * 100),
        "components": {("3+" if k == 3 else str(k)): int(v) for k, v in comps.items()},
        "mean_rgb_polyp": [round(float(df[c].mean()), 1) for c in ("polyp_r", "polyp_g", "polyp_b")],
        "mean_rgb_background": [round(float(df[c].mean()), 1) for c in ("bg_r", "bg_g", "bg_b")],
        "dark_border_median": round(float(df["dark_fraction"].median()), 4),
        "empty_masks": int(df["empty"].sum()),
        "duplicate_groups": dups,
        "problems": problems,
    }


def make_split(cfg: StudyConfig, df: pd.DataFrame) -> pd.DataFrame:
    s = cfg.data.split
    ids, groups = list(df["id"]), dict(zip(df["id"], df["dup_group"]))
    if s.kind == "random":
        return splitting.random_split(ids, s.n_train, s.n_test, s.seed, groups)
    if s.kind == "paper":
        return splitting.paper_split(ids, s.n_test, s.seed, groups)
    if s.kind == "kfold":
        return splitting.kfold_split(ids, s.n_folds, s.fold, s.seed, groups)
    train_ids = list(df.loc[df["subset"] == "", "id"])
    if not train_ids or len(train_ids) == len(df):
        raise DataError(None, "data.split.kind=pranet needs the PraNet layout: data.train must name a folder "
                              "holding TrainDataset/ and TestDataset/ (Kvasir, CVC-ClinicDB, ...)")
    return splitting.pranet_split(train_ids, list(df.loc[df["subset"] != "", "id"]))


def build(run: Run) -> dict:
    """Prepare every data set, split the training one, and write the report (all or nothing)."""
    cfg = run.cfg
    if cfg.data.source == "phantom":
        sources, notes = phantom_sources(run), []
    else:
        sources, notes = real_sources(cfg)
    report: dict = {"resolution": cfg.data.resolution, "resize": cfg.data.resize,
                    "train": next(s.name for s in sources if s.role == "train"),
                    "datasets": {}, "notes": notes}
    with atomic_dir(run.path("data")) as tmp:
        for source in sources:
            df, info = prepare_source(source, tmp / source.name, cfg)
            if source.role == "train" and len(df) and df["empty"].all():
                raise DataError(source.folder, f"every one of the {len(df)} masks is empty (no pixel above "
                                f"{MASK_THRESHOLD}): the wrong mask folder, or masks stored as 0/1 labels "
                                "instead of 0/255 (multiply them by 255)")
            if df.empty:
                raise DataError(source.folder, "no usable pairs left after dropping empty masks")
            report["datasets"][source.name] = describe(df, info)
            if source.role == "train":
                split = make_split(cfg, df)
                (tmp / "splits").mkdir()
                split.to_csv(tmp / "splits" / f"{source.name}.csv", index=False)
                report["split"] = {"kind": cfg.data.split.kind, "file": f"splits/{source.name}.csv",
                                   "counts": split["split"].value_counts().to_dict()}
        report["provenance"] = provenance(cfg, "01")
        atomic_write_json(tmp / "dataset_report.json", report)
    return report


def report_table(report: dict) -> pd.DataFrame:
    """One row per prepared data set: the numbers notebook 01 shows and saves."""
    rows = []
    for name, d in report["datasets"].items():
        cov = d["coverage_percent"]
        rows.append({
            "dataset": name, "role": d["role"], "layout": d["layout"], "pairs": d["pairs"],
            "size (median HxW)": f"{d['height']['median']:.0f}x{d['width']['median']:.0f}",
            "coverage % p5/p50/p95": f"{cov.get('p5', 0):.1f} / {cov.get('p50', 0):.1f} / {cov.get('p95', 0):.1f}",
            "1 / 2 / 3+ components": " / ".join(str(d["components"].get(k, 0)) for k in ("1", "2", "3+")),
            "mean RGB polyp": tuple(d["mean_rgb_polyp"]), "mean RGB background": tuple(d["mean_rgb_background"]),
            "dark border (median)": d["dark_border_median"], "empty masks": d["empty_masks"],
            "duplicate groups": len(d["duplicate_groups"]),
        })
    return pd.DataFrame(rows)
