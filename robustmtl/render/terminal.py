"""Terminal tables that stay readable at any width (80 columns included): no value is ever cut or broken.

rich shrinks a table wider than the terminal by cutting cells with an ellipsis, or, with overflow="fold", by
breaking numbers and ids in the middle. A FittedTable instead keeps every value whole on one line (a column is
never narrower than its longest value), lets text columns wrap between words only, and where the columns do not
fit the terminal's width, prints them as several tables, each repeating the columns that identify a row. The
caption is printed under the last table, wrapped at the terminal's width.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from rich.table import Table as RichTable
from rich.text import Text

from robustmtl.render.table import Column, Table

BORDER = 3  # per column: a space of padding each side and a rule; plus one rule for the table's edge
CONTINUED = "columns continued in the next table"


@dataclass
class FittedTable:
    """Rows of `columns`, the first `keep` of which identify a row and are repeated in every part."""

    title: str
    columns: Sequence[Column]
    rows: Sequence[Sequence[str | Text]]
    keep: int = 1
    caption: str | None = None
    _texts: list[list[Text]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._texts = [[c if isinstance(c, Text) else Text(c) for c in row] for row in self.rows]

    def min_width(self, index: int) -> int:
        """The narrowest the column may be: its longest value (or word, for a text column), and the header's
        longest word (headers wrap between words)."""
        column = self.columns[index]
        header = max((cell_len(w) for w in column.header.split()), default=0)
        cells = [t.plain for t in (row[index] for row in self._texts)]
        if column.words:
            return max([header, *(cell_len(w) for c in cells for w in c.split())])
        return max([header, *(max((cell_len(line) for line in c.splitlines()), default=0) for c in cells)])

    def natural_width(self, index: int) -> int:
        """The width that prints the header and every cell on one line."""
        lines = [*self.columns[index].header.splitlines(),
                 *(line for row in self._texts for line in row[index].plain.splitlines())]
        return max(cell_len(line) for line in lines)

    def widths(self, part: Sequence[int], width: int) -> dict[int, int]:
        """Each column of a part at its minimum, then widened towards its natural width, left to right, while
        the table fits `width`: fixed widths, so rich never shrinks a column by cutting or folding a value."""
        widths = {i: self.min_width(i) for i in part}
        slack = width - 1 - sum(w + BORDER for w in widths.values())
        for i in part:
            grow = max(0, min(slack, self.natural_width(i) - widths[i]))
            widths[i] += grow
            slack -= grow
        return widths

    def parts(self, width: int) -> list[list[int]]:
        """Column indices of each table: the identifying columns, then as many others as fit `width`."""
        widths = [self.min_width(i) + BORDER for i in range(len(self.columns))]
        base = 1 + sum(widths[:self.keep])
        parts: list[list[int]] = []
        current: list[int] = []
        for i in range(self.keep, len(self.columns)):
            if current and base + sum(widths[j] for j in current) + widths[i] > width:
                parts.append(current)
                current = []
            current.append(i)
        parts.append(current)
        return [list(range(self.keep)) + part for part in parts]

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        parts = self.parts(options.max_width)
        for number, part in enumerate(parts):
            title = self.title if number == 0 else f"{self.title} (continued)"
            table = RichTable(title=Text(title), caption=Text(CONTINUED) if number < len(parts) - 1 else None)
            for i, column_width in self.widths(part, options.max_width).items():
                column = self.columns[i]
                table.add_column(Text(column.header), justify=column.align or "left",  # type: ignore[arg-type]
                                 width=column_width, overflow="fold")
            for row in self._texts:
                table.add_row(*(row[i] for i in part))
            yield table
        if self.caption:
            yield Text(self.caption)


def render(table: Table) -> FittedTable:
    """The table fitted to the terminal's width, its notes beneath it one per line."""
    return FittedTable(table.title, table.columns, table.rows, keep=table.keep,
                       caption="\n".join(table.notes) or None)
