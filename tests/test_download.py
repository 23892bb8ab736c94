"""Download / resume / unzip / verify against a tiny HTTP server on 127.0.0.1 (no internet).

The server is written here: it serves files from a tmp folder, honours (or, on request,
ignores) single byte-range requests and records the Range header of every request.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polyplib.data.__main__ import main
from polyplib.data.download import DEFAULT_MANIFEST, DownloadError, download, load_manifest, verify
from polyplib.errors import DataError

STEMS = ["cju0aaa", "cju0bbb", "cju0ccc", "cju0ddd"]


# --------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold a server thread for ever

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:  # simulate a dropped connection, once
            body, srv.drop_after = body[: srv.drop_after], None
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.root, srv.requests, srv.ignore_range, srv.drop_after = root, [], False, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """urllib would send loopback requests to a configured proxy; tests talk to 127.0.0.1 only."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/kvasir-seg.zip"


# --------------------------------------------------------------------------- data


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _kvasir_files() -> dict[str, bytes]:
    """Relative path -> bytes of a miniature Kvasir-SEG release."""
    rng = np.random.default_rng(0)
    files = {}
    for stem in STEMS:
        files[f"images/{stem}.jpg"] = _jpeg(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        mask = np.zeros((48, 64), np.uint8)
        mask[8:32, 16:48] = 255
        files[f"masks/{stem}.jpg"] = _jpeg(mask)
    files["kavsir_bboxes.json"] = b'{"cju0aaa": {"height": 48, "width": 64, "bbox": []}}'
    return files


def _write_tree(folder: Path, files: dict[str, bytes], rename: dict[str, str] | None = None) -> Path:
    for rel, data in files.items():
        rel = (rename or {}).get(rel, rel)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


@pytest.fixture
def release(tmp_path, server):
    """(zip bytes, manifest path, files) of the miniature release, the zip served at /kvasir-seg.zip."""
    files = _kvasir_files()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("Kvasir-SEG/", b"")
        for rel, data in files.items():
            zf.writestr(f"Kvasir-SEG/{rel}", data)
        zf.writestr("__MACOSX/Kvasir-SEG/._kavsir_bboxes.json", b"junk")
    blob = buf.getvalue()
    (server.root / "kvasir-seg.zip").write_bytes(blob)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "sha256", "bytes"])
        for rel, data in sorted(files.items()):
            w.writerow([f"Kvasir-SEG/{rel}", hashlib.sha256(data).hexdigest(), len(data)])
    return blob, manifest, files


def _get(server, url=None, **kw):
    return download("kvasir-seg", kw.pop("dest"), url=url or f"{server.url}/kvasir-seg.zip",
                    manifest=kw.pop("manifest"), timeout=5, progress=False, **kw)


# --------------------------------------------------------------------------- download


def test_download_extract_verify_and_no_second_download(tmp_path, server, release):
    _, manifest, files = release
    dest = tmp_path / "data"
    folder = _get(server, dest=dest, manifest=manifest)
    assert folder == dest / "Kvasir-SEG"
    assert sorted(p.name for p in dest.iterdir()) == ["Kvasir-SEG"]  # no __MACOSX junk either
    assert not list(dest.glob("*.zip*"))  # .part renamed, zip removed after verification
    report = verify(folder, manifest, progress=False)
    assert report.ok and report.n_checked == len(files) and not report.unexpected
    assert len(server.requests) == 1 and server.requests[0][1] is None
    # finished and verified: not fetched again, even with an unreachable URL
    assert _get(server, url=_closed_port_url(), dest=dest, manifest=manifest) == folder
    assert len(server.requests) == 1


def test_resume_sends_range_and_verifies(tmp_path, server, release):
    blob, manifest, _ = release
    dest = tmp_path / "data"
    dest.mkdir()
    half = len(blob) // 2
    (dest / "kvasir-seg.zip.part").write_bytes(blob[:half])
    folder = _get(server, dest=dest, manifest=manifest)
    assert server.requests == [("/kvasir-seg.zip", f"bytes={half}-")]
    assert verify(folder, manifest, progress=False).ok


def test_dropped_connection_keeps_part_and_next_call_resumes(tmp_path, server, release):
    blob, manifest, _ = release
    server.drop_after = 1000
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        _get(server, dest=dest, manifest=manifest)
    assert (dest / "kvasir-seg.zip.part").stat().st_size == 1000
    folder = _get(server, dest=dest, manifest=manifest)
    assert [r[1] for r in server.requests] == [None, "bytes=1000-"]
    assert verify(folder, manifest, progress=False).ok


def test_server_ignoring_range_restarts_from_scratch(tmp_path, server, release):
    blob, manifest, _ = release
    server.ignore_range = True
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "kvasir-seg.zip.part").write_bytes(b"\xee" * (len(blob) // 2))  # garbage if appended to
    folder = _get(server, dest=dest, manifest=manifest)
    assert server.requests[0][1] == f"bytes={len(blob) // 2}-"
    assert verify(folder, manifest, progress=False).ok


def test_complete_part_file_gets_416_and_is_used(tmp_path, server, release):
    blob, manifest, _ = release
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "kvasir-seg.zip.part").write_bytes(blob)
    assert verify(_get(server, dest=dest, manifest=manifest), manifest, progress=False).ok


def test_offline_fails_at_once_with_url_and_manual_steps(tmp_path, release):
    _, manifest, _ = release
    url = _closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as ei:
        download("kvasir-seg", tmp_path / "data", url=url, manifest=manifest, timeout=30, progress=False)
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert url in msg and "verify" in msg and "browser" in msg and str(tmp_path / "data") in msg
    assert isinstance(ei.value, DataError)


def test_http_404_is_a_download_error(tmp_path, server, release):
    _, manifest, _ = release
    with pytest.raises(DownloadError, match="HTTP 404"):
        _get(server, url=f"{server.url}/missing.zip", dest=tmp_path / "data", manifest=manifest)


def test_zip_slip_is_refused(tmp_path, server, release):
    _, manifest, _ = release
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Kvasir-SEG/images/a.jpg", b"x")
        zf.writestr("../evil.txt", b"owned")
    (server.root / "evil.zip").write_bytes(buf.getvalue())
    dest = tmp_path / "deep" / "data"
    with pytest.raises(DataError, match="unsafe member path"):
        _get(server, url=f"{server.url}/evil.zip", dest=dest, manifest=manifest)
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not (dest / "Kvasir-SEG").exists()  # nothing extracted before the check


# --------------------------------------------------------------------------- verify


def test_verify_detects_modified_and_missing_files(tmp_path, release):
    _, manifest, files = release
    folder = _write_tree(tmp_path / "Kvasir-SEG", files)
    changed = folder / "masks" / f"{STEMS[1]}.jpg"
    changed.write_bytes(changed.read_bytes()[:-1] + b"\x00")  # same size, other content
    (folder / "images" / f"{STEMS[2]}.jpg").unlink()
    (folder / "images" / "extra.jpg").write_bytes(b"x")
    for target in (folder, tmp_path):  # the top folder itself, or its parent
        report = verify(target, manifest, progress=False)
        assert not report.ok
        assert report.mismatched == [f"Kvasir-SEG/masks/{STEMS[1]}.jpg"]
        assert report.missing == [f"Kvasir-SEG/images/{STEMS[2]}.jpg"]
        assert report.unexpected == ["Kvasir-SEG/images/extra.jpg"]
        assert report.n_checked == len(files)


def test_verify_hyperkvasir_folder_names(tmp_path, release):
    _, manifest, files = release
    top = _write_tree(tmp_path / "segmented-images", files, rename={"kavsir_bboxes.json": "bounding-boxes.json"})
    (top / "bounding-boxes.json").write_text('{"other": "content"}')
    for target in (tmp_path, top):
        report = verify(target, manifest, progress=False)
        assert report.ok, report.problems()
        assert report.not_checked == ["segmented-images/bounding-boxes.json"]
        assert report.missing == [] and report.unexpected == []
        assert report.n_checked == len(files) - 1
    (top / "images" / f"{STEMS[0]}.jpg").unlink()
    assert verify(tmp_path, manifest, progress=False).missing == [f"segmented-images/images/{STEMS[0]}.jpg"]


def test_shipped_manifest_lists_the_kvasir_seg_release():
    entries = load_manifest(DEFAULT_MANIFEST)
    assert len(entries) == 2000
    images = [e for e in entries if re.fullmatch(r"Kvasir-SEG/images/[^/]+\.jpg", e.path)]
    masks = [e for e in entries if re.fullmatch(r"Kvasir-SEG/masks/[^/]+\.jpg", e.path)]
    assert len(images) == 1000 and len(masks) == 1000
    assert {p.path.rsplit("/", 1)[1] for p in images} == {p.path.rsplit("/", 1)[1] for p in masks}
    assert all(re.fullmatch(r"[0-9a-f]{64}", e.sha256) and e.bytes > 0 for e in entries)
    assert len({e.path for e in entries}) == 2000


def test_bad_manifest_is_a_data_error(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,sha256,bytes\nKvasir-SEG/images/a.jpg,nothex,12\n")
    with pytest.raises(DataError, match="line 2"):
        load_manifest(bad)


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes(tmp_path, release, capsys, monkeypatch):
    _, manifest, files = release
    folder = _write_tree(tmp_path / "Kvasir-SEG", files)
    assert main(["verify", str(tmp_path), "--manifest", str(manifest), "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out

    assert main(["layout", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "layout: kvasir-seg" in out and f"pairs: {len(STEMS)}" in out

    (folder / "masks" / f"{STEMS[0]}.jpg").write_bytes(b"changed")
    assert main(["verify", str(folder), "--manifest", str(manifest), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and f"mismatched: Kvasir-SEG/masks/{STEMS[0]}.jpg" in out

    assert main(["verify", str(tmp_path / "absent"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err

    url = _closed_port_url()
    monkeypatch.setenv("POLYP_DATA", str(tmp_path / "envdata"))
    assert main(["download", "kvasir-seg", "--url", url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and url in err
    assert str(tmp_path / "envdata") in err  # default dest comes from $POLYP_DATA

    (tmp_path / "empty").mkdir()
    assert main(["layout", str(tmp_path / "empty")]) == 2
    assert "empty folder" in capsys.readouterr().err
    assert main(["download", "no-such-set"]) == 2  # argparse usage error
    capsys.readouterr()
