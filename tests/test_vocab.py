"""Tokenization against llama.cpp's own test vectors (models/ggml-vocab-*.gguf.inp/.out)."""

from __future__ import annotations

import pytest

from cyllama import _assets

VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2", "phi-3", "falcon", "starcoder"]


def _cases(name: str) -> list[tuple[str, list[int]]]:
    """Each input ends with a separator line; each output line holds the expected ids."""
    base = _assets.vocab_model_path(name)
    inp = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    out = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")[: len(inp)]
    assert len(inp) == len(out)
    return [(text, [int(t) for t in line.split()]) for text, line in zip(inp, out)]


def test_llama_spm_known_ids(vocab_model) -> None:
    v = vocab_model("llama-spm").get_vocab()
    assert v.tokenize("Hello World") == [1, 15043, 2787]
    assert v.tokenize("Hello World</s>", parse_special=True) == [1, 15043, 2787, 2]
    assert v.tokenize("Hello World", add_special=False) == [15043, 2787]
    assert v.vocab_type == "spm" and v.bos == 1 and v.eos == 2


@pytest.mark.parametrize("name", VOCABS)
def test_reference_vectors(vocab_model, name: str) -> None:
    cases = _cases(name)
    assert len(cases) > 10
    v = vocab_model(name).get_vocab()
    bad = [(text, ids, v.tokenize(text, add_special=False, parse_special=True)) for text, ids in cases
           if v.tokenize(text, add_special=False, parse_special=True) != ids]
    assert not bad, bad[:3]


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe", "qwen2", "gpt-2"])
def test_round_trip_non_ascii(vocab_model, name: str) -> None:
    v = vocab_model(name).get_vocab()
    for text in ["Grüße aus Köln", "日本語のテキスト", "emoji 🦙🚀 mix", "Ünïcödé — “quotes”"]:
        toks = v.tokenize(text, add_special=False)
        out = v.detokenize(toks)
        assert out.strip() == text.strip(), (name, text, out)
        # pieces joined byte-wise give the same text
        assert b"".join(v.token_to_bytes(t) for t in toks).decode("utf-8").strip() == text.strip()


def test_token_checks(vocab_model) -> None:
    v = vocab_model("llama-spm").get_vocab()
    with pytest.raises(ValueError, match="out of range"):
        v.token_to_piece(v.n_vocab)
    with pytest.raises(ValueError, match="out of range"):
        v.detokenize([1, -5])
    with pytest.raises(TypeError):
        v.is_eog("a")
    assert v.is_eog(v.eos)
    assert v.get_text(15043) == "▁Hello"
