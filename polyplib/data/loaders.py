"""Find image/mask pairs in the folder layouts the public polyp data sets ship with.

Why: each data set (Kvasir-SEG, HyperKvasir, CVC-ClinicDB, CVC-ColonDB, ETIS, the PraNet split,
PolypGen, and the project's own ``images/`` + ``masks/`` sets) arranges its files differently,
and copies in the wild differ in folder-name case and file extensions. One reader per layout
turns all of them into the same sorted list of :class:`Pair` records, and every inconsistency
(orphan image or mask, duplicate stems, an empty or unrecognised folder) is one
:class:`DataError` that says what was expected and what was found.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from polyplib.errors import DataError

from .imageio import IMAGE_EXTENSIONS, content_hash, read_image, read_mask

__all__ = [
    "Pair",
    "LAYOUTS",
    "detect_layout",
    "find_pairs",
    "load_pair",
    "find_duplicates",
    "content_hash",
]


@dataclass(frozen=True)
class Pair:
    """One image and its mask. ``id`` is unique within the data set."""

    id: str  # stem; for sub-sets "subset/stem"
    image: Path
    mask: Path | None  # None only when find_pairs(..., allow_missing_masks=True)
    dataset: str  # layout name, e.g. "kvasir-seg"
    subset: str = ""  # e.g. PraNet test sub-set "CVC-ClinicDB", PolypGen centre "C1"


#: Layout name -> the folders it expects. Order = detection preference (most specific first).
LAYOUTS: dict[str, str] = {
    "kvasir-seg": "Kvasir-SEG/{images,masks}/*.jpg (+ kavsir_bboxes.json); "
    "root may be the Kvasir-SEG folder or its parent",
    "hyperkvasir-seg": "segmented-images/{images,masks}/*.jpg (+ bounding-boxes.json); "
    "root may be segmented-images or its parent",
    "cvc-clinicdb": "CVC-ClinicDB: 'Original/' + 'Ground Truth/' (TIFF), "
    "or the PNG copies 'PNG/Original/' + 'PNG/Ground Truth/'",
    "cvc-colondb": "CVC-ColonDB/{images,masks} (or images/ + masks/ with layout='cvc-colondb'); "
    "the original flat release is cvc-colondb-flat",
    "cvc-colondb-flat": "CVC-ColonDB as released: one folder of images <N>.tif(f), masks p<N>.tif(f) "
    "and contours cp<N>.tif(f) (ignored); root may be that folder or the parent of CVC-ColonDB/",
    "etis-larib": "ETIS-LaribPolypDB/{ETIS-LaribPolypDB,GroundTruth} (mask p<N>.tif for image "
    "<N>.tif), or ETIS-LaribPolypDB/{images,masks}",
    "pranet-train": "TrainDataset/{images,masks}",
    "pranet-test": "TestDataset/<subset>/{images,masks}, subsets Kvasir, CVC-ClinicDB, "
    "CVC-ColonDB, ETIS-LaribPolypDB, CVC-300",
    "polypgen": "data_C1 ... data_C6/{images_C<n>,masks_C<n>} (mask <stem>_mask.jpg), optionally "
    "sequenceData/positive/<seq>/{images_<seq>,masks_<seq>}",
    "generic": "images/ + masks/ with matching file stems (also what this project writes for "
    "prepared, phantom and synthetic sets)",
}


@dataclass(frozen=True)
class _Group:
    """One images folder + its masks folder; a layout yields one or more (sub-sets)."""

    subset: str
    images: Path
    masks: Path
    mask_prefix: str = ""  # ETIS: mask "p1.tif" for image "1.tif"
    mask_suffix: str = ""  # PolypGen: mask "x_mask.jpg" for image "x.jpg"
    flat: bool = False  # CVC-ColonDB release: images, masks and contours in one folder (images == masks)


# --------------------------------------------------------------------------- folder helpers


def _norm(name: str) -> str:
    """Folder names compare case-insensitively and ignoring ' ', '_' and '-'
    ("Ground Truth" == "GroundTruth" == "ground_truth")."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _child(folder: Path | None, *names: str) -> Path | None:
    """The sub-folder of ``folder`` called any of ``names`` (normalised), or None."""
    if folder is None:
        return None
    wanted = {_norm(n) for n in names}
    hits = [p for p in _subdirs(folder) if _norm(p.name) in wanted]
    if len(hits) > 1:
        raise DataError(
            folder, f"ambiguous sub-folders {', '.join(repr(h.name) for h in hits)}: "
            "they differ only in case or separators; keep one"
        )
    return hits[0] if hits else None


def _has_file(folder: Path, name: str) -> bool:
    try:
        return any(p.is_file() and p.name.casefold() == name.casefold() for p in folder.iterdir())
    except OSError:
        return False


def _named(folder: Path, *names: str) -> bool:
    return _norm(folder.resolve().name) in {_norm(n) for n in names}


def _images_masks(base: Path | None) -> tuple[Path, Path] | None:
    im = _child(base, "images", "image")
    mk = _child(base, "masks", "mask")
    return (im, mk) if im is not None and mk is not None else None


def _single(base: Path | None, subset: str = "", **kw) -> list[_Group] | None:
    pair = _images_masks(base)
    return [_Group(subset, *pair, **kw)] if pair else None


# --------------------------------------------------------------------------- layout readers
# Each reader returns (groups, level) or None if ``root`` does not have the layout.
# level 2: root itself is identified as the data set (its name, a marker file or its own
#          sub-folders, e.g. Original/ + Ground Truth/);
# level 1: the data set is a named sub-folder of root (root is its parent);
# level 0: only a plain images/ + masks/ folder, accepted when the layout is named explicitly.
# Auto-detection ignores level 0 and prefers level 2 over 1, so TestDataset/ (which holds an
# ETIS-LaribPolypDB/ sub-folder) is "pranet-test", not "etis-larib".

_Match = tuple[list[_Group], int]


def _first(*candidates: tuple[list[_Group] | None, int]) -> _Match | None:
    return next(((g, lvl) for g, lvl in candidates if g), None)


def _top_folder_reader(top: str, marker: str | None) -> Callable[[Path], _Match | None]:
    def read(root: Path) -> _Match | None:
        marked = _named(root, top) or (marker is not None and _has_file(root, marker))
        return _first((_single(root) if marked else None, 2), (_single(_child(root, top)), 1), (_single(root), 0))

    return read


def _clinicdb_here(base: Path | None) -> list[_Group] | None:
    for folder in (base, _child(base, "TIF", "TIFF"), _child(base, "PNG")):
        orig, gt = _child(folder, "Original"), _child(folder, "Ground Truth")
        if orig is not None and gt is not None:
            return [_Group("", orig, gt)]
    return None


def _clinicdb(root: Path) -> _Match | None:
    child = _child(root, "CVC-ClinicDB")
    return _first(
        (_clinicdb_here(root), 2),
        (_single(root) if _named(root, "CVC-ClinicDB") else None, 2),
        (_clinicdb_here(child) or _single(child), 1),
        (_single(root), 0),
    )


def _etis_here(base: Path | None) -> list[_Group] | None:
    im, gt = _child(base, "ETIS-LaribPolypDB"), _child(base, "GroundTruth")
    return [_Group("", im, gt, mask_prefix="p")] if im is not None and gt is not None else None


def _etis(root: Path) -> _Match | None:
    child = _child(root, "ETIS-LaribPolypDB")
    return _first(
        (_etis_here(root), 2),
        (_single(root, mask_prefix="p") if _named(root, "ETIS-LaribPolypDB") else None, 2),
        (_etis_here(child) or _single(child, mask_prefix="p"), 1),
        (_single(root, mask_prefix="p"), 0),
    )


def _subsets(base: Path | None) -> list[_Group] | None:
    groups = [g for sub in (_subdirs(base) if base else []) for g in (_single(sub, subset=sub.name) or [])]
    return groups or None


def _pranet_test(root: Path) -> _Match | None:
    return _first(
        (_subsets(root) if _named(root, "TestDataset") else None, 2),
        (_subsets(_child(root, "TestDataset")), 1),
        (_subsets(root), 0),
    )


def _polypgen_here(base: Path) -> list[_Group] | None:
    groups: list[_Group] = []
    for d in _subdirs(base):
        m = re.fullmatch(r"datac(\d+)", _norm(d.name))
        if m:
            n = m.group(1)
            im, mk = _child(d, f"images_C{n}"), _child(d, f"masks_C{n}")
            if im is not None and mk is not None:
                groups.append(_Group(f"C{n}", im, mk, mask_suffix="_mask"))
    positive = _child(_child(base, "sequenceData"), "positive")
    for seq in _subdirs(positive) if positive is not None else []:
        im, mk = _child(seq, f"images_{seq.name}"), _child(seq, f"masks_{seq.name}")
        if im is not None and mk is not None:
            groups.append(_Group(seq.name, im, mk, mask_suffix="_mask"))
    return groups or None


def _polypgen(root: Path) -> _Match | None:
    return _first((_polypgen_here(root), 2), *((_polypgen_here(d), 1) for d in _subdirs(root)))


# CVC-ColonDB as released: image "12.tiff", mask "p12.tiff", contour "cp12.tiff" side by side.
_FLAT_KINDS = (("image", re.compile(r"\d+")), ("mask", re.compile(r"p\d+")), ("contour", re.compile(r"cp\d+")))


def _flat_kind(stem: str) -> str | None:
    """Which file of a flat CVC-ColonDB folder a (casefolded) stem names, or None."""
    return next((kind for kind, pattern in _FLAT_KINDS if pattern.fullmatch(stem)), None)


def _flat_here(base: Path | None) -> list[_Group] | None:
    """A flat CVC-ColonDB folder holds at least one numbered image and one p-numbered mask."""
    if base is None:
        return None
    kinds = {_flat_kind(p.stem.casefold()) for p in _image_files(base)}
    return [_Group("", base, base, mask_prefix="p", flat=True)] if {"image", "mask"} <= kinds else None


def _colondb_flat(root: Path) -> _Match | None:
    return _first((_flat_here(root), 2), (_flat_here(_child(root, "CVC-ColonDB")), 1))


def _generic(root: Path) -> _Match | None:
    return _first((_single(root), 2))


_READERS: dict[str, Callable[[Path], _Match | None]] = {
    "kvasir-seg": _top_folder_reader("Kvasir-SEG", "kavsir_bboxes.json"),
    "hyperkvasir-seg": _top_folder_reader("segmented-images", "bounding-boxes.json"),
    "cvc-clinicdb": _clinicdb,
    "cvc-colondb": _top_folder_reader("CVC-ColonDB", None),
    "cvc-colondb-flat": _colondb_flat,
    "etis-larib": _etis,
    "pranet-train": _top_folder_reader("TrainDataset", None),
    "pranet-test": _pranet_test,
    "polypgen": _polypgen,
    "generic": _generic,
}
assert list(_READERS) == list(LAYOUTS)


# --------------------------------------------------------------------------- detection


def _check_root(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(root, "folder not found")
    if not root.is_dir():
        raise DataError(root, "not a folder")
    return root


def _visible(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise DataError(root, f"cannot list the folder ({exc.strerror or exc})") from None


def _found(root: Path) -> str:
    entries = _visible(root)
    dirs = sorted(p.name for p in entries if p.is_dir())
    n_files = sum(1 for p in entries if p.is_file())
    shown = ", ".join(repr(d) for d in dirs[:12]) + (", ..." if len(dirs) > 12 else "")
    return f"found sub-folders: [{shown}] and {n_files} file(s)"


def _empty_error(root: Path, layout: str | None) -> DataError:
    expected = LAYOUTS[layout] if layout else f"{LAYOUTS['generic']} or another layout ({', '.join(LAYOUTS)})"
    return DataError(root, f"empty folder: no images found; expected {expected}")


def detect_layout(root) -> str:
    """Name of the layout of ``root`` (a key of LAYOUTS). Data-set-specific layouts win over
    ``generic``, and ``root`` itself being a data set beats a data set in a sub-folder
    (TestDataset/ is pranet-test although it holds ETIS-LaribPolypDB/). Two equal matches
    (e.g. data/ holding both Kvasir-SEG/ and segmented-images/) are an error: guessing would
    silently pick a data set."""
    root = _check_root(root)
    matches = {n: m[1] for n, read in _READERS.items() if n != "generic" and (m := read(root)) and m[1] > 0}
    best = max(matches.values(), default=0)
    specific = [name for name, level in matches.items() if level == best]
    if len(specific) == 1:
        return specific[0]
    if len(specific) > 1:
        raise DataError(
            root, f"ambiguous: the folder matches layouts {', '.join(specific)}; "
            "pass layout=... (CLI: --layout) or point at one data-set folder"
        )
    if _generic(root):
        return "generic"
    if not _visible(root):
        raise _empty_error(root, None)
    expected = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    raise DataError(root, f"no known data-set layout; expected one of -- {expected}; {_found(root)}")


# --------------------------------------------------------------------------- pairing


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder``, sorted; hidden (.DS_Store, ._x) and other files skipped."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(folder, f"cannot list the folder ({exc.strerror or exc})") from None
    return [p for p in entries
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]


def _list_images(folder: Path) -> dict[str, Path]:
    """casefolded stem -> file, for the image files of ``folder``; two files of one stem are an error."""
    out: dict[str, Path] = {}
    for p in _image_files(folder):
        key = p.stem.casefold()
        if key in out:
            raise DataError(
                out[key], f"two files with the same name stem: {out[key]} and {p}; "
                "keep only one of them"
            )
        out[key] = p
    return out


def _mask_key(stem: str, group: _Group, image_keys: set[str]) -> str:
    """The image stem a mask belongs to: the layout's convention (p<stem>, <stem>_mask) first,
    then the plain stem (copies where masks were renamed like their images)."""
    key = stem.casefold()
    cands = []
    pre, suf = group.mask_prefix.casefold(), group.mask_suffix.casefold()
    stripped = key
    if pre and stripped.startswith(pre):
        stripped = stripped[len(pre):]
    if suf and stripped.endswith(suf):
        stripped = stripped[: -len(suf)]
    if stripped != key:
        cands.append(stripped)
    cands.append(key)
    return next((c for c in cands if c in image_keys), cands[0])


def _split_flat(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """(images, masks) of a flat CVC-ColonDB folder; contours are skipped unread. Any other image
    file is an error: silently dropping it could hide a renamed frame or a stray copy."""
    images: dict[str, Path] = {}
    masks: list[Path] = []
    for key, path in _list_images(folder).items():
        kind = _flat_kind(key)
        if kind is None:
            raise DataError(path, "unexpected image file in a flat CVC-ColonDB folder: expected images "
                                  "<N>.tif(f), masks p<N>.tif(f) and contours cp<N>.tif(f); move it away")
        if kind == "image":
            images[key] = path
        elif kind == "mask":
            masks.append(path)
    return images, masks


def _group_files(group: _Group) -> tuple[dict[str, Path], list[Path]]:
    """(casefolded stem -> image, mask files) of one group."""
    if group.flat:
        return _split_flat(group.images)
    return _list_images(group.images), list(_list_images(group.masks).values())


def _group_pairs(group: _Group, dataset: str, allow_missing_masks: bool) -> list[Pair]:
    images, mask_files = _group_files(group)
    image_keys = set(images)
    masks: dict[str, Path] = {}
    for mpath in mask_files:
        key = _mask_key(mpath.stem, group, image_keys)
        if key in masks:
            raise DataError(masks[key], f"two masks for the same image: {masks[key]} and {mpath}")
        masks[key] = mpath
    orphans = sorted(set(masks) - set(images))
    if orphans:
        more = f" (and {len(orphans) - 1} more masks without images)" if len(orphans) > 1 else ""
        raise DataError(
            masks[orphans[0]], f"mask without image: no image with stem '{orphans[0]}' in "
            f"{group.images}{more}"
        )
    lonely = sorted(set(images) - set(masks))
    if lonely and not allow_missing_masks:
        img = images[lonely[0]]
        names = [f"{group.mask_prefix}{img.stem}{group.mask_suffix}"]
        if (group.mask_prefix or group.mask_suffix) and not group.flat:
            names.append(img.stem)
        exts = ",".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        looked = " or ".join(f"{group.masks / n}.{{{exts}}}" for n in names)
        more = f" (and {len(lonely) - 1} more images without masks)" if len(lonely) > 1 else ""
        raise DataError(img, f"image without mask: looked for {looked} (any case){more}")
    prefix = f"{group.subset}/" if group.subset else ""
    return [
        Pair(f"{prefix}{path.stem}", path, masks.get(key), dataset, group.subset)
        for key, path in images.items()
    ]


def find_pairs(root, layout: str = "auto", *, allow_missing_masks: bool = False) -> list[Pair]:
    """All image/mask pairs under ``root`` in ``layout`` ("auto" = :func:`detect_layout`),
    sorted by id. Files are paired by stem across extensions (.jpg/.jpeg/.png/.tif/.tiff/.bmp,
    any case); hidden and non-image files are ignored."""
    root = _check_root(root)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DataError(root, f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")
    match = _READERS[layout](root)
    groups = match[0] if match else None
    if not groups:
        if not _visible(root):
            raise _empty_error(root, layout)
        raise DataError(root, f"does not look like layout {layout!r}: expected {LAYOUTS[layout]}; {_found(root)}")
    pairs: list[Pair] = []
    for group in groups:
        pairs.extend(_group_pairs(group, layout, allow_missing_masks))
    if not pairs:
        raise _empty_error(root, layout)
    pairs.sort(key=lambda p: p.id)
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):  # cannot happen with one folder per sub-set; guard anyway
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(root, f"duplicate pair id {dup!r}")
    return pairs


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxWx3 image, bool HxW mask). A mask of another size than its image is an error
    naming both files: resizing silently would hide a mis-pairing."""
    image = read_image(pair.image)
    if pair.mask is None:
        raise DataError(pair.image, f"pair {pair.id!r} has no mask (found with allow_missing_masks=True)")
    mask = read_mask(pair.mask)
    if image.shape[:2] != mask.shape:
        (h, w), (mh, mw) = image.shape[:2], mask.shape
        raise DataError(
            pair.image, f"size mismatch: image is {w}x{h} (WxH) but its mask {pair.mask} is {mw}x{mh}"
        )
    return image, mask


def find_duplicates(pairs: Iterable[Pair]) -> list[list[str]]:
    """Groups (sorted, >= 2 ids each) of pairs whose decoded images are byte-identical:
    re-encoded copies and repeated frames (CVC-ColonDB has 17 such groups) that would leak
    between train and test splits."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for pair in pairs:
        by_hash[content_hash(pair.image)].append(pair.id)
    return sorted(sorted(ids) for ids in by_hash.values() if len(ids) > 1)
