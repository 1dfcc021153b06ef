"""What the routes do, as plain functions over a `Store` (no FastAPI here): saving datasets,
registering reward versions, turning a submitted config into a queued job.

Every error caused by the request raises an `openrft.errors.UserError` (the app answers 422 with
its one-line message).

References a job config may use (the server resolves them to files in the data dir):

- `data.train` / `data.eval`: a dataset id (`ds-...`) or sha256 from `POST /v1/datasets`;
- `rewards[].function`: a built-in name (`countdown.format`), or `reward:<name>` (latest version)
  or `reward:<name>@<version>` for a function registered with `POST /v1/rewards`; the version is
  pinned when the job is created;
- `lora.init_adapter`: `adapter:<job id>`, the adapter of a finished job.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from openrft.errors import ConfigError, DataError, RewardError, UserError
from openrft.jobs import queue
from openrft.server.policy import RewardPolicy
from openrft.server.store import Store

DATASET_EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".json", ".parquet")
_REWARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_REWARD_REF = re.compile(r"^reward:([A-Za-z0-9_][A-Za-z0-9_.\-]*?)(?:@v?(\d+))?$")


class NotFound(UserError):
    """A referenced resource does not exist (answered 404)."""


class Conflict(UserError):
    """The resource is in use (answered 409)."""


# -- datasets -------------------------------------------------------------------------------------


def dataset_extension(filename: str) -> str:
    """The lower-case extension of an upload's file name; DataError if it is not supported."""
    ext = Path(filename).suffix.lower()
    if ext not in DATASET_EXTENSIONS:
        raise DataError(
            f"unsupported file extension {ext or '(none)'!r}",
            file=filename,
            hint=f"upload one of: {', '.join(DATASET_EXTENSIONS)} (pass ?filename=name.ext)",
        )
    return ext


def save_dataset(store: Store, tmp_file: Path, filename: str, sha256: str, size: int) -> dict[str, Any]:
    """Validate an uploaded file (already written to `tmp_file`) and store it by its sha256."""
    from openrft.data import read_rows

    ext = dataset_extension(filename)
    named = tmp_file.parent / Path(filename).name
    os.replace(tmp_file, named)
    try:
        loaded = read_rows(named)
    except DataError as e:
        e.args = (str(e).replace(str(named), Path(filename).name),)  # the user's file name, not ours
        raise
    columns = list(dict.fromkeys(k for row in loaded.rows[:1000] for k in row))
    final = store.datasets_dir / f"{sha256}{ext}"
    if not final.exists():
        os.replace(named, final)
    else:
        named.unlink(missing_ok=True)
    return store.add_dataset(
        sha256=sha256,
        name=Path(filename).name,
        path=final,
        fmt=ext.lstrip("."),
        size=size,
        num_rows=len(loaded.rows),
        columns=columns,
    )


def preview_dataset(store: Store, ds_id: str, limit: int) -> dict[str, Any]:
    from openrft.data import read_rows

    ds = require_dataset(store, ds_id)
    rows = read_rows(ds["path"]).rows
    return {"id": ds["id"], "num_rows": len(rows), "columns": ds["columns"], "rows": rows[:limit]}


def require_dataset(store: Store, ds_id: str) -> dict[str, Any]:
    ds = store.get_dataset(ds_id)
    if ds is None:
        raise NotFound(f"dataset {ds_id!r} not found; list datasets with GET /v1/datasets")
    return ds


def delete_dataset(store: Store, ds_id: str) -> None:
    ds = require_dataset(store, ds_id)
    users = [
        j["id"]
        for j in store.list_jobs(limit=100_000)
        if j["status"] in queue.ACTIVE
        and ds["path"] in (j["config"]["data"].get("train"), j["config"]["data"].get("eval"))
    ]
    if users:
        raise Conflict(f"dataset {ds['id']} is used by unfinished jobs {users}; cancel them first")
    Path(ds["path"]).unlink(missing_ok=True)
    store.delete_dataset(ds["id"])


# -- reward functions -----------------------------------------------------------------------------


def top_level_functions(source: str, label: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise RewardError(f"{label}:{e.lineno}:{e.offset}: syntax error: {e.msg}") from None
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def create_reward(
    store: Store, name: str, source: str, function: str | None, tests: list[dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Register `source` as the next version of reward `name` (unchanged source: the same version).

    `function` is the function to call (default: the only top-level function). Golden `tests`, if
    given, must pass before the version is stored. Returns (version, created).
    """
    from openrft.rewards import GoldenCase, RewardSpec, check_function, run_golden_tests

    if not _REWARD_NAME.match(name):
        raise RewardError(
            f"reward name {name!r}: use letters, digits, '_', '.' or '-' (at most 64 characters)"
        )
    label = f"reward {name!r}"
    funcs = top_level_functions(source, label)
    if function is None:
        if len(funcs) != 1:
            raise RewardError(
                f"{label}: the source defines {funcs or 'no functions'}; say which with `function`"
            )
        function = funcs[0]
    try:
        cases = [GoldenCase.model_validate(t) for t in tests]
    except ValueError as e:
        raise RewardError(f"{label}: invalid golden test case ({e.errors()[0]['msg']})") from None  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as tmp:
        path = Path(tmp) / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        check_function(f"{path}:{function}", name=name)
        if cases:
            spec = RewardSpec(name=name, function=f"{path}:{function}", tests=cases)
            failures = run_golden_tests([spec], network_policy=RewardPolicy().network)
            if failures:
                raise RewardError(f"{label}: golden tests failed: " + "; ".join(f.message for f in failures))
    sha = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return store.add_reward_version(name, source, function, sha, [c.model_dump() for c in cases])


def require_reward(store: Store, name: str, version: int | None = None) -> dict[str, Any]:
    found = store.reward_version(name, version)
    if found is None:
        what = f"reward {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFound(f"{what} not found; register it with POST /v1/rewards")
    return found


def run_reward_tests(
    store: Store,
    name: str,
    version: int | None,
    cases: list[dict[str, Any]] | None,
    kwargs: dict[str, Any] | None = None,
    policy: RewardPolicy = RewardPolicy(),
) -> dict[str, Any]:
    """Run golden cases (given, or the version's stored ones) against a stored version; `kwargs`
    must pass the operator's `policy` (default: nothing allowed)."""
    from openrft.rewards import GoldenCase, RewardSpec, run_golden_tests

    rv = require_reward(store, name, version)
    raw = rv["tests"] if cases is None else cases
    try:
        parsed = [GoldenCase.model_validate(c) for c in raw]
    except ValueError as e:
        raise RewardError(f"reward {name!r}: invalid golden test case ({e})") from None
    if not parsed:
        raise RewardError(f"reward {name!r} v{rv['version']} has no golden cases; send `cases`")
    spec = RewardSpec(name=name, function=f"{rv['path']}:{rv['function']}", tests=parsed, kwargs=kwargs or {})
    policy.check_spec(spec)
    failures = run_golden_tests([spec], network_policy=policy.network)
    return {
        "name": name,
        "version": rv["version"],
        "cases": len(parsed),
        "passed": not failures,
        "failures": [
            {"case": f.case, "expected": f.expected, "got": f.got, "detail": f.detail} for f in failures
        ],
    }


# -- jobs -----------------------------------------------------------------------------------------


def resolve_job_config(
    store: Store, config: dict[str, Any], run_dir: Path, policy: RewardPolicy = RewardPolicy()
) -> tuple[dict[str, Any], str]:
    """Replace references by data-dir paths, validate (rewards against the operator's `policy`;
    default: no secrets, no network), and return (resolved config, dataset id)."""
    from openrft.config import load_config
    from openrft.data import read_rows, validate_rows
    from openrft.rewards import check_function

    if not isinstance(config, dict):
        raise ConfigError("config must be a JSON object (a RunConfig)")
    raw = copy.deepcopy(config)
    data = raw.get("data")
    if not isinstance(data, dict) or not data.get("train"):
        raise ConfigError(
            "config: missing data.train; give the id of an uploaded dataset (POST /v1/datasets)"
        )
    train = require_dataset_ref(store, str(data["train"]), "data.train")
    data["train"] = train["path"]
    if data.get("eval"):
        data["eval"] = require_dataset_ref(store, str(data["eval"]), "data.eval")["path"]
    for i, spec in enumerate(raw.get("rewards") or []):
        if isinstance(spec, dict) and isinstance(spec.get("function"), str):
            spec["function"] = resolve_reward_ref(store, spec["function"], f"rewards[{i}].function")
    lora = raw.get("lora")
    if isinstance(lora, dict) and lora.get("init_adapter"):
        lora["init_adapter"] = resolve_adapter_ref(store, str(lora["init_adapter"]))
    raw["output_dir"] = str(run_dir)
    cfg = load_config(None, None, **raw)
    if cfg.method != "grpo":
        raise ConfigError(f"method {cfg.method!r} is not available on the server yet; use method: grpo")
    policy.check_config(cfg)
    loaded = read_rows(cfg.data.train)
    try:
        validate_rows(
            loaded.rows,
            template=cfg.data.prompt_template,
            system_prompt=cfg.data.system_prompt,
            source=train["name"],
            lines=loaded.lines,
        )
    except DataError as e:
        e.args = (str(e).replace(str(cfg.data.train), train["name"]),)
        raise
    for spec_ in cfg.rewards:
        check_function(spec_.function, kwargs=spec_.kwargs, name=spec_.name)
    return cfg.model_dump(mode="json"), train["id"]


def require_dataset_ref(store: Store, ref: str, where: str) -> dict[str, Any]:
    ds = store.get_dataset(ref.removeprefix("dataset:"))
    if ds is None:
        raise ConfigError(
            f"config: {where} = {ref!r} is not an uploaded dataset; upload the file with POST /v1/datasets "
            "(SDK: client.datasets.upload) and use its id"
        )
    return ds


def resolve_reward_ref(store: Store, function: str, where: str) -> str:
    """`reward:<name>[@N]` -> '<path>:<function>'; built-in names unchanged; other forms refused."""
    m = _REWARD_REF.match(function.strip())
    if m:
        version = int(m.group(2)) if m.group(2) else None
        rv = store.reward_version(m.group(1), version)
        if rv is None:
            raise ConfigError(
                f"config: {where} = {function!r}: no such registered reward; "
                "register it with POST /v1/rewards"
            )
        return f"{rv['path']}:{rv['function']}"
    if ":" in function:
        raise ConfigError(
            f"config: {where} = {function!r}: the server runs only built-in or registered rewards; register "
            "the code with POST /v1/rewards (SDK: client.rewards.create) and write 'reward:<name>'"
        )
    return function


def resolve_adapter_ref(store: Store, ref: str) -> str:
    job_id = ref.removeprefix("adapter:")
    job = store.get_job(job_id)
    if job is None or not (Path(job["run_dir"]) / "adapter" / "adapter_config.json").is_file():
        raise ConfigError(
            f"config: lora.init_adapter = {ref!r}: no adapter of that job; write 'adapter:<job id>'"
        )
    return str(Path(job["run_dir"]) / "adapter")


def create_job(
    store: Store,
    config: dict[str, Any],
    name: str | None = None,
    trackers: list[str] | None = None,
    policy: RewardPolicy = RewardPolicy(),
) -> dict[str, Any]:
    """Validate and queue a job (nothing is queued if anything is wrong, or if its rewards ask for
    more than the operator's `policy` allows)."""
    from openrft.tracking.sinks import TRACKERS

    for t in trackers or []:
        if t not in TRACKERS:
            raise ConfigError(f"unknown tracker {t!r}; use any of {list(TRACKERS)}")
    job_id = queue.new_job_id()
    resolved, ds_id = resolve_job_config(store, config, store.runs_dir / job_id, policy)
    return queue.enqueue(
        store, config=resolved, name=name, trackers=trackers, dataset_id=ds_id, job_id=job_id
    )


def require_job(store: Store, job_id: str) -> dict[str, Any]:
    job = store.get_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found; list jobs with GET /v1/jobs")
    return job


# -- adapters -------------------------------------------------------------------------------------

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_info(job: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter of a job (files with sizes and sha256), or None if it has none."""
    from openrft.data import file_sha256

    folder = Path(job["run_dir"]) / "adapter"
    if not (folder / "adapter_config.json").is_file():
        return None
    files = [
        {"name": f.name, "bytes": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(folder.iterdir())
        if f.is_file()
    ]
    return {
        "id": job["id"],
        "job_id": job["id"],
        "name": job["name"],
        "base_model": job["base_model"],
        "created_at": folder.stat().st_mtime,
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
    }


def delete_adapter(store: Store, job_id: str) -> None:
    job = require_job(store, job_id)
    folder = Path(job["run_dir"]) / "adapter"
    if not folder.is_dir():
        raise NotFound(f"job {job_id} has no adapter")
    if job["status"] in ("queued", "running"):
        raise Conflict(f"job {job_id} is {job['status']}; cancel it before deleting its adapter")
    shutil.rmtree(folder)
