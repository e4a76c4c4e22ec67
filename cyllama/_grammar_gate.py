"""Grammar-constrained sampling the way llama-server does it: sample first, check after.

A :class:`GrammarGate` keeps the grammar out of the sampler chain. Each step the chain picks a
token from the raw logits; only when the grammar rejects that token are the logits filtered
through the grammar and the chain run again (llama.cpp's ``common_sampler_sample``). Most tokens
under a grammar are allowed anyway, so this saves the grammar's pass over the whole vocabulary.

A lazy :class:`Grammar` starts unconstrained and switches on at a trigger: a token (a tool-call
marker such as ``<tool_call>``) or a regular expression over the text so far (a JSON call at the
start of the answer). llama.cpp's own lazy grammar replays the text since the trigger into the
grammar and aborts the process when that text does not fit; here the replay is checked token by
token first, and text that does not fit leaves the generation unconstrained instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence, Union

from ._lazy_numpy import np

from ._ffi import ffi
from .llama._backend import lib
from .llama.sampler import LlamaSampler

if TYPE_CHECKING:
    from .llama.context import LlamaContext
    from .llama.vocab import LlamaVocab

__all__ = ["Grammar", "GrammarError", "GrammarGate", "GatedSampler", "GrammarSpec", "grammar_text", "preserved_tokens"]


class GrammarError(RuntimeError):
    """The grammar allows no token at this point of the output: it cannot be completed (the
    request's grammar is at fault, not the model)."""


_ANCHORED_WINDOW = 256  # a ^-anchored trigger is only looked for in the first characters
_TAIL_WINDOW = 128  # an unanchored trigger is looked for in the last characters


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar with what comes with it: lazy triggers and tokens to keep in the text.

    ``trigger_patterns``: regular expressions searched in the generated text (a pattern starting
    with ``^`` only at the start); the grammar applies from the first non-empty capture group of
    the match (or the match) on, and must accept the text from there. ``trigger_tokens``: token
    ids that switch the grammar on, the grammar starting with the token itself. Without triggers
    the grammar applies from the first token. ``preserved_tokens``: special tokens (tool-call
    markers) written into the output text, which special tokens otherwise are not.
    """

    grammar: str
    trigger_patterns: Sequence[str] = ()
    trigger_tokens: Sequence[int] = ()
    preserved_tokens: Sequence[int] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.grammar, str) or not self.grammar.strip():
            raise ValueError("grammar must be a non-empty GBNF string")
        try:
            compiled = tuple(re.compile(p) for p in self.trigger_patterns)
        except re.error as exc:
            raise ValueError(f"invalid trigger pattern: {exc}") from None
        object.__setattr__(self, "trigger_patterns", tuple(self.trigger_patterns))
        object.__setattr__(self, "trigger_tokens", tuple(int(t) for t in self.trigger_tokens))
        object.__setattr__(self, "preserved_tokens", tuple(int(t) for t in self.preserved_tokens))
        object.__setattr__(self, "_compiled", compiled)

    @property
    def lazy(self) -> bool:
        return bool(self.trigger_patterns or self.trigger_tokens)


GrammarSpec = Union[str, Grammar]


def grammar_text(spec: GrammarSpec) -> str:
    return spec.grammar if isinstance(spec, Grammar) else spec


def preserved_tokens(spec: GrammarSpec | None) -> Sequence[int]:
    return spec.preserved_tokens if isinstance(spec, Grammar) else ()


class GrammarGate:
    """One sequence's grammar, applied after the sampler chain (see the module docstring)."""

    __slots__ = ("vocab", "_grammar", "_gptr", "_lazy", "active", "_buf", "_off", "_starts", "_toks",
                 "_given_up", "_min_start", "_cells", "_view", "_ids", "_arr", "_one", "_one_arr")

    def __init__(self, vocab: "LlamaVocab", spec: GrammarSpec):
        self.vocab = vocab
        self._lazy = spec if isinstance(spec, Grammar) and spec.lazy else None
        self._grammar = LlamaSampler(vocab=vocab).add_grammar(grammar_text(spec))  # parses it: bad text raises now
        self._gptr = lib.llama_sampler_chain_get(self._grammar.ptr, 0)
        self.active = self._lazy is None
        self._given_up = False
        self._buf = ""  # lazy: the text so far (less ``_off`` dropped characters), where each token starts
        self._off = 0
        self._min_start = 0  # absolute text offset before which no trigger is tried (one failed there)
        self._starts: list[int] = []
        self._toks: list[int] = []
        n = vocab.n_vocab
        self._cells = ffi.new("llama_token_data[]", n)
        self._view = np.frombuffer(ffi.buffer(self._cells), dtype=np.dtype(
            [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
        self._ids = np.arange(n, dtype=np.int32)
        self._arr = ffi.new("llama_token_data_array *")
        self._one = ffi.new("llama_token_data[1]")
        self._one_arr = ffi.new("llama_token_data_array *")

    def close(self) -> None:
        self._grammar.close()

    # -- sampling ----------------------------------------------------------------------------
    def _fill(self, ctx: "LlamaContext", idx: int) -> None:
        v = self._view
        v["id"] = self._ids  # the chain sorts the cells in place: reset them every time
        with ctx._busy:
            v["logit"] = ctx.get_logits_ith(idx, copy=False)
        v["p"] = 0.0
        a = self._arr
        a.data, a.size, a.selected, a.sorted = self._cells, len(v), -1, False

    def allows(self, token: int) -> bool:
        """Whether the grammar, as it stands, lets ``token`` come next."""
        d = self._one
        d[0].id, d[0].logit, d[0].p = token, 0.0, 0.0
        a = self._one_arr
        a.data, a.size, a.selected, a.sorted = d, 1, -1, False
        lib.llama_sampler_apply(self._gptr, a)
        return d[0].logit != -math.inf

    def sample(self, ctx: "LlamaContext", idx: int, chain: LlamaSampler) -> int:
        """The chain's pick at batch index ``idx``, redrawn under the grammar if it rejects it."""
        if not self.active:
            return chain.sample(ctx, idx)
        ctx.check_output_index(idx)
        if chain._pending:
            chain._bind(self.vocab)
        cptr = chain.ptr
        self._fill(ctx, idx)
        lib.llama_sampler_apply(cptr, self._arr)
        tok = self._selected()
        if tok < 0 or not self.allows(tok):
            self._fill(ctx, idx)
            lib.llama_sampler_apply(self._gptr, self._arr)
            lib.llama_sampler_apply(cptr, self._arr)
            tok = self._selected()
            if tok < 0 or not self.allows(tok):
                raise GrammarError("the grammar allows no token here (it cannot be completed)")
        lib.llama_sampler_accept(cptr, tok)
        lib.llama_sampler_accept(self._gptr, tok)
        return tok

    def _selected(self) -> int:
        a = self._arr
        if a.selected < 0 or a.selected >= a.size:
            return -1
        return int(a.data[a.selected].id)

    # -- the lazy trigger -------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the state before the first token (a lazy grammar waits for its trigger again)."""
        self._grammar.reset()
        self.active = self._lazy is None
        self._given_up = False
        self._buf, self._off, self._starts, self._toks, self._min_start = "", 0, [], [], 0

    def accepted(self, token: int) -> None:
        """Tells a lazy gate about a token the generation took (while it waits for its trigger)."""
        if self.active or self._given_up or self._lazy is None:
            return
        lazy = self._lazy
        if token in lazy.trigger_tokens:
            self._switch_on([token], None)
            return
        if not lazy._compiled:
            return
        self._starts.append(len(self._buf))
        self._toks.append(token)
        self._buf += self.vocab.token_to_piece(token, special=True)
        buf = self._buf
        # a trigger that did not fit the grammar is not tried again: search after it
        floor = max(0, self._min_start - self._off)
        for pat in lazy._compiled:
            anchored = pat.pattern.startswith("^")
            if anchored and (self._off or self._min_start or len(buf) > _ANCHORED_WINDOW):
                continue
            m = pat.search(buf) if anchored else pat.search(buf, max(floor, len(buf) - _TAIL_WINDOW))
            if m is None:
                continue
            start = next((m.start(i) for i in range(1, (m.lastindex or 0) + 1) if m.group(i)), m.start())
            self._trigger_at(start)
            return
        if len(buf) > _ANCHORED_WINDOW + _TAIL_WINDOW:  # keep only the tail that unanchored patterns see
            if not any(not p.pattern.startswith("^") for p in lazy._compiled):
                self._given_up = True
                return
            cut = len(buf) - _TAIL_WINDOW
            k = max(0, next((i for i, s in enumerate(self._starts) if s >= cut), len(self._starts)) - 1)
            drop = self._starts[k]
            self._off += drop
            self._buf = buf[drop:]
            self._starts = [s - drop for s in self._starts[k:]]
            self._toks = self._toks[k:]

    def _trigger_at(self, start: int) -> None:
        # the grammar takes whole tokens: begin with the token holding ``start`` when what precedes
        # ``start`` in it is white space (the grammars we build allow leading space)
        k = max(i for i, s in enumerate(self._starts) if s <= start)
        lead = self._buf[self._starts[k]:start]
        if lead.strip():
            self._min_start = self._off + start + 1
            return
        self._switch_on(self._toks[k:], start)

    def _switch_on(self, replay: list[int], start: int | None) -> None:
        for tok in replay:
            if not self.allows(tok):
                self._grammar.reset()
                if start is not None:
                    self._min_start = self._off + start + 1
                return
            lib.llama_sampler_accept(self._gptr, tok)
        self.active = True
        self._buf, self._starts, self._toks = "", [], []


class GatedSampler:
    """A sampler chain with a :class:`GrammarGate` after it, used where a plain
    :class:`~cyllama.LlamaSampler` is (``sample(ctx, idx)``, ``accept``, ``reset``, ``close``)."""

    def __init__(self, chain: LlamaSampler, gate: GrammarGate):
        self.chain, self.gate = chain, gate

    def sample(self, ctx: "LlamaContext", idx: int = -1) -> int:
        tok = self.gate.sample(ctx, idx, self.chain)
        if not self.gate.active:
            self.gate.accepted(tok)
        return tok

    def accept(self, token: int) -> None:
        token = self.gate.vocab.check_token(token)  # the grammar indexes the vocabulary with it
        if self.gate.active:
            if not self.gate.allows(token):
                raise ValueError(f"token {token} is not allowed by the grammar at this point")
            self.chain.accept(token)
            lib.llama_sampler_accept(self.gate._gptr, int(token))
        else:
            self.chain.accept(token)
            self.gate.accepted(token)

    def reset(self) -> None:
        self.chain.reset()
        self.gate.reset()

    def close(self) -> None:
        self.chain.close()
        self.gate.close()

    @property
    def names(self) -> list[str]:
        return [*self.chain.names, "grammar"]

    def __enter__(self) -> "GatedSampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
