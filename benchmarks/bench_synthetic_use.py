"""Synthetic pairs that do no harm (#31): which way of using imperfect pairs keeps a segmenter at least as
good as real-only training?

On the phantom course, the course's Diff set and a copy of it made deliberately worse (``diff-worse``:
the masks of half of its pairs, seeded, moved a quarter of the frame diagonally or swapped with another
pair's mask) are each used by stage 06's protocol (the course's segmentation settings) in four ways:

- ``mixed``: the paper's mixing rule, every pair, weight 1;
- ``gate``: the same, keeping only pairs whose mask has a judge IoU >= ``--threshold`` (``synthetic_filter``);
- ``pretrain``: the synthetic pairs first, then fine-tuning on the real images (``synthetic_schedule``);
- ``weight``: mixed, the synthetic pairs weighted ``--weight`` in the loss (``synthetic_weight``);

beside real-only training, for every seed, every training running all the course's 20 epochs and keeping
its best (the paper's protocol; the course's early stopping would make each comparison hang on the epoch
where a noisy validation curve happened to stop). Each is compared with real only on the same test images (paired
ΔIoU, seeds averaged per image, bootstrap 95 % interval, Wilcoxon p), exactly as notebook 06 does. The record
also holds how well the gate finds the corrupted pairs (they are known here) and which share of the plain
mixing's loss it recovers.

Usage (about 20 min per seed on 2 cores, plus about 25 min for stages 01-03 when the course run folder
does not hold them yet):

    python benchmarks/bench_synthetic_use.py [--course-run runs/course] [--seeds 0 1] [--threshold 0.5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS, machine, write_record  # noqa: E402

WORSE = "diff-worse"
WAYS = {"mixed": {"schedule": "mixed"}, "gate": {"schedule": "mixed", "synthetic_filter": None},
        "pretrain": {"schedule": "pretrain"}, "weight": {"schedule": "mixed", "synthetic_weight": None}}


def ensure_course_run(folder: Path) -> None:
    """Stages 01-03 of the course in ``folder`` (run_all caches finished stages)."""
    if (folder / "synthetic" / "diff" / "manifest.csv").exists() and (folder / "data").exists():
        return
    print(f"{folder}: no course Diff set yet; running stages 01-03 of the course there (about 25 min)", flush=True)
    subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--profile", "course", "--run-dir", str(folder),
                    "--only", "01", "--only", "02", "--only", "03", "--quiet"], check=True, cwd=ROOT)


def make_worse(source: Path, target: Path, seed: int, share: float = 0.5) -> pd.DataFrame:
    """A copy of the set in ``source`` with ``share`` of its pairs' masks corrupted (half of them moved, half
    swapped); the manifest gains ``corrupted`` (none | moved | swapped). Images are untouched."""
    import shutil

    from scipy import ndimage

    from polyplib.data.imageio import read_mask, write_png
    from polyplib.runs import atomic_write_text
    from polyplib.synthetic.folder import read_manifest as read_synthetic_manifest

    manifest = read_synthetic_manifest(source)
    shutil.rmtree(target, ignore_errors=True)
    (target / "masks").mkdir(parents=True)
    shutil.copytree(source / "images", target / "images")
    rng = np.random.default_rng([seed, 3131])
    bad = rng.permutation(len(manifest))[: int(len(manifest) * share)]
    moved, swapped = bad[: len(bad) // 2], bad[len(bad) // 2:]
    masks = {i: read_mask(source / "masks" / f"{f}.png") for i, f in enumerate(manifest["file"])}
    kind = np.full(len(manifest), "none", dtype=object)
    for i in moved:
        m = masks[i]
        masks[i] = ndimage.shift(m.astype(np.uint8), (m.shape[0] // 4, m.shape[1] // 4), order=0, cval=0) > 0
        kind[i] = "moved"
    originals = {i: masks[i] for i in swapped}
    for j, i in enumerate(swapped):               # each takes the next one's mask (a cycle: no pair keeps its own)
        masks[i] = originals[swapped[(j + 1) % len(swapped)]]
        kind[i] = "swapped"
    for i, f in enumerate(manifest["file"]):
        write_png(target / "masks" / f"{f}.png", masks[i])
    manifest = manifest.assign(corrupted=kind, method=WORSE)
    atomic_write_text(target / "manifest.csv", manifest.to_csv(index=False))
    return manifest


def bench_run(course: Path, work: Path, seeds: list[int], overrides: list[str]):
    """A run folder for the benchmark that reads the course's prepared data and Diff set."""
    from polyplib.runs import open_run

    work.mkdir(parents=True, exist_ok=True)
    for part in ("data", "synthetic/diff"):
        link = work / part
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((course / part).resolve(), target_is_directory=True)
    return open_run("course", [f"segmentation.seeds={seeds}", f"segmentation.sources=[diff,{WORSE}]",
                               "run.progress=false", *overrides], work)


def configurations(seeds: list[int], threshold: float, weight: float, sets: tuple[str, ...] = (WORSE, "diff")):
    from polyplib.segmentation.study import Configuration

    out = []
    for seed in seeds:
        out.append(("real", "real", Configuration("real", None, None, 0, "control", "unet", seed)))
        for source in sets:
            for way, how in WAYS.items():
                how = {**how, **({"synthetic_filter": threshold} if way == "gate" else {}),
                       **({"synthetic_weight": weight} if way == "weight" else {})}
                out.append((source, way, Configuration("mixed", source, None, 1, "control", "unet", seed, **how)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--course-run", type=Path, default=ROOT / "runs" / "course")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-synthetic-use")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--corrupt", type=float, default=0.5, help="share of the worse set's pairs whose mask is corrupted")
    ap.add_argument("--worse-only", action="store_true", help="skip the untouched Diff set")
    ap.add_argument("--set", action="append", default=["segmentation.patience=null"],
                    help="overrides of the course profile; default: every epoch runs and the best is kept (the "
                    "paper's protocol), so that no comparison hangs on where early stopping happened to stop")
    ap.add_argument("--out", type=Path, default=RESULTS / "synthetic_use.json")
    args = ap.parse_args()
    record = {"benchmark": "synthetic_use", "machine": machine(), "course_run": str(args.course_run),
              "seeds": args.seeds, "threshold": args.threshold, "weight": args.weight, "corrupted_share": args.corrupt,
              "overrides": args.set}
    started = time.time()
    ensure_course_run(args.course_run)
    from polyplib.segmentation import study

    run = bench_run(args.course_run, args.work, args.seeds, args.set)
    manifest = make_worse(run.path("synthetic", "diff"), run.path("synthetic", WORSE), seed=0, share=args.corrupt)
    plan = configurations(args.seeds, args.threshold, args.weight, (WORSE,) if args.worse_only else (WORSE, "diff"))
    results, per_image = study.run_plan(run, [c for _, _, c in plan])
    summary, paired = study.summary_with_tests(per_image, run.cfg)

    # the gate against the truth of which pairs were corrupted
    data = study._Data(run)
    judged = pd.DataFrame({"id": data.synthetic_pool(WORSE).ids, "judge_iou": data.judge_iou(WORSE)})
    truth = judged.merge(manifest[["id", "corrupted"]], on="id")
    kept = truth["judge_iou"] >= args.threshold
    bad = truth["corrupted"] != "none"
    gate = {"pairs": int(len(truth)), "corrupted": int(bad.sum()), "kept": int(kept.sum()),
            "corrupted_dropped": round(float((~kept & bad).sum() / max(1, bad.sum())), 3),
            "intact_kept": round(float((kept & ~bad).sum() / max(1, (~bad).sum())), 3),
            "by_kind_kept": {k: round(float(kept[truth["corrupted"] == k].mean()), 3)
                             for k in ("none", "moved", "swapped")},
            "diff_kept": round(float((data.judge_iou("diff") >= args.threshold).mean()), 3),
            "judge_iou_median": {k: round(float(truth.loc[truth["corrupted"] == k, "judge_iou"].median()), 3)
                                 for k in ("none", "moved", "swapped")}}

    rows = []
    for source, way, c in plan:
        if c.seed != args.seeds[0]:
            continue
        r = c.row()
        if c.name not in set(results["name"]):          # the gate dropped every pair: nothing to train
            rows.append({"set": source, "way": way, "label": study.config_label(r), "synthetic_pool": 0,
                         "skipped": "the quality gate kept no pair: this configuration is real-only training, "
                                    "ΔIoU 0 by construction"})
            print(f"{rows[-1]['label']:55s} skipped: {rows[-1]['skipped']}")
            continue
        match = {k: str(r[k]) for k in study.GROUP_COLUMNS}
        s = summary[np.logical_and.reduce([summary[k].astype(str) == v for k, v in match.items()])].iloc[0]
        row = {"set": source, "way": way, "label": study.config_label(r), "iou": round(float(s["iou"]), 4),
               "iou_lo": round(float(s["iou_lo"]), 4), "iou_hi": round(float(s["iou_hi"]), 4),
               "synthetic_pool": int(results.loc[results["name"] == c.name, "synthetic_pool"].iloc[0])}
        if source != "real":
            p = paired[np.logical_and.reduce([paired[k].astype(str) == v for k, v in match.items()])].iloc[0]
            row.update(diff=round(float(p["diff"]), 4), diff_lo=round(float(p["diff_lo"]), 4),
                       diff_hi=round(float(p["diff_hi"]), 4), p=float(p["p"]))
        rows.append(row)
        print(f"{row['label']:55s} IoU {row['iou']:.3f} [{row['iou_lo']:.3f}, {row['iou_hi']:.3f}]"
              + (f"  Δ {row['diff']:+.3f} [{row['diff_lo']:+.3f}, {row['diff_hi']:+.3f}]" if "diff" in row else ""))
    by = {(r["set"], r["way"]): r for r in rows}
    loss = -by[(WORSE, "mixed")]["diff"]
    gated = by[(WORSE, "gate")].get("diff", 0.0)        # skipped: real-only training, ΔIoU 0
    recovered = (gated - by[(WORSE, "mixed")]["diff"]) / loss if loss > 0 else None
    record.update({
        "rows": rows, "gate": gate,
        "must_show": {
            "plain_mixing_of_the_worse_set_loses": by[(WORSE, "mixed")]["diff_hi"] < 0,
            "gate_recovers_share_of_that_loss": None if recovered is None else round(recovered, 3),
            "gate_recovers_at_least_half": recovered is not None and recovered >= 0.5,
            "pretrain_no_worse_than_real_only": by[(WORSE, "pretrain")].get("diff_hi", 0.0) >= 0,
        },
        "trainings": int(len(results)), "train_seconds": round(float(results["train_seconds"].sum()), 1),
        "seconds": round(time.time() - started, 1),
        "settings": {k: getattr(run.cfg.segmentation, k) for k in ("epochs", "patience", "lr", "lr_drop_epoch",
                                                                     "batch_size", "mix_alpha", "bootstrap")},
        "paired_note": "ΔIoU = mean over the test images of (IoU of the configuration − IoU of real only), seeds "
                       "averaged per image; 95 % percentile bootstrap interval; p: Wilcoxon signed-rank"})
    print(json.dumps(record["must_show"], indent=1))
    write_record(args.out, record)


if __name__ == "__main__":
    main()
