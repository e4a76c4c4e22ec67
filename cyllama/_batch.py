"""Many prompts at once: ``batch_generate`` and ``BatchGenerator`` on the continuous-batching engine.

All prompts are queued on the engine; up to ``batch_size`` are decoded together and the rest join
as slots free up, so more prompts than slots is fine. Greedy output equals what ``LLM`` gives for
each prompt alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ._config import GenerationConfig
from ._engine import Engine
from ._llm import _grammar_for
from .llama.model import LlamaModel, LlamaModelParams

__all__ = ["BatchGenerator", "BatchRequest", "BatchResponse", "batch_generate"]

_MAX_SLOTS = 64


@dataclass
class BatchRequest:
    """One prompt of a batch with its own length and temperature."""

    id: int
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.7


@dataclass
class BatchResponse:
    """The answer to a :class:`BatchRequest`."""

    id: int
    prompt: str
    response: str
    tokens_generated: int
    time_taken: float
    finish_reason: str = "stop"
    prompt_tokens: int = 0


class BatchGenerator:
    """Keeps a model loaded and generates for lists of prompts in parallel.

    ``batch_size``: most prompts decoded together (parallel sequences; at most 64 and never more
    than a batch has prompts). ``n_ctx``: context per sequence (prompt + answer).
    """

    def __init__(self, model_path: str | os.PathLike, batch_size: int = 512, n_ctx: int = 2048,
                 n_gpu_layers: int = 99, verbose: bool = False, *, n_threads: int | None = None,
                 config: GenerationConfig | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 16:
            raise ValueError(f"n_ctx must be an int >= 16, got {n_ctx!r}")
        self.batch_size = min(batch_size, _MAX_SLOTS)
        self.n_ctx = n_ctx
        self.verbose = verbose
        self.n_threads = n_threads
        self.config = config or GenerationConfig()
        self.model = LlamaModel(model_path, LlamaModelParams(n_gpu_layers=n_gpu_layers), verbose=verbose)
        self.vocab = self.model.get_vocab()
        self._engine: Engine | None = None

    def _engine_for(self, n: int) -> Engine:
        want = max(1, min(self.batch_size, n))
        e = self._engine
        if e is None or e.n_slots < want:
            if e is not None:
                e.close()
            e = self._engine = Engine(self.model, n_slots=want, n_ctx=self.n_ctx, n_threads=self.n_threads,
                                      max_queue=1 << 30)  # a batch queues all its prompts
        return e

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def _run(self, items: Sequence[tuple[str, GenerationConfig]], progress: bool | None) -> list[Any]:
        if not items:
            return []
        tokenized = []
        for i, (prompt, cfg) in enumerate(items):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {i} must be a string, got {type(prompt).__name__}")
            if not prompt:
                raise ValueError(f"prompt {i} is empty")
            tokenized.append(self.vocab.tokenize(prompt, add_special=cfg.add_bos, parse_special=cfg.parse_special))
        engine = self._engine_for(len(items))
        bar = _progress(len(items), progress)
        reqs = []
        try:
            grammars = [_grammar_for(cfg, None) for _, cfg in items]
            with engine.hold():  # all start together: reproducible batch composition
                for toks, (_, cfg), g in zip(tokenized, items, grammars):
                    reqs.append(engine.submit(toks, cfg, g))
            out = []
            for r in reqs:
                text = r.result()
                if r.error is not None:
                    raise r.error
                out.append((text, r))
                if bar is not None:
                    bar.update(1)
            return out
        except BaseException:
            for r in reqs:
                r.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()

    def generate_batch(self, prompts: Sequence[str], config: GenerationConfig | None = None,
                       progress: bool | None = None, **kwargs: Any) -> list[str]:
        """Answers each prompt (raw completion, like :func:`complete`); returns the texts in order.

        ``progress``: show a tqdm progress bar (default: when tqdm is installed and there are more
        than 16 prompts).
        """
        cfg = (config or self.config).replace(**kwargs)
        return [text for text, _ in self._run([(p, cfg) for p in prompts], progress)]

    def process_batch(self, requests: Sequence[BatchRequest], config: GenerationConfig | None = None,
                      progress: bool | None = None) -> list[BatchResponse]:
        """Runs :class:`BatchRequest` items (each with its own max_tokens and temperature)."""
        base = config or self.config
        items = [(r.prompt, base.replace(max_tokens=r.max_tokens, temperature=r.temperature)) for r in requests]
        t0 = time.perf_counter()
        results = self._run(items, progress)
        out = []
        for req, (text, r) in zip(requests, results):
            st = r.stats
            out.append(BatchResponse(req.id, req.prompt, text, st.generated_tokens if st else 0,
                                     st.total_time if st else time.perf_counter() - t0,
                                     r.finish_reason or "stop", len(r.tokens)))
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self.model.close()

    def __enter__(self) -> "BatchGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _progress(total: int, progress: bool | None) -> Any:
    if progress is False or (progress is None and total <= 16):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="generating", unit="prompt")


def batch_generate(prompts: Sequence[str], model_path: str | os.PathLike, config: GenerationConfig | None = None,
                   **kwargs: Any) -> list[str]:
    """Loads the model, answers all prompts in parallel, frees the model.

    Besides generation options, ``batch_size`` (parallel sequences, default 8) and ``progress``
    may be given.
    """
    batch_size = kwargs.pop("batch_size", 8)
    progress = kwargs.pop("progress", None)
    cfg = (config or GenerationConfig()).replace(**kwargs)
    n_ctx = cfg.n_ctx or 2048
    with BatchGenerator(model_path, batch_size=batch_size, n_ctx=n_ctx, n_gpu_layers=cfg.n_gpu_layers,
                        n_threads=cfg.n_threads) as gen:
        return gen.generate_batch(prompts, cfg, progress=progress)
