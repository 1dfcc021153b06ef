"""What the routes do, as plain functions over a `Store` (no FastAPI here): saving datasets,
registering reward versions, turning a submitted config into a queued job.

Every error caused by the request raises an `openrft.errors.UserError` (the app answers 422 with
its one-line message).

Every function that reads or writes a user's resources takes the `Caller` (openrft.server.accounts):
what it creates belongs to the caller, and another user's resource is answered as absent
(`NotFound`, 404; in a job config, a `ConfigError` as for a missing one) unless the caller is the
admin, who sees everything.

References a job config may use (the server resolves them to files in the data dir):

- `data.train` / `data.eval`: a dataset id (`ds-...`) or sha256 from `POST /v1/datasets`; its rows
  are checked for what the method needs (prompts; SFT targets; DPO `chosen`/`rejected`), for every
  stage of a chained config and every method of a comparison;
- `rewards[].function`: a built-in name (`countdown.format`), or `reward:<name>` (latest version)
  or `reward:<name>@<version>` for a function registered with `POST /v1/rewards`; the version is
  pinned when the job is created;
- `lora.init_adapter`: `adapter:<job id>`, the adapter of a finished job;
- `model.name` (and an LLM judge's `local_model`): a known model name, or a model directory under
  one the operator allowed (`ServerSettings.allowed_model_dirs`); nothing else names a server path.

Responses write data-dir paths relative to the data dir (`relativise`).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openrft.data.loading import LoadedRows, nesting_exceeds
from openrft.errors import ConfigError, Conflict, DataError, NotFound, RewardError
from openrft.jobs import queue
from openrft.server.accounts import Caller
from openrft.server.policy import RewardPolicy
from openrft.server.store import ADMIN, Store

if TYPE_CHECKING:
    from openrft.config import RunConfig

DATASET_EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".json", ".parquet")
MAX_FILENAME = 255
MAX_CONFIG_NESTING = 32
MAX_VERSION = 2**63 - 1  # SQLite's largest integer
_REWARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_REWARD_REF = re.compile(r"reward:([A-Za-z0-9_][A-Za-z0-9_.\-]*?)(?:@v?(\d+))?")


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


def upload_name(filename: str) -> str:
    """The name an upload is shown under (its last path component); DataError if it is unusable."""
    name = Path(filename).name
    if not name or len(name) > MAX_FILENAME or any(ch < " " or ch == "\x7f" for ch in name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise DataError(
            f"unusable file name {shown!r}",
            file="?filename",
            hint=f"give 1 to {MAX_FILENAME} characters without control characters, e.g. ?filename=rows.jsonl",
        )
    dataset_extension(name)
    return name


def save_dataset(
    store: Store, caller: Caller, tmp_file: Path, filename: str, sha256: str, size: int
) -> dict[str, Any]:
    """Validate an uploaded file (already written to `tmp_file`, alone in its own temp folder) and
    store it by its sha256 as the caller's dataset (users who upload the same bytes share the file,
    each with their own row): the move into the datasets folder and the row are one transaction."""
    name = upload_name(filename)
    ext = dataset_extension(name)
    named = tmp_file.with_name(f"upload{ext}")
    os.replace(tmp_file, named)  # a rename of the finished upload in its own folder, not a write
    loaded = read_stored_rows(named, name)
    columns = list(dict.fromkeys(k for row in loaded.rows[:1000] for k in row))
    return store.add_dataset(
        owner=caller.name,
        sha256=sha256,
        name=name,
        path=store.datasets_dir / f"{sha256}{ext}",
        fmt=ext.lstrip("."),
        size=size,
        num_rows=len(loaded.rows),
        columns=columns,
        upload=named,
    )


def read_stored_rows(path: str | Path, name: str) -> LoadedRows:
    """`read_rows` of a file in the data dir; errors name the user's file `name`, not the server path."""
    from openrft.data import read_rows

    if not Path(path).is_file():
        raise NotFound(f"dataset {name!r} was deleted; upload it again")
    try:
        return read_rows(path)
    except DataError as e:
        e.args = (str(e).replace(str(path), name),)
        raise


def preview_dataset(store: Store, caller: Caller, ds_id: str, limit: int) -> dict[str, Any]:
    ds = require_dataset(store, caller, ds_id)
    rows = read_stored_rows(ds["path"], ds["name"]).rows
    return {"id": ds["id"], "num_rows": len(rows), "columns": ds["columns"], "rows": rows[:limit]}


def require_dataset(store: Store, caller: Caller, ds_id: str) -> dict[str, Any]:
    ds = store.get_dataset(ds_id, caller.sees)
    if ds is None:
        raise NotFound(f"dataset {ds_id!r} not found; list datasets with GET /v1/datasets")
    return ds


def delete_dataset(store: Store, caller: Caller, ds_id: str) -> None:
    """Delete the caller's dataset (409 while one of their unfinished jobs reads its file); the file
    goes too unless another user's dataset or unfinished job still uses the same bytes."""
    ds = require_dataset(store, caller, ds_id)
    users = _active_jobs_reading(store, ds["path"], caller.sees)
    if users:
        raise Conflict(f"dataset {ds['id']} is used by unfinished jobs {users}; cancel them first")
    store.delete_dataset(ds["id"], keep_file=bool(_active_jobs_reading(store, ds["path"], None)))


def _active_jobs_reading(store: Store, path: str, owner: str | None) -> list[str]:
    return [
        j["id"]
        for j in store.list_jobs(limit=100_000, owner=owner)
        if j["status"] in queue.ACTIVE
        and path in (j["config"]["data"].get("train"), j["config"]["data"].get("eval"))
    ]


# -- reward functions -----------------------------------------------------------------------------


def top_level_functions(source: str, label: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise RewardError(f"{label}:{e.lineno}:{e.offset}: syntax error: {e.msg}") from None
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def create_reward(
    store: Store,
    caller: Caller,
    name: str,
    source: str,
    function: str | None,
    tests: list[dict[str, Any]],
    policy: RewardPolicy = RewardPolicy(),
) -> tuple[dict[str, Any], bool]:
    """Register `source` as the next version of the caller's reward `name` (unchanged source: the
    same version). Reward names are per user: two users' `mine` are two rewards.

    `function` is the function to call (default: the only top-level function). Golden `tests`, if
    given, must pass (in the sandbox, under the operator's `policy`) before the version is stored;
    `RewardCodeRefused` where this server may not run tenants' code. Returns (version, created).
    """
    from openrft.rewards import GoldenCase, RewardSpec, check_function, run_golden_tests

    if not _REWARD_NAME.fullmatch(name):
        raise RewardError(
            f"reward name {name!r}: use letters, digits, '_', '.' or '-' (at most 64 characters)"
        )
    label = f"reward {name!r}"
    policy.check_code(label)
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
            failures = run_golden_tests([spec], network_policy=policy.network, isolation=policy.isolation)
            if failures:
                raise RewardError(f"{label}: golden tests failed: " + "; ".join(f.message for f in failures))
    sha = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return store.add_reward_version(
        name, source, function, sha, [c.model_dump() for c in cases], owner=caller.name
    )


def reward_owner(store: Store, caller: Caller, name: str, owner: str | None = None) -> str:
    """Whose reward `name` the caller means: a user's own; for the admin, `owner` if given, else the
    admin's own, else the one user who has a reward of that name (several: Conflict)."""
    if not caller.admin:
        if owner not in (None, caller.name):
            raise NotFound(f"reward {name!r} not found; register it with POST /v1/rewards")
        return caller.name
    if owner is not None:
        return owner
    owners = store.reward_owners(name)
    if ADMIN in owners or not owners:
        return ADMIN
    if len(owners) > 1:
        raise Conflict(f"reward {name!r} belongs to several users ({', '.join(owners)}); add ?owner=<user>")
    return owners[0]


def stored_reward(store: Store, name: str, version: int | None, owner: str) -> dict[str, Any] | None:
    """`owner`'s reward version row (the latest if `version` is None); None for versions SQLite
    cannot hold."""
    if version is not None and not 0 <= version <= MAX_VERSION:
        return None
    return store.reward_version(name, version, owner)


def require_reward(
    store: Store, caller: Caller, name: str, version: int | None = None, owner: str | None = None
) -> dict[str, Any]:
    found = stored_reward(store, name, version, reward_owner(store, caller, name, owner))
    if found is None:
        what = f"reward {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFound(f"{what} not found; register it with POST /v1/rewards")
    return found


def reward_versions(
    store: Store, caller: Caller, name: str, owner: str | None = None
) -> list[dict[str, Any]]:
    """Every version of a reward the caller sees, oldest first (none: NotFound)."""
    versions = store.reward_versions(name, reward_owner(store, caller, name, owner))
    if not versions:
        raise NotFound(f"reward {name!r} not found; register it with POST /v1/rewards")
    return versions


def run_reward_tests(
    store: Store,
    caller: Caller,
    name: str,
    version: int | None,
    cases: list[dict[str, Any]] | None,
    kwargs: dict[str, Any] | None = None,
    owner: str | None = None,
    policy: RewardPolicy = RewardPolicy(),
) -> dict[str, Any]:
    """Run golden cases (given, or the version's stored ones) against a stored version; `kwargs`
    must pass the operator's `policy` (default: nothing allowed)."""
    from openrft.rewards import GoldenCase, RewardSpec, run_golden_tests

    rv = require_reward(store, caller, name, version, owner)
    raw = rv["tests"] if cases is None else cases
    try:
        parsed = [GoldenCase.model_validate(c) for c in raw]
    except ValueError as e:
        raise RewardError(f"reward {name!r}: invalid golden test case ({e})") from None
    if not parsed:
        raise RewardError(f"reward {name!r} v{rv['version']} has no golden cases; send `cases`")
    spec = RewardSpec(name=name, function=f"{rv['path']}:{rv['function']}", tests=parsed, kwargs=kwargs or {})
    policy.check_spec(spec)
    failures = run_golden_tests([spec], network_policy=policy.network, isolation=policy.isolation)
    result = {
        "name": name,
        "version": rv["version"],
        "cases": len(parsed),
        "passed": not failures,
        "failures": [
            {"case": f.case, "expected": f.expected, "got": f.got, "detail": f.detail} for f in failures
        ],
    }
    return relativise(result, store.root)


# -- jobs -----------------------------------------------------------------------------------------


def resolve_job_config(
    store: Store,
    caller: Caller,
    config: dict[str, Any],
    run_dir: Path,
    model_dirs: Sequence[Path] = (),
    policy: RewardPolicy = RewardPolicy(),
    kind: str = "train",
) -> tuple[dict[str, Any], str]:
    """Replace references (to the caller's resources) by data-dir paths, validate (rewards against
    the operator's `policy`; default: no secrets, no network), and return (resolved config,
    dataset id).

    `model_dirs`: the directories (besides the known model names) that `model.name` may name.
    `kind`: 'train' (the config's method or stages) or 'compare' (`openrft compare` of the config).
    """
    from openrft.config import load_config
    from openrft.rewards import check_function

    if not isinstance(config, dict):
        raise ConfigError("config must be a JSON object (a RunConfig)")
    if nesting_exceeds(config, MAX_CONFIG_NESTING):
        raise ConfigError(f"config is nested more than {MAX_CONFIG_NESTING} levels deep; send a RunConfig")
    raw = copy.deepcopy(config)
    data = raw.get("data")
    if not isinstance(data, dict) or not data.get("train"):
        raise ConfigError(
            "config: missing data.train; give the id of an uploaded dataset (POST /v1/datasets)"
        )
    train = require_dataset_ref(store, caller, str(data["train"]), "data.train")
    data["train"] = train["path"]
    if data.get("eval"):
        data["eval"] = require_dataset_ref(store, caller, str(data["eval"]), "data.eval")["path"]
    for i, spec in enumerate(raw.get("rewards") or []):
        if isinstance(spec, dict) and isinstance(spec.get("function"), str):
            spec["function"] = resolve_reward_ref(store, caller, spec["function"], f"rewards[{i}].function")
    lora = raw.get("lora")
    if isinstance(lora, dict) and lora.get("init_adapter"):
        lora["init_adapter"] = resolve_adapter_ref(store, caller, str(lora["init_adapter"]))
    raw["output_dir"] = str(run_dir)
    cfg = load_config(None, None, **raw)
    check_server_paths(cfg, model_dirs)
    runs = compare_configs(cfg, model_dirs) if kind == "compare" else recipe_configs(cfg)
    policy.check_config(cfg)
    for run in runs if kind == "compare" else []:
        if run.rewards != cfg.rewards:  # set by compare.sft_overrides / rft_overrides
            policy.check_specs(run.rewards, f"compare overrides ({run.method}): rewards")
    loaded = read_stored_rows(cfg.data.train, train["name"])
    try:
        for run in runs:
            check_rows(run, loaded, train["name"])
    except DataError as e:
        e.args = (str(e).replace(str(cfg.data.train), train["name"]),)
        raise
    for spec_ in {s.model_dump_json(): s for run in runs for s in run.rewards}.values():
        check_function(spec_.function, kwargs=spec_.kwargs, name=spec_.name)
    # a chained config has no top-level method (each stage has its own): keep it unset
    return cfg.model_dump(mode="json", exclude={"method"} if cfg.stages else None), train["id"]


def recipe_configs(cfg: RunConfig) -> list[RunConfig]:
    """The configs a training job runs: the config itself, or each of its stages'."""
    from openrft.config import stage_config

    return [stage_config(cfg, i) for i in range(len(cfg.stages))] if cfg.stages else [cfg]


def compare_configs(cfg: RunConfig, model_dirs: Sequence[Path]) -> list[RunConfig]:
    """The configs a comparison job trains (one per method, `sft_rft` as its two stages), after
    the checks `compare` itself makes first and `check_server_paths` on each (its overrides may not
    swap the job's data, adapter, output, model or reward paths)."""
    from openrft.evaluation.compare import METHODS, method_config

    if not cfg.rewards:
        raise ConfigError("config: a comparison needs `rewards` (every model is scored with them)")
    if cfg.stages:
        raise ConfigError("config: a comparison builds its own stages; remove `stages` from the config")
    unknown = [m for m in cfg.compare.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"config: compare.methods {unknown}: choose from {', '.join(METHODS)}")
    out = []
    for method in cfg.compare.methods:
        for run in recipe_configs(method_config(cfg, method)):
            where = f"compare.{'sft' if run.method == 'sft' else 'rft'}_overrides ({method})"
            _check_derived(cfg, run, where, model_dirs)
            out.append(run)
    return out


def check_rows(cfg: RunConfig, loaded: LoadedRows, name: str) -> None:
    """The training rows as `cfg`'s recipe reads them, without a model: every row renders a prompt;
    SFT rows have a target completion (a `completion` column or a `messages` chat, unless a built-in
    writer such as `countdown.demonstration` writes the targets in the job); DPO rows `chosen` and
    `rejected`. Errors name the file as `name`."""
    from openrft.data import validate_rows
    from openrft.data.targets import implied_completion_fn, preference_texts, sft_rows

    rows, lines = loaded.rows, loaded.lines
    if cfg.method == "dpo":
        preference_texts(rows, name, lines)
    elif cfg.method == "sft" and implied_completion_fn(cfg) is None:
        targets = sft_rows(cfg, rows, name, lines)
        rows = [r.row for r in targets]
        lines = [r.line for r in targets] if lines is not None else None
    validate_rows(
        rows,
        template=cfg.data.prompt_template,
        system_prompt=cfg.data.system_prompt,
        source=name,
        lines=lines,
    )


def require_dataset_ref(store: Store, caller: Caller, ref: str, where: str) -> dict[str, Any]:
    ds = store.get_dataset(ref.removeprefix("dataset:"), caller.sees)
    if ds is None:
        raise ConfigError(
            f"config: {where} = {ref!r} is not an uploaded dataset; upload the file with POST /v1/datasets "
            "(SDK: client.datasets.upload) and use its id"
        )
    return ds


def resolve_reward_ref(store: Store, caller: Caller, function: str, where: str) -> str:
    """`reward:<name>[@N]` -> '<path>:<function>'; built-in names unchanged; other forms refused."""
    m = _REWARD_REF.fullmatch(function.strip())
    if m:
        digits = m.group(2)
        version = None if not digits else int(digits) if len(digits) <= 19 else MAX_VERSION + 1
        try:
            owner = reward_owner(store, caller, m.group(1))
        except Conflict as e:
            raise ConfigError(f"config: {where} = {function!r}: {e}") from None
        rv = stored_reward(store, m.group(1), version, owner)
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


def resolve_adapter_ref(store: Store, caller: Caller, ref: str) -> str:
    job_id = ref.removeprefix("adapter:")
    job = store.get_job(job_id, caller.sees)
    if job is None or not (Path(job["run_dir"]) / "adapter" / "adapter_config.json").is_file():
        raise ConfigError(
            f"config: lora.init_adapter = {ref!r}: no adapter of that job; write 'adapter:<job id>'"
        )
    return str(Path(job["run_dir"]) / "adapter")


def check_server_paths(cfg: RunConfig, model_dirs: Sequence[Path]) -> None:
    """Refuse config values that would make the server read files a tenant names: a model outside
    the known names and `model_dirs`, completion functions from files, and stage overrides that
    swap the job's resolved data, adapter, output or reward paths. Sets `cfg.model.name` to the
    resolved directory when it is one."""
    from openrft.config import stage_config

    cfg.model.name = _check_run_paths(cfg, "", model_dirs)
    for i in range(len(cfg.stages)):
        _check_derived(cfg, stage_config(cfg, i), f"stages[{i}].overrides", model_dirs)


def _check_derived(cfg: RunConfig, derived: RunConfig, where: str, model_dirs: Sequence[Path]) -> None:
    """A config made from the job's by overrides (a stage, a compared method) keeps the job's data,
    adapter, output and reward paths, and names only allowed models and built-in writers."""
    _check_run_paths(derived, f"{where}: ", model_dirs)
    for key in ("data.train", "data.eval", "lora.init_adapter", "output_dir"):
        if _dotted(derived, key) != _dotted(cfg, key):
            raise ConfigError(f"config: {where} sets {key}; on the server it must be the job's")
    functions = {r.function for r in cfg.rewards}
    for spec in derived.rewards:
        if spec.function not in functions and ":" in spec.function:
            raise ConfigError(
                f"config: {where} sets rewards with function {spec.function!r}; on the server only the "
                "job's rewards or built-in ones"
            )


def _dotted(cfg: RunConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_run_paths(cfg: RunConfig, where: str, model_dirs: Sequence[Path]) -> str:
    """Check one (stage) config's path-valued fields; returns the model name to use."""
    from openrft.config import SFT_COMPLETION_BUILTINS

    for i, spec in enumerate(cfg.rewards):
        local = spec.kwargs.get("local_model")
        if local is not None:
            allowed_model(str(local), f"{where}rewards[{i}].kwargs.local_model", model_dirs)
    fn = cfg.sft.completion_fn
    if fn is not None and fn not in SFT_COMPLETION_BUILTINS:
        raise ConfigError(
            f"config: {where}sft.completion_fn = {fn!r}: the server runs only the built-in completion "
            f"writers ({', '.join(SFT_COMPLETION_BUILTINS)})"
        )
    return allowed_model(cfg.model.name, f"{where}model.name", model_dirs)


def allowed_model(name: str, where: str, model_dirs: Sequence[Path]) -> str:
    """`name` if it is a known model, the resolved directory if it lies under one of `model_dirs`;
    otherwise ConfigError, with the same message whether or not such a path exists."""
    from openrft.models.registry import KNOWN_MODELS

    if name in KNOWN_MODELS:
        return name
    resolved = _resolved_under(name, model_dirs)
    if resolved is None:
        raise ConfigError(
            f"config: {where} = {name!r} is not a model this server offers; use one of "
            f"{', '.join(KNOWN_MODELS)} or a directory the operator allowed "
            "(openrft server --allow-model-dir)"
        )
    if not (resolved / "config.json").is_file():
        raise ConfigError(f"config: {where} = {name!r}: not a model directory (no config.json)")
    return str(resolved)


def _resolved_under(name: str, dirs: Sequence[Path]) -> Path | None:
    """The absolute path `name` resolved (symlinks too) if it lies under one of `dirs`, else None."""
    if "\x00" in name or not Path(name).is_absolute():
        return None
    try:
        resolved = Path(name).resolve()
        return resolved if any(resolved.is_relative_to(Path(d).resolve()) for d in dirs) else None
    except (OSError, ValueError, RuntimeError):
        return None


def relativise(value: Any, root: Path) -> Any:
    """`value` (str, list, dict) with every absolute path under the data dir `root` made relative
    to it (`<root>/runs/x` -> `runs/x`), so responses do not show where the server keeps files."""
    pattern = re.compile(re.escape(str(root)) + r"(?:/|(?![\w.\-]))")

    def fix(item: Any) -> Any:
        if isinstance(item, str):
            return pattern.sub(lambda m: "" if m.group(0).endswith("/") else ".", item)
        if isinstance(item, dict):
            return {k: fix(v) for k, v in item.items()}
        if isinstance(item, list):
            return [fix(v) for v in item]
        return item

    return fix(value)


def create_job(
    store: Store,
    caller: Caller,
    config: dict[str, Any],
    name: str | None = None,
    trackers: list[str] | None = None,
    model_dirs: Sequence[Path] = (),
    policy: RewardPolicy = RewardPolicy(),
    kind: str = "train",
) -> dict[str, Any]:
    """Validate and queue a job of the caller (nothing is queued if anything is wrong, or if its
    rewards ask for more than the operator's `policy` allows). `kind`: 'train' or 'compare'."""
    from openrft.tracking.sinks import TRACKERS

    for t in trackers or []:
        if t not in TRACKERS:
            raise ConfigError(f"unknown tracker {t!r}; use any of {list(TRACKERS)}")
    if kind not in queue.KINDS:
        raise ConfigError(f"unknown job kind {kind!r}; use one of {', '.join(queue.KINDS)}")
    job_id = queue.new_job_id()
    resolved, ds_id = resolve_job_config(
        store, caller, config, store.runs_dir / job_id, model_dirs, policy, kind
    )
    return queue.enqueue(
        store,
        config=resolved,
        name=name,
        trackers=trackers,
        dataset_id=ds_id,
        job_id=job_id,
        owner=caller.name,
        kind=kind,
    )


def require_job(store: Store, caller: Caller, job_id: str) -> dict[str, Any]:
    job = store.get_job(job_id, caller.sees)
    if job is None:
        raise NotFound(f"job {job_id!r} not found; list jobs with GET /v1/jobs")
    return job


# -- adapters -------------------------------------------------------------------------------------

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def artifact_dir(run_dir: str | Path) -> Path | None:
    """What a finished training job produced (`openrft.engine.train.final_artifact`): the LoRA
    adapter folder (for stages, the top-level copy of the last stage's), or the whole model after
    full fine-tuning; None if it has neither (yet)."""
    from openrft.engine.train import final_artifact

    folder = final_artifact(Path(run_dir))
    marker = "adapter_config.json" if folder.name == "adapter" else "config.json"
    return folder if (folder / marker).is_file() else None


def adapter_info(job: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter (or full model) of a job: files with sizes and sha256; None if it has none."""
    from openrft.data import file_sha256

    folder = artifact_dir(job["run_dir"])
    if folder is None:
        return None
    files = [
        {"name": f.name, "bytes": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(folder.iterdir())
        if f.is_file()
    ]
    return {
        "id": job["id"],
        "job_id": job["id"],
        "owner": job.get("owner"),
        "name": job["name"],
        "base_model": job["base_model"],
        "kind": folder.name,
        "created_at": folder.stat().st_mtime,
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
    }


def list_adapters(store: Store, caller: Caller) -> list[dict[str, Any]]:
    """The adapters of the caller's jobs (the admin: everyone's), newest first."""
    infos = (adapter_info(job) for job in store.list_jobs(None, 100_000, caller.sees))
    return [info for info in infos if info is not None]


def delete_adapter(store: Store, caller: Caller, job_id: str) -> None:
    job = require_job(store, caller, job_id)
    folder = artifact_dir(job["run_dir"])
    if folder is None:
        raise NotFound(f"job {job_id} has no adapter")
    if job["status"] in ("queued", "running"):
        raise Conflict(f"job {job_id} is {job['status']}; cancel it before deleting its adapter")
    shutil.rmtree(folder)


# -- comparison reports ---------------------------------------------------------------------------

# What `openrft compare` writes for people to read (the rest of its folder is data and runs).
REPORT_FILES = {"report.md": "text/markdown", "report.json": "application/json", "accuracy.png": "image/png"}


def report_folder(store: Store, caller: Caller, job_id: str) -> Path:
    """Where the caller's job keeps its comparison report (only a comparison job writes one)."""
    from openrft.jobs.child import COMPARE_DIR

    return Path(require_job(store, caller, job_id)["run_dir"]) / COMPARE_DIR


def report_bytes(store: Store, path: Path) -> bytes:
    """A report file as served: text with data-dir paths made relative (as in every response)."""
    data = path.read_bytes()
    if REPORT_FILES[path.name].startswith("image/"):
        return data
    return relativise(data.decode("utf-8", "replace"), store.root).encode("utf-8")


def list_reports(store: Store, caller: Caller, job_id: str) -> list[dict[str, Any]]:
    """The report files a comparison job has written so far (none for a training job): name,
    media type, bytes, sha256."""
    folder = report_folder(store, caller, job_id)
    out = []
    for name, media in REPORT_FILES.items():
        if (folder / name).is_file():
            data = report_bytes(store, folder / name)
            out.append(
                {
                    "name": name,
                    "media_type": media,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    return out


def report_file(store: Store, caller: Caller, job_id: str, name: str) -> tuple[bytes, str]:
    """(content, media type) of one report file; only the names in REPORT_FILES are served."""
    folder = report_folder(store, caller, job_id)
    if name not in REPORT_FILES or not (folder / name).is_file():
        raise NotFound(
            f"job {job_id} has no report file {name!r} (only a comparison job writes them); "
            f"list them with GET /v1/jobs/{job_id}/reports"
        )
    return report_bytes(store, folder / name), REPORT_FILES[name]
