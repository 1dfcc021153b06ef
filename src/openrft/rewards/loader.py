"""From a spec's `function` string to a callable, and how to call it.

A function string is a built-in name (``countdown.format``), ``package.module:function`` or
``path/file.py:function`` (relative to the config's folder), see `parse_ref`. Two halves, run
in different processes:

- The **trainer** side runs no user code. `check_function` validates the string and raises a
  one-line `RewardError` if it is bad: a built-in must exist and get the kwargs it takes; a file
  must exist and define the function at top level (checked with `ast`); a module must be
  findable on the search path (`search_path`: the config's folder, the cwd, then `sys.path`),
  found with import finders that do not run it. `source_paths` names the host folders the
  function's sandboxed worker must be able to read.
- The **reward worker** side imports the code: `load_function` binds the spec's kwargs, and
  `call_style` detects the signature:

  * per sample (Predibase): ``(prompt, completion, example) -> float | None``, called by those
    keyword names when it uses them, else positionally;
  * batched (TRL): ``(prompts, completions, **columns) -> list[float | None]`` — recognised by a
    parameter named ``completions``; each dataset column arrives as a list keyword argument
    (only those the function accepts, unless it takes ``**kwargs``), or, when the function has a
    parameter named ``examples``, the rows arrive as a list of dicts.

  Either may be ``async def``. `call_per_sample` and `call_batched` make the calls.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from openrft.errors import RewardError
from openrft.rewards.builtin import BUILTINS

RefKind = Literal["builtin", "module", "file"]


@dataclass(frozen=True)
class FunctionRef:
    """A parsed `function` string. `target` is a built-in name, a module name or an absolute path."""

    kind: RefKind
    target: str
    attr: str


def parse_ref(function: str, base_dir: str | Path | None = None) -> FunctionRef:
    """Split a function string; file paths become absolute (relative to `base_dir`, else the cwd).

    >>> parse_ref("countdown.format")
    FunctionRef(kind='builtin', target='countdown.format', attr='countdown.format')
    >>> parse_ref("mypkg.rewards:score")
    FunctionRef(kind='module', target='mypkg.rewards', attr='score')
    >>> parse_ref("r/my.py:score", "/cfg").target
    '/cfg/r/my.py'
    """
    function = function.strip()
    if ":" not in function:
        return FunctionRef("builtin", function, function)
    target, _, attr = function.rpartition(":")
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or os.getcwd()) / path
        return FunctionRef("file", os.path.normpath(str(path)), attr)
    return FunctionRef("module", target, attr)


def search_path(base_dir: str | Path | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Where module references are looked up: the config's folder, the cwd, then `sys.path`."""
    paths = [str(Path(base_dir).resolve())] if base_dir else []
    paths += [os.getcwd(), *extra]
    paths += [p or os.getcwd() for p in sys.path]
    seen: set[str] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def _find_spec(name: str, paths: list[str]) -> importlib.machinery.ModuleSpec | None:
    """Find a module without executing it or its parent packages."""
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], paths)
    if spec is None:
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None or finder is importlib.machinery.PathFinder:
                continue
            try:
                spec = find(parts[0], None)
            except Exception:
                spec = None
            if spec is not None:
                break
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[: i + 1]), list(spec.submodule_search_locations)
        )
    return spec


def _top_level_names(tree: ast.Module) -> tuple[set[str], bool]:
    """Names bound at a module's top level (descending into if/try/with); and whether it has a
    star import or a module ``__getattr__`` (then any name may exist)."""
    names: set[str] = set()
    star = False

    def visit(body: list[ast.stmt]) -> None:
        nonlocal star
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        star = True
                    else:
                        names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.If | ast.For | ast.While | ast.With | ast.AsyncWith):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.Try | ast.TryStar):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(block)

    visit(tree.body)
    return names, star or "__getattr__" in names


def _check_source(path: str, attr: str, label: str) -> None:
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RewardError(f"{label}: cannot read {path} ({e})") from None
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise RewardError(f"{path}:{e.lineno}:{e.offset}: {label}: syntax error: {e.msg}") from None
    names, open_ended = _top_level_names(tree)
    if attr not in names and not open_ended:
        funcs = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        close = difflib.get_close_matches(attr, funcs, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RewardError(
            f"{path}: {label}: no top-level function {attr!r} ({hint}functions defined: {funcs or 'none'})"
        )


def _check_builtin_kwargs(name: str, kwargs: dict[str, Any], label: str) -> None:
    params = inspect.signature(BUILTINS[name]).parameters
    known = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RewardError(
                f"{label}: built-in {name!r} has no option {key!r}{hint}; its kwargs are {known or 'none'}"
            )
    for p in params.values():
        required = p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
        if required and p.name not in kwargs:
            raise RewardError(f"{label}: built-in {name!r} needs kwargs.{p.name}; add it to the spec")
    check = getattr(BUILTINS[name], "check_kwargs", None)
    if check is not None:
        try:
            check(kwargs)
        except ValueError as e:
            raise RewardError(f"{label}: built-in {name!r}: {e}") from None


def check_function(
    function: str,
    base_dir: str | Path | None = None,
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
) -> FunctionRef:
    """Validate a function string in the trainer, without running user code; `RewardError` if bad."""
    label = f"reward {name!r}" if name else f"reward function {function!r}"
    ref = parse_ref(function, base_dir)
    if ref.kind == "builtin":
        if ref.target not in BUILTINS:
            close = difflib.get_close_matches(ref.target, list(BUILTINS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RewardError(
                f"{label}: {ref.target!r} is not a built-in reward ({hint}use a built-in name, "
                "'package.module:function' or 'path/file.py:function')"
            )
        _check_builtin_kwargs(ref.target, kwargs or {}, label)
        return ref
    if not ref.attr.isidentifier():
        raise RewardError(f"{label}: {ref.attr!r} after ':' is not a Python function name")
    if ref.kind == "file":
        if not os.path.isfile(ref.target):
            where = f" (relative paths are resolved against {base_dir})" if base_dir else ""
            raise RewardError(f"{ref.target}: {label}: file not found{where}")
        _check_source(ref.target, ref.attr, label)
        return ref
    spec = _find_spec(ref.target, search_path(base_dir))
    if spec is None:
        raise RewardError(
            f"{label}: module {ref.target!r} not found on the Python path (put it next to the config "
            "file, install it, or use 'path/file.py:function')"
        )
    if spec.origin and spec.origin.endswith(".py") and os.path.isfile(spec.origin):
        _check_source(spec.origin, ref.attr, label)
    return ref


def source_paths(
    function: str, base_dir: str | Path | None = None, kwargs: dict[str, Any] | None = None
) -> tuple[str, ...]:
    """Host paths a function's sandboxed worker must be able to read, besides the Python
    installation: a file's folder (it may import its neighbours), the import root of a module
    found outside the installation, and a local judge model's folders. Call after
    `check_function`."""
    ref = parse_ref(function, base_dir)
    if ref.kind == "file":
        return (os.path.dirname(ref.target),)
    if ref.kind == "module":
        top = _find_spec(ref.target.split(".")[0], search_path(base_dir))
        if top is None or not top.origin or not os.path.isabs(top.origin):
            return ()
        package = list(top.submodule_search_locations or [])
        return (os.path.dirname(package[0] if package else top.origin),)
    local = (kwargs or {}).get("local_model")
    if ref.target == "llm_judge" and isinstance(local, str) and local:
        from openrft.models.registry import models_dir

        paths = [str(models_dir()), os.environ.get("HF_HOME", "")]
        return tuple(p for p in (*paths, local) if p and os.path.isdir(p))
    return ()


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------


def _import_file(path: str) -> Any:
    mod_name = "openrft_user_reward_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its neighbours
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def load_function(
    function: str, base_dir: str | Path | None = None, kwargs: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """Import the function (runs user code: call this in the worker) and bind `kwargs`."""
    ref = parse_ref(function, base_dir)
    if ref.kind == "builtin":
        func: Any = BUILTINS[ref.target]
    else:
        if ref.kind == "file":
            module = _import_file(ref.target)
        else:
            if base_dir and str(base_dir) not in sys.path:
                sys.path.insert(0, str(base_dir))
            module = importlib.import_module(ref.target)
        try:
            func = getattr(module, ref.attr)
        except AttributeError:
            raise AttributeError(f"{ref.target} has no attribute {ref.attr!r}") from None
    if not callable(func):
        raise TypeError(f"{function}: {type(func).__name__} object is not callable")
    return functools.partial(func, **kwargs) if kwargs else func


@dataclass(frozen=True)
class CallStyle:
    """How to call a loaded function. `accepts` = keyword names it takes, None if ``**kwargs``."""

    batched: bool
    is_async: bool
    accepts: frozenset[str] | None
    per_sample_names: tuple[str, ...] = ()  # call by these keywords; () = positionally
    examples: bool = False  # batched and takes `examples`: gets the rows as dicts, not columns


def _is_async(func: Any) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 (instances with an async __call__)
    return call is not None and inspect.iscoroutinefunction(call)


def call_style(func: Callable[..., Any]) -> CallStyle:
    """Detect per-sample vs batched and sync vs async from the signature; TypeError if unclear."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot read the signature of {func!r} ({e})") from None
    params = sig.parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepts = None if var_kw else frozenset(params)
    is_async = _is_async(func)
    if "completions" in params:
        return CallStyle(True, is_async, accepts, examples="examples" in params)
    if "completion" in params:
        names = tuple(n for n in ("prompt", "completion", "example") if n in params)
        return CallStyle(False, is_async, accepts, names)
    positional = [
        p
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= 3 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()):
        return CallStyle(False, is_async, accepts)
    raise TypeError(
        f"cannot tell how to call {getattr(func, '__name__', func)}{sig}: write "
        "(prompt, completion, example) for one sample or (prompts, completions, **kwargs) for a batch"
    )


def call_per_sample(
    func: Callable[..., Any], style: CallStyle, prompt: Any, completion: Any, example: Any
) -> Any:
    """One per-sample call (may return an awaitable for async functions)."""
    if style.per_sample_names:
        given = {"prompt": prompt, "completion": completion, "example": example}
        return func(**{n: given[n] for n in style.per_sample_names})
    return func(prompt, completion, example)


def call_batched(
    func: Callable[..., Any],
    style: CallStyle,
    prompts: list[Any],
    completions: list[Any],
    examples: list[dict],
) -> Any:
    """One batched call: prompts, completions and every column as a list keyword argument; or,
    for a function with an `examples` parameter, prompts, completions and the rows as dicts."""
    if style.examples:
        return func(prompts=prompts, completions=completions, examples=examples)
    columns: dict[str, list[Any]] = {}
    for key in dict.fromkeys(k for ex in examples for k in ex):
        if key not in ("prompts", "completions"):
            columns[key] = [ex.get(key) for ex in examples]
    kwargs = {"prompts": prompts, "completions": completions, **columns}
    if style.accepts is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in style.accepts}
    return func(**kwargs)
