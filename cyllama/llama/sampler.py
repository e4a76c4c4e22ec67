"""LlamaSampler: a llama.cpp sampler chain, and its params."""

from __future__ import annotations

import math
import re
import random
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .. import _logging
from .._ffi import ffi
from ._backend import lib
from ._handle import NativeHandle, guarded
from ._params import Field, StructParams

if TYPE_CHECKING:
    from .context import LlamaContext
    from .vocab import LlamaVocab

__all__ = ["LlamaSamplerChainParams", "LlamaSampler", "resolve_seed"]

_UINT32 = 2**32


class LlamaSamplerChainParams(StructParams):
    """``struct llama_sampler_chain_params``."""

    __slots__ = ()
    _ctype = "struct llama_sampler_chain_params"
    _defaults = lib.llama_sampler_chain_default_params

    no_perf = Field(bool, doc="do not measure sampling time")


def resolve_seed(seed: int | None) -> int:
    """-1 or None -> a random seed; otherwise the seed as uint32."""
    if seed is None or seed == -1 or seed == 0xFFFFFFFF:
        return random.getrandbits(32) & 0xFFFFFFFE  # never LLAMA_DEFAULT_SEED itself
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _UINT32:
        raise ValueError(f"seed must be -1 or an int in 0..{_UINT32 - 1}, got {seed!r}")
    return seed


def _prob(name: str, v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    v = float(v)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _finite(name: str, v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _nonneg_int(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 2**31:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return v


_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_MAX_REPEAT = 100_000


def _check_repetitions(grammar: str) -> None:
    """Rejects ``x{m,n}`` with m > n or huge counts: llama.cpp's parser loops on them until OOM."""
    for m in _REPEAT.finditer(grammar):
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else None
        if lo > _MAX_REPEAT or (hi is not None and hi > _MAX_REPEAT):
            raise ValueError(f"grammar repetition {m.group(0)} is too large (at most {_MAX_REPEAT})")
        if hi is not None and hi < lo:
            raise ValueError(f"grammar repetition {m.group(0)} has max < min")


class LlamaSampler(NativeHandle):
    """A chain of llama.cpp samplers, applied in the order they are added.

    Samplers that need the vocabulary (grammar, DRY, infill, logit bias, penalties) take it from
    ``vocab=`` when given; otherwise the chain waits for the first ``sample(ctx, ...)`` and takes
    it from the context's model, keeping the order in which they were added.
    """

    def __init__(self, params: LlamaSamplerChainParams | None = None, vocab: "LlamaVocab | None" = None):
        self.params = params if params is not None else LlamaSamplerChainParams()
        self._vocab = vocab
        self._pending: list[Callable[["LlamaVocab"], Any]] = []
        self._keep: list[Any] = []
        self.names: list[str] = []
        self._broken: str | None = None
        self._adopt(lib.llama_sampler_chain_init(self.params.value), lib.llama_sampler_free)

    # -- building --------------------------------------------------------------------------
    @guarded
    def _add(self, name: str, make: Callable[["LlamaVocab | None"], Any], needs_vocab: bool = False) -> "LlamaSampler":
        ptr = self.ptr
        self.names.append(name)
        if self._pending or (needs_vocab and self._vocab is None):
            self._pending.append(make)
            return self
        before = _logging.log_mark()
        if needs_vocab:
            self._depend_on(self._vocab)
        smpl = make(self._vocab)
        if smpl == ffi.NULL:
            self.names.pop()
            why = "; ".join(_logging.errors_since(before, 2))
            raise ValueError(f"llama.cpp rejected the {name} sampler{': ' + why if why else ''}")
        lib.llama_sampler_chain_add(ptr, smpl)
        return self

    def _depend_on(self, vocab: "LlamaVocab") -> None:
        """Samplers holding the vocabulary (grammar, DRY, ...) must not outlive its model:
        closing the model closes this chain, which then raises ClosedError instead of crashing."""
        vocab.model._dependents.add(self)

    @guarded
    def _bind(self, vocab: "LlamaVocab") -> None:
        self._vocab = vocab
        self._depend_on(vocab)
        pending, self._pending = self._pending, []
        for make in pending:
            before = _logging.log_mark()
            smpl = make(vocab)
            if smpl == ffi.NULL:
                why = "; ".join(_logging.errors_since(before, 2))
                self._broken = f"llama.cpp rejected a sampler (e.g. a grammar that does not parse){': ' + why if why else ''}"
                raise ValueError(self._broken)
            lib.llama_sampler_chain_add(self.ptr, smpl)

    def add_greedy(self) -> "LlamaSampler":
        return self._add("greedy", lambda v: lib.llama_sampler_init_greedy())

    def add_dist(self, seed: int = -1) -> "LlamaSampler":
        s = resolve_seed(seed)
        return self._add("dist", lambda v: lib.llama_sampler_init_dist(s))

    def add_top_k(self, k: int) -> "LlamaSampler":
        k = int(k)
        return self._add("top_k", lambda v: lib.llama_sampler_init_top_k(k))

    def add_top_p(self, p: float, min_keep: int = 1) -> "LlamaSampler":
        p, mk = _prob("top_p", p), _nonneg_int("min_keep", min_keep)
        return self._add("top_p", lambda v: lib.llama_sampler_init_top_p(p, mk))

    def add_min_p(self, p: float, min_keep: int = 1) -> "LlamaSampler":
        p, mk = _prob("min_p", p), _nonneg_int("min_keep", min_keep)
        return self._add("min_p", lambda v: lib.llama_sampler_init_min_p(p, mk))

    def add_typical(self, p: float, min_keep: int = 1) -> "LlamaSampler":
        p, mk = _prob("typical_p", p), _nonneg_int("min_keep", min_keep)
        return self._add("typical", lambda v: lib.llama_sampler_init_typical(p, mk))

    def add_temp(self, t: float) -> "LlamaSampler":
        t = _finite("temperature", t)
        return self._add("temp", lambda v: lib.llama_sampler_init_temp(t))

    def add_temp_ext(self, t: float, delta: float, exponent: float) -> "LlamaSampler":
        t, d, e = _finite("temperature", t), _finite("delta", delta), _finite("exponent", exponent)
        return self._add("temp_ext", lambda v: lib.llama_sampler_init_temp_ext(t, d, e))

    def add_xtc(self, p: float, t: float, min_keep: int = 1, seed: int = -1) -> "LlamaSampler":
        p, t, mk, s = _prob("xtc_probability", p), _prob("xtc_threshold", t), _nonneg_int("min_keep", min_keep), resolve_seed(seed)
        return self._add("xtc", lambda v: lib.llama_sampler_init_xtc(p, t, mk, s))

    def add_top_n_sigma(self, n: float) -> "LlamaSampler":
        n = _finite("top_n_sigma", n)
        return self._add("top_n_sigma", lambda v: lib.llama_sampler_init_top_n_sigma(n))

    def add_mirostat(self, n_vocab: int, seed: int = -1, tau: float = 5.0, eta: float = 0.1, m: int = 100) -> "LlamaSampler":
        s, tau, eta = resolve_seed(seed), _finite("tau", tau), _finite("eta", eta)
        nv, m = _nonneg_int("n_vocab", n_vocab), _nonneg_int("m", m)
        if nv == 0 or m == 0:
            raise ValueError("mirostat needs n_vocab > 0 and m > 0")
        return self._add("mirostat", lambda v: lib.llama_sampler_init_mirostat(nv, s, tau, eta, m))

    def add_mirostat_v2(self, seed: int = -1, tau: float = 5.0, eta: float = 0.1) -> "LlamaSampler":
        s, tau, eta = resolve_seed(seed), _finite("tau", tau), _finite("eta", eta)
        return self._add("mirostat_v2", lambda v: lib.llama_sampler_init_mirostat_v2(s, tau, eta))

    def add_penalties(self, penalty_last_n: int = 64, penalty_repeat: float = 1.0,
                      penalty_freq: float = 0.0, penalty_present: float = 0.0) -> "LlamaSampler":
        n = int(penalty_last_n)
        if n < -1:
            raise ValueError(f"penalty_last_n must be >= -1, got {n}")
        rep = _finite("repeat_penalty", penalty_repeat)
        if rep <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {rep}")
        f, p = _finite("frequency_penalty", penalty_freq), _finite("presence_penalty", penalty_present)
        return self._add("penalties", lambda v: lib.llama_sampler_init_penalties(v.n_vocab, n, rep, f, p), needs_vocab=True)

    def add_dry(self, multiplier: float = 0.8, base: float = 1.75, allowed_length: int = 2,
                penalty_last_n: int = -1, seq_breakers: Sequence[str] = ("\n", ":", '"', "*"),
                vocab: "LlamaVocab | None" = None) -> "LlamaSampler":
        mul, base = _finite("dry_multiplier", multiplier), _finite("dry_base", base)
        al, pln = int(allowed_length), int(penalty_last_n)
        encoded = [ffi.new("char[]", s.encode("utf-8")) for s in seq_breakers]
        arr = ffi.new("const char *[]", encoded) if encoded else ffi.NULL
        self._keep.extend([encoded, arr])
        if vocab is not None:
            self._vocab = self._vocab or vocab

        def make(v: "LlamaVocab") -> Any:
            return lib.llama_sampler_init_dry(v.ptr, mul, base, al, pln, arr, len(encoded))
        return self._add("dry", make, needs_vocab=True)

    def add_logit_bias(self, n_vocab: int, logit_bias: Mapping[int, float]) -> "LlamaSampler":
        items = list(logit_bias.items())
        n_vocab = _nonneg_int("n_vocab", n_vocab)
        biases = ffi.new("llama_logit_bias[]", max(1, len(items)))
        for i, (tok, bias) in enumerate(items):
            if not 0 <= int(tok) < n_vocab:
                raise ValueError(f"logit_bias token {tok} out of range for a vocabulary of {n_vocab}")
            biases[i].token = int(tok)
            b = float(bias)
            if math.isnan(b):
                raise ValueError(f"logit_bias for token {tok} is NaN")
            biases[i].bias = b if b != math.inf else 1e9
        self._keep.append(biases)
        n = len(items)
        return self._add("logit_bias", lambda v: lib.llama_sampler_init_logit_bias(n_vocab, n, biases))

    def add_grammar(self, grammar_or_vocab: Any, grammar: str | None = None, root: str = "root") -> "LlamaSampler":
        """Constrains output to a GBNF grammar: ``add_grammar(grammar)`` or ``add_grammar(vocab, grammar)``."""
        from .vocab import LlamaVocab

        if isinstance(grammar_or_vocab, LlamaVocab):
            self._vocab = self._vocab or grammar_or_vocab
            text = grammar
        else:
            text, root = grammar_or_vocab, grammar if grammar is not None else root
        if not isinstance(text, str) or not text.strip():
            raise ValueError("grammar must be a non-empty GBNF string")
        _check_repetitions(text)
        g, r = text.encode("utf-8"), root.encode("utf-8")

        def make(v: "LlamaVocab") -> Any:
            return lib.llama_sampler_init_grammar(v.ptr, g, r)
        return self._add("grammar", make, needs_vocab=True)

    def add_infill(self, vocab: "LlamaVocab | None" = None) -> "LlamaSampler":
        if vocab is not None:
            self._vocab = self._vocab or vocab
        return self._add("infill", lambda v: lib.llama_sampler_init_infill(v.ptr), needs_vocab=True)

    # -- using -----------------------------------------------------------------------------
    @guarded
    def sample(self, ctx: "LlamaContext", idx: int = -1) -> int:
        """Samples a token from the output at batch index ``idx`` of the last decode, and accepts it."""
        ptr = self.ptr
        if self._broken:
            raise ValueError(f"this sampler chain is unusable: {self._broken}")
        if self._pending:
            self._bind(ctx.model.get_vocab())
        if lib.llama_sampler_chain_n(ptr) == 0:
            raise ValueError("the sampler chain is empty: add a sampler (e.g. add_greedy() or add_dist())")
        vocab = self._vocab
        if vocab is not None and vocab.model is not ctx.model and vocab.n_vocab != ctx.n_vocab:
            # a grammar or penalty sampler would index this context's logits with the other vocabulary
            raise ValueError(f"this sampler chain was built for {vocab.model.path.name}'s vocabulary "
                             f"({vocab.n_vocab} tokens); the context's model has {ctx.n_vocab}")
        with ctx._busy:  # the context cannot be closed while llama.cpp reads its logits
            ctx.check_output_index(idx)
            return int(lib.llama_sampler_sample(ptr, ctx.ptr, idx))

    @guarded
    def accept(self, token: int) -> None:
        """Tells stateful samplers (penalties, grammar) that ``token`` was chosen."""
        ptr = self.ptr
        if self._pending or self._vocab is None:
            if self._pending:
                raise ValueError("accept() before the chain knows its vocabulary: pass vocab= or sample() first")
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"token must be a non-negative int, got {token!r}")
        else:
            token = self._vocab.check_token(token)  # grammar samplers index the vocabulary with it
            if "grammar" in self.names:
                self._check_grammar_allows(token)
        if self._broken:
            raise ValueError(f"this sampler chain is unusable: {self._broken}")
        lib.llama_sampler_accept(ptr, int(token))

    def _check_grammar_allows(self, token: int) -> None:
        # llama.cpp throws a C++ exception (process abort) when a grammar is told to accept a
        # token it forbids, so ask each grammar sampler first with a one-candidate array
        data = ffi.new("llama_token_data[1]")
        arr = ffi.new("llama_token_data_array *")
        for i in range(lib.llama_sampler_chain_n(self.ptr)):
            smpl = lib.llama_sampler_chain_get(self.ptr, i)
            if ffi.string(lib.llama_sampler_name(smpl)) != b"grammar":
                continue
            data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
            arr.data, arr.size, arr.selected, arr.sorted = data, 1, -1, False
            lib.llama_sampler_apply(smpl, arr)
            if data[0].logit == -math.inf:
                raise ValueError(f"token {token} is not allowed by the grammar at this point")

    @guarded
    def reset(self) -> None:
        lib.llama_sampler_reset(self.ptr)

    @property
    @guarded
    def n_samplers(self) -> int:
        return int(lib.llama_sampler_chain_n(self.ptr)) + len(self._pending)

    @property
    @guarded
    def seed(self) -> int:
        return int(lib.llama_sampler_get_seed(self.ptr))

    @guarded
    def perf_data(self) -> dict[str, float]:
        d = lib.llama_perf_sampler(self.ptr)
        return {"t_sample_ms": d.t_sample_ms, "n_sample": d.n_sample}

    def __repr__(self) -> str:
        return f"<LlamaSampler {' -> '.join(self.names) or 'empty'}{' (closed)' if self.closed else ''}>"

