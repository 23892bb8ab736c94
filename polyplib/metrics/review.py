"""Expert review kit: a blinded, shuffled set of real and synthetic pairs, and its scorer.

The paper asked an expert to rate image quality, mask quality and real/fake for 30 pairs (10 real,
10 Diff, 10 Styled-Diff) and reported the confusion table (Table 7) and Cohen's kappa. The kit is a
self-contained HTML page (images embedded as base64 PNG; a form that downloads the ratings as CSV)
plus a CSV template. The key (which item is which) is written beside the kit folder, never inside
it and never referenced by the page, so the kit folder can be sent to raters as it is.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import paper
from ..errors import StageError
from ..runs import atomic_write_text

#: Row of Table 7 -> synthetic method folder (None: real training images).
REVIEW_SOURCES = {"real": None, "diff": "diff", "styled": "styled-diff"}
RATING_COLUMNS = ["item", "rater", "image_quality", "mask_quality", "judged", "comment"]
KEY_COLUMNS = ["item", "source", "method", "pair_id", "source_id"]


# ----------------------------------------------------------------------------- Cohen's kappa
def cohen_kappa(a: Sequence, b: Sequence, labels: Sequence | None = None) -> float:
    """Cohen's kappa of two label sequences (scikit-learn's ``cohen_kappa_score``).

    NaN, without a warning, when both give every item the same one label: chance agreement is then 1
    and kappa 0/0, and reporting 0 or 1 would claim a (dis)agreement nobody measured."""
    from sklearn.metrics import cohen_kappa_score

    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise ValueError(f"kappa needs two non-empty sequences of equal length, got {len(a)} and {len(b)}")
    if len(set(a) | set(b)) == 1:
        return float("nan")
    return float(cohen_kappa_score(a, b, labels=labels))


# ----------------------------------------------------------------------------- building the kit
def _png_b64(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def choose_items(real_ids: Sequence[str], synthetic: dict[str, pd.DataFrame], per_source: int,
                 seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Pick ``per_source`` pairs per source; no source frame appears twice in the kit.

    ``synthetic`` maps a Table-7 source ("diff", "styled") to the accepted manifest of its method.
    Synthetic pairs of one source frame are near-copies of that frame outside the polyp, so a frame
    used by one item is excluded from every other item (real ones included)."""
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    rows, notes = [], []
    for source, manifest in synthetic.items():
        order = rng.permutation(len(manifest))
        picked = 0
        for k in order:
            row = manifest.iloc[k]
            sid = str(row.get("source_id", "")) or str(row["id"])
            if sid in used:
                continue
            used.add(sid)
            rows.append({"source": source, "method": REVIEW_SOURCES[source], "pair_id": str(row["id"]),
                         "source_id": sid})
            picked += 1
            if picked == per_source:
                break
        if picked < per_source:
            notes.append(f"{source}: only {picked} of {per_source} pairs with distinct source frames")
    free = [r for r in real_ids if r not in used]
    take = rng.permutation(len(free))[:per_source]
    rows += [{"source": "real", "method": "", "pair_id": free[k], "source_id": free[k]} for k in sorted(take)]
    if len(take) < per_source:
        notes.append(f"real: only {len(take)} of {per_source} frames not used by a synthetic item")
    items = pd.DataFrame(rows, columns=KEY_COLUMNS[1:])
    items = items.iloc[rng.permutation(len(items))].reset_index(drop=True)
    items.insert(0, "item", [f"item-{k + 1:02d}" for k in range(len(items))])
    return items, notes


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Polyp image review</title>
<style>
body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
.item{{border:1px solid #ccc;border-radius:6px;padding:10px;margin:14px 0;display:flex;gap:16px;align-items:flex-start}}
.item img{{width:256px;height:auto;border:1px solid #999}} .form label{{display:block;margin:4px 0}}
h2{{font-size:1.05em;margin:0 0 6px 0}} .cap{{font-size:.8em;color:#555;text-align:center}}
</style></head><body>
<h1>Polyp image review</h1>
<p>Each item shows a colonoscopy image (left) and the same image with its polyp mask tinted green
(right). Some images are real, some are synthetic. For every item rate the <b>image quality</b> and
the <b>mask quality</b> (1 = very poor, 5 = excellent) and say whether you judge the pair
<b>real</b> or <b>fake</b>. Then press <i>Download CSV</i> and send the file back.
Without a browser, fill in <code>ratings_template.csv</code> instead (judged: real or fake).</p>
<p><label>Your name or initials: <input id="rater" size="20"></label></p>
<form id="review">
{items}
</form>
<p><button type="button" onclick="downloadCsv()">Download CSV</button> <span id="status"></span></p>
<script>
const ITEMS = {item_list};
function cell(v) {{ v = String(v == null ? "" : v); return /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
function value(name) {{
  const sel = '[name="' + name + '"]';
  const el = document.querySelector(sel + ":checked") || document.querySelector("select" + sel + ", input[type=text]" + sel);
  return el ? el.value : "";
}}
function downloadCsv() {{
  const rater = document.getElementById("rater").value;
  const lines = ["{header}"];
  let missing = 0;
  for (const it of ITEMS) {{
    const row = [it, rater, value(it + "_image"), value(it + "_mask"), value(it + "_judged"),
                 value(it + "_comment")];
    if (!row[4]) missing++;
    lines.push(row.map(cell).join(","));
  }}
  const blob = new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "ratings_" + (rater || "rater") + ".csv";
  a.click();
  document.getElementById("status").textContent =
    missing ? missing + " item(s) without a real/fake judgement" : "saved";
}}
</script>
</body></html>
"""

_ITEM = """<div class="item"><div><img alt="{item} image" src="data:image/png;base64,{img}">
<div class="cap">image</div></div>
<div><img alt="{item} image with mask" src="data:image/png;base64,{ovl}"><div class="cap">mask overlay</div></div>
<div class="form"><h2>{item}</h2>
<label>Image quality <select name="{item}_image"><option value=""></option>{scale}</select></label>
<label>Mask quality <select name="{item}_mask"><option value=""></option>{scale}</select></label>
<label><input type="radio" name="{item}_judged" value="real"> real</label>
<label><input type="radio" name="{item}_judged" value="fake"> fake</label>
<label>Comment <input type="text" name="{item}_comment" size="28"></label></div></div>"""


def render_html(items: Sequence[str], pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """The blinded page: item names, images and form fields only (no ids, no methods, no links)."""
    from ..plots import overlay

    scale = "".join(f'<option value="{k}">{k}</option>' for k in range(1, 6))
    blocks = [_ITEM.format(item=html.escape(item), img=_png_b64(img), ovl=_png_b64(overlay(img, msk)), scale=scale)
              for item, (img, msk) in zip(items, pairs)]
    item_list = "[" + ",".join(f'"{html.escape(i)}"' for i in items) + "]"
    return _PAGE.format(items="\n".join(blocks), item_list=item_list, header=",".join(RATING_COLUMNS))


def write_kit(folder: Path, items: pd.DataFrame, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """``folder/kit/{review.html, ratings_template.csv, README.txt}`` and ``folder/key.csv``."""
    kit = folder / "kit"
    page = render_html(list(items["item"]), pairs)
    template = pd.DataFrame({c: (items["item"] if c == "item" else "") for c in RATING_COLUMNS})
    atomic_write_text(kit / "review.html", page)
    atomic_write_text(kit / "ratings_template.csv", template.to_csv(index=False))
    atomic_write_text(kit / "README.txt", (
        "Blinded review kit. Open review.html in a browser, rate every item and press 'Download CSV',\n"
        "or fill ratings_template.csv: image_quality and mask_quality 1-5, judged = real or fake.\n"
        "Return the CSV; it is scored against the key that stays with the study.\n"))
    atomic_write_text(folder / "key.csv", items[KEY_COLUMNS].to_csv(index=False))
    return {"html": kit / "review.html", "template": kit / "ratings_template.csv", "key": folder / "key.csv"}


def demo_ratings(key: str | Path | pd.DataFrame, seed: int = 0, rater: str = "coin") -> pd.DataFrame:
    """Ratings of a rater who flips a coin for real/fake and draws scores at random.

    Only to show the scorer at work before an expert has filled the kit: its accuracy is near 0.5
    and its kappa near 0, which is what "cannot tell real from synthetic" looks like."""
    key = key if isinstance(key, pd.DataFrame) else pd.read_csv(key, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    n = len(key)
    return pd.DataFrame({"item": key["item"], "rater": rater, "image_quality": rng.integers(1, 6, n),
                         "mask_quality": rng.integers(1, 6, n), "judged": rng.choice(["real", "fake"], n),
                         "comment": ""})


# ----------------------------------------------------------------------------- scoring
def read_ratings(filled: str | Path | pd.DataFrame | Iterable[str | Path]) -> pd.DataFrame:
    """One or more filled rating CSVs (from the page or the template) as one table."""
    if isinstance(filled, pd.DataFrame):
        df = filled.copy()
    else:
        paths = [filled] if isinstance(filled, (str, Path)) else list(filled)
        df = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths], ignore_index=True)
    missing = [c for c in ("item", "judged") if c not in df]
    if missing:
        raise StageError(f"ratings: missing column(s) {missing}; expected {RATING_COLUMNS}")
    df = df.astype({"item": str})
    if "rater" not in df:
        df["rater"] = ""
    df["rater"] = df["rater"].fillna("").astype(str).replace("", "rater")
    df["judged"] = df["judged"].fillna("").astype(str).str.strip().str.lower()
    return df


def score_review(filled, key: str | Path | pd.DataFrame) -> dict:
    """Confusion table in the paper's Table 7 format, accuracy and Cohen's kappa.

    Kappa is between the truth (real / fake) and the judgement, per rater and pooled; with two or
    more raters, also between raters (pairwise, on the items both judged). Items without a real/fake
    judgement are counted and left out."""
    ratings = read_ratings(filled)
    key = key if isinstance(key, pd.DataFrame) else pd.read_csv(key, dtype=str, keep_default_na=False)
    unknown = sorted(set(ratings["item"]) - set(key["item"]))
    if unknown:
        raise StageError(f"ratings name items that are not in the key: {unknown[:5]}")
    bad = sorted(set(ratings["judged"]) - {"real", "fake", ""})
    if bad:
        raise StageError(f"ratings: judged must be 'real' or 'fake', found {bad}")
    df = ratings.merge(key[["item", "source"]], on="item")
    unjudged = int((df["judged"] == "").sum())
    df = df[df["judged"] != ""]
    if df.empty:
        raise StageError("ratings: no item has a real/fake judgement")
    df = df.assign(truth=np.where(df["source"] == "real", "real", "fake"))
    sources = [s for s in REVIEW_SOURCES if s in set(key["source"])]
    table = (pd.crosstab(df["source"], df["judged"]).reindex(index=sources, columns=["real", "fake"], fill_value=0)
             .rename(columns={"real": "judged real", "fake": "judged fake"}))
    table.columns.name = None
    table["total"] = table.sum(axis=1)
    table["paper (judged real / fake of 10)"] = [
        "{} / {}".format(*paper.REVIEW[s].value) if s in paper.REVIEW else "" for s in table.index]
    per_rater = pd.DataFrame([
        {"rater": r, "n": len(g), "accuracy": float((g["truth"] == g["judged"]).mean()),
         "kappa_vs_truth": cohen_kappa(g["truth"], g["judged"], ["real", "fake"])}
        for r, g in df.groupby("rater")])
    raters = sorted(df["rater"].unique())
    inter = []
    for a_i, a in enumerate(raters):
        for b in raters[a_i + 1:]:
            both = df[df["rater"] == a].merge(df[df["rater"] == b], on="item")
            if len(both):
                inter.append({"rater_a": a, "rater_b": b, "n": len(both),
                              "kappa": cohen_kappa(both["judged_x"], both["judged_y"], ["real", "fake"])})
    quality = df.assign(**{c: pd.to_numeric(df.get(c), errors="coerce") for c in ("image_quality", "mask_quality")}
                        ).groupby("source")[["image_quality", "mask_quality"]].mean().reindex(sources)
    return {"table": table.reset_index(), "n": int(len(df)),
            "unjudged": unjudged, "accuracy": float((df["truth"] == df["judged"]).mean()),
            "kappa": cohen_kappa(df["truth"], df["judged"], ["real", "fake"]),
            "per_rater": per_rater, "inter_rater": pd.DataFrame(inter, columns=["rater_a", "rater_b", "n", "kappa"]),
            "quality": quality.reset_index()}
