"""Run a server inside this process, on a background thread (notebooks, tests)::

    with serve_in_background(ServerSettings(data_dir="data", api_key="k")) as url:
        client = openrft.Client(url, "k")

It listens on 127.0.0.1 and an ephemeral port unless told otherwise, and shuts down cleanly (the
job worker stops and re-queues running jobs) when the block ends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from openrft.server.settings import ServerSettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_background(
    settings: ServerSettings, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 60
) -> Iterator[str]:
    """Start the app with uvicorn on a thread; yields its base URL."""
    import uvicorn

    from openrft.server.app import create_app
    from openrft.server.limits import uvicorn_limits

    port = port or free_port(host)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, **uvicorn_limits()
        )
    )
    thread = threading.Thread(target=server.run, name="openrft-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
