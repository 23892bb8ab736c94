"""The training harness shared by the DDPM (stage 02) and GAN (stage 05) trainers.

Both trainers are compared on equal terms, so they share one way of doing the things that are not
the model: accelerate set-up, per-step seeds, ``checkpoint-N`` folders written under a temporary
name and renamed, stale-checkpoint clean-up, a loss log truncated on resume, provenance beside
weights, and thread control on shared CPUs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .runs import atomic_write_json, atomic_write_text


# ----------------------------------------------------------------------------- devices and threads
def resolve_device(setting: str) -> torch.device:
    """run.device: cpu, cuda (must exist), or auto (cuda when available)."""
    if setting == "cuda" and not torch.cuda.is_available():
        from .errors import StageError

        raise StageError("run.device=cuda but no CUDA device is visible; use run.device=auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls/convolutions run natively, so autocast can pay off."""
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                         or getattr(cpu, "_is_amx_tile_supported", lambda: False)()))


def describe_device(device: torch.device | str) -> str:
    """'cuda (NVIDIA H100 …)' or 'cpu (N torch threads, M cores)': recorded beside every measured time."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


@contextlib.contextmanager
def torch_threads(n: int, device: torch.device | str = "cpu"):
    """Use ``n`` torch CPU threads inside the block (0, or a non-CPU device: leave as is).

    On a busy shared CPU one thread is often several times faster than oversubscribed OpenMP threads."""
    old = torch.get_num_threads()
    if n > 0 and torch.device(device).type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- accelerate
def partial_state(device: torch.device):
    """accelerate's process state; on CPU it must be created with cpu=True to see a multi-process launch."""
    from accelerate import PartialState

    return PartialState(cpu=device.type == "cpu")


def fresh_accelerator(device: torch.device, mixed_precision: str, gradient_accumulation_steps: int = 1):
    """A new Accelerator for one model (accelerate's singleton state is reset, the process group kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    partial_state(device)
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(gradient_accumulation_steps=gradient_accumulation_steps, mixed_precision=mixed_precision,
                       cpu=device.type == "cpu")


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of one (micro-)step's random draws, independent of how the run was interrupted."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


# ----------------------------------------------------------------------------- folders
def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def config_key(payload: dict) -> str:
    """16-hex-digit hash of a JSON-able payload (the key that decides whether weights can be reused)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_provenance(folder: Path, cfg, ids: Sequence[str]) -> None:
    """config.yaml and train_ids.json beside weights (checkpoints and final folders)."""
    atomic_write_text(folder / "config.yaml", cfg.to_yaml())
    atomic_write_json(folder / "train_ids.json", list(ids))


def weights_digest(weights: torch.nn.Module | Iterable[torch.Tensor]) -> str:
    """SHA-256 prefix of a module's state (parameters and buffers) or of a list of tensors."""
    h = hashlib.sha256()
    items = weights.state_dict().items() if isinstance(weights, torch.nn.Module) else enumerate(weights)
    for name, t in items:
        h.update(str(name).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (``checkpoint-N`` with a trainer_state.json), oldest first."""
    root = Path(root)
    found = []
    for d in root.glob("checkpoint-*") if root.exists() else []:
        if d.name.split("-")[-1].isdigit() and (d / "trainer_state.json").exists():
            found.append((int(d.name.split("-")[-1]), d))
    return sorted(found)


def usable_checkpoints(acc, root: Path, key: str, force: bool, name: str) -> list[tuple[int, Path]]:
    """Checkpoints under ``root`` written with model key ``key``; the others (all, with ``force``) are deleted."""
    found = checkpoints(root)
    usable = [(s, d) for s, d in found if (read_json(d / "trainer_state.json") or {}).get("key") == key]
    if force or len(usable) < len(found):
        stale = found if force else [x for x in found if x not in usable]
        if acc.is_main_process and stale:
            print(f"{name}: discarding {len(stale)} checkpoint(s) "
                  f"{'(force)' if force else 'of a different configuration'}")
            for _, d in stale:
                shutil.rmtree(d, ignore_errors=True)
        acc.wait_for_everyone()
        usable = [] if force else usable
    return usable


def load_checkpoint(acc, path: Path) -> None:
    """``accelerator.load_state(path)``; a damaged checkpoint is a StageError that names it and says
    what to do, never a half-restored run."""
    from .errors import StageError

    try:
        acc.load_state(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to restore is the checkpoint's fault
        raise StageError(f"{path}: checkpoint cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}). Delete "
                         "this checkpoint-N folder to resume from the one before it, or rerun with --force "
                         "(force=True) to train this model from the start") from exc


def save_checkpoint(acc, root: Path, step: int, state: dict, cfg, ids: Sequence[str], limit: int) -> None:
    """``accelerator.save_state`` into ``root/checkpoint-<step>`` through a temporary folder, with
    provenance and ``trainer_state.json`` (``state`` plus the step); keeps the newest ``limit``."""
    final, tmp = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_provenance(tmp, cfg, ids)
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **state})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(root)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def open_loss_log(path: Path, columns: str, step: int):
    """A CSV loss log opened for appending, truncated to ``step`` (rows a killed run wrote later are dropped)."""
    import pandas as pd

    if step == 0 or not path.exists():
        atomic_write_text(path, columns)
    else:
        df = pd.read_csv(path)
        atomic_write_text(path, columns + df[df["step"] <= step].to_csv(index=False, header=False))
    return open(path, "a", encoding="utf-8")
