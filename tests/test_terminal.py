"""What a sync shows on a terminal: the live display, log lines above it, plain lines elsewhere."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from io import StringIO

import pytest
from rich.console import Console

from fake_posthog import FakePostHog
from pipelines.output import echo
from pipelines.progress import SyncProgress
from pipelines.runner import SyncOptions, run_sync
from sources.posthog.client import ClientStats
from sources.posthog.report import ResourceRun

CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\r|\n|\x1b|[^\x1b\r\n]+")


def screen(output: str) -> list[str]:
    """The lines a terminal shows (scrollback included) after `output`: text, CR, LF, cursor up, erase line."""
    lines, row, col = [""], 0, 0
    for match in CSI.finditer(output):
        text, code = match.group(0), match.group(2)
        if text == "\r":
            col = 0
        elif text == "\n":
            row, col = row + 1, 0
            lines.extend([""] * (row + 1 - len(lines)))
        elif code == "A":
            row = max(0, row - int(match.group(1) or 1))
        elif code == "K":
            lines[row] = "" if match.group(1) == "2" else lines[row][:col]
        elif code is None and not text.startswith("\x1b"):
            line = lines[row].ljust(col)
            lines[row], col = line[:col] + text + line[col + len(text):], col + len(text)
    return [line.rstrip() for line in lines]


@pytest.fixture
def terminal() -> Iterator[tuple[StringIO, Console]]:
    """A terminal: the live display's console and, like the CLI's, a log handler writing to the same screen."""
    output = StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root, ours = logging.getLogger(), logging.getLogger("posthog_export")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield output, Console(file=output, force_terminal=True, width=110, height=40)
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def test_log_lines_print_whole_above_the_live_display_and_no_sync_repeats_a_row(
    options: SyncOptions, fake: FakePostHog, terminal: tuple[StringIO, Console], caplog: pytest.LogCaptureFixture,
) -> None:
    output, console = terminal
    options.quiet, options.resources = False, ["subscriptions", "property_definitions"]
    for _ in range(2):  # a second sync in the same process, like the demo's
        # mid-listing, once the display shows rows: a 503 and a 429, each logged while the display runs
        fake.inject("type=person", 503)
        fake.inject("type=session", 429)
        run_sync(options, console=console)
    shown = screen(output.getvalue())
    retries = [f"{r.levelname} {r.getMessage()}" for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 4 and {r.split()[0] for r in retries} == {"WARNING", "INFO"}
    for line in retries:
        assert shown.count(line) == retries.count(line), (line, shown)
    rows = [line for line in shown if " pages " in line]
    labels = [f"{resource} (project {project})" for resource in options.resources for project in options.project_ids]
    for label in labels:  # each sync's display leaves its final rows once, nothing half-drawn
        assert len([line for line in rows if line.startswith(label)]) == 2, (label, shown)
    assert len(rows) == 2 * len(labels)
    assert [r.status for r in fake.requests].count(503) == 2


def test_echo_prints_above_the_live_display_while_it_runs(
    terminal: tuple[StringIO, Console], capsys: pytest.CaptureFixture[str]
) -> None:
    output, console = terminal
    run = ResourceRun(1, "subscriptions", pages=1, rows_fetched=10)
    with SyncProgress(ClientStats(), "live", console=console) as progress:
        progress.page(run)
        echo("warning: something to know", err=True)
        logging.getLogger("posthog_export").warning("a log line")
        progress.page(run)
    echo("after the display", err=True)
    shown = [line for line in screen(output.getvalue()) if line]
    assert shown[:2] == ["warning: something to know", "WARNING a log line"]
    assert len(shown) == 3 and shown[2].startswith("subscriptions (project 1)")
    assert capsys.readouterr().err == "after the display\n"
    logging.getLogger("posthog_export").warning("to the screen again")  # the original handler is back
    assert output.getvalue().endswith("WARNING to the screen again\n")


def test_not_on_a_terminal_progress_and_retries_are_plain_lines(
    options: SyncOptions, fake: FakePostHog, terminal: tuple[StringIO, Console],
) -> None:
    output, _ = terminal
    pipe = StringIO()
    options.quiet, options.resources = False, ["subscriptions"]
    fake.inject("subscriptions", 503)
    run_sync(options, console=Console(file=pipe))
    lines = output.getvalue().splitlines()
    assert pipe.getvalue() == "" and "\x1b" not in output.getvalue() and "\r" not in output.getvalue()
    assert any(line.startswith("WARNING ") and "retrying in" in line for line in lines), lines
    assert any(line.startswith("INFO subscriptions project 1: ") and "rows so far" in line for line in lines), lines
