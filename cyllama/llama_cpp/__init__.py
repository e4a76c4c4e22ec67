"""A drop-in replacement for llama-cpp-python's high-level API, on cyllama.

Change ``from llama_cpp import Llama`` to ``from cyllama.llama_cpp import Llama``::

    from cyllama.llama_cpp import Llama

    llm = Llama("model.gguf", n_ctx=2048, verbose=False)
    out = llm("Q: Name the planets in the solar system. A: ", max_tokens=32, stop=["Q:", "\\n"])
    print(out["choices"][0]["text"])
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])
    print(chat["choices"][0]["message"]["content"])

Return values are the dicts llama-cpp-python returns (OpenAI shapes). Differences:

* ``llama_cpp.llama_cpp``'s functions (``llama_decode``, ``llama_tokenize``...) call cyllama's cffi
  binding: pointers are cffi cdata and buffers come from ``ffi.new``; ctypes objects are refused
  with a ``TypeError`` naming the cffi equivalent, and its ctypes structs, pointer types and
  callback types are not mirrored (``llama_cpp._internals`` wraps cyllama's core classes);
  ``Llama.ctx`` / ``Llama.model`` are cffi pointers, which these functions take;
* more is accepted: ``logprobs`` without ``logits_all=True``, ``echo`` while streaming,
  ``response_format`` of type ``json_schema``; bad arguments raise at the call (also with
  ``stream=True``) with ``ValueError``/``TypeError``;
* ``suffix`` uses the model's fill-in-the-middle tokens, or is appended to the output when it has none;
* a vocab-only model has no context (evaluation raises ``RuntimeError``);
* chat templates render in cyllama's sandboxed Jinja environment; ``LlamaDiskCache`` stores
  ``.npz`` files (no ``diskcache`` package, no pickle).
"""

from .._logging import set_verbose
from .._version import __version__ as __cyllama_version__
from . import _internals, llama_cache, llama_chat_format, llama_cpp, llama_grammar, llama_speculative, llama_tokenizer
from . import llama_types
from ._common import (LlamaState, LogitsProcessor, LogitsProcessorList, MinTokensLogitsProcessor, StoppingCriteria,
                      StoppingCriteriaList, suppress_stdout_stderr)
from ._llama import Llama, LlamaLoadError
from .llama_cache import BaseLlamaCache, LlamaCache, LlamaDiskCache, LlamaRAMCache
from .llama_chat_format import ChatFormatterResponse, Jinja2ChatFormatter
from .llama_grammar import (ARITHMETIC_GBNF, C_GBNF, CHESS_GBNF, JAPANESE_GBNF, JSON_ARR_GBNF, JSON_GBNF,
                            LIST_GBNF, LlamaGrammar)
from .llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding
from .llama_tokenizer import BaseLlamaTokenizer, LlamaHFTokenizer, LlamaTokenizer

# the LLAMA_* / GGML_* constants, parameter defaults and llama.h functions, and every OpenAI-shaped
# type, at the top level as llama-cpp-python has them
_constants = list(llama_cpp.__all__)
_types = list(llama_types.__all__)
globals().update({name: getattr(llama_cpp, name) for name in _constants})
globals().update({name: getattr(llama_types, name) for name in _types})

#: ``llama_cpp.internals`` as llama-cpp-python's top level has it (the module ``_internals``).
internals = _internals

#: The llama-cpp-python release whose API this mirrors (and whose llama.cpp cyllama builds).
__version__ = "0.3.36"

__all__ = [
    "__version__", "__cyllama_version__", "Llama", "LlamaState", "LlamaLoadError", "LlamaGrammar", "LlamaCache", "LlamaRAMCache",
    "LlamaDiskCache", "BaseLlamaCache", "LlamaTokenizer", "BaseLlamaTokenizer", "LlamaHFTokenizer",
    "LogitsProcessor", "LogitsProcessorList", "StoppingCriteria", "StoppingCriteriaList", "MinTokensLogitsProcessor",
    "ChatFormatterResponse", "Jinja2ChatFormatter", "llama_chat_format", "llama_grammar", "llama_cache",
    "llama_tokenizer", "llama_types", "llama_cpp", "llama_speculative", "internals", "LlamaDraftModel",
    "LlamaPromptLookupDecoding", "set_verbose", "suppress_stdout_stderr", "JSON_GBNF", "JSON_ARR_GBNF",
    "LIST_GBNF", "ARITHMETIC_GBNF", "C_GBNF", "CHESS_GBNF", "JAPANESE_GBNF",
    *_types,
    *_constants,
]
