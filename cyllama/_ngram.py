"""``NgramCache``: n-gram statistics for lookup decoding, in llama.cpp's format.

A cache maps an n-gram (1 to 4 tokens) to the tokens that followed it and how often. It drafts
continuations for speculative decoding the way llama.cpp's ``common_ngram_cache_draft`` does:
token by token, from the longest n-gram whose most frequent continuation is frequent enough.
Files are llama.cpp's lookup-cache files (``llama-lookup-create -lcs``, ``llama-lookup -lcd``):
records of a 4 x int32 n-gram (unused slots -1), an int32 count of entries, then that many
(int32 token, int32 count) pairs, little-endian, with no header. Ties between equally frequent
continuations go to the one seen first (llama.cpp's follow its hash map's order).
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["NgramCache", "NGRAM_MIN", "NGRAM_MAX", "NGRAM_STATIC"]

NGRAM_MIN = 1
NGRAM_MAX = 4  # llama.cpp's LLAMA_NGRAM_MAX: the key is always 4 slots wide
NGRAM_STATIC = 2  # the n-gram size of llama-lookup-create's static caches

# llama.cpp's draft thresholds, one per n-gram size from ngram_min up: the minimum number of observations
# of an n-gram, and the share (percent) its most frequent continuation must have
_MIN_SAMPLES_LAX = (2, 2, 1, 1)
_MIN_PERCENT_LAX = (66, 50, 50, 50)
_MIN_SAMPLES_STRICT = (4, 3, 2, 2)
_MIN_PERCENT_STRICT = (75, 66, 66, 66)

Key = Tuple[int, int, int, int]
_PAD = (-1, -1, -1, -1)
_HEAD = struct.Struct("<4ii")
_BIG_ENDIAN = sys.byteorder == "big"


def _key(tokens: Sequence[int], start: int, size: int) -> Key:
    return (*tokens[start:start + size], *_PAD[size:])  # type: ignore[return-value]


class NgramCache:
    """Counts of the tokens that follow each n-gram; drafts likely continuations.

    >>> cache = NgramCache()
    >>> cache.update([1, 2, 3, 4, 5, 6, 7, 8], ngram_min=2, ngram_max=4)
    >>> cache.draft([1, 2, 3], n_draft=16)
    [4, 5, 6, 7, 8]
    """

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: Dict[Key, Dict[int, int]] = {}

    # -- learning ----------------------------------------------------------------------------
    def update(self, tokens: Sequence[int], ngram_min: int = NGRAM_MIN, ngram_max: int = NGRAM_MAX,
               n_new: Optional[int] = None) -> None:
        """Counts, for every n-gram of ``ngram_min``..``ngram_max`` tokens in ``tokens``, the token
        that follows it. ``n_new``: only the last ``n_new`` tokens are new since the previous
        update of a growing sequence (n-grams ending before them were counted already)."""
        _check_sizes(ngram_min, ngram_max)
        tokens = _as_tokens(tokens)
        n = len(tokens)
        n_new = n if n_new is None else int(n_new)
        if not 0 <= n_new <= n:
            raise ValueError(f"n_new must be between 0 and len(tokens) ({n}), got {n_new}")
        table = self._table
        for size in range(ngram_min, ngram_max + 1):
            for i in range(max(n - n_new, size), n):
                key = _key(tokens, i - size, size)
                part = table.get(key)
                if part is None:
                    table[key] = {tokens[i]: 1}
                else:
                    tok = tokens[i]
                    part[tok] = part.get(tok, 0) + 1

    def merge(self, other: "NgramCache") -> None:
        """Adds ``other``'s counts to this cache."""
        if not isinstance(other, NgramCache):
            raise TypeError(f"can only merge an NgramCache, got {type(other).__name__}")
        table = self._table
        for key, part in other._table.items():
            mine = table.get(key)
            if mine is None:
                table[key] = dict(part)
            else:
                for tok, count in part.items():
                    mine[tok] = mine.get(tok, 0) + count

    def clear(self) -> None:
        self._table.clear()

    # -- drafting ----------------------------------------------------------------------------
    def draft(self, input_tokens: Sequence[int], n_draft: int = 16, ngram_min: int = NGRAM_MIN,
              ngram_max: int = NGRAM_MAX) -> List[int]:
        """Up to ``n_draft`` tokens likely to follow ``input_tokens`` (possibly none), drafted from
        this cache's n-grams as llama.cpp's lookup decoding drafts from its context cache."""
        if isinstance(n_draft, bool) or not isinstance(n_draft, int) or n_draft < 0:
            raise ValueError(f"n_draft must be an int >= 0, got {n_draft!r}")
        _check_sizes(ngram_min, ngram_max)
        return draft_tokens(_as_tokens(input_tokens), n_draft, ngram_min, ngram_max, self, None, None)

    def continuations(self, ngram: Sequence[int]) -> Dict[int, int]:
        """{next token: count} for an n-gram of 1 to 4 tokens (empty when never seen)."""
        size = len(ngram)
        if not NGRAM_MIN <= size <= NGRAM_MAX:
            raise ValueError(f"an n-gram has {NGRAM_MIN} to {NGRAM_MAX} tokens, got {size}")
        return dict(self._table.get(_key(list(ngram), 0, size), {}))

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the cache in llama.cpp's lookup-cache format (loads in ``llama-lookup``)."""
        out = bytearray()
        for key, part in self._table.items():
            out += _HEAD.pack(*key, len(part))
            flat = array("i", (x for tok_count in part.items() for x in tok_count))
            if _BIG_ENDIAN:  # the file is little-endian
                flat.byteswap()
            out += flat.tobytes()
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as f:
            f.write(out)
        os.replace(tmp, path)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "NgramCache":
        """Loads a lookup-cache file (ours, or one ``llama-lookup-create`` wrote). Raises
        ``FileNotFoundError`` or ``ValueError`` (naming the offset) for a file that is not one."""
        data = memoryview(open(path, "rb").read())
        cache = cls()
        table = cache._table
        off, n = 0, len(data)
        while off < n:
            if off + _HEAD.size > n:
                raise ValueError(f"{os.fspath(path)}: truncated record at byte {off} (not a lookup cache?)")
            *key, count = _HEAD.unpack_from(data, off)
            off += _HEAD.size
            if count <= 0 or off + 8 * count > n or any(t < -1 for t in key) or key[0] < 0:
                raise ValueError(f"{os.fspath(path)}: bad record at byte {off - _HEAD.size} (not a lookup cache?)")
            pairs = array("i", data[off:off + 8 * count].tobytes())
            if _BIG_ENDIAN:  # the file is little-endian
                pairs.byteswap()
            off += 8 * count
            part: Dict[int, int] = {}
            for tok, c in zip(pairs[0::2], pairs[1::2]):
                if c <= 0:
                    raise ValueError(f"{os.fspath(path)}: bad count {c} near byte {off} (not a lookup cache?)")
                part.setdefault(tok, c)  # llama.cpp keeps the first of duplicate entries
            table.setdefault(tuple(key), part)  # type: ignore[arg-type]
        return cache

    # -- container protocol ----------------------------------------------------------------
    def __len__(self) -> int:
        """The number of distinct n-grams."""
        return len(self._table)

    def __iter__(self) -> Iterator[Tuple[Tuple[int, ...], Dict[int, int]]]:
        """(n-gram, {next token: count}) pairs; the n-gram without its padding."""
        for key, part in self._table.items():
            yield tuple(t for t in key if t != -1), dict(part)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NgramCache) and self._table == other._table

    def __repr__(self) -> str:
        return f"<NgramCache {len(self._table)} n-grams>"


def _check_sizes(ngram_min: int, ngram_max: int) -> None:
    for name, v in (("ngram_min", ngram_min), ("ngram_max", ngram_max)):
        if isinstance(v, bool) or not isinstance(v, int) or not NGRAM_MIN <= v <= NGRAM_MAX:
            raise ValueError(f"{name} must be an int from {NGRAM_MIN} to {NGRAM_MAX}, got {v!r}")
    if ngram_min > ngram_max:
        raise ValueError(f"ngram_min ({ngram_min}) must be <= ngram_max ({ngram_max})")


def _as_tokens(tokens: Iterable[int]) -> List[int]:
    out = []
    for t in tokens:
        if isinstance(t, bool):
            raise TypeError("tokens must be ints")
        out.append(int(t))
    return out


def _try_primary(cache: NgramCache, keys: List[Optional[Key]], static: Dict[int, int],
                 min_samples: Tuple[int, ...], min_percent: Tuple[int, ...]) -> int:
    table = cache._table
    for i in range(len(keys) - 1, -1, -1):  # the longest n-gram first
        key = keys[i]
        part = table.get(key) if key is not None else None
        if part is None:
            continue
        best, best_primary, best_static, total = -1, 0, 0, 0
        for tok, count in part.items():
            weight = 100 * static[tok] if tok in static else 1
            if count * weight > best_primary * best_static:
                best, best_primary, best_static = tok, count, weight
            total += count
        if total < min_samples[i] or 100 * best_primary < min_percent[i] * total:
            continue
        return best
    return -1


def _try_static(part: Dict[int, int]) -> int:
    best, best_count, total = -1, 0, 0
    for tok, count in part.items():
        if count > best_count:
            best, best_count = tok, count
        total += count
    if total < _MIN_SAMPLES_LAX[NGRAM_STATIC - 1] or 100 * best_count < _MIN_PERCENT_LAX[NGRAM_STATIC - 1] * total:
        return -1
    return best


def draft_tokens(inp: Sequence[int], n_draft: int, ngram_min: int, ngram_max: int, context: Optional[NgramCache],
                 dynamic: Optional[NgramCache], static: Optional[NgramCache]) -> List[int]:
    """llama.cpp's ``common_ngram_cache_draft``: up to ``n_draft`` tokens to follow ``inp`` (whose
    last token is the one just sampled), from the context cache (lax thresholds), else the dynamic
    cache (strict), else the static 2-gram cache."""
    if len(inp) < NGRAM_STATIC or n_draft <= 0:
        return []
    window = list(inp[-NGRAM_MAX:])  # the keys only ever need the last NGRAM_MAX tokens
    out: List[int] = []
    # as in llama.cpp, the thresholds are indexed by position in ``keys`` (size - ngram_min)
    lax, strict = (_MIN_SAMPLES_LAX, _MIN_PERCENT_LAX), (_MIN_SAMPLES_STRICT, _MIN_PERCENT_STRICT)
    static_table = static._table if static is not None else {}
    while len(out) < n_draft:
        n = len(window)
        static_part = static_table.get(_key(window, n - NGRAM_STATIC, NGRAM_STATIC), {})
        keys = [_key(window, n - size, size) if size <= n else None for size in range(ngram_min, ngram_max + 1)]
        tok = _try_primary(context, keys, static_part, *lax) if context is not None else -1
        if tok == -1 and dynamic is not None:
            tok = _try_primary(dynamic, keys, static_part, *strict)
        if tok == -1 and static_part:
            tok = _try_static(static_part)
        if tok == -1:
            break
        out.append(tok)
        window.append(tok)
        if len(window) > 2 * NGRAM_MAX:
            del window[:NGRAM_MAX]
    return out
