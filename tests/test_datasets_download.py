"""Downloads over a real local HTTP server: checksum, timeout, offline use, never twice."""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spikestream.datasets import DownloadError, DVSGesture, MissingDataError
from spikestream.datasets import dvsgesture as dvsgesture_mod
from spikestream.datasets.download import download_file, extract_archive, fetch_archive


class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[_Server]:
    s = _Server({"/data.bin": b"spikes" * 1000})
    yield s
    s.close()


def test_download_verifies_checksum_and_never_refetches(server: _Server, tmp_path: Path) -> None:
    body = server.files["/data.bin"]
    md5 = hashlib.md5(body).hexdigest()
    dest = tmp_path / "data.bin"
    download_file(server.url + "/data.bin", dest, md5=md5, timeout=5, progress=False)
    assert dest.read_bytes() == body and len(server.requests) == 1
    for _ in range(2):
        fetch_archive(server.url + "/data.bin", dest, md5=md5, download=True, what="")
    assert len(server.requests) == 1  # verified once, never fetched again

    bad = tmp_path / "bad.bin"
    with pytest.raises(DownloadError, match="checksum"):
        download_file(server.url + "/data.bin", bad, md5="0" * 32, timeout=5, progress=False)
    assert not bad.exists() and not list(tmp_path.glob("*.part"))
    with pytest.raises(DownloadError, match="404"):
        download_file(server.url + "/missing", tmp_path / "m", timeout=5, progress=False)


def test_download_times_out(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="timed out"):
            download_file(f"http://127.0.0.1:{silent.getsockname()[1]}/x", tmp_path / "x",
                          timeout=0.5, progress=False)
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()


def test_offline_never_fetches(server: _Server, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKESTREAM_OFFLINE", "1")
    with pytest.raises(MissingDataError, match="downloads are off.*put it here"):
        fetch_archive(server.url + "/data.bin", tmp_path / "d.bin", md5=None, download=True,
                      what="put it here")
    assert server.requests == []


def test_extract_refuses_path_escape(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DownloadError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_dvsgesture_downloads_tonic_archive_once(server: _Server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Tonic's prepared archive fetched, checked, extracted and kept; later runs use the disk."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for cls in range(11):
            arr = np.stack([rng.integers(0, 128, 30), rng.integers(0, 128, 30),
                            rng.integers(0, 2, 30), np.sort(rng.integers(0, 500, 30))], axis=1)
            data = io.BytesIO()
            np.save(data, arr)
            info = tarfile.TarInfo(f"ibmGestureTrain/user03_lab/{cls}.npy")
            info.size = len(data.getvalue())
            t.addfile(info, io.BytesIO(data.getvalue()))
    server.files["/train.tar.gz"] = buf.getvalue()
    md5 = hashlib.md5(buf.getvalue()).hexdigest()
    monkeypatch.setitem(dvsgesture_mod.TONIC_ARCHIVES, True, (
        "ibmGestureTrain", "ibmGestureTrain.tar.gz", server.url + "/train.tar.gz", md5))
    with pytest.raises(MissingDataError):
        DVSGesture(tmp_path, train=True)  # download=False: nothing fetched
    assert server.requests == []
    ds = DVSGesture(tmp_path, train=True, download=True)
    assert len(ds) == 11 and ds.users[0] == 3 and ds.lighting[0] == "lab"
    assert (tmp_path / "DVSGesture" / "ibmGestureTrain.tar.gz").is_file()
    server.close()
    # the extracted folder gone, the archive kept: re-extracted without the network
    shutil.rmtree(tmp_path / "DVSGesture" / "ibmGestureTrain")
    again = DVSGesture(tmp_path, train=True, download=True)
    assert len(again) == 11 and len(server.requests) == 1


def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w") as t:
        ok = tarfile.TarInfo("good/ok.txt")
        ok.size = 2
        t.addfile(ok, io.BytesIO(b"ok"))
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None,
            link: str = "", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    if data is not None:
        info.size = len(data)
    return info, data


@pytest.mark.parametrize("member,message", [
    (_member("../out_evil/x", data=b"bad"), "outside"),  # a sibling whose name starts alike
    (_member("/abs/x", data=b"bad"), "outside"),
    (_member("good/link", tarfile.SYMTYPE, link="../../etc/passwd"), "link"),
    (_member("good/inner", tarfile.SYMTYPE, link="ok.txt"), "link"),
    (_member("good/hard", tarfile.LNKTYPE, link="good/ok.txt"), "link"),
    (_member("good/tty", tarfile.CHRTYPE), "special"),
    (_member("good/disk", tarfile.BLKTYPE), "special"),
    (_member("good/fifo", tarfile.FIFOTYPE), "special"),
])
def test_extract_refuses_escapes_links_and_special_files(tmp_path: Path, member, message):
    archive = _tar_with(tmp_path / "evil.tar", member)
    with pytest.raises(DownloadError, match=message):
        extract_archive(archive, tmp_path / "out")
    # nothing of the archive was written, not even its good members
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "out_evil").exists() and not Path("/abs/x").exists()


def test_extract_strips_setuid_and_keeps_good_archives(tmp_path: Path):
    import stat

    archive = _tar_with(tmp_path / "fine.tar", _member("good/run", data=b"#!", mode=0o6777))
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/good/ok.txt").read_bytes() == b"ok"
    mode = (tmp_path / "out/good/run").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH)


def test_extract_zip_refuses_escapes_and_links(tmp_path: Path):
    import stat
    import zipfile

    for name, mode, message in (("../out_evil/x", 0o644, "outside"),
                                ("link", stat.S_IFLNK | 0o777, "link")):
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("good.txt", b"ok")
            info = zipfile.ZipInfo(name)
            info.external_attr = (mode if mode & 0o170000 else stat.S_IFREG | mode) << 16
            z.writestr(info, b"../../etc/passwd")
        with pytest.raises(DownloadError, match=message):
            extract_archive(archive, tmp_path / "out")
        assert list((tmp_path / "out").iterdir()) == []
        assert not (tmp_path / "out_evil").exists()
