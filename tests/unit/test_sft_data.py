"""SFT/DPO rows: where targets come from, chat rows, errors, packing (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openrft.config import SFT_COMPLETION_BUILTINS, RunConfig, load_config
from openrft.data.targets import (
    COMPLETION_BUILTINS,
    implied_completion_fn,
    pack,
    preference_texts,
    sft_rows,
    strip_prefix,
)
from openrft.errors import ConfigError, DataError
from openrft.tasks import countdown


def cfg(**kw: object) -> RunConfig:
    return RunConfig.model_validate({"method": "sft", "data": {"train": "x.jsonl"}, **kw})


def test_builtin_names_match_the_config() -> None:
    assert tuple(COMPLETION_BUILTINS) == SFT_COMPLETION_BUILTINS


def test_completion_column_text_and_assistant_message() -> None:
    rows = [
        {"prompt": "a", "completion": "A"},
        {"prompt": "b", "completion": [{"role": "assistant", "content": "B"}]},
    ]
    out = sft_rows(cfg(), rows, "d.jsonl", [1, 2])
    assert [r.completion for r in out] == ["A", "B"]
    assert out[0].row == rows[0] and out[1].line == 2


def test_messages_row_splits_prompt_and_target() -> None:
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    (r,) = sft_rows(cfg(), [{"messages": chat, "id": 7}], "d.jsonl", [1])
    assert r.completion == "hello"
    assert r.row == {"id": 7, "prompt": chat[:2]}


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"prompt": "a"}, "no target completion"),
        ({"prompt": "a", "completion": ""}, "completion is empty"),
        ({"prompt": "a", "completion": 3}, "expected text or one assistant message"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]},
            "not an assistant",
        ),
        ({"messages": "hi"}, "at least two messages"),
    ],
)
def test_bad_rows_name_file_and_line(row: dict, needle: str) -> None:
    with pytest.raises(DataError) as err:
        sft_rows(cfg(), [{"prompt": "ok", "completion": "fine"}, row], "d.jsonl", [1, 3])
    assert str(err.value).startswith("d.jsonl:3")
    assert needle in str(err.value)


def test_rows_without_lines_name_the_row_number() -> None:
    with pytest.raises(DataError, match=r"^d.parquet: row 2: "):
        sft_rows(cfg(), [{"prompt": "a", "completion": "A"}, {"prompt": "b"}], "d.parquet", None)


def test_countdown_rewards_imply_the_solver_demonstrations() -> None:
    c = cfg(rewards=[{"name": "eq", "function": "countdown.equation"}])
    assert implied_completion_fn(c) == "countdown.demonstration"
    row = {"nums": [3, 4, 5], "target": 17}
    (r,) = sft_rows(c, [row], "d.jsonl", [1])
    assert r.completion == countdown.demonstration(row)
    assert countdown.equation_reward("", r.completion, row) == 1.0
    assert r.row == row  # the row itself is untouched: rewards see only the user's columns


def test_explicit_completion_fn_wins_over_the_column() -> None:
    c = cfg(sft={"completion_fn": "countdown.demonstration"})
    (r,) = sft_rows(c, [{"nums": [2, 3], "target": 6, "completion": "ignored"}], "d.jsonl", [1])
    assert r.completion.startswith("<think>") and "<answer>" in r.completion


def test_unsolvable_countdown_row_is_a_data_error() -> None:
    c = cfg(sft={"completion_fn": "countdown.demonstration"})
    with pytest.raises(DataError, match=r"d.jsonl:4: countdown.demonstration: .*no equation"):
        sft_rows(c, [{"nums": [1, 1], "target": 97}], "d.jsonl", [4])


def test_user_completion_fn_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "targets.py").write_text("def write(row):\n    return row['q'][::-1]\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: sft\ndata: {train: x.jsonl}\nsft: {completion_fn: targets.py:write}\n")
    c = load_config(cfg_file)
    assert c.sft.completion_fn == f"{(tmp_path / 'targets.py').resolve()}:write"
    (r,) = sft_rows(c, [{"q": "abc"}], "d.jsonl", [1])
    assert r.completion == "cba"


def test_user_completion_fn_that_cannot_load(tmp_path: Path) -> None:
    c = cfg(sft={"completion_fn": f"{tmp_path / 'missing.py'}:write"})
    with pytest.raises(ConfigError, match=r"sft\.completion_fn .* cannot be loaded"):
        sft_rows(c, [{"q": "abc"}], "d.jsonl", [1])


def test_unknown_builtin_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"did you mean 'countdown\.demonstration'"):
        cfg(sft={"completion_fn": "countdown.demo"})


def test_strip_prefix() -> None:
    assert strip_prefix("<think>\nx</think>", "<think>") == "\nx</think>"
    assert strip_prefix("no prefix", "<think>") == "no prefix"
    assert strip_prefix("<think>x", "") == "<think>x"


def test_preference_texts_and_errors() -> None:
    rows = [{"prompt": "p", "chosen": "good", "rejected": [{"role": "assistant", "content": "bad"}]}]
    assert preference_texts(rows, "p.jsonl", [1]) == [("good", "bad")]
    with pytest.raises(DataError, match=r"p.jsonl:2: the row has no 'rejected' column"):
        preference_texts([*rows, {"prompt": "q", "chosen": "x"}], "p.jsonl", [1, 2])


# -- packing ---------------------------------------------------------------------------------------


def test_pack_first_fit_decreasing() -> None:
    # sorted by length: 7 (i1), 5 (i3), 4 (i0), 3 (i2), 2 (i4); capacity 10
    # 7 -> bin A (3 left); 5 -> bin B (5 left); 4 -> B (1 left); 3 -> A (0 left); 2 -> bin C
    assert pack([4, 7, 3, 5, 2], 10) == [[1, 2], [0, 3], [4]]


def test_pack_keeps_every_index_once_and_respects_capacity() -> None:
    lengths = [5, 1, 9, 3, 3, 8, 2, 2, 6]
    bins = pack(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 39 tokens need at least 4 bins of 10


def test_pack_refuses_a_sequence_longer_than_capacity() -> None:
    with pytest.raises(ValueError, match="sequence 1 has 11 tokens"):
        pack([3, 11], 10)
