"""The one OpenAI layer: requests become generation jobs, generation chunks become OpenAI JSON.

``OpenAIService`` checks a request (``schema``), renders and tokenizes it, and returns a
:class:`Plan`: the jobs to run (one per choice and prompt, each a token list, a
:class:`~cyllama.GenerationConfig` and a grammar) and an assembler that turns each job's
:class:`~cyllama.GenerationChunk` objects into OpenAI's responses, stream chunks, logprobs and
usage. Who runs the jobs is the caller's business: the server submits them to the engine (all
choices at once), the in-process client and the drop-in run them one after another on an
``LLM`` (:func:`run_plan`). So every feature here reaches every entry point.

Everything produced is plain JSON-ready dicts in OpenAI's shapes; the server sends them, the
in-process client wraps them in the ``openai`` package's types, the drop-in returns them.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .._lazy_numpy import np

from .._config import GenerationConfig
from .._generation import GenerationChunk
from .._grammar_gate import GrammarSpec
from .._media import has_media
from ..llama.model import LlamaModel
from ..llama.sampler import LlamaSampler
from .._tools import formats as _formats
from .._tools import plan as _tools
from .schema import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, InvalidRequestError,
                     parse_request)

__all__ = ["OpenAIService", "Plan", "Job", "run_plan", "server_defaults"]


def server_defaults(n_ctx: int) -> GenerationConfig:
    """llama-server's sampling defaults (what a request that sets nothing gets)."""
    return GenerationConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, max_tokens=n_ctx)


# request field -> GenerationConfig field
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
             "typical_p": "typical_p", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty", "repeat_penalty": "repeat_penalty",
             "repeat_last_n": "penalty_last_n", "mirostat": "mirostat", "mirostat_tau": "mirostat_tau",
             "mirostat_eta": "mirostat_eta", "dry_multiplier": "dry_multiplier", "dry_base": "dry_base",
             "dry_allowed_length": "dry_allowed_length", "dry_penalty_last_n": "dry_penalty_last_n",
             "dry_sequence_breakers": "dry_sequence_breakers", "xtc_probability": "xtc_probability",
             "xtc_threshold": "xtc_threshold", "top_n_sigma": "top_n_sigma", "ignore_eos": "ignore_eos",
             "prompt_lookup_num_tokens": "prompt_lookup_num_tokens",
             "prompt_lookup_max_ngram": "prompt_lookup_max_ngram"}


_RENDER_ARGS = frozenset({"self", "messages", "tools", "add_generation_prompt"})  # set by the request itself


@dataclass
class Job:
    """One generation: choice ``index`` of the response."""

    index: int
    tokens: list[int]
    config: GenerationConfig
    grammar: GrammarSpec | None
    media: Callable[[], Any] | None = None  # makes the prompt's text and media chunks (tokens is then empty)


@dataclass
class Plan:
    """What a request asks for: the jobs and how to answer with their output."""

    jobs: list[Job]
    stream: bool
    assembler: "_Assembler"


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class _Choice:
    __slots__ = ("parts", "lp", "finish", "tokens", "offset")

    def __init__(self, offset: int = 0) -> None:
        self.parts: list[str] = []
        self.lp: list[Any] = []
        self.finish: str | None = None
        self.tokens = 0
        self.offset = offset


class _Assembler:
    """Turns the chunks of a plan's jobs into OpenAI JSON (a whole response, or stream chunks)."""

    def __init__(self, service: "OpenAIService", head: dict[str, Any], n_jobs: int, prompt_tokens: int,
                 include_usage: bool, want_lp: bool):
        self.service, self.head = service, head
        self.choices = [_Choice() for _ in range(n_jobs)]
        self.prompt_tokens, self.include_usage, self.want_lp = prompt_tokens, include_usage, want_lp

    # per job
    def opening(self, i: int) -> list[dict[str, Any]]:
        return []

    def on_chunk(self, i: int, c: GenerationChunk) -> list[dict[str, Any]]:
        raise NotImplementedError

    def on_end(self, i: int, reason: str, n_tokens: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    # whole request
    def usage(self) -> dict[str, int]:
        n = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    chunk_object = ""

    def closing(self) -> list[dict[str, Any]]:
        if not self.include_usage:
            return []
        return [{**self.head, "object": self.chunk_object, "choices": [], "usage": self.usage()}]

    def response(self) -> dict[str, Any]:
        raise NotImplementedError


class _ChatAssembler(_Assembler):
    chunk_object = "chat.completion.chunk"

    def __init__(self, *args: Any, forced: Sequence[str] | None, names: Sequence[str],
                 fmt: "_formats.ToolFormat | None" = None, parallel: bool = True):
        super().__init__(*args)
        self.forced, self.names = forced, names
        # with tools, each choice's text goes through a parser that splits off the calls
        self.tools = [_formats.ToolCallStream(fmt, forced or names, bool(forced), None if parallel else 1)
                      if fmt is not None and names else None for _ in self.choices]
        self.pending_lp: list[list[Any]] = [[] for _ in self.choices]

    def _chunk(self, i: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        return {**self.head, "object": "chat.completion.chunk",
                "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    def opening(self, i: int) -> list[dict[str, Any]]:
        return [self._chunk(i, {"role": "assistant", "content": ""})]

    def on_chunk(self, i: int, c: GenerationChunk) -> list[dict[str, Any]]:
        ch = self.choices[i]
        entry = None
        if self.want_lp and c.token is not None and c.logprob is not None:
            entry = self.service.chat_logprob(c.token, c.logprob, c.top_logprobs)
            ch.lp.append(entry)
        ch.parts.append(c.text)
        st = self.tools[i]
        if st is not None:
            if entry is not None:
                self.pending_lp[i].append(entry)
            return self._events(i, st.feed(c.text))
        if not (c.text or entry is not None):
            return []
        return [self._chunk(i, {"content": c.text}, None, {"content": [entry]} if entry is not None else None)]

    def _events(self, i: int, events: list[tuple]) -> list[dict[str, Any]]:
        out = []
        for delta in _formats.ToolCallStream.deltas(events):
            lp = None
            if self.pending_lp[i]:  # logprobs ride along with the text they cover (content or a call)
                lp, self.pending_lp[i] = {"content": self.pending_lp[i]}, []
            out.append(self._chunk(i, delta, None, lp))
        return out

    def _finish_of(self, i: int) -> str:
        finish = _finish(self.choices[i].finish)
        st = self.tools[i]
        return "tool_calls" if st is not None and st.complete and finish == "stop" else finish

    def _message(self, i: int) -> tuple[dict[str, Any], str]:
        st = self.tools[i]
        if st is None:
            return {"role": "assistant", "content": "".join(self.choices[i].parts)}, self._finish_of(i)
        content, calls = st.message()
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            msg["tool_calls"] = calls
        return msg, self._finish_of(i)

    def on_end(self, i: int, reason: str, n_tokens: int) -> list[dict[str, Any]]:
        ch = self.choices[i]
        ch.finish, ch.tokens = reason, n_tokens
        st = self.tools[i]
        out = self._events(i, st.finish()) if st is not None else []
        lp = None
        if self.pending_lp[i]:  # held-back text that turned out to be nothing to send
            lp, self.pending_lp[i] = {"content": self.pending_lp[i]}, []
        return out + [self._chunk(i, {}, self._finish_of(i), lp)]

    def response(self) -> dict[str, Any]:
        choices = []
        for i, ch in enumerate(self.choices):
            msg, finish = self._message(i)
            choices.append({"index": i, "message": msg, "logprobs": {"content": ch.lp} if self.want_lp else None,
                            "finish_reason": finish})
        return {**self.head, "object": "chat.completion", "choices": choices, "usage": self.usage()}


class _CompletionAssembler(_Assembler):
    chunk_object = "text_completion"
    def __init__(self, *args: Any, echo: Sequence[str], suffix: str | None):
        super().__init__(*args)
        self.echo, self.suffix = echo, suffix
        for ch, e in zip(self.choices, echo):
            ch.offset = len(e)

    def _chunk(self, i: int, text: str, finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        return {**self.head, "object": "text_completion",
                "choices": [{"text": text, "index": i, "logprobs": lp, "finish_reason": finish}]}

    def opening(self, i: int) -> list[dict[str, Any]]:
        return [self._chunk(i, self.echo[i])] if self.echo[i] else []

    def _lp_entry(self, ch: _Choice, c: GenerationChunk) -> dict[str, Any]:
        piece = self.service.piece(c.token)
        entry = {"token": piece, "logprob": c.logprob, "offset": ch.offset,
                 "top": {self.service.piece(t): v for t, v in (c.top_logprobs or {}).items()}}
        ch.offset += len(piece)
        return entry

    @staticmethod
    def _lp_dict(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [e["top"] for e in entries], "text_offset": [e["offset"] for e in entries]}

    def on_chunk(self, i: int, c: GenerationChunk) -> list[dict[str, Any]]:
        ch = self.choices[i]
        entry = None
        if self.want_lp and c.token is not None and c.logprob is not None:
            entry = self._lp_entry(ch, c)
            ch.lp.append(entry)
        ch.parts.append(c.text)
        if not (c.text or entry is not None):
            return []
        return [self._chunk(i, c.text, None, self._lp_dict([entry]) if entry is not None else None)]

    def on_end(self, i: int, reason: str, n_tokens: int) -> list[dict[str, Any]]:
        ch = self.choices[i]
        ch.finish, ch.tokens = reason, n_tokens
        out = [self._chunk(i, self.suffix)] if self.suffix else []
        return out + [self._chunk(i, "", _finish(reason))]

    def response(self) -> dict[str, Any]:
        choices = []
        for i, ch in enumerate(self.choices):
            text = self.echo[i] + "".join(ch.parts) + (self.suffix or "")
            choices.append({"text": text, "index": i, "logprobs": self._lp_dict(ch.lp) if self.want_lp else None,
                            "finish_reason": _finish(ch.finish)})
        return {**self.head, "object": "text_completion", "choices": choices, "usage": self.usage()}


class OpenAIService:
    """OpenAI requests for one loaded model.

    ``n_ctx``: the context a sequence has. ``base``: the config a request's fields change (server:
    llama-server's defaults; in-process: the LLM's). ``model_ids``: the names ``model`` may give;
    with ``strict_model`` another name is a 404 (the server), otherwise it is only echoed.
    ``chat_template``: a template source, a ready ``ChatTemplate``, or None (the model's own).
    ``embed(token_lists)``: the embedder (pooled vectors), for ``/v1/embeddings``.
    """

    def __init__(self, model: LlamaModel, *, n_ctx: int, base: GenerationConfig, model_id: str,
                 model_ids: Iterable[str] = (), strict_model: bool = False, chat_template: Any = None,
                 embed: Callable[[list[list[int]]], Sequence[np.ndarray]] | None = None,
                 default_completion_tokens: int | None = 16, mtmd: Any = None, media_files: bool = False,
                 media_urls: bool = False):
        self.model = model
        self.mtmd = mtmd  # an MtmdContext: chat messages may carry image/audio parts
        self.media_files = media_files  # image URLs may name local files (in-process use only)
        self.media_urls = media_urls or media_files  # http(s) image URLs are downloaded
        self.vocab = model.get_vocab()
        self.n_ctx = n_ctx
        self.base = base
        self.model_id = model_id
        self.model_ids = {model_id, *model_ids}
        self.strict_model = strict_model
        self._template_source = chat_template if isinstance(chat_template, str) else None
        self._template: Any = None if isinstance(chat_template, (str, type(None))) else chat_template
        self._tool_format: Any = None
        self._embed = embed
        self.default_completion_tokens = default_completion_tokens
        self.created = int(time.time())

    # -- helpers ---------------------------------------------------------------------------
    def template(self) -> Any:
        if self._template is None:
            from ..chat_template import ChatTemplate

            self._template = ChatTemplate.from_model(self.model, source=self._template_source or None)
        return self._template

    def tool_format(self) -> "_formats.ToolFormat":
        """How the model's chat template writes tool calls (its family, read from the template)."""
        if self._tool_format is None:
            self._tool_format = _formats.tool_format_for(self.template().source, self._special_token)
        return self._tool_format

    def _special_token(self, text: str) -> int | None:
        return _formats.single_token(self.vocab, text)

    def piece(self, token: int) -> str:
        return self.vocab.token_to_bytes(token, special=False).decode("utf-8", "replace")

    def chat_logprob(self, token: int, lp: float, top: Mapping[int, float] | None) -> dict[str, Any]:
        def entry(t: int, v: float) -> dict[str, Any]:
            b = self.vocab.token_to_bytes(t, special=False)
            return {"token": b.decode("utf-8", "replace"), "logprob": v, "bytes": list(b)}
        return {**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in (top or {}).items()]}

    def _model_name(self, name: str | None) -> str:
        if name is None or name in self.model_ids:
            return name or self.model_id
        if self.strict_model:
            raise InvalidRequestError(f"The model '{name}' does not exist (this server has {sorted(self.model_ids)})",
                                      "model", 404, "model_not_found")
        return name

    def _head(self, prefix: str, model: str | None) -> dict[str, Any]:
        return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": self._model_name(model), "system_fingerprint": "cyllama"}

    def _logit_bias(self, bias: Any) -> dict[int, float]:
        items = bias.items() if isinstance(bias, Mapping) else bias
        out: dict[int, float] = {}
        n_vocab = self.vocab.n_vocab
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidRequestError("logit_bias entries must be [token, bias] pairs", "logit_bias")
            key, value = item
            if value is False:
                value = float("-inf")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(f"logit_bias[{key!r}] must be a number or false", "logit_bias")
            elif not -100 <= value <= 100:
                raise InvalidRequestError(f"logit_bias[{key!r}] must be in -100..100, got {value}", "logit_bias")
            if isinstance(key, str) and key.lstrip("-").isdigit():
                key = int(key)
            if isinstance(key, int) and not isinstance(key, bool):
                if not 0 <= key < n_vocab:
                    raise InvalidRequestError(f"logit_bias token {key} is not in the vocabulary (0..{n_vocab - 1})",
                                              "logit_bias")
                out[key] = float(value)
            elif isinstance(key, str):  # llama-server: a string biases each of its tokens
                for t in self.vocab.tokenize(key, add_special=False, parse_special=False):
                    out[t] = float(value)
            else:
                raise InvalidRequestError(f"logit_bias keys must be token ids or strings, got {key!r}", "logit_bias")
        return out

    def _config(self, req: Any, max_tokens: int | None, n_prompt: int,
                base: GenerationConfig | None = None) -> GenerationConfig:
        kw: dict[str, Any] = {}
        for src, dst in _SAMPLING.items():
            v = getattr(req, src, None)
            if v is not None:
                kw[dst] = v
        if req.seed is not None:
            kw["seed"] = req.seed
        if req.stop is not None:
            kw["stop_sequences"] = [req.stop] if isinstance(req.stop, str) else [s for s in req.stop if s]
        if req.logit_bias:
            kw["logit_bias"] = self._logit_bias(req.logit_bias)
        room = self.n_ctx - n_prompt
        base = base or self.base
        want = max_tokens if max_tokens is not None else base.max_tokens
        kw["max_tokens"] = max(1, min(want, room))
        try:
            return base.replace(**kw)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(str(exc), str(exc).split(" ", 1)[0]) from None

    def _grammar(self, req: Any) -> str | None:
        from .. import grammar as g

        text: str | None = None
        try:
            if req.grammar is not None:
                text = req.grammar
            elif req.json_schema is not None:
                text = g.json_schema_to_grammar(req.json_schema)
            elif getattr(req, "response_format", None) is not None:
                text = g.json_grammar_for_response_format(req.response_format.model_dump(by_alias=True,
                                                                                        exclude_none=True))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise InvalidRequestError(f"invalid schema: {exc}", "response_format") from None
        if text is not None:
            self._check_grammar(text, "grammar" if req.grammar is not None else "response_format")
        return text

    def _check_grammar(self, text: str, param: str) -> None:
        try:  # let llama.cpp parse it now: a bad grammar is the request's fault, found before it is queued
            s = LlamaSampler(vocab=self.vocab)
            try:
                s.add_grammar(text)
            finally:
                s.close()
        except (ValueError, RuntimeError) as exc:
            raise InvalidRequestError(f"invalid grammar: {exc}", param) from None

    def _fit(self, tokens: list[int], param: str) -> list[int]:
        if not tokens:
            raise InvalidRequestError("the prompt is empty", param)
        if len(tokens) >= self.n_ctx:
            raise InvalidRequestError(f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}",
                                      param, code="context_length_exceeded")
        return tokens

    @staticmethod
    def _seeded(cfg: GenerationConfig, i: int) -> GenerationConfig:
        # each choice its own random stream; a given seed makes all of them reproducible
        return cfg if i == 0 or cfg.seed == -1 else cfg.replace(seed=(cfg.seed + i) & 0xFFFFFFFF)

    # -- chat ------------------------------------------------------------------------------
    def _messages(self, req: ChatCompletionRequest) -> list[dict[str, Any]]:
        out = []
        for i, m in enumerate(req.messages):
            d = m.model_dump(exclude_none=True)
            content = d.get("content")
            if isinstance(content, list):
                texts = []
                for j, part in enumerate(content):
                    kind = part.get("type")
                    if kind == "text" and isinstance(part.get("text"), str):
                        texts.append(part["text"])
                    elif kind in ("image_url", "input_audio") and self.mtmd is not None:
                        texts = None  # kept as parts: _media_plan puts the media marker in their place
                        break
                    elif kind in ("image_url", "input_audio", "file"):
                        raise InvalidRequestError(f"messages[{i}].content[{j}]: {kind} parts need a multimodal "
                                                  "model (none is loaded: start it with --mmproj)",
                                                  f"messages[{i}].content")
                    else:
                        raise InvalidRequestError(f"messages[{i}].content[{j}] must be a content part like "
                                                  '{"type": "text", "text": ...}', f"messages[{i}].content")
                if texts is not None:
                    d["content"] = "".join(texts)
            out.append(d)
        return out

    def _media_plan(self, msgs: list[dict[str, Any]], render: Callable[[list[dict[str, Any]]], str]) -> Any:
        """For messages with image/audio parts: a function making the prompt's chunks (one call
        per job), after checking every image now (a bad one is the request's 400)."""
        from .._media import media_bytes, split_media

        mt = self.mtmd
        try:
            msgs, sources = split_media(msgs, mt.marker)
            text = render(msgs)
            bitmaps = [mt.bitmap(media_bytes(src, allow_files=self.media_files, allow_urls=self.media_urls))
                       for src in sources]
            chunks = mt.tokenize(text, bitmaps, add_special=self.vocab.add_bos, parse_special=True)
        except (ValueError, FileNotFoundError, TypeError) as exc:
            raise InvalidRequestError(str(exc), "messages") from None
        n = chunks.n_tokens
        chunks.close()

        def make() -> Any:
            return mt.tokenize(text, bitmaps, add_special=self.vocab.add_bos, parse_special=True)
        return make, n

    def chat(self, body: Mapping[str, Any] | ChatCompletionRequest, base: GenerationConfig | None = None) -> Plan:
        """The plan of a chat request (``base``: the config its fields change, instead of the service's)."""
        req = body if isinstance(body, ChatCompletionRequest) else parse_request(ChatCompletionRequest, dict(body))
        head = self._head("chatcmpl", req.model)
        tools_in, choice = req.tools, req.tool_choice
        if tools_in is None and req.functions:
            tools_in = [{"type": "function", "function": f} for f in req.functions]
            choice = req.function_call if not isinstance(req.function_call, dict) else \
                {"type": "function", "function": req.function_call}
        own_grammar = bool(req.grammar or req.json_schema or (
            req.response_format is not None and req.response_format.type != "text"))
        try:
            tp = _tools.plan_tools(
                self.template(), self._messages(req),
                [t if isinstance(t, dict) else t.model_dump(exclude_none=True) for t in tools_in] if tools_in else None,
                choice, parallel=req.parallel_tool_calls is not False, special_token=self._special_token,
                own_grammar=own_grammar)
        except _tools.ToolRequestError as exc:
            raise InvalidRequestError(str(exc), exc.param) from None
        except ValueError as exc:
            raise InvalidRequestError(str(exc), "messages") from None
        if tp.grammar is not None:
            self._check_grammar(tp.grammar.grammar, "tools")
        msgs, template_tools = tp.messages, tp.template_tools
        reserved = sorted(set(req.chat_template_kwargs or ()) & _RENDER_ARGS)
        if reserved:
            raise InvalidRequestError(f"chat_template_kwargs cannot set {', '.join(reserved)} (the request does)",
                                      "chat_template_kwargs")
        from ..chat_template import ChatTemplateError

        def render(m: list[dict[str, Any]]) -> str:
            try:
                return self.template().render(m, add_generation_prompt=True, tools=template_tools,
                                              **(req.chat_template_kwargs or {}))
            except ChatTemplateError as exc:
                raise InvalidRequestError(str(exc), "messages") from None

        media = None
        if self.mtmd is not None and has_media(msgs):
            media, n_media_tokens = self._media_plan(msgs, render)
            if n_media_tokens >= self.n_ctx:
                raise InvalidRequestError(f"the messages (with their media) take {n_media_tokens} tokens; the "
                                          f"context holds {self.n_ctx}", "messages", code="context_length_exceeded")
            tokens = []
            n_prompt = n_media_tokens
        else:
            # the template writes its own BOS; the tokenizer adds one only when the model says so
            tokens = self._fit(self.vocab.tokenize(render(msgs), add_special=self.vocab.add_bos, parse_special=True),
                               "messages")
            n_prompt = len(tokens)
        cfg = self._config(req, req.max_completion_tokens or req.max_tokens or
                           (None if req.n_predict in (None, -1) else req.n_predict), n_prompt, base)
        if req.logprobs:
            cfg = cfg.replace(logprobs=True, top_logprobs=req.top_logprobs or 0)
        grammar = tp.grammar or self._grammar(req)
        if tp.fmt is not None and tp.grammar is None and grammar and tp.fmt.special_markers:
            from .._grammar_gate import Grammar

            grammar = Grammar(grammar, preserved_tokens=list(tp.fmt.special_markers.values()))
        n = req.n or 1
        jobs = [Job(i, tokens, self._seeded(cfg, i), grammar, media) for i in range(n)]
        asm = _ChatAssembler(self, head, n, n_prompt,
                             bool(req.stream and req.stream_options and req.stream_options.include_usage),
                             bool(req.logprobs), forced=tp.forced, names=tp.names, fmt=tp.fmt,
                             parallel=req.parallel_tool_calls is not False)
        return Plan(jobs, bool(req.stream), asm)

    # -- text completions ------------------------------------------------------------------
    def completion(self, body: Mapping[str, Any] | CompletionRequest, *, suffix_fallback: bool = False) -> Plan:
        req = body if isinstance(body, CompletionRequest) else parse_request(CompletionRequest, dict(body))
        head = self._head("cmpl", req.model)
        p = req.prompt
        prompts: list[Any]
        if isinstance(p, str):
            prompts = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [p]
        else:
            prompts = list(p)
        if not prompts:
            raise InvalidRequestError("the prompt is empty", "prompt")
        suffix_text = None
        jobs_tokens = []
        vocab = self.vocab
        for k, item in enumerate(prompts):
            if isinstance(item, str):
                if req.suffix is not None:
                    toks = self._infill(item, req.suffix, suffix_fallback)
                    if toks is None:
                        suffix_text = req.suffix
                        toks = vocab.tokenize(item, add_special=True, parse_special=True) if item else []
                else:
                    toks = vocab.tokenize(item, add_special=True, parse_special=True) if item else []
            else:
                try:
                    toks = [int(t) for t in vocab.check_tokens(list(item))]
                except (ValueError, TypeError) as exc:  # out of the vocabulary; too large for an int
                    raise InvalidRequestError(str(exc), "prompt") from None
            jobs_tokens.append(self._fit(toks, "prompt"))
        n = req.n or 1
        max_tokens = req.max_tokens if req.max_tokens is not None else (
            None if req.n_predict in (None, -1) else req.n_predict)
        if max_tokens is None:
            max_tokens = self.default_completion_tokens
        jobs, echo = [], []
        grammar = self._grammar(req)
        for k, toks in enumerate(jobs_tokens):
            cfg = self._config(req, max_tokens, len(toks))
            if req.logprobs is not None:
                cfg = cfg.replace(logprobs=True, top_logprobs=req.logprobs)
            for j in range(n):
                jobs.append(Job(len(jobs), toks, self._seeded(cfg, j), grammar))
                src = prompts[k]
                echo.append((src if isinstance(src, str) else vocab.detokenize(toks)) if req.echo else "")
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        asm = _CompletionAssembler(self, head, len(jobs), sum(len(t) for t in jobs_tokens), include_usage,
                                   req.logprobs is not None, echo=echo, suffix=suffix_text)
        return Plan(jobs, bool(req.stream), asm)

    def _infill(self, prefix: str, suffix: str, fallback: bool) -> list[int] | None:
        """Fill-in-the-middle tokens for ``prefix``/``suffix``; None (with ``fallback``: the suffix
        is appended to the output, as llama-cpp-python does) when the model has no FIM tokens."""
        v = self.vocab
        if min(v.fim_pre, v.fim_suf, v.fim_mid) < 0:
            if fallback:
                return None
            raise InvalidRequestError("suffix needs a model with fill-in-the-middle tokens; this one has none",
                                      "suffix")
        toks = [v.fim_pre, *v.tokenize(prefix, add_special=False, parse_special=False),
                v.fim_suf, *v.tokenize(suffix, add_special=False, parse_special=False), v.fim_mid]
        return ([v.bos] if v.add_bos and v.bos >= 0 else []) + toks

    # -- embeddings ------------------------------------------------------------------------
    def embeddings(self, body: Mapping[str, Any] | EmbeddingRequest) -> dict[str, Any]:
        req = body if isinstance(body, EmbeddingRequest) else parse_request(EmbeddingRequest, dict(body))
        if self._embed is None:
            raise InvalidRequestError("this server does not compute embeddings", "input", 501)
        model = self._model_name(req.model)
        inp = req.input
        items: list[Any] = [inp] if isinstance(inp, str) or (inp and isinstance(inp[0], int)) else list(inp)
        if not items:
            raise InvalidRequestError("input must not be empty", "input")
        if len(items) > 2048:
            raise InvalidRequestError("at most 2048 inputs per request", "input")
        toks = []
        for i, x in enumerate(items):
            if isinstance(x, str):
                t = self.vocab.tokenize(x, add_special=True, parse_special=False) if x else []
            else:
                try:
                    t = [int(v) for v in self.vocab.check_tokens(list(x))]
                except (ValueError, TypeError) as exc:
                    raise InvalidRequestError(f"input[{i}]: {exc}", "input") from None
            if not t:
                raise InvalidRequestError(f"input[{i}] is empty", "input")
            toks.append(t)
        try:
            vecs = [np.asarray(v, dtype=np.float32) for v in self._embed(toks)]
        except ValueError as exc:
            raise InvalidRequestError(str(exc), "input") from None
        if req.dimensions is not None:
            n = len(vecs[0]) if vecs else 0
            if req.dimensions > n:
                raise InvalidRequestError(f"dimensions must be at most {n} for this model", "dimensions")
            vecs = [v[:req.dimensions] for v in vecs]
            vecs = [v / nrm if (nrm := float(np.linalg.norm(v))) > 0 else v for v in vecs]  # Matryoshka
        data = []
        for i, v in enumerate(vecs):
            if req.encoding_format == "base64":
                val: Any = base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
            else:
                val = v.tolist()
            data.append({"object": "embedding", "embedding": val, "index": i})
        n_tok = sum(len(t) for t in toks)
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

    # -- models ----------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        modalities = self.mtmd.modalities if self.mtmd is not None else ["text"]
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "cyllama",
                "modalities": modalities,
                "meta": {"n_ctx": self.n_ctx, "n_params": self.model.n_params, "n_vocab": self.vocab.n_vocab,
                         "n_embd": self.model.n_embd, "modalities": modalities}}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    def model_info(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.model_ids:
            raise InvalidRequestError(f"The model '{model_id}' does not exist", "model", 404, "model_not_found")
        return self.model_card()


def run_plan(plan: Plan, run: Callable[[Job], Iterator[GenerationChunk]],
             tokens_of: Callable[[], int]) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """Runs a plan's jobs one after another: the whole response, or (``plan.stream``) an iterator of
    stream chunks. ``run(job)`` yields the job's chunks; ``tokens_of()`` is the number of tokens the
    job that just ended generated."""
    asm = plan.assembler

    def chunks() -> Iterator[dict[str, Any]]:
        for job in plan.jobs:
            yield from asm.opening(job.index)
            reason = "stop"
            for c in run(job):
                yield from asm.on_chunk(job.index, c)
                if c.finish_reason is not None:
                    reason = c.finish_reason
            yield from asm.on_end(job.index, reason, tokens_of())
        yield from asm.closing()

    if plan.stream:
        return chunks()
    for _ in chunks():
        pass
    return asm.response()
