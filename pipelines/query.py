"""`posthog-export sql`: one read-only query against the DuckDB output, printed as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from .output import echo, print_table


class QueryError(Exception):
    """The query itself is wrong (syntax, unknown table or column, a write on the read-only file)."""


def open_output(output: str | Path) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB output read-only, timestamps shown in UTC; FileNotFoundError if there is none."""
    path = Path(output)
    if not path.is_file():
        raise FileNotFoundError(f"no DuckDB file at {str(path)!r}: run `posthog-export sync` first or pass --output")
    con = duckdb.connect(str(path), read_only=True)
    con.execute("SET TimeZone = 'UTC'").fetchall()
    return con


def one_line(error: BaseException) -> str:
    """A DuckDB error as one line: its message and hint, without the echoed query."""
    lines = []
    for line in str(error).strip().splitlines():
        if not line.strip() or line.startswith("LINE "):
            break
        lines.append(line.strip())
    return " ".join(lines) or type(error).__name__


def _fit(value: Any, width: int) -> Any:
    if isinstance(value, str | bytes) and width > 0:
        text = value if isinstance(value, str) else value.hex()
        text = " ".join(text.split())
        return text if len(text) <= width else text[: max(1, width - 1)] + "…"
    return value


def run_query(
    output: str | Path, sql: str, *, dataset: str = "posthog", max_rows: int = 100, max_width: int = 60
) -> None:
    """Run `sql` on the DuckDB output and print the result; unqualified tables resolve in `dataset`.

    Raises QueryError for a bad query, FileNotFoundError when there is no output file.
    """
    with open_output(output) as con:
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
        if dataset in schemas:
            con.execute(f"SET search_path = '{dataset},main'").fetchall()
        try:
            cursor = con.execute(sql)
            if cursor.description is None:
                cursor.fetchall()
                echo("ok")
                return
            headers = [d[0] for d in cursor.description]
            # one row more than shown tells whether there are more; closing drops the rest unread
            rows = cursor.fetchmany(max_rows + 1) if max_rows > 0 else cursor.fetchall()
        except duckdb.Error as error:
            raise QueryError(one_line(error)) from error
    shown = rows[:max_rows] if max_rows > 0 else rows
    print_table(headers, [[_fit(v, max_width) for v in row] for row in shown], exact=True)
    if len(rows) > len(shown):
        echo(f"(first {len(shown)} rows shown; --max-rows N for more, 0 for all)")
    else:
        echo(f"({len(shown)} row{'' if len(shown) == 1 else 's'})")
