"""Python SDK for an OpenRFT server, with the same names as the REST API::

    import openrft

    client = openrft.Client("http://127.0.0.1:8000", api_key="ork-...")
    ds = client.datasets.upload("countdown.csv")

    def format_fn(prompt, completion, example):
        return 1.0 if "<answer>" in completion else 0.0

    job = client.finetune(
        base_model="smollm2-135m-instruct",
        dataset=ds,
        reward_functions={"format": format_fn, "equation": "countdown.equation"},
        method="grpo",
        max_steps=50,
        grpo={"num_generations": 8},
    )
    for m in job.stream_metrics():
        print(m["step"], m["reward"])
    job.wait()
    client.adapters.download(job, "my-adapter/")

A YAML config runs on the server as it runs with the CLI (any method, or stages), and a comparison
runs as a job too::

    job = client.jobs.submit("examples/countdown_sft.yaml", ["max_steps=20"])
    report = client.jobs.submit("examples/countdown_compare.yaml", kind="compare")
    report.wait().download_report("compare-report/")   # report.md, report.json, accuracy.png

Reward functions given as Python callables are shipped as source (`inspect.getsource`), with the
imports and constant globals they use (`function_source`); the function's name is recorded as the
one to call. A string is a built-in name (`countdown.format`) or a registered `reward:<name>[@N]`.
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import os
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from openrft.fsutil import atomic_file

TERMINAL = ("succeeded", "failed", "cancelled")


class APIError(Exception):
    """An error answered by the server; `status` is the HTTP status, `str()` its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class JobFailed(Exception):
    """`Job.wait()` saw the job end in failed or cancelled state."""


# -- shipping a callable as source ----------------------------------------------------------------

_LITERALS = (int, float, str, bool, bytes, type(None))


def _literal(value: Any) -> bool:
    if isinstance(value, _LITERALS):
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return False


def function_source(fn: Callable[..., Any]) -> tuple[str, str]:
    """(source, function name) of a plain function, with what it needs from its module.

    Modules it uses become imports, constants become assignments, and other plain functions of
    the same module are included (recursively). Anything else raises ValueError saying what to do.
    """
    if not isinstance(fn, types.FunctionType):
        raise ValueError(f"{fn!r} is not a plain Python function; pass a `def` function or its source text")
    if fn.__name__ == "<lambda>":
        raise ValueError("a lambda cannot be shipped by name; define the reward with `def`")
    parts: dict[str, str] = {}
    header: dict[str, None] = {}
    _collect(fn, parts, header, depth=0)
    body = "\n\n\n".join(parts.values())
    head = "\n".join(header)
    return (head + "\n\n\n" if head else "") + body + "\n", fn.__name__


def _collect(fn: types.FunctionType, parts: dict[str, str], header: dict[str, None], depth: int) -> None:
    if fn.__name__ in parts or depth > 8:
        return
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise ValueError(
            f"cannot read the source of {fn.__name__} ({e}); pass the source text instead"
        ) from None
    parts[fn.__name__] = src
    cv = inspect.getclosurevars(fn)
    for name, value in {**cv.nonlocals, **cv.globals}.items():
        if isinstance(value, types.ModuleType):
            mod = value.__name__
            header[f"import {mod}" if mod == name else f"import {mod} as {name}"] = None
        elif _literal(value):
            header[f"{name} = {value!r}"] = None
        elif isinstance(value, types.FunctionType) and value.__module__ == fn.__module__:
            _collect(value, parts, header, depth + 1)
        elif getattr(value, "__module__", None) and getattr(value, "__name__", None) == name:
            module = value.__module__
            if module in ("__main__", fn.__module__):
                raise ValueError(
                    f"{fn.__name__} uses {name!r}, which cannot be shipped; "
                    "define or import it inside the function"
                )
            header[f"from {module} import {name}"] = None
        elif not hasattr(builtins, name):
            raise ValueError(
                f"{fn.__name__} uses the global {name!r} ({type(value).__name__}), which cannot be shipped; "
                "define or import it inside the function"
            )


# -- resources ------------------------------------------------------------------------------------


@dataclass
class Dataset:
    id: str
    name: str
    num_rows: int
    columns: list[str]
    sha256: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Dataset:
        return cls(d["id"], d["name"], d["num_rows"], d["columns"], d["sha256"], d)


@dataclass
class RewardFunction:
    name: str
    version: int
    function: str
    ref: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> RewardFunction:
        return cls(d["name"], d["version"], d["function"], d["ref"], d)


class Job:
    """A training job on the server; `status` and `data` are refreshed by `refresh()`."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.id: str = data["id"]
        self.data = data

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status!r}, step={self.data.get('step')})"

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def kind(self) -> str:
        """'train' (`openrft train` of its config) or 'compare' (`openrft compare`)."""
        return self.data.get("kind", "train")

    def refresh(self) -> Job:
        self.data = self.client._request("GET", f"/v1/jobs/{self.id}")
        return self

    def cancel(self) -> Job:
        self.data = self.client._request("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    def pause(self) -> Job:
        self.data = self.client._request("POST", f"/v1/jobs/{self.id}/pause")
        return self

    def resume(self) -> Job:
        self.data = self.client._request("POST", f"/v1/jobs/{self.id}/resume")
        return self

    def metrics(self, since: int = 0) -> list[dict[str, Any]]:
        return self.client._request("GET", f"/v1/runs/{self.id}/metrics", params={"since": since})["data"]

    def samples(self, step: int | None = None) -> dict[str, Any]:
        params = {} if step is None else {"step": step}
        return self.client._request("GET", f"/v1/runs/{self.id}/samples", params=params)

    def logs(self) -> str:
        return self.client._request("GET", f"/v1/jobs/{self.id}/logs")["text"]

    def events(self) -> list[dict[str, Any]]:
        return self.client._request("GET", f"/v1/jobs/{self.id}/events")["data"]

    def stream_metrics(
        self, poll_interval: float = 1.0, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield each step's metrics once, as they are written, until the job ends (or `timeout` s).

        If the job is interrupted and resumed, steps after its last checkpoint run again; they are
        not yielded a second time (the run's metrics then hold the re-run values).
        """
        last = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            page = self.client._request("GET", f"/v1/runs/{self.id}/metrics", params={"since": last})
            for row in page["data"]:
                if int(row["step"]) > last:
                    last = int(row["step"])
                    yield row
            if page["status"] in TERMINAL:
                self.refresh()
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {page['status']} after {timeout} s")
            time.sleep(poll_interval)

    def wait(self, timeout: float | None = None, poll_interval: float = 1.0, check: bool = True) -> Job:
        """Block until the job ends; raise `JobFailed` if it failed or was cancelled (unless check=False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.refresh().status not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            time.sleep(poll_interval)
        if check and self.status != "succeeded":
            raise JobFailed(f"job {self.id} {self.status}: {self.data.get('error') or ''}".rstrip(": "))
        return self

    def download_adapter(self, dest: str | Path) -> Path:
        """Download the job's final adapter (after full fine-tuning: its model) into `dest`."""
        return self.client.adapters.download(self, dest)

    def reports(self) -> list[dict[str, Any]]:
        """A comparison job's report files so far: [{name, media_type, bytes, sha256}]."""
        return self.client._request("GET", f"/v1/jobs/{self.id}/reports")["data"]

    def download_report(self, dest: str | Path) -> Path:
        """Download a comparison job's report files (report.md, report.json, accuracy.png) into
        `dest`, checking each file's sha256; returns `dest`."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.reports():
            self.client._download(f"/v1/jobs/{self.id}/reports/{f['name']}", dest, f["name"], f["sha256"])
        return dest


class _Datasets:
    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | Path, name: str | None = None) -> Dataset:
        """Upload a .csv/.jsonl/.json/.parquet file (streamed); the same bytes give the same dataset."""
        path = Path(path)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")

        data = self.client._request(
            "POST",
            "/v1/datasets",
            params={"filename": name or path.name},
            content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)},
        )
        return Dataset.from_api(data)

    def list(self) -> list[Dataset]:
        return [Dataset.from_api(d) for d in self.client._request("GET", "/v1/datasets")["data"]]

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_api(self.client._request("GET", f"/v1/datasets/{dataset_id}"))

    def preview(self, dataset: Dataset | str, limit: int = 20) -> list[dict[str, Any]]:
        ds_id = dataset.id if isinstance(dataset, Dataset) else dataset
        return self.client._request("GET", f"/v1/datasets/{ds_id}/preview", params={"limit": limit})["rows"]

    def delete(self, dataset: Dataset | str) -> None:
        ds_id = dataset.id if isinstance(dataset, Dataset) else dataset
        self.client._request("DELETE", f"/v1/datasets/{ds_id}")


class _Rewards:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(
        self,
        name: str,
        fn_or_source: Callable[..., Any] | str,
        function: str | None = None,
        tests: list[dict[str, Any]] | None = None,
    ) -> RewardFunction:
        """Register a callable (shipped as source) or source text as the next version of `name`."""
        if callable(fn_or_source):
            source, fname = function_source(fn_or_source)
            function = function or fname
        else:
            source = fn_or_source
        body = {"name": name, "source": source, "function": function, "tests": tests or []}
        return RewardFunction.from_api(self.client._request("POST", "/v1/rewards", json=body))

    def list(self) -> list[RewardFunction]:
        return [RewardFunction.from_api(d) for d in self.client._request("GET", "/v1/rewards")["data"]]

    def versions(self, name: str) -> list[RewardFunction]:
        data = self.client._request("GET", f"/v1/rewards/{name}")["versions"]
        return [RewardFunction.from_api(d) for d in data]

    def source(self, name: str, version: int) -> str:
        return self.client._request("GET", f"/v1/rewards/{name}/versions/{version}")["source"]

    def test(
        self, name: str, cases: list[dict[str, Any]] | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """Run golden cases ({completion, expected, ...}) against a version; {'passed', 'failures'}."""
        body = {"cases": cases, "version": version}
        return self.client._request("POST", f"/v1/rewards/{name}/test", json=body)


class _Jobs:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(
        self,
        config: dict[str, Any],
        name: str | None = None,
        trackers: list[str] | None = None,
        kind: str = "train",
    ) -> Job:
        """Queue a job for a config whose data and rewards name stored resources. `kind`: 'train'
        (GRPO, SFT, DPO or stages, as the config says) or 'compare' (base vs SFT vs RFT vs
        SFT-then-RFT, as its `compare` section says; `Job.download_report` gets the report)."""
        body = {"config": config, "name": name, "trackers": trackers or [], "kind": kind}
        return Job(self.client, self.client._request("POST", "/v1/jobs", json=body))

    def get(self, job_id: str) -> Job:
        return Job(self.client, self.client._request("GET", f"/v1/jobs/{job_id}"))

    def submit(
        self,
        config_path: str | Path,
        overrides: list[str] | None = None,
        name: str | None = None,
        trackers: list[str] | None = None,
        kind: str = "train",
    ) -> Job:
        """Run a local YAML config on the server as `openrft train` runs it (any method, or stages),
        or as `openrft compare` does with kind='compare': its data files are uploaded, its
        `file.py:function` rewards registered under their names, and the job created. `overrides`
        are `--set` strings ('grpo.temperature=0.9')."""
        import yaml

        from openrft.config import apply_overrides

        path = Path(config_path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the config must be a mapping of keys to values")
        apply_overrides(raw, list(overrides or []))
        raw.pop("output_dir", None)
        data = raw.get("data") or {}
        uploaded: dict[Path, str] = {}
        for key in ("train", "eval"):
            value = data.get(key)
            local = (path.parent / str(value)).resolve() if value else None
            if local is not None and local.is_file():
                if local not in uploaded:
                    uploaded[local] = self.client.datasets.upload(local).id
                data[key] = uploaded[local]
        for spec in raw.get("rewards") or []:
            target, sep, func = str(spec.get("function", "")).rpartition(":")
            if sep and target.endswith(".py"):
                source = (path.parent / target).read_text(encoding="utf-8")
                spec["function"] = self.client.rewards.create(spec["name"], source, function=func).ref
        return self.create(raw, name=name or path.stem, trackers=trackers, kind=kind)

    def list(self, status: str | None = None) -> list[Job]:
        params = {"status": status} if status else {}
        return [Job(self.client, d) for d in self.client._request("GET", "/v1/jobs", params=params)["data"]]


class _Adapters:
    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self) -> list[dict[str, Any]]:
        return self.client._request("GET", "/v1/adapters")["data"]

    def download(self, job_or_id: Job | str, dest: str | Path) -> Path:
        """Download a job's adapter (PEFT files) into `dest`, checking each file's sha256."""
        adapter_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        info = self.client._request("GET", f"/v1/adapters/{adapter_id}")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for f in info["files"]:
            self.client._download(
                f"/v1/adapters/{adapter_id}/files/{f['name']}", dest, f["name"], f["sha256"]
            )
        return dest

    def delete(self, job_or_id: Job | str) -> None:
        adapter_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        self.client._request("DELETE", f"/v1/adapters/{adapter_id}")


class _Keys:
    """Users' API keys; the admin key alone may use these (a user's key gets 403)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, user: str) -> dict[str, Any]:
        """A new key for `user`: {"id", "user", "prefix", "key", ...}; `key` is shown this once."""
        return self.client._request("POST", "/v1/keys", json={"user": user})

    def list(self) -> list[dict[str, Any]]:
        """Every key (revoked ones too), without secrets."""
        return self.client._request("GET", "/v1/keys")["data"]

    def revoke(self, key_id: str) -> dict[str, Any]:
        """Revoke a key: the server answers 401 to it from now on."""
        return self.client._request("DELETE", f"/v1/keys/{key_id}")


def _check(resp: httpx.Response, read: bool = False) -> None:
    if resp.status_code < 400:
        return
    if read:
        resp.read()
    try:
        message = resp.json()["error"]["message"]
    except Exception:
        message = resp.text[:500]
    raise APIError(resp.status_code, message)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v
    return base


class Client:
    """An OpenRFT server. `api_key` defaults to $OPENRFT_API_KEY: a user's key (sees and creates that
    user's datasets, rewards and jobs) or the admin key (sees everyone's; `client.keys` manages keys)."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60
    ) -> None:
        key = api_key or os.environ.get("OPENRFT_API_KEY")
        if not key:
            raise ValueError(
                "no API key: pass api_key= or set OPENRFT_API_KEY (the server prints it at start)"
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )
        self.datasets = _Datasets(self)
        self.rewards = _Rewards(self)
        self.jobs = _Jobs(self)
        self.adapters = _Adapters(self)
        self.keys = _Keys(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._http.request(method, path, **kwargs)
        _check(resp)
        return resp.json()

    def _download(self, url: str, dest: Path, name: str, sha256: str) -> None:
        """Stream `url` into the file `name` of `dest` atomically, checking its sha256."""
        if Path(name).name != name or name in ("", ".", ".."):
            raise APIError(500, f"the server named a file {name!r}; refusing to write it")
        digest = hashlib.sha256()
        with self._http.stream("GET", url) as resp, atomic_file(dest / name) as out:
            _check(resp, read=True)
            for chunk in resp.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha256:  # raised inside: the old file stays
                raise APIError(500, f"{name}: sha256 mismatch after download; try again")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models")["data"]

    def finetune(
        self,
        *,
        base_model: str,
        dataset: Dataset | str,
        reward_functions: dict[str, Any],
        method: str = "grpo",
        eval_dataset: Dataset | str | None = None,
        name: str | None = None,
        trackers: list[str] | None = None,
        **config: Any,
    ) -> Job:
        """Register the reward functions, then create a job; keyword arguments are RunConfig keys
        (`max_steps=50`, `grpo={"num_generations": 8}`, `data={"prompt_template": ...}`).

        `reward_functions` maps a reward name to a callable, a source string registered under that
        name, a `RewardFunction`, a built-in name or 'reward:<name>[@N]', or a dict of RewardSpec
        fields whose `function` is any of those (e.g. {"function": fn, "weight": 0.5}).
        """
        rewards = []
        for reward_name, value in reward_functions.items():
            spec = dict(value) if isinstance(value, dict) else {"function": value}
            spec["name"] = reward_name
            spec["function"] = self._reward_ref(reward_name, spec["function"])
            rewards.append(spec)
        cfg: dict[str, Any] = {
            "method": method,
            "model": {"name": base_model},
            "data": {"train": dataset.id if isinstance(dataset, Dataset) else dataset},
            "rewards": rewards,
        }
        if eval_dataset is not None:
            cfg["data"]["eval"] = eval_dataset.id if isinstance(eval_dataset, Dataset) else eval_dataset
        _deep_merge(cfg, config)
        return self.jobs.create(cfg, name=name, trackers=trackers)

    def _reward_ref(self, name: str, value: Any) -> str:
        if isinstance(value, RewardFunction):
            return value.ref
        if callable(value):
            return self.rewards.create(name, value).ref
        if isinstance(value, str) and (
            "\n" in value or value.lstrip().startswith(("def ", "async def", "import "))
        ):
            return self.rewards.create(name, value).ref
        if isinstance(value, str):
            return value
        raise TypeError(f"reward {name!r}: give a function, source text, a built-in name or 'reward:<name>'")
