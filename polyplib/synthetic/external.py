"""Any generator's labelled pairs, imported into a run as a synthetic set and scored by the study's protocol.

Why: SinGAN-Seg's published set, Polyp-DDPM, ArSDM and the ControlNet-based generators each report FID and
IoU with their own splits, resizing and segmenters, so their numbers cannot be set beside each other. A
folder of their pairs imported here is resized to the run's resolution like the real data, written in the
layout of the study's own sets (``synthetic/<name>/``) and registered in the run: stage 04 measures it
(FID / KID against the training and the held-out test images, MS-SSIM, label fidelity, memorisation),
``segmentation.sources`` trains on it, and the report shows it beside the study's sets. No paper value
stands beside it (the published SinGAN-Seg set, imported by stage 05, is the exception: the paper reports it).

Accepted folders: any layout the data loaders know (:data:`polyplib.data.loaders.LAYOUTS`), or
``images/`` + ``masks/`` with matching stems. Every pair is checked before anything is written: readable,
image and mask of one size, a binary and non-empty mask, no two identical images; all problems are
reported in one error that names each bad pair. The real image a pair was made from (which the study's
mixing rule needs) comes from a ``manifest.csv`` beside the pairs or given with ``--manifest``
(columns ``file`` or ``id``, ``source_id``, optionally ``sample_index``: the study's own sets carry one);
without it a pair has no source and is dealt out to the real images in turn, as the GAN's pairs are.

Command line::

    python -m polyplib.synthetic import FOLDER --name NAME [--run-dir runs/smoke | --profile smoke] [--manifest CSV]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.imageio import array_hash, read_image
from ..data.loaders import Pair, find_pairs, load_pair
from ..data.preprocess import fit
from ..errors import DataError
from ..runs import Run
from ..stages import downstream
from .catalogue import NAME, is_reserved, set_dir
from .folder import load_set
from .generate import SetPlan, plan_key, write_set
from .postprocess import MASK_THRESHOLD, PostProcess

#: a mask whose pixels lie between these grey levels in more than GREY_SHARE of the frame is not binary
GREY_LEVELS = (32, 223)
GREY_SHARE = 0.05


@dataclass
class CheckedPair:
    """One pair that passed the checks, with where it came from (its pixels are read again when written:
    10,000 pairs at 256 px would not fit in memory)."""

    pair: Pair
    source_id: str
    sample_index: int
    original_size: tuple[int, int]


def safe_name(pair_id: str) -> str:
    """A pair id ("sub/stem") as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", pair_id)


def read_sources(manifest: str | Path, pairs: list[Pair]) -> dict[str, tuple[str, int]]:
    """{pair id: (source_id, sample_index)} from a manifest CSV whose ``file`` (or ``id``) names each pair."""
    path = Path(manifest)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    key = "file" if "file" in table else "id" if "id" in table else None
    if key is None or "source_id" not in table:
        raise DataError(path, "a sources manifest needs the columns file (or id) and source_id")
    known = {Path(p.id).name: p.id for p in pairs} | {p.id: p.id for p in pairs}
    out: dict[str, tuple[str, int]] = {}
    for row in table.to_dict("records"):
        pair_id = known.get(row[key])
        if pair_id is not None:
            index = row.get("sample_index", "")
            out[pair_id] = (row["source_id"], int(float(index)) if index not in ("", None) else -1)
    return out


def _mask_problem(pair: Pair) -> str | None:
    """Why a mask is not a label: grey rather than binary (a soft mask, or an image in its place)."""
    grey = read_image(pair.mask).max(axis=2)
    share = float(((grey > GREY_LEVELS[0]) & (grey < GREY_LEVELS[1])).mean())
    if share > GREY_SHARE:
        return (f"mask {pair.mask.name} is not binary: {share:.0%} of its pixels are grey "
                f"(between {GREY_LEVELS[0]} and {GREY_LEVELS[1]})")
    return None


def check_pairs(pairs: list[tuple[Pair, str, int]], strict: bool = True) -> list[CheckedPair]:
    """Read and check every pair; one DataError naming every bad pair (``strict``: also grey or empty masks
    and duplicate images, which the published SinGAN-Seg import records as rejected instead)."""
    problems: list[str] = []
    out: list[CheckedPair] = []
    by_hash: dict[str, list[str]] = {}
    for pair, source, k in pairs:
        try:
            image, mask = load_pair(pair)
            problem = _mask_problem(pair) if strict else None
        except DataError as exc:
            problems.append(f"{pair.id}: {exc.problem}")
            continue
        if strict and problem is None and not mask.any():
            problem = f"mask {pair.mask.name} is empty (no pixel above {MASK_THRESHOLD})"
        if problem:
            problems.append(f"{pair.id}: {problem}")
            continue
        by_hash.setdefault(array_hash(image), []).append(pair.id)
        out.append(CheckedPair(pair, source, k, image.shape[:2]))
    if strict:
        problems += [f"{', '.join(ids)}: the same image {len(ids)} times" for ids in by_hash.values() if len(ids) > 1]
    if problems:
        root = Path(pairs[0][0].image).parent if pairs else None
        raise DataError(root, f"{len(problems)} bad pair{'s' * (len(problems) > 1)}, nothing imported: "
                              + "; ".join(problems))
    return out


def find_external(folder: str | Path, manifest: str | Path | None = None,
                  layout: str = "auto") -> list[tuple[Pair, str, int]]:
    """(pair, source id, sample index) of every pair in ``folder``, in the order of its manifest if there is one."""
    root = Path(folder).expanduser()
    pairs = find_pairs(root, layout)
    manifest = Path(manifest) if manifest else (root / "manifest.csv" if (root / "manifest.csv").is_file() else None)
    sources = read_sources(manifest, pairs) if manifest else {}
    order = {pid: i for i, pid in enumerate(sources)}
    pairs = sorted(pairs, key=lambda p: (order.get(p.id, len(order)), p.id))
    counters: dict[str, int] = {}
    out = []
    for p in pairs:
        source, k = sources.get(p.id, ("", -1))
        if k < 0:
            k = counters.get(source, 0)
        counters[source] = max(counters.get(source, 0), k) + 1
        out.append((p, source, k))
    return out


def import_pairs(run: Run, name: str, found: list[tuple[Pair, str, int]], *, label: str | None = None,
                 model: str | None = None, origin: str = "", strict: bool = True, register: bool = True):
    """Write checked pairs into ``synthetic/<name>/`` at the run's resolution; returns the set (a
    PreparedSet of its accepted pairs). A rerun with the same files is a no-op. ``register``: the set is
    another generator's (no paper value beside it) and the stages that measure sets (04 and later) rerun."""
    cfg = run.cfg
    if register and (not NAME.match(name) or is_reserved(name)):
        raise DataError(None, f"set name {name!r}: use letters, digits, '-' and '_', and not a name the study's "
                              "own generators write (diff, gan, singan, uncond-..., budget-...)")
    if not found:
        raise DataError(origin or None, "no pairs to import")
    checked = check_pairs(found, strict)
    post = PostProcess(opening_px=0, min_component_fraction=0.0,
                       max_coverage=cfg.sampling.max_coverage)   # masks kept as given, the acceptance rule applied
    ids = [safe_name(c.pair.id) for c in checked]
    if len(set(ids)) != len(ids):
        raise DataError(origin or None, "two pairs map to the same file name after making the names safe")
    files = [[c.pair.id, c.pair.image.stat().st_size, c.pair.mask.stat().st_size, c.pair.image.stat().st_mtime_ns,
              c.source_id, c.sample_index] for c in checked]
    key = plan_key({"files": files, "resolution": cfg.data.resolution, "resize": cfg.data.resize,
                    "max_coverage": post.max_coverage})
    jobs = [{"id": pid, "file": pid, "source_id": c.source_id, "cluster": -1, "model": model or name,
             "method": name, "sampler": "imported", "steps": 0, "seed": "", "sample_index": c.sample_index}
            for pid, c in zip(ids, checked)]
    info = {"key": key, "source_folder": origin, "imported": register, "label": label or name, "params": {}}
    plan = SetPlan(name, [[j] for j in jobs], key, info)
    by_id = dict(zip(ids, checked))

    def compute(batch: list[dict]):
        c = by_id[batch[0]["id"]]
        image, mask = fit(*load_pair(c.pair), cfg.data.resolution, cfg.data.resize)
        return [(image, np.asarray(mask, np.uint8) * 255,
                 {"source_image": str(c.pair.image), "source_mask": str(c.pair.mask),
                  "original_height": int(c.original_size[0]), "original_width": int(c.original_size[1])})]

    table = write_set(set_dir(run, name), plan, compute, post, progress=cfg.run.progress)
    if register:      # the stages that measure or train on sets run again (stage 05 measures only its GANs' sets)
        for stage_id in dict.fromkeys(["04", *downstream("04"), "06", *downstream("06")]):
            run.stage(stage_id).invalidate()
    print(f"{name}: {int(table['accepted'].astype(bool).sum())} of {len(table)} pairs accepted "
          f"into {set_dir(run, name)}")
    return load_set(run, name)


def import_folder(run: Run, folder: str | Path, name: str, *, manifest: str | Path | None = None,
                  layout: str = "auto", label: str | None = None):
    """``python -m polyplib.synthetic import``: another generator's folder of pairs as the set ``name``."""
    found = find_external(folder, manifest, layout)
    return import_pairs(run, name, found, label=label, origin=str(Path(folder).resolve()))
