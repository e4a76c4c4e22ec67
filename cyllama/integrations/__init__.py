"""Framework integrations: an OpenAI-style client and LangChain models, all on :class:`cyllama.LLM`.

``import cyllama.integrations`` needs nothing beyond cyllama itself; the LangChain classes import
``langchain-core`` only when one of them is first accessed (``pip install cyllama[langchain]``).

- :class:`OpenAICompatibleClient` (``cyllama.integrations.openai_compat``): ``client.chat.completions.create``,
  ``client.completions.create`` and ``client.embeddings.create`` answered by a local model.
- :class:`CyllamaLLM`, :class:`ChatCyllama`, :class:`CyllamaEmbeddings`
  (``cyllama.integrations.langchain``): a LangChain text-completion model, chat model (with
  ``bind_tools`` and ``with_structured_output``) and embeddings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["OpenAICompatibleClient", "CyllamaLLM", "ChatCyllama", "CyllamaEmbeddings"]

_LAZY = {
    "OpenAICompatibleClient": "openai_compat",
    "CyllamaLLM": "langchain",
    "ChatCyllama": "langchain",
    "CyllamaEmbeddings": "langchain",
}

if TYPE_CHECKING:  # pragma: no cover
    from .langchain import ChatCyllama, CyllamaEmbeddings, CyllamaLLM
    from .openai_compat import OpenAICompatibleClient


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
