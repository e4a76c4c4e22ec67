"""Text completions for :class:`Llama` (``create_completion`` / ``__call__``), as llama-cpp-python returns them.

The prompt is checked and tokenized when the call is made (so bad input raises at once, also
with ``stream=True``); the generation itself runs lazily. Text comes out of
:class:`cyllama._generation.TextStream`: incremental UTF-8 decoding and stop strings matched
across token boundaries, O(1) work per token (the completion is never re-detokenized).
"""

from __future__ import annotations

import codecs
import math
import operator
import random
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from .._grammar_gate import preserved_tokens
from ._common import LogitsProcessorList, StoppingCriteriaList, longest_token_prefix

if TYPE_CHECKING:
    from .._config import GenerationConfig
    from .llama_grammar import LlamaGrammar

__all__ = ["CompletionMixin"]


@dataclass
class _Plan:
    """Everything one completion needs, checked up front."""

    prompt_tokens: List[int]
    prompt_text: str
    text_offset: int
    suffix_text: Optional[str]
    max_tokens: int
    stop: List[str]
    logprobs: Optional[int]
    echo: bool
    stream: bool
    seed: Optional[int]
    cfg: "GenerationConfig"
    grammar: Any  # GBNF text, or a Grammar (tool calls)
    logits_processor: Any
    stopping_criteria: Any
    model: str
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4()}")
    created: int = field(default_factory=lambda: int(time.time()))


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _stop_list(stop: Any) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, (list, tuple)):
        raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    for s in stop:
        if not isinstance(s, str):
            raise TypeError(f"stop sequences must be strings, got {type(s).__name__}")
    return [s for s in stop if s]


def _logprob_entry(logits: np.ndarray, token: int, n_top: int, text_of: Any) -> tuple:
    """(logprob of ``token``, {piece: logprob} of the ``n_top`` most likely tokens and ``token``)."""
    x = logits.astype(np.float64)
    m = float(x.max())
    if not math.isfinite(m):
        m = 0.0
    with np.errstate(divide="ignore", over="ignore"):
        lse = m + math.log(float(np.exp(x - m).sum()))
    lp = float(x[token] - lse)
    top: Dict[str, float] = {}
    if n_top > 0:
        k = min(n_top, len(x))
        idx = np.argpartition(-x, k - 1)[:k] if k < len(x) else np.arange(len(x))
        idx = idx[np.argsort(-x[idx], kind="stable")]
        for i in idx:
            top[text_of(int(i))] = float(x[i] - lse)
    top[text_of(token)] = lp
    return lp, top


class CompletionMixin:
    """``create_completion`` and ``__call__`` (mixed into :class:`Llama`)."""

    # -- the public calls ------------------------------------------------------------------
    def create_completion(
        self,
        prompt: Union[str, List[int]],
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Optional[Union[str, List[str]]] = [],
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: Optional[int] = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        stopping_criteria: Optional[StoppingCriteriaList] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        grammar: Optional["LlamaGrammar"] = None,
        logit_bias: Optional[Dict[int, float]] = None,
    ) -> Any:
        """Generates text from a prompt (a string, or a list of token ids).

        Returns a ``text_completion`` dict, or with ``stream=True`` an iterator of chunks (the
        last one carries ``finish_reason``). ``max_tokens`` None or <= 0 generates up to the end
        of the context. ``logprobs=n`` adds the log-probability of each token and the ``n`` most
        likely alternatives. ``tfs_z`` is accepted and ignored (llama.cpp dropped tail-free
        sampling). Raises ``ValueError`` for a prompt that does not fit the context.
        """
        plan = self._prepare_completion(
            prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p, logprobs, echo, stop,
            frequency_penalty, presence_penalty, repeat_penalty, top_k, stream, seed, mirostat_mode,
            mirostat_tau, mirostat_eta, model, stopping_criteria, logits_processor, grammar, logit_bias)
        run = self._run_completion(plan)
        if plan.stream:
            return run
        try:
            return next(run)
        finally:
            run.close()

    def __call__(
        self,
        prompt: Union[str, List[int]],
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Optional[Union[str, List[str]]] = [],
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: Optional[int] = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        stopping_criteria: Optional[StoppingCriteriaList] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        grammar: Optional["LlamaGrammar"] = None,
        logit_bias: Optional[Dict[int, float]] = None,
    ) -> Any:
        """Same as :meth:`create_completion`."""
        return self.create_completion(
            prompt=prompt, suffix=suffix, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            min_p=min_p, typical_p=typical_p, logprobs=logprobs, echo=echo, stop=stop,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, repeat_penalty=repeat_penalty,
            top_k=top_k, stream=stream, seed=seed, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model, stopping_criteria=stopping_criteria,
            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)

    # -- preparing -------------------------------------------------------------------------
    def _prompt_tokens(self, prompt: Any, suffix: Optional[str]) -> tuple[List[int], str, Optional[str]]:
        """(prompt tokens, prompt text, suffix to append to the output when the model cannot infill)."""
        vocab = self._vocab
        if isinstance(prompt, (bytes, bytearray)):
            prompt = bytes(prompt).decode("utf-8")
        is_text = isinstance(prompt, str)
        if not is_text:
            if isinstance(prompt, np.ndarray):
                prompt = prompt.tolist()
            if not isinstance(prompt, (list, tuple)):
                raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
            prompt = [_as_int("prompt token", t) for t in prompt]
            vocab.check_tokens(prompt)
        if suffix is not None and not isinstance(suffix, str):
            raise TypeError(f"suffix must be a string, got {type(suffix).__name__}")
        bos, eos = vocab.bos, vocab.eos
        cls_id, sep_id = vocab.cls, vocab.sep
        # BOS/EOS exactly as llama-cpp-python chooses them (CLS/SEP for encoder-style vocabularies)
        bos_tokens = [cls_id if cls_id != -1 else bos]
        if (not is_text and suffix is None) or not vocab.add_bos or bos_tokens[:1] == [-1]:
            bos_tokens = []
        eos_tokens = [sep_id if sep_id != -1 else eos]
        if (not is_text and suffix is None) or (not vocab.add_eos and sep_id == -1) or eos_tokens[:1] == [-1]:
            eos_tokens = []
        fim = (vocab.fim_pre, vocab.fim_suf, vocab.fim_mid)
        infill = suffix is not None and min(fim) >= 0
        if is_text:
            body = self.tokenize(prompt.encode("utf-8"), add_bos=False, special=not infill) if prompt else []
        else:
            body = list(prompt)
        if infill:
            pre = [fim[0], *body]
            suf = [fim[1], *(self.tokenize(suffix.encode("utf-8"), add_bos=False, special=False) if suffix else [])]
            middle = suf + pre if self.spm_infill else pre + suf
            tokens = bos_tokens + middle + [fim[2]] + eos_tokens
        else:
            tokens = bos_tokens + body + eos_tokens
        if not tokens:
            if bos < 0:
                raise ValueError("the prompt is empty (and the model has no BOS token to start from)")
            tokens = [bos]  # an empty prompt: generate unconditionally
        if tokens[:2] == [bos, bos] and bos >= 0:
            warnings.warn(f'Detected duplicate leading "{vocab.get_text(bos)}" in prompt, this will likely reduce '
                          "response quality, consider removing it...", RuntimeWarning, stacklevel=4)
        text = prompt if is_text else self.detokenize(tokens).decode("utf-8", errors="ignore")
        return tokens, text, (suffix if suffix is not None and not infill else None)

    def _prepare_completion(self, prompt: Any, suffix: Any, max_tokens: Any, temperature: float, top_p: float,
                            min_p: float, typical_p: float, logprobs: Any, echo: bool, stop: Any,
                            frequency_penalty: float, presence_penalty: float, repeat_penalty: float, top_k: int,
                            stream: bool, seed: Any, mirostat_mode: int, mirostat_tau: float, mirostat_eta: float,
                            model: Optional[str], stopping_criteria: Any, logits_processor: Any, grammar: Any,
                            logit_bias: Any) -> _Plan:
        self._require_ctx()
        tokens, text, suffix_text = self._prompt_tokens(prompt, suffix)
        n_ctx = self._n_ctx
        if len(tokens) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {n_ctx}")
        if max_tokens is None:
            max_tokens = 0
        max_tokens = _as_int("max_tokens", max_tokens)
        if max_tokens <= 0 or max_tokens + len(tokens) >= n_ctx:
            max_tokens = n_ctx - len(tokens)
        if isinstance(logprobs, bool):
            logprobs = 1 if logprobs else None
        if logprobs is not None:
            logprobs = _as_int("logprobs", logprobs)
            if not 0 <= logprobs <= self._n_vocab:
                raise ValueError(f"logprobs must be between 0 and the vocabulary size, got {logprobs}")
        if seed is not None:
            seed = _as_int("seed", seed)
        for name, fn in (("stopping_criteria", stopping_criteria), ("logits_processor", logits_processor)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable (e.g. a {name.title().replace('_', '')}List)")
        cfg = self._sampling_config(top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temperature,
                                    repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                    presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                    mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, logit_bias=logit_bias)
        gbnf = self._grammar_text(grammar)
        if gbnf is not None:  # let llama.cpp parse it now, so a bad grammar fails the call, not the stream
            self._build_sampler(cfg, gbnf).close()
        return _Plan(prompt_tokens=tokens, prompt_text=text, text_offset=len(text), suffix_text=suffix_text,
                     max_tokens=max_tokens, stop=_stop_list(stop), logprobs=logprobs, echo=bool(echo),
                     stream=bool(stream), seed=seed, cfg=cfg, grammar=gbnf, logits_processor=logits_processor,
                     stopping_criteria=stopping_criteria, model=model if model is not None else self.model_path)

    # -- running ---------------------------------------------------------------------------
    def _chunk(self, p: _Plan, text: str, entries: Optional[list] = None,
               finish_reason: Optional[str] = None) -> Dict[str, Any]:
        return {
            "id": p.id, "object": "text_completion", "created": p.created, "model": p.model,
            "choices": [{"text": text, "index": 0, "logprobs": self._logprobs_dict(entries) if entries else None,
                         "finish_reason": finish_reason}],
        }

    @staticmethod
    def _logprobs_dict(entries: list) -> Dict[str, list]:
        return {"tokens": [e[0] for e in entries], "text_offset": [e[1] for e in entries],
                "token_logprobs": [e[2] for e in entries], "top_logprobs": [e[3] for e in entries]}

    def _piece_text(self, token: int) -> str:
        return self._vocab.token_to_bytes(token, special=False).decode("utf-8", errors="ignore")

    def _prompt_logprobs(self, tokens: List[int], n_top: int) -> list:
        """Evaluates the prompt with logits for every token; logprob entries for the echoed prompt."""
        per_pos: Dict[int, tuple] = {}

        def on_rows(n_past: int, rows: np.ndarray) -> None:
            for r in range(rows.shape[0]):
                nxt = n_past + r + 1
                if nxt < len(tokens):
                    per_pos[nxt] = _logprob_entry(rows[r], tokens[nxt], n_top, self._piece_text)

        self.reset()
        self._eval(tokens, True, on_rows)
        bos = self._vocab.bos
        entries = []
        offset = 0
        dec = codecs.getincrementaldecoder("utf-8")("ignore")
        first = True
        for i, tok in enumerate(tokens):
            raw = self._vocab.token_to_bytes(tok, special=False)
            if tok == bos:
                continue
            lp, top = per_pos.get(i, (None, None))
            if first:
                lp, top, first = None, None, False  # OpenAI: the first token has no logprob
            entries.append((raw.decode("utf-8", errors="ignore"), offset, lp, top))
            offset += len(dec.decode(raw))
        return entries

    def _run_completion(self, p: _Plan) -> Iterator[Dict[str, Any]]:
        vocab = self._vocab
        if self.cache is not None:
            try:
                item = self.cache[p.prompt_tokens]
                cached = longest_token_prefix(np.asarray(item.input_ids)[: item.n_tokens], p.prompt_tokens)
                if cached > longest_token_prefix(self._input_ids, p.prompt_tokens):
                    self.load_state(item)
                    if self.verbose:
                        print("Llama._create_completion: cache hit", file=sys.stderr)
            except KeyError:
                if self.verbose:
                    print("Llama._create_completion: cache miss", file=sys.stderr)
        self.set_seed(p.seed if p.seed is not None else random.Random(self._seed).randint(0, 2**32) & 0xFFFFFFFF)
        if self.verbose:
            self._ctx.reset_perf_data()
        want_lp = p.logprobs is not None
        n_top = p.logprobs or 0
        entries: list = []  # logprob entries of the whole completion (not streaming)
        pending: list = []  # entries whose text a stream has not sent yet
        if p.echo and want_lp:
            entries = self._prompt_logprobs(p.prompt_tokens, n_top)
        text_offset = p.text_offset  # completion text starts after the prompt's (echoed or not)
        if p.echo and p.stream:
            yield self._chunk(p, p.prompt_text, entries)
            entries = []

        raw: List[Any] = [None]
        copy_logits = p.logits_processor is not None

        def on_logits(logits: np.ndarray) -> None:
            raw[0] = logits.copy() if copy_logits else logits

        sampler = self._build_sampler(p.cfg, p.grammar)
        gen = self._generate_tokens(p.prompt_tokens, sampler, True, on_logits if want_lp else None,
                                    max_tokens=p.max_tokens, stop=p.stop, logits_processor=p.logits_processor,
                                    stopping_criteria=p.stopping_criteria, preserve=preserved_tokens(p.grammar))
        offsets = codecs.getincrementaldecoder("utf-8")("ignore")
        completion_tokens: List[int] = []
        parts: List[str] = []
        finish_reason = "stop"  # without a last chunk: a new generation ended this one (an abandoned stream)
        try:
            for chunk in gen:  # the core's Generation: end-of-generation, stop strings, max_tokens, criteria
                token = chunk.token
                if token is not None:
                    completion_tokens.append(token)
                    if want_lp:
                        lp, top = _logprob_entry(raw[0], token, n_top, self._piece_text)
                        piece = vocab.token_to_bytes(token, special=False)
                        (pending if p.stream else entries).append(
                            (piece.decode("utf-8", errors="ignore"), text_offset, lp, top))
                        text_offset += len(offsets.decode(piece))
                if chunk.text:
                    if p.stream:
                        yield self._chunk(p, chunk.text, pending)
                        pending = []
                    else:
                        parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    finish_reason = chunk.finish_reason
        finally:
            gen.close()
        if self.verbose:
            self._print_timings()
        if p.stream:
            if p.suffix_text:
                yield self._chunk(p, p.suffix_text)
            yield self._chunk(p, "", None, finish_reason)
            self._save_to_cache(p.prompt_tokens + completion_tokens)
            return
        self._save_to_cache(p.prompt_tokens + completion_tokens)
        text = "".join(parts)
        if p.echo:
            text = p.prompt_text + text
        if p.suffix_text:
            text += p.suffix_text
        yield {
            "id": p.id, "object": "text_completion", "created": p.created, "model": p.model,
            "choices": [{"text": text, "index": 0, "logprobs": self._logprobs_dict(entries) if want_lp else None,
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": len(p.prompt_tokens), "completion_tokens": len(completion_tokens),
                      "total_tokens": len(p.prompt_tokens) + len(completion_tokens)},
        }

    def _save_to_cache(self, key: Sequence[int]) -> None:
        if self.cache is not None:
            if self.verbose:
                print("Llama._create_completion: cache save", file=sys.stderr)
            self.cache[key] = self.save_state()
