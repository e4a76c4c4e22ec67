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

import contextlib
import itertools
import queue
import threading
import time
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

__all__ = ["Engine", "EngineRequest", "QueueFullError"]

_MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a seq_cp


class QueueFullError(CyllamaError):
    """The engine's request queue is full; try again later."""


class EngineRequest:
    """A submitted generation. Iterate it for :class:`GenerationChunk` objects (blocking), or
    call :meth:`result` for the whole text. ``cancel()`` frees its slot at the next step."""

    _ids = itertools.count(1)

    def __init__(self, tokens: list[int], config: GenerationConfig, grammar: GrammarSpec | None,
                 on_chunk: Callable[[GenerationChunk], None] | None, media: "MtmdChunks | None" = None):
        self.id = next(self._ids)
        self.tokens = tokens
        self.media = media  # the prompt as text and media chunks (then ``tokens`` is empty)
        self.config = config
        self.grammar = grammar
        self._on_chunk = on_chunk
        self._queue: queue.SimpleQueue[GenerationChunk | BaseException] | None = None if on_chunk else queue.SimpleQueue()
        self.cancelled = False
        self.done = threading.Event()
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.stats: GenerationStats | None = None
        self.t_submit = time.perf_counter()
        self.completion_tokens: list[int] = []

    def cancel(self) -> None:
        self.cancelled = True

    def _emit(self, item: GenerationChunk | BaseException) -> None:
        if self._on_chunk is not None:
            if isinstance(item, BaseException):
                item = GenerationChunk("", None, None, None, "error")
            self._on_chunk(item)
        else:
            assert self._queue is not None
            self._queue.put(item)

    def __iter__(self) -> Iterator[GenerationChunk]:
        if self._queue is None:
            raise RuntimeError("this request delivers its chunks to on_chunk")
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> str:
        """Waits for the end and returns the whole text."""
        parts = [c.text for c in self]
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        return "".join(parts)


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
    as a context manager) to stop the thread and free the context.
    """

    def __init__(self, model: LlamaModel, n_slots: int = 8, n_ctx: int | None = None, n_batch: int = 512,
                 prompt_chunk: int = 256, max_queue: int = 256, n_threads: int | None = None,
                 lookup: int = 0, draft_budget: int = 8, mtmd: "MtmdContext | None" = None,
                 draft_model: LlamaModel | None = None, speculative: SpeculativeParams | None = None):
        if not isinstance(n_slots, int) or not 1 <= n_slots <= 256:
            raise ValueError(f"n_slots must be an int in 1..256, got {n_slots!r}")
        for name, v in (("lookup", lookup), ("draft_budget", draft_budget)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1024:
                raise ValueError(f"{name} must be an int in 0..1024, got {v!r}")
        self.lookup, self.draft_budget = lookup, draft_budget
        self.mtmd = mtmd  # a projector: requests may carry media chunks
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be a positive int, got {max_queue!r}")
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
        self._step_lock = threading.Lock()
        self.metrics = {"requests_total": 0, "requests_finished": 0, "requests_cancelled": 0, "requests_failed": 0,
                        "prompt_tokens_total": 0, "cached_prompt_tokens_total": 0, "generated_tokens_total": 0,
                        "decode_steps_total": 0, "draft_tokens_total": 0, "accepted_tokens_total": 0}
        self._thread = threading.Thread(target=self._loop, name="cyllama-engine", daemon=True)
        self._thread.start()

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
               media: "MtmdChunks | None" = None) -> EngineRequest:
        """Queues a generation for ``tokens``. ``on_chunk`` (called from the engine thread) replaces
        the request's own queue; keep it cheap (e.g. ``loop.call_soon_threadsafe``). ``media``: the
        prompt as text and media chunks instead of ``tokens`` (the engine needs ``mtmd=``); the
        engine closes it when the request ends."""
        if self._closed:
            raise CyllamaError("the engine is closed")
        if media is not None:
            if self.mtmd is None:
                media.close()
                raise ValueError("this engine has no multimodal projector: media cannot be evaluated")
            if media.n_tokens >= self.n_ctx_slot:
                n = media.n_tokens
                media.close()
                raise ValueError(f"the prompt with its media takes {n} tokens but a slot's context holds "
                                 f"{self.n_ctx_slot}")
            req = EngineRequest([], config, grammar, on_chunk, media)
            return self._enqueue(req)
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("the prompt is empty")
        self.vocab.check_tokens(toks)
        try:
            toks = fit_prompt(toks, self.n_ctx_slot, config.max_tokens, config.truncate_prompt, self.vocab.bos)
        except ValueError:
            raise ValueError(f"the prompt has {len(toks)} tokens but a slot's context holds {self.n_ctx_slot}") from None
        return self._enqueue(EngineRequest(toks, config, grammar, on_chunk))

    def _enqueue(self, req: EngineRequest) -> EngineRequest:
        with self._cv:
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

    def close(self) -> None:
        """Stops the engine thread (running requests end as "cancelled") and frees the context."""
        if self._closed:
            return
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
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
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not any(s.busy for s in self.slots):
                    self._cv.wait()
                if self._closed:
                    break
            try:
                with self._step_lock:
                    self._step()
            except BaseException as exc:  # never let the thread die with requests waiting
                for s in self.slots:
                    if s.busy:
                        self._finish(s, "error", exc)
        for s in self.slots:
            if s.busy:
                self._finish(s, "cancelled")
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            req.finish_reason = "cancelled"
            req._emit(GenerationChunk("", None, None, None, "cancelled"))
            req.done.set()

    def _admit(self) -> None:
        with self._cv:
            free = [s for s in self.slots if not s.busy]
            deferred: list[EngineRequest] = []
            while free and self._waiting:
                req = self._waiting.popleft()
                if req.cancelled:
                    req.finish_reason = "cancelled"
                    req._emit(GenerationChunk("", None, None, None, "cancelled"))
                    req.done.set()
                    continue
                src, lcp = self._best_prefix(req.tokens)
                if src is not None and src.prompt_pos < lcp:
                    deferred.append(req)  # its prefix is being evaluated by src: wait a step, then share it
                    continue
                slot = free.pop(0)
                try:
                    self._start(slot, req, src, lcp)
                except BaseException as exc:
                    self._finish(slot, "error", exc)
            for req in reversed(deferred):
                self._waiting.appendleft(req)

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
                    req._emit(chunk)
                s.cache.append(chunk.token)
            if drafts:
                gen.draft_tokens += len(drafts)
                gen.accepted_tokens += i
                metrics["draft_tokens_total"] += len(drafts)
                metrics["accepted_tokens_total"] += i
                s.drafter.accepted(len(drafts), i)  # type: ignore[union-attr]
                if i < len(drafts):
                    self.ctx.kv_cache_seq_rm(s.seq, len(s.cache), -1)  # the rejected draft tokens
        except BaseException as exc:
            self._finish(s, "error", exc)
            return
        if chunk.finish_reason is not None:
            self._finish(s, chunk.finish_reason, chunk=chunk)
            return
        if chunk.text or chunk.logprob is not None:
            req._emit(chunk)
        s.feed = [chunk.token]

    def _finish(self, s: _Slot, reason: str, error: BaseException | None = None,
                chunk: GenerationChunk | None = None) -> None:
        req, gen = s.req, s.gen
        if req is None:
            return
        if chunk is None:
            chunk = gen.finish(reason) if gen is not None else GenerationChunk("", None, None, None, reason)
        if gen is not None:
            req.stats = gen.stats()
            gen.close()
        if s.drafter is not None and s.cache is not None:
            s.drafter.end(s.cache)
        s.drafter = s.drafts = None
        req.finish_reason = reason
        req.error = error
        key = {"cancelled": "requests_cancelled", "error": "requests_failed"}.get(reason, "requests_finished")
        self.metrics[key] += 1
        s.req, s.gen, s.feed, s.cache = None, None, None, None
        s.media_pending, s.media_steps, s.pos_delta = False, None, 0
        if req.media is not None:
            req.media.close()
        try:
            self.ctx.kv_cache_seq_rm(s.seq, -1, -1)
        except Exception:
            pass
        if error is not None:
            req._emit(error if isinstance(error, Exception) else CyllamaError(str(error)))
        else:
            req._emit(chunk)
        req.done.set()
