"""The API reference's multimodal module: load a projector, evaluate an image into a context.

::

    from cyllama.llama.mtmd.multimodal import load_mmproj, process_image

    mmproj = load_mmproj("mmproj.gguf")                      # checked now, bound to a model on use
    embed = process_image(ctx=ctx, image_path="image.jpg", mmproj=mmproj)
    # the image now sits in ctx's KV cache, positions [embed.n_past - embed.n_image_pos, embed.n_past)

For chat with images, ``LLM(model, mmproj=...)`` and OpenAI-style image parts are simpler.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import MtmdContext, check_projector

if TYPE_CHECKING:
    from ..context import LlamaContext
    from ..model import LlamaModel

__all__ = ["Mmproj", "LlavaImageEmbed", "load_mmproj", "process_image"]


class Mmproj:
    """A projector file, checked; its :class:`MtmdContext` is made per text model when first used."""

    def __init__(self, path: str | os.PathLike, model: "LlamaModel | None" = None, **params: Any):
        self.path = Path(path)
        self.metadata = check_projector(self.path)
        self._params = params
        self._contexts: "weakref.WeakKeyDictionary[Any, MtmdContext]" = weakref.WeakKeyDictionary()
        if model is not None:
            self.context_for(model)

    def context_for(self, model: "LlamaModel") -> MtmdContext:
        m = self._contexts.get(model)
        if m is None or m.closed:
            m = MtmdContext(self.path, model, **self._params)
            self._contexts[model] = m
        return m

    def close(self) -> None:
        for m in list(self._contexts.values()):
            m.close()
        self._contexts.clear()

    def __enter__(self) -> "Mmproj":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Mmproj {self.path.name} {self.metadata.get('clip.projector_type', '?')}>"


@dataclass(frozen=True)
class LlavaImageEmbed:
    """An image evaluated into a context: the positions it took and the next free one."""

    n_image_pos: int  # positions the image occupies
    n_tokens: int  # embeddings it was encoded to (more than positions on M-RoPE models)
    n_past: int  # the next position in the sequence
    image_id: str  # sha256 of the image (the KV-cache key)


def load_mmproj(path: str | os.PathLike, model: "LlamaModel | None" = None, **params: Any) -> Mmproj:
    """Loads (checks) a multimodal projector; with ``model`` also creates its context now.
    ``params``: :class:`MtmdContext` options (``use_gpu``, ``n_threads``, ...)."""
    return Mmproj(path, model, **params)


def process_image(ctx: "LlamaContext", image_path: Any, mmproj: "Mmproj | MtmdContext | str | os.PathLike", *,
                  n_past: int | None = None, seq_id: int = 0) -> LlavaImageEmbed:
    """Encodes an image (a path, bytes or an RGB array) and evaluates it into ``ctx`` on
    ``seq_id`` at ``n_past`` (default: after what the sequence holds). Decode text after it (from
    ``n_past`` of the result) before sampling: media leave no logits."""
    if isinstance(mmproj, (str, os.PathLike)):
        mmproj = Mmproj(mmproj)
    mctx = mmproj if isinstance(mmproj, MtmdContext) else mmproj.context_for(ctx.model)
    if mctx.model is not ctx.model:
        raise ValueError("the projector was loaded for another model than the context's")
    bitmap = mctx.bitmap(image_path)
    if bitmap.is_audio:
        raise ValueError("process_image takes images; this is audio")
    chunks = mctx.tokenize(mctx.marker, [bitmap], add_special=False)
    try:
        idx = next(i for i, k in enumerate(chunks.kinds()) if k != 0)
        if n_past is None:
            n_past = ctx.kv_cache_seq_pos_max(seq_id) + 1
        end = mctx.eval_chunk(ctx, chunks, idx, n_past, seq_id)
        return LlavaImageEmbed(chunks.n_pos_of(idx), chunks.n_tokens_of(idx), end, bitmap.id)
    finally:
        chunks.close()
        if not isinstance(image_path, type(bitmap)):
            bitmap.close()
