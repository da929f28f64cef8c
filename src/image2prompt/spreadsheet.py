"""CSV cells that a spreadsheet reads as text, never as a formula (a leaf module: it imports nothing).

Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, after a tab or
carriage return, what follows) as a formula, so a prompt, caption, file name or error message written into a CSV could
run one ("CSV injection"). As the OWASP guidance on it says, such a text cell gets a leading ``'``, which spreadsheets
show as text and do not display. Every CSV this package writes goes through :func:`spreadsheet_safe`:
``image2prompt --format csv``, the records of ``image2prompt batch`` and the server's CSV download. Numbers are left
alone (a negative similarity stays a number).

The change is undone exactly on reading (:func:`spreadsheet_value`): a text that already starts with quotes before
such a character gets one quote more, so ``'=x`` survives the round trip.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_STARTS", "spreadsheet_safe", "spreadsheet_value"]

#: The first characters that make a spreadsheet read a cell as a formula (OWASP: CSV injection).
FORMULA_STARTS = frozenset("=+-@\t\r")


def _needs_quote(text: str) -> bool:
    rest = text.lstrip("'")
    return bool(rest) and rest[0] in FORMULA_STARTS


def spreadsheet_safe(value: Any) -> Any:
    """``value`` as a CSV cell: a text that a spreadsheet would read as a formula gets a leading ``'``."""
    return "'" + value if isinstance(value, str) and _needs_quote(value) else value


def spreadsheet_value(cell: Any) -> Any:
    """The text :func:`spreadsheet_safe` was given, from the cell it made."""
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") and _needs_quote(cell) else cell
