"""Spec validation, function strings, trainer-side checks (no user code runs) and signatures."""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from openrft.errors import RewardError
from openrft.rewards import loader
from openrft.rewards.spec import RewardSpec


def test_spec_defaults_and_forbids_unknown_keys() -> None:
    spec = RewardSpec(name="fmt", function="countdown.format")
    assert (spec.weight, spec.timeout_s, spec.allow_network, spec.range, spec.kwargs) == (
        1.0,
        10.0,
        False,
        None,
        {},
    )
    with pytest.raises(ValidationError, match="extra"):
        RewardSpec(name="fmt", function="countdown.format", wieght=2)


def test_spec_unknown_builtin_suggests_the_closest() -> None:
    with pytest.raises(ValidationError, match=r"did you mean 'countdown\.format'"):
        RewardSpec(name="fmt", function="countdown.formt")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("range", (1.0, 0.0), "low < high"),
        ("name", "has space", "letters, digits"),
        ("function", "mod:not-an-id", "identifier"),
        ("timeout_s", 0, "greater than 0"),
    ],
)
def test_spec_field_errors_say_what_to_fix(field: str, value: object, message: str) -> None:
    data = {"name": "r", "function": "regex", field: value}
    with pytest.raises(ValidationError, match=message):
        RewardSpec.model_validate(data)


def test_parse_ref_forms(tmp_path: Path) -> None:
    assert loader.parse_ref("regex").kind == "builtin"
    ref = loader.parse_ref("pkg.mod:fn")
    assert (ref.kind, ref.target, ref.attr) == ("module", "pkg.mod", "fn")
    ref = loader.parse_ref("sub/r.py:fn", tmp_path)
    assert (ref.kind, ref.target, ref.attr) == ("file", str(tmp_path / "sub" / "r.py"), "fn")
    assert loader.parse_ref(f"{tmp_path}/r.py:fn", "/elsewhere").target == str(tmp_path / "r.py")


def test_check_file_does_not_run_user_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "r.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n\ndef score(prompt, completion, example):\n    return 1.0\n"
    )
    ref = loader.check_function("r.py:score", tmp_path, name="mine")
    assert ref.kind == "file"
    assert not marker.exists()


def test_check_file_errors_are_one_line_with_location(tmp_path: Path) -> None:
    with pytest.raises(RewardError, match="file not found") as err:
        loader.check_function("missing.py:f", tmp_path, name="r")
    assert "\n" not in str(err.value)
    (tmp_path / "r.py").write_text("def scor(prompt, completion, example):\n    return 1\n")
    with pytest.raises(RewardError, match=r"no top-level function 'score' \(did you mean 'scor'"):
        loader.check_function("r.py:score", tmp_path, name="r")
    (tmp_path / "bad.py").write_text("def f(:\n")
    with pytest.raises(RewardError, match=r"bad.py:1:\d+: reward 'r': syntax error"):
        loader.check_function("bad.py:f", tmp_path, name="r")


def test_check_file_accepts_names_bound_other_ways(tmp_path: Path) -> None:
    (tmp_path / "r.py").write_text(
        "import functools\ntry:\n    from math import floor as score\nexcept ImportError:\n    pass\n"
        "other = functools.partial(print)\n"
    )
    loader.check_function("r.py:score", tmp_path)
    loader.check_function("r.py:other", tmp_path)


def test_check_module_found_without_importing_it(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg_rewards_test"
    pkg.mkdir()
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (pkg / "scores.py").write_text("def accuracy(prompt, completion, example):\n    return 1.0\n")
    loader.check_function("mypkg_rewards_test.scores:accuracy", tmp_path)
    assert not marker.exists()
    with pytest.raises(RewardError, match="no top-level function 'nope'"):
        loader.check_function("mypkg_rewards_test.scores:nope", tmp_path)
    with pytest.raises(RewardError, match="module 'no_such_module_xyz' not found"):
        loader.check_function("no_such_module_xyz:f", tmp_path)
    loader.check_function("openrft.tasks.countdown:format_reward")


def test_check_builtin_kwargs() -> None:
    loader.check_function("regex", kwargs={"pattern": "x"})
    with pytest.raises(RewardError, match=r"needs kwargs\.pattern"):
        loader.check_function("regex", name="r")
    with pytest.raises(RewardError, match="no option 'patern' \\(did you mean 'pattern'"):
        loader.check_function("regex", kwargs={"patern": "x", "pattern": "y"}, name="r")


def per_sample(prompt, completion, example):  # type: ignore[no-untyped-def]
    return 1.0


def named(completion, example, **kw):  # type: ignore[no-untyped-def]
    return 1.0


def trl(prompts, completions, **kwargs):  # type: ignore[no-untyped-def]
    return [1.0] * len(completions)


def trl_explicit(completions, answer):  # type: ignore[no-untyped-def]
    return [float(c == a) for c, a in zip(completions, answer, strict=True)]


async def async_sample(prompt, completion, example):  # type: ignore[no-untyped-def]
    return 0.5


def test_call_style_detection() -> None:
    assert loader.call_style(per_sample) == loader.CallStyle(
        False, False, frozenset({"prompt", "completion", "example"}), ("prompt", "completion", "example")
    )
    style = loader.call_style(named)
    assert not style.batched and style.accepts is None and style.per_sample_names == ("completion", "example")
    assert loader.call_style(trl).batched
    assert loader.call_style(lambda a, b, c: 1.0) == loader.CallStyle(False, False, frozenset("abc"))
    assert loader.call_style(async_sample).is_async
    assert loader.call_style(functools.partial(async_sample, example={})).is_async
    with pytest.raises(TypeError, match="cannot tell how to call"):
        loader.call_style(lambda x: 1.0)


def test_call_helpers_pass_columns_as_lists() -> None:
    style = loader.call_style(trl_explicit)
    got = loader.call_batched(
        trl_explicit, style, ["p", "p"], ["a", "b"], [{"answer": "a", "x": 1}, {"answer": "a"}]
    )
    assert got == [1.0, 0.0]
    style = loader.call_style(named)
    assert loader.call_per_sample(named, style, "p", "c", {}) == 1.0
    coro = loader.call_per_sample(async_sample, loader.call_style(async_sample), "p", "c", {})
    assert asyncio.run(coro) == 0.5


def test_load_function_binds_kwargs_and_loads_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_function adds the file's folder
    (tmp_path / "helper_mod_x.py").write_text("BONUS = 2.0\n")
    (tmp_path / "r.py").write_text(
        "from helper_mod_x import BONUS\n\ndef score(prompt, completion, example, *, scale=1.0):\n"
        "    return BONUS * scale\n"
    )
    fn = loader.load_function("r.py:score", tmp_path, {"scale": 3.0})
    assert fn("p", "c", {}) == 6.0
    regex = loader.load_function("regex", kwargs={"pattern": "^a"})
    assert regex("", "abc", {}) == 1.0
