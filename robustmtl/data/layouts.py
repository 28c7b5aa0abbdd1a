"""Where each benchmark's files are in what its authors distribute, and where its loader reads them.

A layout turns the members of the given sources (archives, folders, files) into a plan: target path in
the prepared folder → the member to copy there. It finds files by name, wherever the archive nests
them, so the same layout reads an archive, the folder it unpacks to, or the loose files. The targets
are exactly what the loaders (waterbirds.py, celeba.py, multinli.py, civilcomments.py) look for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robustmtl.data import celeba, civilcomments, multinli, waterbirds
from robustmtl.data.archives import Member
from robustmtl.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
Plan = dict[str, Member]


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
    plan = {rel: m for rel, m in _under(members, meta) if rel == "metadata.csv" or rel.lower().endswith(IMAGE_SUFFIXES)}
    if len(plan) == 1:
        raise UserError(f"waterbirds: {meta.source.path} has {meta.name} but no images beside it; expected {expects}")
    return plan


def plan_celeba(members: list[Member]) -> Plan:
    """The two CSV files, and the aligned images flattened into img_align_celeba/ (Kaggle nests it twice)."""
    expects = LAYOUTS["celeba"].expects
    tables = ("list_attr_celeba.csv", "list_eval_partition.csv")
    plan = {name: _one(members, name, "celeba", expects) for name in tables}
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
    plan = {"metadata_random.csv": _one(members, "metadata_random.csv", "multinli", expects)}
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
                     "Kaggle's CelebA files: img_align_celeba.zip (or its folder), list_attr_celeba.csv and "
                     f"list_eval_partition.csv, or the one archive holding them ({celeba.SOURCE})", plan_celeba),
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

