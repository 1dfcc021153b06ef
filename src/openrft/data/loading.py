"""Read dataset files into plain Python rows, with errors that name file, line and column.

Supported inputs (by extension, case-insensitive):

- ``.csv``: UTF-8 (a BOM is allowed), first row is the header. Cell values are converted:
  an empty cell becomes ``None``; a cell that is a JSON array or object (starts with ``[``
  and ends with ``]``, or ``{`` ... ``}``) is decoded with :mod:`json`; an integer such as
  ``42`` or ``-3`` becomes ``int`` and a decimal such as ``2.5`` or ``1e-3`` becomes
  ``float``, except that numbers with leading zeros (``007``) stay text, to keep ids and zip
  codes; anything else stays a string.
- ``.jsonl`` / ``.ndjson``: one JSON object per line; blank lines are ignored.
- ``.json``: one JSON list of objects.
- ``.parquet``: read with pyarrow.
- a directory written by Hugging Face ``datasets`` ``Dataset.save_to_disk``: its
  ``state.json`` lists Arrow IPC stream files under ``_data_files``; they are read with
  pyarrow, so the ``datasets`` package is not needed. For a ``DatasetDict`` directory
  (``dataset_dict.json``) the ``train`` split is read, or the only split if there is one.

Line numbers: :func:`read_rows` returns a :class:`LoadedRows` whose ``lines[i]`` is the
1-based physical line where row ``i`` starts in the file (blank JSONL lines and CSV cells
spanning several lines are accounted for). Rows themselves carry nothing extra, so what
reaches reward functions is exactly the user's columns. Formats without lines (parquet,
Arrow directories) have ``lines = None`` and errors name the 1-based row number instead.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrft.errors import DataError

Row = dict[str, Any]

SUPPORTED_FORMATS: tuple[str, ...] = (
    ".csv",
    ".jsonl",
    ".ndjson",
    ".json",
    ".parquet",
    "a Hugging Face `save_to_disk` directory",
)

_BOM = b"\xef\xbb\xbf"
MAX_NESTING = 64
"""Deepest nesting of lists and objects accepted in a row (the row itself is level 1)."""
_INT_RE = re.compile(r"[+-]?(0|[1-9]\d*)")
_FLOAT_RE = re.compile(r"[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class LoadedRows:
    """Rows of one dataset file plus where each row starts in it.

    Attributes:
        rows: one plain dict per row (lists, dicts, str, int, float, bool, None values).
        source: the path as the user gave it; used in every error message.
        lines: ``lines[i]`` is the 1-based physical line where row ``i`` starts, or ``None``
            for formats without lines (parquet, Arrow directories).
    """

    rows: list[Row]
    source: str
    lines: list[int] | None

    def line_of(self, index: int) -> int | None:
        """The 1-based line where row ``index`` starts, or None if the format has no lines."""
        return None if self.lines is None else self.lines[index]


def read_rows(path: str | Path) -> LoadedRows:
    """Read a dataset file or directory into rows and their line numbers.

    Raises:
        DataError: the path is missing, has an unknown extension, holds no rows, is not
            UTF-8, or is malformed; the message names the file, line and column.
    """
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise DataError(
            "file not found", file=source, hint=f"check the path; relative paths start at {Path.cwd()}"
        )
    if p.is_dir():
        rows, lines = _read_hf_dir(p, source), None
    else:
        suffix = p.suffix.lower()
        if suffix == ".csv":
            rows, lines = _unzip(_read_csv(_read_text(p, source), source))
        elif suffix in (".jsonl", ".ndjson"):
            rows, lines = _unzip(_read_jsonl(_read_text(p, source), source))
        elif suffix == ".json":
            rows, lines = _unzip(_read_json_list(_read_text(p, source), source))
        elif suffix == ".parquet":
            rows, lines = _read_parquet(p, source), None
        else:
            raise DataError(
                f"unknown file extension {p.suffix or '(none)'!r}",
                file=source,
                hint=f"save the data as one of: {', '.join(SUPPORTED_FORMATS)}",
            )
    if not rows:
        raise DataError(
            "the dataset has no rows", file=source, hint="add at least one row (one prompt per row)"
        )
    for index, row in enumerate(rows):
        if nesting_exceeds(row, MAX_NESTING):
            line = None if lines is None else lines[index]
            raise _too_deep(source, line, None if line is not None else f"row {index + 1}")
    return LoadedRows(rows=rows, source=source, lines=lines)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether lists/dicts in `value` nest deeper than `limit` levels (`value` itself is level 1).

    Iterative, so it works on values too deep for recursive code (json.dumps, copy.deepcopy).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _too_deep(source: str, line: int | None, where: str | None = None) -> DataError:
    return DataError(
        f"{where + ': ' if where else ''}lists/objects are nested more than {MAX_NESTING} levels deep",
        file=source,
        line=line,
        hint="flatten the data; rows hold prompts and answers, not deep structures",
    )


def load_rows(path: str | Path) -> list[Row]:
    """Read a dataset file or directory into a list of plain dicts (see :func:`read_rows`)."""
    return read_rows(path).rows


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's raw bytes.

    For a directory: a hash over every file below it, in sorted order of relative POSIX
    path, each contributing its path, its byte length and its bytes, so renaming,
    moving or editing any file changes the hash and nothing else does.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=str(path), hint="check the path")
    if p.is_file():
        return _hash_file(p, hashlib.sha256()).hexdigest()
    digest = hashlib.sha256()
    files = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
    for f in files:
        name = f.relative_to(p).as_posix().encode("utf-8")
        digest.update(len(name).to_bytes(8, "big") + name + f.stat().st_size.to_bytes(8, "big"))
        _hash_file(f, digest)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- helpers


def _hash_file(path: Path, digest: Any) -> Any:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def _unzip(pairs: Iterator[tuple[int, Row]]) -> tuple[list[Row], list[int]]:
    rows: list[Row] = []
    lines: list[int] = []
    for line, row in pairs:
        lines.append(line)
        rows.append(row)
    return rows, lines


def _read_text(path: Path, source: str) -> str:
    """Decode a file as UTF-8 (BOM allowed); undecodable bytes name their line and offset."""
    data = path.read_bytes()
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        col = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise DataError(
            f"byte 0x{data[offset]:02x} at byte offset {offset} is not valid UTF-8",
            file=source,
            line=line,
            column=col,
            hint="re-save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`)",
        ) from None


def _physical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) split on \\n only (JSON strings may hold U+2028)."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _json_error(err: json.JSONDecodeError, source: str, line: int, what: str, hint: str) -> DataError:
    return DataError(f"{what}: {err.msg}", file=source, line=line, column=err.colno, hint=hint)


def _read_jsonl(text: str, source: str) -> Iterator[tuple[int, Row]]:
    for number, line in _physical_lines(text):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise _json_error(
                err, source, number, "malformed JSON", "each line must be one complete JSON object"
            ) from None
        except RecursionError:
            raise _too_deep(source, number) from None
        if not isinstance(value, dict):
            raise DataError(
                f"line is a JSON {_json_type(value)}, expected an object",
                file=source,
                line=number,
                column=1,
                hint='write one object per line, e.g. {"prompt": "..."}',
            )
        yield number, value


def _read_json_list(text: str, source: str) -> Iterator[tuple[int, Row]]:
    """Parse ``[ {...}, {...} ]`` element by element so each row knows its start line."""
    decoder = json.JSONDecoder()
    pos, line, counted = 0, 1, 0

    def line_at(index: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, index)
        counted = index
        return line

    def skip_ws(index: int) -> int:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        return index

    def fail(index: int, what: str, hint: str) -> DataError:
        row_line = line_at(index)
        col = index - (text.rfind("\n", 0, index) + 1) + 1
        return DataError(what, file=source, line=row_line, column=col, hint=hint)

    pos = skip_ws(pos)
    if pos >= len(text) or text[pos] != "[":
        if pos < len(text) and text[pos] == "{":
            raise fail(pos, "the file holds a JSON object, expected a list of objects", _JSON_HINT)
        if pos >= len(text):
            return
        raise fail(pos, "expected a JSON list of objects", _JSON_HINT)
    pos = skip_ws(pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise _json_error(err, source, err.lineno, "malformed JSON", _JSON_HINT) from None
        except RecursionError:
            raise _too_deep(source, line_at(pos)) from None
        if not isinstance(value, dict):
            raise fail(pos, f"list item is a JSON {_json_type(value)}, expected an object", _JSON_HINT)
        yield line_at(pos), value
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == "]":
            break
        if pos >= len(text) or text[pos] != ",":
            raise fail(pos, "expected ',' or ']' after a list item", _JSON_HINT)
        pos = skip_ws(pos + 1)
    pos = skip_ws(pos + 1)
    if pos < len(text):
        raise fail(pos, "extra data after the JSON list", _JSON_HINT)


_JSON_HINT = "a .json file must hold one list of objects; for one object per line use .jsonl"


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", type(None): "null", int: "number"}
    return names.get(type(value), "number")


def _read_csv(text: str, source: str) -> Iterator[tuple[int, Row]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    last_line = 0
    try:
        for record in reader:
            start, last_line = last_line + 1, reader.line_num
            if not record:  # blank line
                continue
            if header is None:
                header = _csv_header(record, source, start)
                continue
            if len(record) != len(header):
                raise DataError(
                    f"row has {len(record)} fields but the header has {len(header)}",
                    file=source,
                    line=start,
                    hint='put quotes around cells that contain commas, e.g. "a, b"',
                )
            yield (
                start,
                {
                    name: _csv_cell(cell, source, start, name)
                    for name, cell in zip(header, record, strict=True)
                },
            )
    except csv.Error as err:
        raise DataError(
            f"malformed CSV: {err}",
            file=source,
            line=last_line + 1,
            hint='double any quote inside a quoted cell ("") and close every opened quote',
        ) from None


def _csv_header(record: list[str], source: str, line: int) -> list[str]:
    header = [name.strip() for name in record]
    for index, name in enumerate(header, start=1):
        if not name:
            raise DataError(
                f"header cell {index} is empty", file=source, line=line, hint="give every column a name"
            )
        if header.index(name) != index - 1:
            raise DataError(
                f"column {name!r} appears twice in the header",
                file=source,
                line=line,
                hint="give every column a distinct name",
            )
    return header


def _csv_cell(cell: str, source: str, line: int, column: str) -> Any:
    """Convert one CSV cell: empty -> None, JSON list/object -> decoded, number -> int/float."""
    if cell == "":
        return None
    stripped = cell.strip()
    if (stripped.startswith("[") and stripped.endswith("]")) or (
        stripped.startswith("{") and stripped.endswith("}")
    ):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as err:
            raise DataError(
                f"cell looks like JSON but does not parse: {err.msg} (character {err.pos + 1})",
                file=source,
                line=line,
                column=column,
                hint='fix the JSON (strings need double quotes, e.g. ["a", "b"])',
            ) from None
        except RecursionError:
            raise _too_deep(source, line, f"column {column!r}") from None
    if _INT_RE.fullmatch(stripped):
        return int(stripped)
    if _FLOAT_RE.fullmatch(stripped):
        return float(stripped)
    return cell


def _read_parquet(path: Path, source: str) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"cannot read parquet: {err}".replace("\n", " "),
            file=source,
            hint="re-export the file as parquet (e.g. pandas `df.to_parquet(path)`)",
        ) from None


def _read_hf_dir(path: Path, source: str) -> list[Row]:
    """Read a ``datasets`` ``save_to_disk`` directory (Dataset or DatasetDict) with pyarrow."""
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        splits = _read_json_file(dict_file, source).get("splits") or []
        if "train" in splits:
            split = "train"
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise DataError(
                f"the DatasetDict has splits {splits} and none is 'train'",
                file=source,
                hint=f"point to one split's folder, e.g. {path / str(splits[0]) if splits else path}",
            )
        return _read_hf_dir(path / split, f"{source}/{split}")
    state_file = path / "state.json"
    if not state_file.is_file():
        raise DataError(
            "directory is not a Hugging Face `save_to_disk` folder (no state.json)",
            file=source,
            hint=f"point to a data file ({', '.join(SUPPORTED_FORMATS[:-1])}) or a `save_to_disk` folder",
        )
    files = _read_json_file(state_file, source).get("_data_files")
    if not isinstance(files, list) or not files:
        raise DataError(
            "state.json lists no `_data_files`",
            file=f"{source}/state.json",
            hint="re-save the dataset with `Dataset.save_to_disk`",
        )
    rows: list[Row] = []
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise DataError(
                f"bad `_data_files` entry {entry!r}",
                file=f"{source}/state.json",
                hint="re-save the dataset with `Dataset.save_to_disk`",
            )
        rows.extend(_read_arrow(path / name, f"{source}/{name}"))
    return rows


def _read_json_file(path: Path, source: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(
            f"{path.name} is not valid JSON: {err}",
            file=source,
            hint="re-save the dataset with `save_to_disk`",
        ) from None
    if not isinstance(value, dict):
        raise DataError(
            f"{path.name} must hold a JSON object",
            file=source,
            hint="re-save the dataset with `save_to_disk`",
        )
    return value


def _read_arrow(path: Path, source: str) -> list[Row]:
    """Read an Arrow IPC stream file (what ``datasets`` writes), or an IPC file as a fallback."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(
            "file listed in state.json is missing", file=source, hint="copy the whole dataset folder"
        )
    try:
        with pa.memory_map(str(path)) as source_file:
            return pa.ipc.open_stream(source_file).read_all().to_pylist()
    except pa.ArrowInvalid:
        pass
    try:
        with pa.memory_map(str(path)) as source_file:
            return pa.ipc.open_file(source_file).read_all().to_pylist()
    except pa.ArrowException as err:
        raise DataError(
            f"cannot read Arrow data: {err}".replace("\n", " "),
            file=source,
            hint="re-save the dataset with `Dataset.save_to_disk`",
        ) from None
