"""Stage 03: synthetic labelled pairs (image + mask) from the stage-02 diffusion models.

Methods, each a folder ``runs/<profile>/synthetic/<method>/`` laid out like prepared data
(``images/``, ``masks/``, ``manifest.csv``; see :mod:`polyplib.synthetic.folder`):

- ``diff``: every training image redrawn by RePaint with the DDPM of its own cluster;
- ``full-diff``: the same with the Full model (``sampling.model: full``, or ``sampling.also_full``);
- ``full-diff-fixed-sigma`` (or ``-learned-sigma``): the same with the Full model trained with the
  other variance (``ddpm.compare_variance``), for the learned-vs-fixed sigma comparison;
- ``styled-diff`` / ``full-styled-diff``: the paper's Styled-Diff: the accepted pairs of ``diff`` /
  ``full-diff`` after the authors' guided style transfer and colour matching (``sampling.style``,
  :mod:`.guided`); reported absent, with the reason, when the feature-network weights are not given;
- ``mkl-diff`` / ``mkl-full-diff``: the same pairs after colour matching alone (``sampling.style.mkl_only``);
- ``uncond-<sampler>-<steps>``: pairs drawn from scratch with DDPM / DDIM / DPM-Solver++;
- ``budget-<sampler>-<calls>`` (under ``synthetic/budget/``): the quality-vs-cost study
  (``sampling.budget_study``): the same sources redrawn by each inpainting sampler and call budget.

Every pair has its own seed, derived from (``sampling.seed``, source id, sample index), and batches
are fixed by the plan, so :func:`regenerate` redraws any single pair exactly and a killed run
resumes where it stopped: each method is a plan and a batch computation run through the one loop of
:mod:`polyplib.synthetic.generate`. :func:`run_stage` is the stage entry point (cached by ``Run.cached``).
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pandas as pd

from ..diffusion.model import load_model, model_dir, models_root, variance_ablation
from ..diffusion.unconditional import sample_unconditional
from ..errors import StageError
from ..runs import Run, atomic_write_json
from ..synthetic.catalogue import REPAINT_MODELS, STYLED_METHODS, budget_name, set_dir, unconditional_name
from ..synthetic.folder import STYLE_COSTS, read_pair, read_records, set_summary
from ..synthetic.generate import SetPlan, chunks, pair_seed, plan_key, record_of, write_set
from ..synthetic.postprocess import PostProcess, dilate, scaled_px
from ..training import resolve_device, torch_threads
from .feature_nets import missing_reason
from .guided import StyleSettings, guided_style
from .repaint import repaint
from .style import colour_match


# ----------------------------------------------------------------------------- planning
def planned_methods(cfg) -> list[str]:
    """The method folders this configuration produces, in the order they are made."""
    s = cfg.sampling
    base = ["full-diff"] if s.model == "full" else ["diff"] + (["full-diff"] if s.also_full else [])
    wanted = {"mkl": s.style.mkl_only, "guided": s.style.guided}
    styled = [m for m, (how, of) in STYLED_METHODS.items() if of in base and wanted[how]]
    if cfg.ddpm.compare_variance and not cfg.ddpm.pretrained:   # both Full models, the same seeds: compared in 04
        base = base + ["full-diff"] * ("full-diff" not in base) + [f"full-diff-{variance_ablation(cfg.ddpm)[0][5:]}"]
    return base + styled + unconditional_methods(cfg) + list(budget_points(cfg))


def unconditional_methods(cfg) -> list[str]:
    """The unconditional samplers' step study: one set per (sampler, steps), none when it is off."""
    s = cfg.sampling
    return [unconditional_name(smp, n) for smp in dict.fromkeys(s.unconditional_samplers)
            for n in dict.fromkeys(s.unconditional_steps)] if s.n_unconditional > 0 else []


def budget_points(cfg) -> dict[str, dict]:
    """{``budget-<sampler>-<calls>``: point settings} of the quality-vs-cost study (empty when it is off)."""
    from .repaint import count_evaluations

    b = cfg.sampling.budget_study
    if b.pairs <= 0:
        return {}
    out = {}
    for p in b.points:
        calls = count_evaluations(p.steps, p.jump_length, p.jump_n_sample, 0, "noise", p.sampler)
        name = budget_name(p.sampler, calls)
        if name in out:
            raise StageError(f"sampling.budget_study.points: two points are {name} ({p.sampler}, {calls} UNet calls "
                             "per pair); give each sampler a different budget")
        out[name] = {**p.model_dump(), "calls": calls}
    return out


def _clusters(run: Run) -> dict[str, int]:
    path = run.path("clusters.csv")
    if not path.exists():
        raise StageError(f"{path}: missing; the per-cluster models need stage 02 (python run_all.py --only 02)")
    df = pd.read_csv(path, dtype={"id": str})
    return dict(zip(df["id"], df["cluster"].astype(int)))


class _Context:
    """What every method of one run shares: the data, the scaled kernels, the model cache."""

    def __init__(self, run: Run):
        from ..data.prepared import load_dataset

        self.run, self.cfg, self.s = run, run.cfg, run.cfg.sampling
        self.ds = load_dataset(run)
        self.files = dict(zip(self.ds.manifest["id"], self.ds.manifest["file"]))
        self.dilation_px = scaled_px(self.s.dilation_px, self.cfg.data.resolution, 1)
        self.post = PostProcess.from_config(self.cfg)
        self.device = str(resolve_device(self.cfg.run.device))
        self._model: tuple[str, object, dict] | None = None
        self._nets = None

    def feature_nets(self):
        """The guided style transfer's VGG / DINO networks, loaded (and checked) once."""
        if self._nets is None:
            from .feature_nets import load_feature_nets

            self._nets = load_feature_nets(self.s.style).to(self.device)
        return self._nets

    def model(self, name: str):
        """(unet, scheduler config) of ``models/ddpm/<name>``; one model in memory at a time."""
        if self._model is None or self._model[0] != name:
            self._model = None
            self._model = (name, *load_model(model_dir(self.run, name), self.device, self.cfg.ddpm.mixed_precision,
                                             self.cfg.data.resolution))
        return self._model[1], self._model[2]

    def default_model(self) -> str:
        """The Full model for unconditional sampling, else the first cluster model."""
        root = models_root(self.run)
        if (root / "full" / "unet").is_dir():
            return "full"
        found = sorted(p.parent.name for p in root.glob("cluster-*/unet"))
        if not found:
            raise StageError(f"{root}: no trained DDPM (full or cluster-NN); run stage 02 "
                             "(python run_all.py --only 02)")
        return found[0]


def _fingerprint(run: Run, names: list[str]) -> list:
    """Which model files a folder was made from (size + modification time, cheap for 2 GB models)."""
    out = []
    for name in sorted(set(names)):
        folder = model_dir(run, name)
        files = sorted(p for sub in ("unet", "scheduler") for p in (folder / sub).glob("*") if p.is_file())
        out.append([name, [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]])
    return out


# ----------------------------------------------------------------------------- methods
def _no_polyp(manifest: pd.DataFrame, sid: str) -> bool:
    """A source whose mask is empty (the manifest's ``empty`` flag): there is nothing to redraw."""
    return "empty" in manifest and str(manifest.at[sid, "empty"]) == "True"


def _repaint_plan(ctx: _Context, method: str) -> SetPlan:
    """Jobs grouped by model (each model loaded once), chunked into fixed batches."""
    s, m = ctx.s, ctx.ds.manifest.set_index("id")
    per_cluster = REPAINT_MODELS[method] == "cluster"
    clusters = _clusters(ctx.run) if per_cluster or ctx.run.path("clusters.csv").exists() else {}
    jobs: dict[str, list[dict]] = {}
    skipped = []
    for sid in ctx.ds.ids("train"):
        if _no_polyp(m, sid):
            skipped.append(sid)
            continue
        if per_cluster and sid not in clusters:
            raise StageError(f"{ctx.run.path('clusters.csv')}: training image '{sid}' has no cluster")
        model = f"cluster-{clusters[sid]:02d}" if per_cluster else REPAINT_MODELS[method]
        for k in range(s.samples_per_image):
            jobs.setdefault(model, []).append({
                "id": f"{ctx.files[sid]}_s{k}", "file": f"{ctx.files[sid]}_s{k}", "source_id": sid,
                "cluster": int(clusters.get(sid, -1)), "model": model, "method": method, "sampler": s.sampler,
                "steps": s.steps, "seed": pair_seed(s.seed, sid, k), "sample_index": k})
    batches = [b for model in sorted(jobs) for b in chunks(jobs[model], s.batch_size)]
    # the authors' sampler adds no key, so sets made before samplers were selectable stay valid
    fast = {} if s.sampler == "repaint" else {"sampler": s.sampler, **({"eta": s.eta} if s.sampler == "repaint-ddim" else {})}
    params = {**fast,
              "start": s.start, "skip_steps": s.skip_steps if s.start == "sdedit" else None,
              "jump_length": s.jump_length, "jump_n_sample": s.jump_n_sample,
              "dilation_px": ctx.dilation_px, **ctx.post.as_row()}
    key = plan_key({"method": method, "params": params, "steps": s.steps, "batch": s.batch_size, "seed": s.seed,
                    "data": ctx.run.keys.get("01"), "ids": [j["id"] for b in batches for j in b],
                    "models": _fingerprint(ctx.run, list(jobs))})
    return SetPlan(method, batches, key, {"key": key, "params": params, "skipped_empty_sources": skipped})


def _budget_plan(ctx: _Context, method: str) -> SetPlan:
    """One pair for each of the first ``pairs`` training sources with a polyp, with the seeds of the
    ``diff`` set's first pairs: every point of the study redraws the same sources from the same noise."""
    point = budget_points(ctx.cfg)[method]
    model = ctx.default_model()
    m = ctx.ds.manifest.set_index("id")
    sources = [sid for sid in ctx.ds.ids("train") if not _no_polyp(m, sid)]
    sources = sources[: ctx.s.budget_study.pairs]
    jobs = [{"id": f"{ctx.files[sid]}_s0", "file": f"{ctx.files[sid]}_s0", "source_id": sid, "cluster": -1,
             "model": model, "method": method, "sampler": point["sampler"], "steps": point["steps"],
             "seed": pair_seed(ctx.s.seed, sid, 0), "sample_index": 0} for sid in sources]
    params = {"sampler": point["sampler"], **({"eta": ctx.s.eta} if point["sampler"] == "repaint-ddim" else {}),
              "start": "noise", "skip_steps": None, "jump_length": point["jump_length"],
              "jump_n_sample": point["jump_n_sample"], "dilation_px": ctx.dilation_px, **ctx.post.as_row()}
    key = plan_key({"method": method, "params": params, "steps": point["steps"], "batch": ctx.s.batch_size,
                    "seed": ctx.s.seed, "data": ctx.run.keys.get("01"), "ids": [j["id"] for j in jobs],
                    "models": _fingerprint(ctx.run, [model])})
    return SetPlan(method, chunks(jobs, ctx.s.batch_size), key, {"key": key, "params": params})


def _repaint_compute(ctx: _Context, batch: list[dict], params: dict) -> list[tuple]:
    """[(image, raw mask channel, record fields)] of one batch."""
    unet, sconf = ctx.model(batch[0]["model"])
    pairs = [ctx.ds.load(j["source_id"]) for j in batch]
    images = np.stack([p[0] for p in pairs])
    masks = np.stack([p[1] for p in pairs])
    regions = np.stack([dilate(m, ctx.dilation_px) for m in masks])
    out, raw, nfe = repaint(unet, sconf, images, masks, regions, [j["seed"] for j in batch], steps=batch[0]["steps"],
                            start=params["start"], skip_steps=params["skip_steps"] or 0,
                            jump_length=params["jump_length"], jump_n_sample=params["jump_n_sample"],
                            sampler=params.get("sampler", "repaint"), eta=params.get("eta", ctx.s.eta))
    return [(out[i], raw[i], {"nfe": nfe, "region_fraction": round(float(regions[i].mean()), 6)})
            for i in range(len(batch))]


def _uncond_plan(ctx: _Context, method: str) -> SetPlan:
    s = ctx.s
    _, sampler, steps = method.split("-", 2)
    model = ctx.default_model()
    jobs = [{"id": f"sample_{i:05d}", "file": f"sample_{i:05d}", "source_id": "", "cluster": -1, "model": model,
             "method": method, "sampler": sampler, "steps": int(steps),
             "seed": pair_seed(s.seed, "unconditional", i), "sample_index": i} for i in range(s.n_unconditional)]
    params = ctx.post.as_row()
    # ddim / dpm++ sets drawn before their x0 was clipped (saturated noise) are redrawn, not reused
    clipped = {"x0": "clipped"} if sampler in ("ddim", "dpm++") else {}
    key = plan_key({"method": method, "params": params, "batch": s.batch_size, "seed": s.seed, **clipped,
                    "ids": [j["id"] for j in jobs], "models": _fingerprint(ctx.run, [model])})
    return SetPlan(method, chunks(jobs, s.batch_size), key, {"key": key, "params": params})


def _uncond_compute(ctx: _Context, batch: list[dict], params: dict) -> list[tuple]:
    unet, sconf = ctx.model(batch[0]["model"])
    images, raw, nfe = sample_unconditional(unet, sconf, batch[0]["sampler"], batch[0]["steps"],
                                            [j["seed"] for j in batch])
    return [(images[i], raw[i], {"nfe": nfe}) for i in range(len(batch))]


def _base_pairs(ctx: _Context, base: str) -> tuple[dict, pd.DataFrame]:
    """(plan, accepted pairs) of a finished RePaint method: what a styled set starts from."""
    folder = set_dir(ctx.run, base)
    plan = json.loads((folder / "plan.json").read_text()) if (folder / "plan.json").exists() else {}
    if not plan.get("complete"):
        raise StageError(f"{folder}: '{base}' must be complete before it can be styled")
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"id": str, "file": str, "source_id": str},
                           keep_default_na=False)
    return plan, manifest


def _styled_plan(ctx: _Context, method: str) -> SetPlan:
    """mkl: one job per pair. guided: jobs grouped by model, fixed batches, each pair its own seed."""
    how, base = STYLED_METHODS[method]
    plan, manifest = _base_pairs(ctx, base)
    common = ["id", "file", "source_id", "cluster", "model", "sample_index"]
    jobs = [{**{c: row[c] for c in common}, "method": method, "base_method": base,
             "seed": pair_seed(ctx.s.seed, f"style|{row['id']}", 0)} for row in manifest.to_dict("records")]
    if how == "mkl":
        for j in jobs:
            j.update(sampler="mkl", steps=0)
        key = plan_key({"base": plan["key"], "style": "mkl", "colour_match": 2})
        return SetPlan(method, [[j] for j in jobs], key, {"key": key, "params": {"style": "mkl"}})
    st = ctx.s.style
    settings = StyleSettings.from_section(st)
    for j in jobs:
        j.update(sampler="guided-style", steps=settings.steps)
    by_model: dict[str, list[dict]] = {}
    for j in jobs:
        by_model.setdefault(j["model"], []).append(j)
    batches = [b for model in sorted(by_model) for b in chunks(by_model[model], ctx.s.batch_size)]
    params = {"style": "guided", **settings.as_row(), "colour_match": st.colour_match,
              "dilation_px": ctx.dilation_px, **ctx.post.as_row()}
    key = plan_key({"base": plan["key"], "params": params, "batch": ctx.s.batch_size, "seed": ctx.s.seed,
                    "nets": ctx.feature_nets().origin, "models": _fingerprint(ctx.run, list(by_model))})
    return SetPlan(method, batches, key, {"key": key, "params": params})


def _styled_compute(ctx: _Context, batch: list[dict], params: dict) -> list[tuple]:
    folder = set_dir(ctx.run, batch[0]["base_method"])
    pairs = [read_pair(folder, {**j, "accepted": True}) for j in batch]
    images, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    sources = [ctx.ds.load(j["source_id"]) for j in batch]
    targets, target_masks = np.stack([p[0] for p in sources]), np.stack([p[1] for p in sources])
    if params["style"] == "mkl":   # the base pair's cleaned mask, judged again (unchanged: cleaning is idempotent)
        return [(colour_match(images[0], targets[0]), masks[0].astype(np.uint8) * 255, {"nfe": 0})]
    unet, sconf = ctx.model(batch[0]["model"])
    settings = StyleSettings.from_section(ctx.s.style)
    regions = np.stack([dilate(m, ctx.dilation_px) for m in target_masks])
    out, raw, info = guided_style(unet, sconf, images, masks, targets, target_masks, regions,
                                  [j["seed"] for j in batch], settings, ctx.feature_nets())
    results = []
    for b in range(len(batch)):
        image = out[b]
        if params["colour_match"]:
            image = colour_match(image, targets[b])
            if settings.keep_context:   # the real frame outside the dilated mask, exactly
                image[~regions[b]] = targets[b][~regions[b]]
        costs = {k: v for k, v in info["costs"].items() if k != "unet_forward"}
        results.append((image, raw[b], {"nfe": info["costs"]["unet_forward"], **costs,
                                         "final_style_loss": round(float(info["final_loss"][b]), 6)}))
    return results


def _kind(method: str) -> tuple[Callable, Callable]:
    if method in REPAINT_MODELS:
        return _repaint_plan, _repaint_compute
    if method in STYLED_METHODS:
        return _styled_plan, _styled_compute
    if method.startswith("uncond-"):
        return _uncond_plan, _uncond_compute
    if method.startswith("budget-"):
        return _budget_plan, _repaint_compute
    raise StageError(f"unknown synthetic method '{method}'; "
                     f"known: {', '.join([*REPAINT_MODELS, *STYLED_METHODS])}, uncond-<sampler>-<steps>")


# ----------------------------------------------------------------------------- running
def _run_method(ctx: _Context, method: str, force: bool, on_pair: Callable[[dict], None] | None) -> dict:
    plan_fn, compute = _kind(method)
    plan = plan_fn(ctx, method)
    params = plan.info["params"]
    table = write_set(set_dir(ctx.run, method), plan, lambda batch: compute(ctx, batch, params), ctx.post,
                      fresh=force, progress=ctx.cfg.run.progress, on_pair=on_pair)
    return set_summary(ctx.run, method, table, skipped_empty_sources=len(plan.info.get("skipped_empty_sources", [])))


def sample_methods(run: Run, methods: list[str], force: bool = False,
                   on_pair: Callable[[dict], None] | None = None) -> list[dict]:
    """Draw (or finish) the given sets outside the stage's cache: e.g. the budget study alone
    (``benchmarks/bench_inpaint_budget.py``). Each set resumes where it stopped; returns their summaries."""
    ctx = _Context(run)
    with torch_threads(ctx.cfg.run.torch_threads, ctx.device):
        return [_run_method(ctx, m, force, on_pair) for m in methods]


def run_stage(run: Run, force: bool = False, *, methods: list[str] | None = None,
              on_pair: Callable[[dict], None] | None = None) -> dict:
    """Stage 03: make every planned synthetic set; resumes unfinished ones; returns the summary.

    ``on_pair(record)`` is called after each pair is on disk (progress hooks, tests that kill a run).
    """
    methods = methods or planned_methods(run.cfg)
    reason = missing_reason(run.cfg.sampling.style)
    absent = [{"method": m, "reason": reason} for m in methods
              if reason and STYLED_METHODS.get(m, ("",))[0] == "guided"]
    todo = [m for m in methods if m not in {a["method"] for a in absent}]

    def compute() -> dict:
        ctx = _Context(run)
        for a in absent:
            print(f"{a['method']}: absent - {a['reason']}")
        with torch_threads(ctx.cfg.run.torch_threads, ctx.device):
            if any(STYLED_METHODS.get(m, ("",))[0] == "guided" for m in todo):
                ctx.feature_nets()   # a missing or mismatched weight file stops the stage before any work
            results = [_run_method(ctx, m, force, on_pair) for m in todo]
        summary = {"methods": results, "absent": absent, "resolution": run.cfg.data.resolution,
                   "dilation_px": ctx.dilation_px, "opening_px": ctx.post.opening_px, "device": ctx.device,
                   "note": "seconds are wall-clock of the run that made each pair (resumed batches are retimed)"}
        atomic_write_json(set_dir(run) / "summary.json", summary)
        return summary

    return run.cached("03", compute, lambda: load_summary(run), force)


def load_summary(run: Run) -> dict:
    path = set_dir(run) / "summary.json"
    if not path.exists():
        raise StageError(f"{path}: missing; run stage 03 (python run_all.py --only 03)")
    return json.loads(path.read_text())


def summary_table(summary: dict) -> pd.DataFrame:
    """One row per method: pairs, acceptance, UNet evaluations and seconds per pair."""
    cols = ["method", "sampler", "steps", "pairs", "accepted", "rejected", "nfe_per_pair", "seconds_per_pair",
            "seconds_per_accepted_pair"]
    return pd.DataFrame([{c: m.get(c) for c in cols} for m in summary["methods"]], columns=cols)


def sampler_study(summary: dict) -> pd.DataFrame:
    """Cost per pair of every method that runs the UNet, cheapest first: UNet forward calls (``nfe``),
    and for the guided style transfer its backward passes, ZeCon encoder passes and VGG / DINO calls
    (the styled pair's own cost, on top of the pair it styles). Colour matching alone is not listed."""
    cost_cols = [f"{c}_per_pair" for c in STYLE_COSTS]
    cols = ["method", "sampler", "steps", "nfe_per_pair", *cost_cols, "seconds_per_pair", "seconds_per_accepted_pair",
            "pairs", "accepted"]
    rows = [{c: m.get(c, 0.0 if c in cost_cols else None) for c in cols}
            for m in summary["methods"] if STYLED_METHODS.get(m["method"], ("",))[0] != "mkl"]
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values(["nfe_per_pair", "method"]).reset_index(drop=True)


def absent_table(summary: dict) -> pd.DataFrame:
    """Planned sets this run could not make, and why (e.g. Styled-Diff without its feature weights)."""
    return pd.DataFrame(summary.get("absent", []), columns=["method", "reason"])


def rejection_table(summary: dict) -> pd.DataFrame:
    """Why pairs were rejected: one row per method and reason."""
    rows = [{"method": m["method"], "reason": reason, "pairs": n}
            for m in summary["methods"] for reason, n in m["reasons"].items()]
    return pd.DataFrame(rows, columns=["method", "reason", "pairs"])


def verify_regeneration(run: Run, method: str, pair_id: str | None = None) -> dict:
    """Redraw one written pair (default: the first) and compare it with the files on disk."""
    records = read_records(set_dir(run, method))
    if records.empty:
        raise StageError(f"{set_dir(run, method)}: no pairs to regenerate")
    rec = records.iloc[0] if pair_id is None else records.set_index("id", drop=False).loc[pair_id]
    image, mask = read_pair(set_dir(run, method), rec.to_dict())
    again = regenerate(run, method, rec["id"])
    return {"method": method, "pair_id": rec["id"], "seed": int(rec["seed"]), "accepted": bool(rec["accepted"]),
            "identical": bool(np.array_equal(again["image"], image) and np.array_equal(again["mask"], mask))}


def regenerate(run: Run, method: str, pair_id: str) -> dict:
    """Redraw one pair exactly as the stage made it: {'image', 'mask', 'raw_mask', 'record'}.

    Its whole batch is recomputed (batches are fixed by the plan), so even the floating-point
    results of a batched UNet are the same.
    """
    ctx = _Context(run)
    plan_fn, compute = _kind(method)
    plan = plan_fn(ctx, method)
    try:
        batch, i = plan.batch_of(pair_id)
    except KeyError:
        raise StageError(f"pair '{pair_id}' is not planned for method '{method}'") from None
    with torch_threads(ctx.cfg.run.torch_threads, ctx.device):
        generated = compute(ctx, batch, plan.info["params"])[i]
    record, mask = record_of(batch[i], generated, ctx.post, plan.info["params"])
    return {"image": generated[0], "mask": mask, "raw_mask": generated[1], "record": record}
