"""Tolerant CSV reading shared by the dataset readers.

Public datasets come with byte-order marks, padded cells, extra columns and ``NaN`` written
for empty cells (pandas exports). :func:`read_rows` hides all of that and yields each row with
its line number in the file, so readers can name the file, line and value when a row is bad.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Cell values that mean "no value" (pandas writes NaN for empty floats/objects).
_MISSING = frozenset({"", "nan", "none", "null", "na", "n/a"})


@dataclass(frozen=True)
class Row:
    """One data row: stripped cells by stripped column name, and its 1-based line number."""

    path: Path
    line: int
    cells: dict[str, str]

    def get(self, column: str) -> str:
        """The stripped cell, or ``""`` when the column is absent or the cell is NaN-like."""
        value = self.cells.get(column, "")
        return "" if value.lower() in _MISSING else value

    def require(self, column: str) -> str:
        """The cell value; a ValueError naming file, line and column when it is empty."""
        value = self.get(column)
        if not value:
            raise self.error(column, self.cells.get(column, ""), "is empty")
        return value

    def float_or_none(self, column: str) -> float | None:
        """The cell as a finite float, None when empty; a ValueError when not a number."""
        value = self.get(column)
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            raise self.error(column, value, "is not a number") from None
        if not math.isfinite(number):
            raise self.error(column, value, "is not finite")
        return number

    def error(self, column: str, value: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}, line {self.line}: column {column!r} value {value!r} {problem}")


def header(path: Path) -> list[str]:
    """The stripped column names of a CSV file (an empty list for an empty file)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        first = next(csv.reader(fh), [])
    return [name.strip() for name in first]


def read_rows(path: Path, *, required: Sequence[str]) -> Iterator[Row]:
    """Rows of ``path`` (UTF-8, optional BOM) whose header contains every ``required`` column.

    Extra columns are kept, cells and names are stripped, fully empty rows are skipped and rows
    shorter than the header read their missing cells as empty. A row with more cells than the
    header (an unquoted comma) raises a ValueError naming the file and line.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        names = [name.strip() for name in next(reader, [])]
        missing = [name for name in required if name not in names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found columns {names}")
        for cells in reader:
            line = reader.line_num
            values = [cell.strip() for cell in cells]
            if not any(values):
                continue
            if len(values) > len(names):
                extra = values[len(names) :]
                if any(extra):
                    raise ValueError(
                        f"{path}, line {line}: {len(values)} cells but the header has {len(names)} "
                        f"columns (extra cells {extra!r})"
                    )
                values = values[: len(names)]
            values += [""] * (len(names) - len(values))
            yield Row(path=path, line=line, cells=dict(zip(names, values, strict=True)))
