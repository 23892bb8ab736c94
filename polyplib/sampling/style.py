"""MKL colour matching of a synthetic image to its source image: the last step of Styled-Diff.

Why: a model trained on a small cluster drifts in colour. The authors end their styling with
``color_matcher.ColorMatcher().transfer(src, ref, method='mkl')`` (Pitie & Kokaram 2007, the
Monge-Kantorovich linear transfer), wrapped in the package's ``Normalizer``: both images are
min-max stretched to the full 0-255 range first, and the result is min-max stretched again to
uint8. :func:`colour_match` does exactly that sequence.

Why not the package itself: ``color-matcher`` is GPL-3.0 and polyplib is MIT, so a runtime
dependency would change the licence of every install. The transfer is a few lines of numpy; the
tests check it against ``color-matcher`` (a test-only dependency, never imported here).
The guided style transfer before it lives in :mod:`polyplib.sampling.guided`.
"""
from __future__ import annotations

import numpy as np

from ..features.linalg import sqrtm_psd


def mkl_matrix(cov_source: np.ndarray, cov_reference: np.ndarray) -> np.ndarray:
    """The symmetric T with T cov_source T = cov_reference closest to the identity transport:
    T = A^-1/2 (A^1/2 B A^1/2)^1/2 A^-1/2 (A: source covariance, B: reference covariance)."""
    a_half = sqrtm_psd(cov_source)
    a_inv_half = np.linalg.pinv(a_half, hermitian=True)
    return a_inv_half @ sqrtm_psd(a_half @ cov_reference @ a_half) @ a_inv_half


def mkl_transfer(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` (H,W,3, any scale) with the colour mean and covariance of ``reference``, as float64."""
    x = np.asarray(image, np.float64).reshape(-1, 3)
    r = np.asarray(reference, np.float64).reshape(-1, 3)
    t = mkl_matrix(np.cov(x, rowvar=False), np.cov(r, rowvar=False))
    return ((x - x.mean(0)) @ t + r.mean(0)).reshape(np.shape(image))


def _stretch(values: np.ndarray) -> np.ndarray:
    """color-matcher's ``Normalizer``: min-max to [0, 1] (a constant image is left as it is)."""
    lo, hi = float(values.min()), float(values.max())
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else values


def colour_match(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The authors' colour matching of ``image`` to ``reference`` (both uint8 H,W,3) -> uint8 H,W,3.

    ``Normalizer(x).type_norm()`` on each uint8 input, MKL transfer, ``Normalizer(res).uint8_norm()``.
    """
    src = np.rint(_stretch(np.asarray(image, np.float64)) * 255.0)
    ref = np.rint(_stretch(np.asarray(reference, np.float64)) * 255.0)
    return np.rint(_stretch(mkl_transfer(src, ref)) * 255.0).astype(np.uint8)
