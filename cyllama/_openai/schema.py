"""OpenAI request bodies, validated with pydantic: one validation for the server and the in-process client.

Unknown fields are refused (``UnknownFieldError``, a ``TypeError``; a 400 on the server), values
out of OpenAI's ranges are refused (``InvalidRequestError``, a ``ValueError``), each naming the
field. Numbers must be finite, and integers that llama.cpp takes as 32-bit fit in one. Besides OpenAI's fields the requests take llama.cpp's sampling extras (``top_k``,
``min_p``, ``repeat_penalty``, ``grammar``...), as llama-server does. Fields that only matter to a
hosted service (``user``, ``metadata``, ``store``...) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["InvalidRequestError", "UnknownFieldError", "ChatCompletionRequest", "CompletionRequest",
           "EmbeddingRequest", "parse_request"]


class InvalidRequestError(ValueError):
    """A request OpenAI would answer with an error: ``status`` (400, 404...) and the ``param`` at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type_
        self.headers = headers  # extra HTTP headers of the answer (Retry-After for a 503)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class UnknownFieldError(InvalidRequestError, TypeError):
    """A field the request does not have (a ``TypeError`` too, as an unexpected keyword argument is)."""


_I32 = 2**31 - 1  # llama.cpp's int parameters


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(_Model):
    include_usage: Optional[bool] = None
    include_obfuscation: Optional[bool] = None


class _Sampling(_Model):
    """Sampling fields shared by chat and text completions (OpenAI's and llama.cpp's)."""

    model: Optional[str] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(None, ge=1, le=128)
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = Field(None, ge=-1, le=0xFFFFFFFF)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    logit_bias: Optional[Union[Dict[str, Union[float, bool]], List[List[Any]]]] = None
    user: Optional[str] = None
    metadata: Optional[Dict[str, Any]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None
    # llama.cpp's extras
    top_k: Optional[int] = Field(None, ge=0, le=_I32)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    typical_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    repeat_penalty: Optional[float] = Field(None, gt=0.0)
    repeat_last_n: Optional[int] = Field(None, ge=-1, le=_I32)
    mirostat: Optional[int] = Field(None, ge=0, le=2)
    mirostat_tau: Optional[float] = Field(None, ge=0.0)
    mirostat_eta: Optional[float] = Field(None, ge=0.0)
    dry_multiplier: Optional[float] = Field(None, ge=0.0)
    dry_base: Optional[float] = Field(None, ge=1.0)
    dry_allowed_length: Optional[int] = Field(None, ge=0, le=_I32)
    dry_penalty_last_n: Optional[int] = Field(None, ge=-1, le=_I32)
    dry_sequence_breakers: Optional[List[str]] = None
    xtc_probability: Optional[float] = Field(None, ge=0.0, le=1.0)
    xtc_threshold: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_n_sigma: Optional[float] = None
    ignore_eos: Optional[bool] = None
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    n_predict: Optional[int] = Field(None, ge=-1)
    cache_prompt: Optional[bool] = None  # llama-server's; the cache is always used
    # speculative decoding by prompt lookup (transformers' names; 0 = off, or the server's --lookup)
    prompt_lookup_num_tokens: Optional[int] = Field(None, ge=0, le=1024)
    prompt_lookup_max_ngram: Optional[int] = Field(None, ge=1, le=8)
    id_slot: Optional[int] = Field(None, ge=-1, le=_I32)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    @field_validator("dry_sequence_breakers")
    @classmethod
    def _breakers(cls, v: Any) -> Any:
        if v is not None and (not v or not all(v)):
            raise ValueError("must be a non-empty list of non-empty strings")
        return v


class FunctionDefinition(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[Dict[str, Any]] = None
    schema_: Optional[Dict[str, Any]] = Field(None, alias="schema")


class ChatMessage(_Open):
    """A message; roles and content are checked by the chat layer (content parts, tool calls)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, List[Dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], Dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[List[FunctionDefinition]] = None  # the deprecated spelling of tools
    function_call: Optional[Union[Literal["none", "auto"], Dict[str, Any]]] = None
    modalities: Optional[List[str]] = None
    reasoning_effort: Optional[str] = None
    verbosity: Optional[str] = None
    prediction: Optional[Dict[str, Any]] = None
    web_search_options: Optional[Dict[str, Any]] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    echo: Optional[bool] = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    suffix: Optional[str] = None
    best_of: Optional[int] = Field(None, ge=1, le=1)


class EmbeddingRequest(_Model):
    input: Union[str, List[str], List[int], List[List[int]]]
    model: Optional[str] = None
    encoding_format: Optional[Literal["float", "base64"]] = "float"
    dimensions: Optional[int] = Field(None, ge=1, le=_I32)
    user: Optional[str] = None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _where(loc: tuple) -> str:
    """A pydantic error location as a field path (``messages[0].content``), without the type tags
    pydantic adds inside unions (``str``, ``list[int]``, ``function-after[...]``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "(" in part or part.lower() in _TYPE_TAGS:
            continue
        else:
            out += ("." if out else "") + part
    return out


def parse_request(model: type[_Model], body: Any) -> Any:
    """``body`` (a dict) as a validated ``model``; errors name the field (and are OpenAI 400s)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        if unknown:
            names = ", ".join(repr(_where(e["loc"])) for e in unknown)
            raise UnknownFieldError(f"unrecognized request argument{'s' if len(unknown) > 1 else ''}: {names}",
                                    _where(unknown[0]["loc"])) from None
        e = errors[0]
        where = _where(e["loc"])
        raise InvalidRequestError(f"invalid value for '{where}': {e['msg']}", where or None) from None
