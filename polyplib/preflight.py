"""What run_all.py checks before any notebook kernel starts, so that a run fails in seconds, not after
a kernel started and a stage half ran: the data the first stage reads, the weights files the
configuration names, the run folder and its free disk. Each problem is one line naming the file or
key; every problem is reported at once. Reads file names only, never image or weights contents.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import StudyConfig, data_root
from .errors import DataError

#: configuration keys that name a weights file (f) or folder (d) the run reads, with what it holds
WEIGHTS = {
    "clustering.weights": ("f", "FID Inception weights for the cluster features"),
    "ddpm.pretrained": ("d", "folder of converted DDPMs"),
    "sampling.style.vgg_weights": ("f", "VGG-19 state dict for Styled-Diff"),
    "sampling.style.dino_weights": ("f", "DINO ViT state dict for Styled-Diff"),
    "metrics.fid_weights": ("f", "FID Inception weights"),
    "gan.singan_published": ("d", "folder of the published SinGAN-Seg set"),
    "segmentation.encoder_weights": ("f", "segmentation encoder weights"),
}
#: values of a WEIGHTS key that name no file
NOT_A_PATH = {"imagenet"}


def named_paths(cfg: StudyConfig, keys=WEIGHTS):
    """(key, value) of every ``keys`` entry the configuration sets to a path."""
    for key in keys:
        value = cfg.section(key)
        if value and value not in NOT_A_PATH:
            yield key, value


def absolute_paths(cfg: StudyConfig, cwd: Path | None = None) -> list[str]:
    """``--set`` overrides that make every relative path the configuration names absolute, from ``cwd``.

    The notebooks run in notebooks/, so a path typed relative to the shell that started run_all.py
    must reach them resolved. (The data root taken from $POLYP_DATA or ``./data`` reaches them as
    an absolute $POLYP_DATA instead: :func:`data_root_environment`.)"""
    cwd = Path(cwd or os.getcwd())
    out = []
    for key, value in named_paths(cfg, (*WEIGHTS, "data.root")):
        if not Path(value).expanduser().is_absolute():
            out.append(f"{key}={(cwd / Path(value).expanduser()).resolve()}")
    return out


def data_root_environment(cfg: StudyConfig) -> dict[str, str]:
    """$POLYP_DATA for the notebook kernels: the data root as this process resolves it (``data.root``,
    else $POLYP_DATA, else ./data from the current folder), absolute. Passed by the environment, not
    the configuration, so that stage keys stay what they were."""
    return {"POLYP_DATA": str(data_root(cfg))} if cfg.data.source == "real" and not cfg.data.root else {}


def check_weights(cfg: StudyConfig) -> list[str]:
    problems = []
    for key, value in named_paths(cfg):
        kind, what = WEIGHTS[key]
        path = Path(value).expanduser()
        if not path.exists():
            problems.append(f"{path}: not found ({key}, the {what})")
        elif kind == "f" and not path.is_file():
            problems.append(f"{path}: not a file ({key}, the {what})")
        elif kind == "d" and not path.is_dir():
            problems.append(f"{path}: not a folder ({key}, the {what})")
    return problems


def check_data(cfg: StudyConfig) -> list[str]:
    """Every configured real data set that exists lists as pairs in a known layout; the training set
    must exist. The phantom is drawn by stage 01 itself."""
    if cfg.data.source != "real":
        return []
    from .data.prepare import real_sources, source_pairs

    root = data_root(cfg)
    if not root.is_dir():
        return [f"{root}: data root {'not a folder' if root.exists() else 'not found'} (data.root, $POLYP_DATA "
                "or ./data); download the data sets with `python -m polyplib.data download NAME --dest ROOT`"]
    try:
        sources, _ = real_sources(cfg)
    except DataError as exc:
        return [str(exc)]
    problems = []
    for source in sources:
        try:
            source_pairs(source)
        except DataError as exc:
            problems.append(str(exc))
    return problems


def check_run_folder(folder: Path, need_gb: float) -> list[str]:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".preflight."):
            pass
    except OSError as exc:
        return [f"{folder}: run folder cannot be written ({exc.strerror or exc}); choose another with --run-dir"]
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < need_gb:
        return [f"{folder}: {free_gb:.1f} GB free on its disk, the run needs about {need_gb:g} GB (run.disk_gb); "
                "free some space or choose another --run-dir"]
    return []


def preflight(cfg: StudyConfig, run_dir: Path, data: bool = True) -> list[str]:
    """Every problem that would stop the run, one line each (empty: go). ``data``: whether stage 01
    will read the raw data sets in this call."""
    return (check_run_folder(run_dir, cfg.run.disk_gb) + check_weights(cfg)
            + (check_data(cfg) if data else []))
