"""Markdown: a pipe table, headed by its title, then its notes as paragraphs and list items."""

from __future__ import annotations

from collections.abc import Sequence

from robustmtl.render.table import Column, Table

ALIGN = {"left": ":--", "right": "--:", "": "---"}


def escape(s: str) -> str:
    """Characters Markdown would read as markup or a cell border, printed literally."""
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def pipe_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """The table's lines; every header and cell escaped (a header's line break, the terminal's, is a space)."""
    return ["| " + " | ".join(escape(c.header.replace("\n", " ")) for c in columns) + " |",
            "|" + "|".join(ALIGN[c.align] for c in columns) + "|",
            *("| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows)]


def paragraphs(notes: Sequence[str]) -> list[str]:
    """Notes as Markdown: a blank line before each paragraph; a "- " item stays with the line before it."""
    lines: list[str] = []
    for note in notes:
        item = note.startswith("- ")
        if not (item and lines):
            lines.append("")
        lines.append("- " + escape(note[2:]) if item else escape(note))
    return lines


def render(table: Table) -> str:
    heading = [f"{escape(table.title)}:", ""] if table.title else []
    return "\n".join([*heading, *pipe_table(table.columns, table.rows), *paragraphs(table.notes)]) + "\n"
