"""Prompt caches (llama-cpp-python's API): saved :class:`LlamaState` snapshots keyed by tokens.

With ``llm.set_cache(LlamaRAMCache())`` every completion saves the state after it, and a later
prompt that shares a longer prefix with a cached entry than with what the context holds starts
from that entry. ``LlamaDiskCache`` keeps the entries in a folder (numpy ``.npz`` files, no
pickle, so opening a cache folder never runs code).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ._common import LlamaState, longest_token_prefix

__all__ = ["BaseLlamaCache", "LlamaRAMCache", "LlamaCache", "LlamaDiskCache"]


class BaseLlamaCache(ABC):
    """Base cache class for a llama.cpp model."""

    def __init__(self, capacity_bytes: int = (2 << 30)):
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be a non-negative int, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes

    @property
    @abstractmethod
    def cache_size(self) -> int:
        raise NotImplementedError

    def _find_longest_prefix_key(self, key: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
        best_len, best = 0, None
        for k in self._keys():
            n = longest_token_prefix(k, key)
            if n > best_len:
                best_len, best = n, k
        return best

    def _keys(self):  # pragma: no cover - overridden
        return ()

    @abstractmethod
    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        raise NotImplementedError

    @abstractmethod
    def __contains__(self, key: Sequence[int]) -> bool:
        raise NotImplementedError

    @abstractmethod
    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        raise NotImplementedError


class LlamaRAMCache(BaseLlamaCache):
    """Cache in RAM, least recently used entries evicted beyond ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int = (2 << 30)):
        super().__init__(capacity_bytes)
        self.cache_state: "OrderedDict[Tuple[int, ...], LlamaState]" = OrderedDict()

    @property
    def cache_size(self) -> int:
        return sum(state.llama_state_size for state in self.cache_state.values())

    def _keys(self):
        return self.cache_state.keys()

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        k = self._find_longest_prefix_key(tuple(int(t) for t in key))
        if k is None:
            raise KeyError("Key not found")
        self.cache_state.move_to_end(k)
        return self.cache_state[k]

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_longest_prefix_key(tuple(int(t) for t in key)) is not None

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        k = tuple(int(t) for t in key)
        self.cache_state.pop(k, None)
        self.cache_state[k] = value
        while self.cache_size > self.capacity_bytes and len(self.cache_state) > 0:
            self.cache_state.popitem(last=False)

    def __len__(self) -> int:
        return len(self.cache_state)


# Alias for backwards compatibility
LlamaCache = LlamaRAMCache


class LlamaDiskCache(BaseLlamaCache):
    """Cache in a folder: one ``.npz`` file per entry; oldest entries evicted beyond ``capacity_bytes``."""

    def __init__(self, cache_dir: str = ".cache/llama_cache", capacity_bytes: int = (2 << 30)):
        super().__init__(capacity_bytes)
        self.cache_dir = Path(cache_dir).expanduser()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[Tuple[int, ...], Path] = {}
        for f in sorted(self.cache_dir.glob("*.npz"), key=lambda p: p.stat().st_mtime):
            try:
                with np.load(f, allow_pickle=False) as data:
                    self._index[tuple(int(t) for t in data["key"])] = f
            except Exception:  # not one of ours, or damaged: ignore it
                continue

    @staticmethod
    def _name(key: Tuple[int, ...]) -> str:
        return hashlib.sha256(np.asarray(key, dtype=np.int64).tobytes()).hexdigest()[:32] + ".npz"

    @property
    def cache_size(self) -> int:
        total = 0
        for f in self._index.values():
            try:
                total += f.stat().st_size
            except OSError:
                pass
        return total

    def _keys(self):
        return list(self._index.keys())

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        k = self._find_longest_prefix_key(tuple(int(t) for t in key))
        if k is None:
            raise KeyError("Key not found")
        try:
            with np.load(self._index[k], allow_pickle=False) as d:
                return LlamaState(input_ids=d["input_ids"].astype(np.intc), scores=d["scores"].astype(np.single),
                                  n_tokens=int(d["n_tokens"]), llama_state=d["llama_state"].tobytes(),
                                  llama_state_size=int(d["llama_state"].size), seed=int(d["seed"]))
        except (OSError, KeyError, ValueError):
            self._index.pop(k, None)
            raise KeyError("Key not found") from None

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_longest_prefix_key(tuple(int(t) for t in key)) is not None

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        k = tuple(int(t) for t in key)
        path = self.cache_dir / self._name(k)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, key=np.asarray(k, dtype=np.int32), input_ids=np.asarray(value.input_ids, dtype=np.intc),
                     scores=np.asarray(value.scores, dtype=np.single), n_tokens=np.int64(value.n_tokens),
                     llama_state=np.frombuffer(value.llama_state, dtype=np.uint8), seed=np.int64(value.seed))
        os.replace(tmp, path)
        self._index.pop(k, None)
        self._index[k] = path
        while self.cache_size > self.capacity_bytes and len(self._index) > 0:
            old_key = next(iter(self._index))
            old = self._index.pop(old_key)
            try:
                old.unlink()
            except OSError:
                pass

    def __len__(self) -> int:
        return len(self._index)
