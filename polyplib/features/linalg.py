"""Linear algebra shared by the metrics (the Frechet distance) and the colour matching of Styled-Diff."""
from __future__ import annotations

import numpy as np


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (the project's one sqrtm)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

