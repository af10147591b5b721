"""Read task records from local JSONL or Parquet files (air-gapped clusters, custom data).

Every error names the file, the 1-based line (JSONL) or row (Parquet) and the field, so a
user can open the file at the right place. Record ids are ``"{file stem}:{line or row}"`` (or
the value of an id field), stable as long as the file is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from memrl.errors import DataError
from memrl.types import Record

logger = logging.getLogger(__name__)

# (1-based line or row number, the row as a mapping)
NumberedRow = tuple[int, Mapping[str, Any]]

# Turns the raw answer text into the gold answer; returns None when the row has no usable
# answer (e.g. a solution without ``\boxed{}``). May raise RowError to reject the row.
AnswerParser = Callable[[str], str | None]


class RowError(ValueError):
    """A problem with one row; ``rows_to_records`` adds the file and row number."""


def read_rows(path: str | Path) -> tuple[list[NumberedRow], str]:
    """Read a ``.jsonl``/``.json`` (one JSON object a line) or ``.parquet`` file.

    Returns the rows with their 1-based line (JSONL) or row (Parquet) numbers, and the unit
    name ("line" or "row") to use in messages. Blank JSONL lines are skipped but counted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path), "row"
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path), "line"
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet")


def decode_line(raw: bytes, path: Path, number: int) -> str:
    """One line of a text file as UTF-8; bytes that are not raise DataError naming file,
    line and byte column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}, line {number}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at "
            f"column {exc.start + 1})",
            hint="re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


def _read_jsonl(path: Path) -> list[NumberedRow]:
    rows: list[NumberedRow] = []
    with path.open("rb") as handle:  # decoded per line, so a bad byte is reported at its line
        for number, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}, line {number}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append((number, row))
    return rows


def _read_parquet(path: Path) -> list[NumberedRow]:
    import pyarrow.parquet as pq  # only needed for Parquet input

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read Parquet file ({exc})") from exc
    return list(enumerate(table.to_pylist(), start=1))


def rows_to_records(
    rows: Iterable[NumberedRow],
    *,
    source: str,
    unit: str,
    make_record: Callable[[Mapping[str, Any], int], Record | None],
) -> list[Record]:
    """Convert numbered rows with ``make_record(row, number)``.

    ``make_record`` returns None to skip a row and raises RowError for a bad one; the error is
    re-raised as ValueError naming ``source`` and the ``unit`` number.
    """
    records: list[Record] = []
    skipped = 0
    for number, row in rows:
        try:
            record = make_record(row, number)
        except RowError as exc:
            raise DataError(f"{source}, {unit} {number}: {exc}") from None
        if record is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        logger.warning("%s: skipped %d %ss without a usable answer", source, skipped, unit)
    if not records:
        # Caught here, with the file named, rather than deep in whatever needs the first record.
        raise DataError(
            f"{source}: no usable records" + (f" ({skipped} {unit}s without a usable answer)"
                                             if skipped else f" (the file has no {unit}s)"),
            hint="point data.path / data.eval_path at a file with at least one record",
        )
    return records


def require_field(row: Mapping[str, Any], field: str) -> Any:
    """The value of ``field`` in ``row``; if absent, RowError naming it and the fields present."""
    if field not in row:
        raise RowError(f"missing field {field!r} (fields present: {sorted(row)})")
    return row[field]


def require_text(row: Mapping[str, Any], field: str) -> str:
    """A non-empty string field (surrounding whitespace kept)."""
    value = require_field(row, field)
    if not isinstance(value, str):
        raise RowError(f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"field {field!r} is empty")
    return value


def qa_record_maker(
    *,
    id_prefix: str,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    answer_parser: AnswerParser | None,
    keep_solution: bool,
) -> Callable[[Mapping[str, Any], int], Record | None]:
    """A ``make_record`` for question/answer rows.

    The answer field may hold a string or a number (AIME answers are integers). With
    ``answer_parser`` the raw answer text is parsed (a None result skips the row); with
    ``keep_solution`` the raw text is kept as ``meta["solution"]``.
    """

    def make_record(row: Mapping[str, Any], number: int) -> Record | None:
        question = require_text(row, question_field)
        raw = require_field(row, answer_field)
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise RowError(f"field {answer_field!r} must be a string or integer, got {raw!r}")
        raw = str(raw)
        answer = answer_parser(raw) if answer_parser else raw.strip()
        if answer is None:
            return None
        if not answer.strip():
            raise RowError(f"field {answer_field!r} gives an empty answer")
        if id_field is None:
            record_id = f"{id_prefix}:{number}"
        else:
            value = require_field(row, id_field)
            if value is None or str(value) == "":
                raise RowError(f"field {id_field!r} (the record id) is empty")
            record_id = str(value)
        meta = {"solution": raw} if keep_solution else {}
        return Record(id=record_id, question=question, answer=answer.strip(), meta=meta)

    return make_record


def check_unique_ids(records: list[Record], source: str) -> None:
    """Raise if two records share an id (ids key checkpoints and the memory)."""
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DataError(f"{source}: duplicate record id {record.id!r}")
        seen.add(record.id)


def load_records_file(
    path: str | Path,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    answer_parser: AnswerParser | None = None,
    keep_solution: bool = False,
) -> list[Record]:
    """Load question/answer records from a JSONL or Parquet file.

    ``answer_parser`` maps the raw answer text to the gold answer (e.g. the text after
    ``####`` for GSM8K-format files); a None result skips the row. Ids are
    ``"{stem}:{line or row}"`` or the ``id_field`` value. Raises FileNotFoundError for a missing
    file and ValueError naming file, line/row and field for a bad row or duplicate id.
    """
    path = Path(path)
    rows, unit = read_rows(path)
    records = rows_to_records(
        rows,
        source=str(path),
        unit=unit,
        make_record=qa_record_maker(
            id_prefix=path.stem,
            question_field=question_field,
            answer_field=answer_field,
            id_field=id_field,
            answer_parser=answer_parser,
            keep_solution=keep_solution,
        ),
    )
    check_unique_ids(records, str(path))
    return records
