"""The continuous-batching engine: one context, N slots, one llama_decode per step for all of them.

Requests are submitted from any thread and wait in a bounded queue. A background thread runs the
step loop:

1. free slots take queued requests; a new request first copies the KV cells of the longest prompt
   prefix it shares with a running sequence (``seq_cp`` shares the cells in the unified cache), so
   a common system prompt is evaluated once;
2. one ``llama_batch`` gets each generating sequence's pending token, followed by the tokens its
   drafter proposes (speculative decoding by prompt lookup: ``lookup=N`` or a request's
   ``prompt_lookup_num_tokens``; the draft length shrinks as more sequences share the batch, since
   drafts cost compute in proportion), and then chunks of new prompts, so a long prompt never
   stalls the others for more than one chunk;
3. one decode; each sequence with an output samples with its own sampler chain, keeping each draft
   token while the sampler picks it (the output is the same as without drafts), and streams the
   text to its request;
4. a finished or cancelled sequence frees its slot and its KV cells at once.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ._config import GenerationConfig, GenerationStats
from ._errors import CyllamaError
from ._generation import Generation, GenerationChunk, common_prefix, fit_prompt, prefill_media_steps
from ._grammar_gate import GrammarSpec
from ._speculative import (ChainDrafter, DraftModel, Drafter, NgramLookup, PromptLookup, Speculative,
                           SpeculativeParams, check_compatible)
from .llama.batch import LlamaBatch
from .llama.context import LlamaContext, LlamaContextParams
from .llama.model import LlamaModel

if TYPE_CHECKING:
    from .llama.mtmd.context import MtmdChunks, MtmdContext

__all__ = ["Engine", "EngineRequest", "QueueFullError", "QueueTimeoutError", "EngineStoppedError"]

_MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a seq_cp


class QueueFullError(CyllamaError):
    """The engine's request queue is full; try again later."""


class QueueTimeoutError(CyllamaError):
    """A request waited longer than the engine's ``queue_timeout`` for a slot; try again later."""


class EngineStoppedError(CyllamaError):
    """The engine is closed, or its thread stopped: it takes no more requests."""


_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_exit_hook = False
_EXIT_JOIN_S = 30.0  # at interpreter exit, how long a running step may take to end


def _close_at_exit() -> None:
    """Closes running engines before the interpreter's finalizers free their contexts under a
    decode still running in the engine thread."""
    for e in list(_live_engines):
        e.close(timeout=_EXIT_JOIN_S)


class EngineRequest:
    """A submitted generation. Iterate it for :class:`GenerationChunk` objects (blocking), or
    call :meth:`result` for the whole text. ``cancel()`` frees its slot at the next step.

    A request with ``on_chunk`` gets its chunks there instead; if the callback raises, the request
    (only it) ends with that exception as its ``error``, which :meth:`wait` re-raises."""

    _ids = itertools.count(1)

    def __init__(self, tokens: list[int], config: GenerationConfig, grammar: GrammarSpec | None,
                 on_chunk: Callable[[GenerationChunk], None] | None, media: "MtmdChunks | None" = None,
                 on_start: Callable[[], None] | None = None):
        self.id = next(self._ids)
        self.tokens = tokens
        self.media = media  # the prompt as text and media chunks (then ``tokens`` is empty)
        self.config = config
        self.grammar = grammar
        self._on_chunk = on_chunk
        self._on_start = on_start
        self._callback_error: BaseException | None = None  # what on_chunk/on_start raised (not called again)
        self._queue: queue.SimpleQueue[GenerationChunk | BaseException] | None = None if on_chunk else queue.SimpleQueue()
        self._parts: list[str] = []  # text collected by result() (kept across a timed-out call)
        self._read_all = False  # result() has read the last chunk (a second call returns the same text)
        self.cancelled = False
        self.done = threading.Event()
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.stats: GenerationStats | None = None
        self.t_submit = time.perf_counter()
        self.completion_tokens: list[int] = []

    def cancel(self) -> None:
        self.cancelled = True

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        """Runs a user callback on the engine thread; what it raises is kept, never propagated."""
        if self._callback_error is not None:
            return
        try:
            fn(*args)
        except BaseException as exc:  # noqa: B902 - a callback's failure belongs to its request only
            self._callback_error = exc

    def _started(self) -> None:
        if self._on_start is not None:
            self._call(self._on_start)

    def _emit(self, item: GenerationChunk | BaseException) -> None:
        """Delivers a chunk (or the request's error). Never raises: a failing ``on_chunk`` is
        recorded in ``_callback_error`` and not called again."""
        if self._on_chunk is not None:
            if isinstance(item, BaseException):
                item = GenerationChunk("", None, None, None, "error")
            self._call(self._on_chunk, item)
        else:
            assert self._queue is not None
            self._queue.put(item)

    def __iter__(self) -> Iterator[GenerationChunk]:
        return self._chunks(None)

    def _chunks(self, deadline: float | None) -> Iterator[GenerationChunk]:
        if self._queue is None:
            raise RuntimeError("this request delivers its chunks to on_chunk (use wait())")
        while True:
            if deadline is None:
                item = self._queue.get()
            else:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError("generation did not finish in time") from None
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> str:
        """Waits for the end and returns the whole text; raises the request's error, or
        ``TimeoutError`` after ``timeout`` seconds (calling again continues where it stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_all:
            for c in self._chunks(deadline):
                self._parts.append(c.text)
            self._read_all = True
        if not self.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            raise TimeoutError("generation did not finish in time")
        return "".join(self._parts)

    def wait(self, timeout: float | None = None) -> str:
        """Waits for the end without reading chunks (for an ``on_chunk`` request) and returns the
        finish reason; raises the request's error (what ``on_chunk`` raised, or the generation's
        failure), or ``TimeoutError`` after ``timeout`` seconds."""
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        assert self.finish_reason is not None
        return self.finish_reason


@dataclass(eq=False)
class _Slot:
    seq: int
    req: EngineRequest | None = None
    gen: Generation | None = None
    cache: list[int] | None = None  # tokens whose KV the sequence holds
    prompt_pos: int = 0  # next prompt token to evaluate
    feed: list[int] | None = None  # tokens to decode at the next step (generation phase)
    out_index: int = -1  # batch index of this slot's (first) output in the current step
    chunk_n: int = 0  # prompt tokens this slot put in the current step's batch
    drafter: Drafter | None = None  # speculative decoding: proposes tokens after the pending one
    drafts: list[int] | None = None  # this step's draft tokens, decoded after ``feed`` for verification
    media_pending: bool = False  # a prompt with media, evaluated a chunk per step before the batch
    media_steps: Iterator[None] | None = None  # that evaluation, under way
    spec: Speculative | None = None  # with a draft model: this slot's sequence in the draft context
    pos_delta: int = 0  # position minus cached units (M-RoPE models place images on fewer positions)

    @property
    def busy(self) -> bool:
        return self.req is not None


class Engine:
    """Continuous batching over one context with ``n_slots`` sequences.

    ``n_ctx`` is the context per slot (total = n_ctx * n_slots). ``max_queue`` bounds waiting
    requests (``submit`` raises :class:`QueueFullError` beyond it). Call :meth:`close` (or use it
    as a context manager) to stop the thread and free the context. ``queue_timeout``: seconds a
    request may wait for a slot before it ends with :class:`QueueTimeoutError` (None: no limit).

    A user callback that raises (``on_chunk``, a logits processor) fails only its own request; the
    engine thread goes on. If the thread ever stops, every request ends with
    :class:`EngineStoppedError` and ``submit`` raises it at once.
    """

    def __init__(self, model: LlamaModel, n_slots: int = 8, n_ctx: int | None = None, n_batch: int = 512,
                 prompt_chunk: int = 256, max_queue: int = 256, n_threads: int | None = None,
                 lookup: int = 0, draft_budget: int = 8, mtmd: "MtmdContext | None" = None,
                 draft_model: LlamaModel | None = None, speculative: SpeculativeParams | None = None,
                 queue_timeout: float | None = None):
        if not isinstance(n_slots, int) or not 1 <= n_slots <= 256:
            raise ValueError(f"n_slots must be an int in 1..256, got {n_slots!r}")
        for name, v in (("lookup", lookup), ("draft_budget", draft_budget)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1024:
                raise ValueError(f"{name} must be an int in 0..1024, got {v!r}")
        self.lookup, self.draft_budget = lookup, draft_budget
        self.mtmd = mtmd  # a projector: requests may carry media chunks
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a positive int, got {max_queue!r}")
        if queue_timeout is not None and (isinstance(queue_timeout, bool) or not isinstance(queue_timeout, (int, float))
                                          or not queue_timeout > 0):
            raise ValueError(f"queue_timeout must be a positive number of seconds or None, got {queue_timeout!r}")
        self.queue_timeout = queue_timeout
        self.model = model
        self.vocab = model.get_vocab()
        train = model.n_ctx_train or 4096
        self.n_ctx_slot = min(n_ctx or min(train, 2048), train)
        p = LlamaContextParams(n_ctx=self.n_ctx_slot * n_slots, n_batch=n_batch,
                               n_ubatch=n_batch if mtmd is not None else min(n_batch, 512),
                               n_seq_max=n_slots, kv_unified=True)
        if n_threads:
            p.n_threads = p.n_threads_batch = n_threads
        self.ctx = LlamaContext(model, p)
        self.draft_ctx: LlamaContext | None = None
        self.speculative = speculative or SpeculativeParams()
        if draft_model is not None:  # speculative decoding: one draft sequence per slot, in one context
            why = check_compatible(model, draft_model)
            if why is not None:
                self.ctx.close()
                raise ValueError(f"the draft model cannot draft for this model: {why}")
            dp = LlamaContextParams(n_ctx=self.n_ctx_slot * n_slots, n_batch=n_batch, n_ubatch=min(n_batch, 512),
                                    n_seq_max=n_slots, kv_unified=True)
            if n_threads:
                dp.n_threads = dp.n_threads_batch = n_threads
            try:
                self.draft_ctx = LlamaContext(draft_model, dp)
            except BaseException:
                self.ctx.close()
                raise
        self.n_batch = self.ctx.n_batch
        self.prompt_chunk = max(1, min(prompt_chunk, self.n_batch))
        self.slots = [_Slot(i) for i in range(n_slots)]
        if self.draft_ctx is not None:
            for sl in self.slots:
                sl.spec = Speculative(self.ctx, self.draft_ctx, seq_id=sl.seq)
        self.max_queue = max_queue
        self._waiting: deque[EngineRequest] = deque()
        self._cv = threading.Condition()
        self._batch = LlamaBatch(self.n_batch, 0, n_slots)
        self._closed = False
        self._stopped: EngineStoppedError | None = None  # set (under _cv) if the thread dies
        self._step_lock = threading.Lock()
        self.metrics = {"requests_total": 0, "requests_finished": 0, "requests_cancelled": 0, "requests_failed": 0,
                        "prompt_tokens_total": 0, "cached_prompt_tokens_total": 0, "generated_tokens_total": 0,
                        "decode_steps_total": 0, "draft_tokens_total": 0, "accepted_tokens_total": 0,
                        "requests_timed_out": 0}
        self._thread = threading.Thread(target=self._loop, name="cyllama-engine", daemon=True)
        self._thread.start()
        global _exit_hook
        _live_engines.add(self)
        if not _exit_hook:  # registered after the contexts' finalizers: atexit runs it before them
            atexit.register(_close_at_exit)
            _exit_hook = True

    # -- public ----------------------------------------------------------------------------
    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    def submit(self, tokens: Sequence[int], config: GenerationConfig, grammar: GrammarSpec | None = None,
               on_chunk: Callable[[GenerationChunk], None] | None = None,
               media: "MtmdChunks | None" = None, on_start: Callable[[], None] | None = None) -> EngineRequest:
        """Queues a generation for ``tokens``. ``on_chunk`` (called from the engine thread) replaces
        the request's own queue; keep it cheap (e.g. ``loop.call_soon_threadsafe``). ``on_start``
        (engine thread) is called when the request leaves the queue for a slot. ``media``: the
        prompt as text and media chunks instead of ``tokens`` (the engine needs ``mtmd=``); the
        engine closes it when the request ends. Raises :class:`QueueFullError` past ``max_queue``
        and :class:`EngineStoppedError` once the engine is closed or its thread stopped."""
        self._check_running()
        if media is not None:
            if self.mtmd is None:
                media.close()
                raise ValueError("this engine has no multimodal projector: media cannot be evaluated")
            if media.n_tokens >= self.n_ctx_slot:
                n = media.n_tokens
                media.close()
                raise ValueError(f"the prompt with its media takes {n} tokens but a slot's context holds "
                                 f"{self.n_ctx_slot}")
            req = EngineRequest([], config, grammar, on_chunk, media, on_start)
            try:
                return self._enqueue(req)
            except BaseException:
                media.close()
                raise
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("the prompt is empty")
        self.vocab.check_tokens(toks)
        try:
            toks = fit_prompt(toks, self.n_ctx_slot, config.max_tokens, config.truncate_prompt, self.vocab.bos)
        except ValueError:
            raise ValueError(f"the prompt has {len(toks)} tokens but a slot's context holds {self.n_ctx_slot}") from None
        return self._enqueue(EngineRequest(toks, config, grammar, on_chunk, None, on_start))

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise self._stopped
        if self._closed:
            raise EngineStoppedError("the engine is closed")

    def _enqueue(self, req: EngineRequest) -> EngineRequest:
        with self._cv:  # the loop drains the queue under this lock when it ends: no request is left behind
            self._check_running()
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the request queue is full ({self.max_queue} waiting)")
            self._waiting.append(req)
            self.metrics["requests_total"] += 1
            self._cv.notify()
        return req

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Pauses stepping (running sequences wait) while the block runs: requests submitted inside
        it start together, which makes the composition of the next batches reproducible."""
        with self._step_lock:
            yield

    @property
    def running(self) -> bool:
        """Whether the engine takes requests (not closed, its thread alive)."""
        return not self._closed and self._stopped is None and self._thread.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Stops the engine thread (running requests end as "cancelled") and frees the context.
        ``timeout``: how long to wait for a running step; past it the contexts are left to the
        process's exit rather than freed under the thread (a callback that never returns)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify()
        _live_engines.discard(self)
        if threading.current_thread() is self._thread:
            return  # closed from a callback: the loop ends after this step and frees nothing itself
        self._thread.join(timeout)
        if self._thread.is_alive():
            for h in (self.ctx, self.draft_ctx):
                fin = getattr(h, "_finalizer", None)
                if fin is not None:
                    fin.detach()  # never free a context a thread may still be decoding in
            return
        self._batch.close()
        for sl in self.slots:
            if sl.spec is not None:
                sl.spec.close()
        if self.draft_ctx is not None:
            self.draft_ctx.close()
        self.ctx.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        failure: BaseException | None = None
        try:
            while True:
                with self._cv:
                    while not self._closed and not self._waiting and not any(s.busy for s in self.slots):
                        self._cv.wait()
                    if self._closed:
                        break
                try:
                    with self._step_lock:
                        self._step()
                except Exception as exc:  # an engine bug: fail what this step touched, keep serving
                    self._fail_step(exc)
        except BaseException as exc:  # the thread cannot go on (SystemExit...): nothing may wait for it
            failure = exc
        finally:
            self._drain(failure)

    def _fail_step(self, exc: Exception) -> None:
        """A step raised: its running sequences fail with the error; with none running, the oldest
        waiting request does (so a persistent failure cannot spin with requests left waiting)."""
        busy = [s for s in self.slots if s.busy]
        for s in busy:
            self._finish(s, "error", exc)
        if not busy:
            with self._cv:
                req = self._waiting.popleft() if self._waiting else None
            if req is not None:
                self._end_waiting(req, "error", exc)

    def _drain(self, failure: BaseException | None) -> None:
        """Ends every request when the loop stops: cancelled on close, failed if the thread died."""
        err = None
        if failure is not None:
            err = EngineStoppedError(f"the engine thread stopped: {type(failure).__name__}: {failure}")
            err.__cause__ = failure
        reason = "cancelled" if err is None else "error"
        for s in self.slots:
            if s.busy:
                self._finish(s, reason, err)
        with self._cv:
            if err is not None:
                self._stopped = err
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            self._end_waiting(req, reason, err)

    def _end_waiting(self, req: EngineRequest, reason: str, error: BaseException | None = None) -> None:
        """Ends a request that never reached a slot."""
        req.finish_reason, req.error = reason, error
        key = {"cancelled": "requests_cancelled", "error": "requests_failed"}.get(reason, "requests_finished")
        self.metrics[key] += 1
        if isinstance(error, QueueTimeoutError):
            self.metrics["requests_timed_out"] += 1
        if req.media is not None:
            with contextlib.suppress(Exception):
                req.media.close()
        req._emit(error if error is not None else GenerationChunk("", None, None, None, reason))
        if error is None and req._callback_error is not None:
            req.error = req._callback_error
        req.done.set()

    def _admit(self) -> None:
        ended: list[tuple[EngineRequest, str, BaseException | None]] = []
        with self._cv:
            if self.queue_timeout is not None and self._waiting:
                limit = time.perf_counter() - self.queue_timeout
                keep: deque[EngineRequest] = deque()
                for req in self._waiting:
                    if req.t_submit < limit and not req.cancelled:
                        ended.append((req, "error", QueueTimeoutError(
                            f"no slot was free for {self.queue_timeout:g} s (the engine is busy)")))
                    else:
                        keep.append(req)
                self._waiting = keep
            free = [s for s in self.slots if not s.busy]
            deferred: list[EngineRequest] = []
            while free and self._waiting:
                req = self._waiting.popleft()
                if req.cancelled:
                    ended.append((req, "cancelled", None))
                    continue
                src, lcp = self._best_prefix(req.tokens)
                if src is not None and src.prompt_pos < lcp:
                    deferred.append(req)  # its prefix is being evaluated by src: wait a step, then share it
                    continue
                slot = free.pop(0)
                try:
                    self._start(slot, req, src, lcp)
                    req._started()
                    if req._callback_error is not None:
                        raise req._callback_error
                except BaseException as exc:
                    if slot.req is None:  # failed before the slot took it
                        slot.req = req
                    self._finish(slot, "error", exc)
            for req in reversed(deferred):
                self._waiting.appendleft(req)
        for req, reason, err in ended:  # outside the lock: callbacks run here
            self._end_waiting(req, reason, err)

    def _best_prefix(self, tokens: list[int]) -> tuple[_Slot | None, int]:
        """The running sequence sharing the longest prompt prefix with ``tokens`` (and its length)."""
        best, best_n = None, 0
        for s in self.slots:
            if s.req is None:
                continue
            n = common_prefix(s.req.tokens, tokens, len(tokens) - 1)
            if n > best_n:
                best, best_n = s, n
        return (best, best_n) if best_n >= _MIN_SHARED_PREFIX else (None, 0)

    def _start(self, slot: _Slot, req: EngineRequest, src: _Slot | None, shared: int) -> None:
        ctx = self.ctx
        ctx.kv_cache_seq_rm(slot.seq, -1, -1)
        slot.cache = []
        if src is not None and shared > 0:
            ctx.kv_cache_seq_cp(src.seq, slot.seq, 0, shared)
            slot.cache = list(req.tokens[:shared])
        slot.req = req
        slot.prompt_pos = shared
        slot.feed = None
        history = req.tokens if req.media is None else req.media.text_tokens()
        slot.gen = Generation.from_config(self.vocab, req.config, history, self.n_ctx_slot, req.grammar)
        slot.gen.cached_tokens = shared
        slot.drafter = self._drafter_for(req.config, slot) if req.media is None else None
        slot.drafts = None
        slot.pos_delta = 0
        slot.media_pending = req.media is not None
        slot.media_steps = None
        req.completion_tokens = slot.gen.completion_tokens
        self.metrics["prompt_tokens_total"] += len(req.tokens) if req.media is None else req.media.n_tokens
        self.metrics["cached_prompt_tokens_total"] += shared

    def _drafter_for(self, cfg: GenerationConfig, slot: _Slot) -> Drafter | None:
        n = cfg.prompt_lookup_num_tokens or self.lookup
        parts: list[Drafter] = []
        if cfg.ngram_cache is not None:
            parts.append(NgramLookup(n or 8, cfg.ngram_cache))
        elif n:
            parts.append(PromptLookup(n, cfg.prompt_lookup_max_ngram))
        if slot.spec is not None:  # a cheap lookup first, then the draft model (as llama.cpp)
            slot.spec.reset()
            parts.append(DraftModel(slot.spec, self.speculative))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else ChainDrafter(*parts)

    def _draft(self, s: _Slot, cap: int) -> list[int]:
        """Draft tokens to verify after ``s.feed[0]``: at most ``cap``, within the slot's context
        and the request's remaining tokens."""
        gen = s.gen
        room = min(cap, self.n_ctx_slot - len(s.cache) - 2, gen.max_tokens - gen.generated - 1)
        if room > 0:
            room = s.drafter.budget(room)
        if room <= 0:
            return []
        cache = s.cache  # the drafters index it lazily, so no begin() is needed
        cache.append(s.feed[0])  # the drafter reads the history ending with the pending token
        try:
            return s.drafter.draft(cache, room)[:room]
        finally:
            cache.pop()

    def _prefill_media(self, s: _Slot) -> None:
        """Evaluates one more chunk of a slot's prompt of text and media on its own (so other
        sequences keep decoding between images); after the last, samples its first token from the
        last prompt token's logits."""
        gen = s.gen
        if s.media_steps is None:
            gen.prompt_tokens = s.req.media.n_tokens
            s.media_steps = prefill_media_steps(self.ctx, gen, self.mtmd, s.req.media, s.cache, s.seq)
        try:
            next(s.media_steps)
            return
        except StopIteration as done:
            pos = done.value
        s.media_pending, s.media_steps = False, None
        s.pos_delta = pos - len(s.cache)
        gen.prompt_evaluated()
        s.out_index = -1
        self._sample(s)

    def _step(self) -> None:
        self._admit()
        for s in self.slots:
            if s.busy and s.req.cancelled:
                self._finish(s, "cancelled")
        for s in self.slots:
            if s.busy and s.media_pending:
                try:
                    self._prefill_media(s)
                except BaseException as exc:
                    self._finish(s, "error", exc)
        batch = self._batch
        batch.clear()
        budget = self.n_batch
        active: list[_Slot] = []
        generating = [s for s in self.slots if s.busy and s.feed]
        # drafts cost compute in proportion to the batch: with many sequences there is little to spare
        cap = (self.draft_budget - len(generating)) // len(generating) if generating else 0
        if cap < 2:
            cap = 0  # a one-token draft rarely pays for the larger batch
        # generating sequences first: the pending token and any draft tokens, all with logits
        for s in generating:
            s.drafts = self._draft(s, min(cap, budget - len(s.feed) - 1)) if s.drafter is not None and cap > 0 else None
            pos = len(s.cache) + s.pos_delta
            for j, tok in enumerate(s.feed):
                batch.add(tok, pos + j, s.seq, j == len(s.feed) - 1)
            s.out_index = batch.n_tokens - 1
            pos += len(s.feed)
            for j, tok in enumerate(s.drafts or ()):
                batch.add(tok, pos + j, s.seq, True)
            budget -= len(s.feed) + len(s.drafts or ())
            active.append(s)
        # then prompt chunks
        for s in self.slots:
            if budget <= 0:
                break
            if s.busy and s.feed is None and s.req is not None and s.req.media is None:
                toks = s.req.tokens
                n = min(len(toks) - s.prompt_pos, self.prompt_chunk, budget)
                if n <= 0:
                    continue
                last = s.prompt_pos + n == len(toks)
                batch.add_sequence(toks[s.prompt_pos:s.prompt_pos + n], s.prompt_pos, s.seq, logits_last=last)
                s.out_index = batch.n_tokens - 1 if last else -1
                s.chunk_n = n
                budget -= n
                active.append(s)
        if batch.n_tokens == 0:
            return
        try:
            self.ctx.decode(batch)
        except BaseException as exc:
            for s in active:
                self._finish(s, "error", exc)
            return
        self.metrics["decode_steps_total"] += 1
        for s in active:
            if s.feed:
                s.cache.extend(s.feed)
                s.feed = None
            else:
                n_new = s.chunk_n
                s.cache.extend(s.req.tokens[s.prompt_pos:s.prompt_pos + n_new])
                s.prompt_pos += n_new
                if s.out_index >= 0:
                    s.gen.prompt_evaluated()
            if s.out_index >= 0:
                self._sample(s)

    def _sample(self, s: _Slot) -> None:
        req, gen, drafts = s.req, s.gen, s.drafts or ()
        s.drafts = None
        metrics = self.metrics
        try:
            # verify the drafts: keep each while the sequence's own sampler picks it
            for i in range(len(drafts) + 1):
                chunk = gen.step(self.ctx, s.out_index + i, len(s.cache))
                if chunk.token is not None:
                    metrics["generated_tokens_total"] += 1
                if i == len(drafts) or chunk.finish_reason is not None or chunk.token != drafts[i]:
                    break
                if chunk.text or chunk.logprob is not None:
                    self._deliver(req, chunk)
                s.cache.append(chunk.token)
            if drafts:
                gen.draft_tokens += len(drafts)
                gen.accepted_tokens += i
                metrics["draft_tokens_total"] += len(drafts)
                metrics["accepted_tokens_total"] += i
                s.drafter.accepted(len(drafts), i)  # type: ignore[union-attr]
                if i < len(drafts):
                    self.ctx.kv_cache_seq_rm(s.seq, len(s.cache), -1)  # the rejected draft tokens
            if chunk.finish_reason is None and (chunk.text or chunk.logprob is not None):
                self._deliver(req, chunk)
        except BaseException as exc:  # a logits processor's, on_chunk's or the sampler's failure: this request's
            self._finish(s, "error", exc)
            return
        if chunk.finish_reason is not None:
            self._finish(s, chunk.finish_reason, chunk=chunk)
            return
        s.feed = [chunk.token]

    @staticmethod
    def _deliver(req: EngineRequest, chunk: GenerationChunk) -> None:
        """Emits a chunk; raises what the request's ``on_chunk`` raised (failing that request)."""
        req._emit(chunk)
        if req._callback_error is not None:
            raise req._callback_error

    def _finish(self, s: _Slot, reason: str, error: BaseException | None = None,
                chunk: GenerationChunk | None = None) -> None:
        """Ends the slot's request and frees the slot. Never raises: a failure while cleaning up
        becomes the request's error (unless it already had one)."""
        req, gen, drafter, cache = s.req, s.gen, s.drafter, s.cache
        if req is None:
            return
        s.req, s.gen, s.feed, s.cache = None, None, None, None
        s.drafter = s.drafts = None
        s.media_pending, s.media_steps, s.pos_delta = False, None, 0
        try:
            if chunk is None:
                chunk = gen.finish(reason) if gen is not None else GenerationChunk("", None, None, None, reason)
            if gen is not None:
                req.stats = gen.stats()
                gen.close()
            if drafter is not None and cache is not None:
                drafter.end(cache)
        except Exception as exc:
            if error is None:
                reason, error = "error", exc
        finally:
            if req.media is not None:
                with contextlib.suppress(Exception):
                    req.media.close()
            with contextlib.suppress(Exception):
                self.ctx.kv_cache_seq_rm(s.seq, -1, -1)
        req.finish_reason = reason
        req.error = error
        if error is not None:
            if not isinstance(error, Exception):  # SystemExit & co. from a callback: queue readers get an Exception
                wrapped = CyllamaError(f"{type(error).__name__}: {error}")
                wrapped.__cause__ = error
                error = wrapped if req._on_chunk is None else error
            req._emit(error)
        else:
            req._emit(chunk if chunk is not None else GenerationChunk("", None, None, None, reason))
            if req._callback_error is not None:  # on_chunk raised on the last chunk
                req.finish_reason, req.error = "error", req._callback_error
        key = {"cancelled": "requests_cancelled", "error": "requests_failed"}.get(req.finish_reason,
                                                                                  "requests_finished")
        self.metrics[key] += 1
        req.done.set()
