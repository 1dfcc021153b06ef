"""Built-in reward functions by name: `BUILTINS["regex"]`, `BUILTINS["countdown.format"]` ...

All have the per-sample signature ``(prompt, completion, example, **kwargs) -> float``, except
``remote`` (batched: ``(prompts, completions, examples, **kwargs) -> list``). A built-in may carry
a ``check_kwargs(kwargs)`` attribute that the trainer runs on the spec's kwargs before starting. The
countdown rewards import `openrft.tasks.countdown` only when called, so this module (and the
config, which validates names against `BUILTIN_NAMES`) never depends on it at import time.
"""

from __future__ import annotations

from collections.abc import Callable

from openrft.rewards import code_graders, graders, http_graders


def countdown_format(prompt: str, completion: str, example: dict) -> float:
    """Countdown: 1.0 for exactly ``<think>...</think><answer>...</answer>``, else 0.0."""
    from openrft.tasks.countdown import format_reward

    return format_reward(prompt, completion, example)


def countdown_soft_format(prompt: str, completion: str, example: dict) -> float:
    """Countdown: 0.25 per think/answer tag present exactly once."""
    from openrft.tasks.countdown import soft_format_reward

    return soft_format_reward(prompt, completion, example)


def countdown_equation(prompt: str, completion: str, example: dict) -> float:
    """Countdown: 1.0 if the answer uses each number once and equals the target, else 0.0."""
    from openrft.tasks.countdown import equation_reward

    return equation_reward(prompt, completion, example)


def countdown_partial_equation(prompt: str, completion: str, example: dict) -> float:
    """Countdown: dense shaping in [0, 1]; 1.0 exactly when the equation is correct."""
    from openrft.tasks.countdown import partial_equation_reward

    return partial_equation_reward(prompt, completion, example)


BUILTINS: dict[str, Callable[..., float]] = {
    "countdown.format": countdown_format,
    "countdown.soft_format": countdown_soft_format,
    "countdown.equation": countdown_equation,
    "countdown.partial_equation": countdown_partial_equation,
    "regex": graders.regex,
    "exact_match": graders.exact_match,
    "exact_match_ci": graders.exact_match_ci,
    "numeric_match": graders.numeric_match,
    "similarity": graders.similarity,
    "json_valid": graders.json_valid,
    "json_schema": graders.json_schema,
    "length_penalty": graders.length_penalty,
    "python_tests": code_graders.python_tests,
    "sql_match": code_graders.sql_match,
    "llm_judge": http_graders.llm_judge,
    "remote": http_graders.remote,
}

BUILTIN_NAMES: tuple[str, ...] = tuple(BUILTINS)
