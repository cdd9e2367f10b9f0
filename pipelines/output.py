"""User-facing output of the CLI: the one place that prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def echo(message: str = "", *, err: bool = False) -> None:
    """Print one line to stdout, or stderr for errors and warnings."""
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _cell(value: Any, exact: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if exact else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if exact else f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, exact: bool = False) -> None:
    """Print rows as an aligned text table (numbers right-aligned; `exact`: no rounding or digit grouping)."""
    cells = [[_cell(v, exact) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        aligned = zip(values, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in aligned)
    echo(line(headers).rstrip())
    echo("  ".join("-" * w for w in widths))
    for row in cells:
        echo(line(row).rstrip())
