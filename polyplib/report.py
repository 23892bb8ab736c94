"""The study report: one page that puts this run's key tables beside the paper's numbers.

``run_all.py`` calls :func:`write_report` at the end of every run. The report holds the tables of
stages 04-07 exactly as the notebooks display them (the same display functions read the same saved
tables, so every number matches the executed notebooks character for character), the main figures,
the run's metadata (profile, seeds, versions, device, durations) and, topic by topic, how the run
differs from the paper and where it is equal (:mod:`polyplib.differences`, computed from the
configuration against :mod:`polyplib.paper`, never written by hand). A stage that has not run is named as such; nothing is
filled in for it.

Files: ``runs/<profile>/report.md`` and ``report.html`` (figures linked from ``figures/``).
"""
from __future__ import annotations

import html
import importlib
import json
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from .runs import Run, atomic_write_text

@dataclass
class Section:
    """One stage's part of the report: tables (name, caption, how to display) and figures."""

    stage: str
    title: str
    intro: str
    #: (table, caption, how it is shown: a function, "module:function" imported when shown, or None: as saved)
    tables: list[tuple[str, str, Callable[[pd.DataFrame], pd.DataFrame] | str | None]]
    figures: list[str] = field(default_factory=list)


def _gate(df: pd.DataFrame) -> pd.DataFrame:
    """06_filter, or one line saying that no run used the gate (the paper's way)."""
    return df if len(df) else pd.DataFrame({"quality gate": ["not used: every synthetic pair was used, as in the "
                                                              "paper (`segmentation.synthetic_filter` = [None])"]})


SECTIONS = [
    Section("04", "Fidelity and diversity (notebook 04)",
            "FID and KID against the real training images (mean ± sd over independent sample sets), as the paper "
            "measures them, and against the held-out real test images (which no model saw: the columns that answer "
            "'does it look real', since an inpainted frame is mostly its own training frame), and "
            "MS-SSIM within each set (lower = more diverse); the paper's values in their own column. A set (or real "
            "reference) with fewer images than `metrics.min_images` has no FID, KID or MS-SSIM: its row says 'too few "
            "images' with its n.",
            [("04_fid", "FID / KID (paper Table 1 format)", "polyplib.metrics.figures:fid_display"),
             ("04_msssim", "MS-SSIM within each set (paper Table 2 format)", "polyplib.metrics.figures:msssim_display"),
             ("04_label_fidelity", "Label fidelity (IoU of each generated mask with a real-only segmenter's "
              "prediction; real test images as reference) and the seam check (accuracy of a classifier telling "
              "generated from real polyp regions; 0.5 = indistinguishable), with 95 % intervals",
              "polyplib.metrics.fidelity:fidelity_display"),
             ("04_memorisation", "Near-copies of real images: share of pairs whose polyp region (or whole frame, or "
              "Inception features) is closer to a training image than the 1st percentile of the training images' "
              "distances to each other, and held-out test images found in the set; the test images themselves "
              "as the reference", "polyplib.metrics.copies:memorisation_display"),
             ("04_budget", "Inpainting samplers, quality against cost (`sampling.budget_study`): KID x 1000 of the "
              "redrawn regions with 95 % bootstrap intervals, the paired difference to the authors' 960-call "
              "schedule, UNet calls and seconds per pair", "polyplib.metrics.figures:budget_display")],
            ["04_fid", "04_msssim", "04_label_fidelity", "04_memorisation", "04_budget"]),
    Section("05", "GANs versus diffusion (notebook 05)",
            "Every generator trained on this run's data at this run's resolution; compute measured on this "
            "run's device, paper-scale cost extrapolated (labelled as such).",
            [("05_comparison", "FID, MS-SSIM and compute per method", "polyplib.gan.figures:comparison_display"),
             ("05_label_fidelity", "Label fidelity and the seam check of the GAN-made sets (as in notebook 04)",
              "polyplib.metrics.fidelity:fidelity_display")],
            ["05_fid_vs_compute", "05_label_fidelity"]),
    Section("06", "Segmentation (notebook 06)",
            "Mean IoU / Dice on the real test images with bootstrap 95 % intervals; the paper's IoU beside them. "
            "Validation split that picked each checkpoint: the `validation` column of Table 3 for its rows "
            "(synthetic-only runs: `segmentation.synthetic_validation`); real validation images for every "
            "run of Tables 4-6. † marks a number from a run whose best epoch was its last (still improving "
            "when training stopped: more epochs might have helped). The last table tests each synthetic-only "
            "run with the checkpoint picked on either validation split.",
            [("06_table3", "Table 3: synthetic data only (IoU)", None),
             ("06_table4", "Table 4: real plus synthetic, with and without Control augmentation, each way of using "
              "the pairs that `segmentation.synthetic_schedule` and `synthetic_filter` list (IoU; ΔIoU: paired "
              "difference to real only on the same test images)", None),
             ("06_filter", "The quality gate: synthetic pairs kept and dropped per set and judge-IoU threshold",
              _gate),
             ("06_table5", "Table 5: small real sets (IoU)", None),
             ("06_table6", "Table 6: small real sets (Dice)", None),
             ("06_validation", "Synthetic-only runs: test IoU with the checkpoint picked on synthetic or on real "
              "validation images (best epochs; † = the last epoch run)", None)],
            ["06_iou_by_regime"]),
    Section("07", "Transfer tests (notebook 07)",
            "The models of notebook 06, unchanged, on every other prepared data set; ΔIoU is the paired "
            "difference to real-only training on the same images.",
            [("07_transfer", "In-domain vs out-of-domain IoU and the gain over real-only", None)],
            ["07_transfer"]),
]


# ----------------------------------------------------------------------------- content
#: The report's comparison groups, in order, with their headings.
GROUPS = (("differs", "Differences from the paper"), ("equal", "Equal to the paper"),
          ("extra", "Added by this study (no counterpart in the paper)"), ("note", "Notes"))


def comparison(run: Run) -> dict[str, list[str]]:
    """This run against the paper, topic by topic (:mod:`polyplib.differences`), grouped by status."""
    from .differences import Context, compare

    out: dict[str, list[str]] = {status: [] for status, _ in GROUPS}
    for line in compare(run.cfg, Context.of(run)):
        out[line.status].append(f"**{line.topic}:** {line.text}")
    return out


def differences(run: Run) -> list[str]:
    """The lines of the topics where this run differs from the paper."""
    return comparison(run)["differs"]


def _meta(run: Run) -> dict:
    try:
        return json.loads(run.path("run_meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _table(run: Run, name: str, show) -> pd.DataFrame | None:
    if not run.path("results", f"{name}.csv").exists():
        return None
    df = run.load_table(name)
    if isinstance(show, str):      # the stage's own display function, imported only when a report shows it
        module, function = show.split(":")
        show = getattr(importlib.import_module(module), function)
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
           "## This run", *_metadata_lines(run), ""]
    groups = comparison(run)
    for status, heading in GROUPS:
        lines = groups[status]
        out += [f"## {heading} ({len(lines)})" if status in ("differs", "equal") else f"## {heading}", "",
                *[f"- {d}" for d in lines], ""]
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
            *[f"<h2>{e(heading)}</h2><ul>" + "".join(f"<li>{e(d).replace('**', '')}</li>" for d in lines) + "</ul>"
              for (_, heading), lines in zip(GROUPS, comparison(run).values())]]
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
