"""Embeddings: texts in, numpy vectors out, many texts per llama_decode call.

An :class:`Embedder` owns its own context (``embeddings=True``, a pooling type, one KV buffer
shared by all sequences) so that it never disturbs a generation context's cache. Texts are packed
into batches of up to ``n_seq_max`` sequences and ``n_batch`` tokens; each sequence is pooled by
llama.cpp. Batched results equal one-by-one results (up to float rounding).
"""

from __future__ import annotations

from typing import Sequence

from ._lazy_numpy import np

from .llama.batch import LlamaBatch
from .llama.context import LlamaContext, LlamaContextParams
from .llama.model import LlamaModel

__all__ = ["Embedder", "POOLING_TYPES", "model_pooling"]

POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
_POOLING_NAMES = {v: k for k, v in POOLING_TYPES.items()}


def model_pooling(model: LlamaModel) -> str:
    """The pooling the model's GGUF names (``<arch>.pooling_type``); "mean" when it names none,
    as for generative models, which have no pooling of their own."""
    arch = model.meta_val_str("general.architecture")
    value = model.meta_val_str(f"{arch}.pooling_type") if arch else None
    try:
        name = _POOLING_NAMES.get(int(value)) if value is not None else None
    except ValueError:
        name = None
    return name if name not in (None, "none") else "mean"


class Embedder:
    """Computes embeddings with ``model``.

    ``pooling``: "mean", "cls", "last", "rank" (rerankers) or "none" (one vector per token);
    None: the model's own (:func:`model_pooling`). ``normalize``: L2-normalize each vector
    (pooled outputs only; rank scores are never normalized).
    """

    def __init__(self, model: LlamaModel, pooling: str | None = None, normalize: bool = True,
                 n_ctx: int | None = None, n_seq_max: int = 16, n_threads: int | None = None):
        if pooling is None:
            pooling = model_pooling(model)
        if pooling not in POOLING_TYPES:
            raise ValueError(f"pooling must be one of {sorted(POOLING_TYPES)}, got {pooling!r}")
        if not isinstance(n_seq_max, int) or not 1 <= n_seq_max <= 256:
            raise ValueError(f"n_seq_max must be an int in 1..256, got {n_seq_max!r}")
        self.model = model
        self.pooling = pooling
        self.normalize = bool(normalize) and pooling != "rank"
        n_ctx = n_ctx or min(model.n_ctx_train or 2048, 2048)
        p = LlamaContextParams(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_seq_max=n_seq_max,
                               embeddings=True, pooling_type=POOLING_TYPES[pooling], kv_unified=True)
        if n_threads:
            p.n_threads = p.n_threads_batch = n_threads
        self.ctx = LlamaContext(model, p)
        self._batch = LlamaBatch(self.ctx.n_batch, 0, n_seq_max)
        self.n_embd = model.n_embd

    def tokenize(self, texts: Sequence[str], add_bos: bool = True, truncate: bool = False) -> list[list[int]]:
        vocab = self.model.get_vocab()
        out = []
        limit = self.ctx.n_batch
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"input {i} must be a string, got {type(t).__name__}")
            toks = vocab.tokenize(t, add_special=add_bos, parse_special=False)
            if not toks:
                raise ValueError(f"input {i} is empty (no tokens)")
            if len(toks) > limit:
                if not truncate:
                    raise ValueError(f"input {i} has {len(toks)} tokens, more than the embedding context ({limit})")
                toks = toks[:limit]
            out.append(toks)
        return out

    def embed_tokens(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """One vector per input (pooled), or a (n_tokens, n_embd) array per input for pooling "none"."""
        ctx, batch = self.ctx, self._batch
        vocab = self.model.get_vocab()
        results: list[np.ndarray | None] = [None] * len(inputs)
        for i, toks in enumerate(inputs):
            if len(toks) == 0:
                raise ValueError(f"input {i} is empty (no tokens)")
            if len(toks) > ctx.n_batch:
                raise ValueError(f"input {i} has {len(toks)} tokens, more than the embedding context ({ctx.n_batch})")
            vocab.check_tokens(toks)
        pending: list[int] = []
        used = 0
        for i, toks in enumerate(inputs):
            if pending and (used + len(toks) > ctx.n_batch or len(pending) == ctx.n_seq_max):
                self._run(pending, inputs, results)
                pending, used = [], 0
            pending.append(i)
            used += len(toks)
        if pending:
            self._run(pending, inputs, results)
        return results  # type: ignore[return-value]

    def _run(self, idx: list[int], inputs: Sequence[Sequence[int]], results: list) -> None:
        ctx, batch = self.ctx, self._batch
        batch.clear()
        per_token = self.pooling == "none"
        offsets = []
        for seq, i in enumerate(idx):
            offsets.append(batch.n_tokens)
            batch.add_sequence(inputs[i], 0, seq, logits_last=True)
            if per_token:
                for k in range(offsets[-1], batch.n_tokens):
                    batch.set_logits(k, True)
        ctx.kv_cache_clear()
        try:
            if self.model.has_encoder and not self.model.has_decoder:
                ctx.encode(batch)
            else:
                ctx.decode(batch)
            for seq, i in enumerate(idx):
                if per_token:
                    off = offsets[seq]
                    out = np.stack([ctx.get_embeddings_ith(off + k) for k in range(len(inputs[i]))])
                else:
                    out = ctx.get_embeddings_seq(seq)
                    if self.normalize:
                        norm = float(np.linalg.norm(out))
                        if norm > 0:
                            out /= norm
                results[i] = out
        finally:
            ctx.kv_cache_clear()

    def embed(self, texts: str | Sequence[str], add_bos: bool = True, truncate: bool = False) -> np.ndarray | list[np.ndarray]:
        """A vector for a string, a (n, n_embd) array for a list (a list of arrays for pooling "none")."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            return np.zeros((0, self.n_embd), np.float32)
        out = self.embed_tokens(self.tokenize(items, add_bos, truncate))
        if single:
            return out[0]
        return out if self.pooling == "none" else np.stack(out)

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
