"""Model registry: path resolution, manifests, atomic and locked provisioning (tiny model only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openrft.errors import ConfigError
from openrft.models import registry
from openrft.models.registry import (
    KNOWN_MODELS,
    MANIFEST_NAME,
    KnownModel,
    list_models,
    openrft_home,
    provision_model,
    resolve_dtype,
    resolve_model,
    verify_model,
)

TINY = "tiny-random-llama"


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty OPENRFT_HOME for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("OPENRFT_HOME", str(home))
    return home


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- openrft_home --------------------------------------------------------------------------------


def test_openrft_home_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "x"))
    assert openrft_home() == tmp_path / "x"


def test_openrft_home_default_is_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENRFT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert openrft_home() == tmp_path / ".cache" / "openrft"


def test_session_home_is_not_the_real_cache() -> None:
    assert openrft_home() != Path("~/.cache/openrft").expanduser()


# --- resolve_model -------------------------------------------------------------------------------


def test_local_directory_with_config_is_used_as_is(tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json") as info:
        resolve_model(str(tmp_path))
    assert "\n" not in str(info.value)


def test_known_name_wins_over_a_same_named_non_model_directory(
    fresh_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / TINY).mkdir()  # e.g. a run output folder in the working directory
    monkeypatch.chdir(tmp_path)
    assert resolve_model(TINY, progress=False) == fresh_home / "models" / TINY


def test_missing_absolute_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_model(str(tmp_path / "nope"))


def test_unknown_hub_id_fails_with_one_line_listing_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model("no-such-org/no-such-model-xyz")
    message = str(info.value)
    assert "could not be found locally nor downloaded" in message
    assert all(name in message for name in KNOWN_MODELS)
    assert "\n" not in message


# --- provisioning --------------------------------------------------------------------------------


def test_provisioning_writes_manifest_matching_every_file(fresh_home: Path) -> None:
    path = resolve_model(TINY, progress=False)
    assert path == fresh_home / "models" / TINY
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != MANIFEST_NAME)
    assert sorted(manifest["files"]) == files
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == registry.sha256_file(path / rel)
        assert entry["size"] == (path / rel).stat().st_size
    assert manifest["source"]["seed"] == 1234 and manifest["name"] == TINY and manifest["created"]
    assert verify_model(path) == [] and verify_model(TINY) == []
    assert [p.name for p in (fresh_home / "models").iterdir() if ".tmp-" in p.name] == []


def test_tiny_model_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = []
    for home in ("a", "b"):
        monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / home))
        path = provision_model(TINY, progress=False)
        manifests.append(json.loads((path / MANIFEST_NAME).read_text())["files"])
    assert manifests[0] == manifests[1]


def test_second_resolve_reuses_the_provisioned_directory(fresh_home: Path) -> None:
    path = resolve_model(TINY, progress=False)
    stamp = (path / MANIFEST_NAME).stat().st_mtime_ns
    assert resolve_model(TINY, progress=False) == path
    assert (path / MANIFEST_NAME).stat().st_mtime_ns == stamp


def test_force_rebuilds(fresh_home: Path) -> None:
    path = provision_model(TINY, progress=False)
    (path / "stray.txt").write_text("x")
    provision_model(TINY, progress=False, force=True)
    assert not (path / "stray.txt").exists() and verify_model(path) == []


def test_directory_without_manifest_is_removed_and_rebuilt(fresh_home: Path) -> None:
    target = fresh_home / "models" / TINY
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # an interrupted attempt
    stale_tmp = fresh_home / "models" / f".{TINY}.tmp-999999"
    stale_tmp.mkdir()
    assert "incomplete" in {e["status"] for e in list_models() if e["name"] == TINY}
    assert resolve_model(TINY, progress=False) == target
    assert (target / MANIFEST_NAME).is_file() and verify_model(target) == []
    assert not stale_tmp.exists()


def test_truncated_file_triggers_rebuild(fresh_home: Path) -> None:
    path = provision_model(TINY, progress=False)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert not registry.is_provisioned(path)
    assert resolve_model(TINY, progress=False) == path
    assert verify_model(path) == []


def test_failed_build_leaves_nothing_behind(fresh_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(out_dir: Path, steps: registry.Steps) -> dict:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("source unreadable")

    monkeypatch.setitem(KNOWN_MODELS, "broken", KnownModel("broken", "fails half-way", broken_build))
    with pytest.raises(RuntimeError, match="source unreadable"):
        provision_model("broken", progress=False)
    leftovers = [p.name for p in (fresh_home / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_unknown_name_for_provision_is_a_config_error(fresh_home: Path) -> None:
    with pytest.raises(ConfigError, match="known names are"):
        provision_model("gpt-17", progress=False)


# Two processes race to provision a slow fake model; the lock must make exactly one build it.
_RACE_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from openrft.models import registry

    def slow_build(out_dir, steps):
        with open(sys.argv[1], "a") as log:
            log.write(f"{os.getpid()}\\n")
        (out_dir / "config.json").write_text("{}")
        time.sleep(1.0)
        (out_dir / "weights.bin").write_bytes(b"w" * 1000)
        return {"kind": "test"}

    registry.KNOWN_MODELS["slow"] = registry.KnownModel("slow", "slow fake", slow_build)
    print(registry.provision_model("slow", progress=False))
    """
)


def test_concurrent_provisioning_builds_once(fresh_home: Path, tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    env = {**os.environ, "OPENRFT_HOME": str(fresh_home)}
    cmd = [sys.executable, "-c", _RACE_SCRIPT, str(log)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] == str(fresh_home / "models" / "slow")
    assert len(log.read_text().splitlines()) == 1
    assert verify_model(outputs[0]) == []


# --- verify_model --------------------------------------------------------------------------------


def test_verify_reports_changed_missing_and_extra_files(fresh_home: Path) -> None:
    path = provision_model(TINY, progress=False)
    _flip_byte(path / "model.safetensors")  # same size, different content
    (path / "tokenizer.json").unlink()
    (path / "extra.txt").write_text("hello")
    problems = registry.check_model(path)
    assert problems["model.safetensors"] == "sha256 differs from the manifest"
    assert problems["tokenizer.json"] == "missing"
    assert problems["extra.txt"] == "not in the manifest"
    assert verify_model(path) == ["extra.txt", "model.safetensors", "tokenizer.json"]


def test_verify_without_manifest_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=re.escape(MANIFEST_NAME)):
        verify_model(tmp_path)


# --- list_models ---------------------------------------------------------------------------------


def test_list_models_statuses(fresh_home: Path) -> None:
    before = {e["name"]: e for e in list_models()}
    assert set(before) == set(KNOWN_MODELS)
    assert {e["status"] for e in before.values()} == {"not provisioned"}
    provision_model(TINY, progress=False)
    other = fresh_home / "models" / "my-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    after = {e["name"]: e for e in list_models()}
    assert after[TINY]["status"] == "provisioned" and after[TINY]["known"]
    assert after[TINY]["size_bytes"] > 300_000
    assert after[TINY]["path"] == str(fresh_home / "models" / TINY)
    assert after["my-model"]["status"] == "unmanaged" and not after["my-model"]["known"]
    assert after["smollm2-135m-instruct"]["status"] == "not provisioned"


# --- dtypes --------------------------------------------------------------------------------------


def test_resolve_dtype() -> None:
    import torch

    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16
    expected = torch.bfloat16 if registry.cpu_supports_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    with pytest.raises(ConfigError, match="use one of"):
        resolve_dtype("fp8")


def test_cpu_bf16_detection_matches_cpuinfo() -> None:
    flags = Path("/proc/cpuinfo").read_text().split()
    assert registry.cpu_supports_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
