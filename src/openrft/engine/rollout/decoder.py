"""A lean decode path for Llama-family models (Llama, Mistral, Qwen2): static KV cache, fused
projections, one Python function per token.

Why by hand: at GRPO's decode batch (16-64 rows) a 135M model's matmuls are bound by reading
the weights, ~35 ms per token here, and transformers' generic forward added as much again in
small ops: per-layer dtype round trips in RMSNorm and RoPE, a growing `torch.cat` KV cache, mask
construction, hooks and dispatch (72 ms per token measured at 16 rows). This module computes the
same function with fewer, larger operations: q/k/v fused into one matmul and gate/up into
another, the cache written in place into preallocated buffers, RoPE tables built once per
rollout, one additive mask per step shared by all layers. It is an inference-only mirror of
transformers' modelling code (eager attention semantics: fp32 softmax, grouped KV heads), so
every model family it accepts is checked against the transformers forward in
tests/integration/test_lean_decoder.py; anything it does not recognise falls back to
plain transformers (`LeanDecoder.unsupported` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from openrft.engine.kernels import loader as cpu_kernels
from openrft.engine.kernels.allocator import huge_page_buffer

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
KEY_BLOCK = 16  # key cache columns per block in the kernels' layout (one 16-float vector)


@dataclass
class _Layer:
    ln1: torch.Tensor  # [H] fp32
    qkv: _Linear  # q, k and v projections fused: [(nq + 2 nkv) * D, H]
    o: _Linear
    ln2: torch.Tensor
    gate_up: _Linear  # gate and up fused: [2 I, H]
    down: _Linear


def _can_pack(dtype: torch.dtype) -> bool:
    """oneDNN can pre-pack this dtype's weights (checked once by packing a tiny matrix)."""
    try:
        w = torch.zeros((8, 8), dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        torch.ops.mkldnn._linear_pointwise(torch.zeros((1, 8), dtype=dtype), packed, None, "none", [], "")
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def pack_bf16_weight(w: torch.Tensor) -> torch.Tensor:
    """W [N, K] -> [ceil(N / 16), K / 2, 16, 2]: the operand layout of the `bf16_linear` kernel
    (kernels/bf16_gemm.cpp), 16 output columns times a pair of k per 64-byte vector; columns
    past N are zero."""
    n, k = w.shape
    blocks = -(-n // 16)
    padded = torch.zeros((blocks * 16, k), dtype=w.dtype, device=w.device)
    padded[:n] = w
    return padded.view(blocks, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()


class _Linear:
    """y = x W^T + b with W laid out once per weight update for the fastest matmul available:
    the AVX512-BF16 kernel's pair layout (`gemm`, bf16 on CPUs that have it), else oneDNN's
    blocked layout (`pack`), else the plain weight.

    Why: packing once per weight update instead of handing oneDNN a plain weight on every call
    makes the decode matmuls 1.4-1.7x faster here at 16-64 rows (same results bit for bit), and
    the bf16 kernel is another 1.2-1.4x at 16-32 rows (kernels/bf16_gemm.cpp says why) and as
    fast as oneDNN in a prefill (32 prompts x 131 tokens: 2.92 vs 2.95 s).
    """

    def __init__(
        self,
        sources: list[torch.nn.Linear],
        rows_hint: int,
        pack: bool,
        gemm: Any = None,
        buffer: torch.Tensor | None = None,
    ) -> None:
        self.sources = sources
        self.buffer = buffer  # uint8 memory of packed_bytes(sources) for the packed weight
        self.rows_hint = rows_hint
        self.gemm = gemm
        self.pack = pack and gemm is None
        self.weight = torch.empty(0)
        self.bias: torch.Tensor | None = None
        self.out_features = 0
        self.seen: list[tuple[int, int]] = []  # (address, version) of the sources last read
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-read the source modules' weights (after they were updated in place); a no-op when
        none changed since the last read (the head and other frozen layers: re-packing the
        49k-row head alone took 40 ms per GRPO step). Changes are seen through the tensors'
        version counters, so writes must go through the parameters themselves (`copy_` under
        no_grad, as RolloutModel.sync does), not through `.data`."""
        seen = [(lin.weight.data_ptr(), lin.weight._version) for lin in self.sources]
        seen += [(lin.bias.data_ptr(), lin.bias._version) for lin in self.sources if lin.bias is not None]
        if seen == self.seen:
            return
        self.seen = seen
        if self.gemm is not None and self.packed_bytes(self.sources):
            self._pack_in_place()
            return
        w = torch.cat([lin.weight for lin in self.sources], dim=0).contiguous()
        self.out_features = w.shape[0]
        if any(lin.bias is not None for lin in self.sources):
            self.bias = torch.cat(
                [
                    lin.bias
                    if lin.bias is not None
                    else torch.zeros(lin.out_features, dtype=w.dtype, device=w.device)
                    for lin in self.sources
                ]
            ).contiguous()
        if self.gemm is not None:
            self.weight = pack_bf16_weight(w)
            self.bias = self.bias.float() if self.bias is not None else None
        else:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w, self.rows_hint) if self.pack else w

    @staticmethod
    def packed_bytes(sources: list[torch.nn.Linear]) -> int:
        """Bytes of the bf16 kernel's packed weight when it is packed in place (every source's
        output width a multiple of 16, even input width), else 0."""
        if any(lin.out_features % 16 for lin in sources) or sources[0].in_features % 2:
            return 0
        return sum(lin.out_features for lin in sources) * sources[0].in_features * 2

    def _pack_in_place(self) -> None:
        """pack_bf16_weight of the concatenated sources, each copied straight into its blocks
        (one strided copy per source instead of a concatenation, a padded copy and a permute)."""
        k = self.sources[0].in_features
        n = sum(lin.out_features for lin in self.sources)
        if self.out_features != n or self.weight.shape != (n // 16, k // 2, 16, 2):
            shape = (n // 16, k // 2, 16, 2)
            if self.buffer is not None and self.buffer.numel() == n * k * 2:
                self.weight = self.buffer.view(torch.bfloat16).view(shape)
            else:
                self.weight = torch.empty(shape, dtype=self.sources[0].weight.dtype)
        self.out_features = n
        b0 = 0
        for lin in self.sources:
            self.gemm.pack_bf16_into(lin.weight.contiguous(), self.weight, b0)
            b0 += lin.out_features // 16
        if any(lin.bias is not None for lin in self.sources):
            self.bias = torch.cat(
                [
                    lin.bias.float() if lin.bias is not None else torch.zeros(lin.out_features)
                    for lin in self.sources
                ]
            )

    def __call__(self, x: torch.Tensor, *, f32: bool = False) -> torch.Tensor:
        """x [..., K] -> [..., N], in float32 when `f32` (else the model dtype)."""
        if self.gemm is not None:
            y = self.gemm.bf16_linear(
                x.reshape(-1, x.shape[-1]).contiguous(), self.weight, self.out_features, self.bias, f32
            )
            return y.view(*x.shape[:-1], self.out_features)
        if self.pack:
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        else:
            y = F.linear(x, self.weight, self.bias)
        return y.float() if f32 else y


def _write_blocked_keys(kc: torch.Tensor, keys: torch.Tensor, col: int, s: int) -> torch.Tensor:
    """Write keys [R, kv, D, s - col] into columns [col, s) of a blocked key cache
    [R, kv, L / 16, D, 16]; returns columns [0, s) as [R, kv, D, s] for the prefill's matmul."""
    r, kv, _, d, w = kc.shape
    b0, b1 = col // w, -(-s // w)
    span = kc.new_empty((r, kv, d, (b1 - b0) * w))  # the touched blocks, unblocked
    span.view(r, kv, d, b1 - b0, w).copy_(kc[:, :, b0:b1].permute(0, 1, 3, 2, 4))
    span[..., col - b0 * w : s - b0 * w] = keys
    kc[:, :, b0:b1].copy_(span.view(r, kv, d, b1 - b0, w).permute(0, 1, 3, 2, 4))
    return kc[:, :, :b1].permute(0, 1, 3, 2, 4).reshape(r, kv, d, b1 * w)


def _gemm_kernel(ops: Any, model: torch.nn.Module, dtype: torch.dtype) -> Any:
    """The kernels when they hold the bf16 matmul (AVX512-BF16 CPUs) and every linear layer's
    input width is even (the kernel's pair layout); else None."""
    if ops is None or dtype != torch.bfloat16 or not hasattr(ops, "bf16_linear"):
        return None
    widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return ops if all(k % 2 == 0 for k in widths) else None


class LeanDecoder:
    """Inference-only forward of a Llama-family *ForCausalLM over a static KV cache."""

    @staticmethod
    def unsupported(model: torch.nn.Module) -> str | None:
        """None when `model` can be decoded here, else a short reason."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
            return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {SUPPORTED_TYPES}"
        if getattr(cfg, "hidden_act", "silu") != "silu":
            return f"activation {cfg.hidden_act!r} (only silu)"
        if getattr(cfg, "mlp_bias", False):
            return "MLP biases"
        if getattr(cfg, "use_sliding_window", False) or (
            cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)
        ):
            return "sliding-window attention"
        if any(type(m).__module__.startswith("peft.") for m in model.modules()):
            return "peft layers inside (decode the LoRA-merged RolloutModel copy instead)"
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
            return "unrecognised module layout"
        if any(layer.self_attn.o_proj.bias is not None for layer in inner.layers):
            return "an output-projection bias"
        return None

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        rows_hint: int = 16,
        pack: bool | None = None,
        kernels: bool | None = None,
    ) -> None:
        reason = self.unsupported(model)
        if reason is not None:
            raise ValueError(f"LeanDecoder cannot decode this model: {reason}")
        cfg = model.config
        inner = model.model  # type: ignore[attr-defined]
        self.model = model
        self.n_q = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_q)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_q)
        self.eps = float(cfg.rms_norm_eps)
        self.scale = self.head_dim**-0.5
        self.embed = inner.embed_tokens.weight
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        if pack is None:  # oneDNN packing is a CPU layout; on GPUs the plain matmuls are used
            pack = self.device.type == "cpu" and _can_pack(self.dtype)
        # the fused C++ kernels of the one-token step (kernels/loader.py) on CPU in fp32/bf16; None ->
        # the PyTorch ops below (the prefill always uses those)
        fits = self.device.type == "cpu" and self.dtype in (torch.float32, torch.bfloat16)
        self.ops = cpu_kernels.load() if fits and kernels is not False else None
        if kernels and self.ops is None:
            why = cpu_kernels.why_not() if fits else f"{self.dtype} on {self.device.type}, not CPU fp32/bf16"
            raise ValueError(f"CPU decode kernels requested but unavailable: {why}")

        gemm = _gemm_kernel(self.ops, model, self.dtype)
        groups = [[model.lm_head]]  # type: ignore[attr-defined]
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            groups += [[att.q_proj, att.k_proj, att.v_proj], [att.o_proj], [mlp.gate_proj, mlp.up_proj]]
            groups += [[mlp.down_proj]]
        # the kernel's packed weights, all in one buffer on huge pages (kernels/allocator.py says why)
        sizes = [_Linear.packed_bytes(g) if gemm is not None else 0 for g in groups]
        arena = huge_page_buffer(sum(sizes)) if sum(sizes) else None
        offsets = {id(g[0]): (sum(sizes[:i]), sizes[i]) for i, g in enumerate(groups)}

        def lin(*mods: torch.nn.Linear) -> _Linear:
            start, size = offsets[id(mods[0])]
            buffer = arena[start : start + size] if arena is not None and size else None
            return _Linear(list(mods), rows_hint, pack, gemm, buffer)

        # the residual stream and the norms run in fp32 (transformers keeps the residual in the
        # model dtype): one cast per norm instead of four, and no bf16 rounding of the sum
        self.norm = inner.norm.weight.float()
        self.lm_head = lin(model.lm_head)  # type: ignore[attr-defined]
        self.rotary = inner.rotary_emb
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    ln1=layer.input_layernorm.weight.float(),
                    qkv=lin(att.q_proj, att.k_proj, att.v_proj),
                    o=lin(att.o_proj),
                    ln2=layer.post_attention_layernorm.weight.float(),
                    gate_up=lin(mlp.gate_proj, mlp.up_proj),
                    down=lin(mlp.down_proj),
                )
            )
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.rows = 0
        self.cos = self.sin = torch.empty(0)
        self.blocked = self.ops is not None  # keys in the kernels' 16-column blocks (allocate)
        self.written = 0  # cache columns written so far
        # shared prompts (see repeat_rows): row i's first `shared` columns equal row src[i]'s
        self.shared = 0
        self.src: torch.Tensor | None = None

    def refresh(self) -> None:
        """Re-read every weight from the model (call after its weights changed in place)."""
        for ly in self.layers:
            for lin in (ly.qkv, ly.o, ly.gate_up, ly.down):
                lin.refresh()
        self.lm_head.refresh()

    # -- cache --------------------------------------------------------------------------------
    def allocate(self, rows: int, length: int) -> None:
        """Static cache for `rows` sequences of up to `length` tokens, and RoPE tables."""
        # keys are stored transposed, [rows, kv heads, D, length]: q @ K^T then reads the cache
        # as it lies (30 layers' decode attention at 16 rows: 10.4 ms vs 14.1 ms in row layout).
        # The kernels take them in 16-column blocks, [rows, kv heads, length / 16, D, 16]: a
        # block's keys are one contiguous read instead of D strided ones, and a new column's
        # D keys land in 2 KB instead of D cache lines far apart.
        kv, d, dt = self.n_kv, self.head_dim, self.dtype
        dev = self.device
        shape = (rows, kv, -(-length // KEY_BLOCK), d, KEY_BLOCK) if self.blocked else (rows, kv, d, length)
        self.k = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.layers]
        self.v = [torch.zeros((rows, kv, length, d), dtype=dt, device=dev) for _ in self.layers]
        self.rows = rows
        self.written = self.shared = 0
        self.src = None
        pos = torch.arange(length, device=dev)[None, :]
        probe = torch.zeros((), dtype=self.dtype, device=dev)
        cos, sin = self.rotary(probe, pos)  # [1, length, D], as transformers computes them
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        # rotate_half(x) * sin == roll(x, D/2) * (sin with its first half negated): one op less
        half = self.head_dim // 2
        self.sin = torch.cat([-self.sin[:, :half], self.sin[:, half:]], dim=-1)

    def repeat_rows(self, times: int) -> None:
        """Row i becomes rows [i*times, (i+1)*times): a prompt's cache shared by its group.

        The copies keep the PyTorch path simple; the fused attention reads the columns written
        so far (the prompts) from each group's first row only (`src`), so they stay in cache."""
        self.k = [k.repeat_interleave(times, 0) for k in self.k]
        self.v = [v.repeat_interleave(times, 0) for v in self.v]
        self.rows *= times
        self.shared = self.written
        self.src = torch.arange(self.rows, device=self.device) // times * times

    def keep_rows(self, keep: torch.Tensor, used: int) -> None:
        """Keep only rows `keep` (in that order); only the first `used` columns are copied."""
        n = int(keep.numel())
        for k in self.k:
            if self.blocked:
                nb = -(-used // KEY_BLOCK)
                k[:n, :, :nb] = k[keep, :, :nb]
            else:
                k[:n, :, :, :used] = k[keep, :, :, :used]
        for v in self.v:
            v[:n, :, :used] = v[keep, :, :used]
        self.rows = n
        if self.src is not None:  # each kept row reads its prompt from the first kept row of its group
            group = self.src[keep.to(self.device)]  # the old source row names the group
            first = torch.full_like(self.src, n).scatter_reduce_(
                0, group, torch.arange(n, device=self.device), "amin"
            )
            self.src = first[group]

    # -- forward ------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor, col: int) -> torch.Tensor:
        """Run tokens `ids` [R, T] at positions `pos` [R, T], written to cache columns
        [col, col + T); `key_mask` [R, col + T] marks real (non-pad) keys. Returns the fp32
        logits of the last token [R, V]. R must equal the current `rows`."""
        r, t = ids.shape
        self.written = max(self.written, col + t)
        if t == 1 and self.ops is not None:
            return self._step(ids[:, 0], pos[:, 0].contiguous(), key_mask, col)
        s = col + t
        nq, nkv, d = self.n_q, self.n_kv, self.head_dim
        rep = nq // nkv
        x = F.embedding(ids, self.embed).float()  # [R, T, H] fp32 residual stream
        cos = self.cos[pos][:, :, None, :]  # [R, T, 1, D]
        sin = self.sin[pos][:, :, None, :]
        # additive mask [R, 1, 1, T, S]: padding keys and (within this chunk) future keys
        allowed = key_mask[:, None, :s].bool().expand(r, t, s)
        if t > 1:
            below = torch.ones((t, s), dtype=torch.bool, device=ids.device).tril(col)
            # a padding query sees itself, so no softmax row is all -inf (NaN in the cache)
            itself = below & ~torch.ones((t, s), dtype=torch.bool, device=ids.device).tril(col - 1)
            allowed = (allowed & below) | itself
        mask = torch.zeros((r, t, s), dtype=self.dtype, device=ids.device)
        mask = mask.masked_fill_(~allowed, float("-inf"))
        mask = mask[:, None, None]
        half = d // 2
        hidden = (x.shape[-1],)
        for i, ly in enumerate(self.layers):
            h = F.rms_norm(x, hidden, ly.ln1, self.eps).to(self.dtype)
            qkv = ly.qkv(h).view(r, t, nq + 2 * nkv, d)
            qk, v = qkv[:, :, : nq + nkv], qkv[:, :, nq + nkv :]
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)  # RoPE on q and k heads at once
            kc, vc = self.k[i][:r], self.v[i][:r]
            if self.blocked:
                kc = _write_blocked_keys(kc, qk[:, :, nq:].permute(0, 2, 3, 1), col, s)
            else:
                kc[:, :, :, col:s] = qk[:, :, nq:].permute(0, 2, 3, 1)
            vc[:, :, col:s] = v.transpose(1, 2)
            # grouped heads: query head h reads kv head h // rep, as transformers' repeat_kv
            q = qk[:, :, :nq].transpose(1, 2).reshape(r, nkv, rep * t, d) * self.scale
            scores = torch.matmul(q, kc[:, :, :, :s])  # [R, nkv, rep*T, S]
            scores = scores.view(r, nkv, rep, t, s) + mask  # as transformers' eager: mask added
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)  # in bf16
            probs = probs.view(r, nkv, rep * t, s)
            att = torch.matmul(probs, vc[:, :, :s])  # [R, nkv, rep*T, D]
            att = att.view(r, nq, t, d).transpose(1, 2).reshape(r, t, nq * d)
            x.add_(ly.o(att))
            h = F.rms_norm(x, hidden, ly.ln2, self.eps).to(self.dtype)
            g, u = ly.gate_up(h).chunk(2, dim=-1)
            x.add_(ly.down(F.silu(g).mul_(u)))
        last = F.rms_norm(x[:, -1], hidden, self.norm, self.eps).to(self.dtype)
        return self.lm_head(last, f32=True)

    def _step(self, ids: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor, col: int) -> torch.Tensor:
        """`forward` for one token per row through the fused kernels: per layer, four matmuls and
        four kernel calls (residual add + norm, RoPE + cache write, attention, SiLU * up)."""
        ops, dt = self.ops, self.dtype
        assert ops is not None
        r, s = ids.shape[0], col + 1
        x = F.embedding(ids, self.embed).float()  # [R, H] fp32 residual stream
        mask = torch.zeros((r, s), dtype=dt, device=ids.device)
        mask.masked_fill_(~key_mask[:, :s].bool(), float("-inf"))
        y: torch.Tensor | None = None
        for i, ly in enumerate(self.layers):
            h = ops.add_rms_norm(x, y, ly.ln1, self.eps, dt)  # x += y, then the norm
            q = ops.rope_write(
                ly.qkv(h), pos, self.cos, self.sin, self.k[i], self.v[i], col, self.n_q, self.n_kv, self.scale
            )
            y = ly.o(ops.decode_attention(q, self.k[i], self.v[i], mask, s, self.src, self.shared))
            h = ops.add_rms_norm(x, y, ly.ln2, self.eps, dt)
            y = ly.down(ops.silu_mul(ly.gate_up(h)))
        return self.lm_head(ops.add_rms_norm(x, y, self.norm, self.eps, dt), f32=True)


def lean_decoder_for(model: Any) -> LeanDecoder | None:
    """A LeanDecoder over `model`, or None when it is not a supported architecture."""
    if LeanDecoder.unsupported(model) is not None:
        return None
    return LeanDecoder(model)
