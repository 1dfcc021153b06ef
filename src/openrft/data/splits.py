"""Deterministic train/eval splits and subsamples.

Both functions draw one seeded permutation of the row indices and take a prefix of it, then
return the chosen rows in their original file order. So the same rows, fraction and seed
always give the same result, and a larger ``n`` (or fraction) only adds rows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def _permutation(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def split_rows(rows: Sequence[T], *, eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split rows into (train, eval).

    The eval part has ``round(eval_fraction * len(rows))`` rows (halves round up), at least
    one when ``eval_fraction > 0`` and there are at least 2 rows, and never all of them.
    ``eval_fraction == 0`` (or fewer than 2 rows) gives an empty eval part.

    Raises:
        ValueError: ``eval_fraction`` is outside [0, 1).
    """
    if not 0.0 <= eval_fraction < 1.0:  # also rejects NaN
        raise ValueError(
            f"eval_fraction must be in [0, 1), got {eval_fraction}; e.g. 0.1 keeps 10% of rows for eval"
        )
    n = len(rows)
    if eval_fraction == 0.0 or n < 2:
        return list(rows), []
    n_eval = min(max(1, math.floor(eval_fraction * n + 0.5)), n - 1)
    eval_idx = set(_permutation(n, seed)[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in eval_idx]
    evals = [r for i, r in enumerate(rows) if i in eval_idx]
    return train, evals


def take(rows: Sequence[T], n: int, seed: int) -> list[T]:
    """``n`` distinct rows chosen at random with ``seed`` (without replacement), in file order.

    Raises:
        ValueError: ``n`` is negative or larger than ``len(rows)``.
    """
    if n < 0:
        raise ValueError(f"cannot take {n} rows; n must be >= 0")
    if n > len(rows):
        raise ValueError(
            f"cannot take {n} rows from a dataset of {len(rows)} rows (sampling is without "
            f"replacement); use n <= {len(rows)} or add rows"
        )
    chosen = sorted(_permutation(len(rows), seed)[:n])
    return [rows[i] for i in chosen]
