"""Per-token log-probs of completions under the current policy (with gradients).

Only the completion positions' logits are computed (`logits_to_keep`), and the log-softmax
over the 49k vocabulary is taken as `logit[token] - logsumexp(logits)` in float32, which never
materialises a second [N, T, V] tensor of log-probs.
"""

from __future__ import annotations

import torch

from openrft.engine.rollout import positions


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying *ForCausalLM (LoRA layers are injected in place, so they still apply)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[index] without the full log-softmax. logits [N, T, V], index [N, T]."""
    logits = logits.float()
    picked = logits.gather(-1, index[..., None]).squeeze(-1)  # [N, T]
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy [N, T] of softmax(logits [N, T, V])."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logps_from_logits(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature-scaled log-probs [N, T] of `ids` under logits [N, T, V], and entropy if asked."""
    if temperature != 1.0 and temperature > 0:
        logits = logits / temperature
    logps = selective_log_softmax(logits, ids)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach())
    return logps, ent


def completion_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] of `completion_ids` given left-padded prompts, and optionally entropy [N, T].

    prompt_ids/mask: [N, P]; completion_ids/mask: [N, T]. Padding after EOS is masked out of
    attention, so a row's log-probs do not depend on what else is in the batch.
    """
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, completion_ids], dim=1).to(device)  # [N, P+T]
    mask = torch.cat([prompt_mask, completion_mask], dim=1).to(device)
    t = completion_ids.shape[1]
    out = causal_lm(model)(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions(mask),
        use_cache=False,
        logits_to_keep=t + 1,
    )
    logits = out.logits[:, :-1]  # [N, T, V]: position i predicts completion token i
    return logps_from_logits(logits, completion_ids.to(device), temperature, with_entropy)


def grouped_completion_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    groups: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `completion_logps`, but each distinct prompt is run once and its KV cache shared by
    the completions of its group, with gradients flowing back through the shared prefix.

    Written by hand because GRPO's batches are G completions of the same prompt: the plain
    forward recomputes the prompt G times (for a 190-token prompt and 60-token answers, 3/4 of
    the tokens). prompt_ids/mask: [U, P] distinct prompts; groups: [n] row -> prompt index;
    completion_ids/mask: [n, T]. Returns log-probs [n, T] (and entropy [n, T]).
    """
    device = next(model.parameters()).device
    lm = causal_lm(model)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    groups, completion_ids = groups.to(device), completion_ids.to(device)
    completion_mask = completion_mask.to(device)
    out = lm(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions(prompt_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1][groups][:, None]  # [n, 1, V]: predicts completion token 0
    t = completion_ids.shape[1]
    if t > 1:
        cache = out.past_key_values
        cache.batch_select_indices(groups)  # a differentiable gather: [U, ...] -> [n, ...]
        pm = prompt_mask[groups]  # [n, P]
        start = pm.sum(-1, keepdim=True)  # [n, 1] first completion position
        rest = lm(
            input_ids=completion_ids[:, :-1],
            attention_mask=torch.cat([pm, completion_mask[:, :-1]], dim=1),
            position_ids=start + torch.arange(t - 1, device=device)[None, :],
            past_key_values=cache,
            use_cache=True,
        ).logits  # [n, T-1, V]
        logits = torch.cat([logits, rest], dim=1)  # [n, T, V]
    return logps_from_logits(logits, completion_ids, temperature, with_entropy)
