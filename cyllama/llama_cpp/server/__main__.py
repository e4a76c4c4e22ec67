"""``python -m cyllama.llama_cpp.server --model MODEL [--host H] [--port P] [--n_ctx N] ...``

llama-cpp-python's server command (its settings names, see :mod:`.settings`) serving cyllama's
embedded OpenAI server (:func:`cyllama.server.embedded.create_app` on uvicorn): the same
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and ``/v1/models`` routes.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .settings import SettingsError, model_path, parse_settings, server_kwargs

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        values = parse_settings(argv)
        kwargs = server_kwargs(values)
        path = model_path(values)
    except (SettingsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from ..._errors import ModelLoadError
    from ..._logging import set_verbose
    from ...server._service import ModelService
    from ...server.embedded import create_app

    set_verbose(bool(values["verbose"]))
    try:
        service = ModelService(path, **kwargs)
    except (OSError, ValueError, ModelLoadError) as e:  # a missing or unreadable model
        print(f"error: {e}", file=sys.stderr)
        return 1
    app = create_app(service, values["api_key"], close_service=True)
    print(f"cyllama: serving {service.model_id} on http://{values['host']}:{values['port']}", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=values["host"], port=values["port"], ssl_keyfile=values["ssl_keyfile"],
                ssl_certfile=values["ssl_certfile"], root_path=values["root_path"],
                log_level="info" if values["verbose"] else "warning", access_log=bool(values["verbose"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
