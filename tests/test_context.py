from __future__ import annotations

import numpy as np
import pytest

from cyllama import (DecodeError, LlamaBatch, LlamaContext, LlamaContextParams, LlamaModel, LlamaSampler,
                     llama_batch_get_one)

PROMPT = "The capital of France is"


def greedy(ctx: LlamaContext, tokens: list[int], n: int, seq_id: int = 0) -> list[int]:
    batch = LlamaBatch(max(len(tokens), 1), 0, ctx.n_seq_max)
    batch.add_sequence(tokens, 0, seq_id)
    ctx.decode(batch)
    sampler = LlamaSampler().add_greedy()
    out, pos = [], len(tokens)
    for _ in range(n):
        tok = sampler.sample(ctx, -1)
        out.append(tok)
        batch.clear()
        batch.add(tok, pos, [seq_id], True)
        pos += 1
        ctx.decode(batch)
    return out


def test_greedy_generation_is_deterministic(model: LlamaModel, ctx: LlamaContext) -> None:
    vocab = model.get_vocab()
    toks = vocab.tokenize(PROMPT)
    first = greedy(ctx, toks, 12)
    text = vocab.detokenize(first)
    assert "Paris" in text
    ctx.kv_cache_clear()
    assert greedy(ctx, toks, 12) == first


def test_llama_batch_get_one_tracks_positions(model: LlamaModel, ctx: LlamaContext) -> None:
    vocab = model.get_vocab()
    ctx.decode(llama_batch_get_one(vocab.tokenize(PROMPT)))
    sampler = LlamaSampler().add_greedy()
    out = []
    for _ in range(5):
        tok = sampler.sample(ctx, -1)
        out.append(tok)
        ctx.decode(llama_batch_get_one([tok]))
    ctx.kv_cache_clear()
    assert out == greedy(ctx, vocab.tokenize(PROMPT), 5)


def test_logits_are_copies_unless_asked_for_a_view(model: LlamaModel, ctx: LlamaContext) -> None:
    toks = model.get_vocab().tokenize(PROMPT)
    ctx.decode(llama_batch_get_one(toks))
    logits = ctx.get_logits_ith(-1)
    assert logits.shape == (model.n_vocab,) and logits.dtype == np.float32
    assert logits.flags.owndata  # a copy: still valid after the next decode or close()
    view = ctx.get_logits_ith(-1, copy=False)
    assert not view.flags.owndata and np.array_equal(view, logits)
    assert int(np.argmax(logits)) == LlamaSampler().add_greedy().sample(ctx, -1)
    assert ctx.get_logits().shape == (1, model.n_vocab)
    with pytest.raises(ValueError):
        ctx.get_logits_ith(0)  # only the last token of the batch has logits


def test_kv_remove_and_redecode_gives_same_logits(model: LlamaModel, ctx: LlamaContext) -> None:
    toks = model.get_vocab().tokenize("One two three four five six seven")
    batch = LlamaBatch(len(toks), 0, 1)
    batch.add_sequence(toks, 0, 0)
    ctx.decode(batch)
    ref = ctx.get_logits_ith(-1).copy()
    assert ctx.kv_cache_seq_pos_max(0) == len(toks) - 1
    assert ctx.kv_cache_seq_rm(0, 4, -1)
    assert ctx.kv_cache_seq_pos_max(0) == 3
    batch.clear()
    batch.add_sequence(toks[4:], 4, 0)
    ctx.decode(batch)
    np.testing.assert_allclose(ctx.get_logits_ith(-1), ref, rtol=1e-4, atol=1e-3)


def test_state_save_load_restores_logits(model: LlamaModel, ctx: LlamaContext, tmp_path) -> None:
    toks = model.get_vocab().tokenize(PROMPT)

    def last_logits() -> np.ndarray:
        b = LlamaBatch(1, 0, 1)
        b.add(toks[-1], len(toks) - 1, [0], True)
        ctx.decode(b)
        return ctx.get_logits_ith(-1).copy()

    b = LlamaBatch(len(toks), 0, 1)
    b.add_sequence(toks[:-1], 0, 0)
    ctx.decode(b)
    state = ctx.get_state()
    ref = last_logits()
    greedy_continue(ctx, len(toks), 3)  # move the cache on
    ctx.kv_cache_clear()
    ctx.set_state(state)
    assert ctx.kv_cache_seq_pos_max(0) == len(toks) - 2
    np.testing.assert_allclose(last_logits(), ref, rtol=1e-5, atol=1e-4)

    path = tmp_path / "session.bin"
    ctx.set_state(state)
    ctx.save_state_file(path, toks[:-1])
    ctx.kv_cache_clear()
    assert ctx.load_state_file(path) == toks[:-1]
    np.testing.assert_allclose(last_logits(), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        ctx.set_state(b"garbage" * 10)


def greedy_continue(ctx: LlamaContext, pos: int, n: int) -> list[int]:
    sampler = LlamaSampler().add_greedy()
    out = []
    for _ in range(n):
        tok = sampler.sample(ctx, -1)
        out.append(tok)
        b = LlamaBatch(1, 0, 1)
        b.add(tok, pos, [0], True)
        pos += 1
        ctx.decode(b)
    return out


def test_multi_sequence_batch_matches_single(model: LlamaModel, ctx: LlamaContext) -> None:
    vocab = model.get_vocab()
    # greedy continuations without a near-tie (top-two logit margins > 1.8 over these 6 tokens), so
    # the batch shape's rounding cannot flip a token
    prompts = ["Count: 1, 2, 3,", "100, 200, 300,", "11, 12, 13, 14,"]
    singles = []
    for p in prompts:
        ctx.kv_cache_clear()
        singles.append(greedy(ctx, vocab.tokenize(p), 6))
    ctx.kv_cache_clear()
    toks = [vocab.tokenize(p) for p in prompts]
    batch = LlamaBatch(64, 0, 4)
    for s, t in enumerate(toks):
        batch.add_sequence(t, 0, s)
    ctx.decode(batch)
    last = np.cumsum([len(t) for t in toks]) - 1
    samplers = [LlamaSampler().add_greedy() for _ in prompts]
    outs = [[] for _ in prompts]
    pos = [len(t) for t in toks]
    idx = list(last)
    for _ in range(6):
        batch.clear()
        for s in range(len(prompts)):
            tok = samplers[s].sample(ctx, int(idx[s]))
            outs[s].append(tok)
            batch.add(tok, pos[s], [s], True)
            pos[s] += 1
        idx = list(range(len(prompts)))
        ctx.decode(batch)
    assert outs == singles


def test_seq_cp_and_keep(model: LlamaModel) -> None:
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=256, n_seq_max=4, kv_unified=True))
    toks = model.get_vocab().tokenize(PROMPT)
    b = LlamaBatch(len(toks), 0, 4)
    b.add_sequence(toks, 0, 0)
    ctx.decode(b)
    ctx.kv_cache_seq_cp(0, 1)
    assert ctx.kv_cache_seq_pos_max(1) == len(toks) - 1
    ctx.kv_cache_seq_keep(1)
    assert ctx.kv_cache_seq_pos_max(0) == -1
    assert ctx.kv_cache_seq_pos_max(1) == len(toks) - 1
    with pytest.raises(ValueError):
        ctx.kv_cache_seq_keep(99)


def test_context_full_raises_decode_error(model: LlamaModel) -> None:
    with LlamaContext(model, LlamaContextParams(n_ctx=32, n_batch=32)) as small:
        toks = model.get_vocab().tokenize("word " * 25)[:30]
        small.decode(llama_batch_get_one(toks))
        with pytest.raises((DecodeError, ValueError)):
            b = LlamaBatch(8, 0, 1)
            b.add_sequence(list(range(100, 108)), 30, 0)
            small.decode(b)


def test_perf_data(model: LlamaModel, ctx: LlamaContext) -> None:
    greedy(ctx, model.get_vocab().tokenize(PROMPT), 3)
    perf = ctx.perf_data()
    assert perf["n_eval"] >= 2 and perf["n_p_eval"] >= 5 and perf["t_eval_ms"] > 0


def test_params_and_threads(model: LlamaModel) -> None:
    p = LlamaContextParams()
    import os
    assert p.n_threads == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        p.n_ctx = -1
    with pytest.raises(ValueError):
        p.n_batch = 0
    with pytest.raises(TypeError):
        LlamaContextParams(n_ctxx=5)
    with LlamaContext(model, LlamaContextParams(n_ctx=64)) as c:
        c.set_n_threads(1)
        assert c.n_threads == 1
        with pytest.raises(ValueError):
            c.set_n_threads(0)
