"""Sampling: the lean decoder (`decoder.py`), the rollout model, a LoRA-merged copy of the policy
that it runs on (`model.py`), and the group sampler with its prompt-KV sharing (`sampler.py`).

GRPO's rollout, held-out evaluation and preflight all sample through here."""

from openrft.engine.rollout.model import RolloutModel, causal_lm
from openrft.engine.rollout.sampler import decode_completions, left_pad, sample_groups

__all__ = ["RolloutModel", "causal_lm", "decode_completions", "left_pad", "sample_groups"]
