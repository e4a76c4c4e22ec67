"""The high-level API: ``LLM`` (a loaded model you call), and ``complete`` / ``chat`` one-shots.

An ``LLM`` keeps its model and context between calls and remembers which tokens its KV cache
holds, so a prompt that extends the previous one (a chat growing turn by turn) only evaluates the
new tokens. With ``n_ctx=None`` the context is sized from prompt + max_tokens (rounded up, capped
by the model's training context) and grown when a later call needs more.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ._lazy_numpy import np

from ._chat import ChatReply, ChatStream, read_tool_calls
from ._config import GenerationConfig, GenerationStats, model_sampling_defaults
from ._embedding import Embedder, model_pooling
from ._generation import CancelToken, Generation, GenerationChunk, fit_prompt, run_sequence
from ._grammar_gate import GrammarSpec
from ._guard import GenerationGuard
from ._media import has_media, media_bytes, split_media
from ._speculative import (ChainDrafter, DraftModel, Drafter, NgramLookup, PromptLookup, Speculative,
                           SpeculativeParams, check_compatible)
from .llama.context import LlamaContext, LlamaContextParams
from .llama.mtmd.context import MtmdChunks, MtmdContext
from .llama.model import LlamaModel, LlamaModelParams

if TYPE_CHECKING:
    from ._tools import ToolPlan

__all__ = ["LLM", "Generator", "complete", "generate", "chat", "ChatReply", "ChatStream"]

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

    Speculative decoding: ``draft_model`` (a path, an ``LLM`` or a ``LlamaModel`` with the same
    vocabulary) drafts tokens that the model verifies in one batch (``speculative`` tunes it), and
    ``prompt_lookup_num_tokens=N`` drafts by copying from the prompt; both keep the output exactly
    what it would be without them. ``last_stats`` reports drafted and accepted tokens.

    Images and audio: ``mmproj`` (the model's multimodal projector GGUF) lets :meth:`chat` take
    OpenAI content parts (``{"type": "image_url", "image_url": {"url": "data:..." | path}}``,
    ``{"type": "input_audio", ...}``); an image already in the KV cache from an earlier turn is
    not encoded again.

    Several machines: ``rpc_servers`` (``["host:port", ...]`` or ``"host:port,host:port"``) puts
    the offloaded layers on llama.cpp ``rpc-server`` processes (``cyllama rpc-server``), checked
    before use (:class:`~cyllama.RpcError` when one cannot be used); ``tensor_split`` gives each
    device's share (RPC servers in order, then local GPUs). A draft model stays local.
    """

    def __init__(self, model_path: str | os.PathLike, config: GenerationConfig | None = None,
                 verbose: bool = False, *, chat_template: str | None = None,
                 draft_model: "str | os.PathLike | LLM | LlamaModel | None" = None,
                 speculative: SpeculativeParams | None = None, mmproj: str | os.PathLike | None = None,
                 rpc_servers: str | Sequence[str] | None = None, tensor_split: Sequence[float] | None = None,
                 **kwargs: Any):
        if config is not None and not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
        if speculative is not None and not isinstance(speculative, SpeculativeParams):
            raise TypeError(f"speculative must be a SpeculativeParams, got {type(speculative).__name__}")
        if kwargs.get("n_gpu_layers") == "auto":  # as many layers as the free GPU memory holds
            from .memory import auto_gpu_layers

            kwargs["n_gpu_layers"] = auto_gpu_layers(model_path, kwargs.get("n_ctx") or 2048,
                                                     kwargs.get("n_batch") or 512)
        self.config = (config or GenerationConfig()).replace(**kwargs)
        self.verbose = verbose
        model_params = LlamaModelParams(n_gpu_layers=self.config.n_gpu_layers, rpc_servers=rpc_servers,
                                        tensor_split=tensor_split)
        self.model = LlamaModel(model_path, model_params, verbose=verbose)
        if config is None:  # the model's recommended sampling, where the caller set nothing
            recommended = {k: v for k, v in model_sampling_defaults(self.model).items() if k not in kwargs}
            if recommended:
                self.config = self.config.replace(**recommended)
        self.model_path = self.model.path
        self.speculative = speculative or SpeculativeParams()
        self._draft_model: LlamaModel | None = None
        self._owns_draft = False
        self._spec: Speculative | None = None
        self.mtmd: MtmdContext | None = None
        try:
            if draft_model is not None:
                self._attach_draft(draft_model)
            if mmproj is not None:
                self.mtmd = MtmdContext(mmproj, self.model, use_gpu=self.config.n_gpu_layers != 0,
                                        n_threads=self.config.n_threads)
        except BaseException:
            self.model.close()
            raise
        self.vocab = self.model.get_vocab()
        self._chat_template_source = chat_template
        self._chat_template: Any = None
        self._markers: dict[str, int | None] = {}  # tool-call marker -> its single token id
        self._ctx: LlamaContext | None = None
        self._cache: list[int] = []
        self._embedders: dict[tuple[str, bool], Embedder] = {}
        self._cancel = CancelToken()
        self._guard = GenerationGuard()
        self.last_stats: GenerationStats | None = None

    # -- context management ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, repo_id: str, filename_or_tag: str | None = None, *,
                        cache_dir: str | os.PathLike | None = None, revision: str = "main",
                        token: str | bool | None = None, progress: bool = True, **llm_kwargs: Any) -> "LLM":
        """Loads a GGUF model of a Hugging Face repository, downloading it into the Hugging Face
        cache first when it is not there (:func:`cyllama.download_model`; ``HF_ENDPOINT``,
        ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply).

        ``filename_or_tag``: an Ollama-style tag (``"q4_k_m"``, ``"q8"``: the matching GGUF of the
        repository's file list), a file name (``"sub/model-Q8_0.gguf"``) or a glob (``"*q8_0.gguf"``);
        None takes the tag after ``:`` in ``repo_id`` (``"user/model:q8_0"``), else the default
        (Q4_K_M, else the first GGUF). ``llm_kwargs`` go to :class:`LLM`.
        """
        from .download import download_model
        from .download._names import is_glob

        dl: dict[str, Any] = {"cache_dir": cache_dir, "revision": revision, "token": token, "progress": progress}
        if filename_or_tag is None:
            path = download_model(repo_id, **dl)
        elif not isinstance(filename_or_tag, str) or not filename_or_tag.strip():
            raise ValueError(f"filename_or_tag must be a tag, file name or glob, got {filename_or_tag!r}")
        elif ":" in repo_id:
            raise ValueError(f"{repo_id!r} already names a tag; pass filename_or_tag or a tag, not both")
        elif "/" in filename_or_tag or is_glob(filename_or_tag):
            path = download_model(repo_id, filename=filename_or_tag, **dl)
        else:
            path = download_model(f"{repo_id}:{filename_or_tag}", **dl)
        return cls(path, **llm_kwargs)

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
            if self.mtmd is not None:  # non-causal projectors need an image in one micro-batch
                p.n_ubatch = n_batch
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
        if self._spec is not None:
            self._spec.reset()

    # -- speculative decoding ----------------------------------------------------------------
    def _attach_draft(self, draft: Any) -> None:
        if isinstance(draft, LLM):
            model, owned = draft.model, False
        elif isinstance(draft, LlamaModel):
            model, owned = draft, False
        elif isinstance(draft, (str, os.PathLike)):
            model = LlamaModel(draft, LlamaModelParams(n_gpu_layers=self.config.n_gpu_layers), verbose=self.verbose)
            owned = True
        else:
            raise TypeError(f"draft_model must be a path, an LLM or a LlamaModel, got {type(draft).__name__}")
        reason = check_compatible(self.model, model)
        if reason is not None:
            if owned:
                model.close()
            raise ValueError(f"draft model {model.path.name} cannot draft for {self.model_path.name}: {reason}")
        self._draft_model, self._owns_draft = model, owned

    def _drafter(self, cfg: GenerationConfig, ctx: LlamaContext) -> Drafter | None:
        """What drafts for this call: prompt lookup (or an n-gram cache), then the draft model."""
        parts: list[Drafter] = []
        if cfg.ngram_cache is not None:
            parts.append(NgramLookup(cfg.prompt_lookup_num_tokens or 8, cfg.ngram_cache))
        elif cfg.prompt_lookup_num_tokens:
            parts.append(PromptLookup(cfg.prompt_lookup_num_tokens, cfg.prompt_lookup_max_ngram))
        if self._draft_model is not None:
            spec = self._spec
            if spec is None or spec.ctx_target is not ctx:
                if spec is not None:
                    spec.ctx_draft.close()
                    spec.close()
                p = LlamaContextParams(n_ctx=ctx.params.n_ctx, n_batch=ctx.params.n_batch)
                p.n_threads, p.n_threads_batch = ctx.n_threads, ctx.n_threads_batch
                spec = self._spec = Speculative(ctx, LlamaContext(self._draft_model, p))
            parts.append(DraftModel(spec, self.speculative))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else ChainDrafter(*parts)

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
        return fit_prompt(tokens, limit, cfg.max_tokens, cfg.truncate_prompt, self.vocab.bos)

    # -- generation ------------------------------------------------------------------------
    def _config(self, config: GenerationConfig | None, kwargs: Mapping[str, Any]) -> GenerationConfig:
        if config is not None and not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}")
        cfg = (config or self.config).replace(**kwargs)
        cfg._validate()  # fields may have been assigned after construction
        return cfg

    def stream(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, *,
               response_format: Mapping[str, Any] | None = None, add_bos: bool | None = None,
               wait: bool = False, **kwargs: Any) -> Iterator[GenerationChunk]:
        """Yields :class:`GenerationChunk` objects (text, token, logprob); the last has ``finish_reason``.

        Nothing runs until the first chunk is asked for. ``self.last_stats`` holds the
        :class:`GenerationStats` once the stream ends. With ``wait`` a stream started while another
        thread generates waits for it (instead of raising ``RuntimeError``).
        """
        cfg = self._config(config, kwargs)
        tokens = self._fit(self._prompt_tokens(prompt, cfg, add_bos), cfg)
        return self.run(tokens, cfg, _grammar_for(cfg, response_format), wait)

    def run(self, tokens: Sequence[int], config: GenerationConfig, grammar: GrammarSpec | None = None,
            wait: bool = False, media: "MtmdChunks | None" = None) -> Iterator[GenerationChunk]:
        """The generation of already-checked prompt ``tokens`` with ``config`` (and a GBNF
        ``grammar``): what :meth:`stream` and the OpenAI layer drive. With ``wait`` a call from
        another thread waits for the running generation instead of raising ``RuntimeError``.
        ``media``: the prompt as text and media chunks (``tokens`` is then ignored); it is closed
        when the generation ends."""
        if media is not None and self.mtmd is None:
            raise ValueError("images and audio need a multimodal projector: LLM(model, mmproj=...)")
        me: list[Iterator[GenerationChunk]] = []
        gen = self._drive(list(tokens), config, grammar, me, wait, media)
        me.append(gen)
        return gen

    def _drive(self, tokens: list[int], cfg: GenerationConfig, grammar: GrammarSpec | None,
               me: list[Iterator[GenerationChunk]], wait: bool,
               media: "MtmdChunks | None" = None) -> Iterator[GenerationChunk]:
        try:
            self._guard.acquire(me[0], blocking=wait)
        except BaseException:
            if media is not None:
                media.close()
            raise
        g = None
        try:
            n_prompt = media.n_tokens if media is not None else len(tokens)
            ctx = self._context_for(cfg, n_prompt)
            if n_prompt >= ctx.n_ctx:
                raise ValueError(f"the prompt has {n_prompt} tokens but the context holds {ctx.n_ctx}")
            history = tokens if media is None else media.text_tokens()
            g = Generation.from_config(self.vocab, cfg, history, ctx.n_ctx, grammar)
            g.prompt_tokens = n_prompt  # media embeddings count as prompt tokens, as in llama-server
            self._cancel.reset()
            yield from run_sequence(ctx, g, tokens, cache=self._cache, cancel=self._cancel,
                                    drafter=self._drafter(cfg, ctx) if media is None else None,
                                    media=(self.mtmd, media) if media is not None else None)
        finally:
            if media is not None:
                media.close()  # its bitmaps may serve other jobs (n > 1): they go with their last user
            if g is not None:
                g.close()
                self.last_stats = g.stats()
                if self.verbose:
                    print(f"[cyllama] {self.last_stats}")
            self._guard.release()

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

    def _special_token(self, text: str) -> int | None:
        if text not in self._markers:
            from ._tools import single_token

            self._markers[text] = single_token(self.vocab, text)
        return self._markers[text]

    def _tool_plan(self, messages: Sequence[Mapping[str, Any]], tools: Any, tool_choice: Any, parallel: bool,
                   own_grammar: bool) -> "ToolPlan":
        from ._tools import plan_tools

        if not isinstance(parallel, bool):
            raise TypeError(f"parallel_tool_calls must be True or False, got {parallel!r}")
        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        return plan_tools(self._template(), messages, tools, tool_choice, parallel=parallel,
                          special_token=self._special_token, own_grammar=own_grammar)

    def _render(self, messages: list[dict[str, Any]], template_tools: Any, add_generation_prompt: bool,
                template_kwargs: Mapping[str, Any]) -> str:
        return self._template().render(messages, add_generation_prompt=add_generation_prompt, tools=template_tools,
                                       **template_kwargs)

    def format_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None, *, tool_choice: Any = None,
                    parallel_tool_calls: bool = True, **template_kwargs: Any) -> str:
        """The prompt text :meth:`chat` makes of ``messages`` with the model's chat template (tools
        and past tool calls put in as :meth:`chat` puts them)."""
        plan = self._tool_plan(messages, tools, tool_choice, parallel_tool_calls, False)
        return self._render(plan.messages, plan.template_tools, add_generation_prompt, template_kwargs)

    def _chat_tokens(self, messages: Sequence[Mapping[str, Any]], tools: Any,
                     template_kwargs: Mapping[str, Any]) -> list[int]:
        return self._tokens_of(self.format_chat(messages, True, tools, **template_kwargs))

    def _tokens_of(self, text: str) -> list[int]:
        # the template drops a BOS it writes itself when the tokenizer adds one (add_bos)
        return self.vocab.tokenize(text, add_special=self.vocab.add_bos, parse_special=True)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], config: GenerationConfig | None = None, *,
                    response_format: Mapping[str, Any] | None = None, tools: Any = None, tool_choice: Any = None,
                    parallel_tool_calls: bool = True, template_kwargs: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> Iterator[GenerationChunk]:
        """Like :meth:`stream`, for a conversation (see :meth:`chat` for the arguments).

        With ``tools``, each chunk's ``text`` is only the answer's content (text that may start a
        call is held back until it is known not to be one, so call markup never appears), and the
        last chunk carries ``tool_calls`` (OpenAI's shape, ``[]`` when there are none) and
        ``finish_reason`` ``"tool_calls"`` when the model ended with complete calls. Bad tools or
        ``tool_choice`` raise ``ValueError`` here, before anything runs.
        """
        cfg = self._config(config, kwargs)
        own = _grammar_for(cfg, response_format)
        plan = self._tool_plan(messages, tools, tool_choice, parallel_tool_calls, own is not None)
        grammar: GrammarSpec | None = plan.grammar or own
        if plan.fmt is not None and plan.grammar is None and own is not None and plan.fmt.special_markers:
            from ._grammar_gate import Grammar

            grammar = Grammar(own, preserved_tokens=list(plan.fmt.special_markers.values()))
        tk = template_kwargs or {}
        if has_media(plan.messages):
            media = self._media_chunks(plan.messages, plan.template_tools, tk)
            chunks = self.run([], cfg, grammar, media=media)
        else:
            text = self._render(plan.messages, plan.template_tools, True, tk)
            chunks = self.run(self._fit(self._prompt_tokens(self._tokens_of(text), cfg), cfg), cfg, grammar)
        if plan.fmt is None or not plan.names:
            return chunks
        from ._tools import ToolCallStream

        calls = ToolCallStream(plan.fmt, plan.forced or plan.names, bool(plan.forced),
                               None if parallel_tool_calls else 1)
        return read_tool_calls(chunks, calls)

    def media_prompt(self, messages: Sequence[Mapping[str, Any]], *, tools: Any = None,
                     template_kwargs: Mapping[str, Any] | None = None, allow_files: bool = True,
                     rendered: str | None = None) -> "MtmdChunks":
        """A conversation with image/audio parts, rendered by the chat template and tokenized with
        its media (for :meth:`run`). Image sources: ``data:`` URLs, and (``allow_files``) paths."""
        if self.mtmd is None:
            raise ValueError("image and audio parts need a multimodal projector: LLM(model, mmproj=...)")
        template_tools = tools
        if rendered is None:
            plan = self._tool_plan(messages, tools, None, True, False)
            messages, template_tools = plan.messages, plan.template_tools
        return self._media_chunks(messages, template_tools, template_kwargs or {}, allow_files, rendered)

    def _media_chunks(self, messages: Sequence[Mapping[str, Any]], template_tools: Any,
                      template_kwargs: Mapping[str, Any], allow_files: bool = True,
                      rendered: str | None = None) -> "MtmdChunks":
        if self.mtmd is None:
            raise ValueError("image and audio parts need a multimodal projector: LLM(model, mmproj=...)")
        msgs, sources = split_media(messages, self.mtmd.marker)
        text = rendered if rendered is not None else self._render(msgs, template_tools, True, template_kwargs)
        bitmaps: list[Any] = []
        try:
            for src in sources:
                bitmaps.append(self.mtmd.bitmap(media_bytes(src, allow_files=allow_files, allow_urls=allow_files)))
            return self.mtmd.tokenize(text, bitmaps, add_special=self.vocab.add_bos, parse_special=True)
        except BaseException:
            for b in bitmaps:
                b.close()
            raise

    def chat(self, messages: Sequence[Mapping[str, Any]], config: GenerationConfig | None = None,
             stream: bool = False, on_token: Callable[[str], None] | None = None, *,
             response_format: Mapping[str, Any] | None = None, tools: Any = None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, **kwargs: Any) -> ChatReply | ChatStream:
        """Answers a conversation, formatted with the model's own chat template.

        ``messages``: OpenAI-style dicts (``role`` system/user/assistant/tool, ``content``; an
        assistant message may carry ``tool_calls`` with ``content`` None, a ``tool`` message its
        ``tool_call_id``; with ``mmproj``, content may hold image and audio parts). Returns a
        :class:`ChatReply`: the answer's text as a ``str``, with ``tool_calls``,
        ``finish_reason`` and ``message`` (the assistant message to append for the next turn).
        With ``stream=True``, a :class:`ChatStream` of text pieces whose ``reply`` is that
        :class:`ChatReply` once it ends; :meth:`chat_stream` gives the chunks themselves.

        Tools: ``tools`` are OpenAI function tools (``{"type": "function", "function": {"name",
        "description", "parameters": <JSON schema>}}``). The call syntax is the one the model's
        template uses (Hermes/Qwen, Llama 3.x, Mistral, Functionary; templates without tool syntax
        get the tools described in the system message and answer in a JSON form). ``tool_choice``:
        ``"auto"`` (the default: the model answers or calls; a call it starts is held to its
        tool's schema by a grammar), ``"none"`` (the tools are not offered), ``"required"`` (it
        calls one of them) or ``{"type": "function", "function": {"name": ...}}`` (it calls that
        one); forced calls are generated under the grammar of the tools' schemas from the first
        token, so their arguments always parse. ``parallel_tool_calls=False`` allows one call.
        Call markup never appears in the text. Invalid tools (a bad name or parameters schema), a
        ``tool_choice`` naming no tool, or ``tool_choice`` without tools raise ``ValueError``.
        """
        chunks = self.chat_stream(messages, config, response_format=response_format, tools=tools,
                                  tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls, **kwargs)
        out = ChatStream(chunks, on_token)
        if stream:
            return out
        for _ in out:
            pass
        assert out.reply is not None
        return out.reply

    # -- embeddings ------------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], pooling: str | None = None, normalize: bool = True,
              truncate: bool = False) -> np.ndarray | list[np.ndarray]:
        """Embedding of a string (1-D array) or of each string in a list (2-D array, batched).

        ``pooling``: "mean", "cls", "last", "rank", or "none" (a (n_tokens, n_embd) array per text);
        None (the default) is the model's own pooling, or "mean" for a generative model.
        """
        return self.embedder(pooling, normalize).embed(texts, add_bos=True, truncate=truncate)

    def embedder(self, pooling: str | None = None, normalize: bool = True) -> Embedder:
        """The :class:`Embedder` (its own context) this LLM uses for ``pooling``, made on first use."""
        key = (pooling or model_pooling(self.model), bool(normalize))
        emb = self._embedders.get(key)
        if emb is None:
            emb = self._embedders[key] = Embedder(self.model, key[0], normalize, n_threads=self.config.n_threads)
        return emb

    # -- lifecycle -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stops the running generation (from any thread); it ends with finish_reason "cancelled"."""
        self._cancel.cancel()

    def close(self) -> None:
        """Frees the context(s) and the model. Idempotent."""
        self._guard.close_active()
        for e in self._embedders.values():
            e.close()
        self._embedders.clear()
        if self._spec is not None:
            self._spec.ctx_draft.close()
            self._spec.close()
            self._spec = None
        if self._draft_model is not None and self._owns_draft:
            self._draft_model.close()
        self._draft_model = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        if self.mtmd is not None:
            self.mtmd.close()
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
         config: GenerationConfig | None = None, stream: bool = False, **kwargs: Any) -> ChatReply | ChatStream:
    """Loads the model, answers the conversation with its chat template, frees the model.

    Takes :meth:`LLM.chat`'s options (``tools``, ``tool_choice``, ``parallel_tool_calls``,
    ``response_format``, ``template_kwargs``) and any :class:`GenerationConfig` field; returns its
    :class:`ChatReply` (or, with ``stream=True``, its :class:`ChatStream`, which frees the model
    when it ends or is closed).
    """
    opts = {k: kwargs.pop(k) for k in _CHAT_OPTIONS if k in kwargs}
    llm = LLM(model_path, (config or GenerationConfig()).replace(**kwargs))
    try:
        chunks = llm.chat_stream(messages, **opts)
    except BaseException:
        llm.close()
        raise
    if not stream:
        try:
            out = ChatStream(chunks)
            for _ in out:
                pass
            assert out.reply is not None
            return out.reply
        finally:
            llm.close()

    def owned() -> Iterator[GenerationChunk]:
        try:
            yield from chunks
        finally:
            llm.close()
    return ChatStream(owned())


_CHAT_OPTIONS = ("response_format", "tools", "tool_choice", "parallel_tool_calls", "template_kwargs")
