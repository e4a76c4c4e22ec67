"""Chat formats and chat completion handlers (llama-cpp-python's ``llama_chat_format`` API).

A *chat formatter* turns messages into a prompt (:class:`ChatFormatterResponse`); a *chat
completion handler* runs a formatter, generates with :meth:`Llama.create_completion` and returns
OpenAI ``chat.completion`` dicts. A model's own template renders in cyllama's sandboxed Jinja
environment (:class:`cyllama.chat_template.ChatTemplate`), so it cannot reach Python internals.

Registered: llama-cpp-python's 23 prompt formats (``_chat_formats``: ``llama-2``, ``llama-3``,
``alpaca``, ``qwen``, ``vicuna``, ``oasst_llama``, ``baichuan-2``, ``baichuan``, ``openbuddy``,
``redpajama-incite``, ``snoozy``, ``phind``, ``intel``, ``open-orca``, ``mistrallite``, ``zephyr``,
``pygmalion``, ``chatml``, ``mistral-instruct``, ``chatglm3``, ``openchat``, ``saiga``, ``gemma``),
each rendering the prompt llama-cpp-python renders; its function-calling handlers ``functionary``,
``functionary-v1``, ``functionary-v2`` and ``chatml-function-calling`` (``_function_calling``);
and ``phi-3``. Add more with :func:`register_chat_format` or :func:`register_chat_completion_handler`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Union

import numpy as np
import numpy.typing as npt

from .._tools.plan import plan_tools
from ..chat_template import ChatTemplate, ChatTemplateError, get_template
from . import _chat_formats
from ._chat_convert import (_convert_completion_to_chat, _convert_completion_to_chat_function,
                            _convert_completion_to_chat_tools, _grammar_for_json_schema,
                            _grammar_for_response_format)
from ._chat_formats import FORMATS, ChatFormatterResponse
from ._common import LogitsProcessorList, StoppingCriteriaList, suppress_stdout_stderr
from .llama_grammar import LlamaGrammar

if TYPE_CHECKING:
    from ._llama import Llama

# format_llama2, format_chatml, ... (``format`` is vicuna's, as in llama-cpp-python)
_formats_all = [n for n in _chat_formats.__all__ if n.startswith("format")]
globals().update({n: getattr(_chat_formats, n) for n in _formats_all})

__all__ = [
    "LlamaChatCompletionHandler", "LlamaChatCompletionHandlerNotFoundException",
    "LlamaChatCompletionHandlerRegistry", "get_chat_completion_handler", "register_chat_completion_handler",
    "ChatFormatterResponse", "ChatFormatter", "Jinja2ChatFormatter", "chat_formatter_to_chat_completion_handler",
    "register_chat_format", "guess_chat_format_from_gguf_metadata", "hf_tokenizer_config_to_chat_formatter",
    "hf_tokenizer_config_to_chat_completion_handler", "CHATML_CHAT_TEMPLATE", "MISTRAL_INSTRUCT_CHAT_TEMPLATE",
    "MIXTRAL_INSTRUCT_CHAT_TEMPLATE", "LLAMA3_INSTRUCT_CHAT_TEMPLATE", "hf_autotokenizer_to_chat_formatter",
    "hf_autotokenizer_to_chat_completion_handler", "suppress_stdout_stderr",
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


def hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path: Union[str, "os.PathLike[str]"]) -> ChatFormatter:
    """A formatter from a ``transformers`` tokenizer (``AutoTokenizer.from_pretrained``; needs the
    ``transformers`` package): its ``apply_chat_template``, stopping at its EOS text."""
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError("hf_autotokenizer_to_chat_formatter needs the transformers package "
                          "(pip install transformers); hf_tokenizer_config_to_chat_formatter reads a "
                          "tokenizer_config.json without it") from None
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)

    def format_autotokenizer(messages: List[Dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse:
        tokenizer.use_default_system_prompt = False
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        if not isinstance(prompt, str):
            raise TypeError(f"apply_chat_template returned {type(prompt).__name__}, not the prompt text")
        return ChatFormatterResponse(prompt=prompt, stop=tokenizer.eos_token, added_special=True)

    return format_autotokenizer


def hf_autotokenizer_to_chat_completion_handler(
        pretrained_model_name_or_path: Union[str, "os.PathLike[str]"]) -> LlamaChatCompletionHandler:
    return chat_formatter_to_chat_completion_handler(hf_autotokenizer_to_chat_formatter(pretrained_model_name_or_path))


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
for _name, _f in FORMATS.items():  # llama-cpp-python's formats, rendered as there
    register_chat_format(_name)(_f)


def format_phi3(messages: List[Dict[str, Any]], **kwargs: Any) -> ChatFormatterResponse:
    """The ``phi-3`` format (cyllama's; llama-cpp-python has none): Phi-3's template."""
    base = get_template("phi-3")
    template = ChatTemplate(base.source, bos_token=base.bos_token, eos_token=base.eos_token, name="phi-3",
                            add_bos=True)  # the tokenizer adds BOS
    return ChatFormatterResponse(prompt=template.render(messages, add_generation_prompt=True),
                                 stop=["<|end|>", "<|endoftext|>"])


register_chat_format("phi-3")(format_phi3)

from ._function_calling import (chatml_function_calling, functionary_chat_handler,  # noqa: E402
                                functionary_v1_v2_chat_handler)

register_chat_completion_handler("functionary")(functionary_chat_handler)
register_chat_completion_handler("functionary-v1")(functionary_v1_v2_chat_handler)
register_chat_completion_handler("functionary-v2")(functionary_v1_v2_chat_handler)
register_chat_completion_handler("chatml-function-calling")(chatml_function_calling)

__all__ += ["ChatTemplateError", "format_phi3", "chatml_function_calling", "functionary_chat_handler",
            "functionary_v1_v2_chat_handler", *_formats_all]

from .llava import Llava15ChatHandler, MTMDChatHandler  # noqa: E402  (llama-cpp-python's import path)

__all__ += ["Llava15ChatHandler", "MTMDChatHandler"]
