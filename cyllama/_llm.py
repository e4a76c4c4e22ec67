"""The high-level API: ``LLM`` (a loaded model you call), and ``complete`` / ``chat`` one-shots.

An ``LLM`` keeps its model and context between calls and remembers which tokens its KV cache
holds, so a prompt that extends the previous one (a chat growing turn by turn) only evaluates the
new tokens. With ``n_ctx=None`` the context is sized from prompt + max_tokens (rounded up, capped
by the model's training context) and grown when a later call needs more.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ._config import GenerationConfig, GenerationStats, build_sampler
from ._embedding import Embedder
from ._generation import CancelToken, GenerationChunk, StreamStats, stream_generate
from .llama.context import LlamaContext, LlamaContextParams
from .llama.model import LlamaModel, LlamaModelParams

__all__ = ["LLM", "Generator", "complete", "generate", "chat"]

_CTX_STEP = 256


def _grammar_for(cfg: GenerationConfig, response_format: Mapping[str, Any] | None) -> str | None:
    from . import grammar as _grammar

    if cfg.grammar:
        return cfg.grammar
    if cfg.json_schema is not None:
        return _grammar.json_schema_to_grammar(cfg.json_schema)
    if response_format is not None:
        return _grammar.json_grammar_for_response_format(dict(response_format))
    return None


class LLM:
    """A loaded model ready to generate: ``LLM(path)("prompt")``.

    ``config`` gives the defaults for every call; keyword arguments override single fields, both
    here and per call (``llm("hi", temperature=0, max_tokens=20)``). Model-level fields
    (``n_gpu_layers``) apply when the model is loaded. Use one ``LLM`` from one thread at a time;
    for concurrent requests use the batch engine. ``cancel()`` (from any thread) stops the running
    generation between tokens, or aborts its prompt evaluation; the object stays usable.
    """

    def __init__(self, model_path: str | os.PathLike, config: GenerationConfig | None = None,
                 verbose: bool = False, *, chat_template: str | None = None, **kwargs: Any):
        if config is not None and not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
        self.config = (config or GenerationConfig()).replace(**kwargs)
        self.verbose = verbose
        self.model = LlamaModel(model_path, LlamaModelParams(n_gpu_layers=self.config.n_gpu_layers), verbose=verbose)
        self.model_path = self.model.path
        self.vocab = self.model.get_vocab()
        self._chat_template_source = chat_template
        self._chat_template: Any = None
        self._ctx: LlamaContext | None = None
        self._cache: list[int] = []
        self._embedders: dict[tuple[str, bool], Embedder] = {}
        self._cancel = CancelToken()
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._active: Iterator[GenerationChunk] | None = None
        self.last_stats: GenerationStats | None = None

    # -- context management ----------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """The current context size (0 before the first call when the size is automatic)."""
        return self._ctx.n_ctx if self._ctx is not None else 0

    @property
    def context(self) -> LlamaContext | None:
        return self._ctx

    def _context_for(self, cfg: GenerationConfig, n_prompt: int) -> LlamaContext:
        train = self.model.n_ctx_train or 4096
        if cfg.n_ctx is not None:
            want = cfg.n_ctx or train
        else:
            need = n_prompt + cfg.max_tokens
            want = min(train, -(-need // _CTX_STEP) * _CTX_STEP)
            if self._ctx is not None and self._ctx.n_ctx >= min(need, train):
                want = self._ctx.params.n_ctx
        n_batch = min(cfg.n_batch, want)
        ctx = self._ctx
        # compare with what was asked for: llama.cpp rounds n_ctx up (to 256), which must not
        # make every call rebuild the context and lose its KV cache
        if ctx is None or ctx.params.n_ctx != want or ctx.params.n_batch != n_batch:
            if ctx is not None:
                ctx.close()
                self._ctx, self._cache = None, []
            p = LlamaContextParams(n_ctx=want, n_batch=n_batch)
            if cfg.n_threads:
                p.n_threads = cfg.n_threads
            if cfg.n_threads_batch or cfg.n_threads:
                p.n_threads_batch = cfg.n_threads_batch or cfg.n_threads
            ctx = self._ctx = LlamaContext(self.model, p)
        elif cfg.n_threads and (ctx.n_threads != cfg.n_threads or
                                ctx.n_threads_batch != (cfg.n_threads_batch or cfg.n_threads)):
            ctx.set_n_threads(cfg.n_threads, cfg.n_threads_batch)
        return ctx

    def reset(self) -> None:
        """Forgets the KV cache (the next prompt is evaluated from scratch)."""
        if self._ctx is not None:
            self._ctx.kv_cache_clear()
        self._cache = []

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_bos: bool = True, parse_special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, add_special=add_bos, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False, unparse_special: bool = False) -> str:
        return self.vocab.detokenize(tokens, remove_special=remove_special, unparse_special=unparse_special)

    def _prompt_tokens(self, prompt: str | Sequence[int], cfg: GenerationConfig, add_bos: bool | None = None) -> list[int]:
        if isinstance(prompt, (str, bytes)):
            if not prompt:
                raise ValueError("the prompt is empty")
            bos = cfg.add_bos if add_bos is None else add_bos
            tokens = self.vocab.tokenize(prompt, add_special=bos, parse_special=cfg.parse_special)
        else:
            tokens = [int(t) for t in prompt]
            self.vocab.check_tokens(tokens)
        if not tokens:
            raise ValueError("the prompt is empty (it has no tokens)")
        return tokens

    def _fit(self, tokens: list[int], cfg: GenerationConfig) -> list[int]:
        train = self.model.n_ctx_train or 4096
        limit = (cfg.n_ctx or train) if cfg.n_ctx is not None else train
        if len(tokens) < limit:
            return tokens
        if not cfg.truncate_prompt:
            raise ValueError(f"the prompt has {len(tokens)} tokens but the context holds {limit}: shorten it, "
                             f"use a larger n_ctx, or pass truncate_prompt=True")
        keep = max(1, limit - min(cfg.max_tokens, limit // 2))
        bos = self.vocab.bos
        if tokens[0] == bos and bos >= 0:
            return [bos, *tokens[len(tokens) - keep + 1:]]
        return tokens[len(tokens) - keep:]

    # -- generation ------------------------------------------------------------------------
    def _config(self, config: GenerationConfig | None, kwargs: Mapping[str, Any]) -> GenerationConfig:
        if config is not None and not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
        cfg = (config or self.config).replace(**kwargs)
        cfg._validate()  # fields may have been assigned after construction
        return cfg

    def _acquire(self, me: Iterator[GenerationChunk]) -> None:
        if not self._lock.acquire(blocking=False):
            prev = self._active
            if self._owner != threading.get_ident() or prev is None or prev is me:
                raise RuntimeError("this LLM is generating in another thread; use one LLM per thread, "
                                   "or the batch engine for concurrent requests")
            try:
                prev.close()  # a stream this thread left unfinished: end it (this releases the lock)
            except ValueError:  # it is running: called again from inside its own on_token callback
                raise RuntimeError("cannot start a generation from inside a running one") from None
            if not self._lock.acquire(blocking=False):
                raise RuntimeError("this LLM is busy")
        self._owner, self._active = threading.get_ident(), me

    def _release(self) -> None:
        self._owner, self._active = None, None
        self._lock.release()

    def stream(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, *,
               response_format: Mapping[str, Any] | None = None, add_bos: bool | None = None,
               **kwargs: Any) -> Iterator[GenerationChunk]:
        """Yields :class:`GenerationChunk` objects (text, token, logprob); the last has ``finish_reason``.

        Nothing runs until the first chunk is asked for. ``self.last_stats`` holds the
        :class:`GenerationStats` once the stream ends.
        """
        cfg = self._config(config, kwargs)
        tokens = self._fit(self._prompt_tokens(prompt, cfg, add_bos), cfg)
        grammar = _grammar_for(cfg, response_format)
        me: list[Iterator[GenerationChunk]] = []
        gen = self._drive(tokens, cfg, grammar, me)
        me.append(gen)
        return gen

    def _drive(self, tokens: list[int], cfg: GenerationConfig, grammar: str | None,
               me: list[Iterator[GenerationChunk]]) -> Iterator[GenerationChunk]:
        self._acquire(me[0])
        stats = StreamStats()
        sampler = None
        try:
            ctx = self._context_for(cfg, len(tokens))
            if len(tokens) >= ctx.n_ctx:
                raise ValueError(f"the prompt has {len(tokens)} tokens but the context holds {ctx.n_ctx}")
            sampler = build_sampler(cfg, self.vocab, grammar)
            self._cancel.reset()
            yield from stream_generate(
                ctx, sampler, tokens, cfg.max_tokens, stop=cfg.stop_sequences, stats=stats, cache=self._cache,
                cancel=self._cancel, ignore_eos=cfg.ignore_eos,
                logprobs=(cfg.top_logprobs if cfg.logprobs else None), logits_processor=cfg.logits_processor)
        finally:
            if sampler is not None:
                sampler.close()
            self.last_stats = GenerationStats(
                prompt_tokens=stats.prompt_tokens, generated_tokens=stats.generated_tokens,
                total_time=stats.total_time, tokens_per_second=stats.tokens_per_second,
                prompt_time=stats.prompt_time, generation_time=stats.generation_time,
                time_to_first_token=stats.time_to_first_token,
                prompt_tokens_per_second=stats.prompt_tokens_per_second, cached_tokens=stats.cached_tokens,
                finish_reason=stats.finish_reason or "stop")
            if self.verbose:
                print(f"[cyllama] {self.last_stats}")
            self._release()

    def __call__(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, stream: bool = False,
                 on_token: Callable[[str], None] | None = None, **kwargs: Any) -> str | Iterator[str]:
        """Generates text for ``prompt``: the whole string, or an iterator of chunks with ``stream=True``.

        ``on_token(text)`` is called with each new piece of text as it is generated.
        """
        chunks = self.stream(prompt, config, **kwargs)
        if stream:
            return _texts(chunks, on_token)
        return "".join(_texts(chunks, on_token))

    generate = __call__

    def generate_with_stats(self, prompt: str | Sequence[int], config: GenerationConfig | None = None,
                            **kwargs: Any) -> tuple[str, GenerationStats]:
        """Generates the whole text and returns it with its :class:`GenerationStats`."""
        text = "".join(_texts(self.stream(prompt, config, **kwargs), None))
        assert self.last_stats is not None
        return text, self.last_stats

    # -- chat ------------------------------------------------------------------------------
    def _template(self) -> Any:
        if self._chat_template is None:
            from .chat_template import ChatTemplate

            self._chat_template = ChatTemplate.from_model(self.model, source=self._chat_template_source)
        return self._chat_template

    def format_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None, **template_kwargs: Any) -> str:
        """The prompt text the model's chat template makes of ``messages``."""
        return self._template().render(list(messages), add_generation_prompt=add_generation_prompt,
                                       tools=tools, **template_kwargs)

    def _chat_tokens(self, messages: Sequence[Mapping[str, Any]], tools: Any, template_kwargs: Mapping[str, Any]) -> list[int]:
        # the template drops a BOS it writes itself when the tokenizer adds one (add_bos)
        text = self.format_chat(messages, True, tools, **template_kwargs)
        return self.vocab.tokenize(text, add_special=self.vocab.add_bos, parse_special=True)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], config: GenerationConfig | None = None, *,
                    response_format: Mapping[str, Any] | None = None, tools: Any = None,
                    template_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        """Like :meth:`stream`, for a list of ``{"role", "content"}`` messages."""
        tokens = self._chat_tokens(messages, tools, template_kwargs or {})
        return self.stream(tokens, config, response_format=response_format, **kwargs)

    def chat(self, messages: Sequence[Mapping[str, Any]], config: GenerationConfig | None = None,
             stream: bool = False, on_token: Callable[[str], None] | None = None, *,
             response_format: Mapping[str, Any] | None = None, **kwargs: Any) -> str | Iterator[str]:
        """Answers a conversation, formatted with the model's own chat template."""
        chunks = self.chat_stream(messages, config, response_format=response_format, **kwargs)
        if stream:
            return _texts(chunks, on_token)
        return "".join(_texts(chunks, on_token))

    # -- embeddings ------------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], pooling: str = "mean", normalize: bool = True,
              truncate: bool = False) -> np.ndarray | list[np.ndarray]:
        """Embedding of a string (1-D array) or of each string in a list (2-D array, batched).

        ``pooling``: "mean", "cls", "last", or "none" (a (n_tokens, n_embd) array per text).
        """
        key = (pooling, bool(normalize))
        emb = self._embedders.get(key)
        if emb is None:
            emb = self._embedders[key] = Embedder(self.model, pooling, normalize, n_threads=self.config.n_threads)
        return emb.embed(texts, add_bos=True, truncate=truncate)

    # -- lifecycle -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stops the running generation (from any thread); it ends with finish_reason "cancelled"."""
        self._cancel.cancel()

    def close(self) -> None:
        """Frees the context(s) and the model. Idempotent."""
        if self._active is not None and self._owner == threading.get_ident():
            self._active.close()
        for e in self._embedders.values():
            e.close()
        self._embedders.clear()
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self.model.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LLM {self.model_path.name} n_ctx={self.n_ctx}{' (closed)' if self.model.closed else ''}>"


Generator = LLM


def _texts(chunks: Iterator[GenerationChunk], on_token: Callable[[str], None] | None) -> Iterator[str]:
    for c in chunks:
        if c.text:
            if on_token is not None:
                on_token(c.text)
            yield c.text


def _one_shot(run: Callable[[LLM], Any], model_path: str | os.PathLike, config: GenerationConfig | None,
              stream: bool, kwargs: dict[str, Any]) -> Any:
    cfg = (config or GenerationConfig()).replace(**kwargs)
    llm = LLM(model_path, cfg)
    if not stream:
        try:
            return run(llm)
        finally:
            llm.close()

    def gen() -> Iterator[str]:
        try:
            yield from run(llm)
        finally:
            llm.close()
    return gen()


def complete(prompt: str, model_path: str | os.PathLike, config: GenerationConfig | None = None,
             stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
    """Loads the model, generates for ``prompt``, frees the model. Use :class:`LLM` to keep it loaded."""
    return _one_shot(lambda llm: llm(prompt, stream=stream), model_path, config, stream, kwargs)


generate = complete


def chat(messages: Sequence[Mapping[str, Any]], model_path: str | os.PathLike,
         config: GenerationConfig | None = None, stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
    """Loads the model, answers the conversation with its chat template, frees the model."""
    fmt = kwargs.pop("response_format", None)
    return _one_shot(lambda llm: llm.chat(messages, stream=stream, response_format=fmt),
                     model_path, config, stream, kwargs)
