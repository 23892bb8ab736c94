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

import numpy as np
import pandas as pd
import torch

from ..config import StudyConfig
from ..errors import StageError
from ..runs import Run, atomic_write_json, atomic_write_text
from ..synthetic.catalogue import imported_label, paper_key, set_dir
from ..synthetic.folder import absent_methods, read_manifest, sources_of
from .data import (EpochPlan, PairPool, first_per_source, load_pool, load_synthetic_pool,
                   is_unconditional, small_subset, split_train_val)
from .evaluate import evaluate_model, paired_test, summarise
from .models import build_model, input_normalization, load_model
from .train import TrainSettings, train_model
from ..training import resolve_device, torch_threads

STAGE = "06"
CONFIG_COLUMNS = ["regime", "source", "n_real", "per_real", "augmentation", "model", "schedule", "synthetic_filter",
                  "synthetic_weight", "seed"]
GROUP_COLUMNS = [c for c in CONFIG_COLUMNS if c != "seed"]
#: columns held as text in every table ("none" for no source, filter or schedule; "all" for every image)
TEXT_COLUMNS = {"source": str, "n_real": str, "schedule": str, "synthetic_filter": str}
#: Synthetic-only runs: the test scores of the best model by the validation pool not chosen.
OTHER_VALIDATION_COLUMNS = ["other_validation", "dice_other_validation", "iou_other_validation",
                            "best_epoch_other_validation", "best_val_iou_other_validation"]
#: Marks a number from a run whose best epoch was its last (still improving when training stopped).
STILL_IMPROVING = "†"
STILL_IMPROVING_NOTE = (f"{STILL_IMPROVING}: best epoch was the last; still improving when training stopped "
                        "(more epochs might have helped)")
_KEY_VERSION = 3       # 2: patience, validation on both pools of synthetic-only runs; 3: schedule, filter, weight



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
    schedule: str | None = None           # mixed runs: "mixed" (the paper) | "pretrain"; None otherwise
    synthetic_filter: float | None = None  # keep pairs whose judge IoU >= this; None: every pair (the paper)
    synthetic_weight: float = 1.0          # mixed schedule: the synthetic pairs' weight in the loss

    @property
    def name(self) -> str:
        """The folder name; the paper's way of using pairs adds nothing to it (earlier runs keep theirs)."""
        extra = "".join([f"-{self.schedule}" if self.schedule not in (None, "mixed") else "",
                         f"-f{self.synthetic_filter:g}" if self.synthetic_filter is not None else "",
                         f"-w{self.synthetic_weight:g}" if self.synthetic_weight != 1.0 else ""])
        return (f"{self.regime}-{self.source or 'none'}-n{self.n_real or 'all'}-k{self.per_real}-"
                f"{self.augmentation}-{self.model}{extra}-s{self.seed}")

    def row(self) -> dict:
        """Table form: text ``source`` ("none" for real), ``n_real`` ("all" or the subset size),
        ``schedule`` and ``synthetic_filter`` ("none" where not used)."""
        f = self.synthetic_filter
        return {**asdict(self), "source": self.source or "none",
                "n_real": "all" if self.n_real is None else str(self.n_real), "schedule": self.schedule or "none",
                "synthetic_filter": "none" if f is None else f"{f:g}"}

    @classmethod
    def from_row(cls, row) -> "Configuration":
        def text(key: str) -> str | None:
            value = str(row.get(key, "none"))
            return None if value in ("none", "nan", "") else value

        n, f = str(row["n_real"]), text("synthetic_filter")
        return cls(str(row["regime"]), text("source"), None if n == "all" else int(n),
                   int(row["per_real"]), str(row["augmentation"]), str(row["model"]), int(row.get("seed", 0)),
                   text("schedule"), None if f is None else float(f), float(row.get("synthetic_weight", 1.0)))

    def baseline(self) -> "Configuration":
        """The real-only configuration this one is compared with (same N, augmentation, model)."""
        return Configuration("real", None, self.n_real, 0, self.augmentation, self.model, self.seed)

    @property
    def label(self) -> str:
        """How the run uses its pairs, in words ("" for the paper's way): "pretrain → fine-tune · judge IoU ≥ 0.5"."""
        parts = (["pretrain → fine-tune"] if self.schedule == "pretrain" else []) + (
            [f"judge IoU ≥ {self.synthetic_filter:g}"] if self.synthetic_filter is not None else []) + (
            [f"weight {self.synthetic_weight:g}"] if self.synthetic_weight != 1.0 else [])
        return " · ".join(parts)

    @property
    def paper_way(self) -> bool:
        """Uses its synthetic pairs as the authors did: mixed (or alone), unfiltered, weight 1."""
        return self.schedule in (None, "mixed") and self.synthetic_filter is None and self.synthetic_weight == 1.0


def as_text(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the TEXT_COLUMNS it has as text (tables read back from CSV hold numbers there).
    A configuration table written before the ways of using synthetic pairs existed gets the paper's."""
    if "regime" in table and "schedule" not in table:
        table = table.assign(schedule=np.where(table["regime"] == "mixed", "mixed", "none"),
                             synthetic_filter="none", synthetic_weight=1.0)
    return table.astype({k: v for k, v in TEXT_COLUMNS.items() if k in table})


def config_label(row, several_models: bool = False) -> str:
    """A short human name of a configuration row: "real + styled-diff r=1 · judge IoU ≥ 0.5 · N=16 · control"."""
    regime, src, n = row["regime"], row["source"], str(row["n_real"])
    name = {"real": "real", "synthetic": f"{src} only ×{row['per_real']}",
            "mixed": f"real + {src} r={row['per_real']}"}[regime]
    use = Configuration.from_row(row).label if regime != "real" else ""
    parts = [name] + ([use] if use else []) + ([f"N={n}"] if n != "all" else []) + [str(row["augmentation"])]
    return " · ".join(parts + ([str(row["model"])] if several_models else []))


def verdicts(paired: pd.DataFrame) -> pd.DataFrame:
    """In words, per configuration compared with real only (seeds pooled, the same test images): "worse"
    when the paired 95 % interval of ΔIoU lies below 0, "better" above 0, else "no difference resolved";
    worst first."""
    rows = []
    for _, r in as_text(paired).iterrows():
        word = "worse" if r["diff_hi"] < 0 else "better" if r["diff_lo"] > 0 else "no difference resolved"
        rows.append({"training data": config_label(r), "verdict": word,
                     "ΔIoU vs real [95% CI]": f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]",
                     "p": r["p"], "diff": r["diff"]})
    table = pd.DataFrame(rows, columns=["training data", "verdict", "ΔIoU vs real [95% CI]", "p", "diff"])
    return table.sort_values("diff", kind="stable").drop(columns="diff").reset_index(drop=True)


def harm_sentence(paired: pd.DataFrame) -> str:
    """One paragraph for notebook 06: which ways of adding synthetic pairs made the model worse than real
    only, computed from the paired tests (never written by hand)."""
    table = verdicts(paired[paired["regime"] == "mixed"]) if len(paired) else verdicts(paired)
    if table.empty:
        return "No real + synthetic configuration was trained, so nothing can be said about adding pairs."
    worse = table[table["verdict"] == "worse"]
    better = table[table["verdict"] == "better"]
    parts = []
    if len(worse):
        parts.append("Adding synthetic pairs made the model **worse** than real-only training in "
                     f"{len(worse)} of {len(table)} comparisons: " + "; ".join(
                         f"{r['training data']} ({r['ΔIoU vs real [95% CI]']})" for _, r in worse.iterrows()) + ".")
    else:
        parts.append(f"In none of the {len(table)} real + synthetic comparisons did adding pairs make the model "
                     "worse than real-only training (no paired interval lies below 0).")
    if len(better):
        parts.append("Better than real only: " + "; ".join(
            f"{r['training data']} ({r['ΔIoU vs real [95% CI]']})" for _, r in better.iterrows()) + ".")
    rest = len(table) - len(worse) - len(better)
    if rest:
        parts.append(f"{rest} comparison(s) resolved no difference (the interval contains 0).")
    return " ".join(parts)


def primary_augmentation(cfg: StudyConfig) -> str:
    """The augmentation of the tables that do not vary it: Control when listed (the paper's)."""
    augs = cfg.segmentation.augmentation
    return "control" if "control" in augs else augs[0]


def _use(s, schedule: str, synthetic_filter: float | None) -> dict:
    """How a real + synthetic run uses its pairs; the loss weight applies to the mixed schedule only."""
    return {"schedule": schedule, "synthetic_filter": synthetic_filter,
            "synthetic_weight": s.synthetic_weight if schedule == "mixed" else 1.0}


def plan(cfg: StudyConfig, available_sources: list[str]) -> list[Configuration]:
    """The configurations the paper's tables need, each for every seed; no duplicates.

    - real-only baseline on all training images, for every augmentation (compared with everything);
    - Table 3: synthetic only, per available source x N synthetic pairs per real image;
    - Table 4: real + synthetic (r = mix_r_full) per source, with and without Control, for every
      ``synthetic_schedule`` x ``synthetic_filter`` listed (the paper: mixed, no filter);
    - Tables 5/6: small real sets (small_n) alone and + the small_source set for every r in mix_r;
    - every further model in ``models``: real vs real + synthetic (the preferred source).
    Tables 3-6 use the first model; Tables 3, 5, 6 the primary augmentation (Control when listed), and
    every table but 4 the first schedule and filter listed.
    """
    s = cfg.segmentation
    aug0, model0 = primary_augmentation(cfg), s.models[0]
    preferred = s.small_source if s.small_source in available_sources else (
        available_sources[0] if available_sources else None)

    def use(schedule: str, synthetic_filter: float | None) -> dict:
        return _use(s, schedule, synthetic_filter)

    first = use(s.synthetic_schedule[0], s.synthetic_filter[0])
    groups: list[tuple] = []
    groups += [(("real", None, None, 0, aug, model0), {}) for aug in s.augmentation]
    if "synthetic" in s.regimes:
        groups += [(("synthetic", src, None, n, aug0, model0), {"synthetic_filter": s.synthetic_filter[0]})
                   for src in available_sources for n in s.synthetic_per_real]
    if "mixed" in s.regimes:
        groups += [(("mixed", src, None, s.mix_r_full, aug, model0), use(schedule, f))
                   for src in available_sources for aug in s.augmentation
                   for schedule in s.synthetic_schedule for f in s.synthetic_filter]
    for n in s.small_n:
        groups.append((("real", None, n, 0, aug0, model0), {}))
        if "mixed" in s.regimes and preferred:
            groups += [(("mixed", preferred, n, r, aug0, model0), first) for r in s.mix_r]
    for model in s.models[1:]:
        groups.append((("real", None, None, 0, aug0, model), {}))
        if "mixed" in s.regimes and preferred:
            groups.append((("mixed", preferred, None, s.mix_r_full, aug0, model), first))
    out, seen = [], set()
    for g, how in groups:
        for seed in s.seeds:
            c = Configuration(*g, seed=seed, **how)
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
        if c.schedule == "pretrain":      # the synthetic pairs alone, then the real images alone
            per_epoch["mixed"] = n * c.per_real + n
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
    rows, absent = [], absent_methods(run)
    for src in run.cfg.segmentation.sources:
        folder = set_dir(run, src)
        row = {"source": src, "folder": str(folder), "available": False, "pairs": 0,
               "source_images": 0, "note": ""}
        if src in absent:
            row["note"] = f"absent: {absent[src]}"
        elif not (folder / "manifest.csv").exists():
            row["note"] = "absent: no synthetic/<source>/manifest.csv (its stage has not produced it)"
        else:
            try:
                m = read_manifest(folder)
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
        "synthetic": _file_digest(set_dir(run, c.source) / "manifest.csv") if c.source else None,
        "judge": configuration_key(run, judge_configuration(run.cfg)) if c.synthetic_filter is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ one configuration
def refuse_test_images(run: Run, source: str, pool: PairPool, train: PairPool, test: PairPool) -> None:
    """Stop, naming the pairs, when a synthetic set holds held-out test images: pairs made from a test
    image (its manifest says so), or pairs whose polyp region and whole frame are both near-copies of a
    test image (:func:`polyplib.synthetic.memorisation.leaked_pairs`, flips and re-saving included).
    Training on them would inflate every test score built on the set."""
    from ..synthetic.memorisation import leaked_pairs

    test_ids = set(test.ids)
    made_from_test = sorted(set(read_manifest(set_dir(run, source))["source_id"]) & test_ids)
    copies = leaked_pairs(pool.images, pool.masks, (train.images, train.masks), (test.images, test.masks)) \
        if len(pool) else []
    if made_from_test or copies:
        named = [f"{pool.ids[i]} (a copy of test image {test.ids[j]})" for i, j in copies[:20]]
        named += [f"pairs made from test image {t}" for t in made_from_test[:20]]
        raise StageError(f"{set_dir(run, source)}: synthetic set '{source}' holds held-out test images and is "
                         f"refused for segmentation ({len(copies)} copied, {len(made_from_test)} test sources): "
                         + "; ".join(named))


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
        self._judged: dict[str, np.ndarray] = {}

    def real(self, ids) -> PairPool:
        index = self.train.index()
        return self.train.subset([index[i] for i in ids])

    def synthetic_pool(self, source: str) -> PairPool:
        """Every accepted pair of a set made from (or dealt to) the training images; a set that holds
        a held-out test image is refused (:func:`refuse_test_images`)."""
        if source not in self._synthetic:
            pool = load_synthetic_pool(set_dir(self.run, source), self.train_ids, self.size)
            refuse_test_images(self.run, source, pool, self.train, self.test)
            self._synthetic[source] = pool
        return self._synthetic[source]

    def synthetic(self, source: str, ids, min_judge_iou: float | None = None) -> PairPool:
        """The pairs of ``source`` made from the real images ``ids``; with ``min_judge_iou``, only those
        whose mask has at least that IoU with the real-only judge's prediction (the quality gate)."""
        pool, wanted = self.synthetic_pool(source), set(ids)
        judged = self.judge_iou(source) if min_judge_iou is not None else None
        return pool.subset([i for i, s in enumerate(pool.source_ids)
                            if s in wanted and (judged is None or judged[i] >= min_judge_iou)])

    def judge_iou(self, source: str) -> np.ndarray:
        """Per pair of ``synthetic_pool(source)``: the IoU of its mask with the prediction of the label-fidelity
        judge (stage 06's real-only baseline, trained here first if it is not yet); written to
        ``segmentation/filter/<source>.csv`` with the keep decision of every configured threshold."""
        if source not in self._judged:
            s = self.run.cfg.segmentation
            judge = judge_configuration(self.run.cfg)
            run_configuration(self.run, judge, self)
            pool = self.synthetic_pool(source)
            mean, std = input_normalization(s.encoder, s.encoder_weights)
            device = str(resolve_device(self.run.cfg.run.device))
            model = load_model(self.run.path("segmentation", judge.name, "train", "model"))
            ious = evaluate_model(model, pool, mean, std, device, s.batch_size)["iou"].to_numpy()
            table = pd.DataFrame({"id": pool.ids, "source_id": pool.source_ids, "judge_iou": ious.round(4),
                                  **{f"kept_at_{t:g}": ious >= t for t in s.synthetic_filter if t is not None}})
            atomic_write_text(self.run.path("segmentation", "filter", f"{source}.csv"), table.to_csv(index=False))
            self._judged[source] = ious
        return self._judged[source]


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
    if c.regime == "real" or c.schedule == "pretrain":      # pretrain: this is the fine-tuning on real images
        real = data.real(fit_ids)
        return EpochPlan(real, None, [(0, i) for i in range(len(real))], c.seed), {"real": real_val}, "real"
    syn = _synthetic_fit(data, c, fit_ids)
    if c.regime == "synthetic":
        chosen = first_per_source(syn, c.per_real)
        val = data.synthetic(c.source, val_ids, c.synthetic_filter)
        if not len(val):
            return EpochPlan(None, syn, [(1, i) for i in chosen], c.seed), {"real": real_val}, "real"
        pools = {"synthetic": val.subset(first_per_source(val, c.per_real)), "real": real_val}
        select = cfg.segmentation.synthetic_validation
        pools = {select: pools[select], **pools}           # the selecting pool first
        return EpochPlan(None, syn, [(1, i) for i in chosen], c.seed), pools, select
    real = data.real(fit_ids)
    return (EpochPlan(real, syn, [], c.seed, mix_alpha=cfg.segmentation.mix_alpha, mix_r=c.per_real),
            {"real": real_val}, "real")


class GateLeftNothing(StageError):
    """The quality gate dropped every pair of a set: the configuration cannot train (and is skipped)."""


def _synthetic_fit(data: _Data, c: Configuration, fit_ids) -> PairPool:
    syn = data.synthetic(c.source, fit_ids, c.synthetic_filter)
    if len(syn) == 0:
        where = set_dir(data.run, c.source) / "manifest.csv"
        if c.synthetic_filter is not None and len(data.synthetic(c.source, fit_ids)):
            raise GateLeftNothing(f"no pair of synthetic set '{c.source}' made from the training images has a judge "
                                  f"IoU of at least {c.synthetic_filter:g} ({where}; see segmentation/filter/)")
        raise StageError(f"synthetic set '{c.source}' has no accepted pairs made from the training images ({where})")
    return syn


def pretrain_plan(data: _Data, c: Configuration, cfg: StudyConfig) -> EpochPlan:
    """The first stage of the ``pretrain`` schedule: the synthetic pairs of the fitting images alone,
    ``per_real`` of each (the most the mixing rule could add to an epoch), every epoch."""
    fit_ids, _ = split_train_val(data.train_ids, cfg.segmentation.val_fraction, c.seed)
    if c.n_real is not None:
        fit_ids = small_subset(fit_ids, c.n_real, c.seed)
    syn = _synthetic_fit(data, c, fit_ids)
    return EpochPlan(None, syn, [(1, i) for i in first_per_source(syn, c.per_real)], c.seed)


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
    settings = TrainSettings.of(cfg, c.augmentation, c.seed, c.synthetic_weight)
    pre, pre_plan = None, pretrain_plan(data, c, cfg) if c.schedule == "pretrain" else None
    if pre_plan is not None:          # the synthetic pairs first, then the paper's protocol on the real images
        pre = train_model(model, pre_plan, pools, folder / "pretrain", settings, mean, std,
                          name=f"{c.name} (pretrain)", select=val_kind, on_epoch_end=on_epoch_end)
        model = load_model(folder / "pretrain" / "model")
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
    synthetic = pre_plan.synthetic if pre_plan is not None else plan_.synthetic
    synthetic_pool = len(synthetic) if synthetic is not None else 0
    atomic_write_json(done, {"key": key, "configuration": asdict(c), "validation": val_kind,
                             "weights": getattr(model, "weights_report", {}).get("source"),
                             "real_images": len(plan_.real) if plan_.real is not None else 0,
                             "synthetic_pool": synthetic_pool,
                             "dice": float(scores["dice"].mean()), "iou": float(scores["iou"].mean()),
                             **{k: summary[k] for k in ("best_epoch", "best_val_iou", "epochs_run", "max_epochs",
                                                        "patience", "stopped", "best_is_last", "seconds",
                                                        "train_images", "train_images_per_s")},
                             **({"seconds": summary["seconds"] + pre["seconds"],
                                 "train_images": summary["train_images"] + pre["train_images"],
                                 "pretrain": {k: pre[k] for k in ("epochs_run", "best_epoch", "best_val_iou",
                                                                  "stopped", "best_is_last", "train_images")}}
                                if pre else {}),
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


def judge_model(run: Run):
    """The label-fidelity judge of stages 04, 05 and the quality gate: (model, mean, std, record).

    It is stage 06's real-only baseline (first model, primary augmentation, first seed), trained once
    under ``segmentation/<name>/`` by whichever stage needs it first: stage 06 then finds it finished
    instead of training the same model a second time."""
    s, c = run.cfg.segmentation, judge_configuration(run.cfg)
    folder, result = train_configuration(run, c)
    mean, std = input_normalization(s.encoder, s.encoder_weights)
    return load_model(folder / "train" / "model"), mean, std, {
        "judge_model": c.model, "judge_configuration": c.name, "judge_best_epoch": result["best_epoch"],
        "judge_val_iou": result["best_val_iou"], "judge_fit_images": result["real_images"]}


def run_plan(run: Run, configs: list[Configuration] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/test every configuration of the plan; (results: one row per configuration, per-image)."""
    sources = synthetic_sources(run)
    available = sources.loc[sources["available"], "source"].tolist()
    for _, row in sources[~sources["available"]].iterrows():
        print(f"synthetic source '{row['source']}' skipped: {row['note']}")
    configs = plan(run.cfg, available) if configs is None else configs
    data = _Data(run)
    for source in dict.fromkeys(c.source for c in configs if c.source):
        data.synthetic_pool(source)      # a set holding test images stops the stage before any training
    rows, per_image = [], []
    with torch_threads(run.cfg.run.torch_threads, resolve_device(run.cfg.run.device)):
        for i, c in enumerate(configs, 1):
            t0 = time.time()
            try:
                scores = run_configuration(run, c, data)
            except GateLeftNothing as exc:      # a set the gate empties: said, and its cells stay empty
                print(f"[{i}/{len(configs)}] {c.name}: skipped: {exc}")
                continue
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
    per_image = as_text(per_image)
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


def _mixed_uses(s, source: str | None, augmentation: str, model: str) -> list[Configuration]:
    """The real + synthetic configurations of Table 4 for one source (seed 0), in the plan's order: every
    schedule x filter listed, the first of them the one the other tables use."""
    return [Configuration("mixed", source, None, s.mix_r_full, augmentation, model, 0, **_use(s, sch, f))
            for sch in s.synthetic_schedule for f in s.synthetic_filter]


def _delta(paired: pd.DataFrame | None, **match) -> str:
    """The paired ΔIoU against real only of the matching group, "mean [lo, hi]", or "—"."""
    sel = _select(as_text(paired), **match) if paired is not None else pd.DataFrame()
    if sel.empty:
        return "—"
    r = sel.iloc[0]
    return f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]"


def paper_tables(summary: pd.DataFrame, run: Run, results: pd.DataFrame | None = None,
                 paired: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
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

    cfg, singan_sources = run.cfg, sources_of(run, "singan")
    if results is None and run.path("results", "06_segmentation.csv").exists():
        results = read_table(run, "06_segmentation")
    flags = still_improving(results)

    def cell(*args, **match):
        return _cell(*args, flags=flags, **match)

    s, aug0, m0 = cfg.segmentation, primary_augmentation(cfg), cfg.segmentation.models[0]
    departures = paper.method_departures(cfg)
    ref = {src: paper_key(src, singan_sources, departures, imported_label(set_dir(run, src)) is not None)
           for src in s.sources}
    row_name = {src: f"{src} (trained here, N = {singan_sources})" if src == "singan" and singan_sources is not None
            else src for src in s.sources}
    base = dict(model=m0, n_real="all")
    sources = [x for x in s.sources if (summary["source"].astype(str) == x).any()]
    t3 = [{"training data": "real", "N synthetic per real": "—",
           "IoU (this run)": cell(summary, regime="real", augmentation=aug0, **base),
           "validation": _validation(results, regime="real", augmentation=aug0, **base),
           "IoU (paper)": paper.iou_synthetic_only("real", 0)}]
    f0 = s.synthetic_filter[0]
    only = Configuration("synthetic", None, None, 1, aug0, m0, 0, synthetic_filter=f0)
    for src in sources:
        for n in s.synthetic_per_real:
            match = dict(regime="synthetic", source=src, per_real=n, augmentation=aug0,
                         synthetic_filter=only.row()["synthetic_filter"], **base)
            gate = f" ({only.label})" if only.label else ""
            t3.append({"training data": f"{row_name[src]} only{gate}", "N synthetic per real": n,
                       "IoU (this run)": cell(summary, **match), "validation": _validation(results, **match),
                       "IoU (paper)": paper.iou_synthetic_only(ref[src], n) if only.paper_way else None})
    if paired is None and run.path("results", "06_paired.csv").exists():
        paired = read_table(run, "06_paired")
    t4 = []
    for aug in s.augmentation:
        t4.append({"training data": "real", "augmentation": aug,
                   "IoU (this run)": cell(summary, regime="real", augmentation=aug, **base),
                   "ΔIoU vs real [95% CI]": "—",
                   "IoU (paper)": paper.iou_real_plus("real") if aug == "control" else None})
        for src in sources:
            for c in _mixed_uses(s, src, aug, m0):
                use = {k: c.row()[k] for k in ("schedule", "synthetic_filter", "synthetic_weight")}
                match = dict(regime="mixed", source=src, per_real=s.mix_r_full, augmentation=aug, **use, **base)
                how = f", {c.label}" if c.label else ""
                t4.append({"training data": f"real + {row_name[src]} (r={s.mix_r_full}{how})", "augmentation": aug,
                           "IoU (this run)": cell(summary, **match), "ΔIoU vs real [95% CI]": _delta(paired, **match),
                           "IoU (paper)": paper.iou_real_plus(ref[src]) if aug == "control" and c.paper_way else None})
    small_src = s.small_source if s.small_source in sources else (sources[0] if sources else None)
    first = _mixed_uses(s, small_src, aug0, m0)[0]
    first_use = {k: first.row()[k] for k in ("schedule", "synthetic_filter", "synthetic_weight")}
    first_how = f", {first.label}" if first.label else ""
    small = {}
    for metric, table in (("iou", "T5"), ("dice", "T6")):
        rows = []
        for n in s.small_n:
            row = {"N real": n, "real (this run)": cell(summary, metric, regime="real", n_real=n,
                                                         augmentation=aug0, model=m0)}
            for r in s.mix_r:
                row[f"+{small_src} r={r}{first_how} (this run)"] = cell(
                    summary, metric, regime="mixed", source=small_src, n_real=n, per_real=r, augmentation=aug0,
                    model=m0, **first_use)
            if metric == "iou":
                real_iou, styled_iou = paper.IOU_SMALL[n].value if n in paper.IOU_SMALL else (None, None)
                row["real (paper)"] = real_iou
                if small_src == paper.SMALL_SOURCE and first.paper_way:   # only beside the method that made it
                    row[f"+{small_src} best r (paper)"] = styled_iou
            rows.append(row)
        small[table] = pd.DataFrame(rows)
    out = {"T3": pd.DataFrame(t3), "T4": pd.DataFrame(t4), **small}
    return {name: t.astype(object).where(t.notna(), "—") for name, t in out.items()}


def filter_table(run: Run) -> pd.DataFrame:
    """The quality gate per synthetic set and threshold: the pairs made from (or dealt to) the training
    images, how many the gate kept and dropped, and the median judge IoU (from the per-pair records in
    ``segmentation/filter/<set>.csv``; empty when no run used a filter)."""
    rows, s = [], run.cfg.segmentation
    wanted = {f"kept_at_{t:g}" for t in s.synthetic_filter if t is not None}
    for path in sorted(run.path("segmentation", "filter").glob("*.csv")):
        if path.stem not in s.sources:
            continue
        pairs = pd.read_csv(path, dtype={"id": str, "source_id": str})
        for col in (c for c in pairs.columns if c in wanted):
            kept = int(pairs[col].astype(bool).sum())
            rows.append({"source": path.stem, "judge IoU at least": float(col[len("kept_at_"):]),
                         "pairs": len(pairs), "kept": kept, "dropped": len(pairs) - kept,
                         "median judge IoU": round(float(pairs["judge_iou"].median()), 3)})
    return pd.DataFrame(rows, columns=["source", "judge IoU at least", "pairs", "kept", "dropped", "median judge IoU"])


# ------------------------------------------------------------------------------------ the stage
TABLES = ("06_segmentation", "06_per_image", "06_summary", "06_paired", "06_sources", "06_validation", "06_filter")


def read_table(run: Run, name: str) -> pd.DataFrame:
    """A table this stage saved under results/ (``name`` without the ``06_`` prefix works too)."""
    name = name if name.startswith("06_") else f"06_{name}"
    path = run.path("results", f"{name}.csv")
    if not path.exists():
        raise StageError(f"{path}: missing; run stage 06 (python run_all.py --only 06)")
    return pd.read_csv(path, dtype={"image_id": str, **TEXT_COLUMNS})
