"""The generation loop, in two layers (as in mlx-lm):

* ``step_tokens``: decode the prompt, then sample and decode one token at a time; yields ids.
* ``stream_text``: turns those ids into text chunks with incremental UTF-8 decoding (a character
  split across tokens is held back until complete), and records timing in ``StreamStats``.

Per-token work is O(1): one batch reused, one sampler call, one piece lookup.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ._ffi import ffi
from .llama._backend import lib
from .llama.batch import LlamaBatch
from .llama.context import LlamaContext
from .llama.model import LlamaModel
from .llama.sampler import LlamaSampler

__all__ = ["StreamStats", "step_tokens", "stream_text", "apply_chat_template", "eval_prompt"]


@dataclass
class StreamStats:
    """Counters filled in while a stream runs."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_time: float = 0.0
    generation_time: float = 0.0
    time_to_first_token: float = 0.0
    finish_reason: str = ""
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def total_time(self) -> float:
        return self.prompt_time + self.generation_time

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_time if self.generation_time > 0 else 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_time if self.prompt_time > 0 else 0.0


def eval_prompt(ctx: LlamaContext, tokens: Sequence[int], pos0: int = 0, seq_id: int = 0) -> int:
    """Decodes ``tokens`` in chunks of n_batch; the last token's logits are kept. Returns the next position."""
    n = len(tokens)
    if n == 0:
        raise ValueError("the prompt is empty")
    if pos0 + n > ctx.n_ctx:
        raise ValueError(f"prompt of {n} tokens does not fit the context ({ctx.n_ctx} tokens, {pos0} in use)")
    step = ctx.n_batch
    batch = LlamaBatch(min(step, n), 0, 1)
    try:
        for start in range(0, n, step):
            chunk = tokens[start:start + step]
            batch.clear()
            batch.add_sequence(chunk, pos0 + start, seq_id, logits_last=start + step >= n)
            ctx.decode(batch)
    finally:
        batch.close()
    return pos0 + n


def step_tokens(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int,
                stats: StreamStats | None = None, pos0: int = 0) -> Iterator[int]:
    """Yields sampled token ids until an end-of-generation token, ``max_tokens`` or a full context."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    stats = stats if stats is not None else StreamStats()
    vocab = ctx.model.get_vocab()
    t0 = time.perf_counter()
    pos = eval_prompt(ctx, prompt, pos0)
    stats.prompt_tokens = len(prompt)
    stats.prompt_time = time.perf_counter() - t0
    batch = LlamaBatch(1, 0, 1)
    vptr = vocab.ptr
    t_gen = time.perf_counter()
    try:
        for i in range(max_tokens):
            tok = sampler.sample(ctx, -1)
            if lib.llama_vocab_is_eog(vptr, tok):
                stats.finish_reason = "stop"
                return
            if i == 0:
                stats.time_to_first_token = time.perf_counter() - t0
            stats.generated_tokens += 1
            yield tok
            if pos >= ctx.n_ctx:
                stats.finish_reason = "length"
                return
            batch.clear()
            batch.add(tok, pos, (0,), True)
            pos += 1
            ctx.decode(batch)
        stats.finish_reason = "length"
    finally:
        stats.generation_time = time.perf_counter() - t_gen
        batch.close()


def stream_text(ctx: LlamaContext, sampler: LlamaSampler, prompt: Sequence[int], max_tokens: int,
                stats: StreamStats | None = None) -> Iterator[str]:
    """Yields text chunks; never splits a UTF-8 character across chunks."""
    vocab = ctx.model.get_vocab()
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    to_bytes = vocab.token_to_bytes
    for tok in step_tokens(ctx, sampler, prompt, max_tokens, stats):
        text = decoder.decode(to_bytes(tok, special=False))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def apply_chat_template(model: LlamaModel, messages: Sequence[dict], add_generation_prompt: bool = True,
                        template: str | None = None) -> str:
    """Formats chat messages with llama.cpp's built-in template matching (no Jinja execution)."""
    if not messages:
        raise ValueError("messages must not be empty")
    tmpl = template if template is not None else model.chat_template()
    keep = []
    arr = ffi.new("struct llama_chat_message[]", len(messages))
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        role = ffi.new("char[]", str(m["role"]).encode("utf-8"))
        content = ffi.new("char[]", str(m["content"]).encode("utf-8"))
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
        total += len(m["content"]) + len(m["role"])
    t = tmpl.encode("utf-8") if tmpl else ffi.NULL
    cap = 2 * total + 1024
    buf = ffi.new("char[]", cap)
    n = lib.llama_chat_apply_template(t, arr, len(messages), add_generation_prompt, buf, cap)
    if n > cap:
        cap = n + 1
        buf = ffi.new("char[]", cap)
        n = lib.llama_chat_apply_template(t, arr, len(messages), add_generation_prompt, buf, cap)
    if n < 0:
        raise ValueError("the model's chat template is not one llama.cpp recognises; pass template=")
    return ffi.unpack(buf, n).decode("utf-8", "replace")
