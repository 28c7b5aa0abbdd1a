"""What every figure draws with: headless pyplot, the formats and marker cycle, and saving.

matplotlib is imported on the first figure, not with this module: `robustmtl --help` and the tables never load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustmtl.errors import UserError

FORMATS = ("png", "pdf")
MARKERS = "osD^vP*Xh<>p"  # with matplotlib's 10 colours, 60 methods before a style repeats


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt: Any, fig: Any, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write every format; a disk or permission failure is the user's to fix, so one line, not a traceback."""
    paths = []
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, dpi=150, bbox_inches="tight")  # keeps the legend beside the axes
            paths.append(path)
    except OSError as exc:
        raise UserError(f"cannot write figures to --out {stem.parent}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return paths
