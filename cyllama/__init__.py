"""cyllama: fast local LLM inference on llama.cpp (and speech-to-text on whisper.cpp)."""

from ._errors import ClosedError, CyllamaError, DecodeError, ModelLoadError, RpcError
from ._ffi import LibraryNotFoundError
from ._logging import set_verbose
from ._version import __version__
from ._config import GenerationConfig, GenerationStats
from ._generation import GenerationChunk
from ._llm import LLM, ChatReply, ChatStream, Generator, chat, complete, generate
from ._ngram import NgramCache
from ._speculative import Speculative, SpeculativeParams
from ._batch import BatchGenerator, BatchRequest, BatchResponse, batch_generate
from ._engine import Engine, EngineRequest, QueueFullError
from .grammar import json_schema_to_grammar
from .memory import MemoryEstimate, estimate_gpu_layers, estimate_memory_usage
from .llama import (
    GGUFContext,
    LlamaBatch,
    LlamaContext,
    LlamaContextParams,
    LlamaModel,
    LlamaModelParams,
    LlamaSampler,
    LlamaSamplerChainParams,
    LlamaVocab,
    available_backends,
    ggml_backend_load_all,
    ggml_backend_metal_set_n_cb,
    ggml_backend_offload_supported,
    llama_batch_get_one,
    system_info,
)

__all__ = [
    "MemoryEstimate", "estimate_gpu_layers", "estimate_memory_usage",
    "__version__",
    "complete", "generate", "chat", "ChatReply", "ChatStream", "LLM", "Generator", "GenerationConfig",
    "GenerationStats", "GenerationChunk",
    "NgramCache", "Speculative", "SpeculativeParams",
    "json_schema_to_grammar", "download_model", "list_cached_models", "ChatTemplate", "Llama", "LlamaGrammar",
    "OpenAICompatibleClient",
    "batch_generate", "BatchGenerator", "BatchRequest", "BatchResponse", "Engine", "EngineRequest", "QueueFullError",
    "LlamaModel", "LlamaModelParams", "LlamaContext", "LlamaContextParams", "LlamaSampler",
    "LlamaSamplerChainParams", "LlamaVocab", "LlamaBatch", "llama_batch_get_one", "GGUFContext",
    "ggml_backend_load_all", "ggml_backend_offload_supported", "ggml_backend_metal_set_n_cb",
    "system_info", "available_backends", "set_verbose",
    "CyllamaError", "ModelLoadError", "DecodeError", "ClosedError", "RpcError", "LibraryNotFoundError",
]

# Loaded on first use: they pull in Jinja2 templates, the llama-cpp-python compatibility layer and
# the download client, none of which most programs need at import time.
_LAZY = {"Llama": ".llama_cpp", "LlamaGrammar": ".llama_cpp", "ChatTemplate": ".chat_template",
         "OpenAICompatibleClient": ".integrations.openai_compat",
         "download_model": ".download", "list_cached_models": ".download"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cyllama' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
