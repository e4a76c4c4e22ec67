"""The embedded server's chat page (``GET /``) and ``GET /props``, the server facts the page shows.

The page is one HTML file shipped in the package (``static/chat.html``: plain HTML and JavaScript,
no build step, nothing fetched from elsewhere). It streams answers from ``/v1/chat/completions``,
stops one mid-answer by dropping the request (the server cancels a sequence whose client went
away), shows tokens/s and time to first token per answer, and keeps the conversation in the page.
With an API key the page loads without it and asks for the key on the first 401.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from .._ffi import build_info
from ._service import ModelService

__all__ = ["add_chat_page", "add_props", "chat_page_html"]


def chat_page_html() -> str:
    """The page's HTML."""
    return resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8")


def add_props(app: Any, service: ModelService) -> None:
    """``GET /props``: the model, the context each conversation gets, the slots, the build."""
    info = build_info()
    props = {
        "model": service.model_id,
        "model_path": str(service.model.path),
        "n_ctx": service.engine.n_ctx_slot,
        "total_slots": service.engine.n_slots,
        "n_vocab": service.model.n_vocab,
        "backend": info.get("backend"),
        "llama_cpp_commit": info.get("llama_cpp_commit"),
        "system_info": None,
    }
    try:
        from ..llama import system_info

        props["system_info"] = system_info()
    except Exception:  # informational only
        pass

    @app.get("/props")
    async def get_props() -> Any:
        return {**props, "slots_busy": service.engine.busy_slots}


def add_chat_page(app: Any) -> None:
    """``GET /``: the chat page."""
    from fastapi.responses import HTMLResponse

    html = chat_page_html()

    @app.get("/", include_in_schema=False)
    async def chat_page() -> Any:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache",
                                           "Content-Security-Policy": "default-src 'self'; "
                                           "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})
