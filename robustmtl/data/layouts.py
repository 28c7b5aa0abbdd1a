"""Where each benchmark's files are in what its authors distribute, and where its loader reads them.

A layout turns the members of the given sources (archives, folders, files) into a plan: target path in
the prepared folder → the member to copy there. It finds files by name, wherever the archive nests
them, so the same layout reads an archive, the folder it unpacks to, or the loose files. The targets
are exactly what the loaders (waterbirds.py, celeba.py, multinli.py, civilcomments.py) look for.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustmtl.data import celeba, civilcomments, multinli, waterbirds
from robustmtl.data.archives import Member
from robustmtl.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CELEBA_TABLES = {"list_attr_celeba.csv": "list_attr_celeba.txt", "list_eval_partition.csv": "list_eval_partition.txt"}


@dataclass(frozen=True)
class Converted:
    """A member that is rewritten on the way: `convert(unpacked file, destination)`."""

    member: Member
    convert: Callable[[Path, Path], None]


Plan = dict[str, Member | Converted]


def member_of(item: Member | Converted) -> Member:
    return item.member if isinstance(item, Converted) else item


def _usable(member: Member) -> bool:
    """Not a macOS resource fork (zips made on a Mac carry __MACOSX/ and ._name copies)."""
    return "__MACOSX" not in member.path.parts and not member.path.name.startswith("._")


def named(members: list[Member], name: str) -> list[Member]:
    return [m for m in members if m.path.name == name and _usable(m)]


def _under(members: list[Member], top: Member) -> list[tuple[str, Member]]:
    """(path relative to `top`'s folder, member) for every member of `top`'s source below that folder."""
    prefix = top.path.parent
    return [(m.path.relative_to(prefix).as_posix(), m) for m in members
            if m.source is top.source and _usable(m) and m.path.is_relative_to(prefix)]


@dataclass(frozen=True)
class Layout:
    name: str
    marker: str  # the file whose presence says "this is that dataset's archive"
    expects: str  # what --from should be, for messages
    plan: Callable[[list[Member]], Plan]


class NotThisDataset(UserError):
    """The sources lack the dataset's marker file."""


def _one(members: list[Member], name: str, dataset: str, expects: str) -> Member:
    found = named(members, name)
    if not found:
        raise NotThisDataset(f"{dataset}: no {name} in the given sources; expected {expects}")
    return min(found, key=lambda m: len(m.path.parts))  # the top-most copy (folders may hold backups deeper)


def plan_waterbirds(members: list[Member]) -> Plan:
    """metadata.csv and the image folders beside it (the archive's top folder is dropped)."""
    expects = LAYOUTS["waterbirds"].expects
    found = named(members, "metadata.csv")
    if not found:
        raise NotThisDataset(f"waterbirds: no metadata.csv in the given sources; expected {expects}")

    def images_beside(meta: Member) -> int:
        return sum(rel.lower().endswith(IMAGE_SUFFIXES) for rel, _ in _under(members, meta))

    meta = max(found, key=lambda m: (images_beside(m), -len(m.path.parts)))
    plan: Plan = {rel: m for rel, m in _under(members, meta)
                  if rel == "metadata.csv" or rel.lower().endswith(IMAGE_SUFFIXES)}
    if len(plan) == 1:
        raise UserError(f"waterbirds: {meta.source.path} has {meta.name} but no images beside it; expected {expects}")
    return plan


def _whitespace_table(raw: Path, dest: Path, header: list[str] | None) -> None:
    """CelebA's original TXT annotations (space-aligned; the attribute file starts with a count and the names)
    as the CSV edition the loader reads."""
    lines = raw.read_text().splitlines()
    if header is None:
        if len(lines) < 2:
            raise UserError(f"celeba: {raw.name} is too short to be CelebA's attribute list")
        header, lines = ["image_id", *lines[1].split()], lines[2:]
    with dest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if fields and len(fields) != len(header):
                raise UserError(f"celeba: {raw.name} row {number} has {len(fields)} fields, not {len(header)}")
            if fields:
                writer.writerow(fields)


TXT_CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "list_attr_celeba.csv": lambda raw, dest: _whitespace_table(raw, dest, None),
    "list_eval_partition.csv": lambda raw, dest: _whitespace_table(raw, dest, ["image_id", "partition"]),
}


def plan_celeba(members: list[Member]) -> Plan:
    """The two CSV files (made from the original TXT edition when that is what was given), and the aligned
    images flattened into img_align_celeba/ (Kaggle's archive nests the folder twice)."""
    expects = LAYOUTS["celeba"].expects
    plan: Plan = {}
    for table, txt in CELEBA_TABLES.items():
        if not named(members, table) and named(members, txt):
            plan[table] = Converted(_one(members, txt, "celeba", expects), TXT_CONVERTERS[table])
        else:
            plan[table] = _one(members, table, "celeba", expects)
    for m in members:
        if "img_align_celeba" in m.path.parts[:-1] and m.path.suffix.lower() in IMAGE_SUFFIXES and _usable(m):
            plan.setdefault(f"img_align_celeba/{m.path.name}", m)
    if len(plan) == 2:
        raise UserError(f"celeba: no images under an img_align_celeba folder in the given sources; add "
                        f"img_align_celeba.zip (or the folder it unpacks to) with --from; expected {expects}")
    return plan


def plan_multinli(members: list[Member]) -> Plan:
    """group DRO's metadata_random.csv at the top, GLUE's three MNLI files under glue_data/MNLI/."""
    expects = LAYOUTS["multinli"].expects
    plan: Plan = {"metadata_random.csv": _one(members, "metadata_random.csv", "multinli", expects)}
    for file in multinli.GLUE_FILES:
        found = named(members, file)
        in_mnli = [m for m in found if "MNLI" in m.path.parts[:-1]]
        if not found:
            raise UserError(f"multinli: no {file} (GLUE's MNLI folder or MNLI.zip) in the given sources; "
                            f"expected {expects}")
        plan[(multinli.GLUE_DIR / file).as_posix()] = min(in_mnli or found, key=lambda m: len(m.path.parts))
    return plan


def plan_civilcomments(members: list[Member]) -> Plan:
    """all_data_with_identities.csv and the files beside it (WILDS' release notes), top folder dropped."""
    meta = _one(members, civilcomments.FILE, "civilcomments", LAYOUTS["civilcomments"].expects)
    return {rel: m for rel, m in _under(members, meta) if "/" not in rel}


LAYOUTS: dict[str, Layout] = {
    "waterbirds": Layout("waterbirds", "metadata.csv",
                         f"waterbird_complete95_forest2water2.tar.gz (from {waterbirds.SOURCE})", plan_waterbirds),
    "celeba": Layout("celeba", "list_attr_celeba.csv",
                     "CelebA's img_align_celeba.zip (or its folder) with list_attr_celeba.csv and "
                     "list_eval_partition.csv (Kaggle's CSV edition, or the one archive holding them) or the original "
                     f"list_attr_celeba.txt and list_eval_partition.txt ({celeba.SOURCE})", plan_celeba),
    "multinli": Layout("multinli", "metadata_random.csv",
                       f"GLUE's MNLI folder or MNLI.zip, and metadata_random.csv (from {multinli.SOURCE})",
                       plan_multinli),
    "civilcomments": Layout("civilcomments", civilcomments.FILE,
                            f"WILDS' civilcomments_v1.0 archive or folder ({civilcomments.SOURCE})",
                            plan_civilcomments),
}


def plan_for(name: str, members: list[Member]) -> Plan:
    """The plan of dataset `name`; when the sources hold another dataset's marker instead, say which."""
    try:
        return LAYOUTS[name].plan(members)
    except NotThisDataset as exc:
        others = [other for other in LAYOUTS.values() if other.name != name and named(members, other.marker)]
        hint = (f"; they hold {others[0].marker}: is this {others[0].name}? "
                f"(robustmtl data prepare {others[0].name} --from ...)") if others else ""
        raise UserError(f"{exc}{hint}") from None

