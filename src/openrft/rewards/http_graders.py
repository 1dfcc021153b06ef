"""Graders that ask another model or service: an LLM judge and a remote (HTTP) grader.

Both run in reward workers like any reward. They need the network, so their specs get
``allow_network: true`` by default (`network_defaults`): such a worker keeps the host's network
namespace (only functions *without* network get a fresh, empty one), so a judge served on the
trainer machine's ``127.0.0.1`` is reachable.

**API keys.** Workers start with a scrubbed environment. The spec names the variable
(``api_key_env`` for the judge, ``auth_env`` for the remote grader); the trainer passes that one
variable, and no other, into the workers of that function (`secret_env_names`, `Profile.env`).

**Outbound policy.** On a server, the job's graders connect only where the operator allows
(`openrft.rewards.url_guard`): allow-listed hosts, checked after DNS resolution, pinned to the
checked address. `openrft train` on your own machine sets no policy.

Example (YAML)::

    rewards:
      - name: polite
        function: llm_judge
        kwargs:
          rubric: "10 = polite and answers {question}; 0 = rude or off topic."
          url: http://127.0.0.1:8000/v1          # any OpenAI-compatible server
          model: qwen2.5-7b-instruct
          api_key_env: JUDGE_API_KEY             # optional
          min_score: 0
          max_score: 10
          normalize: true                        # return (score - min) / (max - min)
      - name: lambda
        function: remote
        kwargs:
          url: https://abc.lambda-url.us-east-1.on.aws/
          auth_env: GRADER_TOKEN                 # sent as "Authorization: Bearer $GRADER_TOKEN"
          batch_size: 32
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openrft.rewards.url_guard import NetworkPolicy, client_options

JUDGE_SYSTEM = (
    "You are a careful, strict grader. Judge the response against the rubric only. Think briefly if you "
    "need to, then end your reply with a final line of the form `Score: N`, where N is a number from "
    "{min_score:g} to {max_score:g}."
)

_JSON_OBJ = re.compile(r"\{[^{}]*\}")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_TAG = re.compile(rf"<score>\s*({_NUM})\s*</score>", re.IGNORECASE)
_LABELED = re.compile(
    rf"\b(?:score|rating|grade)\b[\s*_]*(?:\([^)]*\))?(?:\s+(?:is|of))?[\s*_]*[:=]?[\s*_]*({_NUM})"
    rf"(?:\s*(?:/|out\s+of)\s*({_NUM}))?",
    re.IGNORECASE,
)
_BARE = re.compile(rf"^({_NUM})(?:\s*(?:/|out\s+of)\s*({_NUM}))?$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class GraderHTTPError(RuntimeError):
    """The endpoint failed (after retries) or answered something unusable."""


# ----------------------------------------------------------------------------------------------
# Pure helpers: score parsing and the judge's messages
# ----------------------------------------------------------------------------------------------


def _scaled(value: float, denominator: float | None, min_score: float, max_score: float) -> float:
    """A "N/D" score on the declared scale: as is when D == max_score, else rescaled."""
    if denominator is None or denominator == max_score:
        return value
    if denominator <= 0:
        raise ValueError(f"judge score {value:g}/{denominator:g} has a non-positive denominator")
    return min_score + value / denominator * (max_score - min_score)


def _json_score(text: str) -> float | None:
    candidates = [text.strip()]
    candidates += [m.group(0) for m in reversed(list(_JSON_OBJ.finditer(text)))]
    for raw in candidates:
        raw = raw.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
        if not raw.startswith("{"):
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if str(key).lower() in ("score", "rating", "grade"):
                if isinstance(value, bool):
                    return None
                if isinstance(value, int | float):
                    return float(value)
                if isinstance(value, str) and re.fullmatch(_NUM, value.strip()):
                    return float(value)
    return None


def parse_score(text: str, min_score: float = 0.0, max_score: float = 10.0) -> float:
    """The score in a judge's answer, checked against [min_score, max_score].

    Understood, first match wins: JSON with a ``score`` key (``{"score": 7}``, also inside text
    or a code fence); ``<score>7</score>``; the last ``Score: 7`` / ``Rating = 4/5`` /
    ``**Score:** 7 out of 10``; an answer that is only a number (``7``, ``7/10``). A fraction
    whose denominator is not ``max_score`` is rescaled onto [min_score, max_score].

    Raises:
        ValueError: no score found, or the score is outside the declared range (both are
            counted as user errors of the reward).

    >>> parse_score("The answer is helpful.\\nScore: 7/10")
    7.0
    >>> parse_score('{"score": 3, "reason": "ok"}', 1, 5)
    3.0
    >>> parse_score("4/5", 0, 10)
    8.0
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the judge's answer is empty; no score to parse")
    value = _json_score(text)
    if value is None:
        found: tuple[str, str | None] | None = None
        tag = _TAG.findall(text)
        if tag:
            found = (tag[-1], None)
        else:
            labeled = _LABELED.findall(text)
            if labeled:
                found = (labeled[-1][0], labeled[-1][1] or None)
            else:
                bare = _BARE.match(text.strip().strip("*_`").strip().rstrip("."))
                if bare:
                    found = (bare.group(1), bare.group(2))
        if found is None:
            short = " ".join(text.split())
            short = short if len(short) <= 160 else short[:157] + "..."
            raise ValueError(
                f"could not parse a score from the judge's answer {short!r}; ask for 'Score: N' in the rubric"
            )
        value = _scaled(float(found[0]), float(found[1]) if found[1] else None, min_score, max_score)
    if not math.isfinite(value) or not min_score <= value <= max_score:
        raise ValueError(
            f"judge score {value:g} is outside the declared range [{min_score:g}, {max_score:g}]"
        )
    return value


def fill_placeholders(text: str, values: dict[str, Any]) -> str:
    """Replace ``{name}`` for the names in `values`; other braces are left alone (JSON stays JSON).

    >>> fill_placeholders('answer {answer}; json {"a": 1}; {missing}', {"answer": 42})
    'answer 42; json {"a": 1}; {missing}'
    """
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


def judge_messages(
    rubric: str,
    prompt: str,
    completion: str,
    example: dict[str, Any],
    min_score: float,
    max_score: float,
    reference_column: str | None = None,
) -> list[dict[str, str]]:
    """The chat messages sent to the judge. ``{column}`` in the rubric is filled from the row
    (and ``{prompt}``, ``{completion}``); `reference_column` adds that column as a reference."""
    values = {**example, "prompt": prompt, "completion": completion}
    parts = [f"## Rubric\n{fill_placeholders(rubric, values)}", f"## Prompt\n{prompt}"]
    if reference_column is not None:
        if reference_column not in example:
            raise KeyError(
                f"the example has no column {reference_column!r} (columns: {sorted(example)}); "
                "fix `reference_column` in the judge's kwargs"
            )
        parts.append(f"## Reference answer\n{example[reference_column]}")
    parts.append(f"## Response to grade\n{completion}")
    parts.append(f"Grade the response from {min_score:g} to {max_score:g}. End with `Score: N`.")
    system = JUDGE_SYSTEM.format(min_score=min_score, max_score=max_score)
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def chat_url(url: str) -> str:
    """``.../v1`` -> ``.../v1/chat/completions``; a full ``.../chat/completions`` URL is kept.

    >>> chat_url("http://127.0.0.1:8000/v1/")
    'http://127.0.0.1:8000/v1/chat/completions'
    """
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def backoff_delays(retries: int, backoff_s: float) -> list[float]:
    """Sleeps between attempts: backoff_s, 2*backoff_s, 4*backoff_s, ...

    >>> backoff_delays(3, 0.5)
    [0.5, 1.0, 2.0]
    """
    return [backoff_s * 2**k for k in range(retries)]


def worst_case_s(timeout_s: float, retries: int, backoff_s: float) -> float:
    """Longest one request can take with its retries (every attempt times out).

    >>> worst_case_s(10, 2, 1)
    33.0
    """
    return float(timeout_s * (retries + 1) + sum(backoff_delays(retries, backoff_s)))


def _env_value(name: str | None, what: str) -> str | None:
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise KeyError(
            f"environment variable {name!r} ({what}) is not set in the reward worker; set it where "
            "training runs (the spec names it, so it is passed into this function's worker)"
        )
    return value


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, bytes | bytearray):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


# ----------------------------------------------------------------------------------------------
# HTTP with retries (httpx, imported on first use)
# ----------------------------------------------------------------------------------------------

_clients: dict[tuple[float, NetworkPolicy | None], Any] = {}
_async_clients: dict[tuple[int, float, NetworkPolicy | None], tuple[Any, asyncio.Semaphore]] = {}
_clients_lock = threading.Lock()


def _client(timeout_s: float) -> Any:
    """A pooled httpx client per timeout (connections are reused across calls in a worker).
    Under a server's network policy (`url_guard`) it connects only to checked addresses."""
    import httpx

    key = (timeout_s, NetworkPolicy.from_env())
    with _clients_lock:
        if key not in _clients:
            _clients[key] = httpx.Client(
                timeout=httpx.Timeout(timeout_s), follow_redirects=True, **client_options(key[1])
            )
        return _clients[key]


def _async_client(timeout_s: float, concurrency: int) -> tuple[Any, asyncio.Semaphore]:
    """An async httpx client and a concurrency limit, per event loop and timeout (and policy)."""
    import httpx

    policy = NetworkPolicy.from_env()
    key = (id(asyncio.get_running_loop()), timeout_s, policy)
    if key not in _async_clients:
        for old in [k for k in _async_clients if k[0] != key[0]]:
            del _async_clients[old]  # a previous (closed) loop's clients
        options = client_options(policy, asynchronous=True)
        client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=True, **options)
        _async_clients[key] = (client, asyncio.Semaphore(max(1, concurrency)))
    return _async_clients[key]


def _request_body(payload: Any, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload, default=_jsonable, allow_nan=False).encode()
    return body, {"Content-Type": "application/json", **(headers or {})}


def _answer(url: str, response: Any) -> tuple[bool, Any, str, float]:
    """(done, JSON value, failure text, Retry-After seconds) for one HTTP response; raises for an
    answer that must not be retried (4xx other than 408/429, or a body that is not JSON)."""
    code = response.status_code
    if code < 300:
        try:
            return True, response.json(), "", 0.0
        except ValueError:
            raise GraderHTTPError(
                f"{url} answered HTTP {code} with a body that is not JSON: {response.text[:200]!r}"
            ) from None
    last = f"HTTP {code}: {response.text[:200]!r}"
    if code not in (408, 429) and code < 500:
        raise GraderHTTPError(f"{url} answered {last} (not retried)")
    retry_after = response.headers.get("retry-after", "")
    wait = min(float(retry_after), 30.0) if retry_after.replace(".", "", 1).isdigit() else 0.0
    return False, None, last, wait


def post_json(
    url: str,
    payload: Any,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    retries: int = 2,
    backoff_s: float = 1.0,
) -> Any:
    """POST `payload` as JSON and return the decoded JSON answer.

    Retries (with `backoff_delays`) on connection errors, timeouts, HTTP 408, 429 and 5xx; a
    ``Retry-After`` header (seconds, capped at 30) lengthens the wait. Other 4xx answers fail at once.

    Raises:
        GraderHTTPError: the last failure, after all attempts; or an answer that is not JSON.
    """
    import httpx

    body, send_headers = _request_body(payload, headers)
    delays = backoff_delays(retries, backoff_s)
    last = ""
    for attempt in range(retries + 1):
        wait = 0.0
        try:
            response = _client(timeout_s).post(url, content=body, headers=send_headers)
        except httpx.TimeoutException:
            last = f"no answer within {timeout_s:g}s"
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        else:
            done, value, last, wait = _answer(url, response)
            if done:
                return value
        if attempt < retries:
            time.sleep(max(delays[attempt], wait))
    raise GraderHTTPError(f"{url}: failed after {retries + 1} attempts; last: {last}")


async def apost_json(
    url: str,
    payload: Any,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    retries: int = 2,
    backoff_s: float = 1.0,
    concurrency: int = 8,
) -> Any:
    """`post_json` for async code; at most `concurrency` requests in flight per event loop."""
    import httpx

    body, send_headers = _request_body(payload, headers)
    client, limit = _async_client(timeout_s, concurrency)
    delays = backoff_delays(retries, backoff_s)
    last = ""
    for attempt in range(retries + 1):
        wait = 0.0
        try:
            async with limit:
                response = await client.post(url, content=body, headers=send_headers)
        except httpx.TimeoutException:
            last = f"no answer within {timeout_s:g}s"
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        else:
            done, value, last, wait = _answer(url, response)
            if done:
                return value
        if attempt < retries:
            await asyncio.sleep(max(delays[attempt], wait))
    raise GraderHTTPError(f"{url}: failed after {retries + 1} attempts; last: {last}")


# ----------------------------------------------------------------------------------------------
# The LLM judge
# ----------------------------------------------------------------------------------------------

_local: dict[str, tuple[Any, Any]] = {}


def _local_generate(name: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
    """Generate the judge's answer with a model loaded by OpenRFT (cached in this worker)."""
    import torch

    from openrft.models import load_model_and_tokenizer

    if name not in _local:
        torch.set_num_threads(1)  # the worker shares the machine with the trainer
        _local[name] = load_model_and_tokenizer(name, dtype="float32", device="cpu")
    model, tok = _local[name]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, **sampling)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


async def llm_judge(
    prompt: str,
    completion: str,
    example: dict,
    *,
    rubric: str,
    url: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    local_model: str | None = None,
    min_score: float = 0.0,
    max_score: float = 10.0,
    normalize: bool = False,
    reference_column: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 256,
    timeout_s: float = 30.0,
    retries: int = 2,
    backoff_s: float = 1.0,
    concurrency: int = 8,
) -> float:
    """Ask a model to grade the completion against `rubric`; the score in [min_score, max_score]
    (or in [0, 1] with `normalize`).

    The judge is an OpenAI-compatible chat completions endpoint (`url` + `model`, key from the
    variable `api_key_env`, sent as ``Authorization: Bearer``) or `local_model`, a model name or
    path loaded by OpenRFT inside the worker (give the spec `timeout_s` room for the first load).
    An answer without a parseable score, or a score out of range, raises: a counted user error.
    It is ``async``: a worker sends the requests of its samples together, at most `concurrency`
    at a time (each with `timeout_s` and `retries`); a local model answers one sample at a time.

    Example (per sample; `kwargs` in YAML)::

        await llm_judge("2+2?", "4", {}, rubric="10 if correct", url="http://127.0.0.1:8000/v1", model="m")
        # -> 10.0 when the judge answers "Correct. Score: 10"
    """
    messages = judge_messages(rubric, prompt, completion, example, min_score, max_score, reference_column)
    if local_model:
        answer = _local_generate(local_model, messages, temperature, max_tokens)
    else:
        assert url is not None  # check_kwargs makes sure of it
        key = _env_value(api_key_env, "the judge's API key")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        payload = {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        reply = await apost_json(
            chat_url(url),
            payload,
            headers=headers,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            concurrency=concurrency,
        )
        try:
            answer = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GraderHTTPError(
                f"{chat_url(url)}: not a chat completion (no choices[0].message.content): {str(reply)[:200]}"
            ) from None
    score = parse_score(answer, min_score, max_score)
    return (score - min_score) / (max_score - min_score) if normalize else score


def _check_judge(kwargs: dict[str, Any]) -> None:
    if not isinstance(kwargs.get("rubric"), str) or not kwargs["rubric"].strip():
        raise ValueError("kwargs.rubric must be a non-empty text saying how to score")
    has_url, has_local = bool(kwargs.get("url")), bool(kwargs.get("local_model"))
    if has_url == has_local:
        raise ValueError(
            "give exactly one of kwargs.url (an OpenAI-compatible endpoint) and kwargs.local_model"
        )
    if has_url:
        if not str(kwargs["url"]).startswith(("http://", "https://")):
            raise ValueError(f"kwargs.url {kwargs['url']!r} must start with http:// or https://")
        if not kwargs.get("model"):
            raise ValueError("kwargs.model is required with kwargs.url (the endpoint's model name)")
    lo, hi = kwargs.get("min_score", 0.0), kwargs.get("max_score", 10.0)
    if not (isinstance(lo, int | float) and isinstance(hi, int | float) and lo < hi):
        raise ValueError(f"kwargs.min_score ({lo!r}) must be a number below kwargs.max_score ({hi!r})")
    _check_http_numbers(kwargs)


llm_judge.check_kwargs = _check_judge  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# The remote grader
# ----------------------------------------------------------------------------------------------


def remote(
    prompts: list[Any],
    completions: list[str],
    examples: list[dict],
    *,
    url: str,
    headers: dict[str, str] | None = None,
    auth_env: str | None = None,
    auth_header: str = "Authorization",
    auth_scheme: str = "Bearer",
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    batch_size: int = 64,
    concurrency: int = 4,
) -> list[float | None]:
    """Score a batch with a service elsewhere (e.g. an AWS Lambda function URL).

    POSTs ``{"prompts": [...], "completions": [...], "examples": [{column: value}, ...]}`` in
    chunks of `batch_size` (up to `concurrency` at once) and reads back ``{"scores": [...]}``,
    one number or null per completion. Each POST has `timeout_s` and is retried `retries` times
    with exponential backoff on connection errors, timeouts, 408, 429 and 5xx. The auth header is
    ``{auth_header}: {auth_scheme} ${auth_env}`` (empty scheme: the bare value).

    Example server answer for two completions: ``{"scores": [1.0, null]}``.
    """
    secret = _env_value(auth_env, "the remote grader's auth token")
    send = dict(headers or {})
    if secret is not None:
        send[auth_header] = f"{auth_scheme} {secret}".strip() if auth_scheme else secret
    starts = list(range(0, len(completions), batch_size))

    def one(start: int) -> list[Any]:
        end = start + batch_size
        payload = {
            "prompts": prompts[start:end],
            "completions": completions[start:end],
            "examples": examples[start:end],
        }
        reply = post_json(
            url, payload, headers=send, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s
        )
        scores = reply.get("scores") if isinstance(reply, dict) else reply
        want = len(payload["completions"])
        if not isinstance(scores, list) or len(scores) != want:
            got = f"{len(scores)} scores" if isinstance(scores, list) else f"{str(reply)[:120]!r}"
            raise GraderHTTPError(f'{url}: expected {{"scores": [...]}} with {want} values, got {got}')
        return scores

    if len(starts) <= 1 or concurrency <= 1:
        chunks = [one(s) for s in starts]
    else:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(starts))) as pool:
            chunks = list(pool.map(one, starts))
    return [v for chunk in chunks for v in chunk]


def _check_http_numbers(kwargs: dict[str, Any]) -> None:
    for key, low in (
        ("timeout_s", 0.001),
        ("backoff_s", 0.0),
        ("retries", 0),
        ("batch_size", 1),
        ("concurrency", 1),
    ):
        if key in kwargs:
            value = kwargs[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value < low:
                raise ValueError(f"kwargs.{key} must be a number >= {low:g}, got {value!r}")


def _check_remote(kwargs: dict[str, Any]) -> None:
    if not str(kwargs.get("url", "")).startswith(("http://", "https://")):
        raise ValueError(f"kwargs.url {kwargs.get('url')!r} must start with http:// or https://")
    headers = kwargs.get("headers")
    if headers is not None and (
        not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values())
    ):
        raise ValueError("kwargs.headers must map header names to text values")
    _check_http_numbers(kwargs)


remote.check_kwargs = _check_remote  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# What a spec of these built-ins implies (used by RewardSpec)
# ----------------------------------------------------------------------------------------------


def _num(kwargs: dict[str, Any], key: str, default: float) -> float:
    value = kwargs.get(key, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def network_defaults(function: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Spec defaults for the network built-ins: network on, a call timeout covering one request
    with all its retries (+5 s), and 8 GB of address space for a local judge model."""
    if function == "llm_judge" and kwargs.get("local_model"):
        return {"memory_mb": 8192, "timeout_s": 120.0}
    if function == "llm_judge":
        worst = worst_case_s(
            _num(kwargs, "timeout_s", 30), int(_num(kwargs, "retries", 2)), _num(kwargs, "backoff_s", 1)
        )
    elif function == "remote":
        worst = worst_case_s(
            _num(kwargs, "timeout_s", 30), int(_num(kwargs, "retries", 3)), _num(kwargs, "backoff_s", 0.5)
        )
    else:
        return {}
    return {"allow_network": True, "timeout_s": min(3600.0, worst + 5.0)}


def secret_env_names(function: str, kwargs: dict[str, Any]) -> tuple[str, ...]:
    """Environment variables a built-in reads (its API key / auth token), by the spec's kwargs."""
    key = {"llm_judge": "api_key_env", "remote": "auth_env"}.get(function)
    value = kwargs.get(key) if key else None
    return (value,) if isinstance(value, str) and value else ()
