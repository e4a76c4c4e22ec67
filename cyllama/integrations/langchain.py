"""LangChain models on a local GGUF model: :class:`CyllamaLLM`, :class:`ChatCyllama`, :class:`CyllamaEmbeddings`.

Needs ``langchain-core`` (``pip install cyllama[langchain]``). The modern (LCEL) form of a chain::

    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from cyllama.integrations import CyllamaLLM

    llm = CyllamaLLM(model_path="model.gguf", temperature=0.7)
    chain = PromptTemplate.from_template("Explain {topic} in simple terms:") | llm | StrOutputParser()
    chain.invoke({"topic": "quantum computing"})
    for piece in chain.stream({"topic": "rust"}):
        print(piece, end="")

The model is loaded on first use and kept (one per object). To share one loaded model between
several objects (and an :class:`~cyllama.integrations.OpenAICompatibleClient`), pass
``client=cyllama.LLM(path)``; calls on a shared model run one at a time.

``CyllamaLLM.batch([...])`` (and ``generate`` with several prompts) decodes the prompts together on
cyllama's continuous-batching :class:`~cyllama.Engine`; greedy output equals single calls.
``ChatCyllama`` formats messages with the model's own chat template, supports ``bind_tools``
(a forced tool, ``tool_choice="name"`` / ``"any"``, is generated under a JSON-schema grammar, so
its arguments always parse) and ``with_structured_output`` (grammar-constrained JSON by default).
"""

from __future__ import annotations

import json
import threading
from operator import itemgetter
from typing import Any, Callable, Iterator, Literal, Mapping, Optional, Sequence, Union

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.language_models.llms import LLM as _LangChainLLM
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        ChatResult,
        Generation,
        GenerationChunk,
        LLMResult,
    )
    from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langchain_core.utils.pydantic import is_basemodel_subclass
    from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
except ImportError as exc:  # pragma: no cover - exercised only without langchain-core
    raise ImportError("cyllama's LangChain integration needs langchain-core: pip install 'cyllama[langchain]'") from exc

from .._config import GenerationConfig
from .._engine import Engine
from .._llm import LLM, _grammar_for
from .._openai.schema import ChatCompletionRequest, parse_request
from .._tools.plan import forced_tool_names, new_call_id
from .openai_compat import run_on, service_for

__all__ = ["CyllamaLLM", "ChatCyllama", "CyllamaEmbeddings"]

_CTX_STEP = 256
_IGNORED_PARAMS = frozenset({"timeout", "request_timeout", "max_retries", "api_key", "base_url"})
_ENGINE_MIN_CTX = 512


def _stats_info(llm: LLM, finish: str | None) -> dict[str, Any]:
    st = llm.last_stats
    info: dict[str, Any] = {"finish_reason": finish or (st.finish_reason if st else None) or "stop"}
    if st is not None:
        info["prompt_tokens"] = st.prompt_tokens
        info["completion_tokens"] = st.generated_tokens
    return info


class _CyllamaBase(BaseModel):
    """Fields and model handling shared by the LangChain classes."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model_path: Optional[str] = None
    """Path of the GGUF file (not needed when ``client`` is given)."""
    client: Any = Field(default=None, exclude=True)
    """An already loaded :class:`cyllama.LLM` to use (and share) instead of loading ``model_path``."""
    n_gpu_layers: int = 99
    """Layers to offload to the GPU when the model is loaded (99: all)."""
    chat_template: Optional[str] = None
    """Jinja chat template overriding the model's own (only used when the model is loaded here)."""

    _llm: Any = PrivateAttr(default=None)
    _load_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, values: Any) -> Any:
        """A misspelled argument is an error, not silently ignored (the connection options LangChain's
        standard parameters include, which mean nothing in-process, are accepted)."""
        if isinstance(values, Mapping):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            unknown = [k for k in values if k not in known and k not in _IGNORED_PARAMS]
            if unknown:
                import difflib

                hints = []
                for k in unknown:
                    close = difflib.get_close_matches(k, sorted(known), n=1)
                    hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                raise ValueError(f"{cls.__name__} got unknown argument{'s' if len(unknown) > 1 else ''} "
                                 + ", ".join(hints))
        return values

    @model_validator(mode="after")
    def _check_source(self) -> Any:
        if self.client is None and not self.model_path:
            raise ValueError("give model_path (a GGUF file) or client (a loaded cyllama.LLM)")
        if self.client is not None:
            if not isinstance(self.client, LLM):
                raise ValueError(f"client must be a cyllama.LLM, got {type(self.client).__name__}")
            if not self.model_path:
                self.model_path = str(self.client.model_path)
        return self

    def _get_llm(self) -> LLM:
        if self.client is not None:
            return self.client
        if self._llm is None:
            with self._load_lock:
                if self._llm is None:
                    self._llm = LLM(self.model_path, n_gpu_layers=self.n_gpu_layers,  # type: ignore[arg-type]
                                    chat_template=self.chat_template)
        return self._llm

    @property
    def llm(self) -> LLM:
        """The loaded :class:`cyllama.LLM` (loads it on first access)."""
        return self._get_llm()

    def close(self) -> None:
        """Frees the model this object loaded (a shared ``client`` is left open). Idempotent."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()


class _GenerationFields(BaseModel):
    temperature: float = 0.7
    """Sampling temperature; 0 is greedy (deterministic)."""
    max_tokens: int = 512
    """Most tokens to generate."""
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.1
    n_ctx: Optional[int] = None
    """Context size; None sizes it from prompt + max_tokens."""
    seed: int = -1
    """Sampling seed; -1 is random."""
    stop: Optional[list[str]] = None
    """Stop sequences (a call's own ``stop`` replaces them)."""
    streaming: bool = False
    """Generate token by token, reporting each to the callbacks' ``on_llm_new_token``."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """More :class:`cyllama.GenerationConfig` fields (``min_p``, ``grammar``, ``mirostat``...)."""

    @model_validator(mode="after")
    def _check_generation(self) -> Any:
        self._config_kwargs(None, {})  # raises ValueError/TypeError on a bad value or unknown option
        return self

    def _config_kwargs(self, stop: Optional[Sequence[str]], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        opts: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_k": self.top_k,
                                "top_p": self.top_p, "repeat_penalty": self.repeat_penalty, "seed": self.seed,
                                "n_ctx": self.n_ctx}
        opts.update(self.model_kwargs)
        stops = stop if stop is not None else self.stop
        if stops:
            opts["stop_sequences"] = [stops] if isinstance(stops, str) else list(stops)
        opts.update(kwargs)
        opts = GenerationConfig.normalize_kwargs(opts)  # unknown names raise TypeError
        GenerationConfig().replace(**opts)  # bad values raise ValueError
        return opts

    def _params(self) -> dict[str, Any]:
        return {"model_path": getattr(self, "model_path", None), "temperature": self.temperature,
                "max_tokens": self.max_tokens, "top_k": self.top_k, "top_p": self.top_p,
                "repeat_penalty": self.repeat_penalty, "n_ctx": self.n_ctx, "seed": self.seed, "stop": self.stop,
                **self.model_kwargs}


# =============================================================================================
# CyllamaLLM: text completion
# =============================================================================================
class CyllamaLLM(_CyllamaBase, _GenerationFields, _LangChainLLM):
    """A LangChain text-completion model (``langchain_core.language_models.llms.LLM``) on cyllama.

    ``llm.invoke(prompt)`` completes the raw prompt (no chat template; use :class:`ChatCyllama`
    for chat). ``llm.batch(prompts)`` runs them together on the batching engine;
    ``max_batch_size`` bounds how many are decoded at once.
    """

    max_batch_size: int = 8
    """Most prompts decoded together by ``batch``/``generate`` (engine slots)."""

    _engine: Any = PrivateAttr(default=None)
    _engine_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "cyllama"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._params()

    # -- single prompt -------------------------------------------------------------------------
    def _call(self, prompt: str, stop: Optional[list[str]] = None,
              run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> str:
        return self._one(prompt, stop, run_manager, kwargs).text

    def _one(self, prompt: str, stop: Optional[list[str]], run_manager: Optional[CallbackManagerForLLMRun],
             kwargs: Mapping[str, Any]) -> Generation:
        if self.streaming:
            acc: Optional[GenerationChunk] = None
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                acc = chunk if acc is None else acc + chunk
            return Generation(text=acc.text if acc else "", generation_info=acc.generation_info if acc else None)
        llm = self._get_llm()
        opts = self._config_kwargs(stop, kwargs)
        parts, finish = [], None
        for ch in llm.stream(prompt, wait=True, **opts):
            parts.append(ch.text)
            finish = ch.finish_reason or finish
        return Generation(text="".join(parts), generation_info=_stats_info(llm, finish))

    def _stream(self, prompt: str, stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        llm = self._get_llm()
        opts = self._config_kwargs(stop, kwargs)
        chunks = llm.stream(prompt, wait=True, **opts)  # tokenizes now: bad input raises before the first chunk

        def run() -> Iterator[GenerationChunk]:
            for ch in chunks:
                if ch.finish_reason is not None:
                    out = GenerationChunk(text=ch.text, generation_info=_stats_info(llm, ch.finish_reason))
                elif ch.text:
                    out = GenerationChunk(text=ch.text)
                else:
                    continue
                if run_manager is not None and out.text:
                    run_manager.on_llm_new_token(out.text, chunk=out)
                yield out

        return run()

    # -- several prompts: the batching engine --------------------------------------------------
    def _generate(self, prompts: list[str], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> LLMResult:
        if len(prompts) <= 1:
            gens = [[self._one(p, stop, run_manager, kwargs)] for p in prompts]
        else:
            gens = [[g] for g in self._batch_generate(prompts, stop, kwargs)]
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        for (g,) in gens:
            for k in usage:
                usage[k] += (g.generation_info or {}).get(k, 0)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return LLMResult(generations=gens, llm_output={"token_usage": usage, "model_name": self.model_path})

    async def _agenerate(self, prompts: list[str], stop: Optional[list[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None, **kwargs: Any) -> LLMResult:
        # the sync path in a worker thread, so that abatch() also runs on the batching engine
        return await run_in_executor(None, self._generate, prompts, stop,
                                     run_manager.get_sync() if run_manager else None, **kwargs)

    def _engine_for(self, n: int, need: int) -> Engine:
        llm = self._get_llm()
        train = llm.model.n_ctx_train or 4096
        if self.n_ctx:
            n_ctx = min(self.n_ctx, train)
        else:
            n_ctx = min(train, max(_ENGINE_MIN_CTX, -(-need // _CTX_STEP) * _CTX_STEP))
        slots = max(1, min(n, self.max_batch_size))
        e = self._engine
        if e is None or e.n_slots < slots or e.n_ctx_slot < n_ctx or e.model is not llm.model:
            if e is not None:
                e.close()
                n_ctx = max(n_ctx, e.n_ctx_slot) if e.model is llm.model else n_ctx
                slots = max(slots, e.n_slots) if e.model is llm.model else slots
            self._engine = None
            e = self._engine = Engine(llm.model, n_slots=slots, n_ctx=n_ctx, n_threads=llm.config.n_threads)
        return e

    def _batch_generate(self, prompts: Sequence[str], stop: Optional[list[str]],
                        kwargs: Mapping[str, Any]) -> list[Generation]:
        llm = self._get_llm()
        cfg = llm.config.replace(**self._config_kwargs(stop, kwargs))
        tokenized = []
        for i, p in enumerate(prompts):
            toks = llm.tokenize(p, add_bos=cfg.add_bos, parse_special=cfg.parse_special) if p else []
            if not toks:
                raise ValueError(f"prompt {i} is empty")
            tokenized.append(toks)
        grammar = _grammar_for(cfg, None)
        with self._engine_lock:
            engine = self._engine_for(len(prompts), max(len(t) for t in tokenized) + cfg.max_tokens)
            reqs = []
            try:
                for toks in tokenized:
                    reqs.append(engine.submit(toks, cfg, grammar))
                out = []
                for r in reqs:
                    text = r.result()
                    if r.error is not None:
                        raise r.error
                    st = r.stats
                    out.append(Generation(text=text, generation_info={
                        "finish_reason": r.finish_reason or "stop",
                        "prompt_tokens": st.prompt_tokens if st else len(r.tokens),
                        "completion_tokens": st.generated_tokens if st else len(r.completion_tokens)}))
                return out
            except BaseException:
                for r in reqs:
                    r.cancel()
                raise

    def close(self) -> None:
        """Stops the batching engine and frees the model this object loaded. Idempotent."""
        with self._engine_lock:
            e, self._engine = self._engine, None
        if e is not None:
            e.close()
        super().close()


# =============================================================================================
# ChatCyllama: chat model
# =============================================================================================
_CALL_BLOCKS = frozenset({"tool_call", "tool_call_chunk", "tool_use", "function_call", "invalid_tool_call",
                          "server_tool_call", "server_tool_result", "reasoning", "thinking"})


def _text_content(content: Any, where: str, assistant: bool = False) -> str:
    """The text of a message's content; an assistant's tool-call and reasoning blocks (LangChain's
    ``output_version="v1"`` content, Anthropic-style ``tool_use``) are skipped, since its
    ``tool_calls`` carry the calls."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif assistant and isinstance(block, Mapping) and block.get("type") in _CALL_BLOCKS:
            continue
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise ValueError(f"{where}: content block of type {kind!r} cannot be given to a text model")
    return "".join(parts)


def messages_to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the ``{"role", "content", ...}`` dicts chat templates take."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"message {i} ({type(m).__name__})"
        content = _text_content(m.content, where, isinstance(m, AIMessage))
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": content})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": content})
        elif isinstance(m, AIMessage):
            d: dict[str, Any] = {"role": "assistant", "content": content or None}
            if m.tool_calls:
                d["tool_calls"] = [
                    {"id": tc.get("id") or new_call_id(), "type": "function",
                     "function": {"name": tc["name"], "arguments": json.dumps(tc["args"], ensure_ascii=False)}}
                    for tc in m.tool_calls]
            out.append(d)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "content": content, "tool_call_id": m.tool_call_id,
                        **({"name": m.name} if m.name else {})})
        elif isinstance(m, FunctionMessage):
            out.append({"role": "tool", "content": content, "name": m.name})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": content})
        else:
            raise ValueError(f"{where}: unsupported message type")
    return out


class ChatCyllama(_CyllamaBase, _GenerationFields, BaseChatModel):
    """A LangChain chat model on cyllama: messages go through the model's own chat template.

    ``bind_tools(tools, tool_choice=...)``: tools are shown to the model (through the template when
    it renders tools, else described in the system message); ``tool_choice`` naming a tool, or
    ``"any"``/``"required"``, forces a call whose JSON is generated under a grammar built from the
    tools' parameter schemas. Without a forced choice, calls the model writes
    (``<tool_call>{...}</tool_call>`` or a bare ``{"name", "arguments"}`` object) are parsed.
    ``with_structured_output(schema)`` constrains the answer to the schema (``method="json_schema"``,
    the default; also ``"function_calling"`` and ``"json_mode"``).
    """

    @property
    def _llm_type(self) -> str:
        return "cyllama-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._params()

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "cyllama"
        params["ls_model_name"] = kwargs.get("model") or self.model_path or ""
        return params

    # -- requests: through cyllama's one OpenAI layer ----------------------------------------
    def _plan(self, messages: Sequence[BaseMessage], stop: Optional[list[str]], kwargs: dict[str, Any],
              stream: bool) -> tuple[LLM, Any]:
        kwargs = dict(kwargs)
        body: dict[str, Any] = {"messages": messages_to_dicts(messages), "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        tools = kwargs.pop("tools", None)
        if tools is not None:
            body["tools"] = [convert_to_openai_tool(t) for t in tools]
        for k in ("tool_choice", "response_format"):
            v = kwargs.pop(k, None)
            if v is not None:
                body[k] = v
        for k in ("ls_structured_output_format", "structured_output_format", "parallel_tool_calls", "strict",
                  "model"):
            kwargs.pop(k, None)
        llm = self._get_llm()
        base = llm.config.replace(**self._config_kwargs(stop, kwargs))
        req = parse_request(ChatCompletionRequest, body)
        return llm, service_for(llm).chat(req, base=base)

    def _metadata(self, finish: Optional[str]) -> dict[str, Any]:
        return {"finish_reason": finish or "stop", "model_name": self.model_path}

    @staticmethod
    def _usage(u: Optional[Mapping[str, int]]) -> Optional[dict[str, int]]:
        if not u:
            return None
        return {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                "total_tokens": u["total_tokens"]}

    @staticmethod
    def _calls(tool_calls: Optional[Sequence[Mapping[str, Any]]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(tool_calls, invalid_tool_calls) of OpenAI ``tool_calls`` (JSON-text arguments)."""
        calls, invalid = [], []
        for tc in tool_calls or []:
            fn = tc["function"]
            try:
                args = json.loads(fn["arguments"])
                if not isinstance(args, dict):
                    raise ValueError("the arguments are not a JSON object")
                calls.append({"name": fn["name"], "args": args, "id": tc["id"], "type": "tool_call"})
            except ValueError as exc:  # cut off by max_tokens
                invalid.append({"name": fn["name"], "args": fn["arguments"], "id": tc["id"],
                                "error": f"the call is not complete JSON ({exc})", "type": "invalid_tool_call"})
        return calls, invalid

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        llm, plan = self._plan(messages, stop, kwargs, stream=False)
        out = run_on(llm, plan)
        choice = out["choices"][0]
        msg_in = choice["message"]
        calls, invalid = self._calls(msg_in.get("tool_calls"))
        meta = self._metadata(choice["finish_reason"])
        usage = self._usage(out.get("usage"))
        msg = AIMessage(content=msg_in.get("content") or "", tool_calls=calls, invalid_tool_calls=invalid,
                        usage_metadata=usage, response_metadata=meta)
        gen = ChatGeneration(message=msg, generation_info={"finish_reason": meta["finish_reason"]})
        return ChatResult(generations=[gen], llm_output={"token_usage": out.get("usage"), "model_name": self.model_path})

    def _stream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        llm, plan = self._plan(messages, stop, kwargs, stream=True)  # bad input raises before the first chunk
        chunks = run_on(llm, plan)

        def emit(chunk: ChatGenerationChunk) -> ChatGenerationChunk:
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            return chunk

        def run() -> Iterator[ChatGenerationChunk]:
            for obj in chunks:
                if not obj["choices"]:  # the closing usage chunk
                    yield emit(ChatGenerationChunk(message=AIMessageChunk(
                        content="", usage_metadata=self._usage(obj.get("usage")))))
                    continue
                choice = obj["choices"][0]
                delta, finish = choice["delta"], choice["finish_reason"]
                tcc = [{"name": tc["function"].get("name"), "args": tc["function"].get("arguments"),
                        "id": tc.get("id"), "index": tc["index"], "type": "tool_call_chunk"}
                       for tc in delta.get("tool_calls") or []]
                text = delta.get("content") or ""
                if finish is not None:
                    meta = self._metadata(finish)
                    yield emit(ChatGenerationChunk(
                        message=AIMessageChunk(content=text, tool_call_chunks=tcc, response_metadata=meta),
                        generation_info={"finish_reason": meta["finish_reason"]}))
                elif text or tcc:
                    yield emit(ChatGenerationChunk(message=AIMessageChunk(content=text, tool_call_chunks=tcc)))

        return run()

    # -- tools and structured output -----------------------------------------------------------
    def bind_tools(self, tools: Sequence[Union[dict[str, Any], type, Callable[..., Any], Any]], *,
                   tool_choice: Optional[Union[str, bool, dict[str, Any]]] = None,
                   **kwargs: Any) -> Runnable[Any, AIMessage]:
        """Binds tools (anything ``convert_to_openai_tool`` takes: pydantic models, functions,
        ``@tool`` tools, OpenAI dicts).

        ``tool_choice``: None/"auto" (the model may call one), "none", "any"/"required"/True (it
        must call one), or a tool name / ``{"type": "function", "function": {"name": ...}}`` (it
        must call that one; the arguments are grammar-constrained to its schema).
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "any" or tool_choice is True:
            tool_choice = "required"
        elif tool_choice is False:
            tool_choice = None
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        forced_tool_names(tool_choice, formatted)  # an unknown name raises now
        kwargs.pop("strict", None)
        kwargs.pop("parallel_tool_calls", None)
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(self, schema: Union[dict[str, Any], type], *,
                               method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
                               include_raw: bool = False, strict: Optional[bool] = None,
                               **kwargs: Any) -> Runnable[Any, Union[dict[str, Any], BaseModel]]:
        """A runnable answering with ``schema`` (a pydantic class -> an instance; a JSON schema,
        TypedDict or OpenAI tool dict -> a dict).

        ``method``: "json_schema" (default: the answer is JSON generated under the schema's
        grammar), "function_calling" (a forced tool call), or "json_mode" (any JSON object; describe
        the wanted shape in the prompt).
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        fmt = {"kwargs": {"method": method}, "schema": schema}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=fmt)
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                json_schema, name = _json_schema_of(schema)
                response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}
            else:
                response_format = {"type": "json_object"}
            llm = self.bind(response_format=response_format, ls_structured_output_format=fmt)
            parser = (PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                      if is_pydantic else JsonOutputParser())
        else:
            raise ValueError(f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}")
        if include_raw:
            parser_assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
            with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
            return RunnableMap(raw=llm) | with_fallback
        return llm | parser


def _json_schema_of(schema: Any) -> tuple[dict[str, Any], str]:
    """(JSON schema, name) of a pydantic class, TypedDict, OpenAI tool/function dict or JSON schema."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        if hasattr(schema, "model_json_schema"):
            return schema.model_json_schema(), schema.__name__
        return schema.schema(), schema.__name__  # a pydantic.v1 model
    if isinstance(schema, Mapping):
        if "function" in schema or ("name" in schema and "parameters" in schema):
            fn = convert_to_openai_tool(dict(schema))["function"]
            return dict(fn.get("parameters") or {"type": "object"}), fn["name"]
        if any(k in schema for k in ("type", "properties", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")):
            return dict(schema), str(schema.get("title") or "response")
    fn = convert_to_openai_tool(schema)["function"]
    return dict(fn.get("parameters") or {"type": "object"}), fn["name"]


# =============================================================================================
# CyllamaEmbeddings
# =============================================================================================
class CyllamaEmbeddings(_CyllamaBase, Embeddings):
    """LangChain embeddings: a pooled (and by default L2-normalised) vector per text."""

    pooling: Literal["mean", "cls", "last"] = "mean"
    normalize: bool = True
    truncate: bool = False
    """Cut texts longer than the context instead of raising."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        llm = self._get_llm()
        with llm._guard.hold(blocking=True):
            vecs = llm.embed(list(texts), pooling=self.pooling, normalize=self.normalize, truncate=self.truncate)
        return [[float(x) for x in v] for v in vecs]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

