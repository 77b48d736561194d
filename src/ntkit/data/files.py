"""Finding, downloading and checking the distribution files of the file-based data sets.

- Files are looked for in ``data_dir`` (and a few conventional sub-folders), else in the cache folder
  ``$NTKIT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ntkit``, i.e. ``~/.cache/ntkit``), sub-folder per data set.
- ``download=True`` fetches missing files into that folder: each file goes to ``NAME.part`` first, its MD5 is
  compared with the official value, and only a matching file is renamed into place, so the cache never holds a
  corrupt file. A mismatch raises :class:`~ntkit.errors.ChecksumError`.
- Compressed official files found locally are checked against the same MD5 when ``verify=True`` (the default):
  this catches truncated copies and mix-ups (MNIST and Fashion-MNIST use the same file names).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChecksumError, DataNotFoundError

__all__ = ["Resource", "cache_dir", "download", "fetch", "find_file", "locate", "md5sum", "verify_md5"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One official file: its name, its MD5, and the URLs it can be downloaded from (tried in order)."""

    filename: str
    md5: str
    urls: tuple[str, ...]


def cache_dir() -> Path:
    """The folder downloads go to: ``$NTKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ntkit``, else ``~/.cache/ntkit``."""
    if os.environ.get("NTKIT_CACHE_DIR"):
        return Path(os.environ["NTKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ntkit"


def md5sum(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _md5_of_version(path: str, mtime_ns: int, size: int) -> str:
    return md5sum(Path(path))


def verify_md5(path: Path, expected: str, *, what: str) -> None:
    """Raise :class:`ChecksumError` if ``path``'s MD5 is not ``expected`` (computed once per file version)."""
    stat = path.stat()
    got = _md5_of_version(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if got != expected:
        raise ChecksumError(
            f"{path} has MD5 {got}, but the official {what} file has {expected}: the file is corrupt, truncated or "
            "not the official one. Delete it and download it again (download=True, --download), or pass "
            "verify=False (--no-verify) to use it anyway."
        )


def fetch(url: str, dest: Path) -> None:
    """Copy ``url`` (http(s):// or file://) to ``dest``. Tests replace this function to avoid the network."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def download(resource: Resource, folder: Path, *, what: str) -> Path:
    """Download ``resource`` into ``folder`` (created if needed), verify its MD5, return its path.

    The URLs are tried in order until one succeeds. A file whose checksum does not match is deleted and
    :class:`ChecksumError` is raised; if no URL can be reached, :class:`DataNotFoundError` says so.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / resource.filename
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in resource.urls:
        try:
            fetch(url, part)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
            continue
        try:
            verify_md5(part, resource.md5, what=what)
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"the download of {resource.filename} from {url} does not have the official MD5 {resource.md5}; "
                "it was deleted. Try again later, or download the file yourself and put it in the data folder."
            ) from None
        part.replace(dest)
        return dest
    raise DataNotFoundError(
        f"could not download {resource.filename} for {what}: " + "; ".join(errors) + f". Put the file in {folder} "
        "yourself (or point data_dir at a folder that holds it)."
    )


def find_file(folders: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first ``folder/name`` that exists, trying every name in each folder in turn."""
    for folder in folders:
        for name in names:
            if (folder / name).exists():
                return folder / name
    return None


def locate(
    resources: Sequence[Resource],
    folders: Sequence[Path],
    *,
    download_folder: Path,
    download_missing: bool,
    verify: bool,
    what: str,
    alternatives: dict[str, Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Paths of ``resources`` (keyed by file name), found in ``folders`` or downloaded into ``download_folder``.

    ``alternatives`` maps a file name to other names accepted for it (e.g. the uncompressed file); only the
    official name is checked against the MD5 (with ``verify``). Missing files without ``download_missing`` raise
    one :class:`DataNotFoundError` that lists them all and says where to put them.
    """
    alternatives = alternatives or {}
    found: dict[str, Path] = {}
    missing = []
    for res in resources:
        path = find_file(folders, [res.filename, *alternatives.get(res.filename, ())])
        if path is None:
            missing.append(res)
        else:
            if verify and path.name == res.filename:
                verify_md5(path, res.md5, what=what)
            found[res.filename] = path
    if missing and not download_missing:
        names = ", ".join(r.filename for r in missing)
        searched = ", ".join(str(f) for f in folders)
        raise DataNotFoundError(
            f"{what}: {names} not found (searched {searched}). Put the files in {folders[0]}, or pass "
            f"download=True (on the command line: --download) to download them into {download_folder}."
        )
    for res in missing:
        found[res.filename] = download(res, download_folder, what=what)
    return found
