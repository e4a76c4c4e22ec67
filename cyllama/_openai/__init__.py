"""cyllama's one OpenAI layer: request validation (:mod:`.schema`) and the translation between
requests, generation jobs and OpenAI responses (:mod:`.service`), tool calls included (the
model-agnostic tool machinery it shapes as OpenAI's JSON is :mod:`cyllama._tools`, below it).

The server, the in-process client, LangChain's chat model and the drop-in's OpenAI shapes all go
through it, so a feature added here reaches every entry point. It sits above the high-level API
(``LLM``, the engine) and below the entry points; it never imports from them.
"""

from .schema import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, InvalidRequestError,
                     UnknownFieldError, parse_request)
from .service import Job, OpenAIService, Plan, run_plan, server_defaults

__all__ = ["OpenAIService", "Plan", "Job", "run_plan", "server_defaults", "parse_request", "InvalidRequestError",
           "UnknownFieldError", "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"]
