"""What did each generator cost on this run, and what would the paper-scale run cost?

Measured (this run, its device): the wall-clock training seconds of every DDPM (per cluster and
Full; ``models/ddpm/<name>/train_state.json`` and ``loss.csv``), of the GAN and of every SinGAN-Seg
model (one per source image), and the seconds of every synthetic set's generation: RePaint sampling
and styling from stage 03's ``synthetic/summary.json``, GAN and SinGAN-Seg sampling from this stage.

Extrapolated (labelled as such, never mixed with measured numbers): this run's measured cost per unit
of work times the work of the paper-scale run, where the paper-scale run is the ``paper`` profile
(the paper's settings) and SinGAN-Seg's published protocol:

* DDPM: seconds per training image x (paper steps x paper batch) x paper models
  (``clustering.k`` cluster models + the Full model; 20 + 1 x 110,000 iterations at batch 1);
* GAN: seconds per training image x ``gan.max_steps`` x ``gan.batch_size`` of the paper profile;
* SinGAN-Seg: seconds per scale-iteration x (scales x iterations per scale of the paper profile)
  x 1,000 models (SinGAN-Seg trained one model per HyperKvasir polyp image);
* RePaint sampling: seconds per UNet evaluation x UNet evaluations per pair at the paper's RePaint
  settings x pairs (training images x samples per image); styling: seconds per pair x pairs;
  GAN / SinGAN-Seg sampling: seconds per pair x pairs (1,000 and 10,000).

These extrapolations keep THIS run's model sizes, resolution and device: they ignore the speed-up of
a GPU and the cost of the paper's larger networks at 256 px (the paper's UNet has 256 base channels).
They answer "what would the paper's schedule cost with these models here", not "what did the paper
spend"; the paper's own statement (each DDPM <= 16 h on one V100) is given in a separate reference
column. Times of DDPMs trained before ``seconds_cumulative`` existed: a resumed model's
``train_state.json`` holds only its last session, so earlier sessions are added from ``loss.csv``
(its ``elapsed_s`` restarts at every resume; steps lost to a kill are not counted).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import paper
from ..synthetic.catalogue import STYLED_METHODS, set_dir
from ..runs import Run
from ..training import read_json

#: SinGAN-Seg trained one model per real polyp image of HyperKvasir and drew 10 samples from each.
SINGAN_SEG_IMAGES = paper.SINGAN_SEG_SOURCE_IMAGES.value
SINGAN_SEG_SAMPLES_PER_IMAGE = paper.SINGAN_SEG_SAMPLES_PER_IMAGE.value
#: What the paper states about its own compute (reference only; never used in a computation).
PAPER_REPORTED = {"ddpm-cluster": f"paper: {paper.COMPUTE_REPORTED['ddpm'].value}, per cluster model",
                  "ddpm-full": f"paper: {paper.COMPUTE_REPORTED['ddpm'].value}",
                  "guided": f"paper: {paper.COMPUTE_REPORTED['guided'].value}"}
EXTRAPOLATION_NOTE = ("extrapolated: this run's measured seconds per unit x the paper-scale work; keeps this run's "
                      "model sizes, resolution and device (ignores GPU speed-up and the paper's larger models)")
COLUMNS = ["item", "generator", "kind", "models", "unit", "work_per_model", "measured_s", "s_per_unit", "device",
           "paper_models", "paper_work_per_model", "extrapolated_s", "extrapolated_h", "formula", "paper_reported",
           "note"]


def paper_config():
    """The paper-scale settings (the ``paper`` profile)."""
    from ..config import load_config

    return load_config("paper")


def training_seconds(state: dict, loss: pd.DataFrame | None) -> tuple[float, int]:
    """(measured training seconds over all sessions, number of sessions) of one model folder.

    ``seconds_cumulative``: ``state["seconds"]`` already covers every session. Otherwise (the DDPM
    trainer) it covers the last session only, and the earlier sessions are the ends of the runs of
    ``loss.csv``'s ``elapsed_s`` that restart at a resume."""
    seconds = float(state.get("seconds", 0.0))
    if state.get("seconds_cumulative") or loss is None or "elapsed_s" not in loss or len(loss) < 2:
        return seconds, int(state.get("sessions", 1))
    elapsed = loss["elapsed_s"].to_numpy(float)
    restarts = np.flatnonzero(np.diff(elapsed) < 0)           # a drop: a new session began at the next row
    earlier = float(sum(elapsed[i] for i in restarts))       # each earlier session ends at the row before a drop
    return earlier + seconds, len(restarts) + 1


def _device_text(info: dict | None) -> str | None:
    if not info:
        return None
    if info.get("gpus"):
        return f"cuda ({', '.join(info['gpus'])})"
    return f"cpu ({info.get('processor') or '?'}, {info.get('torch_threads', '?')} torch threads, " \
           f"{info.get('cpu_count', '?')} cores)"


def recorded_device(run: Run, stage: str) -> str:
    """The device a stage ran on, as recorded in its results' provenance, else run_meta.json."""
    for path in sorted(run.path("results").glob("*.json")) if run.path("results").is_dir() else []:
        prov = (read_json(path) or {}).get("provenance") or {}
        if prov.get("stage") == stage and _device_text(prov.get("device")):
            return _device_text(prov["device"]) + f" (from {path.name})"
    meta = read_json(run.path("run_meta.json"))
    if meta and _device_text(meta.get("device")):
        return _device_text(meta["device"]) + " (from run_meta.json)"
    return "not recorded"


# ----------------------------------------------------------------------------- per model
def current_ddpm_keys(run: Run) -> dict[str, list] | None:
    """Model name -> the training ids this configuration plans (from clusters.csv), or None when the
    run has no clusters.csv (then every finished model folder counts)."""
    path = run.path("clusters.csv")
    if not path.exists():
        return None
    from ..diffusion.train import planned_models

    clusters = pd.read_csv(path, dtype={"id": str})
    return dict(planned_models(run, clusters))


def ddpm_models(run: Run) -> pd.DataFrame:
    """One row per finished DDPM of this run's configuration: steps, training images, measured seconds.

    A folder left by another configuration (another ``clustering.k``, other ``ddpm.*``; its
    ``train_state.json`` key differs from the key this configuration gives its planned ids) is left out."""
    from ..diffusion.train import model_key

    rows = []
    device = None
    planned = current_ddpm_keys(run)
    for folder in sorted(p for p in run.path("models", "ddpm").glob("*") if p.is_dir()) \
            if run.path("models", "ddpm").is_dir() else []:
        state = read_json(folder / "train_state.json")
        if not (state and state.get("finished")):
            continue
        if planned is not None and (folder.name not in planned or state.get("key") != model_key(
                run.cfg, planned[folder.name], int(state.get("processes", 1)))):
            continue
        loss = pd.read_csv(folder / "loss.csv") if (folder / "loss.csv").exists() else None
        seconds, sessions = training_seconds(state, loss)
        steps = int(state.get("steps", 0))
        if loss is not None and "images" in loss and len(loss):
            images = int(loss["images"].iloc[-1])
        else:
            images = steps * _batch(folder)
        if device is None:
            device = state.get("device") or recorded_device(run, "02")
        rows.append({"model": folder.name, "kind": "full" if folder.name == "full" else "cluster",
                     "pairs": state.get("pairs"), "steps": steps, "images": images, "seconds": round(seconds, 3),
                     "sessions": sessions, "seconds_per_step": seconds / steps if steps else np.nan,
                     "seconds_per_image": seconds / images if images else np.nan,
                     "device": state.get("device") or device})
    return pd.DataFrame(rows, columns=["model", "kind", "pairs", "steps", "images", "seconds", "sessions",
                                       "seconds_per_step", "seconds_per_image", "device"])


def _batch(folder: Path) -> int:
    import yaml

    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        return int(cfg["ddpm"]["batch_size"]) * int(cfg["ddpm"].get("gradient_accumulation_steps", 1))
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return 1


def gan_model(run: Run) -> dict | None:
    state = read_json(run.path("models", "gan", "train_state.json"))
    if not (state and state.get("finished")):
        return None
    log = run.path("models", "gan", "loss.csv")
    seconds, sessions = training_seconds(state, pd.read_csv(log) if log.exists() else None)
    images = int(state.get("images", state["steps"] * state.get("batch_size", 1)))
    return {"steps": int(state["steps"]), "images": images,
            "seconds": seconds, "sessions": sessions, "device": state.get("device", "not recorded")}


def singan_models(run: Run) -> pd.DataFrame:
    """Finished SinGAN-Seg models trained with this configuration (their key matches)."""
    from .singan import model_key

    rows = []
    for path in sorted(run.path("models", "singan").glob("*/train_state.json")) \
            if run.path("models", "singan").is_dir() else []:
        s = read_json(path)
        if s and s.get("finished") and s.get("key") == model_key(run.cfg, s["source_id"]):
            rows.append({"model": f"singan-{s['file']}", "source_id": s["source_id"],
                         "iterations": int(s["scales"]) * int(s["iters_per_scale"]), "seconds": float(s["seconds"]),
                         "device": s.get("device", "not recorded")})
    return pd.DataFrame(rows, columns=["model", "source_id", "iterations", "seconds", "device"])


def sampling_methods(run: Run) -> tuple[list[dict], str]:
    """Stage 03's per-method summaries (``synthetic/summary.json``) and its device."""
    summary = read_json(set_dir(run) / "summary.json") or {}
    return list(summary.get("methods", [])), str(summary.get("device", "not recorded"))


# ----------------------------------------------------------------------------- the table
def _row(item, generator, kind, models, unit, work, measured, per_unit, device, p_models, p_work, formula,
         paper_reported="", note="") -> dict:
    extrapolated = per_unit * p_work * p_models if np.isfinite(per_unit) else np.nan
    return {"item": item, "generator": generator, "kind": kind, "models": models, "unit": unit,
            "work_per_model": work, "measured_s": round(float(measured), 3), "s_per_unit": per_unit,
            "device": device, "paper_models": p_models, "paper_work_per_model": p_work,
            "extrapolated_s": extrapolated, "extrapolated_h": extrapolated / 3600.0,
            "formula": formula.format(per_unit=per_unit, work=p_work, models=p_models),
            "paper_reported": paper_reported,
            "note": note}


def paper_repaint_evaluations(paper) -> int:
    """UNet evaluations per pair of one RePaint run at the paper's settings."""
    from ..sampling.repaint import count_evaluations

    s = paper.sampling
    return count_evaluations(s.steps, s.jump_length, s.jump_n_sample, s.skip_steps, s.start, s.sampler)


def compute_table(run: Run, paper=None) -> pd.DataFrame:
    """One row per generator and kind of work (train / sample / style): measured seconds on this run's
    device, and the paper-scale extrapolation with its formula (see the module docstring)."""
    paper = paper or paper_config()
    rows = []
    ddpm = ddpm_models(run)
    paper_clusters, paper_steps = paper.clustering.k, paper.ddpm.max_steps
    paper_batch = paper.ddpm.batch_size * paper.ddpm.gradient_accumulation_steps
    for kind, label, p_models in (("cluster", "DDPM per cluster", paper_clusters), ("full", "DDPM Full", 1)):
        part = ddpm[ddpm["kind"] == kind]
        if part.empty:
            continue
        per_image = float(part["seconds"].sum() / part["images"].sum())
        rows.append(_row(f"ddpm-{kind}", label, "train", len(part), "training image",
                         float(part["images"].mean()), part["seconds"].sum(), per_image, part["device"].iloc[0],
                         p_models, paper_steps * paper_batch,
                         "{per_unit:.4g} s/image x {work:,} images (" + f"{paper_steps:,} steps x batch {paper_batch}"
                         ") x {models} model(s)", PAPER_REPORTED[f"ddpm-{kind}"],
                         f"{len(part)} model(s), {int(part['steps'].sum()):,} steps in all, "
                         f"{int((part['sessions'] > 1).sum())} resumed"))
    gan = gan_model(run)
    if gan:
        g = paper.gan
        rows.append(_row("gan", "4-channel GAN", "train", 1, "training image", gan["images"], gan["seconds"],
                         gan["seconds"] / gan["images"] if gan["images"] else np.nan, gan["device"], 1,
                         g.max_steps * g.batch_size,
                         "{per_unit:.4g} s/image x {work:,} images (" + f"{g.max_steps:,} steps x batch {g.batch_size}"
                         ") x {models} model", "",
                         f"{gan['steps']:,} steps, {gan['sessions']} session(s); paper scale = the paper profile's "
                         "gan settings (the paper trains no such GAN: its GAN is SinGAN-Seg)"))
    sg = singan_models(run)
    if not sg.empty:
        g = paper.gan
        per_iter = float(sg["seconds"].sum() / sg["iterations"].sum())
        rows.append(_row("singan", "SinGAN-Seg (one model per image)", "train", len(sg), "scale-iteration",
                         float(sg["iterations"].mean()), sg["seconds"].sum(), per_iter, sg["device"].iloc[0],
                         SINGAN_SEG_IMAGES, g.singan_scales * g.singan_iters,
                         "{per_unit:.4g} s/iteration x {work:,} iterations (" + f"{g.singan_scales} scales x "
                         f"{g.singan_iters:,}) x " + "{models:,} images", "",
                         f"{len(sg)} image(s), {sg['seconds'].mean():.2f} s per image measured"))
    methods, device03 = sampling_methods(run)
    nfe_paper = paper_repaint_evaluations(paper)
    paper_pairs = paper.data.split.n_train * paper.sampling.samples_per_image
    for m in methods:
        name, pairs = m["method"], int(m.get("pairs", 0))
        if not pairs:
            continue
        measured = float(m.get("seconds_per_pair", 0.0)) * pairs
        if name in STYLED_METHODS:
            how = STYLED_METHODS[name][0]
            rows.append(_row(name, f"{'guided style transfer + colour match' if how == 'guided' else 'colour match'}"
                             f" ({name})", "style", 1, "pair", pairs, measured, measured / pairs, device03, 1,
                             paper_pairs, "{per_unit:.4g} s/pair x {work:,} pairs",
                             PAPER_REPORTED["guided"] if how == "guided" else "",
                             "" if how == "guided" else "not a paper step on its own (the last step of Styled-Diff)"))
        elif name in ("diff", "full-diff"):
            nfe = float(m.get("nfe_per_pair") or 0.0)
            rows.append(_row(name, f"RePaint sampling ({name})", "sample", 1, "UNet evaluation", nfe * pairs,
                             measured, measured / (nfe * pairs) if nfe else np.nan, device03, 1,
                             nfe_paper * paper_pairs,
                             "{per_unit:.4g} s/evaluation x {work:,} evaluations (" + f"{nfe_paper} per pair x "
                             f"{paper_pairs:,} pairs)", "", f"{pairs} pairs, {nfe:.0f} evaluations per pair here"))
    for name, label, p_pairs in (("gan", "GAN sampling", paper.gan.n_samples),
                                 ("singan", "SinGAN-Seg sampling", SINGAN_SEG_IMAGES * SINGAN_SEG_SAMPLES_PER_IMAGE)):
        s = read_json(set_dir(run, name) / "summary.json")
        if s and s.get("pairs"):
            rows.append(_row(f"{name}-sample", label, "sample", 1, "pair", s["pairs"], s["seconds_total"],
                             s["seconds_total"] / s["pairs"], s.get("device", "not recorded"), 1, p_pairs,
                             "{per_unit:.4g} s/pair x {work:,} pairs"))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["basis"] = "measured on this run; extrapolated_* = " + EXTRAPOLATION_NOTE
    return table


#: which compute rows make each compared synthetic set (train, then generation)
METHOD_COST = {
    "diff": (["ddpm-cluster"], ["diff"]),
    "full-diff": (["ddpm-full"], ["full-diff"]),
    "mkl-diff": (["ddpm-cluster"], ["diff", "mkl-diff"]),
    "mkl-full-diff": (["ddpm-full"], ["full-diff", "mkl-full-diff"]),
    "styled-diff": (["ddpm-cluster"], ["diff", "styled-diff"]),
    "full-styled-diff": (["ddpm-full"], ["full-diff", "full-styled-diff"]),
    "gan": (["gan"], ["gan-sample"]),
    "singan": (["singan"], ["singan-sample"]),
}


def method_costs(compute: pd.DataFrame) -> pd.DataFrame:
    """Per compared set: measured training and generation seconds, device, paper-scale hours (extrapolated)."""
    rows = []
    by_item = compute.set_index("item") if len(compute) else pd.DataFrame(columns=COLUMNS).set_index("item")
    for method, (train, make) in METHOD_COST.items():
        if not all(i in by_item.index for i in train):
            rows.append({"method": method, "train_s_measured": np.nan, "generate_s_measured": np.nan,
                         "device_measured": "", "paper_scale_h_extrapolated": np.nan,
                         "extrapolation": "generator not trained in this run"})
            continue
        made = [i for i in make if i in by_item.index]
        missing = [i for i in make if i not in by_item.index]
        parts = train + made
        row = {
            "method": method,
            "train_s_measured": float(by_item.loc[train, "measured_s"].sum()),
            "generate_s_measured": float(by_item.loc[made, "measured_s"].sum()) if not missing else np.nan,
            "device_measured": "; ".join(dict.fromkeys(by_item.loc[parts, "device"].astype(str))),
            "paper_scale_h_extrapolated": float(by_item.loc[parts, "extrapolated_h"].sum()) if not missing else np.nan,
            "extrapolation": " + ".join(f"[{i}] {by_item.at[i, 'formula']}" for i in parts),
        }
        if missing:
            row["extrapolation"] += f" (set not generated in this run: no {', '.join(missing)} record)"
        rows.append(row)
    return pd.DataFrame(rows)
