"""Stage 07: transfer tests. Do the segmentation models of stage 06 keep their ranking on another domain?

Every model stage 06 trained on the source data set (Kvasir-SEG / HyperKvasir in ``paper``, phantom
domain A offline) is tested, unchanged, on every other prepared data set (CVC-ClinicDB, CVC-ColonDB,
ETIS-LaribPolypDB, PolypGen; phantom domain B offline), with the protocol of stage 06: per-image
Dice and IoU, seeds averaged per image, bootstrap 95 % intervals, and the paired Wilcoxon test of
each regime against real-only training on the same target images. Exact-duplicate frames inside a
target set (CVC-ColonDB has 17 groups) are counted once: the first id of each group is kept.

Per-image scores are cached per model and target (``segmentation/<config>/transfer/<target>.csv``),
keyed by the model's result key and the target's manifest, so a rerun only tests what changed.
"""
from __future__ import annotations

import hashlib
import json
import time

import pandas as pd

from ..errors import StageError
from ..runs import Run, atomic_write_text
from ..segmentation.study import (CONFIG_COLUMNS, GROUP_COLUMNS, Configuration, as_text, config_label, read_table,
                                  summary_with_tests)
from ..training import resolve_device, torch_threads

STAGE = "07"
IN_DOMAIN = "in-domain"
TABLES = ("07_targets", "07_per_image", "07_summary", "07_paired", "07_transfer")


# ----------------------------------------------------------------------------- targets
def unique_ids(ids: list[str], duplicate_groups: list[list[str]]) -> list[str]:
    """``ids`` with every duplicate group reduced to its first member (order kept)."""
    dropped = {i for group in duplicate_groups for i in sorted(group)[1:]}
    return [i for i in ids if i not in dropped]


def target_sets(run: Run) -> pd.DataFrame:
    """The prepared data sets other than the training set: one row each (pairs, duplicates, images)."""
    from ..data.prepared import load_dataset, load_report

    report = load_report(run)
    rows = []
    for name, info in report["datasets"].items():
        if name == report["train"]:
            continue
        ids = load_dataset(run, name).ids()
        kept = unique_ids(ids, info.get("duplicate_groups", []))
        rows.append({"target": name, "layout": info.get("layout"), "pairs": len(ids),
                     "duplicates_dropped": len(ids) - len(kept), "test_images": len(kept)})
    return pd.DataFrame(rows, columns=["target", "layout", "pairs", "duplicates_dropped", "test_images"])


def _manifest_digest(run: Run, target: str) -> str:
    return hashlib.sha256(run.path("data", target, "manifest.csv").read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- scores
def score_on_targets(run: Run, force: bool = False) -> pd.DataFrame:
    """Per-image Dice/IoU of every stage-06 model on every target set (cached per model and target),
    plus the in-domain test scores of stage 06; columns: configuration, target, image_id, dice, iou."""
    from ..data.prepared import load_dataset, load_report
    from ..segmentation.data import load_pool
    from ..segmentation.evaluate import evaluate_model
    from ..segmentation.models import input_normalization, load_model

    cfg, s = run.cfg, run.cfg.segmentation
    results = read_table(run, "06_segmentation")
    in_domain = read_table(run, "06_per_image").assign(target=IN_DOMAIN)
    targets = target_sets(run)
    if targets.empty:
        raise StageError(f"{run.path('data')}: no data set besides the training set was prepared, so there is "
                         "nothing to transfer to. Offline, set data.phantom.n_target > 0 (phantom domain B); "
                         "with real data, add CVC-ClinicDB / CVC-ColonDB / ETIS-LaribPolypDB / PolypGen folders "
                         "(data.datasets)")
    report = load_report(run)
    mean, std = input_normalization(s.encoder, s.encoder_weights)
    device = str(resolve_device(cfg.run.device))
    pools = {}
    for t in targets["target"]:
        ds = load_dataset(run, t)
        pools[t] = load_pool(ds, unique_ids(ds.ids(), report["datasets"][t].get("duplicate_groups", [])),
                             cfg.data.resolution)
    frames = [in_domain]
    with torch_threads(cfg.run.torch_threads, device):
        for i, (_, row) in enumerate(results.iterrows(), 1):
            c = Configuration.from_row(row)
            folder = run.path("segmentation", c.name)
            result = json.loads((folder / "result.json").read_text())
            model = None
            t0 = time.time()
            for t, pool in pools.items():
                key = hashlib.sha256(json.dumps([result["key"], _manifest_digest(run, t), pool.ids]).encode()
                                     ).hexdigest()[:16]
                cache = folder / "transfer" / f"{t}.csv"
                meta = folder / "transfer" / f"{t}.key"
                if not force and cache.exists() and meta.exists() and meta.read_text() == key:
                    scores = pd.read_csv(cache, dtype={"image_id": str})
                else:
                    model = model if model is not None else load_model(folder / "train" / "model")
                    scores = evaluate_model(model, pool, mean, std, device, s.batch_size)
                    atomic_write_text(cache, scores.to_csv(index=False))
                    atomic_write_text(meta, key)
                frames.append(scores.assign(**c.row(), target=t))
            if model is not None:
                print(f"[{i}/{len(results)}] {c.name}: tested on {', '.join(pools)} ({time.time() - t0:.1f} s)")
    per_image = pd.concat(frames, ignore_index=True)
    return as_text(per_image)[["target", *CONFIG_COLUMNS, "image_id", "dice", "iou"]]


# ----------------------------------------------------------------------------- tables
def transfer_tables(per_image: pd.DataFrame, cfg) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, paired, wide): the stage-06 summary and paired tests per target, and one wide table
    with a row per configuration group and, per domain, IoU [95 % CI] and the gain over real-only."""
    summaries, tests = [], []
    for target, group in per_image.groupby("target", sort=False):
        summary, paired = summary_with_tests(group.drop(columns="target"), cfg)
        summaries.append(summary.assign(target=target))
        tests.append(paired.assign(target=target))
    summary = pd.concat(summaries, ignore_index=True)
    paired = pd.concat(tests, ignore_index=True)
    order = [IN_DOMAIN] + [t for t in summary["target"].unique() if t != IN_DOMAIN]
    rows = {}
    for _, r in summary.iterrows():
        key = tuple(r[k] for k in GROUP_COLUMNS)
        row = rows.setdefault(key, {"configuration": config_label(r)})
        row[f"IoU {r['target']}"] = f"{r['iou']:.3f} [{r['iou_lo']:.3f}, {r['iou_hi']:.3f}]"
    for _, r in paired.iterrows():
        key = tuple(r[k] for k in GROUP_COLUMNS)
        if key in rows:
            rows[key][f"ΔIoU vs real {r['target']}"] = (f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, "
                                                       f"{r['diff_hi']:+.3f}], p={r['p']:.2g}")
    columns = ["configuration"] + [f"IoU {t}" for t in order] + [f"ΔIoU vs real {t}" for t in order]
    wide = pd.DataFrame(list(rows.values()))
    wide = wide.reindex(columns=[c for c in columns if c in wide.columns]).fillna("—")
    return summary[["target", *[c for c in summary.columns if c != "target"]]], \
        paired[["target", *[c for c in paired.columns if c != "target"]]], wide


def run_stage(run: Run, force: bool = False) -> dict[str, pd.DataFrame]:
    """Stage 07 entry point: tables ``07_targets``, ``07_per_image``, ``07_summary``, ``07_paired`` and
    ``07_transfer`` (the wide in-domain vs out-of-domain table)."""
    def compute() -> dict[str, pd.DataFrame]:
        targets = target_sets(run)
        per_image = score_on_targets(run, force)
        summary, paired, wide = transfer_tables(per_image, run.cfg)
        tables = dict(zip(TABLES, (targets, per_image, summary, paired, wide)))
        run.save_tables(tables, stage=STAGE)
        return tables

    return run.cached(STAGE, compute, lambda: run.load_tables(TABLES), force)
