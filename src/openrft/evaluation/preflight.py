"""Pre-flight learnability report: will GRPO learn anything from these prompts and rewards?

    openrft rewards preflight examples/countdown.yaml --samples 4

Samples the base model (or an adapter) K times on N training prompts, scores every reward
function, and reports what GRPO will see: each function's mean and spread, the fraction of
groups with zero reward variance (they give no gradient), correlations between functions, how
much of the within-group reward variation each function drives, completion lengths and clipping,
and advice: the group size needed for a learning signal, difficulty, SFT warm start, constant,
failing, redundant or dominating functions.

The statistics and the advice are pure functions of the scored samples (tested with hand values);
`preflight` only samples and scores, reusing the engine's rollout and the isolated reward workers.

Why the group-size estimate: a group has a learning signal only when its rewards differ. For a
binary success reward with per-prompt success rate p, a group of G samples has variance with
probability ``1 - p^G - (1-p)^G``. Per-prompt rates from K samples are noisy (0/4 does not mean
p = 0), so each is shrunk toward the pooled rate with 2 pseudo-samples before the G search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.stats import finite, mean_std, pearson, weighted_total

TOL = 1e-6  # rewards closer than this count as equal
TARGET_P_VARIANCE = 0.9  # the group size advice aims at this P(group has variance)
MAX_GROUP_SIZE = 1024
SHRINK_STRENGTH = 2.0  # pseudo-samples pulling per-prompt success rates toward the pooled rate
HARD_RATE, EASY_RATE = 0.1, 0.9
NO_SIGNAL_FRACTION = 0.5
DOMINANT_SHARE = 0.8
REDUNDANT_R, CONFLICT_R = 0.95, -0.5
CLIPPED_WARN = 0.2
MOSTLY_NONE = 0.5

# =============================================================================================
# Pure statistics of groups (means, spreads and correlations come from openrft.stats)
# =============================================================================================


def groups(xs: Sequence[Any], k: int) -> list[list[Any]]:
    """Consecutive groups of k (rows [g*k, (g+1)*k) belong to prompt g).

    >>> groups([1, 2, 3, 4], 2)
    [[1, 2], [3, 4]]
    """
    if k < 1 or len(xs) % k:
        raise ValueError(f"{len(xs)} values do not split into groups of {k}")
    return [list(xs[i : i + k]) for i in range(0, len(xs), k)]


def has_variance(group: Sequence[float], tol: float = TOL) -> bool:
    """True when at least two values (NaN left out) differ by more than `tol`.

    >>> has_variance([1.0, 1.0, float("nan")]), has_variance([0.0, 1.0])
    (False, True)
    """
    v = finite(group)
    return len(v) >= 2 and max(v) - min(v) > tol


def zero_variance_fraction(xs: Sequence[float], k: int, tol: float = TOL) -> float:
    """Fraction of groups of k whose values are all equal (no learning signal).

    >>> zero_variance_fraction([1, 1, 0, 1, 0, 0], 2)
    0.6666666666666666
    """
    gs = groups(xs, k)
    return sum(not has_variance(g, tol) for g in gs) / len(gs) if gs else math.nan


def correlations(names: Sequence[str], columns: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """Pearson r for every pair of functions, keyed ``"a~b"`` (in `names` order)."""
    out: dict[str, float | None] = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"{names[i]}~{names[j]}"] = pearson(columns[i], columns[j])
    return out


def centered(xs: Sequence[float], k: int) -> list[float]:
    """Each value minus its group's mean (over values present); NaN -> 0 (no contribution).

    >>> centered([1.0, 3.0, 5.0, float("nan")], 2)
    [-1.0, 1.0, 0.0, 0.0]
    """
    out: list[float] = []
    for g in groups(xs, k):
        m = mean_std(g)[0]
        out += [x - m if x == x and m == m else 0.0 for x in g]
    return out


def variance_shares(
    columns: Sequence[Sequence[float]], weights: Sequence[float], k: int
) -> list[float] | None:
    """How much of the within-group variation of the weighted total each function drives.

    With c_f = w_f * (x_f - group mean) and d = sum_f c_f (the centred total, which is what
    the group-relative advantage sees), share_f = sum(c_f * d) / sum(d * d). The shares sum to 1;
    a negative share means the function pulls against the others. None when d is 0 everywhere.

    >>> variance_shares([[0, 1, 0, 1], [0, 0, 0, 0]], [1.0, 1.0], 2)
    [1.0, 0.0]
    """
    contrib = [[w * c for c in centered(col, k)] for col, w in zip(columns, weights, strict=True)]
    if not contrib:
        return None
    d = [sum(parts) for parts in zip(*contrib, strict=True)]
    dd = sum(x * x for x in d)
    if dd <= TOL**2:
        return None
    return [sum(c * t for c, t in zip(cf, d, strict=True)) / dd for cf in contrib]


def balancing_weight(
    columns: Sequence[Sequence[float]], weights: Sequence[float], k: int, f: int
) -> float | None:
    """The weight of function f that would make its within-group variation as large as that of
    all other functions together (covariances ignored); None if either side is 0.

    >>> balancing_weight([[0, 2, 0, 2], [0, 1, 0, 1]], [1.0, 1.0], 2, 0)
    0.5
    """
    contrib = [[w * c for c in centered(col, k)] for col, w in zip(columns, weights, strict=True)]
    own = sum(c * c for c in contrib[f])
    rest = [sum(parts) - mine for parts, mine in zip(zip(*contrib, strict=True), contrib[f], strict=True)]
    other = sum(r * r for r in rest)
    if own <= TOL**2 or other <= TOL**2:
        return None
    return weights[f] * math.sqrt(other / own)


def success_counts(xs: Sequence[float], k: int, threshold: float) -> list[int]:
    """Per group of k: how many values reach `threshold` (NaN never does).

    >>> success_counts([1.0, 0.0, 1.0, 1.0], 2, 1.0)
    [1, 2]
    """
    return [sum(1 for x in g if x == x and x >= threshold) for g in groups(xs, k)]


def p_variance(p: float, g: int) -> float:
    """P(a group of g binary rewards with success rate p is not all equal) = 1 - p^g - (1-p)^g.

    >>> p_variance(0.5, 2)
    0.5
    """
    if g < 2:
        return 0.0
    return max(0.0, 1.0 - p**g - (1.0 - p) ** g)


def shrunk_rates(counts: Sequence[int], k: int, strength: float = SHRINK_STRENGTH) -> list[float]:
    """Per-prompt success rates pulled toward the pooled rate: (c_i + s * p) / (k + s).

    >>> shrunk_rates([0, 2], 2, 2.0)
    [0.25, 0.75]
    """
    if not counts:
        return []
    pooled = sum(counts) / (len(counts) * k)
    return [(c + strength * pooled) / (k + strength) for c in counts]


def mean_p_variance(rates: Sequence[float], g: int) -> float:
    """Expected fraction of groups of g with variance, over prompts with these success rates."""
    return sum(p_variance(p, g) for p in rates) / len(rates) if rates else 0.0


def group_size_needed(
    rates: Sequence[float], target: float = TARGET_P_VARIANCE, max_g: int = MAX_GROUP_SIZE
) -> int | None:
    """Smallest group size g >= 2 whose expected fraction of groups with variance reaches
    `target`; None when even `max_g` does not (e.g. prompts that never or always succeed).

    >>> group_size_needed([0.5])  # 1 - 2 * 0.5^g >= 0.9  <=>  g >= 4.32
    5
    >>> group_size_needed([0.0, 0.5]) is None
    True
    """
    if not rates:
        return None
    lo = 2
    if mean_p_variance(rates, max_g) < target:
        return None
    hi = max_g  # p_variance grows with g: binary search
    while lo < hi:
        mid = (lo + hi) // 2
        if mean_p_variance(rates, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


# =============================================================================================
# The report (pure): statistics of the scored samples, then advice
# =============================================================================================


@dataclass
class Scored:
    """What sampling produced: K completions for each of N prompts, scored by F functions."""

    names: list[str]
    weights: list[float]
    k: int
    values: list[list[float]]  # [N*K][F]; NaN = None (not applicable) or excluded
    errors: dict[str, int]
    tracebacks: dict[str, list[str]]
    lengths: list[int]  # [N*K] completion tokens
    truncated: list[bool]  # [N*K] hit max_new_tokens
    prompts: list[str] = field(default_factory=list)  # [N]
    completions: list[str] = field(default_factory=list)  # [N*K]
    none: dict[str, int] = field(default_factory=dict)

    def column(self, f: int) -> list[float]:
        return [row[f] for row in self.values]

    def totals(self) -> list[float]:
        """The weighted reward total of each sample, by the rule `RewardScores.total` uses."""
        return [weighted_total(row, self.weights) for row in self.values]


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or x != x else round(float(x), digits)


def function_stats(data: Scored, max_error_rate: float) -> dict[str, dict[str, Any]]:
    n = len(data.values)
    shares = variance_shares([data.column(f) for f in range(len(data.names))], data.weights, data.k)
    out: dict[str, dict[str, Any]] = {}
    for f, name in enumerate(data.names):
        col = data.column(f)
        vals = finite(col)
        mean, std = mean_std(col)
        errors = data.errors.get(name, 0)
        tb = data.tracebacks.get(name) or []
        last = [line for line in (tb[-1] if tb else "").strip().splitlines() if line.strip()]
        out[name] = {
            "weight": data.weights[f],
            "mean": _r(mean),
            "std": _r(std),
            "min": _r(min(vals)) if vals else None,
            "max": _r(max(vals)) if vals else None,
            "none_fraction": _r((n - len(vals)) / n) if n else None,
            "errors": errors,
            "error_rate": _r(errors / n) if n else None,
            "stops_training": n > 0 and errors / n > max_error_rate,
            "zero_variance_fraction": _r(zero_variance_fraction(col, data.k)),
            "constant": bool(vals) and len(vals) == n and max(vals) - min(vals) <= TOL,
            "variance_share": _r(shares[f]) if shares else None,
            "balancing_weight": None,
            "last_error": last[-1][:300] if last else None,
        }
    if shares and len(data.names) > 1:
        top = max(range(len(shares)), key=lambda i: shares[i])
        cols = [data.column(f) for f in range(len(data.names))]
        out[data.names[top]]["balancing_weight"] = _r(balancing_weight(cols, data.weights, data.k, top))
    return out


def success_stats(data: Scored, reward: str, threshold: float, group_size: int) -> dict[str, Any]:
    """Success rate of `reward` (>= threshold), per prompt and pooled, and the group size advice."""
    col = data.column(data.names.index(reward))
    counts = success_counts(col, data.k, threshold)
    n_samples = len(col)
    pooled = sum(counts) / n_samples if n_samples else math.nan
    rates = shrunk_rates(counts, data.k)
    needed = group_size_needed(rates)
    return {
        "reward": reward,
        "threshold": threshold,
        "rate": _r(pooled),
        "successes": sum(counts),
        "samples": n_samples,
        "per_prompt_successes": counts,
        "prompts_never": sum(c == 0 for c in counts),
        "prompts_always": sum(c == data.k for c in counts),
        "prompts_mixed": sum(0 < c < data.k for c in counts),
        "group_size": group_size,
        "p_variance_at_group_size": _r(mean_p_variance(rates, group_size)),
        "expected_zero_variance_at_group_size": _r(1 - mean_p_variance(rates, group_size)),
        "target_p_variance": TARGET_P_VARIANCE,
        "group_size_needed": needed,
    }


def first_binary(data: Scored) -> str | None:
    """The first function whose values are all 0 or 1 (the success reward when the config names
    none); None if no function is binary.

    >>> first_binary(Scored(["d", "b"], [1, 1], 2, [[0.5, 1.0], [0.2, 0.0]], {}, {}, [1, 1], [False] * 2))
    'b'
    """
    for f, name in enumerate(data.names):
        vals = finite(data.column(f))
        if vals and all(v in (0.0, 1.0) for v in vals):
            return name
    return None


def build_report(
    data: Scored,
    *,
    success_reward: str | None,
    threshold: float,
    group_size: int,
    max_error_rate: float,
) -> dict[str, Any]:
    """Every statistic of the report (no advice yet: see `advise`)."""
    totals = data.totals()
    mean, std = mean_std(totals)
    lengths = data.lengths
    cols = [data.column(f) for f in range(len(data.names))]
    report: dict[str, Any] = {
        "prompts": len(data.values) // data.k if data.k else 0,
        "samples_per_prompt": data.k,
        "functions": function_stats(data, max_error_rate),
        "total": {
            "mean": _r(mean),
            "std": _r(std),
            "zero_variance_fraction": _r(zero_variance_fraction(totals, data.k)),
        },
        "correlations": {k: _r(v, 3) for k, v in correlations(data.names, cols).items()},
        "completions": {
            "mean_length": _r(sum(lengths) / len(lengths), 2) if lengths else None,
            "max_length": max(lengths) if lengths else None,
            "clipped_ratio": _r(sum(data.truncated) / len(data.truncated)) if data.truncated else None,
        },
        "success": success_stats(data, success_reward, threshold, group_size) if success_reward else None,
    }
    return report


def _advice(level: str, code: str, message: str) -> dict[str, str]:
    return {"level": level, "code": code, "message": message}


def _success_advice(s: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    name, g, rate, needed = s["reward"], s["group_size"], s["rate"], s["group_size_needed"]
    pv = s["p_variance_at_group_size"]
    if s["successes"] == 0:
        out.append(
            _advice(
                "error",
                "sft_warm_start",
                f"'{name}' never reached {s['threshold']:g} in {s['samples']} samples: every group "
                "would score the same, so GRPO has nothing to learn from it. Warm-start with SFT on a "
                "few solved examples (method: sft, or stages: [sft, grpo]), make the prompts easier, "
                "show a worked example in the prompt, or add a dense shaping reward.",
            )
        )
        return out
    if rate is not None and rate > EASY_RATE:
        out.append(
            _advice(
                "warn",
                "too_easy",
                f"'{name}' already succeeds on {rate:.0%} of samples ({s['prompts_always']} of "
                f"{len(s['per_prompt_successes'])} prompts every time): little is left to learn; use "
                "harder prompts or a stricter reward.",
            )
        )
    elif rate is not None and rate < HARD_RATE:
        out.append(
            _advice(
                "warn",
                "too_hard",
                f"'{name}' succeeds on only {rate:.1%} of samples ({s['prompts_never']} prompts never): "
                f"most groups of {g} will all fail. Easier prompts, a dense shaping reward or an SFT warm "
                "start make the signal denser.",
            )
        )
    if needed is None:
        out.append(
            _advice(
                "warn",
                "group_size",
                f"no group size reaches P(group has variance) >= {TARGET_P_VARIANCE:.0%} for '{name}' (at "
                f"grpo.num_generations={g}: {pv:.0%}); too many prompts look always solved or never solved.",
            )
        )
    elif needed > g:
        out.append(
            _advice(
                "warn",
                "group_size",
                f"with grpo.num_generations={g}, only {pv:.0%} of groups are expected to have a reward "
                f"difference on '{name}'; {needed} samples per prompt would give {TARGET_P_VARIANCE:.0%}. "
                f"Raise num_generations toward {needed}"
                + (" (or make the task easier: that many samples is costly)." if needed > 4 * g else "."),
            )
        )
    else:
        out.append(
            _advice(
                "ok",
                "group_size",
                f"grpo.num_generations={g} is enough: {pv:.0%} of groups are expected to have a reward "
                f"difference on '{name}' ({needed} would reach {TARGET_P_VARIANCE:.0%}).",
            )
        )
    return out


def _function_advice(name: str, st: dict[str, Any], success: str | None, max_rate: float) -> list[dict]:
    out = []
    if st["errors"]:
        level = "error" if st["stops_training"] else "warn"
        stop = (
            f" (over max_reward_error_rate {max_rate:g}: training would stop)" if st["stops_training"] else ""
        )
        out.append(
            _advice(
                level,
                "function_errors",
                f"'{name}' failed on {st['errors']} samples ({st['error_rate']:.0%}){stop}; failures "
                f"score 0. Last error: {st['last_error'] or 'n/a'}",
            )
        )
    elif st["constant"] and name != success:
        out.append(
            _advice(
                "warn",
                "function_constant",
                f"'{name}' returned {st['mean']:g} for every sample: it adds no learning signal. Check it on "
                "real completions (`openrft rewards test`), or drop it.",
            )
        )
    if st["none_fraction"] and st["none_fraction"] > MOSTLY_NONE and not st["errors"]:
        out.append(
            _advice(
                "info",
                "function_mostly_none",
                f"'{name}' was not applicable (None) on {st['none_fraction']:.0%} of samples; it shapes "
                "few updates.",
            )
        )
    return out


def advise(report: dict[str, Any], *, max_error_rate: float, max_new_tokens: int) -> list[dict[str, str]]:
    """Concrete advice from a `build_report` dict: each item has level (error, warn, info, ok),
    a code and a message saying what to change."""
    out: list[dict[str, str]] = []
    success = report["success"]["reward"] if report.get("success") else None
    for name, st in report["functions"].items():
        out += _function_advice(name, st, success, max_error_rate)
    if report.get("success"):
        out += _success_advice(report["success"])
    zv = report["total"]["zero_variance_fraction"]
    k = report["samples_per_prompt"]
    if zv is not None and zv > NO_SIGNAL_FRACTION:
        out.append(
            _advice(
                "warn",
                "no_signal",
                f"{zv:.0%} of groups of {k} had the same total reward for every sample: those prompts give "
                "no gradient. Make rewards more graded (partial credit) or the prompts more varied in "
                "difficulty.",
            )
        )
    funcs = report["functions"]
    varying = [
        n for n, st in funcs.items() if st["variance_share"] is not None and abs(st["variance_share"]) > 0.01
    ]
    if len(funcs) > 1 and len(varying) > 1:
        top = max(funcs, key=lambda n: funcs[n]["variance_share"] or -math.inf)
        share = funcs[top]["variance_share"]
        if share is not None and share > DOMINANT_SHARE:
            bw = funcs[top]["balancing_weight"]
            others = ", ".join(f"'{n}'" for n in varying if n != top)
            hint = f"; equal influence would need weight ≈ {bw:.2g}" if bw else ""
            out.append(
                _advice(
                    "warn",
                    "dominated",
                    f"{share:.0%} of the within-group reward differences come from '{top}' (weight "
                    f"{funcs[top]['weight']:g}): the advantage mostly teaches '{top}', and {others} "
                    f"barely move it. If they should count, lower '{top}''s weight or raise theirs{hint}.",
                )
            )
    for pair, r in report["correlations"].items():
        if r is None:
            continue
        a, b = pair.split("~", 1)
        if r >= REDUNDANT_R:
            out.append(
                _advice(
                    "info",
                    "redundant",
                    f"'{a}' and '{b}' move together (r = {r:.2f}): together they count the same thing twice; "
                    "keep one or lower their weights.",
                )
            )
        elif r <= CONFLICT_R:
            out.append(
                _advice(
                    "warn",
                    "conflict",
                    f"'{a}' and '{b}' pull in opposite directions (r = {r:.2f}): raising one lowers the "
                    "other; check that both reward what you want.",
                )
            )
    clipped = report["completions"]["clipped_ratio"]
    if clipped is not None and clipped > CLIPPED_WARN:
        out.append(
            _advice(
                "warn",
                "clipped",
                f"{clipped:.0%} of completions hit grpo.max_new_tokens={max_new_tokens} before finishing: "
                "raise it, ask for shorter answers in the prompt, or add a length_penalty reward.",
            )
        )
    if not report.get("success"):
        out.append(
            _advice(
                "info",
                "no_success_reward",
                "no 0/1 reward to judge the group size by: set success_reward in the config (and "
                "eval.success_threshold) to get group-size and difficulty advice.",
            )
        )
    if not any(a["level"] in ("error", "warn") for a in out):
        out.append(_advice("ok", "ready", "no problems found: the rewards give GRPO a learning signal."))
    order = {"error": 0, "warn": 1, "info": 2, "ok": 3}
    return sorted(out, key=lambda a: order[a["level"]])


# =============================================================================================
# Sampling and scoring (the engine's rollout, the isolated reward workers)
# =============================================================================================


def pick_rows(n_rows: int, n: int, seed: int, shuffle: bool) -> list[int]:
    """Which training rows to sample: a seeded random slice (or the first n)."""
    import numpy as np

    if shuffle:
        return [int(i) for i in np.random.default_rng([seed, 7]).permutation(n_rows)[:n]]
    return list(range(min(n, n_rows)))


def sample_and_score(
    cfg: Any,
    *,
    samples: int,
    prompts: int,
    adapter: str | Path | None = None,
    reporter: Any = None,
    batch_sequences: int = 32,
) -> tuple[Scored, dict[str, float]]:
    """Sample `samples` completions for `prompts` training prompts and score them (each chunk is
    scored in the workers while the next one is sampled). Returns the data and phase times."""
    import torch

    from openrft.engine.common import build_prompts, eos_ids, load_splits, pad_id, set_threads
    from openrft.engine.rollout.model import RolloutModel
    from openrft.engine.rollout.sampler import decode_completions, sample_groups
    from openrft.evaluation.evaluate import load_for_eval
    from openrft.rewards import RewardSet
    from openrft.tracking.progress import NullReporter

    reporter = reporter or NullReporter()
    g = cfg.grpo
    t0 = time.perf_counter()
    rows = load_splits(cfg).train
    chosen = [rows[i] for i in pick_rows(len(rows), prompts, cfg.seed, cfg.data.shuffle)]
    names = [r.name for r in cfg.rewards]
    times = {"load": 0.0, "sample": 0.0, "score_wait": 0.0}
    # workers start (and load user code) while the model loads
    with RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=1.0) as rs:
        set_threads(cfg.model.threads)
        model, tok = load_for_eval(cfg, adapter)
        sampler = RolloutModel(model)  # as evaluate(): the lean decoder for Llama-family models
        items = build_prompts(cfg, tok, chosen, cfg.data.train)
        eos = eos_ids(tok, model)
        pad = pad_id(tok, eos)
        on_cpu = next(model.parameters()).device.type == "cpu"
        gen = torch.Generator().manual_seed(cfg.seed)
        times["load"] = time.perf_counter() - t0
        per_chunk = max(1, batch_sequences // samples)
        futures, lengths, truncated, completions = [], [], [], []
        reporter.start(len(items), 0, "preflight")
        try:
            for start in range(0, len(items), per_chunk):
                chunk = items[start : start + per_chunk]
                t1 = time.perf_counter()
                batch = sample_groups(
                    sampler,
                    [p.ids for p in chunk],
                    group_size=samples,
                    max_new_tokens=g.max_new_tokens,
                    eos_ids=eos,
                    pad_id=pad,
                    temperature=g.temperature,
                    top_p=g.top_p,
                    top_k=g.top_k,
                    generator=gen if on_cpu else None,
                )
                texts = decode_completions(tok, batch, [p.prefix for p in chunk])
                times["sample"] += time.perf_counter() - t1
                expanded = [chunk[i // samples] for i in range(len(texts))]
                futures.append(rs.submit([p.text for p in expanded], texts, [p.row for p in expanded]))
                lengths += [int(x) for x in batch.completion_mask.sum(-1)]
                truncated += [bool(x) for x in batch.truncated]
                completions += texts
                reporter.update(min(start + per_chunk, len(items)), {})
            t2 = time.perf_counter()
            results = [f.result() for f in futures]
            times["score_wait"] = time.perf_counter() - t2
        finally:
            reporter.stop()
    errors = {n: sum(r.errors[n] for r in results) for n in names}
    none = {n: sum(r.none[n] for r in results) for n in names}
    tracebacks = {n: [tb for r in results for tb in r.tracebacks[n]][-5:] for n in names}
    values = [row for r in results for row in r.values]
    data = Scored(
        names=names,
        weights=[r.weight for r in cfg.rewards],
        k=samples,
        values=values,
        errors=errors,
        tracebacks=tracebacks,
        lengths=lengths,
        truncated=truncated,
        prompts=[p.text for p in items],
        completions=completions,
        none=none,
    )
    times["total"] = time.perf_counter() - t0
    return data, times


def preflight(
    cfg: Any,
    *,
    samples: int | None = None,
    prompts: int = 16,
    adapter: str | Path | None = None,
    reporter: Any = None,
) -> dict[str, Any]:
    """Sample, score and report (see the module docstring). `samples` defaults to the config's
    grpo.num_generations, so the zero-variance fraction is the one training will see."""
    from openrft.errors import ConfigError

    k = samples or cfg.grpo.num_generations
    if k < 2:
        raise ConfigError(f"--samples {k}: preflight needs at least 2 samples per prompt to see variance")
    if prompts < 1:
        raise ConfigError(f"--prompts {prompts}: give at least 1 prompt")
    data, times = sample_and_score(cfg, samples=k, prompts=prompts, adapter=adapter, reporter=reporter)
    success = cfg.success_reward or first_binary(data)
    report = build_report(
        data,
        success_reward=success,
        threshold=cfg.eval.success_threshold,
        group_size=cfg.grpo.num_generations,
        max_error_rate=cfg.max_reward_error_rate,
    )
    report["advice"] = advise(
        report, max_error_rate=cfg.max_reward_error_rate, max_new_tokens=cfg.grpo.max_new_tokens
    )
    if report["success"] is not None:
        report["success"]["from_config"] = cfg.success_reward is not None
    report["model"] = cfg.model.name
    report["adapter"] = str(adapter) if adapter else None
    report["sampling"] = {
        "temperature": cfg.grpo.temperature,
        "top_p": cfg.grpo.top_p,
        "top_k": cfg.grpo.top_k,
        "max_new_tokens": cfg.grpo.max_new_tokens,
    }
    report["per_prompt"] = per_prompt(data)
    report["examples"] = [
        {
            "prompt": data.prompts[i // k],
            "completion": data.completions[i],
            "rewards": dict(zip(data.names, data.values[i], strict=True)),
        }
        for i in range(0, len(data.completions), k)
    ][:3]
    report["time_s"] = {key: round(v, 2) for key, v in times.items()}
    return report


def per_prompt(data: Scored) -> list[dict[str, Any]]:
    """Per prompt: its text, the mean total reward and each function's mean over its K samples."""
    totals = groups(data.totals(), data.k)
    out = []
    for i, text in enumerate(data.prompts):
        rows = data.values[i * data.k : (i + 1) * data.k]
        out.append(
            {
                "prompt": text,
                "total_mean": _r(mean_std(totals[i])[0]),
                "total_has_variance": has_variance(totals[i]),
                "means": {n: _r(mean_std([r[f] for r in rows])[0]) for f, n in enumerate(data.names)},
            }
        )
    return out
