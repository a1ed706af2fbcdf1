"""Tables that stay readable on a narrow terminal (80 columns, or a pipe).

rich shrinks a table that is wider than the console by folding or cutting its cells with `…`:
a port, a time or a key id then no longer reads whole. `whole()` prints a table as it is when it
fits, and otherwise as one key/value block per row (`column  value`), so that every cell a
person copies or compares stays on one line.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["whole"]

UNBOUNDED_COLUMNS = 100_000  # columns: wider than any table, to measure one at its full width


class _Whole:
    def __init__(self, table: Table) -> None:
        for column in table.columns:
            column.no_wrap = True  # measured at full width: a cell is never folded nor cut
        self.table = table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table
        unbounded = options.update(max_width=UNBOUNDED_COLUMNS)  # else measured as clamped
        if Measurement.get(console, unbounded, table).maximum <= options.max_width:
            yield table
            return
        if table.title:
            yield Text(str(table.title), style="bold")
        columns = table.columns
        for row in zip(*(list(column.cells) for column in columns), strict=True):
            block = Table.grid(padding=(0, 2))
            block.add_column(style="bold", no_wrap=True)
            block.add_column(overflow="fold")  # only what is longer than a whole line folds
            for column, cell in zip(columns, row, strict=True):
                block.add_row(column.header, cell)
            yield block
            yield Text("")


def whole(table: Table) -> _Whole:
    """`table` whole when it fits the console, else one key/value block per row."""
    return _Whole(table)
