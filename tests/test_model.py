from __future__ import annotations

import pytest

from cyllama import ClosedError, LlamaModel, LlamaModelParams


def test_properties(model: LlamaModel) -> None:
    assert model.n_layers == 30
    assert model.n_embd == 576
    assert model.n_vocab == 49152
    assert model.n_ctx_train == 8192
    assert 130e6 < model.n_params < 140e6
    assert 90e6 < model.size < 100e6
    assert "llama" in model.desc


def test_metadata_and_template(model: LlamaModel) -> None:
    md = model.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == "30"
    assert model.meta_val_str("general.architecture") == "llama"
    assert model.meta_val_str("no.such.key") is None
    tmpl = model.chat_template()
    assert tmpl is not None and "<|im_start|>" in tmpl


def test_params_validation() -> None:
    p = LlamaModelParams(n_gpu_layers=0)
    assert p.n_gpu_layers == 0
    p.use_mmap = False
    assert p.use_mmap is False and p.load_mode == 0
    p.use_mlock = True
    assert p.use_mlock and p.load_mode == 2
    with pytest.raises(AttributeError, match="no parameter"):
        p.n_gpu_layer = 3
    with pytest.raises(TypeError):
        LlamaModelParams(vocab_only="yes")
    with pytest.raises(ValueError):
        LlamaModelParams(split_mode=9)
    with pytest.raises(TypeError):
        LlamaModelParams(bogus=1)


def test_close_is_idempotent_and_use_after_close_raises(model_path) -> None:
    with LlamaModel(model_path) as m:
        vocab = m.get_vocab()
        assert vocab.tokenize("hi")
    m.close()
    with pytest.raises(ClosedError):
        m.n_params
    with pytest.raises(ClosedError):
        vocab.tokenize("hi")
    with pytest.raises(ClosedError):
        m.get_vocab()
