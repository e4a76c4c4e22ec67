"""The drop-in's driver of the decoding core: :class:`Llama`'s token loop.

Sampling, end-of-generation, stop strings, ``max_tokens``, the logits processor's view of the ids,
stopping criteria and the text are the core's :class:`~cyllama._generation.Generation`, as for
every other entry point. What this driver adds is llama-cpp-python's state model: it decodes
through ``Llama._eval``, so ``input_ids[:n_tokens]`` are the tokens whose KV the context holds and
``scores`` gets their logits rows with ``logits_all=True``; a new prompt reuses the prefix it
shares with them; ``send(tokens)`` on the loop (``generate().send``) puts tokens into the sequence
after the one just sampled; and a ``draft_model`` drafts through the core's
:class:`~cyllama._speculative.Drafter` protocol (the adaptive budget included), each draft token
kept only while the target's own sampler picks it, as :func:`~cyllama._generation.run_sequence`
does.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from .._generation import Generation, GenerationChunk, reuse_prefix
from ._common import longest_token_prefix
from .llama_speculative import DraftModelDrafter

if TYPE_CHECKING:
    from ._llama import Llama

__all__ = ["token_loop", "token_ids"]


def _drafter(llama: "Llama") -> Any:
    draft = llama.draft_model
    if draft is None:
        return None
    return DraftModelDrafter(draft, max(1, llama.n_batch - 1), llama._n_vocab)


def token_loop(llama: "Llama", tokens: List[int], sampler: Any, reset: bool,
               on_logits: Optional[Callable[[np.ndarray], None]], gen_kw: Dict[str, Any],
               me: List[Any]) -> Iterator[GenerationChunk]:
    """Yields a :class:`Generation`'s chunks for the prompt ``tokens``; the last one has a
    ``finish_reason``. ``sampler`` is the generation's (closed with it); ``gen_kw`` its other
    arguments (``max_tokens`` and ``n_ctx`` default to the context's room). ``on_logits`` sees a
    copy of the logits of each position before it is sampled (before any logits processor).
    ``send(tokens)`` answers a chunk with tokens to decode after its token. ``me[0]`` is this
    generator (the one the ``Llama`` closes when another generation starts)."""
    gen: Optional[Generation] = None
    drafter = None
    n_drafted = n_kept = 0  # the current draft: proposed, and confirmed so far
    try:
        llama._claim(me[0])
        ctx = llama._require_ctx()
        tokens = list(tokens)
        history = tokens if reset else llama._input_ids.tolist() + tokens  # the ids the processor sees
        if reset and llama.n_tokens > 0:
            prefix = longest_token_prefix(llama._input_ids, tokens)
            if prefix == len(tokens) == llama.n_tokens and not llama._requires_eval:
                reset, tokens = False, []  # the whole prompt is evaluated and its logits are live
            elif tokens:
                cache = llama.input_ids[: llama.n_tokens].tolist()
                n = reuse_prefix(ctx, cache, tokens)  # keeps at least the last prompt token to evaluate
                if n > 0:
                    reset, tokens = False, tokens[n:]
                    llama.n_tokens = n
                    llama._requires_eval = True
                    if llama.verbose:
                        print(f"Llama.generate: {n} prefix-match hit, remaining {len(tokens)} prompt tokens "
                              "to eval", file=sys.stderr)
        if reset:
            llama.reset()
        if not tokens and llama.n_tokens == 0:
            raise ValueError("the prompt is empty")
        gen_kw = dict(gen_kw)
        gen_kw.setdefault("n_ctx", llama._n_ctx)
        gen_kw.setdefault("max_tokens", max(1, llama._n_ctx - len(history)))
        gen = Generation(llama._vocab, sampler, history, gen_kw.pop("max_tokens"), gen_kw.pop("n_ctx"),
                         owns_sampler=True, **gen_kw)
        gen.cached_tokens = llama.n_tokens
        drafter = _drafter(llama)
        all_logits = llama._logits_all or drafter is not None
        sample_idx = llama.n_tokens + len(tokens) - 1  # the position whose logits give the next token
        if tokens:
            llama._eval(tokens, all_logits)
        gen.prompt_evaluated()
        if drafter is not None:
            drafter.begin(llama._input_ids)
        n_ctx, n_batch = llama._n_ctx, llama.n_batch
        while True:
            while True:  # sample at each evaluated position from sample_idx on (more than one: a draft)
                ridx = sample_idx - llama.n_tokens
                if on_logits is not None:
                    on_logits(ctx.get_logits_ith(ridx))
                chunk = gen.step(ctx, ridx, sample_idx + 1)
                sample_idx += 1
                tok = chunk.token
                if tok is None or chunk.finish_reason is not None:
                    yield chunk
                    return
                sent = yield chunk
                tokens = [tok]
                if sent:
                    tokens.extend(int(t) for t in sent)
                    gen.insert(tokens[1:])
                if sample_idx < llama.n_tokens:  # a drafted position
                    if not sent and tok == llama.input_ids[sample_idx]:
                        n_kept += 1  # the draft guessed right: this token is evaluated already
                        continue
                    # a drafted token was wrong (or tokens were sent): drop the rest of the draft
                    llama.n_tokens = sample_idx
                    ctx.kv_cache_seq_rm(-1, sample_idx, -1)
                    llama._requires_eval = True
                sample_idx = llama.n_tokens + len(tokens) - 1  # sample after the last of ``tokens``
                break
            if n_drafted:
                gen.draft_tokens += n_drafted
                gen.accepted_tokens += n_kept
                drafter.accepted(n_drafted, n_kept)
                n_drafted = n_kept = 0
            if drafter is not None:
                end = llama.n_tokens + len(tokens)
                room = min(drafter.n_max, n_ctx - end, n_batch - len(tokens), gen.max_tokens - gen.generated - 1)
                if room > 0:
                    room = drafter.budget(room)
                if room > 0:
                    llama.input_ids[llama.n_tokens:end] = tokens
                    drafts = drafter.draft(llama.input_ids[:end], room)[:room]
                    tokens.extend(drafts)
                    n_drafted = len(drafts)
            llama._eval(tokens, all_logits)
    finally:
        if gen is not None:
            if n_drafted:
                gen.draft_tokens += n_drafted
                gen.accepted_tokens += n_kept
            gen.close()
        else:
            sampler.close()
        if drafter is not None:
            drafter.end(llama._input_ids)
        if llama._active is not None and llama._active() is (me[0] if me else None):
            llama._active = None


def token_ids(loop: Iterator[GenerationChunk]) -> Iterator[int]:
    """``Llama.generate``: the token ids of ``loop``'s chunks; ``send(tokens)`` passes through."""
    try:
        chunk = next(loop)
        while chunk.token is not None:
            sent = yield chunk.token
            if chunk.finish_reason is not None:
                return
            chunk = loop.send(sent)  # type: ignore[attr-defined]
    except StopIteration:  # the loop was closed: another generation started
        return
    finally:
        loop.close()  # type: ignore[attr-defined]
