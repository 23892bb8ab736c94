"""FID and KID of image sets, through torch-fidelity's FID Inception.

Why not ``torch_fidelity.calculate_metrics`` on folders: the study compares many sets against the
same real images, so the real features are extracted once and cached under a name derived from
the data (file list + contents) and the settings; every set's features are extracted once and
reused for FID, KID and the per-set protocol. The features come from torch-fidelity's own
extractor (``FeatureExtractorInceptionV3``), KID from its ``kid_features_to_metric``; the Fréchet
distance is torch-fidelity's formula computed exactly but without a 2048 x 2048 general
eigenproblem (see :func:`fid_from_features`; tested to agree).

How an image becomes the network's 299 x 299 input is ``metrics.fid_resize`` (FID depends on it):
``clean`` is clean-fid's protocol, with which the paper computed FID (:func:`clean_resize`);
``legacy-tf`` is the original TF FID code's bilinear resize, done inside torch-fidelity's extractor.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import StageError
from ..runs import atomic_write_bytes, atomic_write_json
from .inception_weights import FidWeights, cache_dir
from ..training import resolve_device

INPUT_SIZE = 299
#: metrics.fid_resize -> the name written beside every FID (tables, displays, figures).
RESIZE_SHORT = {"clean": "clean-fid: PIL bicubic to 299 px",
                "legacy-tf": "legacy-tf: torch-fidelity TF1 bilinear to 299 px"}
#: metrics.fid_resize -> how an image reaches the network, in full; recorded with every number.
RESIZE_POLICY = {
    "clean": ("uint8 RGB PNG at its stored size; each channel as float32 resized to 299x299 with PIL bicubic "
              "and clipped to [0, 255], not quantised (clean-fid 'clean' mode; no crop, no padding); then "
              "(x - 128) / 128 and torch-fidelity's Inception layers, as its extractor does after its resize"),
    "legacy-tf": ("uint8 RGB PNG at its stored size, resized to 299x299 inside torch-fidelity's extractor "
                  "(TF1-compatible bilinear, no crop, no padding)"),
}
FEATURE_LAYER = "2048"
#: The layers of torch-fidelity's ``FeatureExtractorInceptionV3.forward`` from the normalised 299 px
#: input to the 2048-d pool (then flattened), in its order.
POOL_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
               "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
               "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


def clean_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's "clean" resize of a uint8 HxWx3 image: float32 size x size x 3 in [0, 255].

    As ``cleanfid.resize.make_resizer("PIL", False, "bicubic", ...)``: each channel becomes a
    float32 ('F') PIL image, is resized with bicubic (antialiased when shrinking) and clipped, and
    is not quantised. Written here so that clean-fid is not a dependency (tested to agree)."""
    from PIL import Image

    channels = [Image.fromarray(image[..., c].astype(np.float32)).resize((size, size), Image.BICUBIC)
                for c in range(image.shape[2])]
    return np.stack([np.asarray(c) for c in channels], axis=-1).clip(0, 255)


class InceptionFeatures:
    """torch-fidelity's FID Inception (pool3, 2048-d) applied to uint8 HxWx3 arrays.

    ``resize`` is ``metrics.fid_resize``. With ``legacy-tf`` images go in at their stored size,
    batched by size, and the extractor's TF1-compatible bilinear makes them 299 px. With ``clean``
    each image is resized by :func:`clean_resize` and the float result goes through the network's
    layers (:meth:`_pool_features`). Why not round it to uint8 for the extractor's own entry point
    (which takes only uint8, and whose resize is the identity at 299 px): that is the quantisation
    clean-fid avoids, and it mattered here - at most 0.5 grey level, but on 20 vs 20 phantom frames
    it moved the FID by 1.1, more than the whole clean vs legacy-tf difference of those sets (0.7).
    The network runs in channels-last memory format: on the 2 shared cores measured it was as fast
    or up to ~1.4x faster than the default (benchmarks/bench_metrics.py; noisy), with the same
    features within float tolerance (tested against the wheel's own model)."""

    def __init__(self, weights: FidWeights, device: str = "auto", batch_size: int = 16, resize: str = "clean"):
        import torch
        from torch_fidelity.utils import create_feature_extractor

        if resize not in RESIZE_POLICY:
            raise StageError(f"FID resize {resize!r}: expected one of {', '.join(RESIZE_POLICY)}")
        self.resize = resize
        self.weights = weights
        self.device = str(resolve_device(device))
        self.batch_size = batch_size
        try:
            model = create_feature_extractor("inception-v3-compat", [FEATURE_LAYER], cuda=False, verbose=False,
                                             feature_extractor_weights_path=str(weights.path))
        except Exception as exc:  # noqa: BLE001 - unpickling or a key/shape mismatch: not usable weights
            raise StageError(f"{weights.path} ({weights.origin}): not a torch-fidelity Inception state dict: "
                             f"{str(exc)[:300]}") from None
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    def settings(self) -> dict:
        """What decides the features (part of every cache key and every record)."""
        return {"extractor": "torch-fidelity inception-v3-compat", "layer": FEATURE_LAYER,
                "weights_sha256": self.weights.sha256, "fid_resize": self.resize,
                "resize": RESIZE_POLICY[self.resize], "torch_fidelity": metadata.version("torch-fidelity")}

    @property
    def protocol(self) -> str:
        """The resize protocol's short name, written beside every FID."""
        return RESIZE_SHORT[self.resize]

    def _input(self, img: np.ndarray) -> np.ndarray:
        """One image as the network takes it: uint8 at its size (legacy-tf), float 299 px (clean)."""
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise StageError(f"FID needs RGB images (HxWx3), got shape {img.shape}")
        return clean_resize(img) if self.resize == "clean" else img

    def _pool_features(self, x):
        """torch-fidelity's forward after its resize, on a float N x 3 x 299 x 299 batch in [0, 255]
        (tested equal to the extractor's own forward on 299 px uint8 input, where its resize is the identity)."""
        import torch

        x = (x - 128) / 128
        for name in POOL_LAYERS:
            x = getattr(self.model, name)(x)
        return torch.flatten(x, 1)

    def _run(self, batch: list[np.ndarray]):
        import torch

        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self._pool_features(x) if x.is_floating_point() else self.model(x)[0]
            return out.float().cpu().numpy()

    def __call__(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """(N, 2048) float32 features, in the order of ``images``."""
        out, batch = [], []
        for img in map(self._input, images):
            if batch and (len(batch) == self.batch_size or batch[0].shape != img.shape):
                out.append(self._run(batch))
                batch = []
            batch.append(img)
        if batch:
            out.append(self._run(batch))
        return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


# ----------------------------------------------------------------------------- the metrics
#: The status of a comparison with a set below ``metrics.min_images``: no FID, no KID, the count instead.
TOO_FEW = "too few images"


def too_few(sizes: dict[str, int] | int, minimum: int) -> str | None:
    """Why a comparison gets no FID or KID: ``'too few images (n = 9 < 100)'`` when a set (or, by name, the
    reference: ``{"n": 300, "real n": 48}``) holds fewer than ``minimum`` images; None when every one is enough."""
    for name, n in ({"n": sizes} if isinstance(sizes, int) else sizes).items():
        if int(n) < minimum:
            return f"{TOO_FEW} ({name} = {int(n)} < {minimum})"
    return None


def statistics(features: np.ndarray) -> dict:
    """Mean and covariance of features (torch-fidelity's ``fid_features_to_statistics``)."""
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(torch.from_numpy(np.asarray(features, np.float32)))


def sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix (the project's one sqrtm)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2) for PSD covariances.

    The same quantity as torch-fidelity's ``fid_statistics_to_metric`` (which takes the general
    eigenvalues of S1 S2), computed as the eigenvalues of the symmetric S1^1/2 S2 S1^1/2: equal
    eigenvalues, but symmetric solvers are several times faster and never return complex noise."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    root = sqrtm_psd(s1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(f1: np.ndarray, f2: np.ndarray, min_images: int = 2) -> float:
    """FID between two feature sets (rows = images; each set needs at least ``min_images`` rows, at least 2:
    the stages pass ``metrics.min_images`` and a smaller set raises a StageError that says so).

    With fewer images than feature dimensions (always, below 2048 images) the covariances have
    low rank, and tr((S1 S2)^1/2) is exactly the sum of the singular values of X1 X2^T divided by
    sqrt((n1 - 1)(n2 - 1)), X the centred features: an n1 x n2 problem instead of 2048 x 2048.
    Agrees with torch-fidelity's FID to float precision (tested), in milliseconds instead of tens
    of seconds on a CPU, which matters when a run compares dozens of sets."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    n1, n2 = len(f1), len(f2)
    refused = too_few({"n": min(n1, n2)}, max(2, min_images))
    if refused:
        raise StageError(f"FID not computed: {refused}; sets of {n1} and {n2} images")
    if min(n1, n2) > f1.shape[1]:
        a, b = statistics(f1), statistics(f2)
        return frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    tr_covmean = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = f1.mean(0) - f2.mean(0)
    tr1, tr2 = (x1 * x1).sum() / (n1 - 1), (x2 * x2).sum() / (n2 - 1)
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subset_size: int, subsets: int = 100,
                      seed: int = 0, min_images: int = 2) -> dict:
    """KID (torch-fidelity, polynomial kernel) with the subset size clipped to the smaller set; each set
    needs at least ``min_images`` images (as :func:`fid_from_features`)."""
    import torch
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = int(min(subset_size, len(f1), len(f2)))
    refused = too_few({"n": min(len(f1), len(f2))}, max(2, min_images))
    if refused:
        raise StageError(f"KID not computed: {refused}; sets of {len(f1)} and {len(f2)} images")
    out = kid_features_to_metric(torch.from_numpy(np.asarray(f1, np.float32)),
                                 torch.from_numpy(np.asarray(f2, np.float32)),
                                 kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"kid_mean": out[KEY_METRIC_KID_MEAN], "kid_sd": out[KEY_METRIC_KID_STD], "kid_subset_size": size}


# ----------------------------------------------------------------------------- cached real features
@dataclass
class CachedFeatures:
    features: np.ndarray
    key: str
    path: Path
    hit: bool
    ids: list[str] = field(default_factory=list)


def data_key(paths: Sequence[Path], ids: Sequence[str], settings: dict) -> str:
    """SHA-256 over the ordered file list, each file's content hash, and the feature settings."""
    from ..data.imageio import file_sha256

    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for pair_id, path in zip(ids, paths):
        h.update(f"{pair_id}\0{Path(path).name}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def cached_features(name: str, ids: Sequence[str], paths: Sequence[Path], extractor: InceptionFeatures,
                    cache: str | None = None) -> CachedFeatures:
    """Features of image files, from ``<cache>/fid-features/<name>-<key>.npz`` when the data match."""
    from ..data.imageio import read_image

    key = data_key(paths, ids, extractor.settings())
    path = cache_dir(cache) / "fid-features" / f"{name}-{key[:20]}.npz"
    if path.is_file():
        with np.load(path) as z:
            if str(z["key"]) == key:
                return CachedFeatures(z["features"], key, path, True, list(ids))
    feats = extractor(read_image(p) for p in paths)
    import io

    buf = io.BytesIO()
    np.savez(buf, features=feats, key=np.array(key))
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(path.with_suffix(".json"), {
        "key": key, "n": len(ids), "ids": list(ids), "settings": extractor.settings(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return CachedFeatures(feats, key, path, False, list(ids))


def real_halves(n: int, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` seeded random splits of range(n) into two disjoint halves (real-vs-real reference)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        perm = rng.permutation(n)
        out.append((np.sort(perm[: n // 2]), np.sort(perm[n // 2: 2 * (n // 2)])))
    return out
