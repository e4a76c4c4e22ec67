"""``Llama``: llama-cpp-python's high-level class, on cyllama's core classes.

The object keeps llama-cpp-python's state model: ``input_ids[:n_tokens]`` are the tokens whose KV
the context holds, a new prompt reuses the longest prefix it shares with them
(:func:`cyllama._generation.reuse_prefix`), and ``scores`` holds their logits with
``logits_all=True``. Sampling uses llama.cpp's sampler chain built from a
:class:`cyllama.GenerationConfig` (:func:`cyllama._config.build_sampler`).
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from .. import _logging
from .._config import GenerationConfig, build_sampler
from .._grammar_gate import GatedSampler, Grammar, GrammarGate
from .._tools.formats import single_token
from .._errors import ModelLoadError
from .._ffi import ffi
from .._generation import sample_token
from ..llama._backend import default_n_threads, lib, system_info
from ..llama.batch import LlamaBatch
from ..llama.context import LlamaContext, LlamaContextParams
from ..llama.model import LlamaModel, LlamaModelParams
from ..llama.sampler import LlamaSampler
from . import llama_chat_format
from . import llama_cpp as _C
from ._common import (LlamaState, LogitsProcessorList, StoppingCriteriaList, logits_to_logprobs,
                      longest_token_prefix)
from ._completion import CompletionMixin
from ._driver import token_ids, token_loop
from .llama_cache import BaseLlamaCache
from .llama_grammar import LlamaGrammar
from .llama_tokenizer import BaseLlamaTokenizer, LlamaTokenizer

__all__ = ["Llama", "LlamaLoadError"]

_NUMA_INITIALIZED = False


class LlamaLoadError(ModelLoadError, ValueError):
    """llama.cpp could not load the model (a ``ValueError``, as in llama-cpp-python, and a
    :class:`cyllama.ModelLoadError`)."""


class _Context(LlamaContext):
    """The drop-in's context: a :class:`cyllama.LlamaContext` with llama-cpp-python's ``.ctx``."""

    @property
    def ctx(self) -> Any:
        """The native ``llama_context *`` (cffi), ``None`` once closed."""
        return None if self.closed else self.ptr


class Llama(CompletionMixin):
    """High-level Python wrapper for a llama.cpp model (llama-cpp-python's ``Llama``).

    ``Llama(model_path, n_ctx=2048)`` loads a GGUF file; ``llm("prompt", max_tokens=32)`` and
    ``llm.create_chat_completion(messages=[...])`` return OpenAI-shaped dicts. Defaults and
    meanings follow llama-cpp-python (``n_ctx=0``: the model's training context; ``verbose=True``
    shows llama.cpp's log). Use it from one thread at a time.
    """

    _model: Optional[LlamaModel] = None
    _ctx: Optional[LlamaContext] = None
    _vocab_only = False
    _batch: Optional[LlamaBatch] = None
    _embd_batch: Optional[LlamaBatch] = None
    _lora_adapter: Any = None
    _sampler: Optional[LlamaSampler] = None
    _active: Any = None
    _scores_buf: Optional[np.ndarray] = None

    def __init__(
        self,
        model_path: str,
        *,
        # model
        n_gpu_layers: int = 0,
        split_mode: int = _C.LLAMA_SPLIT_MODE_LAYER,
        main_gpu: int = 0,
        tensor_split: Optional[List[float]] = None,
        rpc_servers: Optional[Union[str, List[str]]] = None,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        kv_overrides: Optional[Dict[str, Union[bool, int, float, str]]] = None,
        # context
        seed: int = _C.LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        rope_scaling_type: Optional[int] = _C.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
        pooling_type: int = _C.LLAMA_POOLING_TYPE_UNSPECIFIED,
        attention_type: int = _C.LLAMA_ATTENTION_TYPE_UNSPECIFIED,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        yarn_ext_factor: float = -1.0,
        yarn_attn_factor: float = 1.0,
        yarn_beta_fast: float = 32.0,
        yarn_beta_slow: float = 1.0,
        yarn_orig_ctx: int = 0,
        logits_all: bool = False,
        embedding: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool = False,
        op_offload: Optional[bool] = None,
        swa_full: Optional[bool] = None,
        # sampling
        no_perf: bool = False,
        last_n_tokens_size: int = 64,
        # LoRA
        lora_base: Optional[str] = None,
        lora_scale: float = 1.0,
        lora_path: Optional[str] = None,
        # backend
        numa: Union[bool, int] = False,
        # chat
        chat_format: Optional[str] = None,
        chat_handler: Optional[llama_chat_format.LlamaChatCompletionHandler] = None,
        # speculative decoding
        draft_model: Any = None,
        # tokenizer override
        tokenizer: Optional[BaseLlamaTokenizer] = None,
        # KV cache quantization
        type_k: Optional[int] = None,
        type_v: Optional[int] = None,
        # misc
        spm_infill: bool = False,
        verbose: bool = True,
        **kwargs: Any,
    ):
        self.verbose = bool(verbose)
        _logging.set_verbose(self.verbose)
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError(f"model_path must be a path, got {type(model_path).__name__}")
        self.model_path = os.fspath(model_path)
        self._init_kwargs = dict(
            n_gpu_layers=n_gpu_layers, split_mode=split_mode, main_gpu=main_gpu, tensor_split=tensor_split,
            rpc_servers=rpc_servers, vocab_only=vocab_only, use_mmap=use_mmap, use_mlock=use_mlock,
            kv_overrides=kv_overrides, seed=seed,
            n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=n_threads, n_threads_batch=n_threads_batch,
            rope_scaling_type=rope_scaling_type, pooling_type=pooling_type, attention_type=attention_type,
            rope_freq_base=rope_freq_base, rope_freq_scale=rope_freq_scale, yarn_ext_factor=yarn_ext_factor,
            yarn_attn_factor=yarn_attn_factor, yarn_beta_fast=yarn_beta_fast, yarn_beta_slow=yarn_beta_slow,
            yarn_orig_ctx=yarn_orig_ctx, logits_all=logits_all, embedding=embedding, offload_kqv=offload_kqv,
            flash_attn=flash_attn, op_offload=op_offload, swa_full=swa_full, no_perf=no_perf,
            last_n_tokens_size=last_n_tokens_size, lora_base=lora_base, lora_scale=lora_scale,
            lora_path=lora_path, numa=numa, chat_format=chat_format, chat_handler=chat_handler,
            type_k=type_k, type_v=type_v, spm_infill=spm_infill, verbose=verbose)
        self.draft_model = draft_model  # proposes tokens to verify in one batch (e.g. LlamaPromptLookupDecoding)
        for name in ("n_ctx", "n_batch", "n_ubatch", "last_n_tokens_size"):
            v = locals()[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if n_batch < 1 or n_ubatch < 1:
            raise ValueError("n_batch and n_ubatch must be >= 1")
        self.numa = self._init_numa(numa)

        # -- model params ------------------------------------------------------------------
        mp = LlamaModelParams()
        mp.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers
        mp.split_mode = split_mode
        mp.main_gpu = main_gpu
        self.tensor_split = tensor_split
        if tensor_split is not None:
            n_dev = int(lib.llama_max_devices())
            if len(tensor_split) > n_dev:
                raise ValueError(f"Attempt to split tensors that exceed maximum supported devices. "
                                 f"Current LLAMA_MAX_DEVICES={n_dev}")
            mp.tensor_split = tensor_split
        self.rpc_servers = rpc_servers
        mp.rpc_servers = rpc_servers  # "host:port,host:port" or a list: layers on llama.cpp rpc-servers
        mp.vocab_only = bool(vocab_only)
        use_mmap = bool(use_mmap) and lora_path is None
        mp.load_mode = (3 if use_mlock else 1) if use_mmap else (2 if use_mlock else 0)
        self.kv_overrides = kv_overrides
        if kv_overrides:
            self._set_kv_overrides(mp, kv_overrides)
        self.model_params = mp

        if not os.path.exists(self.model_path):
            raise ValueError(f"Model path does not exist: {model_path}")
        try:
            self._model = LlamaModel(self.model_path, mp, verbose=self.verbose)
        except ModelLoadError as e:
            raise LlamaLoadError(f"Failed to load model from file: {self.model_path} ({e})") from e
        self._vocab = self._model.get_vocab()
        self.tokenizer_ = tokenizer or LlamaTokenizer(self)

        # -- context params ----------------------------------------------------------------
        if n_ctx == 0:
            n_ctx = self._model.n_ctx_train or 512
        self.n_batch = min(n_ctx, n_batch)
        n_cpu = default_n_threads()
        self.n_threads = n_threads or max(n_cpu // 2, 1)
        self.n_threads_batch = n_threads_batch or n_cpu
        self._seed = seed or _C.LLAMA_DEFAULT_SEED
        cp = LlamaContextParams()
        cp.n_ctx = n_ctx
        cp.n_batch = self.n_batch
        cp.n_ubatch = min(self.n_batch, n_ubatch)
        cp.n_threads = self.n_threads
        cp.n_threads_batch = self.n_threads_batch
        cp.rope_scaling_type = rope_scaling_type if rope_scaling_type is not None else -1
        cp.pooling_type = pooling_type
        cp.attention_type = attention_type
        cp.rope_freq_base = rope_freq_base
        cp.rope_freq_scale = rope_freq_scale
        cp.yarn_ext_factor = yarn_ext_factor
        cp.yarn_attn_factor = yarn_attn_factor
        cp.yarn_beta_fast = yarn_beta_fast
        cp.yarn_beta_slow = yarn_beta_slow
        cp.yarn_orig_ctx = yarn_orig_ctx
        cp.embeddings = bool(embedding)
        cp.offload_kqv = bool(offload_kqv)
        auto_fa = not isinstance(flash_attn, bool) and flash_attn == -1
        cp.flash_attn_type = -1 if auto_fa else (1 if flash_attn else 0)
        if op_offload is not None:
            cp.op_offload = op_offload
        if swa_full is not None:
            cp.swa_full = swa_full
        if type_k is not None:
            cp.type_k = type_k
        if type_v is not None:
            cp.type_v = type_v
        cp.no_perf = bool(no_perf)
        if embedding:
            cp.n_seq_max = max(1, min(self.n_batch, int(lib.llama_max_parallel_sequences())))
            cp.kv_unified = True
        self.context_params = cp
        self._logits_all = bool(logits_all)
        self.last_n_tokens_size = last_n_tokens_size
        self.cache: Optional[BaseLlamaCache] = None
        self.lora_base = lora_base
        self.lora_scale = lora_scale
        self.lora_path = lora_path
        self.spm_infill = bool(spm_infill)

        # A vocabulary-only model gets a context (as in llama-cpp-python) that is never evaluated:
        # it has no weights to run.
        self._vocab_only = bool(vocab_only)
        self._ctx = _Context(self._model, cp)
        if not vocab_only:
            self._batch = LlamaBatch(self.n_batch, 0, 1)
            if lora_path:
                self._apply_lora(lora_path, lora_scale)
        if self.verbose:
            print(system_info(), file=sys.stderr)

        self._n_vocab = self.n_vocab()
        self._n_ctx = self.n_ctx()
        self._token_nl = self.token_nl()
        self._token_eos = self.token_eos()
        self.n_tokens = 0
        self._requires_eval = True  # restored or truncated state must decode before sampling
        self.input_ids: npt.NDArray[np.intc] = np.zeros((self._n_ctx,), dtype=np.intc)
        try:
            self.metadata: Dict[str, str] = self._model.metadata
        except Exception as e:  # pragma: no cover - defensive
            self.metadata = {}
            if self.verbose:
                print(f"Failed to load metadata: {e}", file=sys.stderr)
        if self.verbose:
            print(f"Model metadata: {self.metadata}", file=sys.stderr)
        self._setup_chat(chat_format, chat_handler)
        self._is_recurrent = self._model.is_recurrent
        self._is_hybrid = bool(lib.llama_model_is_hybrid(self._model.ptr))
        if kwargs and self.verbose:
            print(f"Llama: ignoring unknown options {sorted(kwargs)}", file=sys.stderr)

    # -- construction helpers ----------------------------------------------------------------
    @staticmethod
    def _init_numa(numa: Union[bool, int]) -> int:
        global _NUMA_INITIALIZED
        strategy = (1 if numa else 0) if isinstance(numa, bool) else int(numa)
        if strategy and not _NUMA_INITIALIZED:
            from ..llama._backend import ensure_backend

            ensure_backend()
            lib.llama_numa_init(strategy)
            _NUMA_INITIALIZED = True
        return strategy

    @staticmethod
    def _set_kv_overrides(mp: LlamaModelParams, overrides: Dict[str, Any]) -> None:
        arr = ffi.new("struct llama_model_kv_override[]", len(overrides) + 1)
        for i, (k, v) in enumerate(overrides.items()):
            key = str(k).encode("utf-8")
            if not key or len(key) > 127:
                raise ValueError(f"kv_overrides key {k!r} must be 1..127 bytes")
            arr[i].key = key
            if isinstance(v, bool):
                arr[i].tag = lib.LLAMA_KV_OVERRIDE_TYPE_BOOL
                arr[i].val_bool = v
            elif isinstance(v, int):
                arr[i].tag = lib.LLAMA_KV_OVERRIDE_TYPE_INT
                arr[i].val_i64 = v
            elif isinstance(v, float):
                arr[i].tag = lib.LLAMA_KV_OVERRIDE_TYPE_FLOAT
                arr[i].val_f64 = v
            elif isinstance(v, str):
                b = v.encode("utf-8")
                if len(b) > 127:
                    raise ValueError(f"Value for {k} is too long: {v}")
                arr[i].tag = lib.LLAMA_KV_OVERRIDE_TYPE_STR
                arr[i].val_str = b
            else:
                raise ValueError(f"Unknown value type for {k}: {v}")
        mp._keepalive["kv_overrides"] = arr
        mp._struct.kv_overrides = arr

    def _apply_lora(self, path: str, scale: float) -> None:
        if not os.path.isfile(path):
            raise ValueError(f"LoRA path does not exist: {path}")
        adapter = lib.llama_adapter_lora_init(self._model.ptr, os.fsencode(path))
        if adapter == ffi.NULL:
            raise RuntimeError(f"Failed to initialize LoRA adapter from lora path: {path}")
        self._lora_adapter = adapter
        adapters = ffi.new("struct llama_adapter_lora *[1]", [adapter])
        scales = ffi.new("float[1]", [float(scale)])
        if lib.llama_set_adapters_lora(self._ctx.ptr, adapters, 1, scales):
            raise RuntimeError(f"Failed to set LoRA adapter from lora path: {path}")

    def _setup_chat(self, chat_format: Optional[str], chat_handler: Any) -> None:
        self.chat_format = chat_format
        self.chat_handler = chat_handler
        self._chat_handlers: Dict[str, llama_chat_format.LlamaChatCompletionHandler] = {}
        eos_id, bos_id = self.token_eos(), self.token_bos()
        eos_token = self._vocab.get_text(eos_id) if 0 <= eos_id < self._n_vocab else ""
        bos_token = self._vocab.get_text(bos_id) if 0 <= bos_id < self._n_vocab else ""
        choices = {name[10:]: tmpl for name, tmpl in self.metadata.items()
                   if name.startswith("tokenizer.chat_template.")}
        default = self._model.chat_template()
        if default is not None:
            choices["chat_template.default"] = default
        if self.verbose and choices:
            print(f"Available chat formats from metadata: {', '.join(choices)}", file=sys.stderr)
        for name, template in choices.items():
            try:
                self._chat_handlers[name] = llama_chat_format.Jinja2ChatFormatter(
                    template=template, eos_token=eos_token, bos_token=bos_token,
                    stop_token_ids=[eos_id]).to_chat_handler()
            except Exception as e:  # a template Jinja cannot compile: keep the model usable
                if self.verbose:
                    print(f"Skipping chat template {name}: {e}", file=sys.stderr)
        if self.chat_format is None and self.chat_handler is None and "chat_template.default" in self._chat_handlers:
            guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(
                {"tokenizer.chat_template": choices["chat_template.default"]})
            self.chat_format = guessed or "chat_template.default"
            if self.verbose:
                print(f"Guessed chat format: {self.chat_format}", file=sys.stderr)
        if self.chat_format is None and self.chat_handler is None:
            self.chat_format = "llama-2"
            if self.verbose:
                print(f"Using fallback chat format: {self.chat_format}", file=sys.stderr)

    # -- properties ------------------------------------------------------------------------
    @property
    def ctx(self) -> Any:
        """The native ``llama_context *`` (cffi), for ``cyllama.llama._backend.lib`` calls."""
        return self._require_ctx().ptr

    @property
    def model(self) -> Any:
        """The native ``llama_model *`` (cffi)."""
        return self._require_model().ptr

    @property
    def scores(self) -> npt.NDArray[np.single]:
        """Logits of the evaluated tokens (rows filled with ``logits_all=True``)."""
        if self._scores_buf is None:
            rows = self._n_ctx if self._logits_all else self.n_batch
            self._scores_buf = np.zeros((rows, self._n_vocab), dtype=np.single)  # pages committed on write
        return self._scores_buf

    @scores.setter
    def scores(self, value: npt.NDArray[np.single]) -> None:
        self._scores_buf = value

    @property
    def _input_ids(self) -> npt.NDArray[np.intc]:
        return self.input_ids[: self.n_tokens]

    @property
    def _scores(self) -> npt.NDArray[np.single]:
        return self.scores[: self.n_tokens, :]

    @property
    def eval_tokens(self) -> Deque[int]:
        return deque(self.input_ids[: self.n_tokens].tolist(), maxlen=self._n_ctx)

    @property
    def eval_logits(self) -> Deque[List[float]]:
        return deque(self.scores[: self.n_tokens, :].tolist(), maxlen=self._n_ctx if self._logits_all else 1)

    def _require_model(self) -> LlamaModel:
        if self._model is None or self._model.closed:
            raise ValueError("this Llama is closed")
        return self._model

    def _require_ctx(self) -> LlamaContext:
        self._require_model()
        if self._vocab_only:
            raise RuntimeError("this Llama was loaded with vocab_only=True: it can tokenize, not evaluate")
        return self._ctx

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        """Tokenizes UTF-8 ``text``; ``special`` parses special-token text such as ``</s>``."""
        self._require_model()
        return self.tokenizer_.tokenize(text, add_bos, special)

    def detokenize(self, tokens: List[int], prev_tokens: Optional[List[int]] = None, special: bool = False) -> bytes:
        """Token ids to UTF-8 bytes (special tokens as text with ``special=True``)."""
        self._require_model()
        return self.tokenizer_.detokenize(tokens, prev_tokens=prev_tokens, special=special)

    def tokenizer(self) -> LlamaTokenizer:
        return LlamaTokenizer(self)

    def set_cache(self, cache: Optional[BaseLlamaCache]) -> None:
        self.cache = cache

    def set_seed(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self._seed = int(seed)

    def reset(self) -> None:
        """Forgets the evaluated tokens (the next prompt is evaluated from scratch)."""
        self.n_tokens = 0
        self._requires_eval = True
        if self._ctx is not None and not self._ctx.closed and not self._vocab_only:
            self._ctx.kv_cache_clear()

    # -- evaluation ------------------------------------------------------------------------
    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluates ``tokens`` after the ``n_tokens`` already evaluated."""
        self._eval(tokens, self._logits_all)

    def _eval(self, tokens: Sequence[int], all_logits: bool,
              on_rows: Optional[Callable[[int, np.ndarray], None]] = None) -> None:
        ctx = self._require_ctx()
        arr = self._vocab.check_tokens(tokens)
        n = len(arr)
        if n == 0:
            return
        if self.n_tokens + n > self._n_ctx:
            raise ValueError(f"Requested tokens ({self.n_tokens + n}) exceed context window of {self._n_ctx}")
        ctx.kv_cache_seq_rm(-1, self.n_tokens, -1)
        batch, step = self._batch, self.n_batch
        store = all_logits and self._logits_all
        for start in range(0, n, step):
            chunk = arr[start:start + step]
            m = len(chunk)
            n_past = self.n_tokens
            batch.clear()
            if m == 1:
                batch.add(int(chunk[0]), n_past, 0, True)
            else:
                batch.add_sequence(chunk, n_past, 0, logits_last=True)
                if all_logits:
                    for k in range(m - 1):
                        batch.set_logits(k, True)
            try:
                ctx.decode(batch)
            except BaseException:
                ctx.kv_cache_seq_rm(-1, n_past, -1)
                self._requires_eval = True
                raise
            self.input_ids[n_past:n_past + m] = chunk
            if all_logits:
                with ctx._busy:  # read llama.cpp's buffer in place, before anything can close it
                    rows = ctx.get_logits(copy=False)
                    if store:
                        self.scores[n_past:n_past + m, :] = rows
                    if on_rows is not None:
                        on_rows(n_past, rows)
            self.n_tokens += m
            self._requires_eval = False

    # -- sampling --------------------------------------------------------------------------
    @staticmethod
    def _grammar_text(grammar: Any) -> Optional[str]:
        if grammar is None:
            return None
        if isinstance(grammar, Grammar):  # a tool-call grammar from the OpenAI layer (maybe lazy)
            return grammar
        if isinstance(grammar, LlamaGrammar):
            return grammar._grammar
        if isinstance(grammar, str):
            return LlamaGrammar.from_string(grammar)._grammar
        raise TypeError(f"grammar must be a LlamaGrammar, got {type(grammar).__name__}")

    def _sampling_config(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                         temp: float = 0.80, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                         presence_penalty: float = 0.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                         mirostat_eta: float = 0.1, logit_bias: Optional[Dict[Any, float]] = None) -> GenerationConfig:
        """A validated :class:`GenerationConfig` with llama-cpp-python's meanings: ``temp`` 0 is greedy,
        negative samples from the raw distribution; mirostat replaces the other filters."""
        def num(name: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or math.isnan(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
            return float(v)

        temp, top_p, min_p, typical_p = num("temperature", temp), num("top_p", top_p), num("min_p", min_p), \
            num("typical_p", typical_p)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise ValueError(f"top_k must be an int, got {top_k!r}")
        bias: Dict[int, float] = {}
        for k, v in (logit_bias or {}).items():
            try:
                tok = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}") from None
            if not 0 <= tok < self._n_vocab:
                raise ValueError(f"logit_bias token {tok} is out of range for a vocabulary of {self._n_vocab}")
            bias[tok] = num(f"logit_bias[{tok}]", v)
        mode = int(mirostat_mode) if mirostat_mode else 0
        fields: Dict[str, Any] = dict(
            temperature=max(temp, 0.0), top_k=max(int(top_k), 0), top_p=min(max(top_p, 1e-9), 1.0),
            min_p=min(max(min_p, 0.0), 1.0), typical_p=min(max(typical_p, 1e-9), 1.0),
            repeat_penalty=num("repeat_penalty", repeat_penalty), frequency_penalty=num("frequency_penalty",
                                                                                        frequency_penalty),
            presence_penalty=num("presence_penalty", presence_penalty), penalty_last_n=self.last_n_tokens_size,
            mirostat=mode, mirostat_tau=num("mirostat_tau", mirostat_tau),
            mirostat_eta=num("mirostat_eta", mirostat_eta), logit_bias=bias)
        if temp < 0:  # llama-cpp-python: sample from the distribution as it is
            fields.update(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, mirostat=0)
        elif temp > 0 and mode:
            fields["temperature"] = 1.0  # llama-cpp-python's mirostat chain has no temperature step
        return GenerationConfig(**fields)

    def _special_token(self, text: str) -> Optional[int]:
        return single_token(self._vocab, text)

    def _build_sampler(self, cfg: GenerationConfig, grammar: Any = None) -> Any:
        """The sampler chain for ``cfg``; with a grammar, checked after the chain picks (as llama-server)."""
        seed = int(self._seed) & 0xFFFFFFFF if self._seed != -1 else -1
        gate = GrammarGate(self._vocab, grammar) if grammar else None
        try:
            chain = build_sampler(cfg.replace(seed=seed), self._vocab, None)
        except BaseException:
            if gate is not None:
                gate.close()
            raise
        return chain if gate is None else GatedSampler(chain, gate)

    def _init_sampler(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                      temp: float = 0.80, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                      presence_penalty: float = 0.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
                      mirostat_eta: float = 0.1, mirostat_tau: float = 5.0, penalize_nl: bool = True,
                      logits_processor: Optional[LogitsProcessorList] = None,
                      grammar: Optional[LlamaGrammar] = None) -> LlamaSampler:
        cfg = self._sampling_config(top_k, top_p, min_p, typical_p, temp, repeat_penalty, frequency_penalty,
                                    presence_penalty, mirostat_mode, mirostat_tau, mirostat_eta)
        return self._build_sampler(cfg, self._grammar_text(grammar))

    def _sample_token(self, sampler: LlamaSampler, logits_processor: Any, idx: int = -1,
                      n_seen: Optional[int] = None) -> int:
        ids = self.input_ids[: self.n_tokens if n_seen is None else n_seen] if logits_processor is not None else None
        return sample_token(self._ctx, sampler, idx, ids, None, logits_processor)[0]

    def sample(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
               temp: float = 0.80, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
               presence_penalty: float = 0.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
               mirostat_eta: float = 0.1, mirostat_tau: float = 5.0, penalize_nl: bool = True,
               logits_processor: Optional[LogitsProcessorList] = None, grammar: Optional[LlamaGrammar] = None,
               idx: Optional[int] = None) -> int:
        """Samples a token from the logits of the last evaluated token (or of position ``idx``
        with ``logits_all``)."""
        self._require_ctx()
        if self.n_tokens <= 0:
            raise ValueError("no tokens have been evaluated: call eval() first")
        sampler = self._sampler
        tmp = sampler is None
        if tmp:
            sampler = self._init_sampler(top_k, top_p, min_p, typical_p, temp, repeat_penalty, frequency_penalty,
                                         presence_penalty, tfs_z, mirostat_mode, mirostat_eta, mirostat_tau,
                                         penalize_nl, logits_processor, grammar)
        try:
            ridx = idx - self.n_tokens if idx is not None else -1
            return self._sample_token(sampler, logits_processor, ridx)
        finally:
            if tmp:
                sampler.close()

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: Optional[LogitsProcessorList] = None,
                 stopping_criteria: Optional[StoppingCriteriaList] = None,
                 grammar: Optional[LlamaGrammar] = None) -> Iterator[int]:
        """A generator of token ids for the prompt ``tokens`` (never stops by itself: stop on EOS,
        a length, or a stopping criterion). With ``reset`` the prefix ``tokens`` shares with what
        was evaluated before is reused; ``send(list_of_tokens)`` inserts tokens after the last one."""
        self._require_ctx()
        toks = self._vocab.check_tokens(list(tokens) if not isinstance(tokens, np.ndarray) else tokens).tolist()
        sampler = self._init_sampler(top_k, top_p, min_p, typical_p, temp, repeat_penalty, frequency_penalty,
                                     presence_penalty, tfs_z, mirostat_mode, mirostat_eta, mirostat_tau,
                                     penalize_nl, logits_processor, grammar)
        # generate() never stops by itself: no length limit, and a full context raises on the next eval
        return token_ids(self._generate_tokens(toks, sampler, reset, None, max_tokens=sys.maxsize, n_ctx=sys.maxsize,
                                               ignore_eos=True, logits_processor=logits_processor,
                                               stopping_criteria=stopping_criteria))

    def _generate_tokens(self, tokens: List[int], sampler: Any, reset: bool,
                         on_logits: Optional[Callable[[np.ndarray], None]] = None, **gen_kw: Any):
        """The decoding core's :class:`~cyllama._generation.Generation` driven on this object's state
        (:func:`cyllama.llama_cpp._driver.token_loop`): an iterator of its chunks."""
        me: List[Any] = []
        loop = token_loop(self, tokens, sampler, reset, on_logits, gen_kw, me)
        me.append(loop)
        return loop

    def _claim(self, gen: Any) -> None:
        """Ends an unfinished generation (a stream left half-read) before a new one starts."""
        prev = self._active() if self._active is not None else None
        if prev is not None and prev is not gen:
            try:
                prev.close()
            except ValueError:
                raise RuntimeError("cannot start a generation from inside a running one (e.g. from a logits "
                                   "processor or another thread)") from None
        self._active = weakref.ref(gen)

    # -- embeddings ------------------------------------------------------------------------
    def create_embedding(self, input: Union[str, List[str]], model: Optional[str] = None) -> Dict[str, Any]:
        """OpenAI-shaped embeddings of a string or a list of strings (needs ``embedding=True``)."""
        model_name = model if model is not None else self.model_path
        inputs = input if isinstance(input, list) else [input]
        embeds, total_tokens = self.embed(inputs, return_count=True)
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": emb, "index": i} for i, emb in enumerate(embeds)],
            "model": model_name,
            "usage": {"prompt_tokens": total_tokens, "total_tokens": total_tokens},
        }

    def embed(self, input: Union[str, List[str]], normalize: bool = False, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings as lists of floats: one per string, or one per token with pooling "none"
        (the default for generative models; pass ``pooling_type=LLAMA_POOLING_TYPE_MEAN``)."""
        ctx = self._require_ctx()
        if not self.context_params.embeddings:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        inputs = [input] if isinstance(input, str) else list(input)
        for i, t in enumerate(inputs):
            if not isinstance(t, str):
                raise TypeError(f"input {i} must be a string, got {type(t).__name__}")
        n_batch, n_seq_max = self.n_batch, ctx.n_seq_max
        pooling = ctx.pooling_type
        if self._embd_batch is None:
            self._embd_batch = LlamaBatch(n_batch, 0, n_seq_max)
        batch = self._embd_batch
        encoder_only = self._model.has_encoder and not self._model.has_decoder
        data: List[Any] = []

        def decode_batch(sizes: List[int]) -> None:
            ctx.kv_cache_clear()
            (ctx.encode if encoder_only else ctx.decode)(batch)
            if pooling == _C.LLAMA_POOLING_TYPE_NONE:
                pos = 0
                for size in sizes:
                    rows = [ctx.get_embeddings_ith(pos + j) for j in range(size)]
                    data.append([(_normalize(r) if normalize else r).tolist() for r in rows])
                    pos += size
            else:
                for i in range(len(sizes)):
                    e = ctx.get_embeddings_seq(i)
                    data.append((_normalize(e) if normalize else e).tolist())
            batch.clear()

        total, sizes, used = 0, [], 0
        try:
            batch.clear()
            for i, text in enumerate(inputs):
                toks = self.tokenize(text.encode("utf-8"))
                if truncate:
                    toks = toks[:n_batch]
                if not toks:
                    raise ValueError(f"input {i} is empty (it has no tokens)")
                if len(toks) > n_batch:
                    raise ValueError(f"Requested tokens ({len(toks)}) exceed batch size of {n_batch}")
                total += len(toks)
                if sizes and (used + len(toks) > n_batch or len(sizes) >= n_seq_max):
                    decode_batch(sizes)
                    sizes, used = [], 0
                start = batch.n_tokens
                batch.add_sequence(toks, 0, len(sizes), logits_last=True)
                for k in range(start, batch.n_tokens):
                    batch.set_logits(k, True)
                sizes.append(len(toks))
                used += len(toks)
            if sizes:
                decode_batch(sizes)
        finally:
            batch.clear()
            self.reset()
        output = data[0] if isinstance(input, str) else data
        return (output, total) if return_count else output

    # -- chat ------------------------------------------------------------------------------
    def create_chat_completion(
        self,
        messages: List[Dict[str, Any]],
        functions: Optional[List[Dict[str, Any]]] = None,
        function_call: Optional[Any] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Optional[Any] = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Optional[Union[str, List[str]]] = [],
        seed: Optional[int] = None,
        response_format: Optional[Dict[str, Any]] = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        logits_processor: Optional[LogitsProcessorList] = None,
        grammar: Optional[LlamaGrammar] = None,
        logit_bias: Optional[Dict[int, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
    ) -> Any:
        """A chat completion (``chat.completion`` dict, or ``chat.completion.chunk`` dicts with
        ``stream=True``) formatted with ``chat_handler``, ``chat_format`` or the model's template.
        ``tool_choice={"type": "function", "function": {"name": ...}}`` forces that tool's call
        (arguments constrained to its parameters schema); ``response_format={"type": "json_object"}``
        (optionally with ``"schema"``) constrains the answer to JSON."""
        self._require_ctx()
        handler = (self.chat_handler or self._chat_handlers.get(self.chat_format)
                   or llama_chat_format.get_chat_completion_handler(self.chat_format))
        return handler(
            llama=self, messages=messages, functions=functions, function_call=function_call, tools=tools,
            tool_choice=tool_choice, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            typical_p=typical_p, logprobs=logprobs, top_logprobs=top_logprobs, stream=stream, stop=stop,
            seed=seed, response_format=response_format, max_tokens=max_tokens, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, repeat_penalty=repeat_penalty, tfs_z=tfs_z,
            mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`create_chat_completion` returning ``openai`` package objects (``ChatCompletion`` /
        ``ChatCompletionChunk``)."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("To use create_chat_completion_openai_v1, you must install the openai package. "
                              "You can install it with `pip install openai`.") from None
        stream = kwargs.get("stream", False)
        if not isinstance(stream, bool):
            raise TypeError("stream must be True or False")
        if stream:
            return (ChatCompletionChunk(**chunk) for chunk in self.create_chat_completion(*args, **kwargs))
        return ChatCompletion(**self.create_chat_completion(*args, **kwargs))

    # -- state -----------------------------------------------------------------------------
    def save_state(self) -> LlamaState:
        """A snapshot of the evaluated tokens and the KV cache; restore it with :meth:`load_state`."""
        ctx = self._require_ctx()
        data = ctx.get_state()
        scores = self._scores.copy() if self._logits_all else np.zeros((0, self._n_vocab), dtype=np.single)
        if self.verbose:
            print(f"Llama.save_state: saving {len(data)} bytes of llama state", file=sys.stderr)
        return LlamaState(input_ids=self.input_ids.copy(), scores=scores, n_tokens=self.n_tokens,
                          llama_state=data, llama_state_size=len(data), seed=self._seed)

    def load_state(self, state: LlamaState) -> None:
        """Restores a :meth:`save_state` snapshot (ValueError when it does not fit this context)."""
        ctx = self._require_ctx()
        if not isinstance(state, LlamaState):
            raise TypeError(f"state must be a LlamaState, got {type(state).__name__}")
        n = int(state.n_tokens)
        if not 0 <= n <= self._n_ctx or len(state.input_ids) < n:
            raise ValueError(f"the state holds {n} tokens; this context holds {self._n_ctx}")
        ctx.set_state(bytes(state.llama_state[: state.llama_state_size]))
        ids = np.zeros((self._n_ctx,), dtype=np.intc)
        ids[:n] = np.asarray(state.input_ids[:n], dtype=np.intc)
        self.input_ids = ids
        self.n_tokens = n
        if self._logits_all and getattr(state, "scores", None) is not None and len(state.scores) >= n and n:
            self.scores[:n, :] = state.scores[:n]
        self._requires_eval = True
        self._seed = state.seed

    # -- sizes and special tokens ----------------------------------------------------------
    def n_ctx(self) -> int:
        """The context window size."""
        return self._ctx.n_ctx if self._ctx is not None else int(self.context_params.n_ctx)

    def n_embd(self) -> int:
        return self._require_model().n_embd

    def n_vocab(self) -> int:
        return self._require_model().n_vocab

    def token_eos(self) -> int:
        return self._vocab.eos

    def token_bos(self) -> int:
        return self._vocab.bos

    def token_nl(self) -> int:
        return self._vocab.nl

    def pooling_type(self) -> int:
        return self._require_ctx().pooling_type

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the context and the model. Idempotent."""
        active = self._active() if self._active is not None else None
        if active is not None:
            try:
                active.close()
            except Exception:
                pass
        self._active = None
        for name in ("_sampler", "_embd_batch", "_batch", "_ctx"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
                setattr(self, name, None)
        if self._lora_adapter is not None:
            try:
                lib.llama_adapter_lora_free(self._lora_adapter)
            except Exception:
                pass
            self._lora_adapter = None
        if self._model is not None:
            self._model.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> Dict[str, Any]:
        return dict(model_path=self.model_path, **self._init_kwargs)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        closed = self._model is None or self._model.closed
        return f"<Llama {Path(self.model_path).name}{' (closed)' if closed else f' n_ctx={self._n_ctx}'}>"

    def _print_timings(self) -> None:
        d = self._ctx.perf_data()
        pp = d["n_p_eval"] / d["t_p_eval_ms"] * 1e3 if d["t_p_eval_ms"] > 0 else 0.0
        tg = d["n_eval"] / d["t_eval_ms"] * 1e3 if d["t_eval_ms"] > 0 else 0.0
        print(f"llama_perf_context_print: prompt eval time = {d['t_p_eval_ms']:10.2f} ms / {d['n_p_eval']:5d} tokens "
              f"({pp:8.2f} tokens per second)\nllama_perf_context_print:        eval time = {d['t_eval_ms']:10.2f} "
              f"ms / {d['n_eval']:5d} runs   ({tg:8.2f} tokens per second)", file=sys.stderr)

    # -- static helpers --------------------------------------------------------------------
    logits_to_logprobs = staticmethod(logits_to_logprobs)
    longest_token_prefix = staticmethod(longest_token_prefix)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: Optional[str], additional_files: Optional[List[str]] = None,
                        local_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
                        local_dir_use_symlinks: Any = "auto",
                        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None, **kwargs: Any) -> "Llama":
        """Loads ``filename`` (a name or a glob such as ``"*q4_0.gguf"``) of a Hugging Face repository:
        from the Hugging Face cache when it is there (``cache_dir``, else ``HF_HUB_CACHE``/``HF_HOME``),
        else downloaded (honouring ``HF_ENDPOINT``, ``HF_TOKEN``; into cyllama's cache, or ``cache_dir``).
        With ``HF_HUB_OFFLINE=1`` nothing is downloaded: a file in neither cache raises
        ``huggingface_hub``'s ``LocalEntryNotFoundError`` (a ``FileNotFoundError``). ``local_dir``
        puts the file there instead; ``additional_files`` are fetched too."""
        from ._pretrained import resolve_pretrained

        path = resolve_pretrained(repo_id, filename, additional_files, local_dir=local_dir, cache_dir=cache_dir)
        return cls(model_path=str(path), **kwargs)


def _normalize(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
