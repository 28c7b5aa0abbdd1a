"""`robustmtl data prepare NAME --from PATH`: the archive a user downloaded, as the folder its loader reads.

The result is `DATA_ROOT/NAME/` (the loaders look there, see files.py). Steps, each refusing with one
line and leaving nothing behind:
1. with `--url`, a resumable download (download.py) to `--from` (default `DATA_ROOT/downloads/`);
2. each file given is hashed (SHA-256, recorded, and compared with `--sha256` when given: none of
   these archives has a published checksum, see docs/datasets-setup.md);
3. the sources are listed (a truncated or damaged archive fails here) and the dataset's layout
   (layouts.py) picks its files;
4. if the data root has the space, they are unpacked into `DATA_ROOT/.NAME.partial/`, each file's size
   checked against the archive's;
5. the dataset's own loader must build from that folder and find every image file it names;
6. a record of the sources (`.robustmtl-prepared.json`) is written and the folder renamed to
   `DATA_ROOT/NAME` in one step, so a folder of that name is always complete.
A second prepare of the same sources finds the record and does nothing. One prepare per dataset and
data root runs at a time (an flock on `DATA_ROOT/.NAME.prepare.lock`); a stale `.partial` folder left by
a killed prepare is removed by the next one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustmtl.data import civilcomments_small
from robustmtl.data.archives import DirSource, FileSource, Source, gather
from robustmtl.data.download import download, file_name
from robustmtl.data.images import FileImages, ImageSplit
from robustmtl.data.layouts import LAYOUTS, Converted, Plan, member_of, plan_for
from robustmtl.errors import UserError
from robustmtl.layout import write_json
from robustmtl.registry import dataset_plugin

RECORD = ".robustmtl-prepared.json"
DOWNLOADS = "downloads"
HASH_CHUNK = 1 << 20
UNSUPPORTED_LOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})
Say = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    target: Path
    fresh: bool  # False: it was prepared before, nothing was done


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_sources(paths: list[Path], hashed: bool) -> list[dict[str, Any]]:
    """What the record keeps of each `--from` path (a folder has no size or hash of its own)."""
    out = []
    for path in paths:
        entry: dict[str, Any] = {"name": path.name, "path": str(path.resolve()), "size": None, "sha256": None}
        if path.is_file():
            entry["size"] = path.stat().st_size
            entry["sha256"] = sha256_of(path) if hashed else None
        out.append(entry)
    return out


def _same_sources(recorded: list[dict[str, Any]], given: list[dict[str, Any]]) -> bool:
    key = sorted((s["name"], s["size"]) for s in recorded)
    return key == sorted((s["name"], s["size"]) for s in given)


def finished(target: Path, paths: list[Path], name: str, data_root: Path, say: Say) -> bool:
    """True when `target` is a prepared copy of these sources; a UserError when it is anything else."""
    if not target.exists():
        return False
    record = target / RECORD
    if not record.is_file():
        raise UserError(f"{target} exists and was not made by robustmtl data prepare; `robustmtl data check {name} "
                        f"--data-root {data_root}` checks it as it is, or move it away to prepare it again")
    try:
        recorded = json.loads(record.read_text())
        recorded_names = ", ".join(s["name"] for s in recorded["sources"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{record} is unreadable; remove {target} to prepare {name} again") from None
    given = describe_sources([p for p in paths if p.exists()], hashed=False)
    if given and not _same_sources(recorded["sources"], given):
        raise UserError(f"{target} was prepared from {recorded_names}; remove it first to prepare {name} from "
                        f"{', '.join(s['name'] for s in given)}")
    say(f"{target} is already prepared (from {recorded_names}, {recorded.get('prepared_at', '?')}): nothing to do")
    return True


@contextlib.contextmanager
def prepare_lock(data_root: Path, name: str) -> Iterator[None]:
    path = data_root / f".{name}.prepare.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise UserError(f"another `robustmtl data prepare {name}` is running on {data_root} (pid {holder or '?'}); "
                            "wait for it to finish") from None
        except OSError as exc:
            if exc.errno not in UNSUPPORTED_LOCK:
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def check_sha256(paths: list[Path], sources: list[dict[str, Any]], expected: str) -> None:
    files = [s for p, s in zip(paths, sources, strict=True) if p.is_file()]
    if len(files) != 1:
        raise UserError(f"--sha256 checks one archive, but {len(files)} files were given with --from")
    got = files[0]["sha256"]
    if got != expected.strip().lower():
        raise UserError(f"{files[0]['path']} has SHA-256 {got}, not the expected {expected}: it is damaged or another "
                        "file; download it again (nothing was unpacked)")


def unpack(plan: Plan, staging: Path) -> None:
    """Each source read once; converted members go through `staging/.raw/` and are rewritten into place."""
    raw = staging / ".raw"
    by_source: dict[Source, dict[str, Path]] = {}
    for target, item in plan.items():
        member = member_of(item)
        dest = raw / target if isinstance(item, Converted) else staging / target
        by_source.setdefault(member.source, {})[member.name] = dest
    for source, wanted in by_source.items():
        source.extract(wanted)
    for target, item in plan.items():
        if isinstance(item, Converted):
            item.convert(raw / target, staging / target)
    shutil.rmtree(raw, ignore_errors=True)


def verify_loads(name: str, staging: Path, sources: list[Path]) -> None:
    """The loader builds from the unpacked folder, and every image file it names is there."""
    from robustmtl.data.check import build_splits, dataset_params

    given = ", ".join(str(p) for p in sources)
    try:
        splits = build_splits(name, dataset_params(name, {}), staging)
    except UserError as exc:
        raise UserError(f"{name}: what {given} holds does not load ({exc})") from None
    for split in splits.by_name().values():
        if isinstance(split, ImageSplit) and isinstance(split.source, FileImages):
            missing = [p for p in split.source.paths if not p.is_file()]
            if missing:
                raise UserError(f"{name}: {len(missing)} images that the metadata names are not in {given} (e.g. "
                                f"{missing[0].relative_to(staging)}); the download is incomplete")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_generated(name: str) -> None:
    if name == civilcomments_small.NAME:
        raise UserError(civilcomments_small.copied_not_prepared())
    if name not in LAYOUTS:
        dataset_plugin(name)  # an unknown name gets the registry's "did you mean"
        raise UserError(f"{name} is generated or ships with its Python package: there is nothing to prepare; "
                        f"`robustmtl data check {name}` shows it")


def bytes_to_write(plan: Plan, data_root: Path) -> int:
    """What unpacking adds to the data root's filesystem (files of a folder on that filesystem are hard-linked)."""
    device = data_root.stat().st_dev
    total = 0
    for item in plan.values():
        member = member_of(item)
        source = member.source
        linked = (not isinstance(item, Converted) and isinstance(source, DirSource | FileSource)
                  and source.path.stat().st_dev == device)
        total += 0 if linked else member.size
    return total


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_space(plan: Plan, data_root: Path) -> None:
    need, free = bytes_to_write(plan, data_root), free_bytes(data_root)
    if need > free:
        raise UserError(f"unpacking needs {need / 1e9:.2f} GB on {data_root} but {free / 1e9:.2f} GB are free; free "
                        "space or choose another --data-root (nothing was unpacked)")


def build(name: str, plan: Plan, data_root: Path, paths: list[Path], sources: list[dict[str, Any]], say: Say) -> Path:
    """Unpack into the staging folder, verify, record and rename it into place; on any failure, leave nothing."""
    target = data_root / name
    staging = data_root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier prepare's leftovers (the caller holds the lock)
    size = sum(member_of(item).size for item in plan.values())
    try:
        say(f"unpacking {len(plan)} files ({size / 1e6:.1f} MB) into {target}")
        unpack(plan, staging)
        verify_loads(name, staging, paths)
        write_json(staging / RECORD, {
            "dataset": name, "sources": sources, "files": len(plan), "bytes": size,
            "prepared_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})
        os.rename(staging, target)
        _fsync_dir(data_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def prepare_dataset(name: str, paths: list[Path], data_root: Path, url: str | None = None,
                    sha256: str | None = None, say: Say = lambda _: None) -> Prepared:
    refuse_generated(name)
    target = data_root / name
    if url is not None:
        if len(paths) > 1:
            raise UserError("--url downloads one file: give at most one --from (where to save it)")
        paths = paths or [data_root / DOWNLOADS / file_name(url)]
    if not paths:
        raise UserError(f"give --from PATH (what you downloaded: {LAYOUTS[name].expects}), or --url URL")
    try:
        data_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data root {data_root}: {exc.strerror or exc}") from None
    with prepare_lock(data_root, name):
        if finished(target, paths, name, data_root, say):
            return Prepared(target, fresh=False)
        if url is not None:
            download(url, paths[0], say)
        for path in paths:
            if not path.exists():
                raise UserError(f"--from {path}: no such file or folder")
        sources = describe_sources(paths, hashed=True)
        if sha256 is not None:
            check_sha256(paths, sources, sha256)
        plan = plan_for(name, [m for source in gather(paths) for m in source.members()])
        check_space(plan, data_root)
        return Prepared(build(name, plan, data_root, paths, sources, say), fresh=True)
