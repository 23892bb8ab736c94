"""Turn a generated 4-channel sample into a labelled pair, and decide whether to keep it.

Why: the mask channel of a diffusion sample is a grey image, not a label. The paper thresholds it
at 127 and opens it with a 16x16 ellipse (at 256 px) so that specks and thin bridges do not become
"polyps"; we also drop components smaller than a share of the frame, and reject pairs whose mask
ends empty or covers nearly the whole frame instead of writing them silently as training data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

#: mask pixels strictly above this uint8 value are polyp (= mask channel > 0 in [-1, 1])
MASK_THRESHOLD = 127
#: the paper's kernel sizes are given for 256 px frames
REFERENCE_RESOLUTION = 256


def scaled_px(px: int, resolution: int, minimum: int) -> int:
    """A kernel size given at 256 px, scaled to ``resolution`` (0 stays 0: the step is off)."""
    if px <= 0:
        return 0
    return max(minimum, int(px * resolution / REFERENCE_RESOLUTION + 0.5))


def ellipse(size: int) -> np.ndarray:
    """The elliptical structuring element the authors use (``cv2.MORPH_ELLIPSE``, size x size)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def opening(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological opening of a 0/1 uint8 mask with a size x size ellipse.

    A true opening: erosion, then dilation with the *reflected* element. ``cv2.MORPH_OPEN`` (the
    authors' call) reuses the unreflected element, which for even sizes such as 16 shifts the
    result by a pixel and can add pixels that were not in the mask."""
    kernel = ellipse(size)
    eroded = cv2.erode(mask, kernel)
    anchor = (size - 1 - size // 2, size - 1 - size // 2)
    return cv2.dilate(eroded, np.ascontiguousarray(kernel[::-1, ::-1]), anchor=anchor)


def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` (bool) dilated by a size x size ellipse: the region RePaint redraws."""
    mask = np.asarray(mask, bool)
    if size <= 0:
        return mask.copy()
    return cv2.dilate(mask.astype(np.uint8), ellipse(size)).astype(bool)


@dataclass(frozen=True)
class PostProcess:
    """Post-processing parameters at the working resolution (kernels already scaled)."""

    opening_px: int
    min_component_fraction: float
    max_coverage: float
    threshold: int = MASK_THRESHOLD

    @classmethod
    def from_config(cls, cfg) -> "PostProcess":
        s, res = cfg.sampling, cfg.data.resolution
        return cls(scaled_px(s.opening_px, res, 3), s.min_component_fraction, s.max_coverage)

    def as_row(self) -> dict:
        return {f"post_{k}": v for k, v in asdict(self).items()}


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] -> uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def clean_mask(raw: np.ndarray, post: PostProcess) -> np.ndarray:
    """uint8 mask channel -> bool mask: threshold, elliptical opening, remove small components."""
    mask = (np.asarray(raw) > post.threshold).astype(np.uint8)
    if post.opening_px > 0:
        mask = opening(mask, post.opening_px)
    min_area = post.min_component_fraction * mask.size
    if min_area > 0 and mask.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = np.zeros(n, bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
        mask = keep[labels].astype(np.uint8)
    return mask.astype(bool)


def judge(mask: np.ndarray, post: PostProcess) -> tuple[bool, str, float, int]:
    """(accepted, reason, coverage, components) of a cleaned mask; reason is '' when accepted."""
    coverage = float(np.mean(mask)) if mask.size else 0.0
    components = int(cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1) if mask.any() else 0
    if components == 0:
        return False, "empty mask after post-processing", coverage, components
    if coverage > post.max_coverage:
        return False, f"mask covers {coverage:.1%} of the frame (max {post.max_coverage:.0%})", coverage, components
    return True, "", coverage, components
