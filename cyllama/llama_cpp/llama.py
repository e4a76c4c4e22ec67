"""``llama_cpp.llama`` of llama-cpp-python: the ``Llama`` class and its companions."""

from ._common import (LlamaState, LogitsProcessor, LogitsProcessorList, MinTokensLogitsProcessor, StoppingCriteria,
                      StoppingCriteriaList)
from ._llama import Llama, LlamaLoadError
from .llama_cache import BaseLlamaCache, LlamaCache, LlamaDiskCache, LlamaRAMCache
from .llama_grammar import LlamaGrammar
from .llama_speculative import LlamaDraftModel
from .llama_tokenizer import BaseLlamaTokenizer, LlamaHFTokenizer, LlamaTokenizer

__all__ = ["Llama", "LlamaState", "LlamaLoadError", "LogitsProcessor", "LogitsProcessorList", "StoppingCriteria",
           "StoppingCriteriaList", "MinTokensLogitsProcessor", "BaseLlamaCache", "LlamaCache", "LlamaRAMCache",
           "LlamaDiskCache", "LlamaGrammar", "LlamaDraftModel", "BaseLlamaTokenizer", "LlamaTokenizer", "LlamaHFTokenizer"]
