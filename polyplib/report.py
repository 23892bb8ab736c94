"""The study report: one page that puts this run's key tables beside the paper's numbers.

``run_all.py`` calls :func:`write_report` at the end of every run. The report holds the tables of
stages 04-07 exactly as the notebooks display them (the same display functions read the same saved
tables, so every number matches the executed notebooks character for character), the main figures,
the run's metadata (profile, seeds, versions, device, durations) and the differences from the paper
that a reader must keep in mind (data, resolution, training length, compute), worked out from the
configuration rather than written by hand. A stage that has not run is named as such; nothing is
filled in for it.

Files: ``runs/<profile>/report.md`` and ``report.html`` (figures linked from ``figures/``).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from .runs import Run, atomic_write_text

#: The paper's settings that the differences section compares this run with (STUDY.md).
PAPER = {"resolution": 256, "train_images": 348, "test_images": 200, "clusters": 20,
         "seg_epochs": 150, "seg_model": "unetplusplus / se_resnext50_32x4d", "fid_sets": 3,
         "samples_per_image": 3}


@dataclass
class Section:
    """One stage's part of the report: tables (name, caption, how to display) and figures."""

    stage: str
    title: str
    intro: str
    tables: list[tuple[str, str, Callable[[pd.DataFrame], pd.DataFrame] | None]]
    figures: list[str] = field(default_factory=list)


def _fid(df):
    from .metrics.figures import fid_display

    return fid_display(df)


def _msssim(df):
    from .metrics.figures import msssim_display

    return msssim_display(df)


def _comparison(df):
    from .gan.figures import comparison_display

    return comparison_display(df)


SECTIONS = [
    Section("04", "Fidelity and diversity (notebook 04)",
            "FID and KID against the real training images (mean ± sd over independent sample sets) and "
            "MS-SSIM within each set (lower = more diverse); the paper's values in their own column.",
            [("04_fid", "FID / KID (paper Table 1 format)", _fid),
             ("04_msssim", "MS-SSIM within each set (paper Table 2 format)", _msssim)],
            ["04_fid", "04_msssim"]),
    Section("05", "GANs versus diffusion (notebook 05)",
            "Every generator trained on this run's data at this run's resolution; compute measured on this "
            "run's device, paper-scale cost extrapolated (labelled as such).",
            [("05_comparison", "FID, MS-SSIM and compute per method", _comparison)],
            ["05_fid_vs_compute"]),
    Section("06", "Segmentation (notebook 06)",
            "Mean IoU / Dice on the real test images with bootstrap 95 % intervals; the paper's IoU beside them.",
            [("06_table3", "Table 3: synthetic data only (IoU)", None),
             ("06_table4", "Table 4: real plus synthetic, with and without Control augmentation (IoU)", None),
             ("06_table5", "Table 5: small real sets (IoU)", None),
             ("06_table6", "Table 6: small real sets (Dice)", None)],
            ["06_iou_by_regime"]),
    Section("07", "Transfer tests (notebook 07)",
            "The models of notebook 06, unchanged, on every other prepared data set; ΔIoU is the paired "
            "difference to real-only training on the same images.",
            [("07_transfer", "In-domain vs out-of-domain IoU and the gain over real-only", None)],
            ["07_transfer"]),
]


# ----------------------------------------------------------------------------- content
def differences(run: Run) -> list[str]:
    """What separates this run from the paper, read from the configuration and the run's tables."""
    cfg = run.cfg
    out = []
    if cfg.data.source == "phantom":
        out.append("**Data:** the embedded procedural phantom (domain A for training, domain B for transfer), not "
                   "Kvasir-SEG and the CVC sets. The phantom tests the code paths; its numbers say nothing "
                   "about real polyps.")
    if cfg.data.resolution != PAPER["resolution"]:
        out.append(f"**Resolution:** {cfg.data.resolution} px instead of {PAPER['resolution']} px (FID, MS-SSIM "
                   "and IoU all depend on it).")
    split = cfg.data.split
    if split.kind != "paper":
        out.append(f"**Split:** {split.kind} ({split.n_train} training / {split.n_test} test images) instead of the "
                   f"paper's {PAPER['train_images']} / {PAPER['test_images']}.")
    if cfg.clustering.k != PAPER["clusters"] or cfg.clustering.features != "inception":
        out.append(f"**Clusters:** K = {cfg.clustering.k} from {cfg.clustering.features} features "
                   f"(paper: K = {PAPER['clusters']} from Inception features).")
    out.extend(_model_and_sampling_differences(run))
    m = cfg.metrics
    if m.fid_sets != PAPER["fid_sets"]:
        out.append(f"**FID:** {m.fid_sets} sample set(s) per method (paper: {PAPER['fid_sets']}); with one set "
                   "there is no sd, and small sets inflate FID (see notebook 04).")
    s = cfg.segmentation
    seg_model = f"{'/'.join(s.models)} / {s.encoder}"
    if s.epochs != PAPER["seg_epochs"] or seg_model != PAPER["seg_model"]:
        out.append(f"**Segmentation:** {seg_model}, {s.epochs} epochs, seeds {s.seeds} (paper: "
                   f"{PAPER['seg_model']}, {PAPER['seg_epochs']} epochs, one seed).")
    meta = _meta(run)
    device = meta.get("device", {})
    gpus = device.get("gpus")
    out.append(f"**Compute:** {', '.join(gpus) if gpus else 'CPU only'} ({device.get('cpu_count', '?')} cores); "
               "the paper used GPUs, so measured seconds compare methods within this run, not with the paper.")
    out.append("**Paper numbers:** taken from the study's draft (STUDY.md); where the published version differs "
               "the reference columns may be off by its corrections.")
    return out


def _setting_list(found) -> str:
    return "; ".join(f"`{key}` = {value} (paper: {ref})" for key, value, ref, _ in found)


def _model_and_sampling_differences(run: Run) -> list[str]:
    """The DDPM (Table A.1) and RePaint (Table A.2) settings, each compared with ``paper.py``."""
    from . import paper
    from .sampling.repaint import count_calls, repaint_schedule

    cfg, out = run.cfg, []
    d, sm = cfg.ddpm, cfg.sampling
    if d.pretrained:
        out.append(f"**DDPMs:** converted checkpoints from `{d.pretrained}` (`ddpm.pretrained`), not trained in this "
                   "run; the DDPM settings below describe the configuration, not how those models were trained.")
    training_keys = ("ddpm.max_steps", "ddpm.batch_size", "ddpm.learning_rate", "ddpm.mixed_precision")
    model = {k: f for k, f in paper.DDPM.items() if k.startswith("ddpm.") and k not in training_keys}
    found = paper.differences(cfg, model)
    out.append("**DDPM model:** " + ("the authors' guided-diffusion UNet and variance, equal to Table A.1 "
                                     f"({len(model)} settings)." if not found else
                                     f"differs from Table A.1 in {len(found)} of {len(model)} settings: "
                                     f"{_setting_list(found)}."))
    found = paper.differences(cfg, {k: paper.DDPM[k] for k in training_keys})
    out.append("**DDPM training:** " + ("equal to Table A.1 (110k steps of batch 1, lr 1e-4, fp16)." if not found
                                        else _setting_list(found) + "."))
    calls, renoise = count_calls(repaint_schedule(sm.steps, sm.jump_length, sm.jump_n_sample, sm.start, sm.skip_steps))
    found = paper.differences(cfg, {k: f for k, f in paper.SAMPLING.items()
                                    if not (k == "sampling.skip_steps" and sm.start == "noise")})
    out.append(f"**RePaint:** starts from {'pure noise' if sm.start == 'noise' else 'the forward-noised real pair'}, "
               f"{calls} UNet calls and {renoise} re-noising steps per pair (the authors: "
               f"{paper.REPAINT_CALLS_PER_PAIR.value} and {paper.REPAINT_RENOISE_STEPS_PER_PAIR.value}); "
               + ("every setting equal to Table A.2." if not found else _setting_list(found) + "."))
    out.append(_styling_difference(run))
    return out


def _styling_difference(run: Run) -> str:
    """Styled-Diff (Table A.3): made as the authors made it, made differently, or absent and why."""
    from . import paper
    from .sampling import absent_methods

    st = run.cfg.sampling.style
    absent = absent_methods(run)
    extra = " `mkl-diff` (colour matching alone) is an extra set, not a paper method." if st.mkl_only else ""
    if not st.guided:
        return ("**Styling:** no Styled-Diff in this run (`sampling.style.guided=false`); the paper's Styled-Diff "
                "is a guided style transfer, then MKL colour matching." + extra)
    if "styled-diff" in absent or "full-styled-diff" in absent:
        return f"**Styling:** Styled-Diff absent: {next(iter(absent.values()))}. Nothing is reported under its name." \
            + extra
    found = paper.differences(run.cfg, paper.STYLE)
    return ("**Styling:** Styled-Diff by the authors' guided style transfer, then MKL colour matching; "
            + (f"every setting equal to Table A.3 ({len(paper.STYLE)} settings)." if not found
               else _setting_list(found) + ".") + extra)


def _meta(run: Run) -> dict:
    try:
        return json.loads(run.path("run_meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _table(run: Run, name: str, show) -> pd.DataFrame | None:
    if not run.path("results", f"{name}.csv").exists():
        return None
    df = run.load_table(name)
    df = show(df) if show else df
    return df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df


def collect(run: Run) -> list[dict]:
    """Per section: whether its stage is done, its displayed tables and its figure files."""
    out = []
    for sec in SECTIONS:
        try:
            done = run.stage(sec.stage).is_done()
        except KeyError:
            done = False
        tables = [(caption, _table(run, name, show)) for name, caption, show in sec.tables] if done else []
        figures = [f for f in sec.figures if run.path("figures", f"{f}.png").exists()] if done else []
        out.append({"section": sec, "done": done, "tables": tables, "figures": figures})
    return out


# ----------------------------------------------------------------------------- rendering
def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table; cell text exactly as pandas gives it (str of each value)."""
    if df is None or df.empty:
        return "_(empty table)_"
    esc = lambda v: _cell(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _metadata_lines(run: Run) -> list[str]:
    meta = _meta(run)
    versions = meta.get("versions", {})
    git = meta.get("git") or {}
    lines = [f"- profile `{run.cfg.profile}`, run folder `{run.dir}`",
             f"- started {meta.get('started', '?')}, git {git.get('commit', '?')}"
             + (" (uncommitted changes)" if git.get("dirty") else ""),
             "- seeds: data split {}, DDPM {}, sampling {}, metrics {}, GAN {}, segmentation {}".format(
                 run.cfg.data.split.seed, run.cfg.ddpm.seed, run.cfg.sampling.seed, run.cfg.metrics.seed,
                 run.cfg.gan.seed, run.cfg.segmentation.seeds),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                         if k in ("python", "polyplib", "torch", "diffusers", "accelerate",
                                                  "segmentation-models-pytorch", "torch-fidelity") and v)]
    from .stages import STAGES

    last = {s["stage"]: s for s in meta.get("stages", [])}
    states = []
    for stage in STAGES:
        done = run.stage(stage.id).is_done()
        text = f"{stage.id} {'done' if done else 'not run'}"
        if stage.id in last:
            text += f" ({last[stage.id]['status']} in the last run_all call, {last[stage.id]['seconds']:.0f} s)"
        states.append(text)
    lines.append("- stages: " + "; ".join(states))
    return lines


def render_markdown(run: Run, parts: list[dict]) -> str:
    out = [f"# Study report — profile `{run.cfg.profile}`", "",
           "Synthetic labelled polyp images with diffusion models (Saragih, Hibi, Tyrrell, IJCARS 2024): this "
           "run's numbers beside the paper's. Every number below was computed by this run and is the same "
           "table its notebook shows; the paper's numbers are in the columns marked *paper*.", "",
           "## This run", *_metadata_lines(run), "", "## Differences from the paper", ""]
    out += [f"- {d}" for d in differences(run)]
    for part in parts:
        sec = part["section"]
        out += ["", f"## {sec.title}", ""]
        if not part["done"]:
            out.append(f"_Stage {sec.stage} has not finished in this run: no numbers are reported for it._")
            continue
        out += [sec.intro, ""]
        for caption, table in part["tables"]:
            out += [f"**{caption}**", "", markdown_table(table) if table is not None else "_(not written)_", ""]
        out += [f"![{f}](figures/{f}.png)" for f in part["figures"]]
    return "\n".join(out).rstrip() + "\n"


def render_html(run: Run, parts: list[dict]) -> str:
    e = html.escape
    body = [f"<h1>Study report — profile <code>{e(run.cfg.profile)}</code></h1>",
            "<p>This run's numbers beside the paper's (columns marked <em>paper</em>). Every number was "
            "computed by this run and is the table its notebook shows.</p>",
            "<h2>This run</h2><ul>" + "".join(f"<li>{e(x[2:])}</li>" for x in _metadata_lines(run)) + "</ul>",
            "<h2>Differences from the paper</h2><ul>"
            + "".join(f"<li>{e(d).replace('**', '')}</li>" for d in differences(run)) + "</ul>"]
    for part in parts:
        sec = part["section"]
        body.append(f"<h2>{e(sec.title)}</h2>")
        if not part["done"]:
            body.append(f"<p><em>Stage {sec.stage} has not finished in this run: no numbers are reported.</em></p>")
            continue
        body.append(f"<p>{e(sec.intro)}</p>")
        for caption, table in part["tables"]:
            body.append(f"<h3>{e(caption)}</h3>")
            body.append(table.map(_cell).to_html(index=False, escape=True, border=0)
                        if table is not None and not table.empty else "<p>(empty)</p>")
        body += [f'<figure><img src="figures/{e(f)}.png" alt="{e(f)}" style="max-width:100%"></figure>'
                 for f in part["figures"]]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.5em}"
             "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Study report — {e(run.cfg.profile)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run: Run) -> dict[str, str]:
    """Write report.md and report.html into the run folder (atomically); return their paths."""
    parts = collect(run)
    md, page = run.path("report.md"), run.path("report.html")
    atomic_write_text(md, render_markdown(run, parts))
    atomic_write_text(page, render_html(run, parts))
    return {"markdown": str(md), "html": str(page)}
