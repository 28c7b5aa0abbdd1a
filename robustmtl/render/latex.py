"""LaTeX: a booktabs `table` float (\\usepackage{booktabs}), the title and notes as its caption."""

from __future__ import annotations

import re

from robustmtl.render.table import Table

_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "\u2013": "--",
    "×": r"$\times$",
    "ℓ": r"$\ell$",
}
_ELL_INDEX = re.compile(r"\$\\ell\$(\d+)")  # ℓ1 is set as the norm's symbol, $\ell_{1}$


def escape(s: str) -> str:
    """Escape TeX specials in user-chosen names (method/dataset strings like mtl_l1, display names like ℓ1)."""
    return _ELL_INDEX.sub(r"$\\ell_{\1}$", "".join(_ESCAPES.get(c, c) for c in s))


def caption(table: Table) -> str:
    """The float's caption: the title, then the notes as sentences after it."""
    notes = [n.removeprefix("- ") for n in table.notes]
    return " ".join([table.title + ".", *notes]) if notes else table.title


def render(table: Table) -> str:
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{escape(caption(table))}}}",
        rf"\label{{{table.label}}}",
        rf"\begin{{tabular}}{{{'l' * len(table.columns)}}}",
        r"\toprule",
        " & ".join(escape(h.replace("\n", " ")) for h in table.header) + r" \\",
        r"\midrule",
        *(" & ".join(escape(c) for c in row) + r" \\" for row in table.rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(out) + "\n"
