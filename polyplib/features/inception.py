"""The FID Inception's 2048-d features of images, and their cache: shared by clustering (stage 02),
FID/KID (stage 04), the GAN comparison (05) and the memorisation check, so it belongs to none of them.

Why the network and not a pixel space: FID, KID and nearest-neighbour copies are all judged in the
space in which the field reports FID. How an image becomes the network's 299 x 299 input is
``metrics.fid_resize``: ``clean`` is clean-fid's protocol, with which the paper computed FID
(:func:`clean_resize`); ``legacy-tf`` is the original TF FID code's bilinear resize, done inside
torch-fidelity's extractor. Real features are cached under a name derived from the data (file list
+ contents) and the settings, so that the same real images are extracted once per machine.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import StageError
from ..runs import atomic_write_bytes, atomic_write_json
from ..training import resolve_device
from .inception_weights import FidWeights, cache_dir

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

    def __init__(self, weights: FidWeights, device: str = "auto", batch_size: int | None = None, resize: str = "clean"):
        import torch
        from torch_fidelity.utils import create_feature_extractor

        if resize not in RESIZE_POLICY:
            raise StageError(f"FID resize {resize!r}: expected one of {', '.join(RESIZE_POLICY)}")
        self.resize = resize
        self.weights = weights
        self.device = str(resolve_device(device))
        # a GPU takes many 299 px images at once; on a CPU a larger batch only holds more memory
        self.batch_size = batch_size or (128 if self.device.startswith("cuda") else 16)
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
    buf = io.BytesIO()
    np.savez(buf, features=feats, key=np.array(key))
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(path.with_suffix(".json"), {
        "key": key, "n": len(ids), "ids": list(ids), "settings": extractor.settings(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return CachedFeatures(feats, key, path, False, list(ids))
