"""Speculative decoding on llama.cpp's C API: drafters that propose tokens, and a draft model.

llama.cpp's speculative code lives in its C++ ``common`` library, which cffi cannot call; this is
the same method built on the C API. A :class:`Drafter` proposes the tokens likely to follow the
history; the decoding core (:func:`cyllama._generation.run_sequence`, the engine) decodes them in
one batch with the target model and keeps each draft token only while the target's own sampler
picks it (llama.cpp's ``common_sampler_sample_and_accept_n``), so the output is exactly what
decoding without a drafter gives, and the target's sampler decides every token.

* :class:`PromptLookup`: copies what followed the latest earlier occurrence of the last n-gram
  (transformers' ``prompt_lookup_num_tokens``): free, and fast on input-grounded tasks.
* :class:`NgramLookup`: llama.cpp's lookup decoding (``llama-lookup``): context n-gram counts,
  backed by a persistent :class:`~cyllama.NgramCache` that learns from each generation.
* :class:`DraftModel`: a small model with the target's vocabulary drafts greedily
  (:class:`Speculative`, llama.cpp's ``draft-simple``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from ._lazy_numpy import np

from ._generation import eval_prompt
from ._ngram import NGRAM_MAX, NgramCache, draft_tokens
from .llama.batch import LlamaBatch
from .llama.context import LlamaContext

if TYPE_CHECKING:
    from .llama.model import LlamaModel

__all__ = ["SpeculativeParams", "Speculative", "Drafter", "PromptLookup", "NgramLookup", "DraftModel",
           "ChainDrafter", "check_compatible"]

# llama.cpp's vocabulary rules for a draft model (common/speculative.cpp)
_VOCAB_MAX_SIZE_DIFFERENCE = 128
_VOCAB_CHECK_START_TOKEN_ID = 5
_DRAFT_TOP_K = 10  # the draft sampler's top-k; p_min is tested on the softmax over these
_MAX_BACKOFF = 16  # steps without drafting after repeated misses
_NEGLIGIBLE = 14.0  # logits this far below the best have probability ratios under 1e-6


@dataclass
class SpeculativeParams:
    """How a draft model drafts: at most ``n_draft`` tokens per step, stopping early when the
    draft model's confidence in its next token falls below ``p_min``; a cached draft prefix shorter
    than ``n_reuse`` tokens is not worth keeping (the draft context re-evaluates the prompt);
    drafts shorter than ``n_min`` are dropped."""

    n_draft: int = 16
    n_reuse: int = 8
    p_min: float = 0.75
    n_min: int = 0

    def __post_init__(self) -> None:
        for name, lo in (("n_draft", 1), ("n_reuse", 0), ("n_min", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        p = self.p_min
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"p_min must be a number from 0 to 1, got {p!r}")
        if self.n_min > self.n_draft:
            raise ValueError(f"n_min ({self.n_min}) must be <= n_draft ({self.n_draft})")

    def replace(self, **kwargs: object) -> "SpeculativeParams":
        return dataclasses.replace(self, **kwargs)  # type: ignore[arg-type]


def check_compatible(target: "LlamaModel", draft: "LlamaModel") -> Optional[str]:
    """Why ``draft`` cannot draft for ``target`` (llama.cpp's rules), or None when it can."""
    vt, vd = target.get_vocab(), draft.get_vocab()
    if vt.vocab_type != vd.vocab_type:
        return f"vocabulary types differ ({vt.vocab_type} vs {vd.vocab_type})"
    if vt.add_bos != vd.add_bos or (vt.add_bos and vt.bos != vd.bos):
        return f"start-of-text tokens differ (add_bos {vt.add_bos}/{vd.add_bos}, bos {vt.bos}/{vd.bos})"
    if vt.add_eos != vd.add_eos or (vt.add_eos and vt.eos != vd.eos):
        return f"end-of-text tokens differ (add_eos {vt.add_eos}/{vd.add_eos}, eos {vt.eos}/{vd.eos})"
    nt, nd = vt.n_vocab, vd.n_vocab
    if abs(nt - nd) > _VOCAB_MAX_SIZE_DIFFERENCE:
        return f"vocabulary sizes differ by more than {_VOCAB_MAX_SIZE_DIFFERENCE} ({nt} vs {nd})"
    for i in range(_VOCAB_CHECK_START_TOKEN_ID, min(nt, nd)):
        if vt.get_text(i) != vd.get_text(i):
            return f"token {i} differs ({vt.get_text(i)!r} vs {vd.get_text(i)!r})"
    return None


def _top_pick(logits: "np.ndarray") -> tuple[int, float]:
    """The most likely token and its probability after top-k (``_DRAFT_TOP_K``) and softmax, as
    llama.cpp's draft sampler computes it. Only logits within ``_NEGLIGIBLE`` of the best are
    ranked (one pass over the vocabulary instead of a partition): the others add less than 1e-6
    to the sum, and the probability only decides how long to draft, never which tokens are kept."""
    best = int(logits.argmax())
    top = float(logits[best])
    near = logits[logits > top - _NEGLIGIBLE]
    if near.size > _DRAFT_TOP_K:
        near = np.partition(near, -_DRAFT_TOP_K)[-_DRAFT_TOP_K:]
    return best, 1.0 / float(np.exp(near.astype(np.float64) - top).sum())


def _prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token lists, by slice comparisons (C speed, O(log n) of them)."""
    m = min(len(a), len(b))
    if a[:m] == b[:m]:
        return m
    lo, hi = 0, m  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class Speculative:
    """A draft model's context drafting for a target context (llama.cpp's ``draft-simple``).

    The draft context keeps the KV of the tokens it has seen, so each :meth:`gen_draft` only
    evaluates what is new since the last call.
    """

    def __init__(self, ctx_target: LlamaContext, ctx_draft: LlamaContext, seq_id: int = 0):
        if not isinstance(ctx_target, LlamaContext) or not isinstance(ctx_draft, LlamaContext):
            raise TypeError("Speculative(ctx_target, ctx_draft) takes two LlamaContext objects")
        if isinstance(seq_id, bool) or not isinstance(seq_id, int) or not 0 <= seq_id < ctx_draft.n_seq_max:
            raise ValueError(f"seq_id must be in 0..{ctx_draft.n_seq_max - 1}, got {seq_id!r}")
        self.ctx_target, self.ctx_draft, self.seq_id = ctx_target, ctx_draft, seq_id
        self._cached: list[int] = []  # the tokens whose KV the draft context holds (sequence seq_id)
        self._batch = LlamaBatch(1, 0, seq_id + 1)

    def are_compatible(self) -> bool:
        """Whether the two models share a vocabulary closely enough (llama.cpp's rules)."""
        return self.incompatibility() is None

    def incompatibility(self) -> Optional[str]:
        """The reason the models cannot be paired, or None."""
        return check_compatible(self.ctx_target.model, self.ctx_draft.model)

    def reset(self) -> None:
        """Forgets the draft sequence's KV cache."""
        self.ctx_draft.kv_cache_seq_rm(self.seq_id, -1, -1)
        self._cached = []

    def gen_draft(self, params: SpeculativeParams, prompt_tokens: Sequence[int], last_token: int) -> list[int]:
        """Up to ``params.n_draft`` tokens the draft model expects after ``prompt_tokens`` (the
        tokens the target holds) followed by ``last_token`` (the one just sampled): the draft
        model's greedy picks, until its probability for the next one is below ``params.p_min``."""
        if not isinstance(params, SpeculativeParams):
            raise TypeError(f"params must be a SpeculativeParams, got {type(params).__name__}")
        vocab = self.ctx_draft.model.get_vocab()
        prompt = vocab.check_tokens([int(t) for t in prompt_tokens]).tolist() if len(prompt_tokens) else []
        return self._draft(params, prompt, int(vocab.check_tokens([int(last_token)])[0]))

    def _draft(self, params: SpeculativeParams, prompt: list[int], last: int) -> list[int]:
        ctx = self.ctx_draft
        n = len(prompt)
        room = ctx.n_ctx - n - 1  # positions left after last_token
        if room <= 0:
            return []
        cached = self._cached
        reuse = _prefix_len(cached, prompt)
        if reuse < min(params.n_reuse, n):
            reuse = 0
        seq = self.seq_id
        if reuse < len(cached):
            if not ctx.kv_cache_seq_rm(seq, reuse, -1):
                ctx.kv_cache_seq_rm(seq, -1, -1)
                reuse = 0
            del cached[reuse:]
        if reuse < n:
            eval_prompt(ctx, prompt[reuse:], reuse, seq, cached)
        batch = self._batch
        out: list[int] = []
        tok, pos = last, n
        n_max = min(params.n_draft, room)
        while True:
            batch.clear()
            batch.add(tok, pos, seq, True)
            with ctx._busy:  # the logits view is read before anything else can decode
                ctx.decode(batch)
                cached.append(tok)
                pos += 1
                tok, p = _top_pick(ctx.get_logits_ith(-1, copy=False))
            if p < params.p_min:
                break
            out.append(tok)
            if len(out) >= n_max:
                break
        if len(out) < params.n_min:
            return []
        return out

    def close(self) -> None:
        self._batch.close()

    def __enter__(self) -> "Speculative":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- drafters the decoding core drives ----------------------------------------------------------
class Drafter:
    """Proposes tokens to verify. ``history`` is the sequence's token list (the prompt, the output
    so far, ending with the token about to be decoded); it only grows between :meth:`begin` calls.

    A wrong draft is not free: on a CPU a two-token batch can cost twice a one-token one (a
    different matrix kernel), so a draft pays only when about two of its tokens are confirmed.
    :meth:`budget` adapts the length: it doubles while whole drafts are confirmed and falls to what
    was confirmed plus one (never below two); after a draft that missed at once, drafting pauses
    for a number of steps that doubles with each such miss.
    """

    n_max: int = 0
    _len: int = 2
    _skip: int = 0
    _backoff: int = 0

    def begin(self, history: list[int]) -> None:
        """A generation starts from ``history``."""

    def draft(self, history: list[int], n: int) -> list[int]:
        """At most ``n`` tokens likely to follow ``history``."""
        raise NotImplementedError

    def budget(self, n: int) -> int:
        """How many tokens to draft now, at most ``n`` (0: skip this step)."""
        if self._skip:
            self._skip -= 1
            return 0
        return min(n, self._len, self.n_max)

    def accepted(self, n_drafted: int, n_accepted: int) -> None:
        """How many of the last draft's tokens the target confirmed."""
        if n_accepted >= n_drafted:
            self._len, self._backoff = min(self.n_max, max(self._len, n_drafted) * 2), 0
        elif n_accepted:
            self._len, self._backoff = max(2, n_accepted + 1), 0
        else:
            self._len = 2
            self._backoff = min(_MAX_BACKOFF, self._backoff * 2 or 1)
            self._skip = self._backoff

    def end(self, history: list[int]) -> None:
        """The generation is over; ``history`` holds everything it kept."""


class PromptLookup(Drafter):
    """Drafts by copying: finds the latest earlier occurrence of the last ``max_ngram`` (down to
    ``min_ngram``) tokens and proposes the ``num_tokens`` that followed it. While the output keeps
    following the place it copies from, the next draft continues from there (a short n-gram like
    ``self.`` recurs all over a file; the copy's own position does not). Its index grows with the
    history, so each step costs O(max_ngram + new tokens), not O(history)."""

    def __init__(self, num_tokens: int, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram ({min_ngram}) <= max_ngram ({max_ngram})")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.n_max, self.max_ngram, self.min_ngram = num_tokens, max_ngram, min_ngram
        self._index: dict[tuple[int, ...], int] = {}
        self._n = 0  # n-grams ending before this position are indexed
        self._src = -1  # the last draft copied from after history[_src], which matched history[_seen - 1]
        self._seen = 0

    def begin(self, history: list[int]) -> None:
        self._index.clear()
        self._n = 0
        self._src = -1

    def draft(self, history: list[int], n: int) -> list[int]:
        index, lo, hi = self._index, self.min_ngram, self.max_ngram
        end = len(history) - 1  # index n-grams that have a continuation: ending before the last token
        for i in range(max(self._n, lo - 1), end):
            for size in range(lo, min(hi, i + 1) + 1):
                index[tuple(history[i - size + 1:i + 1])] = i
        self._n = max(self._n, end)
        at = self._follow(history)
        if at < 0:
            for size in range(min(hi, len(history)), lo - 1, -1):
                at = index.get(tuple(history[-size:]), -1)
                if at >= 0:
                    break
        self._src, self._seen = at, len(history)
        return history[at + 1:at + 1 + n] if at >= 0 else []

    def _follow(self, history: list[int]) -> int:
        """Where the copy in progress continues: the source position matching the history's last
        token, when everything added since the last draft equals what followed its source; else -1."""
        src, seen = self._src, self._seen
        grown = len(history) - seen
        if src < 0 or grown <= 0 or src + grown >= len(history) - 1:
            return -1
        if history[src + 1:src + 1 + grown] != history[seen:]:
            return -1
        return src + grown


class NgramLookup(Drafter):
    """llama.cpp's lookup decoding: n-gram counts of this generation's history (the context cache),
    then a persistent :class:`NgramCache` with stricter thresholds, then its 2-grams (the static
    cache). When the generation ends, the context's counts are merged into that cache."""

    def __init__(self, num_tokens: int, cache: Optional[NgramCache] = None, ngram_max: int = NGRAM_MAX,
                 learn: bool = True):
        self.n_max, self.cache, self.ngram_max, self.learn = num_tokens, cache, ngram_max, learn
        self._context = NgramCache()
        self._n = 0

    def begin(self, history: list[int]) -> None:
        self._context = NgramCache()
        self._context.update(history, 1, self.ngram_max)
        self._n = len(history)

    def _count_new(self, history: list[int]) -> None:
        new = len(history) - self._n
        if new > 0:
            self._context.update(history, 1, self.ngram_max, n_new=new)
            self._n = len(history)

    def draft(self, history: list[int], n: int) -> list[int]:
        self._count_new(history)
        return draft_tokens(history, n, 1, self.ngram_max, self._context, self.cache, self.cache)

    def end(self, history: list[int]) -> None:
        if self.cache is not None and self.learn:
            self._count_new(history)
            self.cache.merge(self._context)


class DraftModel(Drafter):
    """Drafts with a small model through :class:`Speculative`. Its length is the draft model's
    own call (it stops when unsure, ``p_min``), as in llama.cpp, not the lookups' adaptive budget."""

    def __init__(self, spec: Speculative, params: SpeculativeParams):
        self.spec, self.params, self.n_max = spec, params, params.n_draft

    def budget(self, n: int) -> int:
        return min(n, self.n_max)

    def accepted(self, n_drafted: int, n_accepted: int) -> None:
        pass

    def draft(self, history: list[int], n: int) -> list[int]:
        params = self.params if n >= self.params.n_draft else self.params.replace(
            n_draft=n, n_min=min(self.params.n_min, n))
        return self.spec._draft(params, history[:-1], history[-1])


class ChainDrafter(Drafter):
    """The first drafter with a proposal wins (cheap lookups before a draft model, as llama.cpp)."""

    def __init__(self, *drafters: Drafter):
        self.drafters = drafters
        self.n_max = max(d.n_max for d in drafters)
        self._last: Drafter | None = None  # the one whose draft is being verified

    def budget(self, n: int) -> int:
        return min(n, self.n_max)  # each drafter applies its own budget in draft()

    def accepted(self, n_drafted: int, n_accepted: int) -> None:
        if self._last is not None:
            self._last.accepted(n_drafted, n_accepted)

    def begin(self, history: list[int]) -> None:
        for d in self.drafters:
            d.begin(history)

    def draft(self, history: list[int], n: int) -> list[int]:
        self._last = None
        for d in self.drafters:
            room = d.budget(min(n, d.n_max))
            out = d.draft(history, room)[:room] if room > 0 else []
            if out:
                self._last = d
                return out
        return []

    def end(self, history: list[int]) -> None:
        for d in self.drafters:
            d.end(history)
