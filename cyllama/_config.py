"""GenerationConfig (how to generate, validated up front) and GenerationStats (what a run cost).

A config is checked when it is made: a bad value raises ``ValueError`` naming the field, an unknown
keyword raises ``TypeError`` naming it. ``build_sampler`` turns a config into llama.cpp's sampler
chain, in the order llama.cpp's own tools use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .llama.sampler import LlamaSampler
from .llama.vocab import LlamaVocab

__all__ = ["GenerationConfig", "GenerationStats", "build_sampler", "model_sampling_defaults"]

# Names people also use for a field (OpenAI / llama-cpp-python spellings).
_ALIASES = {"stop": "stop_sequences", "max_new_tokens": "max_tokens", "n_predict": "max_tokens",
            "repetition_penalty": "repeat_penalty", "mirostat_mode": "mirostat"}


@dataclass
class GenerationConfig:
    """How to generate text. Defaults follow llama.cpp's; ``temperature=0`` means greedy.

    The first block is the reference's; the rest are the samplers and options llama.cpp offers.
    Use :meth:`replace` to derive a config with some fields changed.
    """

    max_tokens: int = 512
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    n_gpu_layers: int = 99
    n_ctx: Optional[int] = None
    n_batch: int = 512
    seed: int = -1
    stop_sequences: List[str] = field(default_factory=list)
    add_bos: bool = True
    parse_special: bool = True
    # penalties
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    # other samplers (off at their defaults)
    typical_p: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: List[str] = field(default_factory=lambda: ["\n", ":", '"', "*"])
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    logit_bias: Dict[int, float] = field(default_factory=dict)
    # constrained output
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    # outputs and runtime
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    truncate_prompt: bool = False
    n_threads: Optional[int] = None
    n_threads_batch: Optional[int] = None
    logits_processor: Optional[Callable[[Any, Any], Any]] = None
    # speculative decoding by prompt lookup (transformers' names): draft up to this many tokens by
    # copying what followed an earlier occurrence of the last n-gram (0 = off), optionally also
    # drawing on a persistent :class:`~cyllama.NgramCache`
    prompt_lookup_num_tokens: int = 0
    prompt_lookup_max_ngram: int = 3
    ngram_cache: Optional[Any] = None

    def __post_init__(self) -> None:
        if isinstance(self.stop_sequences, str):
            self.stop_sequences = [self.stop_sequences]
        elif self.stop_sequences is None:
            self.stop_sequences = []
        self._validate()

    # -- validation ------------------------------------------------------------------------
    def _validate(self) -> None:
        def num(name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise ValueError(f"{name} must be <= {hi}, got {v!r}")

        def integer(name: str, lo: int | None = None, hi: int | None = None, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r}")
            if lo is not None and v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
            if hi is not None and v > hi:
                raise ValueError(f"{name} must be <= {hi}, got {v}")

        integer("max_tokens", 1)
        num("temperature", 0.0)
        integer("top_k", 0)
        num("top_p", 0.0, 1.0, lo_open=True)
        num("min_p", 0.0, 1.0)
        num("repeat_penalty", 0.0, lo_open=True)
        integer("n_gpu_layers", -1)
        integer("n_ctx", 0, 1 << 24, optional=True)
        integer("n_batch", 1, 1 << 20)
        integer("seed", -1, 0xFFFFFFFF)
        for i, s in enumerate(self.stop_sequences):
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop_sequences[{i}] must be a non-empty string, got {s!r}")
        for name in ("add_bos", "parse_special", "logprobs", "ignore_eos", "truncate_prompt"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        num("frequency_penalty", -2.0, 2.0)
        num("presence_penalty", -2.0, 2.0)
        integer("penalty_last_n", -1)
        num("typical_p", 0.0, 1.0, lo_open=True)
        if self.mirostat not in (0, 1, 2) or isinstance(self.mirostat, bool):
            raise ValueError(f"mirostat must be 0 (off), 1 or 2, got {self.mirostat!r}")
        num("mirostat_tau", 0.0)
        num("mirostat_eta", 0.0)
        num("dry_multiplier", 0.0)
        num("dry_base", 1.0)
        integer("dry_allowed_length", 0)
        integer("dry_penalty_last_n", -1)
        if not all(isinstance(s, str) and s for s in self.dry_sequence_breakers):
            raise ValueError("dry_sequence_breakers must be non-empty strings")
        num("xtc_probability", 0.0, 1.0)
        num("xtc_threshold", 0.0, 1.0)
        num("top_n_sigma")
        if not isinstance(self.logit_bias, Mapping):
            raise ValueError(f"logit_bias must be a mapping of token id to bias, got {type(self.logit_bias).__name__}")
        for tok, b in self.logit_bias.items():
            if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
                raise ValueError(f"logit_bias keys must be token ids (ints >= 0), got {tok!r}")
            if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b):
                raise ValueError(f"logit_bias[{tok}] must be a number, got {b!r}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise ValueError("grammar must be a non-empty GBNF string")
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise ValueError(f"json_schema must be a dict, got {type(self.json_schema).__name__}")
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("give grammar or json_schema, not both")
        integer("top_logprobs", 0, 100)
        integer("n_threads", 1, 1024, optional=True)
        integer("n_threads_batch", 1, 1024, optional=True)
        if self.logits_processor is not None and not callable(self.logits_processor):
            raise ValueError("logits_processor must be callable(input_ids, logits)")
        integer("prompt_lookup_num_tokens", 0, 1024)
        integer("prompt_lookup_max_ngram", 1, 8)  # llama.cpp's LLAMA_NGRAM_MAX is 4; more never helps
        if self.ngram_cache is not None:
            from ._ngram import NgramCache

            if not isinstance(self.ngram_cache, NgramCache):
                raise ValueError(f"ngram_cache must be an NgramCache, got {type(self.ngram_cache).__name__}")

    # -- deriving --------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def normalize_kwargs(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Maps alias names (``stop``, ``max_new_tokens``...) to fields; unknown names raise TypeError."""
        names = cls.field_names()
        out: dict[str, Any] = {}
        for k, v in kwargs.items():
            key = _ALIASES.get(k, k)
            if key not in names:
                raise TypeError(f"unknown generation option {k!r} (GenerationConfig has no such field)")
            out[key] = v
        return out

    def replace(self, **kwargs: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated; unknown names raise ``TypeError``)."""
        if not kwargs:
            return self
        return dataclasses.replace(self, **self.normalize_kwargs(kwargs))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationStats:
    """What one generation cost. Times are in seconds."""

    prompt_tokens: int
    generated_tokens: int
    total_time: float
    tokens_per_second: float
    prompt_time: float = 0.0
    generation_time: float = 0.0
    time_to_first_token: float = 0.0
    prompt_tokens_per_second: float = 0.0
    cached_tokens: int = 0
    finish_reason: str = ""
    #: speculative decoding: tokens proposed by the drafter, and how many the target confirmed
    draft_tokens: int = 0
    accepted_tokens: int = 0
    acceptance_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.draft_tokens and not self.acceptance_rate:
            self.acceptance_rate = self.accepted_tokens / self.draft_tokens

    def __str__(self) -> str:
        cached = f" ({self.cached_tokens} reused from cache)" if self.cached_tokens else ""
        drafted = (f" | drafted {self.draft_tokens}, accepted {self.accepted_tokens} "
                   f"({self.acceptance_rate:.0%})" if self.draft_tokens else "")
        return (f"prompt {self.prompt_tokens} tokens{cached} in {self.prompt_time * 1000:.0f} ms "
                f"({self.prompt_tokens_per_second:.1f} tok/s) | generated {self.generated_tokens} tokens in "
                f"{self.generation_time:.2f} s ({self.tokens_per_second:.1f} tok/s) | first token after "
                f"{self.time_to_first_token * 1000:.0f} ms{drafted} | finish: {self.finish_reason or '-'}")

    def _repr_html_(self) -> str:  # Jupyter
        rows = "".join(f"<tr><td>{k}</td><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                       f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in dataclasses.asdict(self).items())
        return f"<table><caption>GenerationStats</caption>{rows}</table>"


# GGUF general.sampling.* keys (a model's recommended sampling, llama.cpp's LLM_KV_GENERAL_SAMPLING_*)
_MODEL_SAMPLING = {"top_k": ("top_k", int), "top_p": ("top_p", float), "min_p": ("min_p", float),
                   "xtc_probability": ("xtc_probability", float), "xtc_threshold": ("xtc_threshold", float),
                   "temp": ("temperature", float), "penalty_last_n": ("penalty_last_n", int),
                   "penalty_repeat": ("repeat_penalty", float), "mirostat": ("mirostat", int),
                   "mirostat_tau": ("mirostat_tau", float), "mirostat_eta": ("mirostat_eta", float)}


def model_sampling_defaults(model: Any) -> dict[str, Any]:
    """The sampling a model's GGUF recommends (``general.sampling.*``), as GenerationConfig fields;
    values that do not parse or validate are left out. llama.cpp applies them where the user set
    nothing, and so do ``LLM`` and the servers."""
    out: dict[str, Any] = {}
    for key, (field_name, kind) in _MODEL_SAMPLING.items():
        raw = model.meta_val_str(f"general.sampling.{key}")
        if raw is None:
            continue
        try:
            value = kind(float(raw)) if kind is int else kind(raw)
            GenerationConfig(**{field_name: value})
        except (TypeError, ValueError):
            continue
        out[field_name] = value
    return out


def build_sampler(cfg: GenerationConfig, vocab: LlamaVocab, grammar: str | None = None, *,
                  history: Sequence[int] = (), n_ctx: int = 0) -> LlamaSampler:
    """llama.cpp's sampler chain for ``cfg``, in llama-server's order: logit bias, penalties, DRY,
    grammar, then top-n-sigma, top-k, typical, top-p, min-p, XTC, temperature and the pick; with
    mirostat only logit bias, grammar, temperature and mirostat (as llama.cpp's common sampler). ``history`` (the prompt) is fed to the penalty and DRY samplers first, as
    llama-server does, so repeating the prompt is penalised too; ``-1`` for ``penalty_last_n`` or
    ``dry_penalty_last_n`` means the whole context (``n_ctx``)."""
    n_vocab = vocab.n_vocab
    s = LlamaSampler(vocab=vocab)
    try:
        if cfg.logit_bias:
            s.add_logit_bias(n_vocab, cfg.logit_bias)
        window = 0
        if cfg.mirostat and not cfg.greedy:  # llama.cpp's mirostat chain: logit bias, temperature, mirostat
            pass
        elif cfg.repeat_penalty != 1.0 or cfg.frequency_penalty != 0.0 or cfg.presence_penalty != 0.0:
            last_n = n_ctx if cfg.penalty_last_n == -1 else cfg.penalty_last_n
            s.add_penalties(last_n, cfg.repeat_penalty, cfg.frequency_penalty, cfg.presence_penalty)
            window = last_n
        if cfg.dry_multiplier > 0.0 and not (cfg.mirostat and not cfg.greedy):
            last_n = n_ctx if cfg.dry_penalty_last_n == -1 else cfg.dry_penalty_last_n
            s.add_dry(cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length, last_n, cfg.dry_sequence_breakers)
            window = max(window, last_n)
        if window > 0 and history:
            # penalties and DRY see the prompt; the samplers added below ignore accept()
            for tok in history[-window:]:
                s.accept(int(tok))
        if grammar:
            s.add_grammar(grammar)
        if cfg.greedy:
            s.add_greedy()
        elif cfg.mirostat == 1:
            s.add_temp(cfg.temperature).add_mirostat(n_vocab, cfg.seed, cfg.mirostat_tau, cfg.mirostat_eta)
        elif cfg.mirostat == 2:
            s.add_temp(cfg.temperature).add_mirostat_v2(cfg.seed, cfg.mirostat_tau, cfg.mirostat_eta)
        else:
            if cfg.top_n_sigma > 0:
                s.add_top_n_sigma(cfg.top_n_sigma)
            if cfg.top_k > 0:
                s.add_top_k(cfg.top_k)
            if cfg.typical_p < 1.0:
                s.add_typical(cfg.typical_p)
            if cfg.top_p < 1.0:
                s.add_top_p(cfg.top_p)
            if cfg.min_p > 0.0:
                s.add_min_p(cfg.min_p)
            if cfg.xtc_probability > 0.0:
                s.add_xtc(cfg.xtc_probability, cfg.xtc_threshold, 1, cfg.seed)
            s.add_temp(cfg.temperature).add_dist(cfg.seed)
    except BaseException:
        s.close()
        raise
    return s
