"""B1's cheap reward: the fraction of digit characters (varies inside every group)."""


def digit_fraction(prompt: str, completion: str, example: dict) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def digit_fraction_trl(prompts: list, completions: list, **kwargs: object) -> list[float]:
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [digit_fraction("", t, {}) for t in texts]
