"""Statistics (pure functions, no torch): NaN-aware means and spreads, the weighted reward total,
rank and linear correlation, pass@k and bootstrap confidence intervals.

NaN (or None) marks a missing value throughout: a reward that did not apply, a sample whose
grader failed. Helpers say how they treat it; most leave it out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def present(values: Sequence[float | None]) -> list[float]:
    """The values that are not None or NaN.

    >>> present([1.0, None, float("nan"), 2.0])
    [1.0, 2.0]
    """
    return [v for v in values if v is not None and not math.isnan(v)]


def finite(values: Sequence[float]) -> list[float]:
    """The values that are finite numbers (NaN and infinities left out).

    >>> finite([1.0, float("nan"), 2.0, float("inf")])
    [1.0, 2.0]
    """
    return [x for x in values if x == x and math.isfinite(x)]


def mean(values: Sequence[float | None]) -> float:
    """Mean of the present values (`present`); NaN when there are none.

    >>> mean([1.0, None, 2.0])
    1.5
    """
    xs = present(values)
    return sum(xs) / len(xs) if xs else float("nan")


def mean_or_none(values: Sequence[float]) -> float | None:
    """Mean of `values` (all of them), None when there are none.

    >>> mean_or_none([1.0, 2.0]), mean_or_none([])
    (1.5, None)
    """
    return sum(values) / len(values) if values else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std of the finite values; (nan, nan) when there are none, std 0.0
    for one.

    >>> mean_std([1.0, 3.0, float("nan")])
    (2.0, 1.0)
    """
    v = finite(values)
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def sample_std(values: Sequence[float | None]) -> float:
    """Unbiased sample std (n - 1) of the present values; 0.0 with fewer than two (no spread).

    >>> sample_std([1.0, 0.0, 2.0, float("nan")]), sample_std([5.0])
    (1.0, 0.0)
    """
    xs = present(values)
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def weighted_total(row: Sequence[float], weights: Sequence[float]) -> float:
    """Weighted sum of the values that are not NaN; NaN if all are (the reward total of one
    completion over its reward functions).

    >>> weighted_total([1.0, float("nan"), 0.5], [1.0, 2.0, 2.0])
    2.0
    """
    parts = [w * v for v, w in zip(row, weights, strict=True) if not math.isnan(v)]
    return sum(parts) if parts else math.nan


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties get their average rank.

    >>> ranks([10.0, 30.0, 20.0, 20.0])
    [1.0, 4.0, 2.5, 2.5]
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson on average ranks); None if fewer than 2 values or
    either side is constant.

    >>> spearman([1, 2, 3], [10, 20, 30]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def pearson(x: Sequence[float], y: Sequence[float], tol: float = 1e-6) -> float | None:
    """Pearson correlation over the pairs where both have a value (not NaN); None if fewer than
    3 pairs or either side is constant (its spread within `tol`).

    >>> pearson([1, 2, 3], [2, 4, 6])
    1.0
    >>> pearson([1, 2, 3], [1, 1, 1]) is None
    True
    """
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a == a and b == b]
    if len(pairs) < 3:
        return None
    ma = sum(a for a, _ in pairs) / len(pairs)
    mb = sum(b for _, b in pairs) / len(pairs)
    sab = sum((a - ma) * (b - mb) for a, b in pairs)
    saa = sum((a - ma) ** 2 for a, _ in pairs)
    sbb = sum((b - mb) ** 2 for _, b in pairs)
    if saa <= tol**2 or sbb <= tol**2:
        return None
    return max(-1.0, min(1.0, sab / math.sqrt(saa * sbb)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k) for n samples, c correct."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_ci(
    values: Sequence[float | None], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean. NaN/None values are dropped; one value -> (v, v)."""
    xs = present(values)
    if not xs:
        return float("nan"), float("nan")
    if len(xs) == 1:
        return xs[0], xs[0]
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(resamples))
    lo = means[math.floor((1 - level) / 2 * (resamples - 1))]
    hi = means[math.ceil((1 + level) / 2 * (resamples - 1))]
    return lo, hi
