"""Run configuration: pydantic models, YAML in, resolved JSON out.

Every parameter is documented once, in its field. Unknown keys are refused with the closest
valid name; cross-field rules say what to change. Importing this module does not import torch.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from openrft.errors import ConfigError
from openrft.fsutil import write_json_atomic
from openrft.rewards.spec import RewardSpec

Method = Literal["grpo", "sft", "dpo"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """The base model and the precision it runs in."""

    name: str = Field("smollm2-135m-instruct", description="Known model name, local directory or HF hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 where the CPU/GPU has fast bf16, else float32."
    )
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu' or 'cuda[:N]'.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = physical cores.")


class LoraSection(_Section):
    """The LoRA adapter that is trained (peft)."""

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )
    init_adapter: str | None = Field(
        None, description="Start from this saved adapter directory (SFT then RFT)."
    )


class DataSection(_Section):
    """Where the rows come from and how each becomes a prompt."""

    train: str = Field(
        ..., description="Training rows: .jsonl, .json, .csv, .parquet or a `datasets` directory."
    )
    eval: str | None = Field(
        None, description="Held-out rows; if unset, `eval_fraction` of `train` is held out."
    )
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="Fraction of `train` held out when `eval` is unset."
    )
    prompt_template: str | None = Field(
        None, description="Python format string rendered from the row's columns, e.g. 'Solve {question}'."
    )
    system_prompt: str | None = Field(None, description="Optional system message.")
    assistant_prefix: str = Field(
        "",
        description="Text prefilled at the start of the answer (e.g. '<think>'); rewards see it too. "
        "May use the row's columns like the template: '<think>We need {target} from {nums}.'",
    )
    max_prompt_tokens: int = Field(512, ge=8, description="Prompts longer than this are refused.")
    shuffle: bool = Field(True, description="Shuffle training rows each epoch (seeded).")

    @field_validator("train")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("data.train is empty; give a dataset path")
        return v


class GRPOSection(_Section):
    """Group Relative Policy Optimization: sampling, advantages and the loss."""

    # -- sampling (rollout)
    num_generations: int = Field(8, ge=2, description="G: completions sampled per prompt (the group).")
    prompts_per_step: int = Field(2, ge=1, description="Prompts per optimizer step; batch = prompts x G.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use it too).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    max_new_tokens: int = Field(128, ge=1, description="Completion length cap; longer ones are clipped.")
    # -- advantages
    scale_rewards: bool = Field(
        True, description="Divide advantages by the group's reward std (off for Dr. GRPO)."
    )
    # -- loss
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="grpo: mean over each sequence then over sequences; dapo: mean over all tokens; "
        "dr_grpo: sum over tokens / (sequences x max_new_tokens).",
    )
    epsilon: float = Field(0.2, ge=0, description="Lower clip: ratio >= 1 - epsilon.")
    epsilon_high: float | None = Field(
        None, ge=0, description="Upper clip (DAPO clip-higher); None = epsilon."
    )
    num_iterations: int = Field(
        1, ge=1, description="Updates per rollout batch (mu); >1 reuses rollout log-probs."
    )
    beta: float = Field(0.0, ge=0, description="KL coefficient against the base model (adapter disabled).")
    mask_truncated_completions: bool = Field(False, description="Exclude clipped completions from the loss.")
    skip_zero_advantage: bool = Field(
        True, description="Skip the backward pass for samples with advantage 0."
    )


class OptimSection(_Section):
    """AdamW on the adapter's parameters."""

    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.99))
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None = off.")
    micro_batch_size: int = Field(
        16, ge=1, description="Sequences per forward/backward; gradients accumulate over the whole batch."
    )


class EvalSection(_Section):
    """Held-out evaluation."""

    max_rows: int | None = Field(None, ge=1, description="Evaluate at most this many rows.")
    samples: int = Field(1, ge=1, description="Completions per row (K for pass@K).")
    temperature: float | None = Field(
        None,
        ge=0,
        description="Sampling temperature; None = greedy for 1 sample, 1.0 for several; 0 = greedy.",
    )
    success_threshold: float = Field(
        1.0, description="A sample counts as solved when success_reward >= this."
    )
    max_new_tokens: int | None = Field(None, ge=1, description="Default: grpo.max_new_tokens.")
    batch_size: int = Field(32, ge=1)
    every: int = Field(
        0,
        ge=0,
        description="Evaluate the held-out rows during training every N steps and at the last step "
        "(eval/<reward>/mean, eval/accuracy and its CI in metrics.jsonl); 0 = never during training.",
    )
    keep_best: bool = Field(
        False,
        description="With `every`: keep the adapter with the best held-out accuracy as adapter-best/ "
        "next to adapter/.",
    )


# Built-in writers of SFT target completions (the functions live in openrft.data.targets).
SFT_COMPLETION_BUILTINS: tuple[str, ...] = ("countdown.demonstration",)


class SFTSection(_Section):
    """Supervised fine-tuning: where each row's target completion comes from, batching, packing."""

    completion_fn: str | None = Field(
        None,
        description="Writes each row's target completion (the full assistant message): a built-in "
        "('countdown.demonstration') or 'package.module:function' / 'path/file.py:function' taking the "
        "row. None = the row's `completion` column (text or assistant messages) or a `messages` column "
        "ending with the assistant's message; rows with neither use the task's demonstration writer "
        "when the rewards are that task's built-ins (countdown.*).",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per optimizer step.")
    packing: bool = Field(
        False,
        description="Pack several sequences into each row of max_seq_len tokens (each still attends "
        "only to itself), so no compute is spent on padding.",
    )
    max_seq_len: int = Field(
        1024,
        ge=16,
        description="Longest prompt + completion in tokens (longer rows are refused); packed row length.",
    )
    full_finetune: bool = Field(
        False, description="Train every weight instead of a LoRA adapter; writes model/ instead of adapter/."
    )

    @field_validator("completion_fn")
    @classmethod
    def _known_fn(cls, v: str | None) -> str | None:
        if v is None or ":" in v or v in SFT_COMPLETION_BUILTINS:
            return v
        hint = _closest(v, list(SFT_COMPLETION_BUILTINS))
        raise ValueError(
            f"sft.completion_fn {v!r} is not a built-in ({', '.join(SFT_COMPLETION_BUILTINS)})"
            + (f"; did you mean {hint!r}?" if hint else "")
            + " For your own code write 'package.module:function' or 'path/file.py:function'"
        )


class DPOSection(_Section):
    """Direct Preference Optimization on (prompt, chosen, rejected) rows; reference = the base model."""

    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL to the reference (0.1 typical).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed fraction of flipped preference labels (cDPO); 0 = plain DPO."
    )
    batch_size: int = Field(8, ge=1, description="Preference pairs per optimizer step.")
    max_seq_len: int = Field(
        1024, ge=16, description="Longest prompt + answer in tokens; longer rows are refused."
    )


class StageSection(_Section):
    """One stage of a chained run; each stage starts from the previous stage's adapter."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", description="Folder name of the stage.")
    method: Method = Field(..., description="Recipe of this stage.")
    max_steps: int | None = Field(
        None, ge=1, description="Steps of this stage; None = the top-level max_steps."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="dotted.key -> value applied to this stage only, e.g. {optim.lr: 1.0e-3}.",
    )


class CompareSection(_Section):
    """`openrft compare`: SFT vs RFT vs SFT-then-RFT at several training-set sizes, equal budgets."""

    train_sizes: list[int] = Field([12, 100], min_length=1, description="Training rows drawn per size.")
    methods: list[Literal["sft", "rft", "sft_rft"]] = Field(
        ["sft", "rft", "sft_rft"],
        min_length=1,
        description="Methods trained at each size (base is always evaluated).",
    )
    eval_rows: int = Field(200, ge=1, description="Held-out rows every model is evaluated on (the first N).")
    budget_sequences: int | None = Field(
        None,
        ge=1,
        description="Training sequences per method (completions that get a gradient); None = max_steps x "
        "grpo.prompts_per_step x grpo.num_generations. SFT steps = budget / sft.batch_size.",
    )
    sft_share: float = Field(
        0.5, gt=0, lt=1, description="SFT-then-RFT: fraction of the budget spent on SFT."
    )
    sft_overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted.key -> value applied to every SFT training (e.g. optim.lr)."
    )
    rft_overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted.key -> value applied to every RFT (GRPO) training."
    )


class RunConfig(_Section):
    """A whole run. `openrft train CONFIG` reads this from YAML."""

    _base_dir: str | None = PrivateAttr(default=None)

    method: Method = Field("grpo", description="Training recipe.")
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="Reward functions, weighted and summed."
    )
    success_reward: str | None = Field(
        None, description="Reward whose mean is reported as `accuracy` in eval."
    )
    max_reward_error_rate: float = Field(
        0.5, gt=0, le=1, description="Stop the run when a reward function fails on more than this fraction."
    )
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    stages: list[StageSection] = Field(
        default_factory=list,
        description="Chain recipes (e.g. SFT then GRPO); each starts from the previous adapter.",
    )
    compare: CompareSection = Field(default_factory=CompareSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    seed: int = Field(0, description="Seeds data order, sampling and initialisation.")
    output_dir: str = Field("runs/{name}", description="Run directory; {name} is the config file's stem.")
    save_every: int = Field(10, ge=0, description="Checkpoint every N steps; 0 = only at the end.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    log_samples_every: int = Field(1, ge=1, description="Write samples.jsonl every N steps.")

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        names = [r.name for r in self.rewards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"reward names must be unique; rename the repeated {dupes}")
        if self.stages:
            _check_stages(self)
        if self.method == "grpo" and not self.stages and not self.rewards:
            raise ValueError("method grpo needs at least one entry under `rewards`")
        if self.success_reward is not None and self.success_reward not in names:
            hint = _closest(self.success_reward, names)
            raise ValueError(
                f"success_reward {self.success_reward!r} is not a reward name; use one of {names}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        if self.grpo.top_k == 1 and self.grpo.temperature > 0:
            raise ValueError("grpo.top_k=1 makes the G samples identical (no signal); use top_k 0 or > 1")
        if self.eval.every and self.data.eval is None and self.data.eval_fraction == 0:
            raise ValueError("eval.every > 0 needs held-out rows: set data.eval or data.eval_fraction > 0")
        if self.eval.every and not self.rewards:
            raise ValueError("eval.every > 0 scores held-out answers with `rewards`: add at least one")
        if self.eval.keep_best and not self.eval.every:
            raise ValueError("eval.keep_best needs eval.every > 0 (the held-out accuracy it compares)")
        return self

    @property
    def base_dir(self) -> str | None:
        """The config file's folder (where relative paths and reward modules are looked up)."""
        return self._base_dir

    @property
    def epsilon_high(self) -> float:
        return self.grpo.epsilon if self.grpo.epsilon_high is None else self.grpo.epsilon_high


# ---------------------------------------------------------------------------------------------
# Stages: a stage's config is the top-level config with the stage's method, steps and overrides
# ---------------------------------------------------------------------------------------------


def set_dotted(data: dict[str, Any], overrides: dict[str, Any], where: str = "overrides") -> dict[str, Any]:
    """Apply {"optim.lr": 1e-3, ...} to a nested dict in place (sections are created as needed)."""
    for key, value in overrides.items():
        parts = [p for p in str(key).split(".") if p]
        if not parts:
            raise ValueError(f"{where}: empty key")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ValueError(f"{where}: {key!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def stage_config(cfg: RunConfig, index: int, init_adapter: str | None = None) -> RunConfig:
    """The RunConfig of stage `index`: stages removed, method/max_steps/overrides applied, and
    `lora.init_adapter` set to the previous stage's adapter when given."""
    stage = cfg.stages[index]
    data = cfg.model_dump(mode="json", exclude={"stages"})
    data["method"] = stage.method
    if stage.max_steps is not None:
        data["max_steps"] = stage.max_steps
    set_dotted(data, stage.overrides, f"stages[{index}].overrides")
    if init_adapter is not None:
        data["lora"]["init_adapter"] = init_adapter
    return RunConfig.model_validate(data)


def _check_stages(cfg: RunConfig) -> None:
    if "method" in cfg.model_fields_set:
        raise ValueError("set `method` on each entry of `stages`, not at the top level (or drop `stages`)")
    names = [s.name for s in cfg.stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"stage names must be unique; rename the repeated {dupes}")
    for i, stage in enumerate(cfg.stages):
        try:
            stage_config(cfg, i)
        except ValidationError as e:
            raise ValueError(_format_validation_error(e, f"stages[{i}] ({stage.name})")) from None


# ---------------------------------------------------------------------------------------------
# Loading, overrides, errors
# ---------------------------------------------------------------------------------------------


def _closest(word: str, options: list[str]) -> str | None:
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return found[0] if found else None


def _section_fields(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names valid at `path` (the location pydantic reports for an extra key)."""
    current: Any = model
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            for c in candidates:
                for a in getattr(c, "__args__", ()):
                    if isinstance(a, type) and issubclass(a, BaseModel):
                        nxt = a
        if nxt is None:
            return []
        current = nxt
    return list(getattr(current, "model_fields", {}))


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    if first["type"] == "extra_forbidden":
        valid = _section_fields(RunConfig, loc)
        hint = _closest(str(loc[-1]), valid)
        msg = f"{source}: unknown key {key!r}"
        msg += f"; did you mean {hint!r}?" if hint else f"; valid keys here: {', '.join(valid)}"
        return msg
    if first["type"] == "missing":
        return f"{source}: missing required key {key!r}; add it to the config"
    text = first["msg"].removeprefix("Value error, ")
    where = f" at {key!r}" if loc else ""
    return f"{source}: {text}{where}" + (f" (got {first.get('input')!r})" if loc and "input" in first else "")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML: numbers, booleans, lists work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. --set grpo.temperature=0.9")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set dotted.key=value` items to the raw config dict, in order."""
    for item in overrides:
        parts, value = parse_override(item)
        try:
            set_dotted(data, {".".join(parts): value}, where=f"--set {item!r}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None, **data_: Any) -> RunConfig:
    """Read a YAML config, apply `--set` overrides, validate. Relative data/reward paths are
    resolved against the config file's directory so a run works from any working directory."""
    source = str(path) if path else "<config>"
    raw: dict[str, Any] = dict(data_)
    base = Path(".")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        except RecursionError:
            raise ConfigError(
                f"{p}: the YAML is nested too deeply; a config is a few levels of keys"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the config must be a mapping of keys to values")
        raw = {**loaded, **raw}
        base = p.parent
        raw["output_dir"] = str(raw.get("output_dir", "runs/{name}")).replace("{name}", p.stem)
    apply_overrides(raw, overrides or [])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    return resolve_paths(cfg, base)


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make data, adapter and reward-file paths absolute relative to `base` (the config's folder)."""

    def fix(value: str | None) -> str | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        candidate = base / p
        return str(candidate.resolve()) if candidate.exists() or not p.exists() else str(p.resolve())

    cfg._base_dir = str(base.resolve())
    cfg.data.train = fix(cfg.data.train) or cfg.data.train
    cfg.data.eval = fix(cfg.data.eval)
    cfg.lora.init_adapter = fix(cfg.lora.init_adapter)
    for spec in cfg.rewards:
        path_part, sep, func = spec.function.rpartition(":")
        if sep and path_part.endswith(".py"):
            spec.function = f"{fix(path_part)}:{func}"
    fn_path, sep, fn_name = (cfg.sft.completion_fn or "").rpartition(":")
    if sep and fn_path.endswith(".py"):
        cfg.sft.completion_fn = f"{fix(fn_path)}:{fn_name}"
    return cfg


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as JSON (a run's config.json), atomically."""
    write_json_atomic(path, cfg.model_dump(mode="json"))
