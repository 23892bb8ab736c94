"""Bring a pair to the profile's square resolution, and measure what the dataset report needs.

Resize policies (``data.resize``):
- ``stretch``: resize to size x size ignoring aspect ratio (what the paper did at 256 x 256);
- ``center-crop``: scale the shorter side to ``size``, then crop the centre square;
- ``pad``: scale the longer side to ``size``, then pad with black (like the scope's dark border).
Images use area interpolation (bilinear when enlarging); masks use nearest neighbour and are
re-binarised, so a prepared mask is exactly 0/255.
"""
from __future__ import annotations

import cv2
import numpy as np

from .imageio import array_hash

POLICIES = ("stretch", "center-crop", "pad")


def _resize(arr: np.ndarray, h: int, w: int, nearest: bool) -> np.ndarray:
    if arr.shape[:2] == (h, w):
        return arr
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h * w < arr.shape[0] * arr.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(arr, (w, h), interpolation=interp)


def fit(image: np.ndarray, mask: np.ndarray, size: int, policy: str = "stretch") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxWx3, bool HxW) -> (uint8 size x size x 3, bool size x size) by ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown resize policy '{policy}'; allowed: {', '.join(POLICIES)}")
    m = mask.astype(np.uint8) * 255
    h, w = image.shape[:2]
    if policy == "stretch":
        img, msk = _resize(image, size, size, False), _resize(m, size, size, True)
    elif policy == "center-crop":
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        img, msk = _resize(image, nh, nw, False), _resize(m, nh, nw, True)
        top, left = (nh - size) // 2, (nw - size) // 2
        img, msk = img[top:top + size, left:left + size], msk[top:top + size, left:left + size]
    else:
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        img_s, msk_s = _resize(image, nh, nw, False), _resize(m, nh, nw, True)
        img = np.zeros((size, size, 3), np.uint8)
        msk = np.zeros((size, size), np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        img[top:top + nh, left:left + nw] = img_s
        msk[top:top + nh, left:left + nw] = msk_s
    return np.ascontiguousarray(img), msk > 127


def pair_stats(image: np.ndarray, mask: np.ndarray) -> dict:
    """Coverage, connected components, mean colours and dark border of one pair (original size)."""
    m = mask.astype(bool)
    n_comp = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] - 1
    bg = ~m
    polyp_rgb = image[m].mean(0) if m.any() else np.full(3, np.nan)
    bright = image.max(axis=2) >= 20  # the dark scope border and black boxes are excluded from bg colour
    bg_rgb = image[bg & bright].mean(0) if (bg & bright).any() else np.full(3, np.nan)
    return {
        "height": image.shape[0], "width": image.shape[1],
        "coverage": float(m.mean()), "components": int(n_comp),
        "polyp_r": float(polyp_rgb[0]), "polyp_g": float(polyp_rgb[1]), "polyp_b": float(polyp_rgb[2]),
        "bg_r": float(bg_rgb[0]), "bg_g": float(bg_rgb[1]), "bg_b": float(bg_rgb[2]),
        "dark_fraction": float((image.max(axis=2) < 20).mean()),
        "content_hash": array_hash(image),
    }
