"""OpenAI-compatible servers (the reference also imports them from ``cyllama.llama.server``).

* :mod:`.embedded`: a FastAPI app on cyllama's continuous-batching engine and its one OpenAI
  layer, run by uvicorn (``EmbeddedServer``, ``start_server``).
* :mod:`.mongoose_server`: the same app served by the Mongoose C event loop (``MongooseServer``;
  needs the optional ``cymongoose`` package).
* :mod:`.launcher`: ``ServerLauncher`` runs llama.cpp's own ``llama-server`` binary.
* :mod:`.rpc_server`: ``RpcServer`` runs llama.cpp's ``rpc-server`` (a machine lending its memory
  and compute to a model loaded elsewhere with ``rpc_servers=``).

Names are resolved lazily so that importing the package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ServerLauncher", "EmbeddedServer", "start_server", "create_app", "MongooseServer", "RpcServer"]

_LAZY = {"ServerLauncher": ".launcher", "EmbeddedServer": ".embedded", "start_server": ".embedded",
         "create_app": ".embedded", "MongooseServer": ".mongoose_server", "RpcServer": ".rpc_server"}

if TYPE_CHECKING:  # pragma: no cover
    from .embedded import EmbeddedServer, create_app, start_server
    from .launcher import ServerLauncher
    from .mongoose_server import MongooseServer
    from .rpc_server import RpcServer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
