"""The core llama.cpp classes (thin wrappers over the cffi binding)."""

from ._backend import (
    available_backends,
    default_n_threads,
    devices,
    ggml_backend_load_all,
    ggml_backend_metal_set_n_cb,
    ggml_backend_offload_supported,
    system_info,
)
from .batch import LlamaBatch, llama_batch_get_one
from .context import LlamaContext, LlamaContextParams
from .gguf import GGUFContext
from .model import LlamaModel, LlamaModelParams
from .sampler import LlamaSampler, LlamaSamplerChainParams
from .vocab import LlamaVocab

__all__ = [
    "LlamaModel", "LlamaModelParams", "LlamaContext", "LlamaContextParams", "LlamaSampler",
    "LlamaSamplerChainParams", "LlamaVocab", "LlamaBatch", "llama_batch_get_one", "GGUFContext",
    "ggml_backend_load_all", "ggml_backend_offload_supported", "ggml_backend_metal_set_n_cb",
    "system_info", "available_backends", "devices", "default_n_threads",
]
