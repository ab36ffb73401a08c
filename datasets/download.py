"""Dataset archives: download with timeout and checksum, safe extraction, missing-data errors.

An archive that is present and verified is never fetched again: the first successful check
leaves a small `<archive>.verified` stamp (size, mtime, digest), so later runs neither hash a
multi-gigabyte file nor touch the network. With `download=False`, or with the environment
variable `SPIKESTREAM_OFFLINE=1`, nothing is ever fetched; a missing dataset then raises
`MissingDataError` saying what to put where.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

CHUNK = 1 << 20


class MissingDataError(FileNotFoundError):
    """A dataset is not on disk (and may not be fetched): the message says what to put where."""


class DownloadError(OSError):
    """A download failed: timeout, HTTP error, or a checksum that does not match."""


def offline() -> bool:
    """True when `SPIKESTREAM_OFFLINE` is set to a true value: never touch the network."""
    return os.environ.get("SPIKESTREAM_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def is_verified(path: str | Path, md5: str | None) -> bool:
    """True if `path` exists and matches `md5` (cached in a stamp keyed by size and mtime)."""
    path = Path(path)
    if not path.is_file():
        return False
    if md5 is None:
        return True
    st = path.stat()
    stamp = _stamp_path(path)
    if stamp.is_file():
        try:
            rec = json.loads(stamp.read_text())
            if (rec.get("size"), rec.get("mtime_ns"), rec.get("md5")) == (
                st.st_size,
                st.st_mtime_ns,
                md5.lower(),
            ):
                return True
        except (OSError, ValueError):
            pass
    if file_digest(path, "md5") != md5.lower():
        return False
    stamp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}))
    return True


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` (via a `.part` file), then verify `md5`; raise `DownloadError`.

    `timeout` bounds every blocking network operation (connect and each read). A file whose
    checksum does not match is deleted, never left where a later run would trust it.
    """
    import urllib.request  # here, not at import: the readers and `info` start faster

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    dest = Path(dest)
    if offline():
        raise DownloadError(f"offline (SPIKESTREAM_OFFLINE is set): will not fetch {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "spikestream"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                disable=not progress,
            ) as bar:
                task = bar.add_task(f"download {dest.name}", total=total)
                while block := resp.read(CHUNK):
                    out.write(block)
                    bar.advance(task, len(block))
    except (OSError, ValueError) as e:  # URLError, HTTPError, socket.timeout are OSErrors
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} failed: {e}") from e
    if md5 is not None:
        got = file_digest(part, "md5")
        if got != md5.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"checksum of {url} is md5 {got}, expected {md5}; file discarded")
    part.replace(dest)
    if md5 is not None:
        is_verified(dest, md5)  # leaves the stamp
    return dest


def _inside(dest: Path, name: str) -> bool:
    """Whether archive member `name` lands inside `dest` (not beside it, nor absolute)."""
    root = dest.resolve()
    return (root / name).resolve().is_relative_to(root)


def _checked_tar_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Every member, after refusing any that escapes `dest`, is a link or is not a plain file or
    folder; Python's `data` extraction filter then strips setuid/setgid and group/other write."""
    members = []
    for m in tar.getmembers():
        if not _inside(dest, m.name):
            raise DownloadError(f"archive member {m.name!r} would land outside {dest}")
        if not (m.isfile() or m.isdir()):
            kind = "a link" if (m.issym() or m.islnk()) else "a device, FIFO or special file"
            raise DownloadError(f"archive member {m.name!r} is {kind}; only files and folders "
                                "are extracted")
        try:
            tarfile.data_filter(m, str(dest))
        except tarfile.FilterError as e:
            raise DownloadError(f"archive member {m.name!r} refused: {e}") from e
        members.append(m)
    return members


def _checked_zip_members(z: zipfile.ZipFile, dest: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in z.infolist():
        if not _inside(dest, info.filename):
            raise DownloadError(f"archive member {info.filename!r} would land outside {dest}")
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded, a file
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DownloadError(f"archive member {info.filename!r} is a link or special file; "
                                "only files and folders are extracted")
        members.append(info)
    return members


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a `.zip`, `.tar`, `.tar.gz`/`.tgz` archive into `dest`.

    Every member is checked before anything is written: one that would land outside `dest`, a
    link, or a device, FIFO or other special file refuses the whole archive (`DownloadError`).
    Tar members are extracted with Python's `data` filter (no setuid/setgid bits).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest, members=_checked_zip_members(z, dest))
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            t.extractall(dest, members=_checked_tar_members(t, dest), filter="data")
    else:
        raise DownloadError(f"{archive}: unknown archive type (expected .zip, .tar, .tar.gz)")
    return dest


def fetch_archive(
    url: str | None,
    archive: str | Path,
    *,
    md5: str | None,
    download: bool,
    what: str,
    timeout: float = 60.0,
) -> Path:
    """Return a verified `archive`, downloading it only when allowed and needed.

    `what` describes the expected on-disk layout for the `MissingDataError` message.
    """
    archive = Path(archive)
    if is_verified(archive, md5):
        return archive
    if archive.is_file():
        raise MissingDataError(
            f"{archive} does not match its md5 {md5}; delete it and download it again. {what}"
        )
    if not download or url is None or offline():
        why = "downloads are off" if (not download or offline()) else "no public URL"
        raise MissingDataError(f"dataset not found ({why}). {what}")
    return download_file(url, archive, md5=md5, timeout=timeout)
