"""Fused training ops: each peft LoRA linear, Llama RMSNorm and gated MLP as one op
(`lora.py`, `norm.py`, `mlp.py`, switched on together by `fused.fused_layers`), the grouped
attention kernel (`attention.py`), the forward swap they share (`forward_swap.py`) and
mixed-precision autocast for training (`precision.py`)."""
