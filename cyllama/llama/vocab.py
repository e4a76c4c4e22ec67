"""LlamaVocab: tokenization, detokenization and special tokens of a model."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

from .._lazy_numpy import np

from .._ffi import ffi
from ._backend import lib

if TYPE_CHECKING:
    from .model import LlamaModel

__all__ = ["LlamaVocab", "VOCAB_TYPES"]

VOCAB_TYPES = {0: "none", 1: "spm", 2: "bpe", 3: "wpm", 4: "ugm", 5: "rwkv", 6: "plamo2", 7: "test"}
_INT32_MAX = 2**31 - 1
F = TypeVar("F", bound=Callable[..., Any])


def _model_locked(method: F) -> F:
    """Holds the model's lock for the call: closing the model from another thread waits for it,
    and the shared piece buffer is used by one thread at a time."""

    @functools.wraps(method)
    def wrapper(self: "LlamaVocab", *args: Any, **kwargs: Any) -> Any:
        with self.model._busy:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class LlamaVocab:
    """The vocabulary of a :class:`LlamaModel`; valid while the model is open."""

    __slots__ = ("model", "_n_vocab", "_piece_buf", "__weakref__")

    def __init__(self, model: "LlamaModel"):
        self.model = model
        self._n_vocab = int(lib.llama_vocab_n_tokens(model._vocab_ptr))
        self._piece_buf = ffi.new("char[256]")

    @property
    def ptr(self):
        self.model.ptr  # raises ClosedError when the model is closed
        return self.model._vocab_ptr

    # -- sizes and kinds -------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    n_tokens = n_vocab

    def __len__(self) -> int:
        return self._n_vocab

    @property
    @_model_locked
    def vocab_type(self) -> str:
        return VOCAB_TYPES.get(int(lib.llama_vocab_type(self.ptr)), "unknown")

    def check_token(self, token: int) -> int:
        """Raises ValueError unless ``token`` is a valid id of this vocabulary."""
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool):
            raise TypeError(f"token ids must be ints, got {type(token).__name__}")
        if not 0 <= token < self._n_vocab:
            raise ValueError(f"token id {token} is out of range for a vocabulary of {self._n_vocab}")
        return int(token)

    def check_tokens(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Validates a sequence of ids at once; returns them as a contiguous int32 array."""
        try:
            arr = np.asarray(tokens)
        except (TypeError, ValueError):
            raise TypeError("tokens must be a sequence of ints") from None
        if arr.size == 0:
            return np.zeros(0, dtype=np.int32)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TypeError(f"tokens must be a flat sequence of ints, got {arr.dtype} shape {arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self._n_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {self._n_vocab}")
        return np.ascontiguousarray(arr, dtype=np.int32)

    # -- special tokens --------------------------------------------------------------------
    @_model_locked
    def _special(self, fn) -> int:
        return int(fn(self.ptr))

    bos = property(lambda self: self._special(lib.llama_vocab_bos), doc="beginning-of-sequence token")
    eos = property(lambda self: self._special(lib.llama_vocab_eos), doc="end-of-sequence token")
    eot = property(lambda self: self._special(lib.llama_vocab_eot), doc="end-of-turn token")
    sep = property(lambda self: self._special(lib.llama_vocab_sep), doc="separator token")
    nl = property(lambda self: self._special(lib.llama_vocab_nl), doc="newline token")
    pad = property(lambda self: self._special(lib.llama_vocab_pad), doc="padding token")
    cls = property(lambda self: self._special(lib.llama_vocab_cls), doc="classification token")
    mask = property(lambda self: self._special(lib.llama_vocab_mask), doc="mask token")
    fim_pre = property(lambda self: self._special(lib.llama_vocab_fim_pre))
    fim_suf = property(lambda self: self._special(lib.llama_vocab_fim_suf))
    fim_mid = property(lambda self: self._special(lib.llama_vocab_fim_mid))

    @property
    @_model_locked
    def add_bos(self) -> bool:
        """Whether the model wants a BOS token at the start of a prompt."""
        return bool(lib.llama_vocab_get_add_bos(self.ptr))

    @property
    @_model_locked
    def add_eos(self) -> bool:
        return bool(lib.llama_vocab_get_add_eos(self.ptr))

    @_model_locked
    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        return bool(lib.llama_vocab_is_eog(self.ptr, self.check_token(token)))

    @_model_locked
    def is_control(self, token: int) -> bool:
        return bool(lib.llama_vocab_is_control(self.ptr, self.check_token(token)))

    @_model_locked
    def get_text(self, token: int) -> str:
        return ffi.string(lib.llama_vocab_get_text(self.ptr, self.check_token(token))).decode("utf-8", "replace")

    token_get_text = get_text

    @_model_locked
    def get_score(self, token: int) -> float:
        return float(lib.llama_vocab_get_score(self.ptr, self.check_token(token)))

    @_model_locked
    def get_attr(self, token: int) -> int:
        """Token attribute bit flags (``LLAMA_TOKEN_ATTR_*``)."""
        return int(lib.llama_vocab_get_attr(self.ptr, self.check_token(token)))

    # -- tokenization ----------------------------------------------------------------------
    @_model_locked
    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text to token ids. ``add_special`` adds BOS/EOS as the model wants; ``parse_special``
        turns special-token text such as ``<|im_start|>`` into its id."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if len(data) > _INT32_MAX // 2:
            raise ValueError(f"text too long to tokenize ({len(data)} bytes)")
        ptr = self.ptr
        cap = len(data) + 8
        buf = ffi.new("llama_token[]", cap)
        n = lib.llama_tokenize(ptr, data, len(data), buf, cap, bool(add_special), bool(parse_special))
        if n < 0:
            if n == -(2**31):
                raise ValueError("tokenization overflowed int32")
            cap = -n
            buf = ffi.new("llama_token[]", cap)
            n = lib.llama_tokenize(ptr, data, len(data), buf, cap, bool(add_special), bool(parse_special))
            if n < 0:
                raise RuntimeError(f"llama_tokenize failed ({n})")
        return ffi.unpack(buf, n)

    @_model_locked
    def token_to_bytes(self, token: int, special: bool = True, lstrip: int = 0) -> bytes:
        """The raw bytes of one token (may be part of a multi-byte UTF-8 character)."""
        ptr = self.ptr
        token = self.check_token(token)
        buf = self._piece_buf
        n = lib.llama_token_to_piece(ptr, token, buf, 256, lstrip, bool(special))
        if n < 0:
            big = ffi.new("char[]", -n)
            n = lib.llama_token_to_piece(ptr, token, big, -n, lstrip, bool(special))
            return ffi.unpack(big, n)
        return ffi.unpack(buf, n)

    def token_to_piece(self, token: int, lstrip: int = 0, special: bool = False) -> str:
        """The text of one token (invalid partial UTF-8 is replaced)."""
        return self.token_to_bytes(token, special=special, lstrip=lstrip).decode("utf-8", "replace")

    @_model_locked
    def detokenize_bytes(self, tokens: Iterable[int], remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        arr = self.check_tokens(list(tokens) if not isinstance(tokens, (list, tuple, np.ndarray)) else tokens)
        ptr = self.ptr
        n_tok = len(arr)
        if n_tok == 0:
            return b""
        toks = ffi.from_buffer("llama_token[]", arr)
        cap = max(64, n_tok * 8)
        buf = ffi.new("char[]", cap)
        n = lib.llama_detokenize(ptr, toks, n_tok, buf, cap, bool(remove_special), bool(unparse_special))
        if n < 0:
            cap = -n
            buf = ffi.new("char[]", cap)
            n = lib.llama_detokenize(ptr, toks, n_tok, buf, cap, bool(remove_special), bool(unparse_special))
            if n < 0:
                raise RuntimeError(f"llama_detokenize failed ({n})")
        return ffi.unpack(buf, n)

    def detokenize(self, tokens: Iterable[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """Token ids to text."""
        return self.detokenize_bytes(tokens, remove_special, unparse_special).decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<LlamaVocab {self.vocab_type} n_vocab={self._n_vocab}>"
