"""How much memory a model needs, from its GGUF file alone (no weights are read).

::

    from cyllama import estimate_memory_usage, estimate_gpu_layers

    est = estimate_memory_usage("model.gguf", n_ctx=8192)
    print(est)                      # weights, KV cache and compute buffer, in MiB
    fit = estimate_gpu_layers("model.gguf", available_vram_mb=4000, n_ctx=8192)
    print(fit.n_gpu_layers)         # as many layers as fit in 4000 MB

The parts are the ones llama.cpp allocates: the weights (each tensor's size in the file, per
repeating layer and outside them), the KV cache (per layer: K and V rows of ``head_count_kv x
key/value_length`` elements at the cache type's size, over the context llama.cpp pads to 256 cells;
sliding-window layers hold only their window plus a batch), and the compute buffer (dominated by
the logits of a batch: ``n_vocab x n_ubatch`` floats, plus the activations).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

__all__ = ["MemoryEstimate", "estimate_memory_usage", "estimate_gpu_layers", "auto_gpu_layers"]

_MiB = 1 << 20
_KV_PAD = 256  # llama.cpp rounds the KV cache up to this many cells
_TYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
               "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}
# every N-th layer attends globally, the others within the window (when the GGUF does not say)
_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "llama4": 4}


@dataclass
class MemoryEstimate:
    """What loading a model with a context takes (bytes), and how much of it goes to the GPU."""

    layers: int  # repeating layers (blocks) in the model
    graph_size: int  # compute buffer
    vram: int  # on the GPU for n_gpu_layers: their weights and KV, and the compute buffer
    vram_kv: int  # the KV cache part of vram
    total_size: int  # weights + KV cache + compute buffer
    tensor_split: Optional[List[int]] = None  # layers per GPU (one GPU: None)
    n_gpu_layers: int = 0
    model_size: int = 0  # all weights
    kv_size: int = 0  # the whole KV cache
    layer_sizes: List[int] = field(default_factory=list, repr=False)  # weights per layer
    n_ctx: int = 0

    @property
    def ram(self) -> int:
        """What stays in host memory (weights and KV of the layers not offloaded)."""
        return self.total_size - self.vram

    def __str__(self) -> str:
        mib = lambda n: f"{n / _MiB:,.1f} MiB"  # noqa: E731
        return (f"{self.layers} layers, n_ctx {self.n_ctx}: weights {mib(self.model_size)}, KV cache "
                f"{mib(self.kv_size)}, compute {mib(self.graph_size)}, total {mib(self.total_size)}; "
                f"{self.n_gpu_layers} layers on the GPU: {mib(self.vram)} VRAM ({mib(self.vram_kv)} KV)")


@dataclass
class _Shape:
    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    kv_per_layer: list[int]  # K+V elements per cell, per layer
    swa: list[bool]  # per layer: sliding window attention
    n_swa: int
    layer_sizes: list[int]
    other_size: int  # weights outside the layers (embeddings, output, norms)
    output_size: int  # the output layer (on the GPU only when every layer is)
    model_size: int


def _read(path: str | os.PathLike) -> _Shape:
    from .llama.gguf import GGUFContext

    g = GGUFContext.from_file(path)
    try:
        def val(key: str, default: Any = None) -> Any:
            return g.get_value(key) if key in g else default

        arch = val("general.architecture")
        if not isinstance(arch, str):
            raise ValueError(f"{path} has no general.architecture: not a model GGUF")
        n_layer = int(val(f"{arch}.block_count", 0))
        n_embd = int(val(f"{arch}.embedding_length", 0))
        n_head = val(f"{arch}.attention.head_count", 0)
        n_head_kv = val(f"{arch}.attention.head_count_kv", n_head)
        heads = n_head if isinstance(n_head, list) else [n_head] * n_layer
        heads_kv = n_head_kv if isinstance(n_head_kv, list) else [n_head_kv] * n_layer
        kv = []
        for il in range(n_layer):
            h = int(heads[il]) if il < len(heads) else 0
            hkv = int(heads_kv[il]) if il < len(heads_kv) else h
            k_len = int(val(f"{arch}.attention.key_length", n_embd // h if h else 0))
            v_len = int(val(f"{arch}.attention.value_length", k_len))
            kv.append(hkv * (k_len + v_len))
        n_swa = int(val(f"{arch}.attention.sliding_window", 0) or 0)
        pattern = val(f"{arch}.attention.sliding_window_pattern", _SWA_PATTERN.get(arch, 0))
        if isinstance(pattern, list):  # per layer: true where the layer uses the window
            swa = [bool(x) for x in pattern][:n_layer]
        elif n_swa and pattern:
            swa = [(il + 1) % int(pattern) != 0 for il in range(n_layer)]
        else:
            swa = [False] * n_layer
        n_vocab = val(f"{arch}.vocab_size")
        if n_vocab is None and "tokenizer.ggml.tokens" in g:
            from .llama._backend import lib

            n_vocab = int(lib.gguf_get_arr_n(g.ptr, g.find_key("tokenizer.ggml.tokens")))
        layer_sizes, other, output, embd = [0] * n_layer, 0, 0, 0
        names = set()
        for t in g.get_tensors():
            name, size = t["name"], int(t["size"])
            names.add(name)
            if name.startswith("blk."):
                try:
                    il = int(name.split(".")[1])
                except ValueError:
                    il = -1
                if 0 <= il < n_layer:
                    layer_sizes[il] += size
                    continue
            other += size
            if name.startswith("output."):
                output += size
            elif name == "token_embd.weight":
                embd = size
        if "output.weight" not in names:
            output += embd  # tied embeddings: llama.cpp puts a copy of them where the output layer runs
        return _Shape(arch, n_layer, n_embd, int(n_vocab or 0), kv, swa, n_swa, layer_sizes, other, output,
                      sum(layer_sizes) + other)
    finally:
        g.close()


def _cells(n: int) -> int:
    return -(-n // _KV_PAD) * _KV_PAD


def _estimate(shape: _Shape, n_ctx: int, n_ubatch: int, n_gpu_layers: int,
              type_k: str, type_v: str, swa_full: bool = True) -> MemoryEstimate:
    cells = _cells(n_ctx)
    # llama.cpp's C API default (swa_full) gives sliding-window layers a full-size cache too
    swa_cells = min(cells, _cells(shape.n_swa + n_ubatch)) if shape.n_swa and not swa_full else cells
    bpe = (_TYPE_BYTES[type_k] + _TYPE_BYTES[type_v]) / 2
    kv_layers = [int(shape.kv_per_layer[il] * (swa_cells if shape.swa[il] else cells) * bpe)
                 for il in range(shape.n_layer)]
    kv = sum(kv_layers)
    # the logits of a batch of outputs, then the activations (a few rows of n_embd per token)
    graph = 4 * n_ubatch * (shape.n_vocab + 4 * shape.n_embd)
    ngl = shape.n_layer + 1 if n_gpu_layers < 0 else min(max(n_gpu_layers, 0), shape.n_layer + 1)
    on_gpu = range(shape.n_layer - min(ngl, shape.n_layer), shape.n_layer)  # llama.cpp offloads the last layers
    vram_kv = sum(kv_layers[il] for il in on_gpu)
    vram = sum(shape.layer_sizes[il] for il in on_gpu) + vram_kv
    if ngl > shape.n_layer:
        vram += shape.output_size
    if ngl > 0:
        vram += graph
    return MemoryEstimate(layers=shape.n_layer, graph_size=graph, vram=vram, vram_kv=vram_kv,
                          total_size=shape.model_size + kv + graph, n_gpu_layers=ngl, model_size=shape.model_size,
                          kv_size=kv, layer_sizes=list(shape.layer_sizes), n_ctx=n_ctx)


def _check(n_ctx: int, n_batch: int) -> None:
    for name, v in (("n_ctx", n_ctx), ("n_batch", n_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def estimate_memory_usage(model_path: str | os.PathLike, n_ctx: int = 2048, n_batch: int = 512,
                          n_gpu_layers: int = 0, *, n_ubatch: int | None = None, type_k: str = "f16",
                          type_v: str = "f16", swa_full: bool = True) -> MemoryEstimate:
    """The memory a model takes with a context of ``n_ctx`` (bytes; see :class:`MemoryEstimate`),
    read from the GGUF header: no weights are loaded. ``n_gpu_layers`` (-1: all) sets ``vram``.
    ``swa_full=False`` (``LlamaContextParams.swa_full``) sizes sliding-window layers' caches to
    their window instead of the whole context."""
    _check(n_ctx, n_batch)
    for name, t in (("type_k", type_k), ("type_v", type_v)):
        if t not in _TYPE_BYTES:
            raise ValueError(f"{name} must be one of {sorted(_TYPE_BYTES)}, got {t!r}")
    shape = _read(model_path)
    return _estimate(shape, n_ctx, min(n_ubatch or n_batch, n_batch), n_gpu_layers, type_k, type_v, swa_full)


def estimate_gpu_layers(model_path: str | os.PathLike, available_vram_mb: float, n_ctx: int = 2048,
                        n_batch: int = 512, *, n_ubatch: int | None = None, type_k: str = "f16",
                        type_v: str = "f16", swa_full: bool = True) -> MemoryEstimate:
    """The most layers whose weights, KV cache and the compute buffer fit in ``available_vram_mb``
    megabytes (``n_gpu_layers`` of the result; 0 when not even one does, ``layers + 1`` when the
    output layer fits too)."""
    _check(n_ctx, n_batch)
    if isinstance(available_vram_mb, bool) or not isinstance(available_vram_mb, (int, float)) or available_vram_mb < 0:
        raise ValueError(f"available_vram_mb must be a number >= 0, got {available_vram_mb!r}")
    shape = _read(model_path)
    ub = min(n_ubatch or n_batch, n_batch)
    budget = int(available_vram_mb * 1_000_000)
    best = _estimate(shape, n_ctx, ub, 0, type_k, type_v, swa_full)
    for ngl in range(1, shape.n_layer + 2):
        est = _estimate(shape, n_ctx, ub, ngl, type_k, type_v, swa_full)
        if est.vram > budget:
            break
        best = est
    return best


def auto_gpu_layers(model_path: str | os.PathLike, n_ctx: int = 2048, n_batch: int = 512,
                    headroom: float = 0.9) -> int:
    """``n_gpu_layers`` for ``n_gpu_layers="auto"``: as many layers as fit in ``headroom`` of the
    free memory of the GPU with the most of it (0 without a GPU)."""
    from .llama._backend import devices

    free = max((d["memory_free"] for d in devices() if d["type"] in ("gpu", "igpu")), default=0)
    if free <= 0:
        return 0
    return estimate_gpu_layers(model_path, free * headroom / 1e6, n_ctx, n_batch).n_gpu_layers
