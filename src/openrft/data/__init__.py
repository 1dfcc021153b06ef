"""Dataset loading, prompt rendering and splits. Imports neither torch nor transformers.

Typical use::

    data = read_rows("prompts.jsonl")            # rows + the line each row starts on
    validate_rows(data.rows, template=cfg.prompt_template, system_prompt=cfg.system_prompt,
                  source=data.source, lines=data.lines)   # every row, before any model loads
    train, evals = split_rows(data.rows, eval_fraction=0.1, seed=0)
    messages = render_messages(train[0], template=cfg.prompt_template, system_prompt=cfg.system_prompt)
    text = render_prompt_text(tokenizer, messages, assistant_prefix="<think>")
"""

from openrft.data.loading import (
    SUPPORTED_FORMATS,
    LoadedRows,
    file_sha256,
    load_rows,
    read_rows,
)
from openrft.data.prompts import (
    ROLES,
    render_messages,
    render_prompt_text,
    required_columns,
    validate_rows,
)
from openrft.data.splits import split_rows, take

__all__ = [
    "ROLES",
    "SUPPORTED_FORMATS",
    "LoadedRows",
    "file_sha256",
    "load_rows",
    "read_rows",
    "render_messages",
    "render_prompt_text",
    "required_columns",
    "split_rows",
    "take",
    "validate_rows",
]
