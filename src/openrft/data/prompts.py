"""Turn dataset rows into chat messages, and chat messages into the prompt text a model sees.

A row becomes messages in one of two ways:

- with a ``prompt_template``: the template is a Python ``str.format`` string rendered with
  ``template.format_map(row)``; ``{nums}`` of a list column renders like a Python list
  (``[95, 21, 3]``); ``{{`` and ``}}`` are literal braces. The result is one user message.
- without one: the row's ``prompt`` column is either text (one user message) or a list of
  ``{"role", "content"}`` messages, used as given.

A non-empty ``system_prompt`` becomes a leading system message, except that a message list
that already has a system message keeps its own.

Errors are :class:`~openrft.errors.DataError` naming the file, the line (or, for formats
without lines, the 1-based row) and the column. A malformed template is a
:class:`~openrft.errors.ConfigError`, since the template comes from the config.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from openrft.errors import ConfigError, DataError

Message = dict[str, Any]

ROLES: tuple[str, ...] = ("system", "user", "assistant")
_BRACE_HINT = "write {{ and }} for literal braces"


def required_columns(template: str) -> list[str]:
    """Column names a ``str.format`` template uses, in first-use order, without repeats.

    ``{a}``, ``{a[0]}``, ``{a.b}`` and ``{a!r:>10}`` all need column ``a``; fields nested
    in a format spec (``{a:{width}}``) count too.

    Raises:
        ConfigError: the template is malformed or uses positional fields (``{}``, ``{0}``).
    """
    names: list[str] = []
    _collect_fields(template, names, depth=0)
    return names


def _collect_fields(template: str, names: list[str], depth: int) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(f"prompt_template is malformed: {err} ({_BRACE_HINT})") from None
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        base = field.split(".", 1)[0].split("[", 1)[0]
        if not base or base.isdigit():
            raise ConfigError(
                f"prompt_template has a positional field {{{field}}}; "
                f"name a column instead, e.g. {{prompt}} ({_BRACE_HINT})"
            )
        if base not in names:
            names.append(base)
        if spec and depth < 2:
            _collect_fields(spec, names, depth + 1)


def _where(line: int | None, row: int | None) -> tuple[int | None, str]:
    """Line for DataError, and a 'row N: ' prefix when there is no line to give."""
    if line is None and row is not None:
        return None, f"row {row}: "
    return line, ""


def render_messages(
    row: Mapping[str, Any],
    *,
    template: str | None,
    system_prompt: str | None,
    source: str = "<data>",
    line: int | None = None,
    row_number: int | None = None,
) -> list[Message]:
    """Build the chat messages for one row.

    Args:
        row: the dataset row (column name -> value).
        template: a ``str.format`` template over the columns, or None to use the ``prompt`` column.
        system_prompt: text of a leading system message; None or "" for none.
        source: file name for error messages.
        line: 1-based line of the row in ``source`` for error messages, if known.
        row_number: 1-based row number, named in errors when ``line`` is None (parquet).

    Returns:
        ``[{"role": "system", ...}?, ..., {"role": "user", ...}]`` as new dicts (the row is not changed).

    Raises:
        DataError: a column the template needs is missing or empty, the ``prompt`` column is
            missing or of the wrong type, or a message has an unknown role.
        ConfigError: the template itself is malformed.
    """
    source = str(source)  # a Path is welcome too
    err_line, prefix = _where(line, row_number)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if template is not None:
        return [
            *system,
            {"role": "user", "content": _render_template(row, template, source, err_line, prefix)},
        ]
    if "prompt" not in row:
        raise DataError(
            f"{prefix}the row has no 'prompt' column (columns: {_column_list(row)})",
            file=source,
            line=err_line,
            hint="add a 'prompt' column, or set prompt_template in the config to build prompts from columns",
        )
    prompt = row["prompt"]
    if prompt is None or isinstance(prompt, str):
        if prompt is None or not prompt.strip():
            raise DataError(
                f"{prefix}the prompt is empty",
                file=source,
                line=err_line,
                column="prompt",
                hint="write the prompt text or drop the row",
            )
        return [*system, {"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        messages = _check_messages(prompt, source, err_line, prefix)
        if any(m["role"] == "system" for m in messages):
            return messages
        return [*system, *messages]
    raise DataError(
        f"{prefix}'prompt' is of type {type(prompt).__name__}, expected text or a list of "
        '{"role", "content"} messages',
        file=source,
        line=err_line,
        column="prompt",
        hint='write the prompt as text, or as [{"role": "user", "content": "..."}]',
    )


def _render_template(
    row: Mapping[str, Any], template: str, source: str, line: int | None, prefix: str
) -> str:
    for name in required_columns(template):
        if name not in row:
            raise DataError(
                f"{prefix}prompt_template uses column {name!r} but the row has no such column "
                f"(columns: {_column_list(row)})",
                file=source,
                line=line,
                column=name,
                hint=f"fix the template or add the column to the data; {_BRACE_HINT}",
            )
        if row[name] is None:
            raise DataError(
                f"{prefix}prompt_template uses column {name!r} but it is empty in this row",
                file=source,
                line=line,
                column=name,
                hint="fill in the cell or drop the row",
            )
    try:
        return template.format_map(row)
    except (LookupError, AttributeError, TypeError, ValueError) as err:
        raise DataError(
            f"{prefix}cannot render prompt_template with this row: {type(err).__name__}: {err}",
            file=source,
            line=line,
            hint="check the template's indexes, attributes and format specs against the data",
        ) from None


def _check_messages(prompt: list[Any], source: str, line: int | None, prefix: str) -> list[Message]:
    if not prompt:
        raise DataError(
            f"{prefix}'prompt' is an empty list of messages",
            file=source,
            line=line,
            column="prompt",
            hint='write at least one message, e.g. [{"role": "user", "content": "..."}]',
        )
    messages: list[Message] = []
    for index, message in enumerate(prompt):
        if not (isinstance(message, dict) and "role" in message and "content" in message):
            raise DataError(
                f'{prefix}\'prompt\' message {index} is not a {{"role", "content"}} object: '
                f"{_short(message)}",
                file=source,
                line=line,
                column="prompt",
                hint='write each message as {"role": "user", "content": "..."}',
            )
        if message["role"] not in ROLES:
            raise DataError(
                f"{prefix}'prompt' message {index} has role {message['role']!r}",
                file=source,
                line=line,
                column="prompt",
                hint=f"use one of: {', '.join(ROLES)}",
            )
        if not isinstance(message["content"], str):
            raise DataError(
                f"{prefix}'prompt' message {index} has content of type {type(message['content']).__name__}",
                file=source,
                line=line,
                column="prompt",
                hint="write the message content as text",
            )
        messages.append(dict(message))
    return messages


def _column_list(row: Mapping[str, Any], limit: int = 20) -> str:
    names = [str(k) for k in row]
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    template: str | None,
    system_prompt: str | None,
    source: str = "<data>",
    lines: Sequence[int | None] | None = None,
) -> None:
    """Render every row once so data errors surface before any model is loaded.

    Args:
        rows: the dataset rows.
        template, system_prompt: as for :func:`render_messages`.
        source: file name for error messages.
        lines: ``lines[i]`` is the 1-based line where row ``i`` starts (``LoadedRows.lines``
            from :func:`openrft.data.read_rows`); None for formats without lines, in which
            case errors name the 1-based row number.

    Raises:
        DataError: at the first bad row, naming its line (or row) and column.
        ConfigError: the template is malformed.
    """
    if template is not None:
        required_columns(template)  # a malformed template is reported once, before any row
    for index, row in enumerate(rows):
        line = lines[index] if lines is not None else None
        render_messages(
            row,
            template=template,
            system_prompt=system_prompt,
            source=source,
            line=line,
            row_number=index + 1,
        )


def render_prompt_text(tokenizer: Any, messages: Sequence[Message], assistant_prefix: str = "") -> str:
    """The text a model continues from: the chat template applied to ``messages``, opened for
    the assistant's reply, followed by ``assistant_prefix`` (e.g. ``"<think>"``).

    Uses ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)``.
    A tokenizer without a chat template (``tokenizer.chat_template`` is empty) gets a plain
    fallback: the message contents joined by blank lines (earlier assistant turns written as
    ``"assistant: <content>"``), then ``"\\n\\nassistant: "`` and the prefix, e.g.
    ``"You are terse.\\n\\nWhat is 2+2?\\n\\nassistant: "``.

    Raises:
        ConfigError: the tokenizer's chat template rejects the messages (some templates refuse
            a system role).
    """
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        except TemplateError as err:
            raise ConfigError(
                f"the model's chat template rejected the messages: {err} "
                "(if it mentions the system role, drop system_prompt or the system messages)"
            ) from None
        return str(text) + assistant_prefix
    parts = [
        f"assistant: {m['content']}" if m["role"] == "assistant" else str(m["content"]) for m in messages
    ]
    return "\n\n".join([*parts, "assistant: "]) + assistant_prefix
