"""Built-in graders for text: regex, exact/numeric match, similarity, JSON, length.

Each grader has the per-sample reward signature ``(prompt, completion, example, **kwargs) -> float``;
a spec binds the keyword arguments (``kwargs:`` in YAML). A completion that is simply wrong scores
0.0; a mistake in the *setup* (a missing answer column, a bad pattern) raises, so it is counted as
a user error and stops the run if it keeps happening.

Reference answers come from the example row: ``answer_column`` (default ``"answer"``) names the
column; it may hold one answer or a list of acceptable answers.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "a": re.ASCII}


# ----------------------------------------------------------------------------------------------
# Helpers (pure)
# ----------------------------------------------------------------------------------------------


def extract_text(completion: str, extract: str | None) -> str | None:
    """The part of `completion` to grade.

    ``None``: all of it. ``"fenced"``: the body of the last ```` ``` ```` block, or all of it when
    there is none. Any other string is a regex: the first group (or whole match) of its last match,
    or None when it does not match.

    >>> extract_text("so <answer>42</answer>", r"<answer>(.*?)</answer>")
    '42'
    >>> extract_text("code:\\n```python\\nx = 1\\n```", "fenced")
    'x = 1\\n'
    """
    if extract is None:
        return completion
    if extract == "fenced":
        blocks = _FENCE.findall(completion)
        return blocks[-1][1] if blocks else completion
    matches = list(re.finditer(extract, completion, re.DOTALL))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.groups() else last.group(0)


def _answers(example: dict, answer_column: str) -> list[Any]:
    if answer_column not in example:
        raise KeyError(
            f"the example has no column {answer_column!r} (columns: {sorted(example)}); "
            "set `answer_column` in the reward's kwargs"
        )
    value = example[answer_column]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _normalize(text: str, case_sensitive: bool, collapse_whitespace: bool) -> str:
    text = text.strip()
    if collapse_whitespace:
        text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


def parse_number(text: str) -> float | None:
    """The last number written in `text` (``1,234.5``, ``-3e2``, ``3/4``, ``$12``), or None.

    >>> parse_number("so the total is $1,234.50.")
    1234.5
    >>> parse_number("x = 3/4")
    0.75
    >>> parse_number("no digits") is None
    True
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "").replace(" ", "")
    try:
        if "/" in raw:
            num, den = raw.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        return float(raw)
    except ValueError:
        return None


def _tokens(text: str, case_sensitive: bool) -> list[str]:
    return _TOKEN.findall(text if case_sensitive else text.casefold())


def bleu(candidate: Sequence[str], reference: Sequence[str], max_n: int = 4) -> float:
    """Sentence BLEU of token lists: geometric mean of 1..max_n-gram precisions (add-one smoothed
    for n > 1) times the brevity penalty. In [0, 1].

    >>> bleu("the cat sat on the mat".split(), "the cat sat on the mat".split())
    1.0
    >>> round(bleu("the cat".split(), "the cat sat on the mat".split()), 3)
    0.135
    """
    if not candidate or not reference:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        cand = Counter(tuple(candidate[i : i + n]) for i in range(len(candidate) - n + 1))
        ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        overlap = sum(min(c, ref[g]) for g, c in cand.items())
        total = sum(cand.values())
        if n == 1:
            if overlap == 0:
                return 0.0
            p = overlap / total
        else:
            p = (overlap + 1) / (total + 1)
        log_sum += math.log(p) / max_n
    bp = 1.0 if len(candidate) >= len(reference) else math.exp(1 - len(reference) / len(candidate))
    return min(1.0, bp * math.exp(log_sum))


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 of token lists: from the longest common subsequence. In [0, 1].

    >>> rouge_l("a b c d".split(), "a x c d".split())
    0.75
    """
    if not candidate or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for tok in candidate:
        cur = [0]
        for j, ref_tok in enumerate(reference):
            cur.append(prev[j] + 1 if tok == ref_tok else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------------------
# Graders
# ----------------------------------------------------------------------------------------------


def regex(
    prompt: str,
    completion: str,
    example: dict,
    *,
    pattern: str,
    flags: str = "",
    mode: Literal["search", "fullmatch"] = "search",
) -> float:
    """1.0 if `pattern` is found in the completion (``mode="fullmatch"``: matches all of it,
    surrounding whitespace aside), else 0.0. `flags`: letters of ``i m s x a``.

    YAML: ``{name: fmt, function: regex, kwargs: {pattern: '^<answer>.*</answer>$', flags: s}}``

    >>> regex("", "<answer>7</answer>", {}, pattern=r"<answer>\\d+</answer>")
    1.0
    >>> regex("", "The answer is 7", {}, pattern=r"^\\d+$", mode="fullmatch")
    0.0
    """
    bits = 0
    for letter in flags:
        if letter not in _FLAGS:
            raise ValueError(f"regex flags {flags!r}: unknown flag {letter!r}; use letters of 'imsxa'")
        bits |= _FLAGS[letter]
    if mode == "fullmatch":
        return 1.0 if re.fullmatch(pattern, completion.strip(), bits) else 0.0
    if mode != "search":
        raise ValueError(f"regex mode {mode!r}: use 'search' or 'fullmatch'")
    return 1.0 if re.search(pattern, completion, bits) else 0.0


def exact_match(
    prompt: str,
    completion: str,
    example: dict,
    *,
    answer_column: str = "answer",
    extract: str | None = None,
    case_sensitive: bool = True,
    collapse_whitespace: bool = True,
) -> float:
    """1.0 if the (extracted) completion equals the answer (or one of a list of answers) after
    stripping and, by default, collapsing whitespace; else 0.0.

    YAML: ``{name: exact, function: exact_match, kwargs: {extract: '<answer>(.*?)</answer>'}}``

    >>> exact_match("", "<answer> Paris </answer>", {"answer": "Paris"}, extract=r"<answer>(.*?)</answer>")
    1.0
    >>> exact_match("", "paris", {"answer": "Paris"})
    0.0
    """
    text = extract_text(completion, extract)
    if text is None:
        return 0.0
    got = _normalize(text, case_sensitive, collapse_whitespace)
    for answer in _answers(example, answer_column):
        if got == _normalize(str(answer), case_sensitive, collapse_whitespace):
            return 1.0
    return 0.0


def exact_match_ci(
    prompt: str,
    completion: str,
    example: dict,
    *,
    answer_column: str = "answer",
    extract: str | None = None,
    collapse_whitespace: bool = True,
) -> float:
    """Case-insensitive `exact_match` (Unicode casefold).

    >>> exact_match_ci("", "PARIS", {"answer": ["paris", "Paris, France"]})
    1.0
    """
    return exact_match(
        prompt,
        completion,
        example,
        answer_column=answer_column,
        extract=extract,
        case_sensitive=False,
        collapse_whitespace=collapse_whitespace,
    )


def numeric_match(
    prompt: str,
    completion: str,
    example: dict,
    *,
    answer_column: str = "answer",
    extract: str | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> float:
    """1.0 if the last number in the (extracted) completion equals the answer within
    ``rel_tol``/``abs_tol`` (as `math.isclose`), else 0.0.

    YAML: ``{name: num, function: numeric_match, kwargs: {answer_column: target, abs_tol: 0.01}}``

    >>> numeric_match("", "... so x = 1,000.004", {"answer": 1000}, abs_tol=0.01)
    1.0
    >>> numeric_match("", "x = 12", {"answer": "13"})
    0.0
    """
    text = extract_text(completion, extract)
    got = parse_number(text) if text is not None else None
    if got is None:
        return 0.0
    for answer in _answers(example, answer_column):
        want = answer if isinstance(answer, int | float) else parse_number(str(answer))
        if want is None:
            raise ValueError(f"answer {answer!r} in column {answer_column!r} is not a number")
        if math.isclose(got, float(want), rel_tol=rel_tol, abs_tol=abs_tol):
            return 1.0
    return 0.0


def similarity(
    prompt: str,
    completion: str,
    example: dict,
    *,
    answer_column: str = "answer",
    metric: Literal["ratio", "bleu", "rouge_l"] = "ratio",
    extract: str | None = None,
    case_sensitive: bool = False,
) -> float:
    """Similarity in [0, 1] to the answer (best over a list of answers). `metric`:
    ``ratio`` (difflib's fuzzy character ratio), ``bleu`` (sentence BLEU-4) or ``rouge_l`` (F1).

    YAML: ``{name: sim, function: similarity, kwargs: {metric: rouge_l, answer_column: summary}}``

    >>> similarity("", "the cat sat on the mat", {"answer": "the cat sat on a mat"}, metric="rouge_l")
    0.8333333333333334
    >>> round(similarity("", "kitten", {"answer": "sitting"}), 3)
    0.615
    """
    text = extract_text(completion, extract)
    if text is None:
        return 0.0
    best = 0.0
    for answer in _answers(example, answer_column):
        ref = str(answer)
        if metric == "ratio":
            a, b = (text, ref) if case_sensitive else (text.casefold(), ref.casefold())
            score = difflib.SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()
        elif metric == "bleu":
            score = bleu(_tokens(text, case_sensitive), _tokens(ref, case_sensitive))
        elif metric == "rouge_l":
            score = rouge_l(_tokens(text, case_sensitive), _tokens(ref, case_sensitive))
        else:
            raise ValueError(f"similarity metric {metric!r}: use 'ratio', 'bleu' or 'rouge_l'")
        best = max(best, score)
    return best


def _parse_json(completion: str, extract: str | None) -> tuple[bool, Any]:
    text = extract_text(completion, extract)
    if text is None:
        return False, None
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def json_valid(prompt: str, completion: str, example: dict, *, extract: str | None = "fenced") -> float:
    """1.0 if the completion (by default the last ```` ``` ```` block, when there is one) parses as
    JSON, else 0.0.

    >>> json_valid("", '{"a": [1, 2]}', {})
    1.0
    >>> json_valid("", "Sure! ```json\\n{'a': 1}\\n```", {})
    0.0
    """
    ok, _ = _parse_json(completion, extract)
    return 1.0 if ok else 0.0


def json_schema(
    prompt: str,
    completion: str,
    example: dict,
    *,
    schema: dict | None = None,
    schema_column: str | None = None,
    extract: str | None = "fenced",
) -> float:
    """1.0 if the completion is JSON that conforms to the JSON schema (given inline as `schema`,
    or per row in `schema_column`, as a dict or JSON text), else 0.0. Uses the ``jsonschema``
    package when installed; otherwise a built-in subset (type, properties, required,
    additionalProperties, items, enum, const, minimum/maximum, min/maxLength, min/maxItems,
    pattern, anyOf/oneOf/allOf).

    YAML: ``{name: schema, function: json_schema, kwargs: {schema: {type: object, required: [name]}}}``

    >>> s = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    >>> json_schema("", '{"name": "Ada"}', {}, schema=s)
    1.0
    >>> json_schema("", '{"name": 3}', {}, schema=s)
    0.0
    """
    if (schema is None) == (schema_column is None):
        raise ValueError("json_schema: give exactly one of `schema` (inline) or `schema_column`")
    if schema_column is not None:
        schema = _answers(example, schema_column)[0]
        if isinstance(schema, str):
            schema = json.loads(schema)
    if not isinstance(schema, dict):
        raise ValueError(f"json_schema: the schema must be a JSON object, got {type(schema).__name__}")
    ok, value = _parse_json(completion, extract)
    if not ok:
        return 0.0
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return 1.0 if schema_errors(value, schema) == [] else 0.0
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.0
    return 1.0


_JSON_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name not in _JSON_TYPES:
        raise ValueError(f"json schema: unknown type {name!r}")
    return isinstance(value, _JSON_TYPES[name])


def schema_errors(value: Any, schema: dict, path: str = "$") -> list[str]:
    """Where `value` breaks `schema` (the subset named in `json_schema`); [] when it conforms.

    >>> schema_errors({"n": -1}, {"properties": {"n": {"type": "integer", "minimum": 0}}})
    ['$.n: -1 < minimum 0']
    """
    errs: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in enum")
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: {value!r} != const")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errs.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errs.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errs += schema_errors(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errs += [f"{path}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in props:
                errs += schema_errors(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected key {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += schema_errors(item, schema["additionalProperties"], f"{path}.{key}")
    for sub in schema.get("allOf", []):
        errs += schema_errors(value, sub, path)
    if "anyOf" in schema and all(schema_errors(value, s, path) for s in schema["anyOf"]):
        errs.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema and sum(not schema_errors(value, s, path) for s in schema["oneOf"]) != 1:
        errs.append(f"{path}: does not match exactly one of oneOf")
    return errs


def length_penalty(
    prompt: str,
    completion: str,
    example: dict,
    *,
    max_length: int,
    unit: Literal["chars", "words"] = "chars",
    slack: int | None = None,
) -> float:
    """0.0 up to `max_length` characters (or words), then falling linearly to -1.0 at
    ``max_length + slack`` (default ``slack = max_length``) and staying there. Add it with a
    weight to discourage rambling.

    YAML: ``{name: short, function: length_penalty, weight: 0.2, kwargs: {max_length: 400}}``

    >>> length_penalty("", "x" * 150, {}, max_length=100)
    -0.5
    >>> length_penalty("", "one two three", {}, max_length=5, unit="words")
    0.0
    """
    if max_length < 0:
        raise ValueError(f"length_penalty: max_length must be >= 0, got {max_length}")
    size = len(completion.split()) if unit == "words" else len(completion)
    if unit not in ("chars", "words"):
        raise ValueError(f"length_penalty unit {unit!r}: use 'chars' or 'words'")
    over = size - max_length
    if over <= 0:
        return 0.0
    span = slack if slack is not None else max(max_length, 1)
    return -min(1.0, over / max(span, 1))
