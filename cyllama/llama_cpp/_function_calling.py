"""llama-cpp-python's function-calling chat handlers: ``chatml-function-calling``, ``functionary``
and ``functionary-v1``/``functionary-v2``.

Prompts are the text llama-cpp-python 0.3.36 renders for the same request (compared in
``tests/test_llama_cpp_formats.py``). Generation follows its steps (pick a function, then its
arguments under the JSON-schema grammar of its parameters) with these differences: the choice
of function is constrained by a grammar to the declared names or a plain answer (so an answer
that is not a call is returned as one), ``tool_choice="required"`` forces a call, ``"none"``
answers without one, several calls are parsed as several (up to ``MAX_CALLS``, ending at a
call that repeats an earlier one), ``max_tokens`` and ``seed`` apply to
every step, and ``stream=True`` works for every case (a request whose answer may be a call streams
the finished answer as chunks). Messages are never modified.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..chat_template import ChatTemplate
from ._chat_convert import (_convert_completion_to_chat, _convert_completion_to_chat_function,
                            _convert_text_completion_logprobs_to_chat, _grammar_for_json_schema,
                            _grammar_for_response_format, chat_to_chunks)
from .llama_grammar import LlamaGrammar

if TYPE_CHECKING:
    from ._llama import Llama

__all__ = ["chatml_function_calling", "functionary_chat_handler", "functionary_v1_v2_chat_handler",
           "functionary_schema", "CHATML_FUNCTION_CALLING_TEMPLATE"]

MAX_CALLS = 16  # calls one answer may hold

_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
             "repeat_penalty", "tfs_z", "mirostat_mode", "mirostat_tau", "mirostat_eta", "model",
             "logits_processor", "seed", "max_tokens", "logit_bias")
_DEFAULTS = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "typical_p": 1.0,
             "presence_penalty": 0.0, "frequency_penalty": 0.0, "repeat_penalty": 1.1, "tfs_z": 1.0,
             "mirostat_mode": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1}


def _gbnf_literal(text: str) -> str:
    return json.dumps(text)  # a JSON string is a GBNF string literal


def _normalize_request(functions: Any, function_call: Any, tools: Any, tool_choice: Any) -> tuple:
    """Legacy ``functions``/``function_call`` as ``tools``/``tool_choice``; checks the choice."""
    if functions is not None:
        tools = [{"type": "function", "function": f} for f in functions]
    if function_call is not None and tool_choice is None:
        if isinstance(function_call, str):
            tool_choice = function_call
        elif isinstance(function_call, dict) and "name" in function_call:
            tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance((t.get("function") or {}).get("name"), str) for t in tools):
            raise ValueError("tools must be a list of {'type': 'function', 'function': {'name': ...}} dicts")
        tools = [t for t in tools if t.get("type", "function") == "function"]
    if tool_choice is not None and not (tool_choice in ("none", "auto", "required") or (
            isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str))):
        raise ValueError(f'tool_choice must be "none", "auto", "required" or {{"type": "function", "function": '
                         f'{{"name": ...}}}}, got {tool_choice!r}')
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        if not any(t["function"]["name"] == name for t in tools or []):
            raise ValueError(f"Tool with name '{name}' not found in tools")
    return tools, tool_choice


class _Steps:
    """Runs a handler's completions with the request's sampling settings and sums their usage."""

    def __init__(self, llama: "Llama", params: Dict[str, Any]):
        self.llama = llama
        self.params = {k: params[k] for k in _SAMPLING if params.get(k) is not None}
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.last: Optional[Dict[str, Any]] = None

    def __call__(self, prompt: str, stop: Any, grammar: Optional[LlamaGrammar] = None, stream: bool = False,
                 **over: Any) -> Any:
        out = self.llama.create_completion(prompt=prompt, stop=stop, grammar=grammar, stream=stream,
                                           **{**self.params, **over})
        if not stream:
            self.last = out
            for k in self.usage:
                self.usage[k] += out["usage"][k]
        return out

    def grammar(self, text: str) -> LlamaGrammar:
        return LlamaGrammar.from_string(text, verbose=self.llama.verbose)

    def schema_grammar(self, tools: Sequence[Dict[str, Any]], name: str) -> LlamaGrammar:
        tool = next(t for t in tools if t["function"]["name"] == name)
        schema = tool["function"].get("parameters") or {"type": "object"}
        return _grammar_for_json_schema(schema, verbose=self.llama.verbose)

    def answer(self, calls: List[tuple], content: Optional[str], legacy: bool, id_of: Callable[[int, str], str],
               stream: bool) -> Any:
        """The chat completion of the steps so far: ``calls`` as (name, arguments) pairs."""
        last = self.last
        assert last is not None
        message: Dict[str, Any] = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [{"id": id_of(i, name), "type": "function",
                                      "function": {"name": name, "arguments": args}}
                                     for i, (name, args) in enumerate(calls)]
            if len(calls) == 1 or legacy:
                message["function_call"] = {"name": calls[0][0], "arguments": calls[0][1]}
        response = {"id": "chat" + last["id"], "object": "chat.completion", "created": last["created"],
                    "model": last["model"],
                    "choices": [{"index": 0, "message": message,
                                 "logprobs": _convert_text_completion_logprobs_to_chat(last["choices"][0]["logprobs"]),
                                 "finish_reason": "tool_calls" if calls else last["choices"][0]["finish_reason"]}],
                    "usage": dict(self.usage)}
        return chat_to_chunks(response) if stream else response


# -- chatml-function-calling -----------------------------------------------------------------------
CHATML_FUNCTION_CALLING_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'system' %}"
    "{{ message.content }}"
    "{% if tool_calls %}"
    "\n\nYou have access to the following functions:\n"
    "{% for tool in tools %}"
    "\nfunctions.{{ tool.function.name }}:\n"
    "{{ tool.function.parameters | tojson }}"
    "\n{% endfor %}"
    "\n\nYou can respond to users messages with either a single message or one or more function calls."
    "\n\nTo respond with a message begin the message with 'message:', use the following format:"
    "\n\nmessage:"
    "\n<message>"
    "\n\nTo respond with one or more function calls begin the message with 'functions.<function_name>:', "
    "use the following format:"
    "\n\nfunctions.<function_name>:"
    '\n{ "arg1": "value1", "arg2": "value2" }'
    "\nfunctions.<function_name>:"
    '\n{ "arg1": "value1", "arg2": "value2" }'
    "{% endif %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% if message.role == 'user' %}"
    "{{ message.content }}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% if message.role == 'assistant' %}"
    "{% if message.content and message.content | length > 0 %}"
    "{% if tool_calls %}"
    "message:\n"
    "{% endif %}"
    "{{ message.content }}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% if 'tool_calls' in message %}"
    "{% for tool_call in message.tool_calls %}"
    "functions.{{ tool_call.function.name }}:\n"
    "{{ tool_call.function.arguments }}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# llama-cpp-python's environment for it: autoescaped (a template from a string is escaped under
# select_autoescape's defaults), undefined names are errors
_CHATML_FC = ImmutableSandboxedEnvironment(autoescape=jinja2.select_autoescape(["html", "xml"]),
                                           undefined=jinja2.StrictUndefined).from_string(
    CHATML_FUNCTION_CALLING_TEMPLATE)


def _render_chatml_fc(messages: Sequence[Dict[str, Any]], tools: Optional[List[Dict[str, Any]]]) -> str:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    try:
        return _CHATML_FC.render(messages=messages, tools=tools or [], tool_calls=True if tools else None,
                                 add_generation_prompt=True)
    except jinja2.UndefinedError as e:
        raise ValueError(f"a message lacks a field the chatml-function-calling format needs: {e}") from None


def chatml_function_calling(llama: "Llama", messages: List[Dict[str, Any]], functions: Optional[List[Any]] = None,
                            function_call: Any = None, tools: Optional[List[Dict[str, Any]]] = None,
                            tool_choice: Any = None, stream: bool = False, stop: Any = [],
                            response_format: Optional[Dict[str, Any]] = None, grammar: Optional[LlamaGrammar] = None,
                            logprobs: Optional[bool] = None, top_logprobs: Optional[int] = None,
                            **kwargs: Any) -> Any:
    """ChatML with the functions described in the system message; a call is written
    ``functions.<name>:\\n<arguments JSON>``."""
    tools, tool_choice = _normalize_request(functions, function_call, tools, tool_choice)
    stop = [stop, "<|im_end|>"] if isinstance(stop, str) else list(stop) + ["<|im_end|>"] if stop else ["<|im_end|>"]
    steps = _Steps(llama, {**_DEFAULTS, **kwargs})
    if tool_choice is None or tool_choice == "none" or not tools:
        prompt = _render_chatml_fc(messages, None)
        if response_format is not None:
            grammar = _grammar_for_response_format(response_format, verbose=llama.verbose) or grammar
        return _convert_completion_to_chat(
            steps(prompt, stop, grammar, stream=stream, logprobs=top_logprobs if logprobs else None), stream=stream)
    prompt = _render_chatml_fc(messages, tools)
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        out = steps(prompt + f"functions.{name}:\n", stop, steps.schema_grammar(tools, name), stream=stream)
        return _convert_completion_to_chat_function(name, out, stream)
    names = " | ".join(_gbnf_literal(f"functions.{t['function']['name']}:") for t in tools)
    first = "root ::= functions" + ("" if tool_choice == "required" else ' | "message:"')
    text = steps(prompt, [":"], steps.grammar(f"{first}\nfunctions ::= {names}\n"), temperature=0)["choices"][0]["text"]
    if text.startswith("message"):
        return _convert_completion_to_chat(
            steps(prompt + "message:\n", ["<|im_end|>"], None, stream=stream,
                  logprobs=top_logprobs if logprobs else None), stream=stream)
    known = {t["function"]["name"] for t in tools}
    follow = steps.grammar(f'root ::= functions | "<|im_end|>"\nfunctions ::= {names}\n')
    calls: List[tuple] = []
    name = text[len("functions."):].rstrip(":")
    while name in known and len(calls) < MAX_CALLS:
        prompt += f"functions.{name}:\n"
        args = steps(prompt, stop, steps.schema_grammar(tools, name))["choices"][0]["text"]
        if (name, args) in calls:  # the same call again: a small model looping
            break
        calls.append((name, args))
        prompt += args + "\n"
        name = steps(prompt, stop, follow)["choices"][0]["text"].strip()[len("functions."):].rstrip(":")
    cid = steps.last["id"] if steps.last else ""
    return steps.answer(calls, None, False, lambda i, n: f"call__{i}_{n}_{cid}", stream)


# -- functionary -----------------------------------------------------------------------------------
FUNCTIONARY_SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. The assistant calls functions with appropriate "
    "input when necessary")


def _type_definition(param: Dict[str, Any], indent_level: int) -> str:
    indent = "  " * indent_level
    if "$ref" in param:
        return param["$ref"].split("/")[-1]
    if param.get("type") == "array":
        return f"Array<{_type_definition(param.get('items', {}), indent_level + 1)}>"
    if param.get("type") == "object":
        out = "{\n"
        for name, sub in param.get("properties", {}).items():
            out += f"{indent}  {name}: {_type_definition(sub, indent_level + 1)},\n"
        return out + indent + "}"
    if "enum" in param:
        return " | ".join(f'"{v}"' for v in param["enum"])
    return param.get("type", "any")


def functionary_schema(functions: Sequence[Dict[str, Any]], namespace: str = "functions",
                       indented: bool = True) -> str:
    """Functionary's TypeScript-like description of the functions (``indented``: the v0 layout,
    otherwise v1/v2's)."""
    out = "// Supported function definitions that should be called when necessary.\n"
    out += f"namespace {namespace} {{\n\n"
    shared: Dict[str, Any] = {}
    for f in functions:
        shared.update(f.get("parameters", {}).get("$defs", {}))
    for name, props in shared.items():
        out += f"  type {name} = "
        if props.get("type") == "object":
            out += _type_definition(props, 1)
        elif "enum" in props:
            out += " | ".join(f'"{v}"' for v in props["enum"])
        out += ";\n"
    i1, i2 = ("  ", "    ") if indented else ("", "")
    for f in functions:
        params = f.get("parameters", {})
        required = params.get("required", [])
        out += f"{i1}// {f.get('description', '')}\n{i1}type {f['name']} = (_: {{\n"
        for pname, p in params.get("properties", {}).items():
            opt = "" if pname in required else "?"
            out += f"{i2}// {p.get('description', '')}\n{i2}{pname}{opt}: {_type_definition(p, 2)},\n"
        out += f"{i1}}}) => any;\n\n"
    return out + f"}} // namespace {namespace}" + ("\n" if indented else "")


def _prefixed(messages: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Copies of the messages with function names as ``functions.<name>`` (as llama-cpp-python
    renames them, in place, there)."""
    out = []
    for m in messages:
        m = copy.deepcopy(m)
        if m.get("role") == "function" and "name" in m:
            m["name"] = f"functions.{m['name']}"
        if "function_call" in m:
            m["function_call"]["name"] = f"functions.{m['function_call']['name']}"
        out.append(m)
    return out


def _functionary_v0_text(msg: Dict[str, Any]) -> str:
    role = msg.get("role")
    if role == "system":
        return f"system:\n{msg['content']}\n"
    if role == "function" and "name" in msg:
        return f"function name={msg['name']}:\n{msg['content']}\n"
    if role == "function" and "function_call" in msg:
        return f"function name={msg['function_call']['name']}:\n{msg['function_call']['arguments']}\n"
    if role == "tool":
        if msg["content"] is not None:
            return f"function name={msg['tool_call_id']}:\n{msg['content']}\n"
        return f"function name={msg['tool_call_id']}\n"
    if role == "user":
        return "user:\n</s></s>\n" if msg["content"] is None else f"user:\n</s>{msg['content']}</s>\n"
    if role == "assistant":
        if msg.get("content") is not None and "function_call" in msg:
            return (f"assistant:\n{msg['content']}\nassistant to={msg['function_call']['name']}:\n"
                    f"{msg['function_call']['arguments']}</s>\n")
        if "function_call" in msg:
            return f"assistant to={msg['function_call']['name']}:\n{msg['function_call']['arguments']}</s>\n"
        if msg.get("tool_calls"):
            call = msg["tool_calls"][0]  # llama-cpp-python writes the first call only
            return f"assistant to={call['id']}:\n{call['function']['arguments']}</s>\n"
        if msg.get("content") is None:
            return "assistant"
        return f"assistant:\n{msg['content']}\n"
    raise ValueError(f"Unsupported role: {role}")


def functionary_v0_prompt(messages: Sequence[Dict[str, Any]], functions: Optional[List[Dict[str, Any]]],
                          tools: Optional[List[Dict[str, Any]]]) -> str:
    """The functionary (v0) prompt llama-cpp-python writes (with ``tools``, its handler describes
    them twice: once from ``functions`` made of them, once from ``tools``)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    system = []
    if functions is not None:
        system.append(functionary_schema(functions))
    if tools is not None:
        system.append(functionary_schema([t["function"] for t in tools]))
    msgs = [{"role": "system", "content": s} for s in system + [FUNCTIONARY_SYSTEM_MESSAGE]]
    msgs += _prefixed(messages) + [{"role": "assistant", "content": None}]
    return "".join(_functionary_v0_text(m) for m in msgs)


def functionary_chat_handler(llama: "Llama", messages: List[Dict[str, Any]], functions: Optional[List[Any]] = None,
                             function_call: Any = None, tools: Optional[List[Dict[str, Any]]] = None,
                             tool_choice: Any = None, stream: bool = False, stop: Any = [],
                             response_format: Any = None, grammar: Optional[LlamaGrammar] = None,
                             **kwargs: Any) -> Any:
    """Functionary v0: ``user:\\n</s>...</s>`` turns, calls as ``assistant to=functions.<name>:``."""
    if tools is not None:
        functions = [t["function"] for t in tools if t.get("type", "function") == "function"]
    prompt = functionary_v0_prompt(messages, functions, tools)
    tools, tool_choice = _normalize_request(functions, function_call, None, tool_choice)
    steps = _Steps(llama, {**_DEFAULTS, **kwargs})
    if not tools or tool_choice == "none":
        return _convert_completion_to_chat(steps(prompt + ":\n", ["user:", "</s>"], grammar, stream=stream),
                                           stream=stream)
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
    else:
        names = " | ".join(_gbnf_literal(t["function"]["name"]) for t in tools)
        first = 'root ::= " to=functions." name ":"' + ("" if tool_choice == "required" else ' | ":"')
        text = steps(prompt, None, steps.grammar(f"{first}\nname ::= {names}\n"), temperature=0)["choices"][0]["text"]
        if not text.startswith(" to="):
            return _convert_completion_to_chat(steps(prompt + ":\n", ["user:", "</s>"], grammar, stream=stream),
                                               stream=stream)
        name = text[len(" to=functions."):-1]
    args = steps(prompt + f" to=functions.{name}:\n", ["user:", "</s>"], steps.schema_grammar(tools, name))
    return steps.answer([(name, args["choices"][0]["text"])], None, False, lambda i, n: n, stream)


# -- functionary v1 / v2 ---------------------------------------------------------------------------
_V1 = {"start": "<|START_OF_FUNCTION_CALL|>", "end_call": "<|END_OF_FUNCTION_CALL|>",
       "end_assistant": "<|END_OF_ASSISTANT|>"}
_V2 = {"recipient": "<|recipient|>", "from": "<|from|>", "stop": "<|stop|>", "content": "<|content|>"}


def _functionary_template(llama: "Llama") -> tuple:
    """(version, render) from the Hugging Face tokenizer as llama-cpp-python reads it, or else from
    the model's own chat template (Functionary GGUFs carry the same template)."""
    hf = getattr(getattr(llama, "tokenizer_", None), "hf_tokenizer", None)
    if hf is not None:
        version = "v1" if _V1["start"] in getattr(hf, "additional_special_tokens", []) else "v2"
        return version, lambda msgs: hf.apply_chat_template(msgs, tokenize=False)
    source = llama.metadata.get("tokenizer.chat_template")
    if not source:
        raise ValueError("functionary-v1/v2 need the model's chat template: the model has none; pass "
                         "tokenizer=LlamaHFTokenizer.from_pretrained(<the functionary repo>) to Llama")
    vocab = llama._vocab
    template = ChatTemplate(source, bos_token=vocab.get_text(llama.token_bos()) if llama.token_bos() >= 0 else "",
                            eos_token=vocab.get_text(llama.token_eos()) if llama.token_eos() >= 0 else "")
    version = "v1" if llama._special_token(_V1["start"]) is not None else "v2"
    return version, lambda msgs: template.render(msgs, add_generation_prompt=False)


def functionary_v1_v2_prompt(render: Callable[[List[Dict[str, Any]]], str], version: str,
                             messages: Sequence[Dict[str, Any]], functions: Optional[List[Dict[str, Any]]],
                             tools: Optional[List[Dict[str, Any]]], tool_choice: Any = "auto") -> str:
    """The functionary v1/v2 prompt llama-cpp-python writes: the template's rendering of the
    function schema, the system message and the conversation, then the assistant's header."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    if tool_choice == "none":
        schema: Optional[str] = functionary_schema([], indented=False)
    elif functions is not None:
        schema = functionary_schema(functions, indented=False)
    elif tools is not None:
        schema = functionary_schema([t["function"] for t in tools], indented=False)
    else:
        schema = None
    msgs = ([{"role": "system", "content": schema}] if schema is not None else [])
    msgs += [{"role": "system", "content": FUNCTIONARY_SYSTEM_MESSAGE}] + _prefixed(messages)
    return render(msgs) + ("assistant:\n" if version == "v1" else "<|from|>assistant\n<|recipient|>")


def functionary_v1_v2_chat_handler(llama: "Llama", messages: List[Dict[str, Any]],
                                   functions: Optional[List[Any]] = None, function_call: Any = None,
                                   tools: Optional[List[Dict[str, Any]]] = None, tool_choice: Any = None,
                                   stream: bool = False, stop: Any = [], response_format: Any = None,
                                   grammar: Optional[LlamaGrammar] = None, **kwargs: Any) -> Any:
    """Functionary v1 (``<|START_OF_FUNCTION_CALL|>``) and v2 (``<|from|>``/``<|recipient|>``/
    ``<|content|>``) models, told apart by their special tokens."""
    version, render = _functionary_template(llama)
    if tools is not None:
        functions = [t["function"] for t in tools if t.get("type", "function") == "function"]
    choice = tool_choice if tool_choice is not None else (
        function_call if function_call is not None else "auto")
    if isinstance(choice, dict) and "function" not in choice:
        choice = {"type": "function", "function": choice}  # a legacy {"name": ...}
    prompt = functionary_v1_v2_prompt(render, version, messages, functions, tools, choice)
    fns, choice = _normalize_request(functions, None, None, choice)
    steps = _Steps(llama, {**_DEFAULTS, **kwargs})
    legacy = tools is None
    ids = lambda i, n: f"call_{i}_{n}_{steps.last['id'] if steps.last else ''}"  # noqa: E731
    if not fns or choice == "none":
        if version == "v1":
            out = steps(prompt, _V1["end_assistant"], grammar, stream=stream)
        else:
            out = steps(prompt + "all\n<|content|>", _V2["stop"], grammar, stream=stream)
        if not stream:
            out["choices"][0]["text"] = out["choices"][0]["text"].lstrip()
        return _convert_completion_to_chat(out, stream=stream)
    names = [f["function"]["name"] for f in fns]
    calls: List[tuple] = []
    content = ""
    if version == "v1":
        if isinstance(choice, dict):
            name = choice["function"]["name"]
        else:
            alts = " | ".join(_gbnf_literal(f"{_V1['start']}{n}:") for n in names)
            forced = steps.grammar(f"root ::= {alts}\n") if choice == "required" else None
            text = steps(prompt, ["\n", _V1["end_assistant"]], forced)["choices"][0]["text"]
            name = text.split(_V1["start"])[-1].rstrip(":").strip() if _V1["start"] in text else None
            if name not in names:  # an answer, not a call
                return steps.answer([], text, legacy, ids, stream)
        args = steps(prompt + f"{_V1['start']}{name}:\n", _V1["end_call"], steps.schema_grammar(fns, name))
        return steps.answer([(name, args["choices"][0]["text"].strip())], None, legacy, ids, stream)
    # v2: a recipient ("all": text for the user, or a function) then its content, turn after turn
    recipients = " | ".join(_gbnf_literal(n) for n in (["all"] if choice == "auto" else []) + names)
    turn = 0
    while turn < MAX_CALLS:
        if isinstance(choice, dict) and turn == 0:
            name = choice["function"]["name"]
        else:
            name = steps(prompt, [_V2["content"], "\n"], steps.grammar(f"root ::= {recipients}\n"),
                         temperature=0)["choices"][0]["text"].strip()
        prompt += f"{name}\n{_V2['content']}"
        body = steps(prompt, [_V2["recipient"], _V2["stop"], _V2["from"]],
                     None if name == "all" else steps.schema_grammar(fns, name))["choices"][0]["text"]
        if name == "all":
            content += body.strip()
        elif (name, body.strip()) in calls:  # the same call again: a small model looping
            break
        else:
            calls.append((name, body.strip()))
        prompt += body.strip()
        if isinstance(choice, dict):
            break
        more = steps(prompt, [_V2["recipient"], _V2["stop"]], None, max_tokens=4)["choices"][0]["text"]
        if "<|from|>" not in more:
            break
        prompt += f"\n{_V2['from']}assistant\n{_V2['recipient']}"
        turn += 1
    return steps.answer(calls, content, legacy, ids, stream)
