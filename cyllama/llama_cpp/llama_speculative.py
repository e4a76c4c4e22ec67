"""Draft models for speculative decoding (llama-cpp-python's API).

``Llama(..., draft_model=LlamaPromptLookupDecoding())`` evaluates the drafted tokens in one batch
and keeps those the sampler agrees with; the output is the same as without a draft model.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import numpy.typing as npt

from .._speculative import Drafter

__all__ = ["LlamaDraftModel", "LlamaPromptLookupDecoding"]


class LlamaDraftModel(abc.ABC):
    @abc.abstractmethod
    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        raise NotImplementedError()


class LlamaPromptLookupDecoding(LlamaDraftModel):
    """Drafts the tokens that followed the last n-gram where it occurred earlier in the context
    (https://github.com/apoorvumang/prompt-lookup-decoding)."""

    def __init__(self, max_ngram_size: int = 2, num_pred_tokens: int = 10):
        self.max_ngram_size = max_ngram_size
        self.num_pred_tokens = num_pred_tokens

    @staticmethod
    def find_candidate_pred_tokens(input_ids: npt.NDArray[np.intc], max_ngram_size: int,
                                   num_pred_tokens: int) -> npt.NDArray[np.intc]:
        input_ids = np.asarray(input_ids)
        input_length = input_ids.shape[0]
        for ngram_size in range(min(max_ngram_size, input_length - 1), 0, -1):
            windows = np.lib.stride_tricks.sliding_window_view(input_ids, (ngram_size,))
            ngram = input_ids[-ngram_size:]
            for idx in np.nonzero(np.all(windows == ngram, axis=1))[0]:
                start = idx + ngram_size
                end = min(start + num_pred_tokens, input_length)
                if start < end:
                    return input_ids[start:end]
        return np.array([], dtype=np.intc)

    def __call__(self, input_ids: npt.NDArray[np.intc], /, **kwargs: Any) -> npt.NDArray[np.intc]:
        return self.find_candidate_pred_tokens(input_ids=input_ids, max_ngram_size=self.max_ngram_size,
                                               num_pred_tokens=self.num_pred_tokens)


class DraftModelDrafter(Drafter):
    """A llama-cpp-python draft model (a callable of the token ids) as a drafter of the decoding
    core: :class:`Llama` drives it as :func:`cyllama._generation.run_sequence` drives the core's own,
    with the same adaptive :meth:`~cyllama._speculative.Drafter.budget`. ``history`` is the
    ``input_ids`` array up to the token about to be decoded; drafted ids outside the vocabulary are
    dropped."""

    def __init__(self, model: Any, n_max: int, n_vocab: int):
        if not callable(model):
            raise TypeError(f"draft_model must be callable (a LlamaDraftModel), got {type(model).__name__}")
        self.model, self.n_max, self.n_vocab = model, n_max, n_vocab

    def draft(self, history: Any, n: int) -> list:
        out = np.asarray(self.model(history), dtype=np.intc).reshape(-1)[:n]
        return [int(t) for t in out if 0 <= t < self.n_vocab]
