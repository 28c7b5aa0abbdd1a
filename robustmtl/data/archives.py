"""What `data prepare` reads from: a folder, a zip, a tar (any compression) or a plain file, as one listing.

Every source lists its regular files as members (posix paths relative to the source) with their sizes,
and copies the members asked for to given destinations, checking each copy's size against the size
the source declares (a zip also checks each file's CRC-32). A damaged or truncated archive is one
UserError naming the file. Tar archives are read front to back (once to list and check that nothing is
cut off, once to extract) because a compressed tar cannot seek backwards cheaply. Only the standard
library is used.
"""

from __future__ import annotations

import bz2
import errno
import functools
import gzip
import itertools
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from robustmtl import pause
from robustmtl.errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, ValueError)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
CHUNK = 1 << 20
_copied = itertools.count(1)  # members copied by this process: where a test's pause holds an unpacking


@dataclass(frozen=True)
class Member:
    source: Source
    name: str  # posix path inside the source
    size: int

    @functools.cached_property
    def path(self) -> PurePosixPath:  # cached: layouts look at every member's path several times
        return PurePosixPath(self.name)


def _safe(name: str) -> bool:
    """Only plain relative paths (a tar may name /etc/... or ../..; those are never members)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts


def damaged(path: Path, exc: BaseException) -> UserError:
    return UserError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc}); download it again")


def _copy(reader: IO[bytes], dest: Path, member: Member) -> None:
    """Stream one member to `dest`, then compare its size with the declared one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dest.open("wb") as out:
            shutil.copyfileobj(reader, out, CHUNK)
            written = out.tell()
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise UserError(f"no space left writing {dest} ({exc.strerror}); free space and prepare again") from None
        raise
    if written != member.size:
        raise UserError(f"{member.source.path}: {member.name} unpacked to {written} bytes but the archive declares "
                        f"{member.size}; the archive is damaged, download it again")
    pause.wait_here("unpack", next(_copied))


class Source:
    """Base: a path and its members."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def members(self) -> list[Member]:
        raise NotImplementedError

    def extract(self, wanted: dict[str, Path]) -> None:
        """Copy each member named in `wanted` to its destination file."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class FileSource(Source):
    """A plain file given on its own (e.g. metadata_random.csv): one member, its own name."""

    def members(self) -> list[Member]:
        return [Member(self, self.path.name, self.path.stat().st_size)]

    def extract(self, wanted: dict[str, Path]) -> None:
        for name, dest in wanted.items():
            _link_or_copy(self.path, dest, Member(self, name, self.path.stat().st_size))


class DirSource(Source):
    """A folder: its files, found recursively (symlinks to files are followed)."""

    kind = "folder"

    def members(self) -> list[Member]:
        found = []
        for root, _dirs, files in os.walk(self.path, followlinks=True):
            for file in files:
                full = Path(root) / file
                if full.is_file():
                    found.append(Member(self, full.relative_to(self.path).as_posix(), full.stat().st_size))
        return sorted(found, key=lambda m: m.name)

    def extract(self, wanted: dict[str, Path]) -> None:
        for name, dest in wanted.items():
            full = self.path / name
            _link_or_copy(full, dest, Member(self, name, full.stat().st_size))


def _link_or_copy(src: Path, dest: Path, member: Member) -> None:
    """A hard link where source and data root share a filesystem (instant, no second copy), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        with src.open("rb") as reader:
            _copy(reader, dest, member)


class ZipSource(Source):
    kind = "zip"

    def members(self) -> list[Member]:
        try:
            with zipfile.ZipFile(self.path) as zf:
                return [Member(self, i.filename, i.file_size) for i in zf.infolist()
                        if not i.is_dir() and _safe(i.filename)]
        except READ_ERRORS as exc:
            raise damaged(self.path, exc) from None

    def extract(self, wanted: dict[str, Path]) -> None:
        try:
            with zipfile.ZipFile(self.path) as zf:
                for name, dest in wanted.items():
                    info = zf.getinfo(name)
                    with zf.open(info) as reader:
                        _copy(reader, dest, Member(self, name, info.file_size))
        except READ_ERRORS as exc:
            raise damaged(self.path, exc) from None


class TarSource(Source):
    kind = "tar"

    def _stream(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        with tarfile.open(self.path, "r|*") as tf:
            for info in tf:
                if info.isfile() and _safe(info.name):
                    yield tf, info

    def members(self) -> list[Member]:
        """Listed in random-access mode, which raises where the compressed stream ends early; a stream-mode
        read would take a cut-off archive for a shorter complete one."""
        try:
            with tarfile.open(self.path, "r:*") as tf:
                infos = tf.getmembers()
                self._check_complete(tf, infos)
        except (*READ_ERRORS, OSError) as exc:
            raise damaged(self.path, exc) from None
        return [Member(self, info.name, info.size) for info in infos if info.isfile() and _safe(info.name)]

    def _check_complete(self, tf: tarfile.TarFile, infos: list[tarfile.TarInfo]) -> None:
        """A compressed tar is read to its end (the decompressor checks length and CRC there); a plain tar
        must end with the two zero blocks every tar writer puts after its last member."""
        stream = tf.fileobj
        if isinstance(stream, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile):
            while stream.read(CHUNK):
                pass
            return
        end = max((i.offset_data + -(-i.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for i in infos), default=0)
        with self.path.open("rb") as f:
            f.seek(end)
            trailer = f.read(2 * tarfile.BLOCKSIZE)
        if len(trailer) < 2 * tarfile.BLOCKSIZE or trailer.strip(b"\0"):
            raise EOFError("the archive ends before its end-of-archive blocks")

    def extract(self, wanted: dict[str, Path]) -> None:
        left = dict(wanted)
        try:
            for tf, info in self._stream():
                dest = left.pop(info.name, None)
                if dest is not None:
                    reader = tf.extractfile(info)
                    assert reader is not None  # regular files always have data
                    _copy(reader, dest, Member(self, info.name, info.size))
        except READ_ERRORS as exc:
            raise damaged(self.path, exc) from None
        if left:
            raise damaged(self.path, EOFError(f"{len(left)} listed files not found on the second read"))


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def open_source(path: Path) -> Source:
    """The source for one `--from` path: folder, zip, tar (by content, not by name), else a plain file."""
    if path.is_dir():
        return DirSource(path)
    if not path.is_file():
        raise UserError(f"--from {path}: no such file or folder")
    if zipfile.is_zipfile(path):
        return ZipSource(path)
    try:
        if tarfile.is_tarfile(path):
            return TarSource(path)
    except READ_ERRORS as exc:
        raise damaged(path, exc) from None
    if is_archive(path):  # named like an archive but neither zip nor tar: cut short, or not an archive at all
        raise damaged(path, ValueError("not a readable zip or tar archive"))
    return FileSource(path)


def gather(paths: list[Path]) -> list[Source]:
    """Sources for the `--from` paths, plus the archives lying directly in a given folder (CelebA's
    img_align_celeba.zip beside its CSV files); a folder's own files come before those archives."""
    sources: list[Source] = []
    for path in paths:
        source = open_source(path)
        sources.append(source)
        if isinstance(source, DirSource):
            sources += [open_source(p) for p in sorted(path.iterdir()) if p.is_file() and is_archive(p)]
    return sources
