"""Change reward functions of a running job, between steps, with a record of every version.

    openrft rewards update runs/countdown equation=rewards_v2.py:equation

The command (`request_update`) validates the request and writes it atomically (temp file, then
rename) as ``RUN_DIR/reward_updates/<time>-<pid>.json``. The training loop calls
`apply_pending_updates` at the start of each step; for each requested change it:

1. validates the new function (`check_function`) and loads it in a fresh worker;
2. **before switching**, re-scores the completions of the last steps stored in ``samples.jsonl``
   with the new version and compares with the old values: means, Spearman rank correlation per
   group, groups that gain or lose a learning signal, advantages that change sign
   (`compare_versions`);
3. swaps it into the running `RewardSet` (`RewardSet.replace`: workers restart, error counts of
   that function start from zero), unless it failed to load or failed on more stored completions
   than ``max_error_rate`` (it would stop the run: it is rejected and the old version stays);
4. appends the outcome (applied or rejected, with the comparison, the file's sha256 and a copy
   of its source) to ``RUN_DIR/reward_versions.jsonl`` and moves the request to
   ``reward_updates/done/``.

Version 1 of every function is the one in the config (recorded at the first step). On resume,
the version in force at each step is restored from ``reward_versions.jsonl``, so a resumed run
scores each step with the same version as before.

Write a new version to a **new file**: a reward worker that restarts (after a crash or a
timeout) imports the file again, so editing the running version's file in place changes it
without a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError, RewardError, UserError
from openrft.fsutil import write_json_atomic
from openrft.rewards import loader
from openrft.rewards.spec import RewardSpec
from openrft.stats import mean_or_none, spearman

UPDATES_DIR = "reward_updates"
VERSIONS_FILE = "reward_versions.jsonl"
SOURCES_DIR = "reward_sources"

# =============================================================================================
# Pure comparison of two versions on the same completions
# =============================================================================================


def _varies(xs: Sequence[float]) -> bool:
    return len(xs) >= 2 and max(xs) - min(xs) > 1e-6


def _sign(x: float, eps: float = 1e-9) -> int:
    return 0 if abs(x) <= eps else (1 if x > 0 else -1)


def compare_versions(
    old: Sequence[float | None],
    new: Sequence[float | None],
    group_keys: Sequence[Any],
    old_totals: Sequence[float | None],
    weight: float,
) -> dict[str, Any]:
    """How the new version would have scored stored completions, next to the old one.

    Args:
        old, new: the function's value per completion (None = no value).
        group_keys: the group of each completion (same key = same prompt at the same step).
        old_totals: the weighted total reward each completion got (all functions).
        weight: the function's weight (the new total swaps ``weight * old`` for ``weight * new``).

    Returns:
        ``n``, ``mean_old``, ``mean_new``, ``groups``, ``spearman_mean`` (over groups where both
        versions vary), ``groups_compared``, ``groups_gaining_signal`` / ``groups_losing_signal``
        (the function's values vary under one version only), ``advantage_sign_changes`` (fraction
        of completions whose group-relative advantage changes sign: +, - or 0) and ``changed`` (fraction of
        completions whose value changed).

    >>> r = compare_versions([0, 1, 0, 0], [0, 1, 1, 0], ["a", "a", "b", "b"], [0, 1, 0, 0], 1.0)
    >>> r["spearman_mean"], r["groups_gaining_signal"], r["advantage_sign_changes"], r["changed"]
    (1.0, 1, 0.5, 0.25)
    """
    by_group: dict[Any, list[int]] = {}
    for i, key in enumerate(group_keys):
        by_group.setdefault(key, []).append(i)
    old_vals = [v for v in old if v is not None]
    new_vals = [v for v in new if v is not None]
    rhos, gaining, losing, flips, counted = [], 0, 0, 0, 0
    for idx in by_group.values():
        both = [i for i in idx if old[i] is not None and new[i] is not None]
        o, n = [float(old[i]) for i in both], [float(new[i]) for i in both]  # type: ignore[arg-type]
        if _varies(o) and _varies(n):
            rho = spearman(o, n)
            if rho is not None:
                rhos.append(rho)
        gaining += _varies(n) and not _varies(o)
        losing += _varies(o) and not _varies(n)
        totals_old, totals_new = [], []
        for i in idx:
            t = old_totals[i]
            base = (0.0 if t is None else float(t)) - (weight * float(old[i]) if old[i] is not None else 0.0)
            totals_old.append(t)
            totals_new.append(base + (weight * float(new[i]) if new[i] is not None else 0.0))
        present = [i for i, t in enumerate(totals_old) if t is not None]
        if len(present) >= 2:
            mo = sum(float(totals_old[i]) for i in present) / len(present)  # type: ignore[arg-type]
            mn = sum(totals_new[i] for i in present) / len(present)
            for i in present:
                a, b = float(totals_old[i]) - mo, totals_new[i] - mn  # type: ignore[arg-type]
                counted += 1
                flips += _sign(a) != _sign(b)
    changed = sum(
        1
        for a, b in zip(old, new, strict=True)
        if (a is None) != (b is None) or (a is not None and b is not None and abs(a - b) > 1e-9)
    )
    return {
        "n": len(old),
        "mean_old": mean_or_none(old_vals),
        "mean_new": mean_or_none(new_vals),
        "groups": len(by_group),
        "spearman_mean": mean_or_none(rhos),
        "groups_compared": len(rhos),
        "groups_gaining_signal": gaining,
        "groups_losing_signal": losing,
        "advantage_sign_changes": flips / counted if counted else None,
        "changed": changed / len(old) if old else None,
    }


# =============================================================================================
# Files of the run directory
# =============================================================================================


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_versions(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``reward_versions.jsonl`` (a torn last line is skipped)."""
    path = Path(run_dir) / VERSIONS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _source_sha(function: str, base_dir: str | None) -> tuple[str | None, str | None]:
    ref = loader.parse_ref(function, base_dir)
    if ref.kind != "file":
        return None, None
    try:
        data = Path(ref.target).read_bytes()
    except OSError:
        return None, None
    return hashlib.sha256(data).hexdigest(), ref.target


def recent_samples(
    run_dir: str | Path, before_step: int, steps: int = 3, limit: int = 512
) -> list[dict[str, Any]]:
    """The stored samples of the last `steps` steps before `before_step` (at most `limit`, whole
    groups), read from the end of ``samples.jsonl``."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.exists():
        return []
    chosen: list[dict[str, Any]] = []
    seen: set[int] = set()
    for line in reversed(path.read_text(encoding="utf-8").splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = int(row.get("step", 0))
        if step >= before_step:
            continue
        if step not in seen and len(seen) == steps:
            break
        seen.add(step)
        chosen.append(row)
    chosen.reverse()
    if len(chosen) > limit:  # keep the newest whole groups
        keys = [(r.get("step"), r.get("group")) for r in chosen]
        cut = len(chosen) - limit
        while 0 < cut < len(chosen) and keys[cut] == keys[cut - 1]:
            cut += 1
        chosen = chosen[cut:]
    return chosen


# =============================================================================================
# The command's side: write a request
# =============================================================================================


def _run_reward_specs(run_dir: Path) -> list[dict[str, Any]]:
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(
            f"{run_dir}: not a run directory (no config.json); give the folder a run writes into"
        )
    try:
        return list(json.loads(cfg_file.read_text(encoding="utf-8")).get("rewards") or [])
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_file}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["name=path.py:function", ...]`` -> {name: function}; ConfigError for a malformed item.

    >>> parse_assignments(["equation=v2.py:score"])
    {'equation': 'v2.py:score'}
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, function = item.partition("=")
        if not sep or not name.strip() or not function.strip():
            raise ConfigError(
                f"{item!r}: write NAME=path/file.py:function (NAME is the reward's name in the run)"
            )
        if name.strip() in out:
            raise ConfigError(f"{item!r}: reward {name.strip()!r} is given twice")
        out[name.strip()] = function.strip()
    if not out:
        raise ConfigError("give at least one NAME=path/file.py:function")
    return out


def request_update(run_dir: str | Path, functions: dict[str, str], cwd: str | Path | None = None) -> Path:
    """Validate and write an update request into a run directory; returns the request file.

    Relative file paths are resolved against `cwd` (default: the current directory). The new
    function keeps the old spec's kwargs, weight, range and limits.

    Raises:
        ConfigError: not a run directory, or a name that is not one of the run's rewards.
        RewardError: a function string that does not validate.
    """
    run = Path(run_dir)
    specs = {s.get("name"): s for s in _run_reward_specs(run)}
    base = str(Path(cwd or os.getcwd()).resolve())
    updates = []
    for name, function in functions.items():
        if name not in specs:
            raise ConfigError(f"{run}: the run has no reward named {name!r}; its rewards are {sorted(specs)}")
        ref = loader.parse_ref(function, base)
        resolved = f"{ref.target}:{ref.attr}" if ref.kind == "file" else function
        loader.check_function(resolved, base, specs[name].get("kwargs") or {}, name)
        sha, _ = _source_sha(resolved, base)
        updates.append({"name": name, "function": resolved, "sha256": sha})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = run / UPDATES_DIR / f"{stamp}-{os.getpid()}.json"
    write_json_atomic(path, {"requested_at": _now(), "cwd": base, "updates": updates}, durable=True)
    return path


def wait_for_outcome(run_dir: str | Path, request: Path, timeout_s: float, poll_s: float = 0.5) -> list[dict]:
    """The version records written for `request` (applied or rejected), waiting up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in read_versions(run_dir) if r.get("request") == request.name]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(poll_s)


# =============================================================================================
# The trainer's side: apply requests between steps
# =============================================================================================


def _record_initial(reward_set: Any, run: Path, step: int) -> None:
    for spec in reward_set.specs:
        sha, _ = _source_sha(spec.function, reward_set.base_dir)
        _append(
            run / VERSIONS_FILE,
            {
                "step": 0,
                "name": spec.name,
                "version": reward_set.versions[spec.name],
                "status": "initial",
                "function": spec.function,
                "sha256": sha,
                "spec": spec.model_dump(mode="json"),
                "at": _now(),
                "first_step": step,
            },
        )


def _restore(reward_set: Any, records: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """On resume: put in force, per function, the last version applied at or before `step`."""
    events = []
    for name in reward_set.names:
        applied = [
            r
            for r in records
            if r.get("name") == name
            and r.get("status") in ("initial", "applied")
            and int(r.get("step", 0)) <= step
        ]
        if not applied:
            continue
        last = applied[-1]
        if int(last["version"]) == reward_set.versions[name]:
            continue
        reward_set.replace(name, RewardSpec.model_validate(last["spec"]), version=int(last["version"]))
        events.append(
            {
                "step": step,
                "name": name,
                "version": int(last["version"]),
                "status": "restored",
                "function": last["function"],
            }
        )
    return events


def _rescore(
    reward_set: Any, spec: RewardSpec, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, int, bool]:
    """(comparison, errors of the new version, whether rows carried their examples)."""
    from openrft.rewards.scoring import RewardSet

    if not rows:
        return None, 0, False
    has_examples = all(isinstance(r.get("example"), dict) for r in rows)
    examples = [r.get("example") or {} for r in rows]
    with RewardSet([spec], base_dir=reward_set.base_dir, max_error_rate=1.0, pool_size=1) as fresh:
        scores = fresh.score(
            [r.get("prompt", "") for r in rows], [r.get("completion", "") for r in rows], examples
        )
    new = [None if v != v else v for v in scores.column(spec.name)]
    old = [(r.get("rewards") or {}).get(spec.name) for r in rows]
    keys = [(r.get("step"), r.get("group", r.get("prompt_index"))) for r in rows]
    comparison = compare_versions(old, new, keys, [r.get("reward") for r in rows], spec.weight)
    comparison["steps"] = sorted({r.get("step") for r in rows})
    comparison["errors_new"] = scores.errors[spec.name]
    comparison["examples_stored"] = has_examples
    if scores.tracebacks[spec.name]:
        comparison["last_error_new"] = scores.tracebacks[spec.name][-1][-600:]
    return comparison, scores.errors[spec.name], has_examples


def _copy_source(run: Path, name: str, version: int, path: str | None) -> str | None:
    if not path:
        return None
    target = run / SOURCES_DIR / name / f"v{version}{Path(path).suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return str(target.relative_to(run))


def _apply_one(
    reward_set: Any, run: Path, step: int, update: dict[str, Any], request: str, rescore_steps: int
) -> dict[str, Any]:
    name, function = update.get("name"), update.get("function")
    base: dict[str, Any] = {
        "step": step,
        "name": name,
        "function": function,
        "request": request,
        "at": _now(),
    }
    try:
        if not isinstance(name, str) or not isinstance(function, str):
            raise RewardError("the request names no reward or no function")
        if name not in reward_set.names:
            raise RewardError(f"no reward named {name!r} in this run; its rewards are {reward_set.names}")
        old = reward_set.specs[reward_set.names.index(name)]
        data = old.model_dump(exclude_unset=True)
        data["function"] = function
        try:
            spec = RewardSpec.model_validate(data)
        except ValueError as e:
            raise RewardError(f"invalid new spec: {e}") from None
        loader.check_function(spec.function, reward_set.base_dir, spec.kwargs, name)
        sha, source = _source_sha(spec.function, reward_set.base_dir)
        rows = recent_samples(run, step, rescore_steps)
        comparison, errors, has_examples = _rescore(reward_set, spec, rows)
        if (
            comparison is not None
            and has_examples
            and rows
            and errors / len(rows) > reward_set.max_error_rate
        ):
            raise RewardError(
                f"the new version failed on {errors} of {len(rows)} stored completions (over max_error_rate "
                f"{reward_set.max_error_rate:g}); it would stop the run. Last error: "
                f"{(comparison.get('last_error_new') or '').strip().splitlines()[-1:]}"
            )
        version = reward_set.versions[name] + 1
        reward_set.replace(name, spec, version=version)
    except UserError as e:
        return {**base, "status": "rejected", "error": str(e), "version": reward_set.versions.get(name)}
    record = {
        **base,
        "status": "applied",
        "version": version,
        "previous_version": version - 1,
        "sha256": sha,
        "source_copy": _copy_source(run, name, version, source),
        "spec": spec.model_dump(mode="json"),
        "rescore": comparison,
    }
    return record


def apply_pending_updates(
    reward_set: Any, run_dir: str | Path, step: int, *, rescore_steps: int = 3
) -> list[dict[str, Any]]:
    """Apply the update requests waiting in ``RUN_DIR/reward_updates`` before `step` runs.

    Call it at the start of every step (cheap when nothing waits: one directory listing and one
    small file read). The first call records version 1 of every function; after a resume it
    restores the version in force at `step`.

    Returns:
        One event per change: ``{"step", "name", "version", "status": "applied" | "rejected" |
        "restored", "function", ...}``; applied ones carry ``rescore`` (see `compare_versions`),
        rejected ones ``error``. Also appended to ``RUN_DIR/reward_versions.jsonl``
        (restorations excepted: they repeat a record already there).
    """
    run = Path(run_dir)
    records = read_versions(run)
    if not records:
        _record_initial(reward_set, run, step)
        records = read_versions(run)
    events = _restore(reward_set, records, step)
    pending_dir = run / UPDATES_DIR
    if not pending_dir.is_dir():
        return events
    for path in sorted(p for p in pending_dir.glob("*.json") if not p.name.startswith(".")):
        try:
            request = json.loads(path.read_text(encoding="utf-8"))
            updates = request["updates"]
            if not isinstance(updates, list):
                raise TypeError("updates is not a list")
        except (OSError, ValueError, KeyError, TypeError) as e:
            updates, request = [], {}
            bad = {
                "step": step,
                "status": "rejected",
                "request": path.name,
                "error": f"unreadable request: {e}",
            }
            _append(run / VERSIONS_FILE, {**bad, "at": _now()})
            events.append(bad)
        for update in updates:
            record = _apply_one(reward_set, run, step, dict(update), path.name, rescore_steps)
            record["requested_at"] = request.get("requested_at")
            _append(run / VERSIONS_FILE, record)
            events.append({k: v for k, v in record.items() if k != "spec"})
        done = pending_dir / "done"
        done.mkdir(exist_ok=True)
        os.replace(path, done / path.name)  # a move of the finished request, not a write: a plain rename
    return events


def describe_event(event: dict[str, Any]) -> str:
    """One line for a progress display, e.g. ``reward 'a' v2 applied at step 7 (re-scored 32
    completions: mean 0.41 -> 0.38, rank agreement +0.62)``."""
    name, status, step = event.get("name"), event.get("status"), event.get("step")
    if status == "rejected":
        return f"reward update for {name!r} rejected at step {step}: {event.get('error')}"
    head = f"reward {name!r} v{event.get('version')} {status} at step {step}"
    rs = event.get("rescore")
    if not rs:
        return head
    rho = rs.get("spearman_mean")
    agreement = f", rank agreement {rho:+.2f}" if rho is not None else ""
    fmt = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731
    return (
        f"{head} (re-scored {rs['n']} completions: mean {fmt(rs['mean_old'])} -> {fmt(rs['mean_new'])}"
        f"{agreement})"
    )


def version_metrics(reward_set: Any) -> dict[str, float]:
    """``{"rewards/<name>/version": v}`` for every function (log it with each step's metrics)."""
    return {f"rewards/{name}/version": float(v) for name, v in reward_set.versions.items()}
