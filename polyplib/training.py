"""The training harness shared by the DDPM (stage 02) and GAN (stage 05) trainers.

Both trainers are compared on equal terms, so they share one way of doing the things that are not
the model: accelerate set-up (device, mixed precision, gradient accumulation), the model key,
per-step seeds, ``checkpoint-N`` folders written under a temporary name and renamed, stale-checkpoint
clean-up, resume from the newest, a loss log truncated on resume, the final folder built aside and
swapped in whole with every rank's weight digest, provenance beside weights, and thread control on
shared CPUs.

Why not accelerate's own rotation (``ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=...)``): ``save_state`` then deletes the oldest checkpoint before the new one exists and
writes straight into ``checkpoint_<i>``, and ``load_state()`` resumes from the highest-numbered folder
without asking whether it is complete (a missing ``random_states_*.pkl`` is only logged), so a kill
mid-save could resume inexactly from a half-written checkpoint; ``save_checkpoint`` below renames a
finished folder into place and rotates only after that.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

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


def memory_format(device: torch.device | str) -> torch.memory_format:
    """The memory format convolutional training uses on ``device``: channels-last on the CPU, where
    oneDNN's kernels take it without reordering every call (benchmarks/bench_cpu_layout.py: the GAN and
    the segmenter train faster, in fp32 and bf16 alike); elsewhere torch's default, not measured here."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


@contextlib.contextmanager
def default_layout(model: torch.nn.Module):
    """The model's 4-d weights in torch's default layout inside the block (safetensors writes only
    contiguous tensors), then back in the layout they had; the Parameter objects stay the same, so an
    optimiser's references do too."""
    layout = torch.channels_last if any(p.dim() == 4 and not p.is_contiguous() and
                                        p.is_contiguous(memory_format=torch.channels_last)
                                        for p in model.parameters()) else None
    if layout is not None:
        model.to(memory_format=torch.contiguous_format)
    try:
        yield model
    finally:
        if layout is not None:
            model.to(memory_format=layout)


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


def launch_state(run_device: str):
    """accelerate's state of this launch (process count, rank) for the ``run.device`` setting."""
    return partial_state(resolve_device(run_device))


def resolve_mixed_precision(setting: str, device: torch.device, *, fp16: bool = True, cpu_bf16: bool = True) -> str:
    """A ``mixed_precision`` setting; ``auto``: bf16 on CUDA GPUs that have it, else fp16 (no with
    ``fp16=False``); bf16 on CPUs with native bf16 (no with ``cpu_bf16=False``); else no."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else ("fp16" if fp16 else "no")
    if device.type == "cpu" and cpu_bf16 and cpu_has_bf16():
        return "bf16"
    return "no"


def make_accelerator(run_device: str, mixed_precision: str, gradient_accumulation_steps: int = 1, **auto_rules):
    """A fresh Accelerator for one model on ``run.device``; ``auto_rules`` say what ``auto`` precision
    may pick (``resolve_mixed_precision``)."""
    device = resolve_device(run_device)
    return fresh_accelerator(device, resolve_mixed_precision(mixed_precision, device, **auto_rules),
                             gradient_accumulation_steps)


def on_main_process(acc, fn: Callable[..., object], *args) -> None:
    """``fn(*args)`` on the main process only (files every rank would write alike); the others wait."""
    if acc.is_main_process:
        fn(*args)
    acc.wait_for_everyone()


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of one (micro-)step's random draws, independent of how the run was interrupted."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def trainer_arguments(prog: str, description: str, what: str) -> argparse.ArgumentParser:
    """The command line both trainers share (plain python or ``accelerate launch``); ``what`` names
    what ``--force`` discards besides the checkpoints."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--profile", default="smoke", help="profile name or YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-dir", default=None, help="run folder (default runs/<profile>)")
    parser.add_argument("--force", action="store_true", help=f"discard checkpoints and {what}, retrain")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this step, as if killed")
    return parser


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


#: settings added after models were trained, at the value every earlier model had: left out of a weights
#: key while they hold it, so a model trained before the setting existed is still found finished
ADDED_AT_DEFAULT = {"ddpm.norm_groups": 32, "data.phantom.colour_jitter": None}


def _without_added(prefix: str, values: dict) -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            v = _without_added(f"{prefix}.{k}", v)
        if f"{prefix}.{k}" not in ADDED_AT_DEFAULT or ADDED_AT_DEFAULT[f"{prefix}.{k}"] != v:
            out[k] = v
    return out


def weights_key(section: str, settings: dict, cfg, ids: Sequence[str], processes: int | None) -> str:
    """The key that decides whether a model's weights can be reused: its ``settings`` (under the
    config ``section`` name), the data settings but not where the data lies, the sorted training ids
    and, where given, the process count (the data order is split per process). A setting of
    ``ADDED_AT_DEFAULT`` at that value is left out: models trained before it existed keep their key."""
    data = _without_added("data", {k: v for k, v in cfg.data.model_dump(mode="json").items() if k != "root"})
    payload = {section: _without_added(section, settings), "data": data, "ids": sorted(ids)}
    if processes is not None:
        payload["processes"] = processes
    return config_key(payload)


def finished_folder(folder: str | Path, key: str | None, required: Sequence[str]) -> bool:
    """A final model folder: ``train_state.json`` says finished (with model key ``key``, if given)
    and the ``required`` files are there."""
    folder = Path(folder)
    state = read_json(folder / "train_state.json")
    return bool(state and state.get("finished") and all((folder / name).exists() for name in required)
                and (key is None or state.get("key") == key))


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


def resume_latest(acc, root: Path, key: str, force: bool, name: str) -> tuple[int, dict]:
    """Load the newest checkpoint under ``root`` written with model key ``key`` (the others, all with
    ``force``, are deleted): (its step, its trainer_state.json), or (0, {}) when there is none."""
    usable = usable_checkpoints(acc, root, key, force, name)
    if not usable:
        return 0, {}
    step, path = usable[-1]
    load_checkpoint(acc, path)
    return step, read_json(path / "trainer_state.json") or {}


def save_checkpoint(acc, root: Path, step: int, state: dict, cfg, ids: Sequence[str], limit: int) -> None:
    """``accelerator.save_state`` into ``root/checkpoint-<step>`` through a temporary folder, with
    provenance and ``trainer_state.json`` (the step, the launch's process count and precision, and
    ``state``); then keeps the newest ``limit``."""
    final, tmp = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_provenance(tmp, cfg, ids)
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "processes": acc.num_processes,
                                                        "mixed_precision": acc.mixed_precision, **state})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in checkpoints(root)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def write_final_folder(acc, folder: Path, cfg, ids: Sequence[str], rank_digest: dict, state: dict,
                       write_weights: Callable[[Path], None], move: dict[str, Path]) -> None:
    """The trained model's folder, built aside and swapped in whole (``runs.atomic_dir``).

    Every rank's ``rank_digest`` (hashes of its weights) is gathered first, so ``train_state.json``
    shows that data-parallel ranks ended identical. The main process then writes the weights
    (``write_weights(tmp)``), the provenance, ``train_state.json`` (finished, the launch's process
    count and precision, ``state``, the digests) and moves in what ``move`` names (name in the
    folder -> where it is now; missing ones are skipped)."""
    from accelerate.utils import gather_object

    from .runs import atomic_dir

    digests = gather_object([{"rank": acc.process_index, **rank_digest}])
    if acc.is_main_process:
        with atomic_dir(folder) as tmp:
            write_weights(tmp)
            write_provenance(tmp, cfg, ids)
            atomic_write_json(tmp / "train_state.json", {
                "finished": True, "processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
                **state, "rank_digests": digests})
            for name, source in move.items():
                if source.exists():
                    os.replace(source, tmp / name)
    acc.wait_for_everyone()


# ----------------------------------------------------------------------------- loss log and progress
def open_loss_log(path: Path, columns: str, step: int):
    """A CSV loss log opened for appending, truncated to ``step`` (rows a killed run wrote later are dropped)."""
    import pandas as pd

    if step == 0 or not path.exists():
        atomic_write_text(path, columns)
    else:
        df = pd.read_csv(path)
        atomic_write_text(path, columns + df[df["step"] <= step].to_csv(index=False, header=False))
    return open(path, "a", encoding="utf-8")


class StepLog:
    """The progress bar (local main process) and the loss log (main process) of a run from ``step`` on.

    Every row is ``step``, the step's ``values`` (6 significant digits), the learning rate, the images
    seen and the elapsed seconds, flushed at once so a killed run loses no finished step."""

    def __init__(self, acc, path: Path, columns: str, step: int, total: int, name: str, show: bool):
        from .progress import tqdm

        self.log = open_loss_log(path, columns, step) if acc.is_main_process else None
        self.bar = tqdm(total=total, initial=step, desc=name, dynamic_ncols=True,
                        disable=not (acc.is_local_main_process and show))

    def record(self, step: int, values: Sequence[float], lr: float, images: int, elapsed: float,
               **postfix: str) -> None:
        self.bar.update(1)
        self.bar.set_postfix(**postfix)
        if self.log is not None:
            self.log.write(",".join([str(step), *(f"{v:.6g}" for v in values), f"{lr:g}", str(images),
                                     f"{elapsed:.3f}"]) + "\n")
            self.log.flush()

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()


def final_losses(path: Path, columns: Sequence[str]) -> list[float | None]:
    """Mean of each column over the last tenth of a loss log (None without a log or a row)."""
    import pandas as pd

    df = pd.read_csv(path) if path.exists() else None
    if df is None or not len(df):
        return [None] * len(columns)
    tail = df.tail(max(1, len(df) // 10))
    return [float(tail[c].mean()) for c in columns]
