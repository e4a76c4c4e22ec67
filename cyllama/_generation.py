"""The decoding core, in layers (as in mlx-lm). Every entry point drives these:

* :class:`Generation`: one sequence's generation step. It owns the sampler chain (built from a
  :class:`~cyllama.GenerationConfig` and fed the prompt, as llama-server does, so penalties see
  it), a Python logits processor's view of the token ids, logprobs, end-of-generation, length
  and stop-sequence checks, the :class:`TextStream`, and the timing. A driver decodes a batch and
  calls :meth:`Generation.step` with the batch index of the sequence's logits.
* ``run_sequence``: the single-sequence driver (``LLM``, the in-process client, LangChain):
  reuses the KV prefix the sequence already holds, evaluates the rest of the prompt in n_batch
  chunks, then decodes one token at a time. The continuous-batching ``Engine`` is the
  many-sequence driver of the same :class:`Generation` objects.
* ``TextStream``: token ids in, text out, with incremental UTF-8 decoding (a character split
  across tokens is held back until complete) and stop sequences matched across chunk boundaries.
* ``fit_prompt``: the one truncation policy (keep the start-of-text token and the end).

Per-token work is O(1): one batch reused, one sampler call, one piece lookup, a tail-only stop
check, an amortised append to the logits processor's id buffer. Logits are only read into numpy
when logprobs or a Python logits processor ask for them.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ._lazy_numpy import np

from . import _logging
from ._ffi import ffi
from ._grammar_gate import GatedSampler, GrammarGate, GrammarSpec, preserved_tokens
from .llama._backend import lib
from .llama.batch import LlamaBatch
from .llama.context import LlamaContext
from .llama.model import LlamaModel
from .llama.sampler import LlamaSampler
from .llama.vocab import LlamaVocab

if TYPE_CHECKING:
    from ._config import GenerationConfig, GenerationStats
    from ._speculative import Drafter
    from .llama.mtmd.context import MtmdChunks, MtmdContext

__all__ = ["GenerationChunk", "CancelToken", "Generation", "TextStream", "run_sequence", "fit_prompt",
           "generate_step", "stream_generate", "sample_token", "common_prefix", "StreamStats",
           "step_tokens", "stream_text", "apply_chat_template", "eval_prompt", "reuse_prefix"]


@dataclass(slots=True)
class GenerationChunk:
    """One step of a stream: new text (possibly empty while held back) and the token behind it.

    ``finish_reason`` is set on the last chunk. In a chat with tools (``LLM.chat_stream(tools=...)``)
    ``text`` is only the answer's content (call markup never appears in it), and the last chunk's
    ``tool_calls`` holds the calls the model made, in OpenAI's shape (``[]`` when it made none;
    ``None`` outside chats with tools), and its ``finish_reason`` is ``"tool_calls"`` when they are
    complete.
    """

    text: str
    token: int | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class CancelToken:
    """A flag another thread (or a signal handler) sets to stop a generation between tokens."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


# -- prompt evaluation ---------------------------------------------------------------------------
def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    n, limit = 0, min(len(a), len(b), limit)
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def reuse_prefix(ctx: LlamaContext, cache: list[int], prompt: Sequence[int], seq_id: int = 0) -> int:
    """Trims sequence ``seq_id`` to the longest prefix it shares with ``prompt``; returns its length.

    ``cache`` lists the tokens whose KV the sequence holds and is updated in place. At least the
    last prompt token is always left to evaluate, since its logits are needed.
    """
    n = common_prefix(cache, prompt, len(prompt) - 1)
    if n < len(cache):
        if not ctx.kv_cache_seq_rm(seq_id, n, -1):  # e.g. recurrent memory cannot cut in the middle
            ctx.kv_cache_seq_rm(seq_id, -1, -1)
            n = 0
        del cache[n:]
    return n


def eval_prompt(ctx: LlamaContext, tokens: Sequence[int], pos0: int = 0, seq_id: int = 0,
                cache: list[int] | None = None, cancel: CancelToken | None = None) -> int:
    """Decodes ``tokens`` from position ``pos0``, keeping the last token's logits.

    Returns the next position. With ``cancel`` the prompt goes in ``n_ubatch`` chunks (the size
    llama.cpp splits a batch into anyway) and cancellation is checked between them, rather than
    through an abort callback, which ggml would call, taking the GIL, after every graph node. A
    cancelled evaluation returns -1 and the sequence holds only the chunks that completed (listed
    in ``cache``).
    """
    n = len(tokens)
    if n == 0:
        raise ValueError("the prompt is empty")
    if pos0 + n > ctx.n_ctx:
        raise ValueError(f"the prompt ({n} tokens{f' after {pos0} cached' if pos0 else ''}) does not fit "
                         f"the context of {ctx.n_ctx} tokens")
    step = ctx.n_batch if cancel is None else min(ctx.n_batch, ctx.n_ubatch)
    batch = LlamaBatch(min(step, n), 0, seq_id + 1)  # its check takes n_seq_max as the id bound
    try:
        for start in range(0, n, step):
            if cancel is not None and cancel.cancelled:
                return -1
            chunk = tokens[start:start + step]
            batch.clear()
            batch.add_sequence(chunk, pos0 + start, seq_id, logits_last=start + step >= n)
            try:
                ctx.decode(batch)
            except BaseException:
                ctx.kv_cache_seq_rm(seq_id, pos0 + start, -1)
                raise
            if cache is not None:
                cache.extend(chunk)
    finally:
        batch.close()
    return pos0 + n


# -- the truncation policy ----------------------------------------------------------------------
def fit_prompt(tokens: list[int], limit: int, max_tokens: int, truncate: bool, bos: int = -1) -> list[int]:
    """``tokens`` if they leave room in a context of ``limit`` tokens; else, with ``truncate``, the
    start-of-text token (when the prompt begins with it) and the last tokens, leaving room for up
    to ``max_tokens`` (at most half the context); without ``truncate`` a ``ValueError``."""
    if len(tokens) < limit:
        return tokens
    if not truncate:
        raise ValueError(f"the prompt has {len(tokens)} tokens but the context holds {limit}: shorten it, "
                         f"use a larger n_ctx, or pass truncate_prompt=True")
    keep = max(1, limit - min(max_tokens, limit // 2))
    if bos >= 0 and tokens and tokens[0] == bos and keep > 1:
        return [bos, *tokens[len(tokens) - keep + 1:]]
    return tokens[len(tokens) - keep:]


# -- one sequence's step -------------------------------------------------------------------------
def _logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, dict[int, float] | None]:
    m = float(logits.max())
    lse = m + float(np.log(np.exp(logits - m, dtype=np.float64).sum()))
    lp = float(logits[token]) - lse
    if not top:
        return lp, None
    n = len(logits)
    idx = np.argpartition(logits, n - top)[n - top:] if top < n else np.arange(n)
    idx = idx[np.argsort(-logits[idx], kind="stable")]
    return lp, {int(i): float(logits[i]) - lse for i in idx}


def sample_token(ctx: LlamaContext, sampler: LlamaSampler | GatedSampler, idx: int, ids: np.ndarray | None,
                 logprobs: int | None, logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None,
                 ) -> tuple[int, tuple[float, dict[int, float] | None] | None]:
    """Samples at batch index ``idx`` after running a Python logits processor on the logits (it sees
    the token ids ``ids``), and with ``logprobs`` (top-n count) also returns the token's log-probability
    (of the distribution the sampler chain starts from)."""
    if logprobs is None and logits_processor is None:
        return sampler.sample(ctx, idx), None
    with ctx._busy:  # the view below is llama.cpp's buffer: the sampler must see the processor's edits
        logits = ctx.get_logits_ith(idx, copy=False)
        if logits_processor is not None:
            out = logits_processor(ids, logits)
            if out is not None and out is not logits:
                logits[:] = out
        tok = sampler.sample(ctx, idx)
        return tok, (_logprobs(logits, tok, logprobs) if logprobs is not None else None)


class _IdBuffer:
    """The token ids a logits processor sees, grown by doubling (O(1) amortised per token)."""

    __slots__ = ("buf", "n")

    def __init__(self, tokens: Sequence[int]):
        self.buf = np.empty(max(64, 2 * len(tokens)), dtype=np.intc)
        self.buf[:len(tokens)] = tokens
        self.n = len(tokens)

    def append(self, tok: int) -> None:
        if self.n == len(self.buf):
            self.buf = np.concatenate([self.buf, np.empty_like(self.buf)])
        self.buf[self.n] = tok
        self.n += 1

    def view(self) -> np.ndarray:
        return self.buf[:self.n]


class Generation:
    """One sequence's generation: sample, check, detokenize; the driver decodes.

    ``step(ctx, idx, n_past)`` samples from the logits at batch index ``idx`` (``n_past``: the
    tokens the sequence holds in the KV cache) and returns a :class:`GenerationChunk`. When the
    chunk has a ``finish_reason`` the generation is over and its token (if any) must not be
    decoded; otherwise the driver decodes ``chunk.token`` at position ``n_past`` and steps again.
    ``finish(reason)`` ends it early ("cancelled", "error"). ``stats()`` gives its
    :class:`~cyllama.GenerationStats`.

    A ``stopping_criteria(ids, logits)`` callable (the token ids so far and the logits just sampled
    from, after the logits processor) ends the generation with "stop" when it returns true; the
    token just sampled is then dropped, as in transformers and llama-cpp-python. A driver that puts
    tokens of its own into the sequence between steps tells the generation with :meth:`insert`.
    """

    __slots__ = ("vocab", "sampler", "owns_sampler", "text", "max_tokens", "ignore_eos", "n_top", "processor",
                 "criteria", "_ids", "n_ctx", "prompt_tokens", "cached_tokens", "completion_tokens",
                 "finish_reason", "t_start", "t_prompt_done", "t_first", "t_end", "_vptr", "draft_tokens",
                 "accepted_tokens")

    def __init__(self, vocab: LlamaVocab, sampler: LlamaSampler | GatedSampler, prompt: Sequence[int], max_tokens: int,
                 n_ctx: int,
                 *, stop: Sequence[str] = (), ignore_eos: bool = False, logprobs: int | None = None,
                 logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                 stopping_criteria: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                 owns_sampler: bool = False, preserve: Sequence[int] = ()):
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        self.vocab, self.sampler, self.owns_sampler = vocab, sampler, owns_sampler
        self._vptr = vocab.ptr
        self.text = TextStream(vocab, stop, preserve=preserve)
        self.max_tokens, self.n_ctx = max_tokens, n_ctx
        self.ignore_eos, self.n_top, self.processor = ignore_eos, logprobs, logits_processor
        self.criteria = stopping_criteria
        self._ids = _IdBuffer(prompt) if logits_processor is not None or stopping_criteria is not None else None
        self.prompt_tokens, self.cached_tokens = len(prompt), 0
        self.completion_tokens: list[int] = []
        self.finish_reason: str | None = None
        self.draft_tokens = self.accepted_tokens = 0  # speculative decoding: proposed, and confirmed
        self.t_start = time.perf_counter()
        self.t_prompt_done = self.t_first = self.t_end = 0.0

    @classmethod
    def from_config(cls, vocab: LlamaVocab, cfg: "GenerationConfig", prompt: Sequence[int], n_ctx: int,
                    grammar: GrammarSpec | None = None) -> "Generation":
        """A generation with the sampler chain ``cfg`` describes (the prompt fed to its penalties);
        ``grammar`` (GBNF text or a :class:`~cyllama._grammar_gate.Grammar`) is checked after the chain picks."""
        from ._config import build_sampler

        gate = GrammarGate(vocab, grammar) if grammar else None
        sampler: LlamaSampler | GatedSampler | None = None
        try:
            sampler = build_sampler(cfg, vocab, None, history=prompt, n_ctx=n_ctx)
            if gate is not None:
                sampler, gate = GatedSampler(sampler, gate), None
            return cls(vocab, sampler, prompt, cfg.max_tokens, n_ctx, stop=cfg.stop_sequences,
                       ignore_eos=cfg.ignore_eos, logprobs=cfg.top_logprobs if cfg.logprobs else None,
                       logits_processor=cfg.logits_processor, owns_sampler=True,
                       preserve=preserved_tokens(grammar))
        except BaseException:
            if sampler is not None:
                sampler.close()
            if gate is not None:
                gate.close()
            raise

    @property
    def generated(self) -> int:
        return len(self.completion_tokens)

    def prompt_evaluated(self) -> None:
        self.t_prompt_done = time.perf_counter()

    def insert(self, tokens: Sequence[int]) -> None:
        """Tokens the driver put into the sequence after the last sampled one (not output, not
        counted): the logits processor and the stopping criteria see them from now on."""
        if self._ids is not None:
            for t in tokens:
                self._ids.append(int(t))

    def step(self, ctx: LlamaContext, idx: int, n_past: int) -> GenerationChunk:
        ids = self._ids.view() if self._ids is not None else None
        tok, info = sample_token(ctx, self.sampler, idx, ids, self.n_top, self.processor)
        if self.criteria is not None and self.criteria(ids, ctx.get_logits_ith(idx)):
            return self.finish("stop")
        if not self.ignore_eos and lib.llama_vocab_is_eog(self._vptr, tok):
            return self.finish("stop")
        if not self.completion_tokens:
            self.t_first = time.perf_counter()
        self.completion_tokens.append(tok)
        if self._ids is not None:
            self._ids.append(tok)
        text, stopped = self.text.push(tok)
        lp, top = info if info is not None else (None, None)
        if stopped:
            self._end("stop")
            return GenerationChunk(text, tok, lp, top, "stop")
        if len(self.completion_tokens) >= self.max_tokens or n_past >= self.n_ctx:
            self._end("length")
            return GenerationChunk(text + self.text.flush(), tok, lp, top, "length")
        return GenerationChunk(text, tok, lp, top)

    def finish(self, reason: str) -> GenerationChunk:
        """Ends the generation with ``reason``; the returned chunk holds any held-back text."""
        tail = self.text.flush() if reason in ("stop", "length") else ""
        self._end(reason)
        return GenerationChunk(tail, None, None, None, reason)

    def _end(self, reason: str) -> None:
        self.finish_reason = reason
        self.t_end = time.perf_counter()

    def close(self) -> None:
        if self.owns_sampler:
            self.sampler.close()

    def stats(self) -> "GenerationStats":
        from ._config import GenerationStats

        now = self.t_end or time.perf_counter()
        done = self.t_prompt_done or now
        prompt_time, gen_time = done - self.t_start, now - done
        n_gen, n_eval = len(self.completion_tokens), self.prompt_tokens - self.cached_tokens
        return GenerationStats(
            prompt_tokens=self.prompt_tokens, generated_tokens=n_gen, total_time=now - self.t_start,
            tokens_per_second=n_gen / gen_time if gen_time > 0 else 0.0, prompt_time=prompt_time,
            generation_time=gen_time, time_to_first_token=(self.t_first - self.t_start) if self.t_first else 0.0,
            prompt_tokens_per_second=n_eval / prompt_time if prompt_time > 0 else 0.0,
            cached_tokens=self.cached_tokens, finish_reason=self.finish_reason or "cancelled",
            draft_tokens=self.draft_tokens, accepted_tokens=self.accepted_tokens)


# -- the single-sequence driver --------------------------------------------------------------------
def media_units(chunks: "MtmdChunks") -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """A prompt's chunks as one list of cache units: text tokens as themselves, each media
    embedding as a negative number derived from the media's id (so the same image in the same
    place matches in the cache), and each chunk's ``(start, end, index, type)`` in that list."""
    units: list[int] = []
    bounds: list[tuple[int, int, int, int]] = []
    for i, (kind, value) in enumerate(chunks):
        start = len(units)
        if kind == 0:
            units.extend(value)
        else:
            key = -1 - (int(hashlib.sha256(str(value).encode()).hexdigest()[:7], 16))
            units.extend([key] * chunks.n_tokens_of(i))
        bounds.append((start, len(units), i, kind))
    return units, bounds


def prefill_media(ctx: LlamaContext, gen: Generation, mctx: "MtmdContext", chunks: "MtmdChunks", cache: list[int],
                  seq_id: int = 0, cancel: CancelToken | None = None) -> int:
    """Evaluates a prompt of text and media chunks on ``seq_id``, reusing the cached prefix (media
    included: an image already in the cache at the same place is not encoded again); returns the
    next position, or -1 when cancelled."""
    steps = prefill_media_steps(ctx, gen, mctx, chunks, cache, seq_id, cancel)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def prefill_media_steps(ctx: LlamaContext, gen: Generation, mctx: "MtmdContext", chunks: "MtmdChunks",
                        cache: list[int], seq_id: int = 0, cancel: CancelToken | None = None,
                        ) -> Iterator[None]:
    """:func:`prefill_media` one chunk at a time: yields after each chunk it evaluates (the engine
    lets other sequences decode in between); returns the next position (-1 when cancelled)."""
    units, bounds = media_units(chunks)
    if not bounds or bounds[-1][3] != 0:
        raise ValueError("the prompt must end with text after its last image or audio clip")
    if mctx.uses_mrope:  # positions are not unit indexes there: evaluate everything afresh
        n = 0
        ctx.kv_cache_seq_rm(seq_id, -1, -1)
        del cache[:]
    else:
        n = common_prefix(cache, units, len(units) - 1)
        for u0, u1, _, kind in bounds:  # never keep part of a media chunk
            if kind != 0 and u0 < n < u1:
                n = u0
        if n < len(cache):
            if not ctx.kv_cache_seq_rm(seq_id, n, -1):
                ctx.kv_cache_seq_rm(seq_id, -1, -1)
                n = 0
            del cache[n:]
    gen.cached_tokens = n
    pos = n
    for u0, u1, i, kind in bounds:
        if u1 <= n:
            continue
        if cancel is not None and cancel.cancelled:
            return -1
        if kind == 0:
            pos = eval_prompt(ctx, units[max(u0, n):u1], pos, seq_id, cache, cancel)
            if pos < 0:
                return -1
        else:
            if cancel is not None:  # encoding an image can take seconds: let cancel() abort it
                ctx.set_abort_callback(lambda: cancel.cancelled)
            try:
                with _logging.quiet_errors() if cancel is not None else contextlib.nullcontext():
                    pos = mctx.eval_chunk(ctx, chunks, i, pos, seq_id)
            except ValueError:
                if cancel is not None and cancel.cancelled:
                    ctx.kv_cache_seq_rm(seq_id, len(cache), -1)
                    return -1
                raise
            finally:
                if cancel is not None:
                    ctx.set_abort_callback(None)
            cache.extend(units[u0:u1])
        if u1 < len(units):
            yield
    return pos


def run_sequence(ctx: LlamaContext, gen: Generation, prompt: Sequence[int], *, cache: list[int] | None = None,
                 seq_id: int = 0, cancel: CancelToken | None = None,
                 drafter: "Drafter | None" = None,
                 media: "tuple[MtmdContext, MtmdChunks] | None" = None) -> Iterator[GenerationChunk]:
    """Drives ``gen`` on sequence ``seq_id`` of ``ctx``; yields its chunks, the last with ``finish_reason``.

    ``cache`` (the tokens whose KV the sequence holds) enables prefix reuse and is kept up to date,
    so the next call can reuse this one's prompt and output. Without it the sequence is cleared.
    With a ``drafter`` (speculative decoding) each step decodes the sampled token together with the
    tokens the drafter proposes, and ``gen`` samples at each drafted position in turn: a draft token
    is kept only while it is what the target's own sampler picks, so the output is the one
    decoding without a drafter would give. ``media``: a projector and the prompt tokenized with
    its images (``prompt`` is then ignored), see :func:`prefill_media`.
    """
    if len(prompt) == 0 and media is None:
        raise ValueError("the prompt is empty")
    if cache is None:
        cache = []
        ctx.kv_cache_seq_rm(seq_id, -1, -1)
    if media is not None:
        drafter = None  # drafts are token ids; a prompt with media has none to copy
        pos = prefill_media(ctx, gen, media[0], media[1], cache, seq_id, cancel)
    else:
        n_reused = reuse_prefix(ctx, cache, prompt, seq_id)
        gen.cached_tokens = n_reused
        pos = eval_prompt(ctx, prompt[n_reused:], n_reused, seq_id, cache, cancel)
    gen.prompt_evaluated()
    if pos < 0:
        yield gen.finish("cancelled")
        return
    n_draft = min(drafter.n_max, ctx.n_batch - 1) if drafter is not None else 0
    if drafter is not None:
        drafter.begin(cache)
    batch = LlamaBatch(1 + n_draft, 0, seq_id + 1)
    try:
        if cancel is not None and cancel.cancelled:
            yield gen.finish("cancelled")
            return
        chunk = gen.step(ctx, -1, pos)
        yield chunk
        while chunk.finish_reason is None:
            if cancel is not None and cancel.cancelled:
                yield gen.finish("cancelled")
                return
            tok = chunk.token
            cache.append(tok)  # from here on ``cache`` is the history the drafter reads
            drafts: Sequence[int] = ()
            room = min(n_draft, ctx.n_ctx - pos - 1, gen.max_tokens - gen.generated - 1)
            if room > 0:
                room = drafter.budget(room)  # type: ignore[union-attr]
            if room > 0:
                drafts = drafter.draft(cache, room)[:room]  # type: ignore[union-attr]
            batch.clear()
            batch.add(tok, pos, seq_id, True)
            for i, d in enumerate(drafts):
                batch.add(d, pos + 1 + i, seq_id, True)
            try:
                ctx.decode(batch)
            except BaseException:
                cache.pop()
                raise
            pos += 1
            if not drafts:
                chunk = gen.step(ctx, -1, pos)
                yield chunk
                continue
            for i in range(len(drafts) + 1):
                chunk = gen.step(ctx, i, pos)
                if i == len(drafts) or chunk.finish_reason is not None or chunk.token != drafts[i]:
                    break
                yield chunk  # the draft token at position pos is the target's own pick: keep its KV
                cache.append(chunk.token)
                pos += 1
            accepted = i
            gen.draft_tokens += len(drafts)
            gen.accepted_tokens += accepted
            drafter.accepted(len(drafts), accepted)  # type: ignore[union-attr]
            if accepted < len(drafts):
                ctx.kv_cache_seq_rm(seq_id, pos, -1)  # the rejected draft tokens
            yield chunk
    finally:
        batch.close()
        if drafter is not None:
            drafter.end(cache)


# -- the low-level API (a sampler you built, no config) ----------------------------------------
@dataclass
class StreamStats:
    """Counters of a low-level stream (``stream_text``/``step_tokens``)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prompt_time: float = 0.0
    generation_time: float = 0.0
    time_to_first_token: float = 0.0
    finish_reason: str = ""

    @property
    def total_time(self) -> float:
        return self.prompt_time + self.generation_time

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_time if self.generation_time > 0 else 0.0


def stream_generate(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int, *,
                    stop: Sequence[str] = (), stats: StreamStats | None = None, cache: list[int] | None = None,
                    cancel: CancelToken | None = None, ignore_eos: bool = False, logprobs: int | None = None,
                    logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                    seq_id: int = 0) -> Iterator[GenerationChunk]:
    """Yields :class:`GenerationChunk` objects for ``prompt`` with a sampler you built; the last
    one carries ``finish_reason``."""
    gen = Generation(ctx.model.get_vocab(), sampler, prompt, max_tokens, ctx.n_ctx, stop=stop, ignore_eos=ignore_eos,
                     logprobs=logprobs, logits_processor=logits_processor)
    try:
        yield from run_sequence(ctx, gen, prompt, cache=cache, seq_id=seq_id, cancel=cancel)
    finally:
        if stats is not None:
            st = gen.stats()
            stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens = (
                st.prompt_tokens, st.cached_tokens, st.generated_tokens)
            stats.prompt_time, stats.generation_time = st.prompt_time, st.generation_time
            stats.time_to_first_token, stats.finish_reason = st.time_to_first_token, st.finish_reason


def generate_step(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int, *,
                  stats: StreamStats | None = None, cache: list[int] | None = None, seq_id: int = 0,
                  cancel: CancelToken | None = None, ignore_eos: bool = False, logprobs: int | None = None,
                  logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                  ) -> Iterator[tuple[int, tuple[float, dict[int, float] | None] | None]]:
    """Yields ``(token, logprob_info)`` until end-of-generation, ``max_tokens``, a full context or cancel."""
    for c in stream_generate(ctx, sampler, prompt, max_tokens, stats=stats, cache=cache, seq_id=seq_id,
                             cancel=cancel, ignore_eos=ignore_eos, logprobs=logprobs,
                             logits_processor=logits_processor):
        if c.token is not None:
            yield c.token, (None if c.logprob is None else (c.logprob, c.top_logprobs))


# -- text ---------------------------------------------------------------------------------------
class TextStream:
    """Token ids in, safe-to-show text out: whole UTF-8 characters, stop sequences never emitted.

    ``push`` returns ``(text, stopped)``; once stopped, the text before the stop sequence has been
    returned and the rest is dropped. ``flush`` returns what was held back at the end of a stream.
    """

    __slots__ = ("_decoder", "_to_bytes", "_stops", "_max_stop", "_pending", "stopped", "special", "_preserve")

    def __init__(self, vocab: LlamaVocab, stop: Sequence[str] = (), special: bool = False,
                 preserve: Sequence[int] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._to_bytes = vocab.token_to_bytes
        self._stops = tuple(s for s in stop if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False
        self.special = special
        self._preserve = frozenset(preserve)  # special tokens written out anyway (tool-call markers)

    def push(self, token: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self._decoder.decode(self._to_bytes(token, special=self.special or token in self._preserve))
        if not self._stops:
            return text, False
        return self._scan(text)

    def _scan(self, text: str) -> tuple[str, bool]:
        buf = self._pending + text
        if not buf:
            return "", False
        # only the held-back tail plus the new text can contain a new match
        cut = -1
        for s in self._stops:
            j = buf.find(s)
            if j >= 0 and (cut < 0 or j < cut):
                cut = j
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buf[:cut], True
        # hold back the longest suffix that is a prefix of a stop sequence
        hold = 0
        for k in range(min(len(buf), self._max_stop - 1), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self._stops):
                hold = k
                break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        if self.stopped:
            return ""
        tail = self._decoder.decode(b"", final=True)
        if self._stops:
            text, stopped = self._scan(tail)
            rest, self._pending = self._pending, ""
            return text if stopped else text + rest
        return tail


def step_tokens(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int,
                stats: StreamStats | None = None, pos0: int = 0) -> Iterator[int]:
    """Yields sampled token ids for ``prompt`` evaluated from position ``pos0`` of sequence 0."""
    if pos0:
        cache = list(range(pos0))  # placeholder ids: only the length matters when nothing is shared
        for tok, _ in generate_step(ctx, sampler, [*cache, *prompt], max_tokens, stats=stats, cache=cache):
            yield tok
        return
    for tok, _ in generate_step(ctx, sampler, prompt, max_tokens, stats=stats):
        yield tok


def stream_text(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int,
                stats: StreamStats | None = None) -> Iterator[str]:
    """Yields text chunks; never splits a UTF-8 character across chunks."""
    for chunk in stream_generate(ctx, sampler, prompt, max_tokens, stats=stats):
        if chunk.text:
            yield chunk.text


def apply_chat_template(model: LlamaModel, messages: Sequence[dict], add_generation_prompt: bool = True,
                        template: str | None = None) -> str:
    """Formats chat messages with llama.cpp's built-in template matching (no Jinja execution)."""
    if not messages:
        raise ValueError("messages must not be empty")
    tmpl = template if template is not None else model.chat_template()
    keep = []
    arr = ffi.new("struct llama_chat_message[]", len(messages))
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        role = ffi.new("char[]", str(m["role"]).encode("utf-8"))
        content = ffi.new("char[]", str(m["content"]).encode("utf-8"))
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
        total += len(m["content"]) + len(m["role"])
    t = tmpl.encode("utf-8") if tmpl else ffi.NULL
    cap = 2 * total + 1024
    buf = ffi.new("char[]", cap)
    n = lib.llama_chat_apply_template(t, arr, len(messages), add_generation_prompt, buf, cap)
    if n > cap:
        cap = n + 1
        buf = ffi.new("char[]", cap)
        n = lib.llama_chat_apply_template(t, arr, len(messages), add_generation_prompt, buf, cap)
    if n < 0:
        raise ValueError("the model's chat template is not one llama.cpp recognises; pass template=")
    return ffi.unpack(buf, n).decode("utf-8", "replace")
