"""Loading dataset files: every format, and errors that name file, line and column."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openrft.data import file_sha256, load_rows, read_rows, split_rows, take
from openrft.errors import DataError

ROWS = [
    {"nums": [95, 21, 3], "target": 71, "note": "first"},
    {"nums": [1, 2], "target": 3, "note": "second"},
]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def save_hf_dir(path: Path, rows: list[dict], n_files: int = 1) -> Path:
    """Write a folder laid out like `datasets.Dataset.save_to_disk` (Arrow IPC stream files)."""
    path.mkdir()
    table = pa.Table.from_pylist(rows)
    names = [f"data-{i:05d}-of-{n_files:05d}.arrow" for i in range(n_files)]
    per_file = -(-len(rows) // n_files)
    for i, name in enumerate(names):
        part = table.slice(i * per_file, per_file)
        with pa.OSFile(str(path / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
    state = {
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (path / "state.json").write_text(json.dumps(state))
    (path / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_rows(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    return message


# ---------------------------------------------------------------- formats


def test_jsonl_loads_and_skips_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps(ROWS[0]), "", "   ", json.dumps(ROWS[1]), ""]
    path = write(tmp_path / "d.jsonl", "\n".join(lines))
    data = read_rows(path)
    assert data.rows == ROWS
    assert data.lines == [1, 4]
    assert data.line_of(1) == 4
    assert data.source == str(path)


def test_jsonl_with_crlf_and_bom(tmp_path: Path) -> None:
    text = "\r\n".join(json.dumps(r) for r in ROWS)
    path = write(tmp_path / "d.jsonl", b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_rows(path) == ROWS


def test_json_list_loads_with_start_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps(ROWS, indent=2))
    data = read_rows(path)
    assert data.rows == ROWS
    assert data.lines is not None
    assert data.lines[0] == 2
    text_lines = path.read_text().split("\n")
    assert text_lines[data.lines[1] - 1].strip() == "{"
    assert '"nums"' in text_lines[data.lines[1]]


def test_csv_converts_cells(tmp_path: Path) -> None:
    text = (
        "nums,target,ratio,note,empty,zip,meta\n"
        '"[95, 21, 3]",71,0.5,hello,,007,"{""k"": 1}"\n'
        '"[1, 2]",-3,1e-3,"multi\nline",,10,[not json\n'
    )
    data = read_rows(write(tmp_path / "d.csv", text))
    assert data.rows == [
        {
            "nums": [95, 21, 3],
            "target": 71,
            "ratio": 0.5,
            "note": "hello",
            "empty": None,
            "zip": "007",
            "meta": {"k": 1},
        },
        {
            "nums": [1, 2],
            "target": -3,
            "ratio": 0.001,
            "note": "multi\nline",
            "empty": None,
            "zip": 10,
            "meta": "[not json",
        },
    ]
    assert isinstance(data.rows[0]["target"], int)
    assert data.lines == [2, 3]


def test_csv_line_numbers_after_multiline_cell_and_blank_line(tmp_path: Path) -> None:
    text = 'a,b\n1,"x\ny\nz"\n\n2,w\n'
    data = read_rows(write(tmp_path / "d.csv", text))
    assert [r["a"] for r in data.rows] == [1, 2]
    assert data.lines == [2, 6]


def test_parquet_loads_as_python_lists(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    data = read_rows(path)
    assert data.rows == ROWS
    assert type(data.rows[0]["nums"]) is list
    assert data.lines is None and data.line_of(0) is None


def test_hf_save_to_disk_directory_loads(tmp_path: Path) -> None:
    rows = [*ROWS, {"nums": [4], "target": 4, "note": "third"}]
    path = save_hf_dir(tmp_path / "ds", rows, n_files=2)
    data = read_rows(path)
    assert data.rows == rows
    assert type(data.rows[0]["nums"]) is list
    assert data.lines is None


def test_hf_dataset_dict_directory_reads_train_split(tmp_path: Path) -> None:
    root = tmp_path / "dd"
    root.mkdir()
    save_hf_dir(root / "train", ROWS[:1])
    save_hf_dir(root / "test", ROWS[1:])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert load_rows(root) == ROWS[:1]


def test_hf_directory_via_datasets_package_when_installed(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "real"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    assert load_rows(path) == ROWS


def test_file_sha256_of_file_and_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"a": 1}\n')
    assert file_sha256(path) == hashlib.sha256(b'{"a": 1}\n').hexdigest()
    one = save_hf_dir(tmp_path / "one", ROWS)
    two = save_hf_dir(tmp_path / "two", ROWS)
    assert file_sha256(one) == file_sha256(two)
    (two / "state.json").write_text((two / "state.json").read_text() + " ")
    assert file_sha256(one) != file_sha256(two)
    (one / "dataset_info.json").rename(one / "other.json")
    assert file_sha256(one) != file_sha256(save_hf_dir(tmp_path / "three", ROWS))


def test_import_does_not_pull_torch() -> None:
    code = "import sys, openrft.data; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in error_of(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("name,text", [("e.jsonl", "\n\n"), ("e.csv", "a,b\n"), ("e.json", "[]")])
def test_empty_file(tmp_path: Path, name: str, text: str) -> None:
    assert "no rows" in error_of(write(tmp_path / name, text))


def test_undecodable_bytes_name_line_and_offset(tmp_path: Path) -> None:
    data = b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'
    message = error_of(write(tmp_path / "latin.jsonl", data))
    assert "latin.jsonl:2:16:" in message
    assert "offset 32" in message and "0xe9" in message
    assert "UTF-8" in message


def test_undecodable_csv(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "x.csv", b"a\nok\n\xff\n"))
    assert "x.csv:3:1" in message and "re-save" in message


def test_malformed_json_line_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"a": 1}\n{"a": 1,, "b": 2}\n')
    with pytest.raises(DataError) as info:
        load_rows(path)
    assert info.value.line == 2 and info.value.column == 9
    assert "bad.jsonl:2:9" in str(info.value)


def test_jsonl_line_not_an_object(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "arr.jsonl", '{"a": 1}\n\n[1, 2]\n'))
    assert "arr.jsonl:3:" in message and "JSON list, expected an object" in message


def test_json_file_errors(tmp_path: Path) -> None:
    assert "expected a list of objects" in error_of(write(tmp_path / "obj.json", '{"a": 1}'))
    message = error_of(write(tmp_path / "item.json", '[\n  {"a": 1},\n  "x"\n]'))
    assert "item.json:3:3" in message and "string" in message
    message = error_of(write(tmp_path / "lines.json", '{"a": 1}\n{"a": 2}\n'))
    assert "lines.json:1:" in message
    message = error_of(write(tmp_path / "broken.json", '[\n {"a": 1},\n {"a" 2}\n]'))
    assert "broken.json:3:7" in message


def test_unknown_extension_lists_supported(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "d.txt", "hello"))
    assert "'.txt'" in message and ".jsonl" in message and ".parquet" in message


def test_csv_wrong_field_count_names_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "f.csv", 'a,b\n1,2\n"x\ny",2\n3,4,5\n'))
    assert "f.csv:5:" in message and "3 fields" in message and "header has 2" in message


def test_csv_bad_json_cell_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_rows(write(tmp_path / "j.csv", 'nums,t\n"[1, 2]",3\n"[1, \'x\']",4\n'))
    assert info.value.line == 3 and info.value.column == "nums"
    assert "j.csv:3: column 'nums'" in str(info.value)


def test_csv_duplicate_header(tmp_path: Path) -> None:
    assert "appears twice" in error_of(write(tmp_path / "h.csv", "a,a\n1,2\n"))


def test_not_a_dataset_directory(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    assert "state.json" in error_of(folder)


def test_corrupt_parquet(tmp_path: Path) -> None:
    assert "parquet" in error_of(write(tmp_path / "c.parquet", b"not parquet at all"))


DEEP = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("deep.json", '[{"a": 1}, {"a": ' + DEEP + "}]", "deep.json:1:"),
        ("deep.jsonl", '{"a": 1}\n{"a": ' + DEEP + "}\n", "deep.jsonl:2:"),
        ("deep.csv", "a\n" + "[" * 50_000 + "]" * 50_000 + "\n", "deep.csv:2: column 'a':"),
        ("hundred.jsonl", '{"a": ' + "[" * 100 + "]" * 100 + "}\n", "hundred.jsonl:1:"),
    ],
)
def test_values_nested_too_deeply_are_a_data_error_naming_the_line(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    with pytest.raises(DataError, match="nested more than 64 levels") as err:
        read_rows(write(tmp_path / name, text))
    assert str(err.value).startswith(str(tmp_path / where))


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    value = "[" * 63 + "1" + "]" * 63  # the row is level 1, so its value may nest 63 levels
    rows = load_rows(write(tmp_path / "ok.jsonl", '{"a": ' + value + "}\n"))
    assert json.dumps(rows[0]["a"]).count("[") == 63


# ---------------------------------------------------------------- splits


def test_split_is_deterministic_and_disjoint() -> None:
    rows = [{"i": i} for i in range(20)]
    train, evals = split_rows(rows, eval_fraction=0.25, seed=3)
    assert (train, evals) == split_rows(rows, eval_fraction=0.25, seed=3)
    assert len(evals) == 5 and len(train) == 15
    assert sorted(r["i"] for r in train + evals) == list(range(20))
    assert [r["i"] for r in evals] == sorted(r["i"] for r in evals)  # file order kept
    other = [split_rows(rows, eval_fraction=0.25, seed=s)[1] for s in range(4, 8)]
    assert any(e != evals for e in other)


def test_split_edge_cases() -> None:
    rows = [{"i": i} for i in range(3)]
    assert split_rows(rows, eval_fraction=0.0, seed=0) == (rows, [])
    train, evals = split_rows(rows, eval_fraction=0.01, seed=0)
    assert len(evals) == 1 and len(train) == 2
    assert len(split_rows(rows, eval_fraction=0.99, seed=0)[0]) == 1
    assert split_rows(rows[:1], eval_fraction=0.5, seed=0) == (rows[:1], [])
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eval_fraction"):
            split_rows(rows, eval_fraction=bad, seed=0)


def test_take_is_deterministic_without_replacement() -> None:
    rows = [{"i": i} for i in range(10)]
    picked = take(rows, 4, seed=1)
    assert picked == take(rows, 4, seed=1)
    assert len({r["i"] for r in picked}) == 4
    assert all(r in take(rows, 6, seed=1) for r in picked)  # a larger n only adds rows
    assert take(rows, 10, seed=5) == rows
    with pytest.raises(ValueError, match="cannot take 11 rows from a dataset of 10"):
        take(rows, 11, seed=0)
