"""Typed parameter blocks: coercion of user values (TOML, --set) into dataclass fields.

Every parameter block (training, a method's, a dataset's, a model's) is a frozen dataclass. Fields
may carry `metadata={"choices": (...)}` or `metadata={"min": x}` / `{"positive": True}` to be
validated here, so a bad value is one clear line instead of a crash deep in training.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from robustmtl.errors import UserError


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For plug-ins without parameters."""


@functools.cache
def field_types(block: type) -> dict[str, Any]:
    """Resolved type of every field of a params dataclass (cached: resolving hints is slow)."""
    hints = typing.get_type_hints(block)
    return {f.name: hints[f.name] for f in dataclasses.fields(block)}


@functools.cache
def field_metadata(block: type) -> dict[str, Any]:
    return {f.name: f.metadata for f in dataclasses.fields(block)}


def did_you_mean(name: str, options: typing.Iterable[str]) -> str:
    """' (did you mean x?)' when a close option exists, else ''."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(block: type, key: str, value: Any, where: str) -> Any:
    """Check `value` against field `key` of `block` and return it in canonical type.

    Ints are accepted for float fields (TOML `lr = 1` means 1.0) so that equal configs hash equally.
    """
    tp = field_types(block)[key]
    optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__
    if optional:
        if value is None or value == "none":
            return None
        tp = next(t for t in tp.__args__ if t is not type(None))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: {key} must be a list, got {value!r}")
        value = tuple(value)
    elif tp in (int, float, str, bool) and (type(value) is not tp):
        raise UserError(f"{where}: {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {key} must be a finite number, got {value!r}")
    meta = field_metadata(block)[key]
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{where}: {key} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if meta.get("positive") and not value > 0:
        raise UserError(f"{where}: {key} must be > 0, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise UserError(f"{where}: {key} must be >= {meta['min']}, got {value!r}")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise UserError(f"{where}: {key} must look like {meta['example']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise UserError(f"{where}: {key} must be <= {meta['max']}, got {value!r}")
    return value


def parse_cli_value(text: str) -> Any:
    """`--set key=value` values: TOML scalars/lists when they parse, else the bare string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def positive(**extra: Any) -> dict[str, Any]:
    return {"positive": True, **extra}


def at_least(low: float) -> dict[str, Any]:
    return {"min": low}


def between(low: float, high: float) -> dict[str, Any]:
    return {"min": low, "max": high}


DEVICE = {"pattern": r"auto|cpu|mps|cuda(:\d+)?", "example": "auto, cpu, cuda, cuda:1 or mps"}


def one_of(*choices: Any) -> dict[str, Any]:
    return {"choices": choices}


LOCAL_PATH = "local_path"


def local_path(kind: str) -> dict[str, Any]:
    """Metadata of a field naming a local `file` or `dir` the run loads (empty: none). A `dir` field may also
    hold a name that is no path (`minilm`, a hub id): only a value that `looks_like_path` or is a folder
    counts as one. A grid checks these paths before it submits anything (`missing_local_path`)."""
    return {LOCAL_PATH: kind}


def looks_like_path(text: str) -> bool:
    """Whether a name is meant as a file system path, not a hub id (`org/model`) or a shipped name."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1


@functools.cache
def path_fields(block: type) -> tuple[tuple[str, str], ...]:
    """(key, kind) of the block's `local_path` fields."""
    return tuple((f.name, f.metadata[LOCAL_PATH]) for f in dataclasses.fields(block) if LOCAL_PATH in f.metadata)


def missing_local_path(block: object) -> str | None:
    """`key = 'value': no such folder /abs/path` for the first local path the block names that is not there."""
    block_type: type = type(block)
    for key, kind in path_fields(block_type):
        value = getattr(block, key)
        if not value:
            continue
        path = Path(value).expanduser()
        if kind == "dir" and (path.is_dir() or not looks_like_path(value)):
            continue
        if kind == "file" and path.is_file():
            continue
        return f"{key} = {value!r}: no such {'folder' if kind == 'dir' else 'file'} {path.absolute()}"
    return None


OMIT_AT_DEFAULT = "omit_at_default"


def added_later(*checks: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a field added after run ids were in use: while it holds its default it is left out of
    the run's identity (canonical JSON, config.json), so every existing config keeps its run id."""
    merged: dict[str, Any] = {OMIT_AT_DEFAULT: True}
    for check in checks:
        merged.update(check)
    return merged


@functools.cache
def omittable_defaults(block: type) -> dict[str, Any]:
    """The `added_later` fields of a block and their defaults."""
    return {f.name: f.default for f in dataclasses.fields(block) if f.metadata.get(OMIT_AT_DEFAULT)}
