"""Tables as text: fixed-width columns for a terminal, or Markdown for a document.

The one table formatter of ``memrl eval``'s summary, ``memrl compare``'s ``compare.md``,
``memrl plan``, the report's Markdown, the configuration reference and the benchmarks. Cells
are strings: each caller formats its own numbers.
"""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], align: str = "") -> str:
    """``rows`` (a header first, if any) in columns two spaces apart, each as wide as its
    widest cell.

    ``align`` gives each column's alignment, ``<`` (left) or ``>`` (right); columns it does not
    reach are left-aligned. A left-aligned last column is not padded, so no line ends in blanks.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    last = len(widths) - 1

    def cell(i: int, value: str) -> str:
        if align[i:i + 1] == ">":
            return value.rjust(widths[i])
        return value if i == last else value.ljust(widths[i])

    return "\n".join("  ".join(cell(i, value) for i, value in enumerate(row)) for row in rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, padded: bool = False) -> str:
    """A Markdown table: ``| a | b |`` lines, a rule under ``header``.

    Cells go in as given (escape ``|`` first where a cell may hold one). ``padded``: every
    column as wide as its widest cell, the rule too, so the source reads as a table in a
    terminal; otherwise cells are not padded and the rule is ``|---|---|``.
    """
    if not padded:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    every = [header, *rows]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]
    rule = ["-" * w for w in widths]
    return "\n".join("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |"
                     for row in [header, rule, *rows])
