"""Small shared pieces of the llama-cpp-python compatible API (no import of the Llama class)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["LogitsProcessor", "LogitsProcessorList", "StoppingCriteria", "StoppingCriteriaList",
           "MinTokensLogitsProcessor", "LlamaState", "logits_to_logprobs", "longest_token_prefix",
           "suppress_stdout_stderr"]

LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]


class LogitsProcessorList(List[LogitsProcessor]):
    """Processors applied in order: each gets ``(input_ids, scores)`` and returns the new scores."""

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


StoppingCriteria = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], bool]


class StoppingCriteriaList(List[StoppingCriteria]):
    """Generation stops when any criterion returns True for ``(input_ids, logits)``."""

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        return any([criterion(input_ids, logits) for criterion in self])


class MinTokensLogitsProcessor:
    """Forbids the end-of-sequence token until ``min_tokens`` tokens have been generated."""

    def __init__(self, min_tokens: int, token_eos: int):
        self.min_tokens = min_tokens
        self.token_eos = token_eos
        self.prompt_tokens: Optional[int] = None

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        if len(input_ids) - self.prompt_tokens < self.min_tokens:
            scores[self.token_eos] = -np.inf
        return scores


class LlamaState:
    """A snapshot of a :class:`Llama`: the tokens it had evaluated, their scores (with
    ``logits_all``), the native state (KV cache) and the sampling seed."""

    def __init__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single], n_tokens: int,
                 llama_state: bytes, llama_state_size: int, seed: int):
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed

    def __repr__(self) -> str:
        return f"<LlamaState n_tokens={self.n_tokens} llama_state_size={self.llama_state_size}>"


def logits_to_logprobs(logits: npt.NDArray[np.single] | list, axis: int = -1) -> npt.NDArray[np.single]:
    """log-softmax along ``axis`` (as scipy.special.log_softmax), robust to infinities."""
    maxs: np.ndarray = np.amax(logits, axis=axis, keepdims=True)
    if maxs.ndim > 0:
        maxs[~np.isfinite(maxs)] = 0
    elif not np.isfinite(maxs):
        maxs = 0  # type: ignore[assignment]
    shifted = np.subtract(logits, maxs, dtype=np.single)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return shifted - out


def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


class suppress_stdout_stderr:
    """Silences the process's stdout and stderr (file descriptors 1 and 2, so native output too)
    inside a ``with`` block; ``disable=True`` makes it do nothing. cyllama routes llama.cpp's log
    through Python logging already (``verbose=False`` hides it), so this is rarely needed."""

    def __init__(self, disable: bool = True):
        self.disable = disable
        self._saved: List[int] = []

    def __enter__(self) -> "suppress_stdout_stderr":
        if self.disable:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = self._saved
        self._saved = []
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
