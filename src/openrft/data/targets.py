"""SFT and DPO rows: target completions, chat-message rows, and sequence packing.

Pure Python (no torch), so every data error is raised before a model is loaded.

Where an SFT row's target completion comes from, in order:

1. `sft.completion_fn`: a built-in writer (`countdown.demonstration`) or the user's
   `package.module:function` / `path/file.py:function`, called with the row;
2. the row's `completion` column: text, or a list holding one assistant message;
3. a `messages` column (a chat): the last message is the assistant's target, the ones before
   it are the prompt;
4. when the config's rewards are a built-in task's (`countdown.*`), that task's writer.

A target is the FULL assistant message, as reward functions see completions: when it starts
with `data.assistant_prefix` (e.g. "<think>"), the prefix is dropped before tokenizing, since
the prompt already ends with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from openrft.config import RunConfig
from openrft.errors import ConfigError, DataError

CompletionFn = Callable[[dict[str, Any]], str]


def _countdown_demonstration(row: dict[str, Any]) -> str:
    from openrft.tasks.countdown import demonstration

    return demonstration(row)


COMPLETION_BUILTINS: dict[str, CompletionFn] = {"countdown.demonstration": _countdown_demonstration}

# A built-in task's rewards -> that task's demonstration writer (rule 4 above).
TASK_WRITERS: dict[str, str] = {"countdown.": "countdown.demonstration"}


@dataclass(frozen=True)
class Where:
    """Where a row is, for error messages: its file and line (or 1-based row when lines are unknown)."""

    file: str
    line: int | None
    row: int

    def error(self, message: str, **kw: Any) -> DataError:
        prefix = "" if self.line is not None else f"row {self.row}: "
        return DataError(prefix + message, file=self.file, line=self.line, **kw)


def _where(source: str, lines: Sequence[int | None] | None, i: int) -> Where:
    return Where(source, lines[i] if lines is not None else None, i + 1)


@dataclass
class SFTRow:
    """A training row: `row` renders the prompt (and reaches nothing else); `completion` is the target."""

    row: dict[str, Any]
    completion: str
    line: int | None = None


def implied_completion_fn(cfg: RunConfig) -> str | None:
    """`sft.completion_fn`, or the writer of the built-in task the rewards belong to, or None."""
    if cfg.sft.completion_fn:
        return cfg.sft.completion_fn
    for spec in cfg.rewards:
        for prefix, writer in TASK_WRITERS.items():
            if ":" not in spec.function and spec.function.startswith(prefix):
                return writer
    return None


def load_completion_fn(name: str) -> CompletionFn:
    """A built-in writer, or the user's `module:function` / `file.py:function` (imported here)."""
    if name in COMPLETION_BUILTINS:
        return COMPLETION_BUILTINS[name]
    from openrft.rewards.loader import load_function

    try:
        return load_function(name)
    except Exception as err:  # an import error in user code is the user's to fix
        raise ConfigError(
            f"sft.completion_fn {name!r} cannot be loaded: {type(err).__name__}: {err}"
        ) from None


def _assistant_text(value: Any, column: str, where: Where) -> str:
    """Text of a completion cell: a string, or [{"role": "assistant", "content": ...}]."""
    if isinstance(value, str):
        if not value.strip():
            raise where.error("the completion is empty", column=column, hint="write it or drop the row")
        return value
    if (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], dict)
        and value[0].get("role") == "assistant"
        and isinstance(value[0].get("content"), str)
    ):
        return _assistant_text(value[0]["content"], column, where)
    raise where.error(
        f"{column!r} is of type {type(value).__name__}, expected text or one assistant message",
        column=column,
        hint='write it as text or as [{"role": "assistant", "content": "..."}]',
    )


def split_chat(row: dict[str, Any], where: Where) -> tuple[dict[str, Any], str]:
    """A `messages` row -> (the row with `prompt` = all messages but the last, the last's text)."""
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise where.error(
            "'messages' must be a list of at least two messages ending with the assistant's",
            column="messages",
            hint='e.g. [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]',
        )
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise where.error(
            "the last of 'messages' is not an assistant message (it is the target of SFT)",
            column="messages",
            hint="end each chat with the assistant's reply",
        )
    rest = {k: v for k, v in row.items() if k != "messages"}
    rest.setdefault("prompt", messages[:-1])
    return rest, _assistant_text(last.get("content"), "messages", where)


def sft_rows(
    cfg: RunConfig,
    rows: Sequence[dict[str, Any]],
    source: str,
    lines: Sequence[int | None] | None = None,
) -> list[SFTRow]:
    """Pair every row with its target completion (rules in the module docstring)."""
    fn_name = cfg.sft.completion_fn
    fn = load_completion_fn(fn_name) if fn_name else None
    fallback: CompletionFn | None = None
    out = []
    for i, row in enumerate(rows):
        where = _where(source, lines, i)
        prompt_row = dict(row)
        if fn is not None:
            text = _call_writer(fn, fn_name or "", row, where)
        elif "completion" in row:
            text = _assistant_text(row["completion"], "completion", where)
        elif "messages" in row:
            prompt_row, text = split_chat(row, where)
        else:
            implied = implied_completion_fn(cfg)
            if implied is None:
                raise where.error(
                    f"the row has no target completion (columns: {', '.join(map(str, row)) or 'none'})",
                    hint="add a 'completion' column or a 'messages' chat, or set sft.completion_fn",
                )
            fallback = fallback or load_completion_fn(implied)
            text = _call_writer(fallback, implied, row, where)
        out.append(SFTRow(prompt_row, text, where.line))
    return out


def _call_writer(fn: CompletionFn, name: str, row: dict[str, Any], where: Where) -> str:
    try:
        text = fn(row)
    except DataError as err:  # e.g. "<data>: column 'target': no equation of [1, 2] reaches 7"
        raise where.error(f"{name}: {str(err).removeprefix('<data>: ')}") from None
    except Exception as err:
        raise where.error(f"{name} failed on this row: {type(err).__name__}: {err}") from None
    if not isinstance(text, str) or not text.strip():
        raise where.error(f"{name} returned {type(text).__name__} {text!r:.40}, expected text")
    return text


def strip_prefix(completion: str, prefix: str) -> str:
    """The part of a full assistant message the model writes after the prompt's prefix."""
    return completion[len(prefix) :] if prefix and completion.startswith(prefix) else completion


def preference_texts(
    rows: Sequence[dict[str, Any]], source: str, lines: Sequence[int | None] | None = None
) -> list[tuple[str, str]]:
    """(chosen, rejected) texts of DPO rows; each cell is text or one assistant message."""
    out = []
    for i, row in enumerate(rows):
        where = _where(source, lines, i)
        pair = []
        for column in ("chosen", "rejected"):
            if column not in row:
                raise where.error(
                    f"the row has no {column!r} column (columns: {', '.join(map(str, row))})",
                    hint="DPO rows need 'prompt' (or a prompt_template), 'chosen' and 'rejected'",
                )
            pair.append(_assistant_text(row[column], column, where))
        out.append((pair[0], pair[1]))
    return out


# -- packing ---------------------------------------------------------------------------------------


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sequence indices into bins of total length <= capacity (first-fit decreasing).

    Deterministic: ties keep index order; each bin lists its indices in ascending order.
    Raises ValueError for a sequence longer than `capacity`.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sequence {i} has {n} tokens, more than the packing capacity {capacity}")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return [sorted(b) for b in bins]
