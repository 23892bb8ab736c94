"""Errors a user can act on: each names the file or key at fault and what is wrong with it."""
from __future__ import annotations

from pathlib import Path


class PolypError(Exception):
    """Base class: every error polyplib raises on purpose derives from it."""


class ConfigError(PolypError, ValueError):
    """A profile, override or configuration value is wrong; raised before any work starts."""


class DataError(PolypError, ValueError):
    """A data file or folder is unusable. The message starts with the path, then the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class StageError(PolypError, RuntimeError):
    """A stage of the study cannot run (missing upstream artefact, missing weights, ...)."""
