"""Read and write single image / mask files, surviving the quirks of the real polyp data sets.

Why a module of its own: every public polyp data set has its own surprises (JPEG masks that are
not binary, 3-channel masks, 16-bit or grayscale frames, CVC-ClinicDB TIFFs that PIL cannot
open). Handling them here, once, lets every loader return the same thing: ``uint8 HxWx3`` RGB
images and ``bool HxW`` masks. Anything unreadable raises exactly one :class:`DataError` that
names the file, never a bare PIL/tifffile exception.
"""
from __future__ import annotations

import hashlib
import os
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from ..runs import atomic_write_bytes

__all__ = [
    "MASK_THRESHOLD",
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_mask",
    "write_png",
    "file_sha256",
    "content_hash",
]

#: Mask pixels strictly above this value are polyp. JPEG masks carry 0-7 and 248-255.
MASK_THRESHOLD = 127

#: File extensions (lower case) treated as images by the loaders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- decoding


def _check_readable(path: Path) -> bytes:
    """Fail early, with a clear message, on missing / empty / unreadable files; return magic."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, not an image file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except PermissionError:
        raise DataError(path, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not head:
        raise DataError(path, "empty file (0 bytes)")
    return head


def _decode_pil(path: Path) -> np.ndarray:
    """Decode with PIL, forcing a full decode so truncated files fail here, not later."""
    with Image.open(path) as img:
        img.load()  # decodes everything; raises on truncated data (LOAD_TRUNCATED_IMAGES untouched)
        img = ImageOps.exif_transpose(img)  # same call for images and masks -> consistent
        mode = img.mode
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode == "1":
            img = img.convert("L")
        elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        return np.array(img)


def _decode_tiff(path: Path) -> np.ndarray:
    """TIFF: tifffile first (it reads the CVC-ClinicDB files whose tags mislead PIL), then PIL."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            axes = page.axes
        if "S" in axes and arr.ndim == len(axes):  # samples may be stored first (planar)
            arr = np.moveaxis(arr, axes.index("S"), -1)
        while arr.ndim > 2 and arr.shape[0] == 1:  # leading singleton axes (pages, depth)
            arr = arr[0]
        if arr.ndim == 0 or arr.size == 0:
            raise ValueError(f"no pixel data (shape {arr.shape})")
        return arr
    except Exception as exc:  # noqa: BLE001 - any tifffile failure means: try PIL
        tiff_error = f"{type(exc).__name__}: {exc}"
    try:
        return _decode_pil(path)
    except Exception as exc:  # noqa: BLE001
        pil_error = f"{type(exc).__name__}: {exc}"
    raise DataError(
        path,
        "TIFF file that neither tifffile nor PIL could decode (corrupt or truncated?) "
        f"[tifffile: {_short(tiff_error)}; PIL: {_short(pil_error)}]",
    )


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode(path: str | os.PathLike) -> np.ndarray:
    """Raw decoded array of any dtype, shape HxW or HxWxC; DataError naming the file otherwise."""
    path = Path(path)
    head = _check_readable(path)
    if head[:4] in _TIFF_MAGIC or path.suffix.lower() in (".tif", ".tiff"):
        arr = _decode_tiff(path)
    else:
        try:
            arr = _decode_pil(path)
        except Image.UnidentifiedImageError:
            raise DataError(path, "not an image file (PIL cannot identify its format)") from None
        except Image.DecompressionBombError as exc:
            raise DataError(path, f"image too large to decode safely ({exc})") from None
        except PermissionError:
            raise DataError(path, "permission denied: the file cannot be read") from None
        except Exception as exc:  # noqa: BLE001 - truncated / corrupt data in any codec
            raise DataError(
                path, f"corrupt or truncated image ({type(exc).__name__}: {_short(exc)})"
            ) from None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and not 1 <= arr.shape[2] <= 4):
        raise DataError(path, f"unsupported pixel layout: array of shape {arr.shape}")
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any dtype -> uint8. Wider integers: values that already fit 0..255 are kept (8-bit data in
    a 16-bit container), otherwise the 16-bit range (or the dtype's range) is scaled to 0..255.
    Floats: 0..1 is scaled to 0..255, anything else is clipped."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        vmax = int(arr.max()) if arr.size else 0
        if vmax <= 255:
            return np.clip(arr, 0, 255).astype(np.uint8)
        full = 65535 if vmax <= 65535 else np.iinfo(arr.dtype).max
        return np.clip(np.rint(arr.astype(np.float64) * (255.0 / full)), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        f = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)
    raise TypeError(f"unsupported pixel dtype {arr.dtype}")


def _convert(path, arr: np.ndarray, convert):
    try:
        return convert(arr)
    except TypeError as exc:
        raise DataError(path, str(exc)) from None


# --------------------------------------------------------------------------- public API


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``uint8 HxWx3`` RGB (grayscale is replicated, alpha dropped,
    16-bit scaled, EXIF orientation applied)."""

    def to_rgb(arr: np.ndarray) -> np.ndarray:
        arr = _to_uint8(arr)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        c = arr.shape[2]
        if c in (1, 2):  # L or LA: gray (+ alpha)
            arr = np.repeat(arr[:, :, :1], 3, axis=2)
        elif c == 4:  # RGBA: drop alpha
            arr = arr[:, :, :3]
        return np.ascontiguousarray(arr)

    return _convert(path, _decode(path), to_rgb)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as ``bool HxW``: max over colour channels (alpha ignored), then
    ``> MASK_THRESHOLD``. JPEG ringing (0-7, 248-255) and faint backgrounds come out exact."""

    def to_bool(arr: np.ndarray) -> np.ndarray:
        arr = _to_uint8(arr)
        if arr.ndim == 3:
            c = arr.shape[2]
            colour = arr[:, :, :1] if c <= 2 else arr[:, :, :3]  # LA -> L, RGBA -> RGB
            arr = colour.max(axis=2)
        return arr > MASK_THRESHOLD

    return _convert(path, _decode(path), to_bool)


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as PNG atomically (temp file in the same folder, then ``os.replace``),
    so a crash never leaves a half-written file that a later run would trust.

    Accepts bool masks (written 0/255), uint8 HxW / HxWx3 / HxWx4 and uint16 HxW."""
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    ok = (arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)))) or (
        arr.dtype == np.uint16 and arr.ndim == 2
    )
    if not ok:
        raise DataError(
            path, f"cannot write array of shape {arr.shape} and dtype {arr.dtype} as PNG "
            "(expected bool or uint8 HxW/HxWx3/HxWx4, or uint16 HxW)"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes, streamed in 1 MiB chunks (data sets can be large)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except PermissionError:
        raise DataError(path, "permission denied: the file cannot be read") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a file") from None
    return h.hexdigest()


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the decoded RGB pixels (with the shape), not of the file bytes: a PNG
    re-encoding of a JPEG frame, or the same frame saved twice, gets the same hash."""
    return array_hash(read_image(path))


def array_hash(image: np.ndarray) -> str:
    """SHA-256 of a decoded pixel array and its shape (finds exact duplicate frames)."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()
