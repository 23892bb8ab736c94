"""Download, unpack and verify the public Kvasir-SEG / HyperKvasir segmentation sets.

Why: the data may not be redistributed with this repository, so each user fetches it; the
SHA-256 manifest shipped in ``manifests/`` makes sure everyone then works on byte-identical
files. Downloads resume (HTTP Range) because the archives are large and the host is slow;
an offline machine fails at once with the manual steps instead of hanging. Only ``urllib``
is used, so nothing beyond the standard library is needed to get the data.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import zipfile
import zlib
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from ..progress import tqdm

from polyplib.errors import DataError

from .imageio import file_sha256

__all__ = [
    "DOWNLOADS",
    "DEFAULT_MANIFEST",
    "DownloadError",
    "ManifestEntry",
    "VerifyReport",
    "load_manifest",
    "download",
    "verify",
]

DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifests" / "kvasir_seg_sha256.csv"

#: name -> url, the top folder inside the zip, the manifest and its top folder, and the
#: manifest files this copy names differently with other content (reported "not checked").
DOWNLOADS: dict[str, dict] = {
    "kvasir-seg": {
        "url": "https://datasets.simula.no/downloads/kvasir-seg.zip",
        "top": "Kvasir-SEG",
        "layout": "kvasir-seg",
        "manifest": DEFAULT_MANIFEST,
        "manifest_top": "Kvasir-SEG",
        "renamed": {},
    },
    "hyperkvasir-seg": {
        "url": "https://datasets.simula.no/downloads/hyper-kvasir/hyper-kvasir-segmented-images.zip",
        "top": "segmented-images",
        "layout": "hyperkvasir-seg",
        "manifest": DEFAULT_MANIFEST,  # the same 1000 pairs, other folder names
        "manifest_top": "Kvasir-SEG",
        "renamed": {"kavsir_bboxes.json": "bounding-boxes.json"},
    },
}

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DownloadError(DataError):
    """The archive could not be fetched. The one-line message names the URL and says how to
    get the data by hand, because the usual cause (no internet) is not fixable by retrying."""

    def __init__(self, url: str, dest: str | os.PathLike, reason: str):
        self.url = url
        self.dest = Path(dest)
        self.reason = reason
        steps = (
            f"Manual steps: download {url} in a browser, unzip it into {self.dest}, "
            f"then run `python -m polyplib.data verify {self.dest}`"
        )
        super().__init__(url, f"{reason.rstrip('.')}. {steps}")

    def __reduce__(self):  # picklable (worker processes) despite the 3-argument constructor
        return type(self), (self.url, self.dest, self.reason)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # POSIX path, starting with the top folder, e.g. "Kvasir-SEG/images/x.jpg"
    sha256: str
    bytes: int


def load_manifest(manifest: str | os.PathLike | None = None) -> list[ManifestEntry]:
    """Read a ``path,sha256,bytes`` CSV (default: the shipped Kvasir-SEG manifest)."""
    path = Path(manifest) if manifest is not None else DEFAULT_MANIFEST
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DataError(path, "manifest not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the manifest ({exc})") from None
    if not rows or [c.strip() for c in rows[0]] != ["path", "sha256", "bytes"]:
        raise DataError(path, "not a manifest: the first line must be 'path,sha256,bytes'")
    entries = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            rel, digest, size = (c.strip() for c in row)
            digest = digest.lower()
            if not rel or not _HEX64.fullmatch(digest):
                raise ValueError
            entries.append(ManifestEntry(rel.replace("\\", "/"), digest, int(size)))
        except ValueError:
            raise DataError(path, f"line {lineno}: expected 'path,<64 hex sha256>,<bytes>', got {row!r}") from None
    if not entries:
        raise DataError(path, "manifest lists no files")
    return entries


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`. ``ok`` means every manifest file is present and identical;
    unexpected extra files and files without a reference hash are listed but do not fail it."""

    folder: Path  # the data-set folder that was checked
    n_checked: int
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    note: str = ""  # e.g. that no known top folder was found
    ok: bool = field(init=False)

    def __post_init__(self):
        self.ok = not self.missing and not self.mismatched

    def summary(self) -> str:
        return (
            f"{self.folder}: {self.n_checked} files checked, {len(self.missing)} missing, "
            f"{len(self.mismatched)} mismatched, {len(self.unexpected)} unexpected, "
            f"{len(self.not_checked)} not checked -> {'OK' if self.ok else 'FAILED'}"
            + (f" ({self.note})" if self.note else "")
        )

    def problems(self, limit: int | None = 10) -> list[str]:
        lines = (
            [f"mismatched: {p}" for p in self.mismatched]
            + [f"missing: {p}" for p in self.missing]
            + [f"unexpected: {p}" for p in self.unexpected]
            + [f"not checked (no reference hash for this copy): {p}" for p in self.not_checked]
        )
        return lines if limit is None else lines[:limit]


def _ci_child(folder: Path, name: str) -> Path | None:
    try:
        return next(
            (p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.casefold() == name.casefold()), None
        )
    except OSError:
        return None


def _copies_of(manifest_top: str) -> list[tuple[str, dict]]:
    """(top folder, renamed files) of each known copy of the manifest's data set, manifest's own first."""
    copies = [(manifest_top, {})]
    for spec in DOWNLOADS.values():
        if spec["manifest_top"].casefold() == manifest_top.casefold() and spec["top"] != manifest_top:
            copies.append((spec["top"], spec["renamed"]))
    return copies


def _locate(folder: Path, entries: list[ManifestEntry]) -> tuple[Path, str, dict, str | None]:
    """(data-set folder, its top name, renamed files, manifest top) -- ``folder`` may be the
    top folder itself or its parent; a HyperKvasir copy stands in for Kvasir-SEG."""
    tops = {e.path.split("/", 1)[0] for e in entries}
    mtop = tops.pop() if len(tops) == 1 and all("/" in e.path for e in entries) else None
    if mtop is None:
        return folder, "", {}, None
    copies = _copies_of(mtop)
    for top, renamed in copies:
        child = _ci_child(folder, top)
        if child is not None:
            return child, child.name, renamed, mtop
    for top, renamed in copies:
        if folder.resolve().name.casefold() == top.casefold():
            return folder, folder.name, renamed, mtop
    # no known top folder: assume ``folder`` is the top folder itself (a renamed copy)
    return folder, folder.resolve().name, {}, mtop


def _index(base: Path) -> dict[str, Path]:
    """casefolded relative POSIX path -> file, skipping hidden files and macOS junk."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        for name in filenames:
            if not name.startswith("."):
                p = Path(dirpath) / name
                out[p.relative_to(base).as_posix().casefold()] = p
    return out


def verify(
    folder: str | os.PathLike, manifest: str | os.PathLike | None = None, *, progress: bool = True
) -> VerifyReport:
    """Compare the files under ``folder`` with the SHA-256 manifest (default: Kvasir-SEG).

    Problems are reported, not raised (the CLI turns a not-ok report into exit 1); only a
    missing folder or an unreadable manifest raise :class:`DataError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder not found" if not folder.exists() else "not a folder")
    entries = load_manifest(manifest)
    base, top, renamed, mtop = _locate(folder, entries)
    files = _index(base)
    renamed_cf = {k.casefold(): v for k, v in renamed.items()}
    missing, mismatched, not_checked = [], [], []
    n_checked = 0
    for e in tqdm(entries, desc=f"verify {base.name}", unit="file", disable=not progress, leave=False):
        rel = e.path.split("/", 1)[1] if mtop else e.path
        shown = f"{top}/{rel}" if top else rel
        parent, _, name = rel.rpartition("/")
        if name.casefold() in renamed_cf:  # e.g. kavsir_bboxes.json -> bounding-boxes.json
            other = f"{parent}/{renamed_cf[name.casefold()]}" if parent else renamed_cf[name.casefold()]
            files.pop(other.casefold(), None)
            not_checked.append(f"{top}/{other}" if top else other)
            continue
        n_checked += 1
        path = files.pop(rel.casefold(), None)
        if path is None:
            missing.append(shown)
        else:
            try:
                if path.stat().st_size != e.bytes or file_sha256(path) != e.sha256:
                    mismatched.append(shown)
            except (DataError, OSError):
                mismatched.append(f"{shown} (unreadable)")
    unexpected = sorted(f"{top}/{p.relative_to(base).as_posix()}" if top else p.relative_to(base).as_posix()
                        for p in files.values())
    note = ""
    if missing and len(missing) == n_checked and mtop:
        names = " or ".join(dict.fromkeys(t for t, _ in _copies_of(mtop)))
        note = f"nothing found: expected a {names} folder here, or this folder to be one"
    return VerifyReport(base, n_checked, missing, mismatched, unexpected, not_checked, note)


# --------------------------------------------------------------------------- download


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from 'bytes a-b/N' or 'bytes */N'; None where absent."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _offline_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "the server did not answer in time (offline?)"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name (offline?): {reason}"
    return f"cannot reach the server (offline?): {reason}"


def _fetch(url: str, dest: Path, zip_path: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` to ``<zip>.part``, resuming with a Range request; rename when complete."""
    part = zip_path.with_name(zip_path.name + ".part")
    for _attempt in range(3):  # a restart (server ignored / botched the range) takes another round
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "polyplib-data/1 (python urllib)"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urlopen(Request(url, headers=headers), timeout=timeout)
        except HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:  # nothing left to send: .part may already be whole
                if _content_range(exc.headers.get("Content-Range"))[1] == offset:
                    os.replace(part, zip_path)
                    return
                part.unlink()
                continue
            raise DownloadError(url, dest, f"the server answered HTTP {exc.code} {exc.reason}") from None
        except (URLError, OSError, HTTPException) as exc:
            raise DownloadError(url, dest, _offline_reason(exc)) from None
        with resp:
            if resp.status == 206:
                start, total = _content_range(resp.headers.get("Content-Range"))
                if start != offset:  # a range we did not ask for: start over
                    part.unlink()
                    continue
                mode = "ab"
            else:  # 200: the server ignored Range -> the body is the whole file
                offset, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            with open(part, mode) as fh, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=zip_path.name, disable=not progress,
            ) as bar:
                try:
                    while chunk := resp.read(_CHUNK):
                        fh.write(chunk)
                        bar.update(len(chunk))
                except (OSError, HTTPException) as exc:
                    fh.flush()
                    raise DownloadError(
                        url, dest, f"download interrupted after {fh.tell()} bytes ({exc}); "
                        "run the same command again to resume"
                    ) from None
        size = part.stat().st_size
        if total is not None and size != total:
            raise DownloadError(
                url, dest, f"download incomplete ({size} of {total} bytes); run the same command again to resume"
            )
        os.replace(part, zip_path)
        return
    raise DownloadError(url, dest, "the server's answers to range requests were inconsistent")


def _safe_target(dest: Path, name: str, zip_path: Path) -> Path | None:
    """Where member ``name`` goes under ``dest``; refuses anything that would escape it."""
    clean = name.replace("\\", "/")
    p = PurePosixPath(clean)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", clean) or ".." in p.parts:
        raise DataError(zip_path, f"unsafe member path {name!r} would be written outside {dest}; not extracting")
    if not p.parts or p.parts[0] == "__MACOSX":
        return None
    target = (dest / p).resolve()
    if target != dest and dest not in target.parents:
        raise DataError(zip_path, f"unsafe member path {name!r} resolves outside {dest}; not extracting")
    return target


def _extract(zip_path: Path, dest: Path, url: str, progress: bool) -> None:
    """Unzip into ``dest``, checking every member path first (zip-slip safe)."""
    dest_r = dest.resolve()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [(info, _safe_target(dest_r, info.filename, zip_path)) for info in zf.infolist()]
            bar = tqdm(members, desc=f"unzip {zip_path.name}", unit="file", disable=not progress, leave=False)
            for info, target in bar:
                if target is None or (info.external_attr >> 16) & 0o170000 == 0o120000:  # junk / symlink
                    continue
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(url, dest, f"the downloaded archive is corrupt ({exc}); deleted it, run again") from None


def download(
    name: str,
    dest: str | os.PathLike,
    *,
    url: str | None = None,
    manifest: str | os.PathLike | None = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """Fetch data set ``name`` (a key of DOWNLOADS) into ``dest`` and verify it; return the
    data-set folder (e.g. ``dest/Kvasir-SEG``). A folder that already verifies is kept as is."""
    if name not in DOWNLOADS:
        raise DataError(None, f"unknown data set {name!r}; choose from {', '.join(DOWNLOADS)}")
    spec = DOWNLOADS[name]
    url = url or spec["url"]
    manifest = manifest if manifest is not None else spec["manifest"]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    existing = _ci_child(dest, spec["top"])
    if existing is not None and verify(existing, manifest, progress=progress).ok:
        return existing
    zip_path = dest / f"{name}.zip"
    if not zip_path.exists():
        _fetch(url, dest, zip_path, timeout, progress)
    _extract(zip_path, dest, url, progress)
    target = _ci_child(dest, spec["top"])
    if target is None:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(url, dest, f"the archive did not contain the folder {spec['top']!r}")
    report = verify(target, manifest, progress=progress)
    if not report.ok:
        raise DataError(
            target, f"downloaded files do not match the manifest ({report.summary()}); first problems: "
            + "; ".join(report.problems(5)) + f"; the archive is kept as {zip_path}"
        )
    zip_path.unlink(missing_ok=True)
    return target
