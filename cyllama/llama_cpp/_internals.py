"""``llama_cpp._internals``: llama-cpp-python's thin wrappers over llama.h, on cyllama's core classes.

:class:`LlamaModel`, :class:`LlamaContext`, :class:`LlamaBatch` and :class:`LlamaSampler` keep
llama-cpp-python's constructors and method names and delegate to :class:`cyllama.LlamaModel`,
:class:`cyllama.LlamaContext`, :class:`cyllama.LlamaBatch` and :class:`cyllama.LlamaSampler`, so
every argument is checked before llama.cpp sees it. Parameters come from
``llama_cpp.llama_model_default_params()`` / ``llama_context_default_params()``::

    import cyllama.llama_cpp as llama_cpp
    from cyllama.llama_cpp import _internals as internals

    model = internals.LlamaModel(path_model="model.gguf", params=llama_cpp.llama_model_default_params())
    ctx = internals.LlamaContext(model=model, params=llama_cpp.llama_context_default_params())

Differences: the ``.model`` / ``.vocab`` / ``.ctx`` / ``.batch`` / ``.sampler`` attributes are cffi
pointers (``None`` once closed); ``get_logits*`` and ``get_embeddings*`` return numpy arrays (views
valid until the next decode) instead of ctypes float pointers; Python-implemented samplers
(``add_custom``, ``CustomSampler``), ``LlamaSampler.clone`` and the lazy-grammar sampler are not
provided (a logits processor on :class:`cyllama.llama_cpp.Llama` does the former).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import numpy.typing as npt

from .._errors import ModelLoadError
from .._ffi import ffi
from ..llama import batch as _batch
from ..llama import context as _context
from ..llama import model as _model
from ..llama import sampler as _sampler
from ..llama._backend import lib
from .llama_cpp import llama_context_default_params, llama_model_default_params
from .llama_grammar import LlamaGrammar

__all__ = ["LlamaModel", "LlamaContext", "LlamaBatch", "LlamaSampler", "LlamaTokenDataArray",
           "LlamaSamplingParams", "LlamaSamplingContext", "normalize_embedding"]


class LlamaModel:
    """A loaded model (``llama_model``); ``close()`` frees it and every context made from it."""

    def __init__(self, *, path_model: str, params: Optional[_model.LlamaModelParams] = None, verbose: bool = True):
        self.path_model = os.fspath(path_model)
        self.params = params if params is not None else llama_model_default_params()
        self.verbose = verbose
        self.sampler = None
        self.custom_samplers: List[object] = []
        if not os.path.exists(self.path_model):
            raise ValueError(f"Model path does not exist: {path_model}")
        try:
            self._model = _model.LlamaModel(self.path_model, self.params, verbose=verbose)
        except ModelLoadError as e:
            raise ValueError(f"Failed to load model from file: {path_model} ({e})") from e
        self._vocab = self._model.get_vocab()

    @property
    def model(self):
        """The native ``llama_model *`` (cffi), ``None`` once closed."""
        return None if self._model.closed else self._model.ptr

    @property
    def vocab(self):
        """The native ``llama_vocab *`` (cffi), ``None`` once closed."""
        return None if self._model.closed else self._vocab.ptr

    def close(self) -> None:
        self._model.close()

    def vocab_type(self) -> int:
        return int(lib.llama_vocab_type(self._vocab.ptr))

    def n_vocab(self) -> int:
        return self._model.n_vocab

    def n_ctx_train(self) -> int:
        return self._model.n_ctx_train

    def n_embd(self) -> int:
        return self._model.n_embd

    def rope_freq_scale_train(self) -> float:
        return float(lib.llama_model_rope_freq_scale_train(self._model.ptr))

    def desc(self) -> str:
        return self._model.desc

    def size(self) -> int:
        return self._model.size

    def n_params(self) -> int:
        return self._model.n_params

    # -- vocabulary ------------------------------------------------------------------------
    def token_get_text(self, token: int) -> str:
        return self._vocab.get_text(token)

    def token_get_score(self, token: int) -> float:
        return self._vocab.get_score(token)

    def token_get_attr(self, token: int) -> int:
        return self._vocab.get_attr(token)

    def token_bos(self) -> int:
        return self._vocab.bos

    def token_eos(self) -> int:
        return self._vocab.eos

    def token_cls(self) -> int:
        return self._vocab.cls

    def token_sep(self) -> int:
        return self._vocab.sep

    def token_nl(self) -> int:
        return self._vocab.nl

    def token_prefix(self) -> int:
        return self._vocab.fim_pre

    def token_middle(self) -> int:
        return self._vocab.fim_mid

    def token_suffix(self) -> int:
        return self._vocab.fim_suf

    def token_eot(self) -> int:
        return self._vocab.eot

    def add_bos_token(self) -> bool:
        return self._vocab.add_bos

    def add_eos_token(self) -> bool:
        return self._vocab.add_eos

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> List[int]:
        """Token ids of UTF-8 ``text``; ``add_bos`` adds the model's BOS/EOS, ``special`` parses
        special-token text."""
        return self._vocab.tokenize(text, add_special=bool(add_bos), parse_special=bool(special))

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        return self._vocab.token_to_bytes(token, special=bool(special))

    def detokenize(self, tokens: List[int], special: bool = False) -> bytes:
        """The tokens' pieces joined; the space a SentencePiece vocabulary puts before the first
        word is dropped after a leading BOS (as llama-cpp-python does)."""
        tokens = [int(t) for t in tokens]
        out = b"".join([self._vocab.token_to_bytes(t, special=bool(special)) for t in tokens])
        if tokens and tokens[0] == self._vocab.bos and out[:1] == b" ":
            return out[1:]
        return out

    def metadata(self) -> Dict[str, str]:
        return dict(self._model.metadata)

    @staticmethod
    def default_params() -> _model.LlamaModelParams:
        return llama_model_default_params()


class LlamaContext:
    """An inference context (``llama_context``) over a :class:`LlamaModel`."""

    def __init__(self, *, model: LlamaModel, params: Optional[_context.LlamaContextParams] = None,
                 verbose: bool = True):
        if not isinstance(model, LlamaModel):
            raise TypeError(f"model must be a llama_cpp._internals.LlamaModel, got {type(model).__name__}")
        self.model = model
        self.params = params if params is not None else llama_context_default_params()
        self.verbose = verbose
        self.sampler = None
        try:
            self._ctx = _context.LlamaContext(model._model, self.params, verbose=verbose)
        except RuntimeError as e:  # llama.cpp could not make it (a ValueError, as in llama-cpp-python)
            raise ValueError(f"Failed to create llama_context: {e}") from e

    @property
    def ctx(self):
        """The native ``llama_context *`` (cffi), ``None`` once it (or its model) is closed."""
        return None if self._ctx.closed else self._ctx.ptr

    @property
    def memory(self):
        return None if self._ctx.closed else lib.llama_get_memory(self._ctx.ptr)

    def close(self) -> None:
        self._ctx.close()

    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    def pooling_type(self) -> int:
        return self._ctx.pooling_type

    def kv_cache_clear(self) -> None:
        self._ctx.kv_cache_clear()

    def kv_cache_seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        return self._ctx.kv_cache_seq_rm(seq_id, p0, p1)

    def kv_cache_seq_cp(self, seq_id_src: int, seq_id_dst: int, p0: int, p1: int) -> None:
        self._ctx.kv_cache_seq_cp(seq_id_src, seq_id_dst, p0, p1)

    def kv_cache_seq_keep(self, seq_id: int) -> None:
        self._ctx.kv_cache_seq_keep(seq_id)

    def kv_cache_seq_shift(self, seq_id: int, p0: int, p1: int, shift: int) -> None:
        self._ctx.kv_cache_seq_add(seq_id, p0, p1, shift)

    def get_state_size(self) -> int:
        return int(lib.llama_state_get_size(self._ctx.ptr))

    def decode(self, batch: "LlamaBatch") -> None:
        """Evaluates a batch; a non-zero return of ``llama_decode`` raises ``RuntimeError``."""
        self._ctx.decode(_core_batch(batch))

    def encode(self, batch: "LlamaBatch") -> None:
        self._ctx.encode(_core_batch(batch))

    def set_n_threads(self, n_threads: int, n_threads_batch: int) -> None:
        self._ctx.set_n_threads(n_threads, n_threads_batch)

    def get_logits(self) -> npt.NDArray[np.single]:
        """The logits of every output of the last decode, shape ``(n_outputs, n_vocab)``."""
        return self._ctx.get_logits()

    def get_logits_ith(self, i: int) -> npt.NDArray[np.single]:
        return self._ctx.get_logits_ith(i)

    def get_embeddings(self) -> npt.NDArray[np.single]:
        """The embeddings of every output of the last decode, shape ``(n_outputs, n_embd)``."""
        n_out = self._ctx._n_outputs
        p = lib.llama_get_embeddings(self._ctx.ptr)
        if p == ffi.NULL or n_out == 0:
            raise ValueError("no embeddings: create the context with embeddings=True and decode a batch with outputs")
        n_embd = self._ctx.n_embd
        return np.frombuffer(ffi.buffer(p, 4 * n_out * n_embd), dtype=np.float32).reshape(n_out, n_embd)

    def get_embeddings_ith(self, i: int) -> npt.NDArray[np.single]:
        return self._ctx.get_embeddings_ith(i)

    def get_embeddings_seq(self, seq_id: int) -> npt.NDArray[np.single]:
        return self._ctx.get_embeddings_seq(seq_id)

    def reset_timings(self) -> None:
        self._ctx.reset_perf_data()

    def print_timings(self) -> None:
        self._ctx.print_perf_data()

    @staticmethod
    def default_params() -> _context.LlamaContextParams:
        return llama_context_default_params()


class LlamaBatch:
    """A ``llama_batch`` of up to ``n_tokens`` tokens over ``n_seq_max`` sequences."""

    def __init__(self, *, n_tokens: int, embd: int, n_seq_max: int, verbose: bool = True):
        self._n_tokens = n_tokens
        self.embd = embd
        self.n_seq_max = n_seq_max
        self.verbose = verbose
        self.sampler = None
        self._batch = _batch.LlamaBatch(n_tokens, embd, n_seq_max)

    @property
    def batch(self):
        """The native ``llama_batch`` (cffi), ``None`` once closed."""
        return None if self._batch._closed else self._batch._b[0]

    def close(self) -> None:
        self._batch.close()

    def n_tokens(self) -> int:
        return self._batch.n_tokens

    def reset(self) -> None:
        self._batch.clear()

    def set_batch(self, batch: Sequence[int], n_past: int, logits_all: bool) -> None:
        """Replaces the contents with ``batch`` at positions ``n_past...`` of sequence 0; logits
        for every token with ``logits_all``, else for the last."""
        b = self._batch
        b.clear()
        b.add_sequence(list(batch), n_past, 0, logits_last=True)
        if logits_all:
            for i in range(b.n_tokens):
                b.set_logits(i, True)

    def add_sequence(self, batch: Sequence[int], seq_id: int, logits_all: bool) -> None:
        """Appends ``batch`` as sequence ``seq_id`` from position 0."""
        b = self._batch
        start = b.n_tokens
        b.add_sequence(list(batch), 0, seq_id, logits_last=True)
        if logits_all:
            for i in range(start, b.n_tokens):
                b.set_logits(i, True)


def _core_batch(batch: LlamaBatch) -> _batch.LlamaBatch:
    if isinstance(batch, LlamaBatch):
        return batch._batch
    if isinstance(batch, _batch.LlamaBatch):
        return batch
    raise TypeError(f"batch must be a llama_cpp._internals.LlamaBatch, got {type(batch).__name__}")


class LlamaTokenDataArray:
    """Candidates for sampling: a numpy record array (``id``, ``logit``, ``p``) and the native
    ``llama_token_data_array`` over it (``candidates``, cffi)."""

    def __init__(self, *, n_vocab: int):
        self.n_vocab = n_vocab
        self.candidates_data = np.recarray(
            (n_vocab,), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True))
        self.candidates = ffi.new("llama_token_data_array *")
        self.candidates.data = ffi.cast("llama_token_data *", ffi.from_buffer(self.candidates_data))
        self.candidates.size = n_vocab
        self.candidates.selected = -1
        self.candidates.sorted = False
        self.default_candidates_data_id = np.arange(n_vocab, dtype=np.intc)
        self.default_candidates_data_p = np.zeros(n_vocab, dtype=np.single)
        self.sampler = None

    def copy_logits(self, logits: npt.NDArray[np.single]) -> None:
        self.candidates_data.id[:] = self.default_candidates_data_id
        self.candidates_data.logit[:] = logits
        self.candidates_data.p[:] = self.default_candidates_data_p
        self.candidates.sorted = False
        self.candidates.size = self.n_vocab


def normalize_embedding(embedding: Sequence[float]) -> List[float]:
    """``embedding`` scaled to unit length (unchanged when it is all zeros)."""
    norm = float(np.linalg.norm(embedding))
    if norm == 0.0:
        return list(embedding)
    return [v / norm for v in embedding]


@dataclass
class LlamaSamplingParams:
    """Sampling settings as llama.cpp's ``common_params_sampling`` had them."""

    n_prev: int = 64
    n_probs: int = 0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    tfs_z: float = 1.00
    typical_p: float = 1.00
    temp: float = 0.80
    penalty_last_n: int = 64
    penalty_repeat: float = 1.0
    penalty_freq: float = 0.00
    penalty_present: float = 0.00
    mirostat: int = 0
    mirostat_tau: float = 5.00
    mirostat_eta: float = 0.10
    penalize_nl: bool = True
    grammar: str = ""
    cfg_negative_prompt: str = ""
    cfg_scale: float = 1.00
    logit_bias: Dict[int, float] = field(default_factory=dict)


@dataclass
class LlamaSamplingContext:
    """The tokens chosen so far for one sequence (sample with a :class:`LlamaSampler`)."""

    params: LlamaSamplingParams = field(default_factory=LlamaSamplingParams)
    mirostat_mu: float = 0.0
    grammar: Optional[LlamaGrammar] = None
    prev: List[int] = field(default_factory=list)
    cur: List[object] = field(default_factory=list)

    def reset(self) -> None:
        self.prev = []
        self.cur = []

    def cp(self) -> "LlamaSamplingContext":
        return LlamaSamplingContext(params=self.params, mirostat_mu=self.mirostat_mu, grammar=self.grammar,
                                    prev=self.prev.copy(), cur=self.cur.copy())

    def last(self) -> Optional[int]:
        return self.prev[-1] if self.prev else None

    def prev_str(self, ctx_main: LlamaContext, n: int) -> str:
        return ctx_main.model.detokenize(self.prev[-n:]).decode("utf-8")

    def accept(self, ctx_main: LlamaContext, id: int, apply_grammar: bool) -> None:
        self.prev.append(id)


class LlamaSampler:
    """A sampler chain; add samplers in order, then ``sample(ctx, idx)`` (which also accepts the token)."""

    def __init__(self) -> None:
        self._sampler = _sampler.LlamaSampler()
        self.custom_samplers: List[object] = []

    @property
    def sampler(self):
        """The native ``llama_sampler *`` chain (cffi), ``None`` once closed."""
        return None if self._sampler.closed else self._sampler.ptr

    def close(self) -> None:
        self._sampler.close()

    def add_greedy(self) -> None:
        self._sampler.add_greedy()

    def add_dist(self, seed: int) -> None:
        self._sampler.add_dist(seed)

    def add_softmax(self) -> None:
        warnings.warn("add_softmax is deprecated; llama_sampler_init_dist now samples directly from logits",
                      DeprecationWarning, stacklevel=2)

    def add_top_k(self, k: int) -> None:
        self._sampler.add_top_k(k)

    def add_top_p(self, p: float, min_keep: int = 1) -> None:
        self._sampler.add_top_p(p, min_keep)

    def add_min_p(self, p: float, min_keep: int = 1) -> None:
        self._sampler.add_min_p(p, min_keep)

    def add_typical(self, p: float, min_keep: int = 1) -> None:
        self._sampler.add_typical(p, min_keep)

    def add_temp(self, temp: float) -> None:
        self._sampler.add_temp(temp)

    def add_temp_ext(self, t: float, delta: float, exponent: float) -> None:
        self._sampler.add_temp_ext(t, delta, exponent)

    def add_xtc(self, p: float, t: float, min_keep: int, seed: int) -> None:
        self._sampler.add_xtc(p, t, min_keep, seed)

    def add_top_n_sigma(self, n: float) -> None:
        self._sampler.add_top_n_sigma(n)

    def add_mirostat(self, n_vocab: int, seed: int, tau: float, eta: float, m: int) -> None:
        self._sampler.add_mirostat(n_vocab, seed, tau, eta, m)

    def add_mirostat_v2(self, seed: int, tau: float, eta: float) -> None:
        self._sampler.add_mirostat_v2(seed, tau, eta)

    def add_grammar(self, model: LlamaModel, grammar: LlamaGrammar) -> None:
        self._sampler.add_grammar(model._vocab, grammar._grammar, grammar._root)

    def add_penalties(self, n_vocab: int, penalty_last_n: int, penalty_repeat: float, penalty_freq: float,
                      penalty_present: float) -> None:
        self._sampler.add_penalties(penalty_last_n, penalty_repeat, penalty_freq, penalty_present)

    def add_dry(self, model: LlamaModel, dry_multiplier: float, dry_base: float, dry_allowed_length: int,
                dry_penalty_last_n: int, seq_breakers: List[str]) -> None:
        self._sampler.add_dry(dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, seq_breakers,
                              vocab=model._vocab)

    def add_logit_bias(self, n_vocab: int, logit_bias: Dict[int, float]) -> None:
        self._sampler.add_logit_bias(n_vocab, logit_bias)

    def add_infill(self, model: LlamaModel) -> None:
        self._sampler.add_infill(model._vocab)

    def get_seed(self) -> int:
        return self._sampler.seed

    def sample(self, ctx: LlamaContext, idx: int = -1) -> int:
        """Samples from the output at batch index ``idx`` of the last decode and accepts the token."""
        if not isinstance(ctx, LlamaContext):
            raise TypeError(f"ctx must be a llama_cpp._internals.LlamaContext, got {type(ctx).__name__}")
        return self._sampler.sample(ctx._ctx, idx)

    def accept(self, token: int) -> None:
        self._sampler.accept(token)

    def reset(self) -> None:
        self._sampler.reset()
