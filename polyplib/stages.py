"""The ordered stages of the study: notebook, the configuration and the upstream stages each uses.

A stage's cache key hashes the configuration it depends on together with the keys of the stages
whose artefacts it reads. Changing a value that stage N depends on therefore reruns N and the later
stages built on it, and nothing before it (nor a later stage that does not read N's results).
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
    upstream: tuple[str, ...] = ()  # ids of the stages whose artefacts this stage reads
    version: int = 1            # raised when the stage's artefacts change shape: its cached results are recomputed
    entry: str = ""             # the stage's entry point, module:function (every stage: <package>.stage:run_stage)


#: the settings of the real-only segmenter that judges label fidelity in stages 04 and 05 (metrics.fidelity)
JUDGE = ("segmentation.models", "segmentation.encoder", "segmentation.encoder_weights", "segmentation.epochs",
         "segmentation.patience", "segmentation.lr", "segmentation.lr_drop_epoch", "segmentation.lr_after_drop",
         "segmentation.batch_size", "segmentation.val_fraction", "segmentation.augmentation")

STAGES: tuple[Stage, ...] = (
    Stage("01", "data", "01_data_prep.ipynb", "Data preparation", ("data",), entry="polyplib.data.stage:run_stage"),
    Stage("02", "ddpm", "02_ddpm_training.ipynb", "DDPM training", ("clustering", "ddpm"), ("01",),
          entry="polyplib.diffusion.stage:run_stage"),
    Stage("03", "sampling", "03_sampling.ipynb", "Sampling synthetic pairs", ("sampling",), ("01", "02"),
          entry="polyplib.sampling.stage:run_stage"),
    Stage("04", "metrics", "04_fid_msssim.ipynb", "FID and MS-SSIM", ("metrics", *JUDGE), ("01", "03"), version=2,
          entry="polyplib.metrics.stage:run_stage"),
    Stage("05", "gan", "05_gan_comparison.ipynb", "GAN comparison", ("gan", "metrics", *JUDGE), ("01", "02", "03"),
          entry="polyplib.gan.stage:run_stage"),
    Stage("06", "segmentation", "06_segmentation.ipynb", "Segmentation", ("segmentation",), ("01", "03", "05"),
          entry="polyplib.segmentation.stage:run_stage"),
    Stage("07", "transfer", "07_transfer.ipynb", "Transfer tests", ("segmentation",), ("01", "06"),
          entry="polyplib.transfer.stage:run_stage"),
)


def stage_by_id(stage_id: str) -> Stage:
    for stage in STAGES:
        if stage.id == stage_id or stage.name == stage_id:
            return stage
    known = ", ".join(f"{s.id} ({s.name})" for s in STAGES)
    raise KeyError(f"unknown stage '{stage_id}'; known: {known}")


def stage_keys(cfg: StudyConfig) -> dict[str, str]:
    """Cache key of every stage: hash of its own configuration and of its upstream stages' keys."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        salt = "|".join(keys[u] for u in stage.upstream) + (f"|v{stage.version}" if stage.version > 1 else "")
        keys[stage.id] = hash_sections(cfg, stage.depends_on, salt=salt)
    return keys


def downstream(stage_id: str) -> list[str]:
    """Ids of the stages that (transitively) read this stage's artefacts."""
    out: list[str] = []
    for stage in STAGES:
        if any(u == stage_id or u in out for u in stage.upstream):
            out.append(stage.id)
    return out
