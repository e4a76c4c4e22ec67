"""The continuous-batching engine and the batch API on the real model."""

from __future__ import annotations

import time

import pytest

from cyllama import (LLM, BatchGenerator, BatchRequest, BatchResponse, Engine, GenerationConfig, QueueFullError,
                     batch_generate)

# llama.cpp's kernels round differently for different batch shapes, so tests comparing batched with
# single runs use prompts whose greedy continuations have no near-tie: every top-two logit margin in
# their first 24 tokens is > 1.4 (prose prompts on this model have margins < 0.3)
PROMPTS = ["1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "Count to twenty: 1, 2, 3,", "The first ten numbers are 1, 2, 3,",
           "100, 200, 300,", "Count: 1, 2, 3,", "11, 12, 13, 14,"]
GREEDY = GenerationConfig(temperature=0.0, max_tokens=24, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def llm(model_path):
    with LLM(model_path) as m:
        yield m


@pytest.fixture(scope="module")
def engine(llm):
    with Engine(llm.model, n_slots=4, n_ctx=256) as e:
        yield e


def test_batched_greedy_equals_single(llm, engine) -> None:
    alone = [llm(p, GREEDY) for p in PROMPTS]
    with engine.hold():  # all start together: the batches' composition does not depend on timing
        reqs = [engine.submit(llm.tokenize(p), GREEDY) for p in PROMPTS]  # 6 prompts, 4 slots: 2 queue
    together = [r.result(timeout=120) for r in reqs]
    assert together == alone  # PROMPTS have no near-tie a batch shape's rounding could flip
    assert all(r.stats.generated_tokens > 0 and r.finish_reason in ("stop", "length") for r in reqs)
    assert engine.busy_slots == 0 and engine.queue_length == 0


def test_streaming_chunks_and_stop(llm, engine) -> None:
    full = llm(PROMPTS[0], GREEDY)
    stop = full[8:12]
    req = engine.submit(llm.tokenize(PROMPTS[0]), GREEDY.replace(stop_sequences=[stop]))
    chunks = list(req)
    assert chunks[-1].finish_reason == "stop"
    assert "".join(c.text for c in chunks) == full[:full.find(stop)]


def test_shared_prefix_is_reused(llm, engine) -> None:
    system = "You are a helpful assistant. Answer briefly and precisely. " * 4
    before = engine.metrics["cached_prompt_tokens_total"]
    reqs = [engine.submit(llm.tokenize(system + q), GREEDY) for q in ("Q: 2+2?", "Q: colour of sky?", "Q: a fruit?")]
    outs = [r.result(timeout=120) for r in reqs]
    n_system = len(llm.tokenize(system))
    assert reqs[0].stats.cached_tokens == 0
    assert all(r.stats.cached_tokens >= n_system - 2 for r in reqs[1:])
    assert engine.metrics["cached_prompt_tokens_total"] - before >= 2 * (n_system - 2)
    assert all(isinstance(o, str) for o in outs)


def test_cancel_frees_the_slot(llm, engine) -> None:
    req = engine.submit(llm.tokenize("Count from one to one thousand:"),
                        GREEDY.replace(max_tokens=200, ignore_eos=True))
    it = iter(req)
    next(it)
    req.cancel()
    rest = list(it)
    assert rest[-1].finish_reason == "cancelled"
    assert req.stats.generated_tokens < 200
    deadline = time.time() + 5
    while engine.busy_slots and time.time() < deadline:
        time.sleep(0.01)
    assert engine.busy_slots == 0
    assert engine.submit(llm.tokenize(PROMPTS[0]), GREEDY).result() == llm(PROMPTS[0], GREEDY)


def test_bad_submissions(llm, engine) -> None:
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], GREEDY)
    with pytest.raises(ValueError, match="out of range"):
        engine.submit([1, 10**8], GREEDY)
    with pytest.raises(ValueError, match="256"):
        engine.submit(list(range(100, 400)), GREEDY)


def test_bounded_queue(llm) -> None:
    with Engine(llm.model, n_slots=1, n_ctx=128, max_queue=2) as e:
        cfg = GREEDY.replace(max_tokens=40, ignore_eos=True)
        toks = llm.tokenize(PROMPTS[1])
        reqs = []
        with pytest.raises(QueueFullError):
            for _ in range(10):
                reqs.append(e.submit(toks, cfg))
        for r in reqs:
            r.result(timeout=60)
        assert all(r.finish_reason == "length" for r in reqs)


def test_grammar_per_request(llm, engine) -> None:
    import json

    from cyllama.grammar import JSON_GRAMMAR

    req = engine.submit(llm.tokenize("A JSON object describing a dog:"), GREEDY.replace(max_tokens=80), JSON_GRAMMAR)
    plain = engine.submit(llm.tokenize("The capital of France is"), GREEDY)
    assert isinstance(json.loads(req.result()), dict)
    assert plain.result().startswith(" Paris")  # unconstrained neighbours stay unconstrained


# -- batch API ---------------------------------------------------------------------------------
def test_batch_generator_and_requests(model_path, llm) -> None:
    prompts = PROMPTS + ["10, 20, 30, 40,"]
    with BatchGenerator(str(model_path), batch_size=3, n_ctx=256) as gen:
        outs = gen.generate_batch(prompts, GREEDY)
        assert outs == [llm(p, GREEDY) for p in prompts]  # no near-tie a batch shape's rounding could flip
        assert gen.engine.n_slots == 3
        rs = gen.process_batch([BatchRequest(i, p, max_tokens=5 + i, temperature=0.0)
                                for i, p in enumerate(prompts[:3])])
    assert [type(r) for r in rs] == [BatchResponse] * 3
    for i, r in enumerate(rs):
        assert r.id == i and r.prompt == prompts[i] and r.tokens_generated <= 5 + i and r.time_taken > 0


def test_batch_generate_one_shot(model_path, llm) -> None:
    prompts = PROMPTS[:2]
    out = batch_generate(prompts, model_path=model_path, temperature=0.0, max_tokens=12, repeat_penalty=1.0)
    assert out == [llm(p, GREEDY.replace(max_tokens=12)) for p in prompts]
    with pytest.raises(ValueError, match="empty"):
        batch_generate([""], model_path=model_path)
