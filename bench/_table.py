"""Tables of benchmark rows: one way to write a cell and a row for every benchmark, as Markdown
(what docs/performance.md quotes) or as right-aligned text columns."""

from __future__ import annotations

from typing import Iterable, Sequence


def cell(v, nd: int = 1) -> str:
    """A number with ``nd`` decimals, '–' where there is none, anything else as its text."""
    return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, (int, float)) else str(v))


def markdown_row(cells: Iterable) -> str:
    # an empty cell as one space ("| |"), as the tables in the docs were written
    return "|" + "|".join(f" {c} " if c != "" else " " for c in map(str, cells)) + "|"


def markdown(header: Sequence, rows: Iterable[Sequence] = (), align: str = "") -> list[str]:
    """The lines of a Markdown table: header, rule, rows. ``align``: one letter a column,
    'r' right-aligns it (``---:``); by default none is."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(header), "l"))
    return [markdown_row(header), rule, *(markdown_row(r) for r in rows)]


def columns(header: Sequence, rows: Iterable[Sequence], widths: Sequence[int]) -> list[str]:
    """The lines of a text table, each column right-aligned to its width."""
    return [" ".join(f"{c:>{w}}" for c, w in zip(r, widths)) for r in (header, *rows)]
