"""Every way a reward call can end, as a value: pure functions, no processes.

=============  ==========================================  =======  ==========================
kind           when                                        score    counted as
=============  ==========================================  =======  ==========================
``value``      a finite number with abs(v) <= cap          v (clip  -
                                                           to range)
``none``       the function returned None (not applicable)  NaN     rewards/<name>/none
``error``      user error: raised, timed out, NaN, inf,    0.0      rewards/<name>/errors
               abs(v) > cap, not a number, wrong length,            (tracebacks kept)
               exited the worker process
``infra``      the worker died (signal, OOM kill) on this  NaN      rewards/<name>/infra_errors
               sample twice (retried once first)
=============  ==========================================  =======  ==========================

NaN means "no value": the sample is left out of that function's mean and of the group baseline.
The cap (default 1e6) is why a single inf or 1e30 cannot blow up a group's std: it scores 0.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

VALUE_CAP = 1e6
"""Largest absolute reward accepted; anything bigger is a user error (scored 0)."""

OutcomeKind = Literal["value", "none", "error", "infra"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call for one sample ended. `score` is what goes into the reward matrix."""

    kind: OutcomeKind
    score: float
    detail: str = ""  # error kind + message / traceback, for errors

    @staticmethod
    def error(detail: str) -> Outcome:
        return Outcome("error", 0.0, detail)

    @staticmethod
    def infra(detail: str) -> Outcome:
        return Outcome("infra", math.nan, detail)


NONE = Outcome("none", math.nan)


def to_wire(value: Any) -> tuple[float | None, str | None]:
    """Worker side: a returned object as (number or None, None), or (None, error message).

    Accepts None, bool and any `numbers.Real` (int, float, numpy scalars, numpy bools); refuses strings
    (even "0.5"), lists, tensors and everything else.

    >>> to_wire(3)
    (3.0, None)
    >>> to_wire("0.5")[1]
    "returned '0.5' (str); a reward must return a float or None"
    """
    if value is None:
        return None, None
    if isinstance(value, numbers.Real) or (
        type(value).__name__ in ("bool_", "bool") and hasattr(value, "item")
    ):
        try:
            return float(value), None
        except (OverflowError, ValueError, TypeError) as e:
            return None, f"returned {_short(value)} which is not a finite float ({e})"
    return None, f"returned {_short(value)} ({type(value).__name__}); a reward must return a float or None"


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # a user object whose __repr__ raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(value: float | None, value_range: tuple[float, float] | None, cap: float = VALUE_CAP) -> Outcome:
    """Parent side: the outcome of a number (or None) a function returned.

    >>> classify(0.7, (0.0, 0.5))
    Outcome(kind='value', score=0.5, detail='')
    >>> classify(float("inf"), None).kind
    'error'
    >>> classify(1e30, (0.0, 1.0)).detail
    'value: returned 1e+30; rewards must be finite with abs(value) <= 1e+06 (rescale it)'
    """
    if value is None:
        return NONE
    if not isinstance(value, float | int) or isinstance(value, bool):
        return Outcome.error(f"type: returned {_short(value)}; a reward must return a float or None")
    value = float(value)
    if not math.isfinite(value) or abs(value) > cap:
        return Outcome.error(
            f"value: returned {value!r}; rewards must be finite with abs(value) <= {cap:g} (rescale it)"
        )
    if value_range is not None:
        value = min(max(value, value_range[0]), value_range[1])
    return Outcome("value", value)
