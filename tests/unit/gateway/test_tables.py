"""gateway._tables.whole: a table printed as it is when it fits the console, else as key/value
blocks, so that a port, an address, a time or a kid is never cut with `…` nor folded."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from gateway._tables import whole

KID = "g8_top9AIGwKn9BfIu1KG0Oai5IptNthB_xHci8xLcQ"
ROWS = [
    ("330000 浙江省", "localhost:41873", "http://127.0.0.1:41874/metrics", "127.0.0.1:41875", KID),
    ("510000 四川省", "localhost:41876", "http://127.0.0.1:41877/metrics", "127.0.0.1:41878", KID),
]


def _render(width: int) -> str:
    """The demo's address table, as `tongban demo` prints it."""
    table = Table(title="three regions on loopback", title_justify="left")
    for column in ("region", "gateway (mTLS)", "metrics", "data system", "kid"):
        table.add_column(column)
    for row in ROWS:
        table.add_row(*row)
    console = Console(width=width, record=True, color_system=None)
    console.print(whole(table))
    return console.export_text()


def test_a_table_that_fits_is_printed_as_a_table() -> None:
    text = _render(200)
    assert "┃ region" in text
    for row in ROWS:
        assert all(cell in text for cell in row)


def test_a_table_too_wide_becomes_blocks_with_every_value_whole() -> None:
    text = _render(80)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.startswith("three regions on loopback\n")
    for row in ROWS:
        for cell in row:
            assert cell in text, cell
    blocks = [line for line in text.splitlines() if line.startswith("metrics ")]
    assert len(blocks) == len(ROWS)  # one block per row, each value beside its name
