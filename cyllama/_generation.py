"""The generation loop, in layers (as in mlx-lm):

* ``generate_step``: evaluates the prompt (reusing the KV cache for the prefix it shares with what
  the sequence already holds), then samples and decodes one token at a time; yields token ids.
* ``TextStream``: turns those ids into text with incremental UTF-8 decoding (a character split
  across tokens is held back until complete) and stop sequences matched across chunk boundaries
  (text that could be the start of a stop sequence is held back, never emitted).
* ``stream_generate``: joins them, yielding small :class:`GenerationChunk` objects, and fills in
  the timing in :class:`StreamStats`.

Per-token work is O(1): one batch reused, one sampler call, one piece lookup, a tail-only stop
check. Logits are only read into numpy when logprobs or a Python logits processor ask for them.
"""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import _logging
from ._ffi import ffi
from .llama._backend import lib
from .llama.batch import LlamaBatch
from .llama.context import LlamaContext
from .llama.model import LlamaModel
from .llama.sampler import LlamaSampler
from .llama.vocab import LlamaVocab

__all__ = ["StreamStats", "GenerationChunk", "CancelToken", "TextStream", "generate_step", "stream_generate",
           "sample_token", "common_prefix",
           "step_tokens", "stream_text", "apply_chat_template", "eval_prompt", "reuse_prefix"]


@dataclass
class StreamStats:
    """Counters filled in while a stream runs."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prompt_time: float = 0.0
    generation_time: float = 0.0
    time_to_first_token: float = 0.0
    finish_reason: str = ""
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def total_time(self) -> float:
        return self.prompt_time + self.generation_time

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_time if self.generation_time > 0 else 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prompt_time if self.prompt_time > 0 else 0.0


@dataclass(slots=True)
class GenerationChunk:
    """One step of a stream: new text (possibly empty while held back) and the token behind it."""

    text: str
    token: int | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: str | None = None


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
    """Decodes ``tokens`` from position ``pos0`` in chunks of n_batch, keeping the last token's logits.

    Returns the next position. With ``cancel`` the evaluation can be aborted between graph nodes;
    it then returns -1 and the sequence holds only the chunks that completed (listed in ``cache``).
    """
    n = len(tokens)
    if n == 0:
        raise ValueError("the prompt is empty")
    if pos0 + n > ctx.n_ctx:
        raise ValueError(f"the prompt ({n} tokens{f' after {pos0} cached' if pos0 else ''}) does not fit "
                         f"the context of {ctx.n_ctx} tokens")
    step = ctx.n_batch
    batch = LlamaBatch(min(step, n), 0, 1)
    if cancel is not None:
        ctx.set_abort_callback(lambda: cancel.cancelled)
    try:
        for start in range(0, n, step):
            chunk = tokens[start:start + step]
            batch.clear()
            batch.add_sequence(chunk, pos0 + start, seq_id, logits_last=start + step >= n)
            try:
                if cancel is not None:
                    with _logging.quiet_errors():  # an abort the user asked for is not an error
                        ctx.decode(batch)
                else:
                    ctx.decode(batch)
            except BaseException:
                ctx.kv_cache_seq_rm(seq_id, pos0 + start, -1)
                if cancel is not None and cancel.cancelled:
                    return -1
                raise
            if cache is not None:
                cache.extend(chunk)
    finally:
        if cancel is not None:
            ctx.set_abort_callback(None)
        batch.close()
    return pos0 + n


# -- the step generator ---------------------------------------------------------------------------
def _logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, dict[int, float] | None]:
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    lp = float(x[token] - lse)
    if not top:
        return lp, None
    idx = np.argpartition(-x, top)[:top] if top < len(x) else np.arange(len(x))
    idx = idx[np.argsort(-x[idx])]
    return lp, {int(i): float(x[i] - lse) for i in idx}


def sample_token(ctx: LlamaContext, sampler: LlamaSampler, idx: int, ids: np.ndarray | None,
                 logprobs: int | None, logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None,
                 ) -> tuple[int, tuple[float, dict[int, float] | None] | None]:
    """Samples at batch index ``idx`` after running a Python logits processor on the logits (it sees
    the token ids ``ids``), and with ``logprobs`` (top-n count) also returns the token's log-probability."""
    logits = ctx.get_logits_ith(idx)
    if logits_processor is not None:
        out = logits_processor(ids, logits)
        if out is not None and out is not logits:
            logits[:] = out
    tok = sampler.sample(ctx, idx)
    return tok, (_logprobs(logits, tok, logprobs) if logprobs is not None else None)


def generate_step(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int, *,
                  stats: StreamStats | None = None, cache: list[int] | None = None, seq_id: int = 0,
                  cancel: CancelToken | None = None, ignore_eos: bool = False, logprobs: int | None = None,
                  logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                  ) -> Iterator[tuple[int, tuple[float, dict[int, float] | None] | None]]:
    """Yields ``(token, logprob_info)`` until end-of-generation, ``max_tokens``, a full context or cancel.

    ``cache`` (tokens whose KV sequence ``seq_id`` holds) enables prefix reuse and is kept up to
    date, so the next call can reuse this one's prompt and output. ``logprobs`` (None = off, or
    the number of top alternatives) makes each step also return the token's log-probability.
    ``stats.finish_reason`` ends as "stop", "length" or "cancelled".
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if len(prompt) == 0:
        raise ValueError("the prompt is empty")
    stats = stats if stats is not None else StreamStats()
    own_cache = cache is None
    cache = [] if cache is None else cache
    vptr = ctx.model.get_vocab().ptr
    t0 = time.perf_counter()
    n_reused = reuse_prefix(ctx, cache, prompt, seq_id) if not own_cache else 0
    if own_cache:
        ctx.kv_cache_seq_rm(seq_id, -1, -1)
    stats.prompt_tokens, stats.cached_tokens = len(prompt), n_reused
    pos = eval_prompt(ctx, prompt[n_reused:], n_reused, seq_id, cache, cancel)
    stats.prompt_time = time.perf_counter() - t0
    if pos < 0:
        stats.finish_reason = "cancelled"
        return
    batch = LlamaBatch(1, 0, 1)
    want_logits = logprobs is not None or logits_processor is not None
    ids = np.asarray(cache, dtype=np.intc) if logits_processor is not None else None
    n_ctx = ctx.n_ctx
    t_gen = time.perf_counter()
    stats.finish_reason = "length"
    try:
        for i in range(max_tokens):
            if cancel is not None and cancel.cancelled:
                stats.finish_reason = "cancelled"
                return
            if want_logits:
                tok, info = sample_token(ctx, sampler, -1, ids, logprobs, logits_processor)
            else:
                tok, info = sampler.sample(ctx, -1), None
            if not ignore_eos and lib.llama_vocab_is_eog(vptr, tok):
                stats.finish_reason = "stop"
                return
            if i == 0:
                stats.time_to_first_token = time.perf_counter() - t0
            stats.generated_tokens += 1
            yield tok, info
            if pos >= n_ctx or i == max_tokens - 1:
                return  # "length": the token is returned but not decoded (nothing would read its logits)
            batch.clear()
            batch.add(tok, pos, seq_id, True)
            ctx.decode(batch)
            cache.append(tok)
            pos += 1
            if ids is not None:
                ids = np.append(ids, np.intc(tok))
    finally:
        stats.generation_time = time.perf_counter() - t_gen
        batch.close()


# -- text ---------------------------------------------------------------------------------------
class TextStream:
    """Token ids in, safe-to-show text out: whole UTF-8 characters, stop sequences never emitted.

    ``push`` returns ``(text, stopped)``; once stopped, the text before the stop sequence has been
    returned and the rest is dropped. ``flush`` returns what was held back at the end of a stream.
    """

    __slots__ = ("_decoder", "_to_bytes", "_stops", "_max_stop", "_pending", "stopped", "special")

    def __init__(self, vocab: LlamaVocab, stop: Sequence[str] = (), special: bool = False):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._to_bytes = vocab.token_to_bytes
        self._stops = tuple(s for s in stop if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False
        self.special = special

    def push(self, token: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self._decoder.decode(self._to_bytes(token, special=self.special))
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


def stream_generate(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int, *,
                    stop: Sequence[str] = (), stats: StreamStats | None = None, cache: list[int] | None = None,
                    cancel: CancelToken | None = None, ignore_eos: bool = False, logprobs: int | None = None,
                    logits_processor: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                    seq_id: int = 0) -> Iterator[GenerationChunk]:
    """Yields :class:`GenerationChunk` objects; the last one carries ``finish_reason``."""
    stats = stats if stats is not None else StreamStats()
    text_stream = TextStream(ctx.model.get_vocab(), stop)
    steps = generate_step(ctx, sampler, prompt, max_tokens, stats=stats, cache=cache, cancel=cancel,
                          ignore_eos=ignore_eos, logprobs=logprobs, logits_processor=logits_processor,
                          seq_id=seq_id)
    for tok, info in steps:
        text, stopped = text_stream.push(tok)
        lp, top = info if info is not None else (None, None)
        if stopped:
            steps.close()
            stats.finish_reason = "stop"
            yield GenerationChunk(text, tok, lp, top, "stop")
            return
        yield GenerationChunk(text, tok, lp, top)
    yield GenerationChunk(text_stream.flush(), None, None, None, stats.finish_reason or "stop")


# -- the simple two-layer API kept for the CLI and low-level users -------------------------------
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
