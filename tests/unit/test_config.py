"""Config loading: YAML, --set overrides, unknown keys with the closest name, cross-field rules."""

from pathlib import Path

import pytest

from openrft.config import RunConfig, apply_overrides, load_config, parse_override
from openrft.errors import ConfigError

BASE = """\
data: {train: rows.jsonl}
rewards:
  - {name: fmt, function: countdown.format}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "rows.jsonl").write_text('{"prompt": "hi"}\n')
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert isinstance(cfg, RunConfig)
    assert cfg.data.train == str((tmp_path / "rows.jsonl").resolve())
    assert cfg.base_dir == str(tmp_path.resolve())
    assert cfg.output_dir == "runs/cfg"  # {name} is the config file's stem
    assert cfg.epsilon_high == cfg.grpo.epsilon  # epsilon_high defaults to epsilon


def test_overrides_are_typed_by_yaml(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, BASE), ["max_steps=7", "grpo.temperature=0.5", "lora.target_modules=[q_proj, v_proj]"]
    )
    assert cfg.max_steps == 7 and cfg.grpo.temperature == 0.5
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert parse_override("a.b=true") == (["a", "b"], True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.num_generation=4", "did you mean 'num_generations'"),
        ("max_step=4", "did you mean 'max_steps'"),
        ("optim.learning_rate=0.1", "unknown key 'optim.learning_rate'"),
    ],
)
def test_unknown_keys_name_the_closest_valid_one(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE), [override])


def test_cross_field_rules_say_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="success_reward 'equation' is not a reward name"):
        load_config(write(tmp_path, BASE + "success_reward: equation\n"))
    with pytest.raises(ConfigError, match="needs held-out rows"):
        load_config(write(tmp_path, BASE), ["eval.every=5"])
    with pytest.raises(ConfigError, match="at least one entry under `rewards`"):
        load_config(write(tmp_path, "data: {train: rows.jsonl}\n"))


def test_bad_values_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grpo\.temperature"):
        load_config(write(tmp_path, BASE), ["grpo.temperature=-1"])
    with pytest.raises(ConfigError, match=r"cfg\.yaml:\d+: invalid YAML"):
        load_config(write(tmp_path, "data:\n  - [unclosed\n"))
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        apply_overrides({}, ["max_steps"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"max_steps": 3}, ["max_steps.x=1"])
