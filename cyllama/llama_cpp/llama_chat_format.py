"""Chat formats and chat completion handlers (llama-cpp-python's ``llama_chat_format`` API).

A *chat formatter* turns messages into a prompt (:class:`ChatFormatterResponse`); a *chat
completion handler* runs a formatter, generates with :meth:`Llama.create_completion` and returns
OpenAI ``chat.completion`` dicts. Templates render in cyllama's sandboxed Jinja environment
(:class:`cyllama.chat_template.ChatTemplate`), so a model's template cannot reach Python internals.

Registered formats: ``chatml``, ``llama-2``, ``llama-3``, ``mistral-instruct``, ``gemma``, ``qwen``,
``phi-3``, ``zephyr``, ``vicuna``, ``alpaca``, ``openchat`` (from
:data:`cyllama.chat_template.KNOWN_TEMPLATES`); add more with :func:`register_chat_format` or
:func:`register_chat_completion_handler`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Protocol, Union

import numpy as np
import numpy.typing as npt

from .._openai.tool_formats import ToolCallStream
from .._openai.tools import plan_tools
from ..chat_template import KNOWN_TEMPLATES, ChatTemplate, ChatTemplateError, get_template
from ._common import LogitsProcessorList, StoppingCriteriaList
from .llama_grammar import JSON_GBNF, LlamaGrammar

if TYPE_CHECKING:
    from ._llama import Llama

__all__ = [
    "LlamaChatCompletionHandler", "LlamaChatCompletionHandlerNotFoundException",
    "LlamaChatCompletionHandlerRegistry", "get_chat_completion_handler", "register_chat_completion_handler",
    "ChatFormatterResponse", "ChatFormatter", "Jinja2ChatFormatter", "chat_formatter_to_chat_completion_handler",
    "register_chat_format", "guess_chat_format_from_gguf_metadata", "hf_tokenizer_config_to_chat_formatter",
    "hf_tokenizer_config_to_chat_completion_handler", "CHATML_CHAT_TEMPLATE", "MISTRAL_INSTRUCT_CHAT_TEMPLATE",
    "MIXTRAL_INSTRUCT_CHAT_TEMPLATE", "LLAMA3_INSTRUCT_CHAT_TEMPLATE",
]

# Templates llama-cpp-python recognises in GGUF metadata (guess_chat_format_from_gguf_metadata).
CHATML_CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
                        "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                        "{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_BOS_TOKEN = "<s>"
CHATML_EOS_TOKEN = "<|im_end|>"
MISTRAL_INSTRUCT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
MISTRAL_INSTRUCT_BOS_TOKEN = "<s>"
MISTRAL_INSTRUCT_EOS_TOKEN = "</s>"
MIXTRAL_INSTRUCT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
LLAMA3_INSTRUCT_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


# -- handlers ------------------------------------------------------------------------------------
class LlamaChatCompletionHandler(Protocol):
    """``handler(*, llama, messages, ..., stream=False, **kwargs)`` -> a chat completion dict, or an
    iterator of chunk dicts with ``stream=True``."""

    def __call__(self, *, llama: "Llama", messages: List[Dict[str, Any]], **kwargs: Any) -> Any: ...


class LlamaChatCompletionHandlerNotFoundException(ValueError):
    """No chat handler is registered under that name."""


class LlamaChatCompletionHandlerRegistry:
    """The process-wide registry of chat completion handlers (a singleton)."""

    _instance: Optional["LlamaChatCompletionHandlerRegistry"] = None
    _chat_handlers: Dict[str, LlamaChatCompletionHandler] = {}

    def __new__(cls) -> "LlamaChatCompletionHandlerRegistry":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def register_chat_completion_handler(self, name: str, chat_handler: LlamaChatCompletionHandler,
                                         overwrite: bool = False) -> None:
        if not overwrite and name in self._chat_handlers:
            raise ValueError(f"Formatter with name '{name}' is already registered. Use `overwrite=True` to "
                             "overwrite it.")
        self._chat_handlers[name] = chat_handler

    def unregister_chat_handler(self, name: str) -> None:
        if name not in self._chat_handlers:
            raise ValueError(f"No formatter registered under the name '{name}'.")
        del self._chat_handlers[name]

    def get_chat_completion_handler_by_name(self, name: str) -> LlamaChatCompletionHandler:
        try:
            return self._chat_handlers[name]
        except (KeyError, TypeError):
            raise LlamaChatCompletionHandlerNotFoundException(
                f"Invalid chat handler: {name} (valid formats: {list(self._chat_handlers.keys())})") from None


def get_chat_completion_handler(name: str) -> LlamaChatCompletionHandler:
    return LlamaChatCompletionHandlerRegistry().get_chat_completion_handler_by_name(name)


def register_chat_completion_handler(name: str):
    def decorator(f: LlamaChatCompletionHandler) -> LlamaChatCompletionHandler:
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(name, f)
        return f
    return decorator


# -- formatters ----------------------------------------------------------------------------------
@dataclasses.dataclass
class ChatFormatterResponse:
    """A formatted prompt, the stop strings of its format, and whether the prompt already holds
    the special tokens (BOS) the tokenizer would otherwise add."""

    prompt: str
    stop: Optional[Union[str, List[str]]] = None
    stopping_criteria: Optional[StoppingCriteriaList] = None
    added_special: bool = False


class ChatFormatter(Protocol):
    def __call__(self, *, messages: List[Dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse: ...


class Jinja2ChatFormatter:
    """A formatter from a Jinja chat template (as in a GGUF's ``tokenizer.chat_template``)."""

    def __init__(self, template: str, eos_token: str, bos_token: str, add_generation_prompt: bool = True,
                 stop_token_ids: Optional[List[int]] = None):
        self.template = template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
        self._template = ChatTemplate(template, bos_token=bos_token or "", eos_token=eos_token or "")
        self.chat_template = self._template  # what the tool-calling layer reads the family from

    def __call__(self, *, messages: List[Dict[str, Any]], functions: Optional[List[Dict[str, Any]]] = None,
                 function_call: Optional[Any] = None, tools: Optional[List[Dict[str, Any]]] = None,
                 tool_choice: Optional[Any] = None, **kwargs: Any) -> ChatFormatterResponse:
        prompt = self._template.render(messages, add_generation_prompt=self.add_generation_prompt, tools=tools,
                                       functions=functions, function_call=function_call, tool_choice=tool_choice,
                                       **kwargs)
        stopping_criteria = None
        if self.stop_token_ids is not None:
            ids = self.stop_token_ids

            def stop_on_last_token(tokens: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
                return len(tokens) > 0 and int(tokens[-1]) in ids

            stopping_criteria = StoppingCriteriaList([stop_on_last_token])
        return ChatFormatterResponse(prompt=prompt, stop=[self.eos_token] if self.eos_token else None,
                                     stopping_criteria=stopping_criteria, added_special=True)

    def to_chat_handler(self) -> LlamaChatCompletionHandler:
        return chat_formatter_to_chat_completion_handler(self)


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


# -- formatter -> handler ------------------------------------------------------------------------
def chat_formatter_to_chat_completion_handler(chat_formatter: ChatFormatter) -> LlamaChatCompletionHandler:
    def chat_completion_handler(
        *,
        llama: "Llama",
        messages: List[Dict[str, Any]],
        functions: Optional[List[Dict[str, Any]]] = None,
        function_call: Optional[Any] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Optional[Any] = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Optional[Union[str, List[str]]] = [],
        seed: Optional[int] = None,
        response_format: Optional[Dict[str, Any]] = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.1,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        grammar: Optional[LlamaGrammar] = None,
        logit_bias: Optional[Dict[str, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        **kwargs: Any,
    ) -> Any:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        # legacy functions / function_call -> tools / tool_choice
        if functions is not None:
            tools = [{"type": "function", "function": f} for f in functions]
        if function_call is not None:
            if isinstance(function_call, str) and function_call in ("none", "auto"):
                tool_choice = function_call
            if isinstance(function_call, dict) and "name" in function_call:
                tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
        tool_plan = None
        tmpl = getattr(chat_formatter, "chat_template", None)
        if tools is not None and tmpl is not None:  # the one tool-calling layer the server uses too
            own = grammar is not None or (response_format is not None and response_format.get("type") != "text")
            tool_plan = plan_tools(tmpl, messages, tools, tool_choice, special_token=llama._special_token,
                                   own_grammar=own)
            result = chat_formatter(messages=tool_plan.messages, tools=tool_plan.template_tools, **kwargs)
        else:
            result = chat_formatter(messages=messages, functions=functions, function_call=function_call, tools=tools,
                                    tool_choice=tool_choice, **kwargs)
        prompt = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        if result.stop is not None:
            stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
            rstop = result.stop if isinstance(result.stop, list) else [result.stop]
            stop = stop + [s for s in rstop if s and s not in stop]
        stopping_criteria = result.stopping_criteria
        if response_format is not None:
            rf_grammar = _grammar_for_response_format(response_format, verbose=llama.verbose)
            if rf_grammar is not None:
                grammar = rf_grammar
        if tool_plan is not None and tool_plan.grammar is not None:
            grammar = tool_plan.grammar
        tool = None
        if tool_plan is None and tool_choice is not None and isinstance(tool_choice, dict) and tools is not None:
            name = (tool_choice.get("function") or {}).get("name")
            tool = next((t for t in tools if (t.get("function") or {}).get("name") == name), None)
            if tool is None:
                raise ValueError(f"Tool choice '{name}' not found in tools.")
            schema = tool["function"].get("parameters") or {"type": "object"}
            grammar = _grammar_for_json_schema(schema, verbose=llama.verbose)
        completion_or_chunks = llama.create_completion(
            prompt=prompt, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
            logprobs=(top_logprobs or 0) if logprobs else None, stream=stream, stop=stop, seed=seed,
            max_tokens=max_tokens, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta, model=model, logits_processor=logits_processor,
            stopping_criteria=stopping_criteria, grammar=grammar, logit_bias=logit_bias)
        if tool is not None:
            return _convert_completion_to_chat_function(tool["function"]["name"], completion_or_chunks, stream)
        if tool_plan is not None and tool_plan.fmt is not None:
            return _convert_completion_to_chat_tools(tool_plan, completion_or_chunks, stream)
        return _convert_completion_to_chat(completion_or_chunks, stream=stream)

    return chat_completion_handler


def register_chat_format(name: str):
    """Decorator: registers a formatter function as the chat format ``name``."""
    def decorator(f: ChatFormatter) -> ChatFormatter:
        LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(
            name, chat_formatter_to_chat_completion_handler(f), overwrite=True)
        return f
    return decorator


def guess_chat_format_from_gguf_metadata(metadata: Dict[str, str]) -> Optional[str]:
    """The registered format whose template the model carries verbatim, or None."""
    template = metadata.get("tokenizer.chat_template")
    if template is None:
        return None
    if template == CHATML_CHAT_TEMPLATE:
        return "chatml"
    if template in (MISTRAL_INSTRUCT_CHAT_TEMPLATE, MIXTRAL_INSTRUCT_CHAT_TEMPLATE):
        return "mistral-instruct"
    if template == LLAMA3_INSTRUCT_CHAT_TEMPLATE:
        return "llama-3"
    return None


def hf_tokenizer_config_to_chat_formatter(tokenizer_config: Dict[str, Any],
                                          add_generation_prompt: bool = True) -> ChatFormatter:
    """A formatter from a Hugging Face ``tokenizer_config.json`` (its ``chat_template``,
    ``bos_token`` and ``eos_token``). As in llama-cpp-python, ``add_generation_prompt`` appends an
    empty assistant message (the template's own ``add_generation_prompt`` stays false), so the
    prompt is the template's rendering of the conversation with that turn."""
    if not isinstance(tokenizer_config, dict) or not isinstance(tokenizer_config.get("chat_template"), str):
        raise ValueError("tokenizer_config must be a dict with a 'chat_template' string")

    def token(key: str) -> str:
        v = tokenizer_config.get(key, "")
        return v.get("content", "") if isinstance(v, dict) else (v or "")

    bos, eos = token("bos_token"), token("eos_token")
    template = ChatTemplate(tokenizer_config["chat_template"], bos_token=bos, eos_token=eos)

    def format_tokenizer_config(messages: List[Dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("functions", "function_call", "tool_choice")}
        if add_generation_prompt:  # as llama-cpp-python: an empty assistant turn, not the template's flag
            messages = [*messages, {"role": "assistant", "content": ""}]
        prompt = template.render(messages, add_generation_prompt=False, **kwargs)
        return ChatFormatterResponse(prompt=prompt, stop=[s for s in (eos, bos) if s] or None, added_special=True)

    return format_tokenizer_config


def hf_tokenizer_config_to_chat_completion_handler(tokenizer_config: Dict[str, Any],
                                                   add_generation_prompt: bool = True) -> LlamaChatCompletionHandler:
    return chat_formatter_to_chat_completion_handler(
        hf_tokenizer_config_to_chat_formatter(tokenizer_config, add_generation_prompt=add_generation_prompt))


# -- the registered formats ----------------------------------------------------------------------
# Stop strings as llama-cpp-python's formats use them (phi-3 is new here).
_FORMAT_STOPS: Dict[str, Optional[Union[str, List[str]]]] = {
    "chatml": "<|im_end|>",
    "llama-2": None,
    "llama-3": "<|eot_id|>",
    "mistral-instruct": "</s>",
    "gemma": "<end_of_turn>",
    "qwen": ["<|im_end|>", "<|endoftext|>"],
    "phi-3": ["<|end|>", "<|endoftext|>"],
    "zephyr": "</s>",
    "vicuna": None,
    "alpaca": None,
    "openchat": "<|end_of_turn|>",
}


def _known_format(name: str) -> ChatFormatter:
    base = get_template(name)
    # The tokenizer adds BOS where the model wants one, so a BOS the template writes first is dropped.
    template = ChatTemplate(base.source, bos_token=base.bos_token, eos_token=base.eos_token, name=name, add_bos=True)
    stop = _FORMAT_STOPS.get(name)

    def formatter(*, messages: List[Dict[str, Any]], functions: Any = None, function_call: Any = None,
                  tools: Optional[List[Dict[str, Any]]] = None, tool_choice: Any = None,
                  **kwargs: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt=template.render(messages, add_generation_prompt=True, tools=tools,
                                                            **kwargs), stop=stop)

    formatter.__doc__ = f"The {name!r} chat format."
    formatter.chat_template = template  # type: ignore[attr-defined]
    return formatter


_FUNCTION_NAMES = {"llama-2": "format_llama2", "llama-3": "format_llama3", "phi-3": "format_phi3"}
for _name in KNOWN_TEMPLATES:
    _f = register_chat_format(_name)(_known_format(_name))
    _f.__name__ = _FUNCTION_NAMES.get(_name, "format_" + _name.replace("-", "_"))
    globals()[_f.__name__] = _f  # format_chatml, format_llama2, ... as in llama-cpp-python
del _name, _f



@register_chat_format("mistral-instruct")
def format_mistral_instruct(messages: List[Dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse:
    """llama-cpp-python's ``mistral-instruct`` format: ``[INST] user [/INST]answer</s>`` turns (no
    BOS: the tokenizer adds it; system and tool messages are left out, as there)."""
    eos = "</s>"
    prompt = ""
    for message in messages:
        content = message.get("content")
        if message["role"] == "user" and isinstance(content, str):
            prompt += "[INST] " + content
        elif message["role"] == "assistant" and content is not None:
            prompt += " [/INST]" + content + eos
    prompt += " [/INST]"
    return ChatFormatterResponse(prompt=prompt, stop=eos)


format_mistral_instruct.chat_template = _known_format("mistral-instruct").chat_template  # type: ignore[attr-defined]

# llama-cpp-python's format for function calling on ChatML models: ChatML, the tools described in
# the system message, calls written as JSON under a grammar (the generic tool-call family)
register_chat_completion_handler("chatml-function-calling")(
    chat_formatter_to_chat_completion_handler(_known_format("chatml")))

__all__ += ["ChatTemplateError"]

from .llava import Llava15ChatHandler, MTMDChatHandler  # noqa: E402  (llama-cpp-python's import path)

__all__ += ["Llava15ChatHandler", "MTMDChatHandler"]
