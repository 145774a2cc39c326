"""Reading decision and outcome files: Parquet, CSV and JSON lines, as raw rows to be checked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from drivetrain.errors import DataError

__all__ = ["RawRows", "read_rows"]

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class RawRows:
    """Rows as read, before any check. ``unreadable`` holds (row number, text, reason) of records that
    could not even be parsed (a broken JSON line); they go to quarantine like any other bad row."""

    frame: pd.DataFrame
    unreadable: tuple[tuple[int, str, str], ...]
    source: str
    row_numbers: np.ndarray | None = None

    def numbers(self) -> np.ndarray:
        """1-based record number in the file of each row of ``frame``."""
        if self.row_numbers is not None:
            return self.row_numbers
        return np.arange(1, len(self.frame) + 1, dtype=np.int64)

    @property
    def rows_in(self) -> int:
        return len(self.frame) + len(self.unreadable)


def read_rows(path: str | Path) -> RawRows:
    """Read ``path`` by its extension. CSV cells stay text (the contract check parses them)."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"input file must end in one of {sorted(FORMATS)}, got {path.name!r}")
    if not path.is_file():
        raise DataError(f"input file must exist, got missing path {str(path)!r}")
    try:
        if kind == "parquet":
            return RawRows(pq.read_table(path).to_pandas(), (), str(path))
        if kind == "csv":
            return RawRows(pd.read_csv(path, dtype=str, keep_default_na=False), (), str(path))
    except Exception as exc:  # the reader's own message says what is wrong with the file
        raise DataError(f"input file {str(path)!r} must be readable {kind}, got: {exc}") from None
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> RawRows:
    records: list[dict[str, object]] = []
    numbers: list[int] = []
    bad: list[tuple[int, str, str]] = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        number = 0
        for line in handle:
            if not line.strip():
                continue
            number += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append((number, line.rstrip("\n")[:2000], f"row must be a JSON object, got invalid JSON ({exc.msg})"))
                continue
            if not isinstance(record, dict):
                bad.append((number, line.rstrip("\n")[:2000], f"row must be a JSON object, got {type(record).__name__}"))
                continue
            records.append(record)
            numbers.append(number)
    return RawRows(pd.DataFrame.from_records(records), tuple(bad), str(path), np.asarray(numbers, dtype=np.int64))
