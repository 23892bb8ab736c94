"""Import the published SinGAN-Seg synthetic data set (Thambawita et al. 2022; osf.io/xrgz8).

The authors released 10,000 synthetic pairs: 10 per real HyperKvasir polyp image, one SinGAN-Seg
model each. It has to be downloaded by hand (``data.root`` is not searched); point
``gan.singan_published`` (or :func:`import_singan_seg`) at the unpacked folder. Its exact layout
could not be checked offline, so every naming the authors' code writes is recognised:

* one sub-folder per real image holding ``img_<k>.png`` + ``mask_<k>.png`` (or ``<k>_img.png`` +
  ``<k>_mask.png``): the folder name is the source image;
* a flat folder of ``chk_id_<source>_gen_scale_<s>_<k>_img.png`` + ``..._mask.png`` (what the
  ``singan-seg-polyp`` package's ``generate_data`` writes);
* ``images/`` + ``masks/`` with matching stems (the generic layout of :mod:`polyplib.data.loaders`);
  the source is then parsed from a ``chk_id_`` stem if there is one, else left empty.

Pairs are read with :func:`polyplib.data.loaders.load_pair` (so the loaders' quirk handling applies:
3-channel or RGBA masks, binarisation at > 127, image/mask size mismatches are errors naming the
file), resized to the run's ``data.resolution`` with ``data.resize`` like the real data, judged with
stage 03's acceptance rule (empty or near-full masks are rejected and recorded, not dropped
silently), and written by :func:`polyplib.synthetic.external.import_pairs` into ``synthetic/singan-published/`` with a
manifest (id, file, source_id, sample_index, ...). A rerun with the same files is a no-op.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..data.imageio import IMAGE_EXTENSIONS
from ..data.loaders import Pair, find_pairs
from ..errors import DataError
from ..runs import Run

METHOD = "singan-published"
CHK = re.compile(r"^chk_id_(?P<source>.+)_gen_scale_(?P<scale>\d+)_(?P<k>\d+)$", re.I)
TOKEN = re.compile(r"(^|[_\-.])(img|image)([_\-.]|$)", re.I)
LAYOUTS = ("per-image folders of img_<k>.png + mask_<k>.png (or <k>_img.png + <k>_mask.png)",
           "a flat folder of chk_id_<source>_gen_scale_<s>_<k>_img.png + _mask.png (singan-seg-polyp)",
           "images/ + masks/ with matching file stems")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _split_token(stem: str) -> tuple[str, str] | None:
    """(mask stem, base stem) of an image stem whose last 'img'/'image' token marks it as the image."""
    hits = list(TOKEN.finditer(stem))
    if not hits or "mask" in stem.casefold():
        return None
    m = hits[-1]
    left, right = stem[:m.start(2)], stem[m.end(2):]
    base = "_".join(part for part in (left.rstrip("_-."), right.lstrip("_-.")) if part)
    return left + "mask" + right, base


def _index(stem: str) -> int | None:
    nums = re.findall(r"\d+", stem)
    return int(nums[-1]) if nums else None


def _mask_folders(folder: Path) -> list[Path]:
    """Where an image's mask may be: beside it, or in a sibling masks/ folder of an images/ folder."""
    out = [folder]
    if folder.name.casefold() in ("images", "image", "imgs", "img"):
        out += [p for p in folder.parent.iterdir() if p.is_dir() and p.name.casefold() in ("masks", "mask")]
    return out


def _token_pairs(root: Path) -> list[tuple[Pair, str, int | None]]:
    """(pair, source id, sample index) for files named with an img/mask token, in root and its sub-folders."""
    out = []
    folders = [root] + sorted(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        candidates = [(p, _split_token(p.stem)) for p in _images_in(folder)]
        candidates = [(p, t) for p, t in candidates if t is not None]
        if not candidates:
            continue
        masks = {q.stem.casefold(): q for f in _mask_folders(folder) for q in _images_in(f)}
        for p, (mask_stem, base) in candidates:
            mask = masks.get(mask_stem.casefold())
            if mask is None:
                where = " or ".join(str(f / mask_stem) for f in _mask_folders(folder))
                raise DataError(p, f"image without mask: looked for {where}.<ext> (any image extension)")
            chk = CHK.match(base)
            if chk:
                source, k = chk["source"], int(chk["k"])
            else:
                owner = folder.parent if folder.name.casefold() in ("images", "image", "imgs", "img") else folder
                source = "" if owner == root else str(owner.relative_to(root)).replace("\\", "/")
                k = _index(base)
            pair_id = str(p.relative_to(root).with_suffix("")).replace("\\", "/")
            out.append((Pair(pair_id, p, mask, "singan-seg", source), source, k))
    return out


def find_published_pairs(folder: str | Path) -> list[tuple[Pair, str, int]]:
    """Every (pair, source id, sample index) of a downloaded SinGAN-Seg set, sorted by id."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(root, "SinGAN-Seg synthetic set not found: download it from https://osf.io/xrgz8 , unpack "
                              "it and point gan.singan_published (or import_singan_seg) at the folder")
    found = _token_pairs(root)
    if not found:
        try:
            pairs = find_pairs(root, "generic")
        except DataError:
            pairs = []
        for p in pairs:
            chk = CHK.match(Path(p.image).stem)
            found.append((p, chk["source"] if chk else "", int(chk["k"]) if chk else _index(p.id)))
    if not found:
        raise DataError(root, "no SinGAN-Seg pairs found; expected one of: " + "; ".join(LAYOUTS))
    found.sort(key=lambda t: t[0].id)
    out, counters = [], {}
    for pair, source, k in found:   # sample index: from the name, else the order within its source
        if k is None:
            k = counters.get(source, 0)
        counters[source] = max(counters.get(source, 0), k) + 1
        out.append((pair, source, int(k)))
    return out


def import_singan_seg(folder: str | Path, run: Run):
    """Convert a downloaded SinGAN-Seg set into ``synthetic/singan-published/`` at the run's resolution,
    through the one import of :mod:`polyplib.synthetic.external` (here lenient: an empty or near-full mask
    is rejected and recorded, as stage 03 does, not an error). Returns the set as a PreparedSet."""
    from ..synthetic.external import import_pairs

    return import_pairs(run, METHOD, find_published_pairs(folder), model="singan-seg (published)",
                        origin=str(Path(folder).resolve()), strict=False, register=False)
