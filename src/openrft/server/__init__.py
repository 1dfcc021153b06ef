"""The OpenRFT server: FastAPI app factory, store, routes and dashboard.

Nothing is built at import time; `create_app(settings)` builds an app::

    from openrft.server import ServerSettings, create_app
    app = create_app(ServerSettings(data_dir="openrft-data"))
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from openrft.server.app import create_app

        return create_app
    if name == "ServerSettings":
        from openrft.server.settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module 'openrft.server' has no attribute {name!r}")
