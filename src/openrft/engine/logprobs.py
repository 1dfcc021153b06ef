"""Per-token log-probs of completions under the current policy (with gradients).

Only the completion positions' logits are computed (`logits_to_keep`), and the log-softmax
over the 49k vocabulary is taken as `logit[token] - logsumexp(logits)` in float32, which never
materialises a second [N, T, V] tensor of log-probs.
"""

from __future__ import annotations

from typing import Any

import torch

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.rollout.model import causal_lm
from openrft.engine.rollout.sampler import positions


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


class _ChunkedLinearLogps(torch.autograd.Function):
    """log softmax(h W^T / T)[target] per row, and the entropy, one chunk of rows at a time.

    Why by hand: the plain path materialises fp32 logits [N, T, 49k] and then log-softmax, its
    exp and the entropy's products, each another pass over 400 MB for a GRPO micro-batch of
    16 x 128 tokens: ~3 s of a 10 s update here, on 2 cores. Chunks of rows keep each pass in
    cache, and the [N, T, V] logits never exist (as in Liger's fused linear cross-entropy).
    The gradient w.r.t. h is computed in the forward, while each chunk's probabilities are at
    hand: d logp[target] / d h = (onehot(target) - p) W / T, so the forward keeps
    (p - onehot) W [M, H] and the backward only scales it by the upstream gradient; no second
    pass over the vocabulary and no recomputed logits. (A trainable head also needs dW, which
    recomputes each chunk's logits in the backward.)
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        inv_temp: float,
        chunk: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # hidden [M, H], weight [V, H], target [M] -> logps [M], entropy [M] (fp32)
        w = weight.to(hidden.dtype)
        m = hidden.shape[0]
        logps = torch.empty(m, dtype=torch.float32, device=hidden.device)
        ent = torch.zeros(m, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(m, dtype=torch.float32, device=hidden.device)
        want_dh = ctx.needs_input_grad[0]
        dh = torch.empty((m, hidden.shape[1]), dtype=torch.float32, device=hidden.device) if want_dh else None
        ops = _head_kernel(hidden)
        for a in range(0, m, chunk):
            if ops is not None:  # the same statistics in one C++ pass per row (cpu_ops.cpp)
                stats = ops.head_stats(
                    hidden[a : a + chunk] @ w.t(), target[a : a + chunk], inv_temp, want_dh
                )
                logps[a : a + chunk], ent[a : a + chunk], lse[a : a + chunk] = stats[:3]
                if dh is not None:
                    dh[a : a + chunk] = (stats[3] @ w).float()
                continue
            z = (hidden[a : a + chunk] @ w.t()).float().mul_(inv_temp)  # [c, V]
            lse_c = torch.logsumexp(z, dim=-1)
            lse[a : a + chunk] = lse_c
            lp = z.sub_(lse_c[:, None])  # log-probs, in place
            idx = target[a : a + chunk, None]
            logps[a : a + chunk] = lp.gather(-1, idx).squeeze(-1)
            if not (with_entropy or want_dh):
                continue
            p = lp.exp()
            if with_entropy:
                ent[a : a + chunk] = -(p * lp).sum(-1)
            if dh is not None:
                p.scatter_add_(-1, idx, torch.full(idx.shape, -1.0, device=p.device))  # p - onehot
                dh[a : a + chunk] = (p.to(hidden.dtype) @ w).float()
        if not with_entropy:
            ent.zero_()
        ctx.save_for_backward(hidden, weight, target, lse, dh if dh is not None else torch.empty(0))
        ctx.inv_temp, ctx.chunk = inv_temp, chunk
        ctx.mark_non_differentiable(ent)
        return logps, ent

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor, _grad_ent: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, target, lse, dh = ctx.saved_tensors
        grad_h = None
        if ctx.needs_input_grad[0]:
            # d loss / d h = g * (onehot - p) W / T = -(g / T) * (p - onehot) W
            grad_h = (dh * (grad_logps.float() * -ctx.inv_temp)[:, None]).to(hidden.dtype)
        grad_w = None
        if ctx.needs_input_grad[1]:  # a trainable head: recompute each chunk's softmax
            w = weight.to(hidden.dtype)
            grad_w = torch.zeros_like(weight, dtype=torch.float32)
            for a in range(0, hidden.shape[0], ctx.chunk):
                h = hidden[a : a + ctx.chunk]
                g = grad_logps[a : a + ctx.chunk].float()  # [c]
                z = (h @ w.t()).float().mul_(ctx.inv_temp)
                dz = z.sub_(lse[a : a + ctx.chunk, None]).exp_().mul_(-g[:, None])
                dz.scatter_add_(-1, target[a : a + ctx.chunk, None], g[:, None])
                grad_w += (dz.mul_(ctx.inv_temp).to(hidden.dtype).t() @ h).float()
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def _head_kernel(hidden: torch.Tensor) -> Any | None:
    """The C++ softmax-statistics kernel for CPU fp32/bf16 hidden states, if it is built."""
    if hidden.device.type != "cpu" or hidden.dtype not in (torch.float32, torch.bfloat16):
        return None
    return cpu_kernels.load()


def chunked_linear_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    chunk: int = 128,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] of `ids` (and entropy [N, T] if asked) under
    softmax(hidden [N, T, H] @ weight^T / temperature), without materialising the [N, T, V]
    logits (see `_ChunkedLinearLogps`)."""
    n, t, h = hidden.shape
    inv = 1.0 / temperature if temperature > 0 else 1.0
    flat = hidden.reshape(n * t, h)
    with torch.autocast(hidden.device.type, enabled=False):
        logps, ent = _ChunkedLinearLogps.apply(flat, weight, ids.reshape(-1), inv, chunk, with_entropy)
    return logps.view(n, t), (ent.view(n, t) if with_entropy else None)


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


def fused_head(lm: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(the decoder stack, the lm_head weight) when the head is a plain bias-free Linear with no
    logit scaling or soft-capping, so `chunked_linear_logps` computes exactly the model's
    log-probs; None otherwise (then the full logits are used)."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = getattr(lm, getattr(lm, "base_model_prefix", "model"), None)
    cfg = getattr(lm, "config", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None:
        return None
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    return decoder, head.weight


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
    lm = causal_lm(model)
    fused = fused_head(lm)
    if fused is not None:
        decoder, weight = fused
        hidden = decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).last_hidden_state[:, -t - 1 : -1]  # [N, T, H]: position i predicts completion token i
        return chunked_linear_logps(hidden, weight, completion_ids.to(device), temperature, with_entropy)
    out = lm(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions(mask),
        use_cache=False,
        logits_to_keep=t + 1,
    )
    logits = out.logits[:, :-1]  # [N, T, V]: position i predicts completion token i
    return logps_from_logits(logits, completion_ids.to(device), temperature, with_entropy)


def packed_target_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    """Log-probs [K] of the K target tokens of packed rows (input_ids, position_ids, target_mask:
    [r, L]; position ids restart per sequence, so attention is block-diagonal). The vocabulary
    projection runs only at the K positions that predict a target, chunk by chunk through
    `chunked_linear_logps` when the head allows it: neither [r, L, V] nor [K, V] logits exist."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    lm = causal_lm(model)
    hidden = lm.get_decoder()(
        input_ids=ids,
        attention_mask=None,  # None + restarting position ids = block-diagonal causal attention
        position_ids=position_ids.to(device),
        use_cache=False,
    ).last_hidden_state  # [r, L, H]
    targets = target_mask[:, 1:].to(device).bool()  # [r, L-1]: token t+1 is a target
    picked = hidden[:, :-1][targets]  # [K, H]
    labels = ids[:, 1:][targets]  # [K]
    fused = fused_head(lm)
    if fused is not None:
        logps, _ = chunked_linear_logps(picked[None], fused[1], labels[None], 1.0, False)
        return logps.view(-1)
    return selective_log_softmax(lm.get_output_embeddings()(picked), labels)  # [K]


def select_rows(cache: Any, groups: torch.Tensor) -> None:
    """Cache row i becomes prompt row groups[i], differentiably. When the rows are whole groups
    in order (GRPO's batch with no row skipped) the prompt rows are broadcast, whose backward is
    a sum over the group; else (and for caches without per-layer tensors) an index gather, whose
    backward is a serial scatter-add (1.4 ms per layer's keys at B1's shape, 85 ms an update)."""
    layers = getattr(cache, "layers", None)
    u, n = None, groups.numel()
    if layers and all(hasattr(ly, "keys") and isinstance(ly.keys, torch.Tensor) for ly in layers):
        u = layers[0].keys.shape[0]
    if (
        u is None
        or n % u
        or not torch.equal(groups, torch.arange(u, device=groups.device).repeat_interleave(n // u))
    ):
        cache.batch_select_indices(groups)
        return
    g = n // u
    for ly in layers:
        ly.keys = ly.keys[:, None].expand(u, g, *ly.keys.shape[1:]).reshape(n, *ly.keys.shape[1:])
        ly.values = ly.values[:, None].expand(u, g, *ly.values.shape[1:]).reshape(n, *ly.values.shape[1:])


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
    fused = fused_head(lm)
    run = fused[0] if fused is not None else lm  # the decoder stack gives hidden states
    kw: dict[str, Any] = {} if fused is not None else {"logits_to_keep": 1}
    out = run(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions(prompt_mask),
        use_cache=True,
        **kw,
    )
    final = out.last_hidden_state if fused is not None else out.logits  # [U, P, H or V]
    first = final[:, -1][groups][:, None]  # [n, 1, .]: predicts completion token 0
    parts = [first]
    t = completion_ids.shape[1]
    if t > 1:
        cache = out.past_key_values
        select_rows(cache, groups)  # a differentiable gather: [U, ...] -> [n, ...]
        pm = prompt_mask[groups]  # [n, P]
        start = pm.sum(-1, keepdim=True)  # [n, 1] first completion position
        rest = run(
            input_ids=completion_ids[:, :-1],
            attention_mask=torch.cat([pm, completion_mask[:, :-1]], dim=1),
            position_ids=start + torch.arange(t - 1, device=device)[None, :],
            past_key_values=cache,
            use_cache=True,
        )
        parts.append(rest.last_hidden_state if fused is not None else rest.logits)  # [n, T-1, .]
    final = torch.cat(parts, dim=1)  # [n, T, H or V]
    if fused is not None:
        return chunked_linear_logps(final, fused[1], completion_ids, temperature, with_entropy)
    return logps_from_logits(final, completion_ids, temperature, with_entropy)
