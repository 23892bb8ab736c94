"""Stage 06: which training data make a better polyp segmenter — real, synthetic, or both?

The plan is not the full cross product of the configuration lists; it holds what the paper's tables
need (see :func:`plan`). Each trained configuration is its own resumable unit under
``runs/<profile>/segmentation/<name>/``, keyed by everything that decides its result, so a rerun
skips finished ones and a killed stage resumes inside the configuration it was training.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from ..config import StudyConfig
from ..errors import StageError
from ..runs import Run, atomic_write_json, atomic_write_text
from .data import (EpochPlan, PairPool, first_per_source, load_pool, load_synthetic_pool,
                   is_unconditional, read_synthetic_manifest, small_subset, split_train_val)
from .evaluate import evaluate_model, paired_test, summarise
from .models import build_model, input_normalization, load_model
from .train import TrainSettings, train_model
from ..training import resolve_device, torch_threads

STAGE = "06"
CONFIG_COLUMNS = ["regime", "source", "n_real", "per_real", "augmentation", "model", "seed"]
GROUP_COLUMNS = CONFIG_COLUMNS[:-1]
#: Synthetic-only runs: the test scores of the best model by the validation pool not chosen.
OTHER_VALIDATION_COLUMNS = ["other_validation", "dice_other_validation", "iou_other_validation",
                            "best_epoch_other_validation", "best_val_iou_other_validation"]
#: Marks a number from a run whose best epoch was its last (still improving when training stopped).
STILL_IMPROVING = "†"
STILL_IMPROVING_NOTE = (f"{STILL_IMPROVING}: best epoch was the last; still improving when training stopped "
                        "(more epochs might have helped)")
_KEY_VERSION = 2       # 2: patience, validation on both pools of synthetic-only runs



@dataclass(frozen=True)
class Configuration:
    """One trained model: what it trains on, how, and with which seed."""

    regime: str                 # real | synthetic | mixed
    source: str | None          # synthetic set (folder under synthetic/); None for real
    n_real: int | None          # None: all training images; else the small-data subset size
    per_real: int               # synthetic: N pairs per real image; mixed: r; real: 0
    augmentation: str           # none | control
    model: str
    seed: int

    @property
    def name(self) -> str:
        return (f"{self.regime}-{self.source or 'none'}-n{self.n_real or 'all'}-k{self.per_real}-"
                f"{self.augmentation}-{self.model}-s{self.seed}")

    def row(self) -> dict:
        """Table form: text ``source`` ("none" for real) and ``n_real`` ("all" or the subset size)."""
        return {**asdict(self), "source": self.source or "none",
                "n_real": "all" if self.n_real is None else str(self.n_real)}

    @classmethod
    def from_row(cls, row) -> "Configuration":
        src, n = str(row["source"]), str(row["n_real"])
        return cls(str(row["regime"]), None if src == "none" else src, None if n == "all" else int(n),
                   int(row["per_real"]), str(row["augmentation"]), str(row["model"]), int(row.get("seed", 0)))

    def baseline(self) -> "Configuration":
        """The real-only configuration this one is compared with (same N, augmentation, model)."""
        return Configuration("real", None, self.n_real, 0, self.augmentation, self.model, self.seed)


def primary_augmentation(cfg: StudyConfig) -> str:
    """The augmentation of the tables that do not vary it: Control when listed (the paper's)."""
    augs = cfg.segmentation.augmentation
    return "control" if "control" in augs else augs[0]


def plan(cfg: StudyConfig, available_sources: list[str]) -> list[Configuration]:
    """The configurations the paper's tables need, each for every seed; no duplicates.

    - real-only baseline on all training images, for every augmentation (compared with everything);
    - Table 3: synthetic only, per available source x N synthetic pairs per real image;
    - Table 4: real + synthetic (mixing rule, r = mix_r_full) per source, with and without Control;
    - Tables 5/6: small real sets (small_n) alone and + the small_source set for every r in mix_r;
    - every further model in ``models``: real vs real + synthetic (the preferred source).
    Tables 3-6 use the first model; Tables 3, 5, 6 the primary augmentation (Control when listed).
    """
    s = cfg.segmentation
    aug0, model0 = primary_augmentation(cfg), s.models[0]
    preferred = s.small_source if s.small_source in available_sources else (
        available_sources[0] if available_sources else None)
    groups: list[tuple] = []
    groups += [("real", None, None, 0, aug, model0) for aug in s.augmentation]
    if "synthetic" in s.regimes:
        groups += [("synthetic", src, None, n, aug0, model0) for src in available_sources
                   for n in s.synthetic_per_real]
    if "mixed" in s.regimes:
        groups += [("mixed", src, None, s.mix_r_full, aug, model0) for src in available_sources
                   for aug in s.augmentation]
    for n in s.small_n:
        groups.append(("real", None, n, 0, aug0, model0))
        if "mixed" in s.regimes and preferred:
            groups += [("mixed", preferred, n, r, aug0, model0) for r in s.mix_r]
    for model in s.models[1:]:
        groups.append(("real", None, None, 0, aug0, model))
        if "mixed" in s.regimes and preferred:
            groups.append(("mixed", preferred, None, s.mix_r_full, aug0, model))
    out, seen = [], set()
    for g in groups:
        for seed in s.seeds:
            c = Configuration(*g, seed=seed)
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def estimated_images(configs: list[Configuration], cfg: StudyConfig, n_train: int) -> int:
    """Training images the plan processes (epochs x images per epoch): what its run time scales with.
    With ``segmentation.patience`` set, ``epochs`` is a maximum and this an upper bound."""
    s = cfg.segmentation
    n_fit = n_train - max(1, int(round(n_train * s.val_fraction)))
    total = 0.0
    for c in configs:
        n = min(c.n_real or n_fit, n_fit)
        per_epoch = {"real": n, "synthetic": n * c.per_real, "mixed": n * (1 + s.mix_alpha * c.per_real)}
        total += s.epochs * per_epoch[c.regime]
    return int(total)


def plan_table(run: Run) -> pd.DataFrame:
    """The plan of this run as a table (one row per configuration) with the training images each
    will process (epochs x images per epoch; at most, with patience), for the notebook to show before
    training."""
    from ..data.prepared import load_dataset

    sources = synthetic_sources(run)
    configs = plan(run.cfg, sources.loc[sources["available"], "source"].tolist())
    n_train = len(load_dataset(run).ids("train"))
    return pd.DataFrame([{**c.row(), "name": c.name,
                          "training_images": estimated_images([c], run.cfg, n_train)} for c in configs])


# ------------------------------------------------------------------------------------ sources
def synthetic_sources(run: Run) -> pd.DataFrame:
    """One row per configured synthetic source: available or absent (and why), pairs, images."""
    from ..sampling import absent_methods

    rows, absent = [], absent_methods(run)
    for src in run.cfg.segmentation.sources:
        folder = run.path("synthetic", src)
        row = {"source": src, "folder": str(folder), "available": False, "pairs": 0,
               "source_images": 0, "note": ""}
        if src in absent:
            row["note"] = f"absent: {absent[src]}"
        elif not (folder / "manifest.csv").exists():
            row["note"] = "absent: no synthetic/<source>/manifest.csv (its stage has not produced it)"
        else:
            try:
                m = read_synthetic_manifest(folder)
            except StageError as exc:
                row["note"] = f"unusable: {exc}"
            else:
                unconditional = is_unconditional(m)
                row.update(available=len(m) > 0, pairs=len(m),
                           source_images=0 if unconditional else int(m["source_id"].nunique()),
                           note="no accepted pairs" if not len(m) else
                           "drawn without source images: dealt out to the real training images in turn"
                           if unconditional else "")
        rows.append(row)
    return pd.DataFrame(rows, columns=["source", "available", "pairs", "source_images", "note", "folder"])


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "-"


def configuration_key(run: Run, c: Configuration) -> str:
    """Hash of everything that decides this configuration's result (not the seeds list, not the
    bootstrap): the configuration, training settings, the prepared data and the synthetic set."""
    s = run.cfg.segmentation
    payload = {
        "v": _KEY_VERSION, "configuration": asdict(c), "data": run.keys.get("01"),
        "resolution": run.cfg.data.resolution,
        "training": {k: getattr(s, k) for k in ("encoder", "encoder_weights", "epochs", "patience", "lr",
                                                 "lr_drop_epoch", "lr_after_drop", "batch_size", "val_fraction")},
        "synthetic_validation": s.synthetic_validation if c.regime == "synthetic" else None,
        "mix_alpha": s.mix_alpha if c.regime == "mixed" else None,
        "synthetic": _file_digest(run.path("synthetic", c.source, "manifest.csv")) if c.source else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ one configuration
class _Data:
    """Pools shared by every configuration of a run (read from disk once)."""

    def __init__(self, run: Run):
        from ..data.prepared import load_dataset

        self.run, self.size = run, run.cfg.data.resolution
        ds = load_dataset(run)
        self.train_ids, self.test_ids = ds.ids("train"), ds.ids("test")
        if not self.test_ids:
            raise StageError(f"{run.path('data')}: the split has no test images")
        self.train = load_pool(ds, self.train_ids, self.size)
        self.test = load_pool(ds, self.test_ids, self.size)
        self._synthetic: dict[str, PairPool] = {}

    def real(self, ids) -> PairPool:
        index = self.train.index()
        return self.train.subset([index[i] for i in ids])

    def synthetic(self, source: str, ids) -> PairPool:
        if source not in self._synthetic:
            self._synthetic[source] = load_synthetic_pool(self.run.path("synthetic", source),
                                                          self.train_ids, self.size)
        pool, wanted = self._synthetic[source], set(ids)
        return pool.subset([i for i, s in enumerate(pool.source_ids) if s in wanted])


def _datasets(data: _Data, c: Configuration, cfg: StudyConfig) -> tuple[EpochPlan, dict[str, PairPool], str]:
    """(epoch plan, validation pools by name, the name of the one that selects the checkpoint).

    Real and mixed runs validate on real images ({"real": ...}). Synthetic-only runs validate on both
    the synthetic pairs made from the validation images and the real validation images, every epoch;
    ``segmentation.synthetic_validation`` says which picks the checkpoint (the paper: synthetic), the
    other's best model is tested too. Without synthetic validation pairs, real validation is used."""
    fit_ids, val_ids = split_train_val(data.train_ids, cfg.segmentation.val_fraction, c.seed)
    if c.n_real is not None:
        fit_ids = small_subset(fit_ids, c.n_real, c.seed)
    real_val = data.real(val_ids)
    if c.regime == "real":
        real = data.real(fit_ids)
        return EpochPlan(real, None, [(0, i) for i in range(len(real))], c.seed), {"real": real_val}, "real"
    syn = data.synthetic(c.source, fit_ids)
    if len(syn) == 0:
        raise StageError(f"synthetic set '{c.source}' has no accepted pairs made from the training images")
    if c.regime == "synthetic":
        chosen = first_per_source(syn, c.per_real)
        val = data.synthetic(c.source, val_ids)
        if not len(val):
            return EpochPlan(None, syn, [(1, i) for i in chosen], c.seed), {"real": real_val}, "real"
        pools = {"synthetic": val.subset(first_per_source(val, c.per_real)), "real": real_val}
        select = cfg.segmentation.synthetic_validation
        pools = {select: pools[select], **pools}           # the selecting pool first
        return EpochPlan(None, syn, [(1, i) for i in chosen], c.seed), pools, select
    real = data.real(fit_ids)
    return (EpochPlan(real, syn, [], c.seed, mix_alpha=cfg.segmentation.mix_alpha, mix_r=c.per_real),
            {"real": real_val}, "real")


def run_configuration(run: Run, c: Configuration, data: _Data, on_epoch_end=None) -> pd.DataFrame:
    """Train and test one configuration (or read its finished result); per-image test scores."""
    cfg, s = run.cfg, run.cfg.segmentation
    folder = run.path("segmentation", c.name)
    key = configuration_key(run, c)
    done = folder / "result.json"
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        return pd.read_csv(folder / "per_image.csv", dtype={"image_id": str})
    info = folder / "configuration.json"
    if folder.exists() and (not info.exists() or json.loads(info.read_text()).get("key") != key):
        shutil.rmtree(folder)          # made for other settings or data: start afresh
    atomic_write_json(info, {"key": key, "configuration": asdict(c)})
    plan_, pools, val_kind = _datasets(data, c, cfg)
    torch.manual_seed(c.seed)
    model = build_model(c.model, s.encoder, s.encoder_weights)
    mean, std = input_normalization(s.encoder, s.encoder_weights)
    settings = TrainSettings.of(cfg, c.augmentation, c.seed)
    summary = train_model(model, plan_, pools, folder / "train", settings, mean, std, name=c.name,
                          select=val_kind, on_epoch_end=on_epoch_end)
    best = load_model(folder / "train" / "model")
    scores = evaluate_model(best, data.test, mean, std, summary["device"], s.batch_size)
    atomic_write_text(folder / "per_image.csv", scores.to_csv(index=False))
    other = {"other_validation": None, "dice_other_validation": None, "iou_other_validation": None,
             "best_epoch_other_validation": None, "best_val_iou_other_validation": None}
    for name, b in summary["best_by"].items():      # synthetic-only: the best model by the other pool
        if name == val_kind:
            continue
        o = evaluate_model(load_model(folder / "train" / b["model"]), data.test, mean, std, summary["device"],
                           s.batch_size)
        atomic_write_text(folder / f"per_image-{name}-validation.csv", o.to_csv(index=False))
        other = {"other_validation": name, "dice_other_validation": float(o["dice"].mean()),
                 "iou_other_validation": float(o["iou"].mean()), "best_epoch_other_validation": b["epoch"],
                 "best_val_iou_other_validation": b["val_iou"]}
    atomic_write_json(done, {"key": key, "configuration": asdict(c), "validation": val_kind,
                             "weights": getattr(model, "weights_report", {}).get("source"),
                             "real_images": len(plan_.real) if plan_.real is not None else 0,
                             "synthetic_pool": len(plan_.synthetic) if plan_.synthetic is not None else 0,
                             "dice": float(scores["dice"].mean()), "iou": float(scores["iou"].mean()),
                             **{k: summary[k] for k in ("best_epoch", "best_val_iou", "epochs_run", "max_epochs",
                                                        "patience", "stopped", "best_is_last", "seconds",
                                                        "train_images", "train_images_per_s")},
                             **other})
    return scores


def judge_configuration(cfg: StudyConfig) -> Configuration:
    """The real-only baseline that stages 04 and 05 use as the label-fidelity judge (metrics.fidelity):
    all training images, the primary augmentation, the first model and the first seed."""
    s = cfg.segmentation
    return Configuration("real", None, None, 0, primary_augmentation(cfg), s.models[0], s.seeds[0])


def train_configuration(run: Run, c: Configuration) -> tuple[Path, dict]:
    """Train one configuration outside the stage (or find it finished): (its folder, its result.json)."""
    with torch_threads(run.cfg.run.torch_threads, resolve_device(run.cfg.run.device)):
        run_configuration(run, c, _Data(run))
    folder = run.path("segmentation", c.name)
    return folder, json.loads((folder / "result.json").read_text())


def run_plan(run: Run, configs: list[Configuration] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test every configuration of the plan; (results: one row per configuration, per-image)."""
    sources = synthetic_sources(run)
    available = sources.loc[sources["available"], "source"].tolist()
    for _, row in sources[~sources["available"]].iterrows():
        print(f"synthetic source '{row['source']}' skipped: {row['note']}")
    configs = plan(run.cfg, available) if configs is None else configs
    data = _Data(run)
    rows, per_image = [], []
    with torch_threads(run.cfg.run.torch_threads, resolve_device(run.cfg.run.device)):
        for i, c in enumerate(configs, 1):
            t0 = time.time()
            scores = run_configuration(run, c, data)
            result = json.loads(run.path("segmentation", c.name, "result.json").read_text())
            last = f", {STILL_IMPROVING} still improving" if result["best_is_last"] else ""
            print(f"[{i}/{len(configs)}] {c.name}: IoU {result['iou']:.3f}, Dice {result['dice']:.3f}; best epoch "
                  f"{result['best_epoch']} of {result['epochs_run']} ({result['stopped']}{last}) "
                  f"({time.time() - t0:.0f} s)")
            rows.append({**c.row(), "dice": result["dice"], "iou": result["iou"],
                         "best_epoch": result["best_epoch"], "best_val_iou": result["best_val_iou"],
                         "epochs_run": result["epochs_run"], "max_epochs": result["max_epochs"],
                         "stopped": result["stopped"], "best_is_last": result["best_is_last"],
                         "validation": result["validation"],
                         **{k: result[k] for k in OTHER_VALIDATION_COLUMNS},
                         "real_images": result["real_images"],
                         "synthetic_pool": result["synthetic_pool"], "train_images": result["train_images"],
                         "train_seconds": result["seconds"], "name": c.name})
            per_image.append(scores.assign(**c.row()))
    results = pd.DataFrame(rows)
    per_image_df = pd.concat(per_image, ignore_index=True)[CONFIG_COLUMNS + ["image_id", "dice", "iou"]]
    return results, per_image_df


# ------------------------------------------------------------------------------------ summaries
def summary_with_tests(per_image: pd.DataFrame, cfg: StudyConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per configuration group (seeds pooled): mean Dice/IoU with bootstrap CI, and the paired
    Wilcoxon test of its per-image IoU (averaged over seeds) against its real-only baseline."""
    s = cfg.segmentation
    per_image = per_image.astype({"source": str, "n_real": str})
    summary = summarise(per_image, GROUP_COLUMNS, s.bootstrap, seed=0)
    iou = {key: g.groupby("image_id")["iou"].mean()
           for key, g in per_image.groupby(GROUP_COLUMNS, sort=False)}
    tests = []
    for _, row in summary.iterrows():
        if row["regime"] == "real":
            continue
        this = tuple(row[k] for k in GROUP_COLUMNS)
        base_row = Configuration.from_row(row).baseline().row()
        base = tuple(base_row[k] for k in GROUP_COLUMNS)
        if base not in iou:
            continue
        t = paired_test(iou[this], iou[base], s.bootstrap, seed=0)
        tests.append({**dict(zip(GROUP_COLUMNS, this)), "baseline": "real", **t})
    paired = pd.DataFrame(tests, columns=GROUP_COLUMNS + ["baseline", "n_images", "diff", "diff_lo", "diff_hi", "p"])
    return summary, paired


def _fmt(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _select(table: pd.DataFrame, **match) -> pd.DataFrame:
    for k, v in match.items():
        table = table[table[k].astype(str) == str(v)]
    return table


def _group_key(row) -> tuple:
    return tuple(str(row[k]) for k in GROUP_COLUMNS)


def still_improving(results: pd.DataFrame | None) -> set[tuple]:
    """Configuration groups (GROUP_COLUMNS as text) with a run whose best epoch was its last."""
    if results is None or "best_is_last" not in results:
        return set()
    flagged = results[results["best_is_last"].astype(str).str.lower() == "true"]
    return {_group_key(r) for _, r in flagged.iterrows()}


def _cell(summary: pd.DataFrame, metric: str = "iou", flags: set[tuple] = frozenset(), **match) -> str:
    """mean [lo, hi] of the matching group, with STILL_IMPROVING when one of its runs is in ``flags``."""
    sel = _select(summary, **match)
    if sel.empty:
        return "—"
    r = sel.iloc[0]
    mark = f" {STILL_IMPROVING}" if _group_key(r) in flags else ""
    return _fmt(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"]) + mark


def _validation(results: pd.DataFrame | None, **match) -> str:
    """The validation split(s) that picked the checkpoints of the matching runs ("—" if unknown)."""
    sel = _select(results, **match) if results is not None and "validation" in results else pd.DataFrame()
    return " / ".join(sorted(set(sel["validation"].astype(str)))) if len(sel) else "—"


def validation_choice(results: pd.DataFrame) -> pd.DataFrame:
    """Synthetic-only runs tested with the checkpoint picked on either validation split.

    One row per run: the test IoU of the best model by synthetic validation pairs (the paper's choice)
    and by real validation images, each with its best epoch (STILL_IMPROVING where that was the last
    epoch run), which one ``segmentation.synthetic_validation`` chose, and real minus synthetic."""
    cols = ["source", "N synthetic per real", "seed", "chosen", "IoU (synthetic validation)",
            "best epoch (synthetic validation)", "IoU (real validation)", "best epoch (real validation)",
            "real − synthetic", "epochs run", "stopped"]
    rows = []
    syn = results[results["regime"] == "synthetic"] if "other_validation" in results else results.iloc[:0]
    for _, r in syn.iterrows():
        by = {str(r["validation"]): (r["iou"], r["best_epoch"])}
        if isinstance(r["other_validation"], str):
            by[r["other_validation"]] = (r["iou_other_validation"], r["best_epoch_other_validation"])
        row = {"source": r["source"], "N synthetic per real": r["per_real"], "seed": r["seed"],
               "chosen": r["validation"], "epochs run": int(r["epochs_run"]), "stopped": r["stopped"]}
        for v in ("synthetic", "real"):
            iou, epoch = by.get(v, (float("nan"), None))
            row[f"IoU ({v} validation)"] = round(float(iou), 4)
            row[f"best epoch ({v} validation)"] = "—" if epoch is None or pd.isna(epoch) else (
                f"{int(epoch)}" + (f" {STILL_IMPROVING}" if int(epoch) == int(r["epochs_run"]) else ""))
        row["real − synthetic"] = round(row["IoU (real validation)"] - row["IoU (synthetic validation)"], 4)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def paper_tables(summary: pd.DataFrame, run: Run, results: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Tables 3-6 in the paper's layout: this run's mean [95 % CI] beside the paper's IoU.

    T3 synthetic only (IoU), T4 real vs real + synthetic with/without Control (IoU), T5 small real
    sets alone and + the small_source set per r (IoU), T6 the same small-data study in Dice. The
    paper's numbers come from :mod:`polyplib.paper`, only beside the set that was made like the
    paper's (a SinGAN-Seg trained here names its N source images and gets none, and so do diffusion sets
    drawn with another variance or RePaint start); cells without one are empty. Table 6 has no paper column (its values are not held).

    ``results`` (default: the saved 06_segmentation table, if any) marks with STILL_IMPROVING every
    cell with a run whose best epoch was its last, and gives Table 3 its ``validation`` column: the
    split that picked the checkpoints (every run of Tables 4-6 validates on real images)."""
    from .. import paper
    from ..metrics import singan_sources as count_singan_sources

    cfg, singan_sources = run.cfg, count_singan_sources(run)
    if results is None and run.path("results", "06_segmentation.csv").exists():
        results = read_table(run, "06_segmentation")
    flags = still_improving(results)

    def cell(*args, **match):
        return _cell(*args, flags=flags, **match)

    s, aug0, m0 = cfg.segmentation, primary_augmentation(cfg), cfg.segmentation.models[0]
    departures = paper.method_departures(cfg)
    ref = {src: paper.like_for_like(src, singan_sources, departures) for src in s.sources}
    row_name = {src: f"{src} (trained here, N = {singan_sources})" if src == "singan" and singan_sources is not None
            else src for src in s.sources}
    base = dict(model=m0, n_real="all")
    sources = [x for x in s.sources if (summary["source"].astype(str) == x).any()]
    t3 = [{"training data": "real", "N synthetic per real": "—",
           "IoU (this run)": cell(summary, regime="real", augmentation=aug0, **base),
           "validation": _validation(results, regime="real", augmentation=aug0, **base),
           "IoU (paper)": paper.iou_synthetic_only("real", 0)}]
    for src in sources:
        for n in s.synthetic_per_real:
            match = dict(regime="synthetic", source=src, per_real=n, augmentation=aug0, **base)
            t3.append({"training data": f"{row_name[src]} only", "N synthetic per real": n,
                       "IoU (this run)": cell(summary, **match), "validation": _validation(results, **match),
                       "IoU (paper)": paper.iou_synthetic_only(ref[src], n)})
    t4 = []
    for aug in s.augmentation:
        t4.append({"training data": "real", "augmentation": aug,
                   "IoU (this run)": cell(summary, regime="real", augmentation=aug, **base),
                   "IoU (paper)": paper.iou_real_plus("real") if aug == "control" else None})
        for src in sources:
            t4.append({"training data": f"real + {row_name[src]} (r={s.mix_r_full})", "augmentation": aug,
                       "IoU (this run)": cell(summary, regime="mixed", source=src, per_real=s.mix_r_full,
                                               augmentation=aug, **base),
                       "IoU (paper)": paper.iou_real_plus(ref[src]) if aug == "control" else None})
    small_src = s.small_source if s.small_source in sources else (sources[0] if sources else None)
    small = {}
    for metric, table in (("iou", "T5"), ("dice", "T6")):
        rows = []
        for n in s.small_n:
            row = {"N real": n, "real (this run)": cell(summary, metric, regime="real", n_real=n,
                                                         augmentation=aug0, model=m0)}
            for r in s.mix_r:
                row[f"+{small_src} r={r} (this run)"] = cell(summary, metric, regime="mixed", source=small_src,
                                                             n_real=n, per_real=r, augmentation=aug0, model=m0)
            if metric == "iou":
                real_iou, styled_iou = paper.IOU_SMALL[n].value if n in paper.IOU_SMALL else (None, None)
                row["real (paper)"] = real_iou
                if small_src == paper.SMALL_SOURCE:   # a paper value only beside the method that made it
                    row[f"+{small_src} best r (paper)"] = styled_iou
            rows.append(row)
        small[table] = pd.DataFrame(rows)
    out = {"T3": pd.DataFrame(t3), "T4": pd.DataFrame(t4), **small}
    return {name: t.astype(object).where(t.notna(), "—") for name, t in out.items()}


# ------------------------------------------------------------------------------------ the stage
TABLES = ("06_segmentation", "06_per_image", "06_summary", "06_paired", "06_sources", "06_validation")


def read_table(run: Run, name: str) -> pd.DataFrame:
    """A table this stage saved under results/ (``name`` without the ``06_`` prefix works too)."""
    name = name if name.startswith("06_") else f"06_{name}"
    path = run.path("results", f"{name}.csv")
    if not path.exists():
        raise StageError(f"{path}: missing; run stage 06 (python run_all.py --only 06)")
    return pd.read_csv(path, dtype={"image_id": str, "source": str, "n_real": str})


def run_study(run: Run, force: bool = False) -> pd.DataFrame:
    """Stage 06: train and test every planned configuration; one row per configuration and seed.

    Saves results/06_segmentation (that table), 06_per_image (per test image, for paired tests),
    06_summary (mean and bootstrap CI per configuration, seeds pooled), 06_paired (Wilcoxon vs
    real-only), 06_sources (which synthetic sets were found), 06_validation (synthetic-only runs
    tested with the checkpoint of either validation split) and 06_table3..6 (paper layout).
    ``force`` recomputes the stage but reuses every finished configuration whose key (settings,
    data, synthetic set) is unchanged (on one machine its result is a function of that key). To
    retrain one, delete its folder under ``segmentation/``.
    """
    def compute() -> pd.DataFrame:
        sources = synthetic_sources(run)
        results, per_image = run_plan(run)
        summary, paired = summary_with_tests(per_image, run.cfg)
        for name, table in (("06_sources", sources.drop(columns="folder")), ("06_per_image", per_image),
                            ("06_summary", summary), ("06_paired", paired), ("06_segmentation", results),
                            ("06_validation", validation_choice(results))):
            run.save_table(name, table, stage=STAGE)
        for name, table in paper_tables(summary, run, results).items():
            run.save_table(f"06_table{name[1:]}", table, stage=STAGE)
        return results

    return run.cached(STAGE, compute, lambda: read_table(run, "06_segmentation"), force)
