"""Stage 05: GAN baselines in the diffusion models' harness, and what each generator costs.

The paper claims that diffusion-generated labelled data beats GAN-generated data at lower training
compute. This stage makes that comparison on THIS run's data, resolution and metrics:

- ``train`` - a 4-channel (RGB + mask) GAN (hinge loss, spectral norm, optional R1, DiffAugment, EMA)
  trained on the same training pairs as the DDPMs with the same accelerate harness; 1,000 pairs
  (``gan.n_samples``) written to ``synthetic/gan/``;
- ``singan`` - SinGAN-Seg: one multi-scale 4-channel GAN per source image (``gan.singan_images``
  seeded training images), ``gan.singan_samples_per_image`` pairs each in ``synthetic/singan/``
  (``source_id`` set, so stage 06's mixing rule can pair them with their real image);
- ``published`` - :func:`import_singan_seg` for the authors' published 10k SinGAN-Seg set;
- ``compute`` - measured seconds of every generator of the run (DDPMs, GAN, SinGAN-Seg, sampling,
  styling) and the extrapolated cost of the paper-scale run;
- FID (mean ± sd over independent sets) and MS-SSIM with stage 04's functions and protocol.

:func:`run_stage` is the stage entry point (cached by ``Run.cached``). Sets are written by the one loop
of :mod:`polyplib.synthetic.generate`, in the layout, post-processing and acceptance rule of every set.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from ..errors import StageError
from ..metrics.fid import TOO_FEW
from ..runs import Run, atomic_write_json
from ..synthetic.catalogue import DIFFUSION_SETS as DIFFUSION, GAN_SETS as OWN, METHOD_LABELS, set_dir
from ..synthetic.folder import read_records

#: The compared synthetic sets, in the paper's table order.
COMPARED = OWN + DIFFUSION
LABELS = {**METHOD_LABELS, "real": "Real (disjoint halves; MS-SSIM: training set)",
          "real-test": "Real held-out test vs train"}
TABLES = ("05_comparison", "05_compute", "05_training", "05_synthetic_sets", "05_fid", "05_msssim",
          "05_label_fidelity")


# ----------------------------------------------------------------------------- metrics
def _stage04_tables(run: Run) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Stage 04's FID and MS-SSIM tables when stage 04 is finished for this configuration (same sets,
    same protocol), else None."""
    from .. import stages

    if not any(s.id == "04" for s in stages.STAGES) or not run.stage("04").is_done():
        return None
    try:
        return run.load_table("04_fid"), run.load_table("04_msssim")
    except StageError:
        return None


def planned_sets(cfg) -> list[str]:
    """The GAN-made sets this configuration produces."""
    return ["gan"] + (["singan"] if cfg.gan.singan_images > 0 else []) + \
        (["singan-published"] if cfg.gan.singan_published else [])


def metric_tables(run: Run, own: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """FID/KID and MS-SSIM of the compared sets with stage 04's functions and protocol.

    The GAN-made sets are always measured here; the diffusion sets are taken from stage 04's tables
    when stage 04 is finished for this configuration (the same numbers), else measured here."""
    from ..features.inception import InceptionFeatures
    from ..features.inception_weights import resolve_fid_weights
    from ..metrics.stage import discover_sets, fid_tables, msssim_table

    m = run.cfg.metrics
    weights = resolve_fid_weights(m.fid_weights, m.cache_dir)   # no weights: StageError, nothing computed
    extractor = InceptionFeatures(weights, device=run.cfg.run.device, resize=m.fid_resize)
    reuse = _stage04_tables(run)
    wanted = list(own if own is not None else planned_sets(run.cfg)) + ([] if reuse is not None else list(DIFFUSION))
    sets = {k: v for k, v in discover_sets(run, m.fid_sets, wanted).items() if k in wanted}
    fid, _, cache = fid_tables(run, extractor, sets)
    ms, window = msssim_table(run, sets)
    fid["computed_in"] = ms["computed_in"] = "stage 05"
    if reuse is not None:
        f4, m4 = reuse
        fid = pd.concat([fid, f4[f4["method"].isin(DIFFUSION)].assign(computed_in="stage 04 (results/04_fid.csv)")],
                        ignore_index=True)
        ms = pd.concat([ms, m4[m4["method"].isin(DIFFUSION)].assign(computed_in="stage 04 (results/04_msssim.csv)")],
                       ignore_index=True)
    settings = {"weights": weights.record(), "features": extractor.settings(), "fid_sets": m.fid_sets,
                "msssim_window": window, "real_features_cache": cache, "min_images": m.min_images,
                "diffusion_sets_from": "stage 04" if reuse is not None else "stage 05"}
    return fid, ms, settings


# ----------------------------------------------------------------------------- the comparison
def _fmt(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.1f} ± {sd:.1f}" if np.isfinite(sd) else f"{mean:.1f} (one set)"


def comparison_table(fid: pd.DataFrame, msssim: pd.DataFrame, compute: pd.DataFrame) -> pd.DataFrame:
    """The headline table: per method this run's FID (mean ± sd), MS-SSIM, measured training and
    generation seconds, the extrapolated paper-scale hours, and the paper's numbers in separate
    columns labelled as the paper's (reference only: other data, resolution and sample sizes)."""
    from .compute import method_costs

    f = fid.set_index("method") if len(fid) else pd.DataFrame().rename_axis("method")
    s = msssim.set_index("method") if len(msssim) else pd.DataFrame().rename_axis("method")
    costs = method_costs(compute).set_index("method")
    rows = []
    for method in ("real", "real-test") + COMPARED:
        fkey = "real-halves" if method == "real" else method
        fr = f.loc[fkey] if fkey in f.index else None
        sr = s.loc[method] if method in s.index else None
        cr = costs.loc[method] if method in costs.index else None
        get = lambda r, c: (r[c] if r is not None and c in r and pd.notna(r[c]) else np.nan)  # noqa: E731
        status = fr["status"] if fr is not None and "status" in fr else "absent"
        fid_mean, fid_sd = float(get(fr, "fid_mean")), float(get(fr, "fid_sd"))
        refusal = (fr["refusal"] if "refusal" in fr and isinstance(fr["refusal"], str) else TOO_FEW) \
            if status == TOO_FEW else ""       # below metrics.min_images: no FID, no KID, the count instead
        rows.append({
            "method": method, "status": status,
            "label": fr["label"] if fr is not None and method in COMPARED else LABELS.get(method, method),
            "n_sets": int(get(fr, "n_sets")) if np.isfinite(get(fr, "n_sets")) else 0,
            "n_images": get(fr, "n_images") if fr is not None else "",
            "fid (mean ± sd)": refusal or _fmt(fid_mean, fid_sd), "fid_mean": fid_mean, "fid_sd": fid_sd,
            "fid_resize": fr["resize"] if fr is not None and isinstance(fr.get("resize"), str) else "",
            "kid_mean": float(get(fr, "kid_mean")), "refusal": refusal,
            "msssim_mean": float(get(sr, "msssim_mean")), "msssim_sd": float(get(sr, "msssim_sd")),
            "train_s_measured": float(get(cr, "train_s_measured")),
            "generate_s_measured": float(get(cr, "generate_s_measured")),
            "device_measured": cr["device_measured"] if cr is not None else "",
            "paper_scale_h_extrapolated": float(get(cr, "paper_scale_h_extrapolated")),
            "extrapolation": cr["extrapolation"] if cr is not None else "",
            "fid_paper_reference": float(get(fr, "paper_fid")),      # like for like: see paper.like_for_like
            "msssim_paper_reference": float(get(sr, "paper_msssim")),
            "metrics_from": fr["computed_in"] if fr is not None and "computed_in" in fr else "",
            "note": (fr["note"] if fr is not None and "note" in fr and isinstance(fr["note"], str) else ""),
        })
    table = pd.DataFrame(rows)
    table.attrs["columns"] = {
        "fid_mean / fid_sd / msssim_mean": "this run, stage 04's protocol (FID vs the real training images)",
        "refusal": "why a set has no FID or KID: fewer images than metrics.min_images (the set or its real reference)",
        "train_s_measured / generate_s_measured": "measured wall-clock seconds on this run (device_measured)",
        "paper_scale_h_extrapolated": "extrapolated, not measured: see 05_compute (formula per row)",
        "fid_paper_reference / msssim_paper_reference": "the paper's numbers (draft), reference only"}
    return table


# ----------------------------------------------------------------------------- the stage
def _compute(run: Run, force: bool) -> dict[str, pd.DataFrame]:
    from ..training import resolve_device, torch_threads

    with torch_threads(run.cfg.run.torch_threads, resolve_device(run.cfg.run.device)):
        return _compute_tables(run, force)


def _compute_tables(run: Run, force: bool) -> dict[str, pd.DataFrame]:
    from dataclasses import asdict

    from ..metrics.fidelity import label_fidelity
    from . import singan as singan_mod
    from .compute import compute_table
    from .train import sample_gan, train_gan

    cfg = run.cfg
    result = train_gan(run, force=force)
    print(f"GAN: {result.status}, {result.steps} steps, {result.seconds:.1f} s measured ({result.device})")
    sets = [sample_gan(run, force=force)]
    singan_rows = singan_mod.train_all(run, force=force)
    if len(singan_rows):
        sets.append(singan_mod.sample_all(run, force=force))
    else:   # none planned: a folder left by another configuration must not be measured
        shutil.rmtree(set_dir(run, "singan"), ignore_errors=True)
    if cfg.gan.singan_published:
        from .published import METHOD, import_singan_seg as _import

        ps = _import(cfg.gan.singan_published, run)
        df = read_records(ps.folder)
        sets.append({"method": METHOD, "folder": str(ps.folder.relative_to(run.dir)), "pairs": int(len(df)),
                     "accepted": int(df["accepted"].astype(str).eq("True").sum()),
                     "rejected": int(df["accepted"].astype(str).ne("True").sum()), "seconds_per_pair": np.nan,
                     "device": "published set (not generated here)"})
    training = pd.DataFrame([{"model": "gan", "kind": "4-channel GAN", "images_or_pairs": result.pairs,
                              "steps_or_iterations": result.steps, "status": result.status,
                              "seconds": result.seconds, "device": result.device, "path": result.path}]
                            + [{"model": r.model, "kind": f"SinGAN-Seg ({r.source_id})", "images_or_pairs": 1,
                                "steps_or_iterations": r.scales * r.iters_per_scale, "status": r.status,
                                "seconds": r.seconds, "device": r.device, "path": r.path}
                               for r in singan_rows.itertuples()])
    synthetic = pd.DataFrame([{k: v for k, v in s.items() if k not in ("reasons", "models")} for s in sets])
    compute = compute_table(run)
    fid, msssim, settings = metric_tables(run, planned_sets(cfg))
    comparison = comparison_table(fid, msssim, compute)
    fidelity = label_fidelity(run, {r.method: r.label for r in fid.itertuples()
                                    if r.method in planned_sets(cfg) and r.status != "absent"}, name="fidelity_gan")
    atomic_write_json(run.path("metrics", "gan_comparison.json"), {
        "settings": settings, "gan": asdict(result), "column_meaning": comparison.attrs["columns"]})
    tables = dict(zip(TABLES, (comparison, compute, training, synthetic, fid, msssim, fidelity)))
    run.save_tables(tables, stage="05")
    return tables



def run_stage(run: Run, force: bool = False) -> dict[str, pd.DataFrame]:
    """Stage 05 entry point: train and sample the GAN and SinGAN-Seg, account for every generator's
    compute, measure FID / MS-SSIM; tables ``05_comparison``, ``05_compute``, ``05_training``,
    ``05_synthetic_sets``, ``05_fid``, ``05_msssim``."""
    return run.cached("05", lambda: _compute(run, force), lambda: run.load_tables(TABLES), force)


def gan_summary(run: Run) -> dict:
    """The GAN set's summary (``synthetic/gan/summary.json``)."""
    return json.loads((set_dir(run, "gan") / "summary.json").read_text())
