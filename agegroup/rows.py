"""One row per face: the table that ``agegroup predict``, its Ray runner and the page's
"Download CSV" (``static/batch.js``, same columns) write.

A photo gives one row per face from its API answer (a photo without a face gives one row, the
whole-photo guess, with ``face_found`` false and no box); a file that could not be used gives
one row with its ``error_code`` and ``error_message`` and nothing else. Rows are plain dicts
with ``COLUMNS`` as keys, written as CSV, JSON lines or Parquet, and read back for ``--resume``
exactly as they were written.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from agegroup.buckets import BUCKETS

PROBABILITY_COLUMNS = tuple(f"p_{bucket}" for bucket in BUCKETS)
COLUMNS = (
    "path",
    "face",
    "x",
    "y",
    "width",
    "height",
    "face_found",
    "low_resolution",
    "group",
    "confidence",
    *PROBABILITY_COLUMNS,
    "age",
    "age_low",
    "age_high",
    "model",
    "error_code",
    "error_message",
)
INT_COLUMNS = frozenset({"face", "x", "y", "width", "height", "age_low", "age_high"})
FLOAT_COLUMNS = frozenset({"confidence", "age", *PROBABILITY_COLUMNS})
BOOL_COLUMNS = frozenset({"face_found", "low_resolution"})
FORMATS = (".csv", ".jsonl", ".parquet")

Row = dict[str, Any]


def face_rows(path: str, answer: dict[str, Any]) -> list[Row]:
    """The rows of one photo's API answer, faces numbered from 1 in the answer's order."""
    model = answer["model"]
    rows = []
    for number, face in enumerate(answer["faces"], start=1):
        box = face.get("box") or (None, None, None, None)
        age = face.get("age") or {}
        low, high = age.get("interval") or (None, None)
        row: Row = dict.fromkeys(COLUMNS)
        row.update(
            path=path,
            face=number,
            x=box[0],
            y=box[1],
            width=box[2],
            height=box[3],
            face_found=face["face_found"],
            low_resolution=face["low_resolution"],
            group=face["bucket"],
            confidence=face["confidence"],
            age=age.get("estimate"),
            age_low=low,
            age_high=high,
            model=f"{model['name']} {model['version']}",
        )
        for bucket, column in zip(BUCKETS, PROBABILITY_COLUMNS, strict=True):
            row[column] = face["probabilities"][bucket]
        rows.append(row)
    return rows


def error_row(path: str, code: str, message: str) -> Row:
    """The one row of a file that could not be used."""
    row: Row = dict.fromkeys(COLUMNS)
    row.update(path=path, error_code=code, error_message=message)
    return row


def output_format(path: Path) -> str:
    """``.csv``, ``.jsonl`` or ``.parquet``, from the file name; ``ValueError`` otherwise."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out must end in {', '.join(FORMATS)}, not {path.name!r}")
    return suffix


# --- CSV and JSON lines ---------------------------------------------------------------------


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _from_csv(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in BOOL_COLUMNS:
        return text == "true"
    if column in INT_COLUMNS:
        return int(text)
    if column in FLOAT_COLUMNS:
        return float(text)
    return text


def csv_lines(rows: Iterable[Row], header: bool = True) -> str:
    """Rows as CSV text (``true``/``false`` for flags, empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_text(row[column]) for column in COLUMNS])
    return buffer.getvalue()


def jsonl_lines(rows: Iterable[Row]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _read_csv(handle: IO[str]) -> Iterator[Row]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        return
    if tuple(header) != COLUMNS:
        raise ValueError("its columns are not the ones agegroup predict writes")
    for cells in reader:
        yield {column: _from_csv(column, text) for column, text in zip(COLUMNS, cells)}


def _read_jsonl(handle: IO[str]) -> Iterator[Row]:
    for line in handle:
        row = json.loads(line)
        if tuple(row) != COLUMNS:
            raise ValueError("its columns are not the ones agegroup predict writes")
        yield row


# --- Parquet (pyarrow, installed with the ``ray`` extra) --------------------------------------


def _pyarrow() -> Any:
    import pyarrow
    import pyarrow.parquet

    return pyarrow


def parquet_schema() -> Any:
    pa = _pyarrow()

    def kind(column: str) -> Any:
        if column in INT_COLUMNS:
            return pa.int32()
        if column in FLOAT_COLUMNS:
            return pa.float64()
        if column in BOOL_COLUMNS:
            return pa.bool_()
        return pa.string()

    return pa.schema([(column, kind(column)) for column in COLUMNS])


class ParquetRows:
    """Rows appended to a Parquet file, one row group per call to ``write``."""

    def __init__(self, path: Path) -> None:
        pa = _pyarrow()
        self._pa = pa
        self._schema = parquet_schema()
        self._writer = pa.parquet.ParquetWriter(str(path), self._schema)

    def write(self, rows: list[Row]) -> None:
        if rows:
            self._writer.write_table(self._pa.Table.from_pylist(rows, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of a file that ``agegroup predict`` wrote (any of ``FORMATS``)."""
    kind = output_format(path)
    if kind == ".parquet":
        table = _pyarrow().parquet.read_table(str(path))
        if tuple(table.column_names) != COLUMNS:
            raise ValueError("its columns are not the ones agegroup predict writes")
        yield from table.to_pylist()
        return
    with path.open(encoding="utf-8", newline="") as handle:
        yield from _read_csv(handle) if kind == ".csv" else _read_jsonl(handle)
