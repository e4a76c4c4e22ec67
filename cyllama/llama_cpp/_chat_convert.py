"""Completions to chat completions, and the grammars of constrained chat answers (shared by the
chat handlers of ``llama_chat_format``)."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterator, Optional

from .._tools.formats import ToolCallStream
from .llama_grammar import JSON_GBNF, LlamaGrammar

__all__ = ["chat_to_chunks"]

# -- converting completions to chat completions --------------------------------------------------
def _convert_text_completion_logprobs_to_chat(logprobs: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if logprobs is None:
        return None
    return {
        "content": [
            {"token": token, "bytes": None, "logprob": logprob,
             "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in (top or {}).items()]}
            for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])
        ],
        "refusal": None,
    }


def _convert_text_completion_to_chat(completion: Dict[str, Any]) -> Dict[str, Any]:
    choice = completion["choices"][0]
    return {
        "id": "chat" + completion["id"],
        "object": "chat.completion",
        "created": completion["created"],
        "model": completion["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": choice["text"]},
                     "logprobs": _convert_text_completion_logprobs_to_chat(choice["logprobs"]),
                     "finish_reason": choice["finish_reason"]}],
        "usage": completion["usage"],
    }


def _convert_text_completion_chunks_to_chat(chunks: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    for i, chunk in enumerate(chunks):
        choice = chunk["choices"][0]
        if i == 0:
            yield {"id": "chat" + chunk["id"], "model": chunk["model"], "created": chunk["created"],
                   "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]}
        yield {"id": "chat" + chunk["id"], "model": chunk["model"], "created": chunk["created"],
               "object": "chat.completion.chunk",
               "choices": [{"index": 0,
                            "delta": {"content": choice["text"]} if choice["finish_reason"] is None else {},
                            "logprobs": _convert_text_completion_logprobs_to_chat(choice["logprobs"]),
                            "finish_reason": choice["finish_reason"]}]}


def _convert_completion_to_chat(completion_or_chunks: Any, stream: bool = False) -> Any:
    if stream:
        return _convert_text_completion_chunks_to_chat(completion_or_chunks)
    return _convert_text_completion_to_chat(completion_or_chunks)


def _convert_completion_to_chat_function(tool_name: str, completion_or_chunks: Any, stream: bool) -> Any:
    if not stream:
        completion = completion_or_chunks
        choice = completion["choices"][0]
        tool_id = "call_" + "_0_" + tool_name + "_" + completion["id"]
        return {
            "id": "chat" + completion["id"],
            "object": "chat.completion",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": tool_name, "arguments": choice["text"]},
                    "tool_calls": [{"id": tool_id, "type": "function",
                                    "function": {"name": tool_name, "arguments": choice["text"]}}],
                },
                "logprobs": _convert_text_completion_logprobs_to_chat(choice["logprobs"]),
                "finish_reason": "tool_calls",
            }],
            "usage": completion["usage"],
        }

    def stream_chunks(chunks: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        head: Optional[Dict[str, Any]] = None
        tool_id = ""
        for chunk in chunks:
            choice = chunk["choices"][0]
            if head is None:
                head = {"id": "chat" + chunk["id"], "object": "chat.completion.chunk", "created": chunk["created"],
                        "model": chunk["model"]}
                tool_id = "call_" + "_0_" + tool_name + "_" + chunk["id"]
                yield {**head, "choices": [{"index": 0, "finish_reason": None, "logprobs": None,
                                            "delta": {"role": "assistant", "content": None, "function_call": None,
                                                      "tool_calls": None}}]}
            if choice["finish_reason"] is not None:
                continue
            yield {**head, "choices": [{
                "index": 0, "finish_reason": None,
                "logprobs": _convert_text_completion_logprobs_to_chat(choice["logprobs"]),
                "delta": {"role": None, "content": None,
                          "function_call": {"name": tool_name, "arguments": choice["text"]},
                          "tool_calls": [{"index": 0, "id": tool_id, "type": "function",
                                          "function": {"name": tool_name, "arguments": choice["text"]}}]},
            }]}
        if head is not None:
            yield {**head, "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                                        "delta": {"role": None, "content": None, "function_call": None,
                                                  "tool_calls": None}}]}

    return stream_chunks(completion_or_chunks)


def _convert_completion_to_chat_tools(plan: Any, completion_or_chunks: Any, stream: bool) -> Any:
    """A completion of a request with tools as a chat completion: the calls the model wrote (in its
    family's syntax) as ``tool_calls``, streamed as OpenAI streams them."""
    def new_stream() -> ToolCallStream:
        return ToolCallStream(plan.fmt, plan.forced or plan.names, bool(plan.forced))

    if not stream:
        completion = completion_or_chunks
        choice = completion["choices"][0]
        st = new_stream()
        st.feed(choice["text"])
        st.finish()
        content, calls = st.message()
        message: Dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
            if len(calls) == 1:  # llama-cpp-python also fills the legacy field
                message["function_call"] = dict(calls[0]["function"])
        finish = "tool_calls" if st.complete and choice["finish_reason"] == "stop" else choice["finish_reason"]
        return {"id": "chat" + completion["id"], "object": "chat.completion", "created": completion["created"],
                "model": completion["model"],
                "choices": [{"index": 0, "message": message,
                             "logprobs": _convert_text_completion_logprobs_to_chat(choice["logprobs"]),
                             "finish_reason": finish}],
                "usage": completion["usage"]}

    def stream_chunks(chunks: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        st = new_stream()
        head: Optional[Dict[str, Any]] = None
        finish = None
        for chunk in chunks:
            choice = chunk["choices"][0]
            if head is None:
                head = {"id": "chat" + chunk["id"], "object": "chat.completion.chunk", "created": chunk["created"],
                        "model": chunk["model"]}
                yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                            "finish_reason": None}]}
            for delta in ToolCallStream.deltas(st.feed(choice["text"])):
                yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
            if choice["finish_reason"] is not None:
                finish = choice["finish_reason"]
        if head is None:
            return
        for delta in ToolCallStream.deltas(st.finish()):
            yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        finish = "tool_calls" if st.complete and finish == "stop" else finish
        yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}

    return stream_chunks(completion_or_chunks)


# -- grammars for constrained answers ------------------------------------------------------------
def _grammar_for_json(verbose: bool = False) -> LlamaGrammar:
    return LlamaGrammar.from_string(JSON_GBNF, verbose=verbose)


def _grammar_for_json_schema(schema: Any, verbose: bool = False, fallback_to_json: bool = True) -> LlamaGrammar:
    try:
        return LlamaGrammar.from_json_schema(schema, verbose=verbose)
    except ValueError as e:
        if not fallback_to_json:
            raise
        warnings.warn(f"cannot turn the JSON schema into a grammar ({e}); constraining to any JSON object",
                      stacklevel=3)
        return _grammar_for_json(verbose=verbose)


def _grammar_for_response_format(response_format: Dict[str, Any], verbose: bool = False) -> Optional[LlamaGrammar]:
    """The grammar for ``{"type": "json_object"[, "schema": ...]}`` or ``{"type": "json_schema",
    "json_schema": {"schema": ...}}``; None for ``{"type": "text"}``."""
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format must be a dict, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema":
        wrapper = response_format.get("json_schema")
        if not isinstance(wrapper, dict):
            raise ValueError('response_format of type "json_schema" needs a "json_schema" object '
                             '({"name": ..., "schema": {...}})')
        schema = wrapper.get("schema")
    else:
        raise ValueError(f'response_format type must be "text", "json_object" or "json_schema", got {kind!r}')
    if not schema:
        return _grammar_for_json(verbose)
    return _grammar_for_json_schema(schema, verbose)


def chat_to_chunks(response: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """A whole chat completion as the stream of chunks OpenAI sends for it: the role, the content,
    each tool call (id and name, then its arguments), and the finish reason."""
    head = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
            "model": response["model"]}
    choice = response["choices"][0]
    message = choice["message"]

    def chunk(delta: Dict[str, Any], finish: Optional[str] = None) -> Dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant"})
    if message.get("content"):
        yield chunk({"content": message["content"]})
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                     "function": {"name": fn["name"], "arguments": ""}}]})
        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
    if not message.get("tool_calls") and message.get("function_call"):
        yield chunk({"function_call": dict(message["function_call"])})
    yield chunk({}, choice["finish_reason"])
