"""Score completions with a set of reward functions: `RewardSet` -> `RewardScores`.

Usage (the trainer's side, engine/grpo.py)::

    with RewardSet(cfg.rewards, base_dir=cfg.base_dir, max_error_rate=cfg.max_reward_error_rate) as rs:
        scores = rs.score(prompts, completions, examples)  # RewardScores, or RewardError
        group_advantages(torch.tensor(scores.total), G)     # NaN = no reward for that sample
        log(scores.metrics(G))                              # reward, reward_std, rewards/<name>/mean...

`submit` returns a future at once instead, so sampling can go on while the workers score
(preflight does that). `RewardScores` is the one place the weighted reward total (`total`, by
`openrft.stats.weighted_total`) and the per-reward metrics are computed: training, held-out
evaluation and preflight read them from it.

Every call of every function ends in one `Outcome` (see `outcomes`). After each batch the
cumulative user-error rate of each function (errors / calls since the set was made) is checked:
past `max_error_rate`, once a function has had `min_samples_for_error_rate` calls, the batch
raises `RewardError` naming the function and rate, with sample tracebacks. A batch that already
cannot end under the threshold is stopped early instead of running its remaining calls.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrft.errors import RewardError
from openrft.rewards import loader
from openrft.rewards.outcomes import VALUE_CAP, Outcome, classify
from openrft.rewards.pool import (
    CallRequest,
    InspectRequest,
    PoolSettings,
    Profile,
    WorkerPool,
    default_isolation,
    default_pool_size,
)
from openrft.rewards.spec import RewardSpec
from openrft.rewards.url_guard import NetworkPolicy
from openrft.stats import mean, mean_std, sample_std, weighted_total

_MAX_CHUNK = 32


@dataclass
class RewardScores:
    """Rewards for one batch. ``values[i][f]`` is sample i, function f; NaN = no value (the
    function returned None, or the sample was excluded after infrastructure errors). User errors
    are 0.0. ``total[i]`` is the weighted sum over the functions that have a value (NaN only
    when none has)."""

    names: list[str]
    weights: list[float]
    values: list[list[float]]  # [N][F]
    total: list[float]  # [N]
    errors: dict[str, int]  # user errors in this batch, per function
    infra_errors: dict[str, int]  # samples excluded after the worker died twice
    none: dict[str, int]  # samples the function said were not applicable
    infra_retries: dict[str, int]  # samples re-run after a worker died (then scored normally)
    tracebacks: dict[str, list[str]]  # the last few error details of this batch, per function
    time_s: float

    def column(self, name: str) -> list[float]:
        """The values of one function, per sample."""
        f = self.names.index(name)
        return [row[f] for row in self.values]

    def metrics(self, group_size: int | None = None) -> dict[str, float]:
        """The batch's metrics, TRL names. Per function: ``rewards/<name>/mean`` and ``/std``
        (population std over the samples with a value; NaN if none), ``/errors``,
        ``/infra_errors``, ``/none``. With `group_size` (rows [g*G, (g+1)*G) are the completions
        of prompt g) also, from `total`: ``reward`` (mean over samples with a total),
        ``reward_std`` (the mean over groups of the sample std of the group's totals; 0 for a
        group with fewer than two) and ``frac_reward_zero_std`` (groups whose std < 1e-6: no
        learning signal)."""
        out: dict[str, float] = {}
        if group_size is not None:
            if group_size < 1 or len(self.total) % group_size:
                raise ValueError(f"{len(self.total)} totals do not split into groups of {group_size}")
            stds = [sample_std(self.total[g : g + group_size]) for g in range(0, len(self.total), group_size)]
            out["reward"] = mean(self.total)
            out["reward_std"] = sum(stds) / len(stds) if stds else math.nan
            out["frac_reward_zero_std"] = sum(s < 1e-6 for s in stds) / len(stds) if stds else math.nan
        for name in self.names:
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = mean_std(self.column(name))
            out[f"rewards/{name}/errors"] = float(self.errors[name])
            out[f"rewards/{name}/infra_errors"] = float(self.infra_errors[name])
            out[f"rewards/{name}/none"] = float(self.none[name])
        return out


def _check_env(spec: RewardSpec) -> None:
    """The variables a spec passes into its worker must be set here (they are read at start)."""
    missing = [name for name in spec.required_env() if name not in os.environ]
    if missing:
        raise RewardError(
            f"reward {spec.name!r}: environment variable {missing[0]} is not set; export it before "
            "training (only the variables a spec names reach its reward worker)"
        )


@dataclass
class _Stats:
    calls: int = 0
    errors: int = 0
    infra: int = 0
    none: int = 0
    tracebacks: deque[str] = field(default_factory=lambda: deque(maxlen=5))


def _where(tb: str) -> str:
    """``file:line`` of the innermost frame of a traceback text, or ''."""
    found = re.findall(r'File "([^"]+)", line (\d+)', tb)
    return f"{found[-1][0]}:{found[-1][1]}: " if found else ""


class _Job:
    """One submitted batch: collects outcomes from the slot threads, then resolves the future."""

    def __init__(self, rs: RewardSet, n: int, active: list[int], requests: int) -> None:
        f_count = len(rs.specs)
        self.rs, self.n, self.active = rs, n, active
        self.values = [[math.nan] * f_count for _ in range(n)]
        self.seen = [0] * f_count
        self.errors, self.infra, self.none, self.retries = ([0] * f_count for _ in range(4))
        self.tracebacks: list[list[str]] = [[] for _ in range(f_count)]
        self.remaining = requests
        self.lock = threading.Lock()
        self.future: Future[RewardScores] = Future()
        self.aborted = False
        self.t0 = time.perf_counter()

    def outcome(self, f: int, i: int, o: Outcome) -> None:
        with self.lock:
            if self.aborted:
                return
            self.values[i][f] = o.score
            self.seen[f] += 1
            if o.kind == "none":
                self.none[f] += 1
                return
            if o.kind == "value":
                return
            if o.kind == "error":
                self.errors[f] += 1
            else:
                self.infra[f] += 1
            self.tracebacks[f] = [*self.tracebacks[f][-4:], f"sample {i}: {o.detail}"]
            message = self.rs._doomed(
                f, self.errors[f], self.infra[f], self.n, self.seen[f], self.tracebacks[f]
            )
            if message:
                self._abort(RewardError(message))

    def retry(self, f: int) -> None:
        with self.lock:
            self.retries[f] += 1

    def done(self, exc: BaseException | None) -> None:
        with self.lock:
            self.remaining -= 1
            if self.aborted:
                return
            if exc is not None:
                self._abort(exc)
                return
            if self.remaining:
                return
            if any(self.seen[f] != self.n for f in self.active):
                self._abort(RuntimeError("the RewardSet was closed before the batch was scored"))
                return
            message = self.rs._commit(self)
            if message:
                self.aborted = True
                self.future.set_exception(RewardError(message))
            else:
                self.future.set_result(self._scores())

    def _abort(self, exc: BaseException) -> None:
        self.aborted = True
        self.rs._commit(self)
        self.future.set_exception(exc)

    def cancelled(self) -> bool:
        return self.aborted

    def _scores(self) -> RewardScores:
        names = [s.name for s in self.rs.specs]
        weights = [s.weight for s in self.rs.specs]

        def per(counts: list[int]) -> dict[str, int]:
            return dict(zip(names, counts, strict=True))

        return RewardScores(
            names=names,
            weights=weights,
            values=self.values,
            total=[weighted_total(row, weights) for row in self.values],
            errors=per(self.errors),
            infra_errors=per(self.infra),
            none=per(self.none),
            infra_retries=per(self.retries),
            tracebacks=dict(zip(names, self.tracebacks, strict=True)),
            time_s=time.perf_counter() - self.t0,
        )


class RewardSet:
    """The reward functions of a run, loaded into warm isolated workers.

    Args:
        specs: the functions (`RewardSpec`, or dicts of its fields).
        base_dir: folder that relative file paths and module lookups start from (the config's).
        max_error_rate: stop (RewardError) when a function's cumulative user-error rate, or its
            infrastructure-error rate, goes past this fraction.
        min_samples_for_error_rate: calls of a function before its rate is judged.
        pool_size: workers per isolation profile; default min(2, CPU count).
        value_cap: largest accepted abs(value); bigger or non-finite values are user errors.
        isolation: 'sandbox' (bubblewrap, required), 'auto' (the sandbox where it works, else
            weaker isolation with a warning), 'namespaces' or 'hooks'; None = $OPENRFT_REWARD_ISOLATION
            or 'auto' (see `openrft.rewards.pool`).
        network_policy: a server's outbound rules for the workers (`url_guard`); None = the
            trainer's own (`url_guard.POLICY_ENV`, when a server started it), else none.

    Raises:
        RewardError: a function string does not resolve, or a function fails to load.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec | Mapping[str, Any]],
        base_dir: str | Path | None = None,
        *,
        max_error_rate: float = 0.5,
        min_samples_for_error_rate: int = 20,
        pool_size: int | None = None,
        value_cap: float = VALUE_CAP,
        isolation: str | None = None,
        network_policy: NetworkPolicy | None = None,
    ) -> None:
        self.specs = [s if isinstance(s, RewardSpec) else RewardSpec.model_validate(s) for s in specs]
        if not self.specs:
            raise RewardError("no reward functions given; add at least one entry under `rewards`")
        names = [s.name for s in self.specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RewardError(f"reward names must be unique; rename the repeated {dupes}")
        if not 0 < max_error_rate <= 1:
            raise RewardError(f"max_error_rate must be in (0, 1], got {max_error_rate}")
        self.base_dir = str(Path(base_dir).resolve()) if base_dir else None
        for spec in self.specs:
            loader.check_function(spec.function, self.base_dir, spec.kwargs, spec.name)
            _check_env(spec)
        self.max_error_rate = max_error_rate
        self.min_samples = min_samples_for_error_rate
        self.value_cap = value_cap
        self._lock = threading.Lock()
        self._stats = [_Stats() for _ in self.specs]
        self._closed = False
        settings = PoolSettings(
            size=pool_size or default_pool_size(),
            isolation=isolation or default_isolation(),
            network_policy=network_policy.to_env() if network_policy is not None else None,
        )
        sys_path = loader.search_path(self.base_dir)
        self._settings, self._sys_path = settings, sys_path
        self._pools: dict[Profile, WorkerPool] = {}
        self._fns: list[dict[str, Any]] = []
        self._profiles: list[Profile] = []
        self.versions: dict[str, int] = {spec.name: 1 for spec in self.specs}
        for spec in self.specs:
            self._profiles.append(self._pool_for(spec))
            self._fns.append(self._fn_entry(spec, 1))
        try:
            self._styles = self._inspect_all()
        except BaseException:
            self.close()
            raise

    # -- setup -----------------------------------------------------------------------------------
    def _pool_for(self, spec: RewardSpec) -> Profile:
        """The profile of a spec's workers, starting its pool if it is new."""
        profile = Profile(
            allow_network=spec.allow_network,
            memory_mb=spec.memory_mb,
            env=spec.worker_env(),
            read_only=loader.source_paths(spec.function, self.base_dir, spec.kwargs),
        )
        if profile not in self._pools:
            self._pools[profile] = WorkerPool(profile, self._settings, self._sys_path)
        return profile

    def _fn_entry(self, spec: RewardSpec, version: int) -> dict[str, Any]:
        digest = hashlib.sha1(
            json.dumps([spec.function, spec.kwargs], sort_keys=True, default=repr).encode()
        ).hexdigest()[:10]
        return {
            "key": f"{spec.name}-{digest}-v{version}",
            "function": spec.function,
            "base_dir": self.base_dir,
            "kwargs": spec.kwargs,
        }

    def _inspect_all(self) -> list[tuple[bool, bool]]:
        reqs = []
        for f, fn in enumerate(self._fns):
            req = InspectRequest(fn)
            self._pools[self._profiles[f]].submit(req)
            reqs.append(req)
        styles = []
        for spec, req in zip(self.specs, reqs, strict=True):
            msg = req.future.result()
            if not msg.get("ok"):
                tb = str(msg.get("tb", ""))
                raise RewardError(
                    f"{_where(tb)}reward {spec.name!r} ({spec.function}) cannot be loaded: {msg.get('msg')}"
                )
            styles.append((bool(msg.get("batched")), bool(msg.get("is_async"))))
        return styles

    # -- scoring ---------------------------------------------------------------------------------
    def submit(
        self,
        prompts: Sequence[Any],
        completions: Sequence[str],
        examples: Sequence[Mapping[str, Any]],
        functions: Sequence[str] | None = None,
    ) -> Future[RewardScores]:
        """Start scoring in the workers; returns at once. `functions` limits scoring to these
        names (the others get NaN). The future raises `RewardError` past the error rate."""
        if self._closed:
            raise RuntimeError("this RewardSet is closed")
        n = len(completions)
        if len(prompts) != n or len(examples) != n:
            raise ValueError(f"got {len(prompts)} prompts, {n} completions and {len(examples)} examples")
        names = [s.name for s in self.specs]
        wanted = names if functions is None else list(functions)
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ValueError(f"unknown reward names {unknown}; known: {names}")
        active = [f for f, name in enumerate(names) if name in wanted]
        items = [(i, prompts[i], completions[i], dict(examples[i])) for i in range(n)]
        plan = [(f, chunk) for f in active for chunk in self._chunks(f, items)]
        job = _Job(self, n, active, len(plan))
        if not plan:
            job.remaining = 1
            job.done(None)
            return job.future
        for f, chunk in plan:
            spec = self.specs[f]
            batched, is_async = self._styles[f]
            req = CallRequest(
                fn=self._fns[f],
                items=chunk,
                concurrent=batched or is_async,
                timeout_s=spec.timeout_s,
                classify=lambda v, r=spec.range: classify(v, r, self.value_cap),
                on_outcome=lambda i, o, f=f: job.outcome(f, i, o),
                on_done=job.done,
                cancelled=job.cancelled,
                on_retry=lambda i, f=f: job.retry(f),
            )
            self._pools[self._profiles[f]].submit(req)
        return job.future

    def score(
        self,
        prompts: Sequence[Any],
        completions: Sequence[str],
        examples: Sequence[Mapping[str, Any]],
        functions: Sequence[str] | None = None,
    ) -> RewardScores:
        """Score a batch and wait for it (`submit(...).result()`)."""
        return self.submit(prompts, completions, examples, functions).result()

    def _chunks(self, f: int, items: list) -> list[list]:
        if not items:
            return []
        batched, is_async = self._styles[f]
        if batched:
            return [items]
        size = self._pools[self._profiles[f]].settings.size
        if is_async:
            step = math.ceil(len(items) / size)
        else:
            step = max(1, min(_MAX_CHUNK, math.ceil(len(items) / (2 * size))))
        return [items[k : k + step] for k in range(0, len(items), step)]

    # -- error rates -----------------------------------------------------------------------------
    def _message(
        self, f: int, errors: int, infra: int, calls: int, tracebacks: Sequence[str], early: bool = False
    ) -> str | None:
        if calls < self.min_samples or calls == 0:
            return None
        spec = self.specs[f]
        kinds = (
            (errors, "failed", "fix the function (it raised, timed out or returned a non-number)"),
            (
                infra,
                "crashed the reward worker",
                "see the worker log below (out of memory? a crash in C code?)",
            ),
        )
        for count, verb, hint in kinds:
            rate = count / calls
            if rate > self.max_error_rate:
                rest = "; the rest of this batch was skipped" if early else ""
                samples = "\n".join(f"--- {tb}" for tb in list(tracebacks)[-3:])
                return (
                    f"reward {spec.name!r} ({spec.function}): {count} of {calls} calls {verb} "
                    f"({rate:.0%}, over max_error_rate {self.max_error_rate:g}{rest}); {hint}, or raise "
                    f"max_reward_error_rate. Last errors:\n{samples}"
                )
        return None

    def _doomed(self, f: int, errors: int, infra: int, n: int, seen: int, tbs: list[str]) -> str | None:
        """An error message if function f's rate will be past the limit whatever the rest of
        this batch (n calls, `seen` done) does, so the batch can stop now."""
        with self._lock:
            st = self._stats[f]
            return self._message(
                f, st.errors + errors, st.infra + infra, st.calls + n, [*st.tracebacks, *tbs], seen < n
            )

    def _commit(self, job: _Job) -> str | None:
        """Add a finished (or stopped) batch to the cumulative stats; the error message, if any."""
        message = None
        with self._lock:
            for f in job.active:
                st = self._stats[f]
                st.calls += job.seen[f]
                st.errors += job.errors[f]
                st.infra += job.infra[f]
                st.none += job.none[f]
                st.tracebacks.extend(job.tracebacks[f])
                message = message or self._message(f, st.errors, st.infra, st.calls, st.tracebacks)
        return message

    def stats(self) -> dict[str, dict[str, Any]]:
        """Cumulative counts per function: calls, errors, infra_errors, none, last tracebacks."""
        with self._lock:
            return {
                spec.name: {
                    "calls": st.calls,
                    "errors": st.errors,
                    "infra_errors": st.infra,
                    "none": st.none,
                    "error_rate": st.errors / st.calls if st.calls else 0.0,
                    "tracebacks": list(st.tracebacks),
                }
                for spec, st in zip(self.specs, self._stats, strict=True)
            }

    # -- changing a function mid-run ------------------------------------------------------------
    def replace(self, name: str, new: RewardSpec | str, *, version: int | None = None) -> RewardSpec:
        """Swap function `name` for a new version (a spec, or a function string that keeps the
        old spec's other settings); returns the new spec. Call it between batches, never while a
        batch of this set is being scored.

        The workers of the function's profile are recycled (they restart before their next
        request, so an edited file is imported afresh), the new version is loaded and its call
        style detected before the swap; its error counts start from zero. `version` is recorded
        in `versions` (default: the current one + 1).

        Raises:
            RewardError: unknown name, the new function does not validate or fails to load (the
                old version then stays in place).
        """
        if self._closed:
            raise RuntimeError("this RewardSet is closed")
        if name not in self.names:
            raise RewardError(f"no reward named {name!r} in this run; its rewards are {self.names}")
        f = self.names.index(name)
        if isinstance(new, str):
            data = self.specs[f].model_dump(exclude_unset=True)
            data["function"] = new
            new = RewardSpec.model_validate(data)
        if new.name != name:
            new = new.model_copy(update={"name": name})
        loader.check_function(new.function, self.base_dir, new.kwargs, name)
        _check_env(new)
        version = self.versions[name] + 1 if version is None else version
        profile = self._pool_for(new)
        fn = self._fn_entry(new, version)
        pool = self._pools[profile]
        pool.recycle()
        msg = pool.inspect(fn)
        if not msg.get("ok"):
            tb = str(msg.get("tb", ""))
            raise RewardError(
                f"{_where(tb)}reward {name!r} ({new.function}) cannot be loaded: {msg.get('msg')}"
            )
        with self._lock:
            self.specs[f] = new
            self._fns[f] = fn
            self._profiles[f] = profile
            self._styles[f] = (bool(msg.get("batched")), bool(msg.get("is_async")))
            self._stats[f] = _Stats()
            self.versions[name] = version
        return new

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.specs]

    def call_styles(self) -> dict[str, dict[str, bool]]:
        """Per function: whether it was detected as batched and as async."""
        pairs = zip(self.specs, self._styles, strict=True)
        return {s.name: {"batched": b, "is_async": a} for s, (b, a) in pairs}

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (as this process sees them)."""
        return [pid for pool in self._pools.values() for pid in pool.pids()]

    def isolation(self) -> list[dict[str, Any]]:
        """Which isolation layers each pool runs under."""
        return [pool.isolation() for pool in self._pools.values()]

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
