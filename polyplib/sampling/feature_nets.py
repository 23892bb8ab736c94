"""The ImageNet feature networks of the guided style transfer, read from files the user gives.

Why: the authors' code downloads VGG-19 (torchvision) and DINO ViT-B/8 (torch.hub) at run time.
This project never downloads silently: ``sampling.style.vgg_weights`` and
``sampling.style.dino_weights`` name state-dict files, checked key by key and shape by shape
against the architecture before anything is computed. ``sampling.style.download=true`` lets
torchvision / timm fetch missing weights into their usual caches instead (needs internet).
Without either, :func:`missing_reason` says what to set and the styled sets are reported absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import StageError

#: VGG-19 ``features`` modules the losses read: conv1_1 is module 0, conv2_1 module 5
VGG_LAYERS = {"conv1_1": 0, "conv2_1": 5}
VGG_FILE_HINT = "torchvision's vgg19 ImageNet state dict, e.g. vgg19-dcbb9e9d.pth"
DINO_FILE_HINT = "the DINO ViT's state dict, e.g. dino_vitbase8_pretrain.pth or timm's vit_base_patch8_224.dino"


@dataclass
class FeatureNets:
    """VGG-19 features up to conv2_1 and a DINO ViT, frozen, with where their weights came from."""

    vgg: torch.nn.Module
    dino: torch.nn.Module
    origin: dict

    def to(self, device) -> "FeatureNets":
        self.vgg.to(device)
        self.dino.to(device)
        return self


def missing_reason(style) -> str | None:
    """Why the guided style transfer cannot run with this ``sampling.style`` section (None: it can)."""
    missing = [key for key in ("vgg_weights", "dino_weights") if not getattr(style, key)]
    if not missing or style.download:
        return None
    return ("the guided style transfer needs ImageNet VGG-19 and DINO ViT weights, which this project does not "
            f"ship; set {' and '.join('sampling.style.' + k for k in missing)} to state-dict files "
            f"({VGG_FILE_HINT}; {DINO_FILE_HINT}), or sampling.style.download=true on a machine with internet")


def _read_state_dict(path: Path, key: str) -> dict:
    if not path.is_file():
        raise StageError(f"{path}: {key} names no file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # noqa: BLE001 - any unreadable file is the same user error
        raise StageError(f"{path}: {key} is not a readable torch state dict ({exc.__class__.__name__}: {exc})") from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise StageError(f"{path}: {key} must hold a state dict (a mapping of tensor names), got {type(state).__name__}")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def check_state_dict(state: dict, model: torch.nn.Module, path: Path, key: str, prefix: str = "") -> dict:
    """The entries of ``state`` that ``model`` needs (under ``prefix``), or one error naming the first
    missing or mismatched key and the shape expected."""
    out = {}
    for name, tensor in model.state_dict().items():
        have = state.get(prefix + name)
        if have is None:
            raise StageError(f"{path}: {key} has no '{prefix + name}' (expected shape {tuple(tensor.shape)}); "
                             f"is it {VGG_FILE_HINT if 'vgg' in key else DINO_FILE_HINT}?")
        if tuple(have.shape) != tuple(tensor.shape):
            raise StageError(f"{path}: {key} '{prefix + name}' has shape {tuple(have.shape)}, expected "
                             f"{tuple(tensor.shape)}")
        out[name] = have
    return out


def vgg_features(full: bool = False) -> torch.nn.Module:
    """VGG-19 ``features`` modules 0-5 (conv1_1 ... conv2_1), random weights; ``full``: all of them
    (a file must hold every conv layer to be taken as VGG-19)."""
    from torchvision.models import vgg19

    features = vgg19(weights=None).features
    return features if full else features[: VGG_LAYERS["conv2_1"] + 1]


def load_vgg(path: str | None, download: bool = False) -> tuple[torch.nn.Module, dict]:
    """VGG-19 features up to conv2_1 with ImageNet weights from ``path`` (or torchvision's download)."""
    net = vgg_features()
    if path:
        file = Path(path).expanduser()
        state = _read_state_dict(file, "sampling.style.vgg_weights")
        check_state_dict(state, vgg_features(full=True), file, "sampling.style.vgg_weights", "features.")
        net.load_state_dict({k: state[f"features.{k}"] for k in net.state_dict()})
        origin = {"file": str(file.resolve()), "sha256": _sha256(file)}
    elif download:
        from torchvision.models import VGG19_Weights, vgg19

        net = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features[: VGG_LAYERS["conv2_1"] + 1]
        origin = {"download": "torchvision VGG19_Weights.IMAGENET1K_V1"}
    else:
        raise StageError("sampling.style.vgg_weights is not set (" + VGG_FILE_HINT + ")")
    return net.eval().requires_grad_(False), origin


def load_dino(path: str | None, model_name: str, download: bool = False) -> tuple[torch.nn.Module, dict]:
    """The timm ViT ``model_name`` (no classifier head) with DINO weights from ``path`` (or timm's download)."""
    import timm

    try:
        net = timm.create_model(model_name, pretrained=bool(download and not path), num_classes=0)
    except RuntimeError as exc:
        raise StageError(f"sampling.style.dino_model '{model_name}': {exc}") from None
    if path:
        file = Path(path).expanduser()
        state = _read_state_dict(file, "sampling.style.dino_weights")
        net.load_state_dict(check_state_dict(state, net, file, "sampling.style.dino_weights"))
        origin = {"file": str(file.resolve()), "sha256": _sha256(file), "model": model_name}
    elif download:
        origin = {"download": f"timm {model_name}"}
    else:
        raise StageError("sampling.style.dino_weights is not set (" + DINO_FILE_HINT + ")")
    return net.eval().requires_grad_(False), origin


def load_feature_nets(style) -> FeatureNets:
    """Both networks for a ``sampling.style`` section; errors name the file and the key expected."""
    vgg, vgg_origin = load_vgg(style.vgg_weights, style.download)
    dino, dino_origin = load_dino(style.dino_weights, style.dino_model, style.download)
    return FeatureNets(vgg, dino, {"vgg": vgg_origin, "dino": dino_origin})


def _sha256(path: Path) -> str:
    from ..data.imageio import file_sha256

    return file_sha256(path)
