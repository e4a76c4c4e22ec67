"""LlamaBatch: the tokens (with positions and sequence ids) of one llama_decode call."""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

from .._lazy_numpy import np

from .._errors import ClosedError
from .._ffi import ffi
from ._backend import lib
from ._handle import guarded

__all__ = ["LlamaBatch", "llama_batch_get_one"]


class LlamaBatch:
    """A batch of up to ``n_tokens`` tokens over up to ``n_seq_max`` sequences.

    ``add`` checks its arguments in O(1), so a bad position or sequence id raises ``ValueError``
    here instead of reaching llama.cpp. Token ids are checked against the vocabulary when the
    batch is decoded. ``add_sequence`` fills many tokens at once through numpy views. Closing it
    from another thread waits for a decode that reads it.
    """

    _busy = threading.RLock()  # per batch once constructed
    _closed = True

    def __init__(self, n_tokens: int = 512, embd: int = 0, n_seq_max: int = 1):
        for name, v, lo in (("n_tokens", n_tokens, 1), ("embd", embd, 0), ("n_seq_max", n_seq_max, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if n_tokens > 1 << 24 or n_seq_max > 1 << 16:
            raise ValueError(f"batch too large (n_tokens={n_tokens}, n_seq_max={n_seq_max})")
        self._busy = threading.RLock()
        self.capacity = int(n_tokens)
        self.embd = int(embd)
        self.n_seq_max = int(n_seq_max)
        self._b = ffi.new("llama_batch *")
        self._b[0] = lib.llama_batch_init(self.capacity, self.embd, self.n_seq_max)
        self._auto_pos = False  # llama_batch_get_one-style: positions tracked by llama.cpp
        self._b_auto = None
        b = self._b
        n = self.capacity
        if self.embd == 0:
            self._tokens = np.frombuffer(ffi.buffer(b.token, 4 * n), dtype=np.int32)
        else:
            self._tokens = None
        self._pos = np.frombuffer(ffi.buffer(b.pos, 4 * n), dtype=np.int32)
        self._n_seq = np.frombuffer(ffi.buffer(b.n_seq_id, 4 * n), dtype=np.int32)
        self._logits = np.frombuffer(ffi.buffer(b.logits, n), dtype=np.int8)
        self._seq_id = b.seq_id
        self._closed = False

    # -- filling ---------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return int(self._b.n_tokens)

    def __len__(self) -> int:
        return int(self._b.n_tokens)

    @guarded
    def clear(self) -> None:
        """Empties the batch (keeps its memory)."""
        self._check_open()
        self._b.n_tokens = 0

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("LlamaBatch is closed")

    @guarded
    def add(self, token: int, pos: int, seq_ids: Sequence[int] | int = (0,), logits: bool = False) -> None:
        """Appends one token at position ``pos`` of the given sequences."""
        self._check_open()
        b = self._b
        i = b.n_tokens
        if i >= self.capacity:
            raise ValueError(f"batch is full ({self.capacity} tokens)")
        if self.embd:
            raise ValueError("this batch holds embeddings; use add_embedding")
        if pos < 0:
            raise ValueError(f"position must be >= 0, got {pos}")
        if isinstance(seq_ids, (int, np.integer)):
            seq_ids = (seq_ids,)
        n_seq = len(seq_ids)
        if not 1 <= n_seq <= self.n_seq_max:
            raise ValueError(f"a token needs 1..{self.n_seq_max} sequence ids, got {n_seq}")
        row = self._seq_id[i]
        for j, s in enumerate(seq_ids):
            if not 0 <= s < self.n_seq_max:
                raise ValueError(f"sequence id {s} out of range 0..{self.n_seq_max - 1}")
            row[j] = s
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = n_seq
        b.logits[i] = 1 if logits else 0
        b.n_tokens = i + 1

    @guarded
    def add_sequence(self, tokens: Sequence[int] | np.ndarray, pos0: int = 0, seq_id: int = 0,
                     logits_last: bool = True) -> None:
        """Appends ``tokens`` at positions ``pos0, pos0+1, ...`` of one sequence."""
        self._check_open()
        arr = np.asarray(tokens, dtype=np.int32)
        n = len(arr)
        i = self._b.n_tokens
        if i + n > self.capacity:
            raise ValueError(f"{n} tokens do not fit: batch holds {i} of {self.capacity}")
        if pos0 < 0:
            raise ValueError(f"position must be >= 0, got {pos0}")
        if not 0 <= seq_id < self.n_seq_max:
            raise ValueError(f"sequence id {seq_id} out of range 0..{self.n_seq_max - 1}")
        if self._tokens is None:
            raise ValueError("this batch holds embeddings, not tokens")
        self._tokens[i:i + n] = arr
        self._pos[i:i + n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        self._n_seq[i:i + n] = 1
        self._logits[i:i + n] = 0
        if n and logits_last:
            self._logits[i + n - 1] = 1
        seq = self._seq_id
        for k in range(i, i + n):
            seq[k][0] = seq_id
        self._b.n_tokens = i + n

    @guarded
    def set_logits(self, index: int, value: bool = True) -> None:
        """Requests (or not) the output of the token at ``index``."""
        if not -self.n_tokens <= index < self.n_tokens:
            raise IndexError(f"batch index {index} out of range ({self.n_tokens} tokens)")
        self._logits[index % self.n_tokens] = 1 if value else 0

    # -- views -----------------------------------------------------------------------------
    def tokens(self) -> np.ndarray:
        return self._tokens[: self.n_tokens].copy() if self._tokens is not None else np.zeros(0, np.int32)

    def positions(self) -> np.ndarray:
        return self._pos[: self.n_tokens].copy()

    def output_flags(self) -> np.ndarray:
        return self._logits[: self.n_tokens].copy()

    def _auto_value(self):
        """This batch as llama_batch_get_one makes it: no positions, llama.cpp tracks them."""
        auto = self._b_auto
        auto.n_tokens = self._b.n_tokens
        return auto[0]

    @guarded
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._tokens = self._pos = self._n_seq = self._logits = None
            lib.llama_batch_free(self._b[0])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "LlamaBatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LlamaBatch {self.n_tokens}/{self.capacity} tokens, n_seq_max={self.n_seq_max}>"


def llama_batch_get_one(tokens: Iterable[int], pos_offset: int = 0) -> LlamaBatch:
    """A single-sequence batch of ``tokens`` with the last token's logits requested.

    With ``pos_offset=0`` positions continue from what sequence 0 already holds in the context
    (llama.cpp's ``llama_batch_get_one`` semantics); otherwise they start at ``pos_offset``.
    """
    arr = np.asarray(list(tokens) if not isinstance(tokens, (list, tuple, np.ndarray)) else tokens)
    if arr.size == 0:
        raise ValueError("llama_batch_get_one needs at least one token")
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise TypeError("tokens must be a flat sequence of ints")
    if pos_offset < 0:
        raise ValueError(f"pos_offset must be >= 0, got {pos_offset}")
    batch = LlamaBatch(len(arr), 0, 1)
    batch.add_sequence(arr, pos_offset, 0, logits_last=True)
    if pos_offset == 0:
        auto = ffi.new("llama_batch *")
        auto.token = batch._b.token
        batch._b_auto = auto
        batch._auto_pos = True
    return batch
