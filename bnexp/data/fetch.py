"""Fetch dataset files from mirrors, verify them, and only then move them into the cache.

Plumbing is the standard library (urllib, hashlib, gzip, tarfile, tempfile): the checks this
project needs (digests of gunzipped content, fail-over across mirrors with one line per failure,
a progress callback instead of printing) are the part a download library would not do for us.

Rules kept here:
- a file is written to a hidden `.NAME.*.part` temporary in the dataset directory and renamed
  into place (os.replace, atomic on one filesystem) only after every check passed; the temporary
  is removed on any failure or interruption, so the cache never holds an unverified file under a
  data name;
- mirrors are tried in order (`--mirror`, then $BNEXP_MIRROR, then the built-in ones); transient
  failures (timeouts, resets, truncated transfers, HTTP 5xx) are retried `retries` times per mirror;
- every failure becomes one DatasetError line naming the dataset, the mirrors tried with what went
  wrong on each, and how to place the files by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import socket
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..atomic import write_atomic
from .registry import DatasetError, DatasetInfo, RemoteFile, dataset_dir, lookup

ProgressFn = Callable[[str, int, "int | None"], None]
"""progress(file_name, bytes_done, bytes_total_or_None); restarts from 0 when a mirror is retried."""

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 30.0
RETRY_BACKOFF_S = 0.5
USER_AGENT = "bnexp (+https://github.com/; dataset downloader)"


class VerificationError(DatasetError):
    """A file failed a size, digest or format check."""


class _Transient(Exception):
    """A failure worth retrying on the same mirror (timeout, reset, truncation, HTTP 5xx)."""


def _check_digest(data_chunks: Iterable[bytes], digest: str, what: str) -> None:
    algo, _, want = digest.partition(":")
    h = hashlib.new(algo)
    for chunk in data_chunks:
        h.update(chunk)
    got = h.hexdigest()
    if got != want.lower():
        raise VerificationError(f"checksum mismatch: {algo} of {what} is {got}, expected {want}")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def check_file(path: Path, spec: RemoteFile, *, members: bool = True) -> bytes | None:
    """Verify `path` against `spec`; return the gunzipped content of a plain .gz file, else None.

    `members=False` skips reading an archive's members (the loader reads and checks them itself).

    Raises VerificationError with a short reason (used in one-line messages).
    """
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise VerificationError(f"size is {size:,} bytes, expected {spec.size:,}")
    if spec.digest_of == "file":
        _check_digest(_file_chunks(path), spec.digest, "the file")
    if spec.members:
        if members:
            read_members(path, spec)
        return None
    if not spec.name.endswith(".gz"):
        return None
    try:
        content = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise VerificationError(f"not a valid gzip file ({e})") from None
    if spec.content_size is not None and len(content) != spec.content_size:
        raise VerificationError(
            f"gunzipped size is {len(content):,} bytes, expected {spec.content_size:,}"
        )
    if spec.digest_of == "content":
        _check_digest([content], spec.digest, "the gunzipped content")
    return content


def read_members(path: Path, spec: RemoteFile) -> dict[str, bytes]:
    """Read the expected regular-file members of a .tar.gz (nothing is extracted to disk)."""
    wanted = {m.path: m for m in spec.members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                member = wanted.get(info.name)
                if member is None:
                    continue
                if not info.isreg():
                    raise VerificationError(f"archive member {info.name} is not a regular file")
                if info.size != member.size:
                    raise VerificationError(
                        f"archive member {info.name} has {info.size:,} bytes, expected {member.size:,}"
                    )
                fobj = tar.extractfile(info)
                assert fobj is not None  # a regular file always has one
                found[info.name] = fobj.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise VerificationError(f"not a valid .tar.gz archive ({e})") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise VerificationError(f"archive lacks {', '.join(missing)}")
    return found


def normalize_mirror(mirror: str) -> str:
    """A mirror is a base URL (http, https or file) or a local directory; end it with '/'."""
    mirror = mirror.strip()
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror if mirror.endswith("/") else mirror + "/"


def mirrors_for(info: DatasetInfo, mirror: str | None = None) -> list[str]:
    """Mirrors in the order tried: `mirror`, then $BNEXP_MIRROR, then the registry's own."""
    ordered = [normalize_mirror(m) for m in (mirror, os.environ.get("BNEXP_MIRROR")) if m]
    ordered += list(info.mirrors)
    return list(dict.fromkeys(ordered))


def _describe(exc: BaseException) -> tuple[str, bool]:
    """(short reason, worth retrying) for a failed fetch."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip(), exc.code >= 500 or exc.code == 429
    if isinstance(exc, _Transient):
        return str(exc), True
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return "DNS lookup failed: no network or unknown host", False
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out", True
    if isinstance(reason, ConnectionResetError | http.client.IncompleteRead):
        return "connection reset during transfer", True
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason.reason or reason})", False
    if isinstance(reason, FileNotFoundError):
        return "file not found", False
    if isinstance(reason, OSError) and reason.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "no network (unreachable)", False
    if isinstance(reason, http.client.HTTPException):
        return f"bad HTTP response ({type(reason).__name__})", True
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__, False


def _fetch_to(
    url: str,
    dest: BinaryIO,
    label: str,
    expected: int | None,
    progress: ProgressFn | None,
    timeout: float,
) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        header = response.headers.get("Content-Length")
        total = int(header) if header and header.isdigit() else expected
        done = 0
        if progress:
            progress(label, 0, total)
        while chunk := response.read(CHUNK_BYTES):
            dest.write(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
        if total is not None and done < total:
            raise _Transient(f"truncated transfer ({done:,} of {total:,} bytes)")


def fetch_file(
    info: DatasetInfo,
    spec: RemoteFile,
    mirrors: list[str],
    *,
    progress: ProgressFn | None = None,
    retries: int = 1,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download one file from the first mirror that serves it intact; return its cache path."""
    target = dataset_dir(info.name)
    target.mkdir(parents=True, exist_ok=True)
    final = target / spec.name
    failures: list[str] = []
    for base in mirrors:
        url = base + spec.name
        for attempt in range(retries + 1):
            try:
                return write_atomic(
                    final,
                    lambda dest, url=url: _fetch_to(
                        url, dest, spec.name, spec.size, progress, timeout
                    ),
                    check=lambda tmp: check_file(tmp, spec),
                    suffix=".part",
                )
            except VerificationError as e:
                failures.append(f"{base} ({e})")
                break
            except (OSError, http.client.HTTPException, _Transient, ValueError) as e:
                reason, transient = _describe(e)
                if transient and attempt < retries:
                    time.sleep(RETRY_BACKOFF_S * (attempt + 1))
                    continue
                failures.append(f"{base} ({reason})")
                break
    names = ", ".join(f.name for f in info.files)
    raise DatasetError(
        f"cannot download {info.name}: {spec.name} failed on every mirror: {'; '.join(failures)}. "
        f"To place the files by hand, copy {names} from any {info.name} mirror into {target} "
        f"and run `bnexp download {info.name}` to verify them"
    )


def download(
    name: str,
    *,
    mirror: str | None = None,
    progress: ProgressFn | None = None,
    retries: int = 1,
    timeout: float = TIMEOUT_S,
) -> list[Path]:
    """Make dataset `name` available in the cache and return the paths of its verified files.

    Files already present are verified and kept (so files placed by hand only need this call);
    a present file that fails verification is deleted and fetched again. `mirror` (a URL or a
    directory) is tried first, then $BNEXP_MIRROR, then the built-in mirrors. Synthetic datasets
    have nothing to fetch (returns []); a bundled dataset is verified from the files shipped with
    bnexp and cached (no network; returns the cached paths), unless `mirror` is given for it.
    """
    info = lookup(name)
    if info.kind == "synthetic":
        return []
    if info.kind == "bundled" and not (mirror and info.files):
        from . import sources

        if info.parent:
            info = lookup(info.parent)
        sources.cache_bundled(info)
        return [sources._cache_path(info, spec) for spec in info.files]
    mirrors = mirrors_for(info, mirror)
    target = dataset_dir(name)
    paths = []
    try:
        for spec in info.files:
            path = target / spec.name
            if path.is_file():
                try:
                    check_file(path, spec)
                    paths.append(path)
                    continue
                except VerificationError:
                    path.unlink()  # ours to discard: it can never be used as it is
            paths.append(
                fetch_file(info, spec, mirrors, progress=progress, retries=retries, timeout=timeout)
            )
    finally:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
    return paths


def local_status(info: DatasetInfo) -> tuple[bool, str]:
    """(usable without network, short description) for `bnexp datasets`; checks presence only."""
    if info.kind == "synthetic":
        return True, "generated"
    if info.kind == "bundled":
        from .sources import bundled_status

        return True, bundled_status(lookup(info.parent) if info.parent else info)
    present = sum((dataset_dir(info.name) / f.name).is_file() for f in info.files)
    if present == len(info.files):
        return True, "yes"
    if present:
        return False, f"partial ({present}/{len(info.files)} files)"
    return False, "no"
