"""The one loop that makes a synthetic set: plan -> generate -> judge -> write, resumable.

Why one loop: RePaint, the unconditional samplers, Styled-Diff, the GAN and SinGAN-Seg differ only in
how a batch of pairs is computed. Everything else is the same contract: every pair has its own seed
(:func:`pair_seed`, from the base seed, its source and its sample index), batches are fixed by the plan
(so a pair redrawn alone, with its batch, is the same bytes), each generated mask goes through the
same post-processing and acceptance rule (:mod:`.postprocess`), and each pair is on disk before its
record (:class:`.folder.SyntheticWriter`), so a killed run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..progress import tqdm
from .folder import SyntheticWriter
from .postprocess import PostProcess, clean_mask, judge

#: how often the manifests are rebuilt while a set is made (rebuilding after every pair of a 10,000-pair
#: import would cost more than the import)
FLUSH_SECONDS = 5.0
#: what a generator returns for one job: (image uint8 HxWx3, raw mask channel uint8 HxW, extra record fields)
Generated = tuple[np.ndarray, np.ndarray, dict]


def pair_seed(base: int, key: str, index: int) -> int:
    """A 63-bit seed derived from (base seed, source id or stream name, sample index)."""
    digest = hashlib.sha256(f"{base}|{key}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def chunks(jobs: list[dict], size: int) -> list[list[dict]]:
    """Fixed batches of ``size`` jobs, in plan order."""
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def plan_key(payload: dict) -> str:
    """A short key of everything that decides a set's pairs (settings, ids, models)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class SetPlan:
    """What one set will hold: its jobs (one dict per pair: id, file, source_id, seed, ...) in fixed
    batches, the key of everything that decides them, and what ``plan.json`` records (``info``;
    ``info["params"]`` are the settings every pair's record carries)."""

    method: str
    batches: list[list[dict]]
    key: str
    info: dict = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [j["id"] for b in self.batches for j in b]

    def batch_of(self, pair_id: str) -> tuple[list[dict], int]:
        """(the batch that holds a pair, its position in it)."""
        for batch in self.batches:
            for i, job in enumerate(batch):
                if job["id"] == pair_id:
                    return batch, i
        raise KeyError(pair_id)


def judged(image: np.ndarray, raw: np.ndarray, post: PostProcess) -> tuple[dict, np.ndarray]:
    """(record fields of the acceptance rule, cleaned bool mask) of one generated pair."""
    mask = clean_mask(raw, post)
    accepted, reason, coverage, components = judge(mask, post)
    return {"accepted": accepted, "reason": reason, "coverage": round(coverage, 6), "components": components,
            "height": int(image.shape[0]), "width": int(image.shape[1])}, mask


def record_of(job: dict, generated: Generated, post: PostProcess, params: dict) -> tuple[dict, np.ndarray]:
    """A pair's full record (job, acceptance, settings, generator fields) and its cleaned mask."""
    image, raw, fields = generated
    verdict, mask = judged(image, raw, post)
    return {**job, **verdict, **params, **fields}, mask


def write_set(folder: str | Path, plan: SetPlan, compute: Callable[[list[dict]], Sequence[Generated]],
              post: PostProcess, *, fresh: bool = False, progress: bool = True,
              on_pair: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Make (or finish) the set ``plan`` in ``folder``: ``compute(batch)`` generates a batch, each pair is
    judged and written; returns every finished record, accepted and rejected, in plan order.

    ``seconds`` is the batch's wall-clock time per pair in the session that made it. ``on_pair(record)`` is
    called after each pair is on disk (progress hooks, tests that kill a run). The manifests are rebuilt
    from the records every few seconds and at the end (the records, not the manifests, decide a resume)."""
    writer = SyntheticWriter(folder, plan.key, plan.ids, plan.info, fresh=fresh)
    params = plan.info.get("params", {})
    todo = [b for b in plan.batches if not all(writer.is_done(j["id"]) for j in b)]
    total, flushed = len(plan.ids), time.monotonic()
    with tqdm(total=total, initial=total - sum(map(len, todo)), desc=plan.method, unit="pair",
              disable=not progress) as bar:
        for batch in todo:
            started = time.perf_counter()
            results = compute(batch)
            seconds = round((time.perf_counter() - started) / len(batch), 6)
            for job, generated in zip(batch, results):
                if writer.is_done(job["id"]):
                    continue
                record, mask = record_of(job, generated, post, params)
                record["seconds"] = seconds
                writer.write(record, generated[0], mask)
                bar.update(1)
                if on_pair is not None:
                    on_pair(record)
            if time.monotonic() - flushed > FLUSH_SECONDS:
                writer.flush()
                flushed = time.monotonic()
    writer.finish()
    return writer.table()
