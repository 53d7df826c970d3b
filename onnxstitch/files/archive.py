"""Unpack ``.tar``/``.tar.gz``/``.tgz``/``.zip`` model bundles without trusting them.

Every member is checked *before* a byte is written: a relative name with no ``..``, no absolute or
drive path, no NUL, no duplicate; only regular files and folders (no symlinks, hardlinks, devices,
fifos); at most ``max_members`` members, each and all together within ``max_bytes`` (also enforced
while writing, so a zip whose headers lie cannot inflate past it).  Files are written into a temp
folder next to ``dest`` that is renamed to ``dest`` only when everything succeeded; on any error
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from onnxstitch.errors import ModelFileError, UnsafeModelError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_MEMBERS", "unpack"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 1024**3
DEFAULT_MAX_MEMBERS = 10_000
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Member:
    name: PurePosixPath
    is_dir: bool
    size: int
    handle: tarfile.TarInfo | zipfile.ZipInfo


def _check_name(archive: str, raw: str) -> PurePosixPath:
    where = f"{archive}: member {raw!r}"
    if not raw or "\x00" in raw:
        raise UnsafeModelError(f"{where} has an empty name or a NUL byte")
    text = raw.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafeModelError(f"{where} is an absolute path", hint="bundle members must be relative paths")
    name = PurePosixPath(text)
    if ".." in name.parts:
        raise UnsafeModelError(
            f"{where} climbs out of the folder with '..'", hint="do not unpack this archive"
        )
    clean = PurePosixPath(*[p for p in name.parts if p not in ("", ".")]) if name.parts else name
    if not clean.parts:
        raise UnsafeModelError(f"{where} names the folder itself")
    return clean


def _tar_members(archive: str, tar: tarfile.TarFile) -> Iterator[_Member]:
    for info in tar.getmembers():
        name = _check_name(archive, info.name)
        if info.issym() or info.islnk():
            raise UnsafeModelError(
                f"{archive}: member {info.name!r} is a {'symlink' if info.issym() else 'hardlink'} "
                f"(to {info.linkname!r}); links are refused",
                hint="re-create the bundle with plain files only",
            )
        if not (info.isfile() or info.isdir()):
            raise UnsafeModelError(f"{archive}: member {info.name!r} is a device, fifo or other special file")
        yield _Member(name, info.isdir(), info.size if info.isfile() else 0, info)


def _zip_members(archive: str, zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        name = _check_name(archive, info.filename)
        kind = stat.S_IFMT((info.external_attr >> 16) & 0o177777)  # 0: no Unix type recorded
        if kind == stat.S_IFLNK:
            raise UnsafeModelError(f"{archive}: member {info.filename!r} is a symlink; links are refused")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeModelError(
                f"{archive}: member {info.filename!r} is a device, fifo or other special file"
            )
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{archive}: member {info.filename!r} is encrypted")
        yield _Member(name, info.is_dir(), 0 if info.is_dir() else info.file_size, info)


def _check_all(archive: str, members: list[_Member], *, max_bytes: int, max_members: int) -> None:
    if len(members) > max_members:
        raise UnsafeModelError(f"{archive} has {len(members)} members, more than max_members={max_members}")
    total, seen = 0, set()
    for member in members:
        key = member.name.as_posix()
        if key in seen:
            raise UnsafeModelError(f"{archive}: member {key!r} appears twice")
        seen.add(key)
        total += member.size
        if total > max_bytes:
            raise UnsafeModelError(
                f"{archive} unpacks to more than max_bytes={max_bytes} bytes (at member {key!r})",
                hint="raise max_bytes if you trust the archive",
            )


def _copy_bounded(src: IO[bytes], dst: Path, *, budget: int, archive: str, name: str) -> int:
    written = 0
    with open(dst, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise UnsafeModelError(
                    f"{archive}: member {name!r} inflates past what its header says or past max_bytes"
                )
            out.write(chunk)
    return written


def _open(archive: Path) -> tuple[str, tarfile.TarFile | zipfile.ZipFile]:
    if zipfile.is_zipfile(archive):
        return "zip", zipfile.ZipFile(archive)
    try:
        return "tar", tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ModelFileError(
            f"{archive.name} is not a .tar, .tar.gz or .zip archive ({exc})",
            hint="pass a .onnx file to onnxstitch.load, or an archive to unpack",
        ) from exc


def _extract(handle: tarfile.TarFile | zipfile.ZipFile, members: list[_Member], root: Path, *,
             archive: str, max_bytes: int) -> list[Path]:  # fmt: skip
    budget = max_bytes
    written: list[Path] = []
    for member in members:
        target = root.joinpath(*member.name.parts)
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        stream: IO[bytes] | None
        if isinstance(handle, zipfile.ZipFile) and isinstance(member.handle, zipfile.ZipInfo):
            stream = handle.open(member.handle)
        elif isinstance(handle, tarfile.TarFile) and isinstance(member.handle, tarfile.TarInfo):
            stream = handle.extractfile(member.handle)
        else:
            stream = None
        if stream is None:
            raise ModelFileError(f"{archive}: member {member.name.as_posix()!r} cannot be read")
        with stream:
            limit = min(budget, member.size)
            budget -= _copy_bounded(
                stream, target, budget=limit, archive=archive, name=member.name.as_posix()
            )
        written.append(target)
    return written


def unpack(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Unpack a model bundle into ``dest`` (created; it must not exist or be an empty folder).

    Args:
        archive: a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` file.
        dest: the folder to create.
        max_bytes: the most bytes all members may unpack to.
        max_members: the most members the archive may have.

    Returns:
        The regular files written, under ``dest``, in archive order.

    Raises:
        UnsafeModelError: a member is absolute, climbs out with ``..``, is a link, device or special
            file, appears twice, or the archive is past ``max_bytes``/``max_members``.
        ModelFileError: the file is not a supported archive, a member is encrypted or unreadable,
            or ``dest`` exists and is not an empty folder.
    """
    src, target = Path(archive), Path(dest)
    name = src.name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelFileError(
            f"cannot unpack {name} into {str(target)!r}: it exists and is not an empty folder"
        )
    if not src.is_file():
        raise ModelFileError(f"archive {str(src)!r} does not exist or is not a file")
    kind, handle = _open(src)
    with handle:
        try:
            listed = (
                _zip_members(name, handle)
                if isinstance(handle, zipfile.ZipFile)
                else _tar_members(name, handle)
            )
            members = list(listed)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ModelFileError(f"{name} is a corrupt {kind} archive: {exc}") from exc
        _check_all(name, members, max_bytes=max_bytes, max_members=max_members)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            written = _extract(handle, members, tmp, archive=name, max_bytes=max_bytes)
            tmp.replace(target)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelFileError(f"{name} is a corrupt {kind} archive: {exc}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise
    logger.info("unpacked %d files of %s into %s", len(written), name, target)
    return [target / p.relative_to(tmp) for p in written]
