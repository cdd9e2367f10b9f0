"""User-facing output of the CLI: the one place that prints."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

# while a live display runs, its console: lines printed past it would tear its rows and make it repeat them
_live: list[Console] = []


def echo(message: str = "", *, err: bool = False) -> None:
    """Print one line to stdout, or stderr for errors and warnings (above the live display while one runs)."""
    stream = sys.stderr if err else sys.stdout
    if _live and (err or is_terminal(stream)):
        _live[-1].print(Text(message), soft_wrap=True)
    else:
        print(message, file=stream, flush=True)


class ConsoleHandler(logging.Handler):
    """Writes each log record as one whole line through a rich console, above its live display."""

    def __init__(self, console: Console, like: logging.Handler) -> None:
        super().__init__(like.level)
        self.console = console
        self.setFormatter(like.formatter)
        self.filters = list(like.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must not break the run
            self.handleError(record)


def is_terminal(stream: object) -> bool:
    """Whether `stream` is a terminal (False for pipes, files and closed streams)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _on_screen(handler: logging.Handler, console: Console) -> bool:
    """A handler that writes to the console's screen (stderr, stdout or a terminal), not to a file."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream: TextIO = handler.stream
    screens = (console.file, sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(stream is s for s in screens) or is_terminal(stream)


@contextmanager
def printing_through(console: Console) -> Iterator[None]:
    """While inside, `echo` and every log handler that writes to the screen print through `console`.

    Its live display then prints each line above itself and redraws below it, instead of a line landing
    in the middle of its rows (which also shifts its redraw, repeating rows).
    """
    loggers = [logging.getLogger(), *(
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger) and lg.handlers
    )]
    swapped = [(lg, h, ConsoleHandler(console, h)) for lg in loggers for h in lg.handlers if _on_screen(h, console)]
    for logger, handler, through in swapped:
        logger.addHandler(through)
        logger.removeHandler(handler)
    _live.append(console)
    try:
        yield
    finally:
        _live.remove(console)
        for logger, handler, through in swapped:
            logger.addHandler(handler)
            logger.removeHandler(through)


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
