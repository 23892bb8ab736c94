"""MS-SSIM within a set, as a diversity score (lower = more diverse), via pytorch-msssim.

The standard setting (Gaussian window 11, sigma 1.5, 5 scales) needs images larger than 160 px:
pytorch-msssim asserts ``min side > (win_size - 1) * 2**4`` whatever the number of scales. So the
window shrinks with the resolution: the largest odd ``win_size <= 11`` that passes that check and
still fits the coarsest of the 5 scales (``win_size <= min side / 16``, otherwise the Gaussian is
silently skipped there). Scales, weights and sigma stay the standard ones. 64 px -> 3,
96 px -> 5, 128 px -> 7, >= 176 px -> 11. The choice is recorded beside every number.
"""
from __future__ import annotations

import numpy as np

from ..errors import StageError

#: The standard MS-SSIM scale weights (Wang et al. 2003), also pytorch-msssim's default: 5 scales.
WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIGMA = 1.5
MAX_WIN = 11



def window_for(min_side: int) -> dict:
    """The MS-SSIM settings used for images whose smaller side is ``min_side`` pixels."""
    scales = len(WEIGHTS)
    win = MAX_WIN
    while win >= 3 and not ((win - 1) * 2 ** (scales - 1) < min_side and win <= min_side / 2 ** (scales - 1)):
        win -= 2
    if win < 3:
        raise StageError(f"MS-SSIM with {scales} scales needs images of at least 48 px (window 3); "
                         f"these have a smaller side of {min_side} px")
    return {"win_size": win, "win_sigma": WIN_SIGMA, "scales": scales, "weights": list(WEIGHTS),
            "min_side": int(min_side), "data_range": 255}


def pair_indices(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` seeded pairs (i, j), i != j, drawn uniformly with replacement.

    With replacement, every set gets exactly the same number of pairs however small it is."""
    if n < 2:
        raise StageError(f"MS-SSIM within a set needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n
    return i, j


def msssim_pairs(images: np.ndarray, n_pairs: int, seed: int, batch: int = 64,
                 device: str = "cpu") -> tuple[np.ndarray, dict]:
    """MS-SSIM of ``n_pairs`` seeded random pairs of ``images`` (N, H, W, 3 uint8); values and settings."""
    import torch
    from pytorch_msssim import ms_ssim

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise StageError(f"MS-SSIM needs a stack of RGB images (N, H, W, 3), got {images.shape}")
    win = window_for(min(images.shape[1:3]))
    i, j = pair_indices(len(images), n_pairs, seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    values = []
    with torch.inference_mode():
        for s in range(0, n_pairs, batch):
            a, b = x[i[s:s + batch]].to(device), x[j[s:s + batch]].to(device)
            values.append(ms_ssim(a, b, data_range=255, size_average=False, win_size=win["win_size"],
                                  win_sigma=WIN_SIGMA, weights=list(WEIGHTS)).cpu().numpy())
    return np.concatenate(values).astype(np.float64), win
