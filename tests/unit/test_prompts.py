"""Rendering rows into chat messages and prompt text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openrft.data import (
    read_rows,
    render_messages,
    render_prompt_text,
    required_columns,
    validate_rows,
)
from openrft.errors import ConfigError, DataError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATE = "Use {nums} to make {target}."


def tiny_tokenizer(chat_template: str | None = CHATML) -> Any:
    """A real transformers tokenizer over a word-level vocabulary, built in-process."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "hello": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------- required_columns


@pytest.mark.parametrize(
    "template,expected",
    [
        ("no fields", []),
        ("{a} and {b} and {a}", ["a", "b"]),
        ("{a[0]} {b.c} {d!r:>10}", ["a", "b", "d"]),
        ("{{literal}} {x}", ["x"]),
        ("{value:{width}}", ["value", "width"]),
    ],
)
def test_required_columns(template: str, expected: list[str]) -> None:
    assert required_columns(template) == expected


@pytest.mark.parametrize("template", ["{}", "{0}", "open {a", "close }"])
def test_required_columns_rejects_bad_templates(template: str) -> None:
    with pytest.raises(ConfigError, match="prompt_template"):
        required_columns(template)


# ---------------------------------------------------------------- render_messages


def test_template_renders_list_columns_like_python() -> None:
    row = {"nums": [95, 21, 3], "target": 71, "extra": "unused"}
    assert render_messages(row, template=TEMPLATE, system_prompt=None) == [
        {"role": "user", "content": "Use [95, 21, 3] to make 71."}
    ]


def test_template_from_csv_list_column(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('nums,target\n"[95, 21, 3]",71\n')
    row = read_rows(path).rows[0]
    messages = render_messages(row, template=TEMPLATE, system_prompt="Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Use [95, 21, 3] to make 71."},
    ]


def test_template_index_and_attribute_fields() -> None:
    row = {"nums": [4, 5], "meta": {"k": "v"}}
    out = render_messages(row, template="{nums[1]} {meta[k]}", system_prompt=None)
    assert out[-1]["content"] == "5 v"


def test_text_prompt_with_and_without_system_prompt() -> None:
    row = {"prompt": "What is 2+2?", "answer": 4}
    assert render_messages(row, template=None, system_prompt=None) == [
        {"role": "user", "content": "What is 2+2?"}
    ]
    assert render_messages(row, template=None, system_prompt="") == [
        {"role": "user", "content": "What is 2+2?"}
    ]
    assert render_messages(row, template=None, system_prompt="Think.")[0] == {
        "role": "system",
        "content": "Think.",
    }


def test_chat_message_prompt_used_as_is() -> None:
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
    ]
    row = {"prompt": chat}
    assert render_messages(row, template=None, system_prompt=None) == chat
    with_system = render_messages(row, template=None, system_prompt="Be brief.")
    assert with_system == [{"role": "system", "content": "Be brief."}, *chat]
    with_system[1]["content"] = "changed"
    assert chat[0]["content"] == "Hi"  # the row is never modified


def test_chat_prompt_keeps_its_own_system_message() -> None:
    chat = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Q"}]
    assert render_messages({"prompt": chat}, template=None, system_prompt="Other.") == chat


# ---------------------------------------------------------------- errors


def data_error(row: dict, template: str | None = None, **kw: Any) -> DataError:
    with pytest.raises(DataError) as info:
        render_messages(row, template=template, system_prompt=None, source="rows.jsonl", line=7, **kw)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("rows.jsonl:7")
    return info.value


def test_missing_template_column_lists_available_columns() -> None:
    err = data_error({"nums": [1], "goal": 3}, TEMPLATE)
    assert err.column == "target"
    text = str(err)
    assert "rows.jsonl:7: column 'target'" in text
    assert "columns: nums, goal" in text and "fix the template or add the column" in text


def test_empty_template_column() -> None:
    err = data_error({"nums": [1], "target": None}, TEMPLATE)
    assert err.column == "target" and "empty" in str(err)


def test_template_index_out_of_range() -> None:
    assert "IndexError" in str(data_error({"nums": [1]}, "{nums[3]}"))


def test_missing_prompt_column_suggests_template() -> None:
    text = str(data_error({"question": "x"}))
    assert "no 'prompt' column" in text and "prompt_template" in text and "question" in text


@pytest.mark.parametrize(
    "prompt,needle",
    [
        (42, "'prompt' is of type int"),
        (None, "prompt is empty"),
        ({"role": "user", "content": "x"}, "'prompt' is of type dict"),
        ([{"role": "user"}], "message 0 is not"),
        (["just text"], "message 0 is not"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "message 1 has role 'tool'"),
        ([{"role": "user", "content": 5}], "content of type int"),
        ([], "empty list"),
        ("   ", "prompt is empty"),
    ],
)
def test_bad_prompt_values(prompt: object, needle: str) -> None:
    err = data_error({"prompt": prompt})
    assert err.column == "prompt"
    assert "column 'prompt'" in str(err) and needle in str(err)


def test_row_number_named_when_there_is_no_line() -> None:
    with pytest.raises(DataError, match=r"^d\.parquet: row 3: the row has no 'prompt' column"):
        render_messages({"q": 1}, template=None, system_prompt=None, source="d.parquet", row_number=3)


# ---------------------------------------------------------------- validate_rows


def test_validate_rows_names_line_of_first_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"question": "c"}\n{"prompt": 1}\n')
    data = read_rows(path)
    with pytest.raises(DataError) as info:
        validate_rows(data.rows, template=None, system_prompt=None, source=data.source, lines=data.lines)
    assert info.value.line == 4
    assert f"{path}:4:" in str(info.value)


def test_validate_rows_csv_lines_and_template(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('nums,target\n"[1, 2]",3\n"[4]",\n')
    data = read_rows(path)
    with pytest.raises(DataError, match=r"d\.csv:3: column 'target'"):
        validate_rows(data.rows, template=TEMPLATE, system_prompt=None, source=data.source, lines=data.lines)
    validate_rows(data.rows[:1], template=TEMPLATE, system_prompt=None, source=data.source)


def test_validate_rows_reports_bad_template_before_rows() -> None:
    with pytest.raises(ConfigError):
        validate_rows([{"a": 1}], template="{a", system_prompt=None)


def test_validate_rows_without_lines_names_row() -> None:
    rows = [{"prompt": "ok"}, {"prompt": "ok"}, {"prompt": None}]
    with pytest.raises(DataError, match=r"^x\.parquet: column 'prompt': row 3: the prompt is empty"):
        validate_rows(rows, template=None, system_prompt=None, source="x.parquet")


# ---------------------------------------------------------------- render_prompt_text


def test_render_prompt_text_applies_chat_template_and_prefix() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    text = render_prompt_text(tiny_tokenizer(), messages, assistant_prefix="<think>")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\n<think>"
    )


def test_render_prompt_text_without_chat_template_falls_back() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "V"},
    ]
    text = render_prompt_text(tiny_tokenizer(chat_template=None), messages)
    assert text == "S\n\nU\n\nassistant: A\n\nV\n\nassistant: "
    assert render_prompt_text(tiny_tokenizer(None), messages[1:2], "<think>") == "U\n\nassistant: <think>"


def test_render_prompt_text_template_rejecting_system_role() -> None:
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    with pytest.raises(ConfigError, match="System role not supported"):
        render_prompt_text(tiny_tokenizer(template), messages)
    assert render_prompt_text(tiny_tokenizer(template), messages[1:]) == "U"
