"""The reference's import path for the servers, which live in :mod:`cyllama.server`.

``cyllama.llama.server.embedded.start_server``, ``...mongoose_server.MongooseServer`` and
``...launcher.ServerLauncher`` are thin re-exports: the servers are a layer above the high-level
API, and nothing else in ``cyllama.llama`` imports from above it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerLauncher", "EmbeddedServer", "start_server", "create_app", "MongooseServer"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import cyllama.server

    return getattr(cyllama.server, name)
