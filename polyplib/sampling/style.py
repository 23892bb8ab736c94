"""Styling: pull the colours of a synthetic image towards those of its source image.

Why: a model trained on a small cluster drifts in colour; the paper's "Styled-Diff" sets are closer
to the real images in FID and help segmentation more. The paper styles in two steps: a
diffusion-guided style transfer (ZeCon + VGG content losses, DINO-ViT style losses), then MKL
colour matching with the ``color-matcher`` package. The guided transfer needs VGG-19 and DINO-ViT
weights that this project does not ship; it has its place in the registry and fails clearly.
MKL (Pitie & Kokaram 2007, the Monge-Kantorovich linear transfer) is a few lines of numpy.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import StageError

_EPS = 1e-10


def _sqrtm_psd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Square root and inverse square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    w = np.clip(w, _EPS, None)
    return (v * np.sqrt(w)) @ v.T, (v / np.sqrt(w)) @ v.T


def mkl_matrix(cov_source: np.ndarray, cov_reference: np.ndarray) -> np.ndarray:
    """The symmetric T with T cov_source T = cov_reference closest to the identity transport:
    T = A^-1/2 (A^1/2 B A^1/2)^1/2 A^-1/2 (A: source covariance, B: reference covariance)."""
    a_half, a_inv_half = _sqrtm_psd(cov_source)
    c_half, _ = _sqrtm_psd(a_half @ cov_reference @ a_half)
    return a_inv_half @ c_half @ a_inv_half


def mkl_transfer(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` (uint8 HxWx3) with the colour mean and covariance of ``reference`` (uint8 HxWx3)."""
    x = np.asarray(image, np.float64).reshape(-1, 3) / 255.0
    r = np.asarray(reference, np.float64).reshape(-1, 3) / 255.0
    t = mkl_matrix(np.cov(x, rowvar=False), np.cov(r, rowvar=False))
    out = (x - x.mean(0)) @ t + r.mean(0)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8).reshape(np.shape(image))


def guided_transfer(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The paper's diffusion-guided style transfer: not available offline (needs weights)."""
    raise StageError(
        "style 'guided' (the paper's diffusion-guided style transfer: ZeCon + VGG-19 content losses, "
        "DINO-ViT style losses, then MKL) needs pretrained VGG-19 and DINO-ViT weights, which this "
        "project does not ship or download; use sampling.style=mkl (colour matching only)")


#: style name -> function(image uint8 HxWx3, reference uint8 HxWx3) -> uint8 HxWx3
STYLES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mkl": mkl_transfer,
    "guided": guided_transfer,
}


def apply_style(name: str, image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Style ``image`` towards ``reference`` with the registered step ``name``."""
    try:
        step = STYLES[name]
    except KeyError:
        raise StageError(f"unknown style '{name}'; known: {', '.join(STYLES)}") from None
    return step(image, reference)
