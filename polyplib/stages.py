"""The ordered stages of the study: notebook, module and the configuration each one depends on.

A stage's cache key chains onto the key of the stage before it, so changing a value that stage N
depends on reruns N and every stage after it, and nothing before it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import StudyConfig, hash_sections


@dataclass(frozen=True)
class Stage:
    id: str                    # "01"
    name: str                  # folder-friendly name, also the done-marker's name
    notebook: str              # file name under notebooks/
    title: str
    depends_on: tuple[str, ...]  # dotted configuration keys whose values decide the stage's results


STAGES: tuple[Stage, ...] = (
    Stage("01", "data", "01_data_prep.ipynb", "Data preparation", ("data",)),
)


def stage_by_id(stage_id: str) -> Stage:
    for stage in STAGES:
        if stage.id == stage_id or stage.name == stage_id:
            return stage
    known = ", ".join(f"{s.id} ({s.name})" for s in STAGES)
    raise KeyError(f"unknown stage '{stage_id}'; known: {known}")


def stage_keys(cfg: StudyConfig) -> dict[str, str]:
    """Cache key of every stage: hash of its own configuration chained onto the previous key."""
    keys, previous = {}, ""
    for stage in STAGES:
        previous = hash_sections(cfg, stage.depends_on, salt=previous)
        keys[stage.id] = previous
    return keys
