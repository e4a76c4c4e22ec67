"""An in-process stand-in for the ``openai`` client, answered by a local GGUF model.

::

    from cyllama.integrations.openai_compat import OpenAICompatibleClient

    with OpenAICompatibleClient("model.gguf") as client:
        r = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=50)
        print(r.choices[0].message.content, r.usage.total_tokens)
        for chunk in client.chat.completions.create(messages=[...], stream=True):
            print(chunk.choices[0].delta.content or "", end="")
        client.completions.create(prompt="Once upon a time", max_tokens=20).choices[0].text
        client.embeddings.create(input=["a", "b"]).data[0].embedding

Responses are small dataclasses shaped like the ``openai`` package's objects (attribute access,
``model_dump()`` / ``to_dict()`` / ``to_json()`` give the OpenAI JSON). Supported request fields:
``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``seed``, ``n``,
``frequency_penalty``, ``presence_penalty``, ``logit_bias``, ``logprobs`` / ``top_logprobs``,
``response_format`` (``text``, ``json_object``, ``json_schema``: output constrained by a grammar),
``tools`` / ``tool_choice`` (a named or ``"required"`` tool is forced through a JSON-schema
grammar), ``stream_options={"include_usage": True}``, ``extra_body`` (merged), and any
:class:`~cyllama.GenerationConfig` field (``top_k``, ``min_p``, ``repeat_penalty``, ``grammar``...).
Fields that only matter to a hosted service (``user``, ``metadata``, ``store``...) are accepted and
ignored; anything else raises ``TypeError`` naming it.

Tools: templates that render ``tools`` get them; for other templates the functions are described
in the system message. Without a forced choice, calls the model writes (``<tool_call>{...}</tool_call>``
or a bare ``{"name", "arguments"}`` object) are parsed into ``tool_calls``. A streamed request with
tools delivers the answer when it is complete (a call is only recognisable then).

The helpers for tools and for sharing one :class:`~cyllama.LLM` between wrappers (``model_guard``)
are also used by the LangChain integration.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._config import GenerationConfig
from .._llm import LLM

__all__ = [
    "OpenAICompatibleClient",
    "ChatCompletion", "ChatCompletionChunk", "ChatCompletionMessage", "ChatCompletionMessageToolCall",
    "Choice", "ChunkChoice", "ChoiceDelta", "ChoiceDeltaToolCall", "ChoiceDeltaToolCallFunction",
    "ChoiceLogprobs", "ChatCompletionTokenLogprob", "TopLogprob", "Function", "CompletionUsage",
    "Completion", "CompletionChoice", "Logprobs", "CreateEmbeddingResponse", "Embedding", "EmbeddingUsage",
    "Stream",
]


# =============================================================================================
# response objects
# =============================================================================================
def _dump(value: Any, exclude_none: bool) -> Any:
    if isinstance(value, _Obj):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if exclude_none and v is None:
                continue
            out[f.name] = _dump(v, exclude_none)
        return out
    if isinstance(value, (list, tuple)):
        return [_dump(v, exclude_none) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v, exclude_none) for k, v in value.items()}
    return value


class _Obj:
    """Base of the response dataclasses: pydantic-like dumping, as the ``openai`` objects offer."""

    def model_dump(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The OpenAI JSON of this object as a dict."""
        return _dump(self, exclude_none)

    def to_dict(self, *, exclude_none: bool = False) -> dict[str, Any]:
        return _dump(self, exclude_none)

    def model_dump_json(self, *, indent: int | None = None, exclude_none: bool = False) -> str:
        return json.dumps(_dump(self, exclude_none), indent=indent, ensure_ascii=False)

    def to_json(self, *, indent: int | None = 2, exclude_none: bool = False) -> str:
        return self.model_dump_json(indent=indent, exclude_none=exclude_none)


@dataclass
class Function(_Obj):
    name: str
    arguments: str  # a JSON text, as OpenAI sends it


@dataclass
class ChatCompletionMessageToolCall(_Obj):
    id: str
    function: Function
    type: str = "function"


@dataclass
class ChatCompletionMessage(_Obj):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    refusal: str | None = None


@dataclass
class TopLogprob(_Obj):
    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass
class ChatCompletionTokenLogprob(_Obj):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass
class ChoiceLogprobs(_Obj):
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


@dataclass
class Choice(_Obj):
    index: int
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


@dataclass
class CompletionUsage(_Obj):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class ChatCompletion(_Obj):
    id: str
    choices: list[Choice]
    created: int
    model: str
    object: str = "chat.completion"
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


@dataclass
class ChoiceDeltaToolCallFunction(_Obj):
    name: str | None = None
    arguments: str | None = None


@dataclass
class ChoiceDeltaToolCall(_Obj):
    index: int
    id: str | None = None
    function: ChoiceDeltaToolCallFunction | None = None
    type: str | None = None


@dataclass
class ChoiceDelta(_Obj):
    content: str | None = None
    role: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None
    refusal: str | None = None


@dataclass
class ChunkChoice(_Obj):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


@dataclass
class ChatCompletionChunk(_Obj):
    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: str = "chat.completion.chunk"
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


@dataclass
class Logprobs(_Obj):
    """The legacy completions ``logprobs`` object."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = field(default_factory=list)


@dataclass
class CompletionChoice(_Obj):
    index: int
    text: str
    finish_reason: str | None
    logprobs: Logprobs | None = None


@dataclass
class Completion(_Obj):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: str = "text_completion"
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


@dataclass
class Embedding(_Obj):
    index: int
    embedding: list[float] | str  # a base64 string with encoding_format="base64"
    object: str = "embedding"


@dataclass
class EmbeddingUsage(_Obj):
    prompt_tokens: int
    total_tokens: int


@dataclass
class CreateEmbeddingResponse(_Obj):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


class Stream:
    """What ``create(stream=True)`` returns: an iterator of chunks; ``close()`` stops generation.

    Nothing is generated until the first chunk is asked for.
    """

    def __init__(self, gen: Iterator[Any]):
        self._gen = gen

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# =============================================================================================
# sharing one LLM between wrappers
# =============================================================================================
class _Guard:
    """Serialises generations on one :class:`LLM` across threads (LLM itself refuses concurrent use).

    A stream the same thread left unfinished is closed when that thread starts a new generation;
    a generation started from inside a running one (a callback) raises ``RuntimeError``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._active: Any = None  # the suspended generator holding the lock, if any

    @contextlib.contextmanager
    def hold(self, gen: Any = None) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            active = self._active
            if active is None or active is gen:
                raise RuntimeError("cannot start a generation from inside a running one on the same model")
            try:
                active.close()  # an abandoned stream of this thread: end it (releases the lock)
            except ValueError:
                raise RuntimeError("cannot start a generation from inside a running one on the same model") from None
        self._lock.acquire()
        self._owner, self._active = me, gen
        try:
            yield
        finally:
            self._owner, self._active = None, None
            self._lock.release()


_GUARDS: "weakref.WeakKeyDictionary[LLM, _Guard]" = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


def model_guard(llm: LLM) -> _Guard:
    """The guard shared by every wrapper around ``llm``."""
    with _GUARDS_LOCK:
        g = _GUARDS.get(llm)
        if g is None:
            g = _GUARDS[llm] = _Guard()
        return g


# =============================================================================================
# tools
# =============================================================================================
_PROBE = "zq_cyllama_probe"
_FEATURES: "weakref.WeakKeyDictionary[LLM, dict[str, bool]]" = weakref.WeakKeyDictionary()


def template_features(llm: LLM) -> dict[str, bool]:
    """Whether the model's chat template renders ``tools`` and assistant ``tool_calls``."""
    feats = _FEATURES.get(llm)
    if feats is not None:
        return feats
    user = {"role": "user", "content": "x"}
    tool = {"type": "function", "function": {"name": _PROBE, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": _PROBE, "arguments": {}}}]}
    feats = {}
    for key, kwargs in (("tools", dict(messages=[user], tools=[tool])),
                        ("tool_calls", dict(messages=[user, call], add_generation_prompt=False))):
        try:
            feats[key] = _PROBE in llm.format_chat(**kwargs)
        except Exception:
            feats[key] = False
    _FEATURES[llm] = feats
    return feats


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    """OpenAI tool dicts (``{"type": "function", "function": {...}}``; bare function dicts accepted)."""
    if tools is None:
        return None
    if isinstance(tools, Mapping) or not isinstance(tools, (list, tuple)):
        raise ValueError("tools must be a list of tool dicts like {'type': 'function', 'function': {...}}")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping):
            raise ValueError(f"tools[{i}] must be a dict, got {type(t).__name__}")
        if t.get("type", "function") != "function":
            raise ValueError(f"tools[{i}]: only type 'function' is supported, got {t.get('type')!r}")
        fn = t.get("function", t if "name" in t else None)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}] needs a 'function' with a non-empty 'name'")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}]: 'parameters' must be a JSON schema object")
        fn = {**fn, "parameters": dict(params)}
        out.append({"type": "function", "function": fn})
    return out or None


def forced_tool_names(tool_choice: Any, tools: list[dict[str, Any]] | None) -> list[str] | None:
    """The tools the model must call (one of), or None when it answers freely.

    ``None``/``"auto"``/``"none"``: free; ``"required"``/``"any"``/``True``: one of all tools;
    ``{"type": "function", "function": {"name": N}}`` or a tool name: that tool.
    """
    names = [t["function"]["name"] for t in tools or []]
    if tool_choice is None or tool_choice is False or tool_choice in ("auto", "none"):
        return None
    if not names:
        raise ValueError(f"tool_choice={tool_choice!r} needs tools")
    if tool_choice is True or tool_choice in ("required", "any"):
        return names
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else tool_choice.get("name")
    elif isinstance(tool_choice, str):
        name = tool_choice
    else:
        raise ValueError(f"unsupported tool_choice {tool_choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools {names}")
    return [name]


def tool_call_schema(tools: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of one call ``{"name": ..., "arguments": {...}}`` to one of ``names``."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    alts = []
    for n in names:
        alts.append({"type": "object",
                     "properties": {"name": {"const": n}, "arguments": by_name[n]["parameters"]},
                     "required": ["name", "arguments"]})
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def _tool_instructions(tools: list[dict[str, Any]], forced: Sequence[str] | None) -> str:
    lines = ["You can call the following functions. Their arguments are described by JSON schemas:"]
    for t in tools:
        fn = t["function"]
        lines.append(json.dumps({"name": fn["name"], "description": fn.get("description", ""),
                                 "parameters": fn["parameters"]}, ensure_ascii=False))
    how = 'reply with only a JSON object {"name": <function name>, "arguments": <arguments object>}'
    if forced:
        lines.append(f"Call {'the function ' + forced[0] if len(forced) == 1 else 'one of the functions'}: {how}.")
    else:
        lines.append(f"To call a function, {how}. Otherwise answer normally.")
    return "\n".join(lines)


def prepare_tool_messages(llm: LLM, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                          forced: Sequence[str] | None = None,
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and template ``tools`` for a request with tools, for any chat template.

    Templates that render ``tools`` get them; for the others the function list is described in the
    system message. Assistant ``tool_calls`` a template cannot render become their JSON text.
    """
    msgs = [dict(m) for m in messages]
    feats = template_features(llm) if (tools or any(m.get("tool_calls") for m in msgs)) else {}
    if any(m.get("tool_calls") for m in msgs) and not feats.get("tool_calls"):
        for m in msgs:
            calls = m.pop("tool_calls", None)
            if calls:
                parts = [m.get("content") or ""]
                for c in calls:
                    fn = c.get("function", {})
                    args = fn.get("arguments", {})
                    if isinstance(args, str):
                        try:
                            args = json.loads(args)
                        except ValueError:
                            pass
                    # the form the tool instructions below ask the model to answer in
                    parts.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
                m["content"] = "\n".join(p for p in parts if p)
    for m in msgs:  # simple templates concatenate content: never hand them None
        if m.get("content") is None:
            m["content"] = ""
    if not tools:
        return msgs, None
    if feats.get("tools"):
        return msgs, tools
    text = _tool_instructions(tools, forced)
    if msgs and msgs[0].get("role") == "system":
        first = msgs[0].get("content") or ""
        msgs[0] = {**msgs[0], "content": f"{first}\n\n{text}" if first else text}
    else:
        msgs.insert(0, {"role": "system", "content": text})
    return msgs, None


_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _call_from_obj(obj: Any, names: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if name not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return (name, args) if isinstance(args, dict) else None


def parse_tool_calls(text: str, names: Sequence[str]) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Tool calls in free model output: ``<tool_call>{...}</tool_call>`` blocks (Hermes, Qwen...),
    or the whole text being ``{"name": ..., "arguments"|"parameters": {...}}`` (or a list of those).

    Returns ``(calls, remaining_text)``; only names in ``names`` count.
    """
    calls: list[tuple[str, dict[str, Any]]] = []
    if "<tool_call>" in text:
        for m in _TOOL_TAG.finditer(text):
            try:
                c = _call_from_obj(json.loads(m.group(1)), names)
            except ValueError:
                c = None
            if c is not None:
                calls.append(c)
        if calls:
            return calls, _TOOL_TAG.sub("", text).strip()
    s = text.strip()
    if s[:1] in "{[":
        try:
            obj = json.loads(s)
        except ValueError:
            return [], text
        for item in obj if isinstance(obj, list) else [obj]:
            c = _call_from_obj(item, names)
            if c is None:
                return [], text
            calls.append(c)
        return calls, ""
    return [], text


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# =============================================================================================
# request options
# =============================================================================================
_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "extra_headers",
                      "extra_query", "timeout", "prompt_cache_key", "safety_identifier", "modalities",
                      "reasoning_effort", "verbosity", "web_search_options", "best_of", "function_call",
                      "functions", "prediction", "audio"})
_CONFIG_FIELDS = GenerationConfig.field_names() - {"logits_processor"}
_CONFIG_ALIASES = {"stop": "stop_sequences", "max_new_tokens": "max_tokens", "n_predict": "max_tokens",
                   "repetition_penalty": "repeat_penalty", "mirostat_mode": "mirostat",
                   "max_completion_tokens": "max_tokens"}


def _options(client: "OpenAICompatibleClient", where: str, temperature: Any, max_tokens: Any, top_p: Any,
             stop: Any, seed: Any, extra: dict[str, Any], allowed: Sequence[str],
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generation options for LLM, OpenAI-only fields the caller handles); unknown names raise TypeError."""
    extra = dict(extra)
    body = extra.pop("extra_body", None)
    if body:
        if not isinstance(body, Mapping):
            raise TypeError("extra_body must be a dict")
        extra.update(body)
    opts: dict[str, Any] = {"temperature": client.temperature if temperature is None else temperature,
                            "max_tokens": client.max_tokens if max_tokens is None else max_tokens}
    if top_p is not None:
        opts["top_p"] = top_p
    if stop is not None:
        opts["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if seed is not None:
        opts["seed"] = seed
    special: dict[str, Any] = {}
    unknown = []
    for k, v in extra.items():
        if k in allowed:
            special[k] = v
        elif k in _IGNORED:
            continue
        elif k == "logit_bias":
            if v:
                opts["logit_bias"] = {int(t): float(b) for t, b in dict(v).items()}
        elif k in _CONFIG_FIELDS or k in _CONFIG_ALIASES:
            if v is not None:
                opts[_CONFIG_ALIASES.get(k, k)] = v
        else:
            unknown.append(k)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                        + ", ".join(repr(k) for k in unknown))
    client.llm.config.replace(**opts)._validate()  # bad values raise now, not in the middle of a stream
    return opts, special


def _check_n(n: Any) -> int:
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise ValueError(f"n must be an int in 1..128, got {n!r}")
    return n


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(prompt: int, completion: int) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# =============================================================================================
# the client
# =============================================================================================
class OpenAICompatibleClient:
    """A drop-in for ``openai.OpenAI()`` that runs a local GGUF model in-process.

    ``temperature`` and ``max_tokens`` are the defaults of every request; ``n_gpu_layers`` and
    ``**llm_kwargs`` (``n_ctx``, ``config``, ``chat_template``, ``verbose``, any
    :class:`~cyllama.GenerationConfig` field) go to :class:`cyllama.LLM`. Pass ``llm=`` to share an
    already loaded :class:`~cyllama.LLM` (it is then not closed by :meth:`close`). ``model_name``
    is what responses report as ``model`` (default: the file name).

    The client serialises requests: safe to share between threads, one generation at a time.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, temperature: float = 0.7, max_tokens: int = 512,
                 n_gpu_layers: int = 99, *, llm: LLM | None = None, model_name: str | None = None,
                 **llm_kwargs: Any):
        if llm is None:
            if model_path is None:
                raise TypeError("OpenAICompatibleClient needs model_path (or llm=, an already loaded LLM)")
            llm = LLM(model_path, n_gpu_layers=n_gpu_layers, **llm_kwargs)
            self._owns_llm = True
        else:
            if not isinstance(llm, LLM):
                raise TypeError(f"llm must be a cyllama.LLM, got {type(llm).__name__}")
            if llm_kwargs:
                raise TypeError("model options cannot be given with llm= (the model is already loaded): "
                                + ", ".join(sorted(llm_kwargs)))
            self._owns_llm = False
        self.llm = llm
        try:
            llm.config.replace(temperature=temperature, max_tokens=max_tokens)
        except BaseException:
            if self._owns_llm:
                llm.close()
            raise
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.model = model_name or llm.model_path.name
        self._guard = model_guard(llm)
        self.chat = _Chat(self)
        self.completions = Completions(self)
        self.embeddings = Embeddings(self)

    def close(self) -> None:
        """Frees the model (when this client loaded it). Idempotent."""
        if self._owns_llm:
            self.llm.close()

    def __enter__(self) -> "OpenAICompatibleClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OpenAICompatibleClient model={self.model!r}>"

    # -- helpers shared by the endpoints -------------------------------------------------------
    def _token_logprob(self, token: int, lp: float, top: dict[int, float] | None) -> ChatCompletionTokenLogprob:
        vocab = self.llm.vocab

        def entry(t: int) -> tuple[str, list[int]]:
            b = vocab.token_to_bytes(t, special=False)
            return b.decode("utf-8", "replace"), list(b)

        text, raw = entry(token)
        tops = []
        for t, v in (top or {}).items():
            tt, tb = entry(t)
            tops.append(TopLogprob(token=tt, logprob=v, bytes=tb))
        return ChatCompletionTokenLogprob(token=text, logprob=lp, bytes=raw, top_logprobs=tops)


class _Chat:
    def __init__(self, client: OpenAICompatibleClient):
        self.completions = ChatCompletions(client)


class ChatCompletions:
    """``client.chat.completions``."""

    _SPECIAL = ("n", "tools", "tool_choice", "stream_options", "logprobs", "top_logprobs")

    def __init__(self, client: OpenAICompatibleClient):
        self._client = client

    def create(self, messages: Sequence[Mapping[str, Any]] | None = None, model: str | None = None,
               temperature: float | None = None, max_tokens: int | None = None, stream: bool = False,
               top_p: float | None = None, stop: str | Sequence[str] | None = None, seed: int | None = None,
               response_format: Mapping[str, Any] | None = None, **extra: Any) -> ChatCompletion | Stream:
        """A chat completion (``stream=True``: a :class:`Stream` of :class:`ChatCompletionChunk`)."""
        c = self._client
        if messages is None:
            raise TypeError("create() missing required argument 'messages'")
        if isinstance(messages, Mapping) or not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        opts, sp = _options(c, "create", temperature, max_tokens, top_p, stop, seed, extra, self._SPECIAL)
        n = _check_n(sp.get("n"))
        if sp.get("logprobs"):
            opts["logprobs"] = True
            opts["top_logprobs"] = int(sp.get("top_logprobs") or 0)
        tools = normalize_tools(sp.get("tools"))
        tool_choice = sp.get("tool_choice")
        forced = forced_tool_names(tool_choice, tools)
        active_tools = None if tool_choice == "none" else tools
        msgs, template_tools = prepare_tool_messages(c.llm, messages, active_tools, forced)
        if forced:
            if response_format is not None and response_format.get("type", "text") != "text":
                raise ValueError("response_format cannot be combined with a forced tool_choice")
            if opts.get("grammar") or opts.get("json_schema"):
                raise ValueError("grammar/json_schema cannot be combined with a forced tool_choice")
            opts["json_schema"] = tool_call_schema(tools, forced)  # type: ignore[arg-type]
            response_format = None
        names = [t["function"]["name"] for t in active_tools or []]
        rid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        model_name = model or c.model
        run = dict(msgs=msgs, opts=opts, response_format=response_format, template_tools=template_tools,
                   forced=forced, names=names, n=n)
        if stream:
            # render and tokenize now: a bad message or template raises here, not inside the stream
            c.llm.chat_stream(msgs, response_format=response_format, tools=template_tools, **opts).close()
            include_usage = bool((sp.get("stream_options") or {}).get("include_usage"))
            holder: list[Any] = []
            gen = self._stream(run, rid, created, model_name, include_usage, holder)
            holder.append(gen)
            return Stream(gen)
        with c._guard.hold():
            choices, p_tok, c_tok = [], 0, 0
            for i in range(n):
                text, finish, lps, stats = self._generate(run)
                p_tok = stats.prompt_tokens if stats else 0
                c_tok += stats.generated_tokens if stats else 0
                message, finish = self._message(text, finish, forced, names)
                choices.append(Choice(index=i, message=message, finish_reason=finish,
                                      logprobs=ChoiceLogprobs(content=lps) if opts.get("logprobs") else None))
        return ChatCompletion(id=rid, choices=choices, created=created, model=model_name,
                              usage=_usage(p_tok, c_tok))

    # -- internals ---------------------------------------------------------------------------
    def _chunks(self, run: dict[str, Any]) -> Iterator[Any]:
        return self._client.llm.chat_stream(run["msgs"], response_format=run["response_format"],
                                            tools=run["template_tools"], **run["opts"])

    def _generate(self, run: dict[str, Any]) -> tuple[str, str, list[ChatCompletionTokenLogprob], Any]:
        c = self._client
        parts, lps, finish = [], [], "stop"
        for ch in self._chunks(run):
            parts.append(ch.text)
            if ch.logprob is not None and ch.token is not None:
                lps.append(c._token_logprob(ch.token, ch.logprob, ch.top_logprobs))
            if ch.finish_reason is not None:
                finish = ch.finish_reason
        return "".join(parts), _finish(finish), lps, c.llm.last_stats

    @staticmethod
    def _message(text: str, finish: str, forced: Sequence[str] | None,
                 names: Sequence[str]) -> tuple[ChatCompletionMessage, str]:
        if forced:
            calls: list[tuple[str, Any]] = []
            try:
                obj = json.loads(text)
                calls = [(obj["name"], json.dumps(obj["arguments"], ensure_ascii=False))]
            except (ValueError, KeyError, TypeError):  # cut off by max_tokens: hand back what there is
                name = forced[0]
                m = re.match(r'\s*\{\s*"name"\s*:\s*"([^"]*)"\s*,\s*"arguments"\s*:\s*', text)
                if m:
                    name, text = m.group(1), text[m.end():]
                calls = [(name, text)]
            tcs = [ChatCompletionMessageToolCall(id=new_call_id(), function=Function(name=n_, arguments=a))
                   for n_, a in calls]
            return ChatCompletionMessage(content=None, tool_calls=tcs), "tool_calls" if finish == "stop" else finish
        if names:
            found, rest = parse_tool_calls(text, names)
            if found:
                tcs = [ChatCompletionMessageToolCall(
                    id=new_call_id(), function=Function(name=n_, arguments=json.dumps(a, ensure_ascii=False)))
                    for n_, a in found]
                return ChatCompletionMessage(content=rest or None, tool_calls=tcs), "tool_calls"
        return ChatCompletionMessage(content=text), finish

    def _stream(self, run: dict[str, Any], rid: str, created: int, model: str, include_usage: bool,
                holder: list[Any]) -> Iterator[ChatCompletionChunk]:
        c = self._client

        def chunk(i: int, delta: ChoiceDelta, finish: str | None = None,
                  lp: ChoiceLogprobs | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(index=i, delta=delta, finish_reason=finish, logprobs=lp)
            return ChatCompletionChunk(id=rid, choices=[choice], created=created, model=model)

        with c._guard.hold(holder[0]):
            p_tok, c_tok = 0, 0
            for i in range(run["n"]):
                yield chunk(i, ChoiceDelta(role="assistant", content=""))
                if run["forced"] or run["names"]:  # tool calls are only known once the whole text is
                    text, finish, lps, stats = self._generate(run)
                    message, finish = self._message(text, finish, run["forced"], run["names"])
                    if message.content:
                        yield chunk(i, ChoiceDelta(content=message.content))
                    for j, tc in enumerate(message.tool_calls or []):
                        fn = ChoiceDeltaToolCallFunction(name=tc.function.name, arguments=tc.function.arguments)
                        yield chunk(i, ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=j, id=tc.id, type="function",
                                                                                   function=fn)]))
                    yield chunk(i, ChoiceDelta(), finish)
                else:
                    finish = "stop"
                    for ch in self._chunks(run):
                        lp = None
                        if ch.logprob is not None and ch.token is not None:
                            lp = ChoiceLogprobs(content=[c._token_logprob(ch.token, ch.logprob, ch.top_logprobs)])
                        if ch.text or lp is not None:
                            yield chunk(i, ChoiceDelta(content=ch.text), None, lp)
                        if ch.finish_reason is not None:
                            finish = ch.finish_reason
                    stats = c.llm.last_stats
                    yield chunk(i, ChoiceDelta(), _finish(finish))
                p_tok = stats.prompt_tokens if stats else 0
                c_tok += stats.generated_tokens if stats else 0
            if include_usage:
                yield ChatCompletionChunk(id=rid, choices=[], created=created, model=model, usage=_usage(p_tok, c_tok))


class Completions:
    """``client.completions`` (the legacy text-completion endpoint)."""

    _SPECIAL = ("n", "echo", "logprobs", "suffix", "stream_options")

    def __init__(self, client: OpenAICompatibleClient):
        self._client = client

    def create(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | None = None,
               model: str | None = None, temperature: float | None = None, max_tokens: int | None = None,
               stream: bool = False, top_p: float | None = None, stop: str | Sequence[str] | None = None,
               seed: int | None = None, **extra: Any) -> Completion | Stream:
        """Completes ``prompt`` (a string, a list of strings, token ids or lists of token ids)."""
        c = self._client
        if prompt is None:
            raise TypeError("create() missing required argument 'prompt'")
        opts, sp = _options(c, "create", temperature, max_tokens, top_p, stop, seed, extra, self._SPECIAL)
        if sp.get("suffix"):
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        n = _check_n(sp.get("n"))
        echo = bool(sp.get("echo"))
        want_lp = sp.get("logprobs")
        if want_lp is not None and want_lp is not False:
            opts["logprobs"] = True
            opts["top_logprobs"] = 0 if want_lp is True else int(want_lp)
        prompts = self._prompts(prompt)
        if stream:
            for p in prompts:  # tokenize now: an empty or bad prompt raises here, not inside the stream
                c.llm.stream(p, **opts).close()
        rid = "cmpl-" + uuid.uuid4().hex
        created = int(time.time())
        model_name = model or c.model
        if stream:
            include_usage = bool((sp.get("stream_options") or {}).get("include_usage"))
            holder: list[Any] = []
            gen = self._stream(prompts, n, echo, opts, rid, created, model_name, include_usage, holder)
            holder.append(gen)
            return Stream(gen)
        choices, p_tok, c_tok = [], 0, 0
        with c._guard.hold():
            for pi, p in enumerate(prompts):
                for k in range(n):
                    parts, lp, finish = [], Logprobs(), "stop"
                    offset = len(p) if (echo and isinstance(p, str)) else 0
                    for ch in c.llm.stream(p, **opts):
                        parts.append(ch.text)
                        if ch.logprob is not None and ch.token is not None:
                            offset = self._add_lp(lp, ch, offset)
                        if ch.finish_reason is not None:
                            finish = ch.finish_reason
                    stats = c.llm.last_stats
                    if k == 0:
                        p_tok += stats.prompt_tokens if stats else 0
                    c_tok += stats.generated_tokens if stats else 0
                    text = "".join(parts)
                    if echo:
                        text = self._echo(p) + text
                    choices.append(CompletionChoice(index=pi * n + k, text=text, finish_reason=_finish(finish),
                                                    logprobs=lp if opts.get("logprobs") else None))
        return Completion(id=rid, choices=choices, created=created, model=model_name, usage=_usage(p_tok, c_tok))

    def _prompts(self, prompt: Any) -> list[Any]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, (list, tuple)) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return list(prompt)
            if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                return [list(prompt)]
            if all(isinstance(p, (list, tuple)) for p in prompt):
                return [list(p) for p in prompt]
        raise ValueError("prompt must be a string, a list of strings, a list of token ids or a list of those")

    def _echo(self, p: Any) -> str:
        return p if isinstance(p, str) else self._client.llm.detokenize(p)

    def _add_lp(self, lp: Logprobs, ch: Any, offset: int) -> int:
        c = self._client
        entry = c._token_logprob(ch.token, ch.logprob, ch.top_logprobs)
        lp.tokens.append(entry.token)
        lp.token_logprobs.append(entry.logprob)
        lp.text_offset.append(offset)
        if ch.top_logprobs is not None:
            if lp.top_logprobs is None:
                lp.top_logprobs = []
            lp.top_logprobs.append({t.token: t.logprob for t in entry.top_logprobs})
        return offset + len(entry.token)

    def _stream(self, prompts: list[Any], n: int, echo: bool, opts: dict[str, Any], rid: str, created: int,
                model: str, include_usage: bool, holder: list[Any]) -> Iterator[Completion]:
        c = self._client

        def chunk(i: int, text: str, finish: str | None = None, lp: Logprobs | None = None) -> Completion:
            return Completion(id=rid, choices=[CompletionChoice(index=i, text=text, finish_reason=finish, logprobs=lp)],
                              created=created, model=model)

        with c._guard.hold(holder[0]):
            p_tok, c_tok = 0, 0
            for pi, p in enumerate(prompts):
                for k in range(n):
                    i = pi * n + k
                    if echo:
                        yield chunk(i, self._echo(p))
                    finish = "stop"
                    for ch in c.llm.stream(p, **opts):
                        lp = None
                        if ch.logprob is not None and ch.token is not None:
                            lp = Logprobs()
                            self._add_lp(lp, ch, 0)
                        if ch.text or lp is not None:
                            yield chunk(i, ch.text, None, lp)
                        if ch.finish_reason is not None:
                            finish = ch.finish_reason
                    stats = c.llm.last_stats
                    if k == 0:
                        p_tok += stats.prompt_tokens if stats else 0
                    c_tok += stats.generated_tokens if stats else 0
                    yield chunk(i, "", _finish(finish))
            if include_usage:
                yield Completion(id=rid, choices=[], created=created, model=model, usage=_usage(p_tok, c_tok))


class Embeddings:
    """``client.embeddings``: mean-pooled, L2-normalised embeddings from the model."""

    def __init__(self, client: OpenAICompatibleClient):
        self._client = client

    def create(self, input: str | Sequence[str] | None = None, model: str | None = None,  # noqa: A002
               encoding_format: str | None = None, dimensions: int | None = None,
               **extra: Any) -> CreateEmbeddingResponse:
        c = self._client
        if input is None:
            raise TypeError("create() missing required argument 'input'")
        extra = dict(extra)
        extra.update(extra.pop("extra_body", None) or {})
        unknown = [k for k in extra if k not in _IGNORED]
        if unknown:
            raise TypeError(f"create() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                            + ", ".join(repr(k) for k in unknown))
        if isinstance(input, str):
            texts = [input]
        elif isinstance(input, (list, tuple)) and input and all(isinstance(t, str) for t in input):
            texts = list(input)
        else:
            raise ValueError("input must be a string or a non-empty list of strings (token-id input is not supported: "
                             "ids from another tokenizer would be meaningless to this model)")
        if any(not t for t in texts):
            raise ValueError("input strings must not be empty")
        if encoding_format not in (None, "float", "base64"):
            raise ValueError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                       or dimensions < 1):
            raise ValueError(f"dimensions must be a positive int, got {dimensions!r}")
        with c._guard.hold():
            vecs = np.asarray(c.llm.embed(texts), dtype=np.float32)
            n_tok = sum(len(c.llm.tokenize(t)) for t in texts)
        if dimensions is not None and dimensions < vecs.shape[1]:
            vecs = vecs[:, :dimensions]
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.where(norms > 0, norms, 1)
        data = []
        for i, v in enumerate(vecs):
            emb: list[float] | str
            if encoding_format == "base64":
                emb = base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
            else:
                emb = v.tolist()
            data.append(Embedding(index=i, embedding=emb))
        return CreateEmbeddingResponse(data=data, model=model or c.model,
                                       usage=EmbeddingUsage(prompt_tokens=n_tok, total_tokens=n_tok))
