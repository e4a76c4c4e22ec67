"""The high-level API on the real model: LLM, complete/chat, GenerationConfig, streaming, stops,
prefix reuse, cancellation, logprobs, embeddings."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import cyllama
from cyllama import LLM, GenerationConfig, GenerationStats, chat, complete, generate
from cyllama._generation import CancelToken, TextStream, eval_prompt
from cyllama.llama import LlamaContext, LlamaContextParams

PROMPT = "The capital of France is"
# Tests that compare greedy text across runs that differ in batch shape (a run on a cached prefix
# decodes the last prompt token alone) use prompts without near-ties, so that rounding cannot flip a
# token. With repeat_penalty 1.0 the top-two logit margins are > 3.2 over COUNT's first 32 tokens,
# > 1.4 over SEQ's chat reply's first 24 and > 1.1 over DAYS' first 10; PROMPT's fall to 0.26 at its
# 6th token (and, with the default penalty 1.1, to 0.28 at its 4th).
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
SEQ = "Continue the sequence: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
DAYS = "Days of the week: Monday, Tuesday,"


@pytest.fixture(scope="module")
def llm(model_path):
    with LLM(model_path, temperature=0.0, max_tokens=32) as m:
        yield m


# -- config -----------------------------------------------------------------------------------
def test_config_defaults_match_the_reference() -> None:
    c = GenerationConfig()
    assert (c.max_tokens, c.temperature, c.top_k, c.top_p, c.min_p, c.repeat_penalty) == (512, 0.8, 40, 0.95, 0.05, 1.1)
    assert (c.n_gpu_layers, c.n_ctx, c.n_batch, c.seed, c.stop_sequences, c.add_bos, c.parse_special) == \
        (99, None, 512, -1, [], True, True)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", 0), ("max_tokens", -5), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5),
    ("min_p", 2.0), ("top_k", -1), ("repeat_penalty", 0.0), ("seed", -2), ("n_ctx", -1),
    ("stop_sequences", [""]), ("mirostat", 3), ("typical_p", 0), ("top_logprobs", 1000),
    ("logit_bias", {"a": 1.0}), ("temperature", float("nan")), ("max_tokens", 1.5), ("add_bos", "yes"),
])
def test_config_rejects_bad_values_naming_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value})


def test_unknown_option_is_a_type_error_naming_it(llm) -> None:
    with pytest.raises(TypeError, match="temprature"):
        GenerationConfig().replace(temprature=0.5)
    with pytest.raises(TypeError, match="max_tokenz"):
        llm(PROMPT, max_tokenz=5)
    assert GenerationConfig().replace(stop="x", max_new_tokens=3).stop_sequences == ["x"]


def test_stats_are_filled_and_readable(llm) -> None:
    text, stats = llm.generate_with_stats(PROMPT, max_tokens=10)
    assert isinstance(stats, GenerationStats)
    assert stats.generated_tokens == 10 and stats.finish_reason == "length"
    assert stats.prompt_tokens == len(llm.tokenize(PROMPT))
    assert stats.tokens_per_second > 0 and stats.total_time >= stats.generation_time > 0
    assert 0 < stats.time_to_first_token <= stats.total_time
    assert "tok/s" in str(stats) and "<table>" in stats._repr_html_()
    assert len(llm.tokenize(text, add_bos=False)) in range(8, 13)


# -- greedy text, determinism, seeds -----------------------------------------------------------
def test_greedy_answers_and_is_deterministic(llm) -> None:
    assert llm(PROMPT).startswith(" Paris")
    a = llm(COUNT, repeat_penalty=1.0)
    llm.reset()
    assert llm(COUNT, repeat_penalty=1.0) == a
    assert llm.generate(COUNT, repeat_penalty=1.0) == a  # the reference's other spelling


def test_greedy_matches_the_core_loop(llm, model) -> None:
    from cyllama import LlamaSampler
    from cyllama._generation import step_tokens

    ctx = LlamaContext(model, LlamaContextParams(n_ctx=256))
    s = LlamaSampler().add_greedy()
    toks = list(step_tokens(ctx, s, model.get_vocab().tokenize(COUNT), 20))
    ctx.close()
    s.close()
    assert llm(COUNT, max_tokens=20, repeat_penalty=1.0) == model.get_vocab().detokenize(toks)


def test_same_seed_same_text_and_random_seed_varies(llm) -> None:
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24)
    a = llm("Once upon a time", seed=1234, **kw)
    b = llm("Once upon a time", seed=1234, **kw)
    assert a == b
    outs = {llm("Once upon a time", seed=-1, **kw) for _ in range(4)}
    assert len(outs) > 1


# -- streaming, stops, UTF-8 -------------------------------------------------------------------
def test_stream_and_on_token_give_the_same_text(llm) -> None:
    full = llm(COUNT, max_tokens=20, repeat_penalty=1.0)
    seen: list[str] = []
    chunks = list(llm(COUNT, max_tokens=20, repeat_penalty=1.0, stream=True, on_token=seen.append))
    assert "".join(chunks) == full and seen == chunks and len(chunks) > 5
    last = list(llm.stream(PROMPT, max_tokens=20))[-1]
    assert last.finish_reason == "length"


def test_stop_sequence_across_token_boundaries(llm) -> None:
    full = llm(DAYS, max_tokens=10, repeat_penalty=1.0)
    toks = llm.tokenize(full, add_bos=False)
    # a stop string that starts inside one token and ends inside a later one
    first = llm.detokenize(toks[:3])
    stop = full[len(first) - 2: len(first) + 3]
    assert len(stop) == 5 and stop in full
    expect = full[:full.find(stop)]
    assert llm(DAYS, max_tokens=10, repeat_penalty=1.0, stop_sequences=[stop]) == expect
    streamed = list(llm(DAYS, max_tokens=10, repeat_penalty=1.0, stop_sequences=[stop], stream=True))
    assert "".join(streamed) == expect
    assert llm.last_stats.finish_reason == "stop"
    # several stops: the earliest wins; a stop that never occurs changes nothing
    assert llm(DAYS, max_tokens=10, repeat_penalty=1.0, stop=["zzzz", stop]) == expect
    assert llm(DAYS, max_tokens=10, repeat_penalty=1.0, stop=["zzzz"]) == full


def test_text_stream_never_splits_utf8_or_leaks_a_stop(model) -> None:
    vocab = model.get_vocab()
    text = "Grüße aus Köln 🎉🚀 日本語のテキスト ok"
    toks = vocab.tokenize(text, add_special=False)
    assert len(toks) > len(text.split())
    ts = TextStream(vocab)
    parts = [ts.push(t)[0] for t in toks]
    parts.append(ts.flush())
    assert "".join(parts) == text
    assert all("\ufffd" not in p for p in parts)
    ts = TextStream(vocab, stop=["🚀 日"])
    out = []
    for t in toks:
        piece, stopped = ts.push(t)
        out.append(piece)
        if stopped:
            break
    assert "".join(out) == "Grüße aus Köln 🎉"
    assert not any(p.endswith("🚀") for p in out)


def test_eos_ends_generation_with_stop(llm) -> None:
    out = llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=200)
    assert llm.last_stats.finish_reason == "stop" and llm.last_stats.generated_tokens < 200 and out.strip()


def test_ignore_eos_runs_to_max_tokens(llm) -> None:
    llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=60, ignore_eos=True)
    assert llm.last_stats.generated_tokens == 60 and llm.last_stats.finish_reason == "length"


# -- KV prefix reuse and context sizing --------------------------------------------------------
def test_growing_chat_reuses_its_history(model_path, llm) -> None:
    # both answers have top-two logit margins > 1.4 over their 16 tokens
    msgs = [{"role": "user", "content": SEQ}]
    a = llm.chat(msgs, max_tokens=16, repeat_penalty=1.0)
    first = llm.last_stats
    msgs += [{"role": "assistant", "content": a}, {"role": "user", "content": "Count from 1 to 10."}]
    b = llm.chat(msgs, max_tokens=16, repeat_penalty=1.0)
    second = llm.last_stats
    assert second.cached_tokens >= first.prompt_tokens - 1
    assert second.prompt_tokens > first.prompt_tokens
    with LLM(model_path, temperature=0.0, max_tokens=16, repeat_penalty=1.0) as fresh:
        assert fresh.chat(msgs) == b  # reusing the cache does not change the answer
        assert fresh.last_stats.cached_tokens == 0


def test_auto_context_is_sized_and_grows(model_path) -> None:
    with LLM(model_path, temperature=0.0) as m:
        m(PROMPT, max_tokens=8)
        small = m.n_ctx
        assert 8 <= small <= 512
        m("word " * 300, max_tokens=400)
        assert m.n_ctx >= 700 and m.n_ctx <= m.model.n_ctx_train


def test_prompt_longer_than_context(model_path) -> None:
    with LLM(model_path, temperature=0.0, n_ctx=64, max_tokens=8) as m:
        long_prompt = "one two three four five six seven eight nine ten " * 20
        n = len(m.tokenize(long_prompt))
        with pytest.raises(ValueError, match=rf"{n}.*64"):
            m(long_prompt)
        out = m(long_prompt, truncate_prompt=True)
        assert isinstance(out, str) and m.last_stats.prompt_tokens < 64
        assert m(PROMPT).startswith(" Paris")  # still usable


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": ""}, "empty"), ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
    ({"prompt": PROMPT, "grammar": "root ::= nonsense("}, "grammar"),
    ({"prompt": [1, 2, 10**7]}, "out of range"),
])
def test_bad_input_gives_clear_errors(llm, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        llm(**kwargs)
    assert llm(PROMPT, max_tokens=3)  # and the object still works


def test_context_full_finishes_with_length(model_path) -> None:
    with LLM(model_path, temperature=0.0, n_ctx=256, ignore_eos=True) as m:
        out = m(PROMPT, max_tokens=400)
        assert m.n_ctx == 256 and m.last_stats.finish_reason == "length"
        # the last token fills the context's last cell's successor: it is returned, not decoded
        assert m.last_stats.prompt_tokens + m.last_stats.generated_tokens == 257 and out


# -- cancellation ------------------------------------------------------------------------------
def test_cancel_between_tokens_keeps_the_object_usable(llm) -> None:
    expected = llm(COUNT, max_tokens=30, ignore_eos=True, repeat_penalty=1.0)
    n = 0

    def on_token(_t: str) -> None:
        nonlocal n
        n += 1
        if n == 5:
            threading.Thread(target=llm.cancel).start()
            time.sleep(0.05)

    out = llm(COUNT, max_tokens=30, ignore_eos=True, repeat_penalty=1.0, on_token=on_token)
    assert llm.last_stats.finish_reason == "cancelled"
    assert 5 <= llm.last_stats.generated_tokens < 30 and expected.startswith(out)
    assert llm(COUNT, max_tokens=30, ignore_eos=True, repeat_penalty=1.0) == expected


def test_cancel_aborts_a_long_prompt_evaluation(model_path) -> None:
    with LLM(model_path, temperature=0.0, n_ctx=4096, n_batch=64) as m:
        prompt = "lorem ipsum dolor sit amet " * 300
        done = threading.Event()

        def canceller() -> None:
            while not done.is_set():
                m.cancel()
                time.sleep(0.002)

        t = threading.Thread(target=canceller)
        t.start()
        try:
            out = m(prompt, max_tokens=5)
        finally:
            done.set()
            t.join()
        assert out == "" and m.last_stats.finish_reason == "cancelled"
        assert m.last_stats.generated_tokens == 0
        assert len(m._cache) < len(m.tokenize(prompt))  # only completed chunks are kept
        assert m(PROMPT, max_tokens=8).startswith(" Paris")


def test_eval_prompt_with_cancel_token(ctx, model) -> None:
    tok = CancelToken()
    tok.cancel()
    toks = model.get_vocab().tokenize("hello " * 50)
    cache: list[int] = []
    assert eval_prompt(ctx, toks, 0, 0, cache, tok) == -1
    assert cache == [] and ctx.kv_cache_seq_pos_max(0) == -1


def test_keyboard_interrupt_inside_decode_is_raised_after_it(ctx, model) -> None:
    from cyllama import LlamaBatch

    def boom() -> bool:
        raise KeyboardInterrupt

    ctx.set_abort_callback(boom)
    b = LlamaBatch(64)
    b.add_sequence(model.get_vocab().tokenize("hello " * 30), 0, 0)
    with pytest.raises(KeyboardInterrupt):
        ctx.decode(b)
    ctx.set_abort_callback(None)
    ctx.kv_cache_clear()
    ctx.decode(b)  # usable afterwards
    b.close()


# -- logprobs and logits processors ------------------------------------------------------------
def test_logprobs(llm) -> None:
    chunks = [c for c in llm.stream(PROMPT, max_tokens=5, logprobs=True, top_logprobs=3,
                                                                repeat_penalty=1.0) if c.token is not None]
    assert len(chunks) == 5
    for c in chunks:
        assert c.logprob is not None and c.logprob <= 0
        top = list(c.top_logprobs.items())
        assert len(top) == 3 and top[0][0] == c.token  # greedy picks the most likely token
        assert top[0][1] >= top[1][1] >= top[2][1]
        assert abs(top[0][1] - c.logprob) < 1e-6


def test_logits_processor_can_ban_a_token(llm) -> None:
    paris = llm.tokenize(" Paris", add_bos=False)[0]
    seen_ids = []

    def ban(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        seen_ids.append(len(ids))
        logits[paris] = -np.inf
        return logits

    out = llm(PROMPT, max_tokens=5, logits_processor=ban)
    assert not out.startswith(" Paris") and out
    assert seen_ids[0] == len(llm.tokenize(PROMPT)) and seen_ids[1] == seen_ids[0] + 1


def test_threads_cannot_share_one_llm(llm) -> None:
    it = llm.stream(PROMPT, max_tokens=20)
    next(it)
    err = []
    t = threading.Thread(target=lambda: err.append(pytest.raises(RuntimeError, llm, PROMPT)))
    t.start()
    t.join()
    assert err
    # the same thread starting a new call ends the unfinished stream first
    assert llm(PROMPT, max_tokens=4)


# -- chat and structured output ----------------------------------------------------------------
def test_chat_uses_the_models_template(llm) -> None:
    msgs = [{"role": "user", "content": SEQ}]
    prompt = llm.format_chat(msgs)
    assert f"<|im_start|>user\n{SEQ}<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert llm.chat(msgs, max_tokens=12, repeat_penalty=1.0) == llm(prompt, max_tokens=12, add_bos=False,
                                                                    repeat_penalty=1.0)


def test_json_response_format_and_schema(llm) -> None:
    import json

    msgs = [{"role": "user", "content": "Describe a cat as JSON with the keys name and age."}]
    out = llm.chat(msgs, max_tokens=100, response_format={"type": "json_object"})
    assert isinstance(json.loads(out), dict)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 30}},
              "required": ["name", "age"], "additionalProperties": False}
    obj = json.loads(llm.chat(msgs, max_tokens=100, json_schema=schema))
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str) and 0 <= obj["age"] <= 30


# -- one-shot functions ------------------------------------------------------------------------
def test_complete_and_chat_one_shots(model_path) -> None:
    a = complete(PROMPT, model_path=str(model_path), temperature=0.0, max_tokens=8)
    assert a.startswith(" Paris")
    assert generate(PROMPT, model_path=model_path, temperature=0.0, max_tokens=8) == a
    assert "".join(complete(PROMPT, model_path, stream=True, temperature=0.0, max_tokens=8)) == a
    c = chat([{"role": "user", "content": "Say hi"}], model_path=model_path, temperature=0.0, max_tokens=8)
    assert isinstance(c, str) and c
    assert cyllama.Generator is LLM
    with pytest.raises(FileNotFoundError):
        complete("x", model_path="does/not/exist.gguf")
    with pytest.raises(TypeError, match="tempreature"):
        complete(PROMPT, model_path, tempreature=0.1)


# -- embeddings --------------------------------------------------------------------------------
def test_embeddings_shapes_and_batching(llm) -> None:
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten rests on a rug.", "x"]
    one = np.stack([llm.embed(t) for t in texts])
    batch = llm.embed(texts)
    n_embd = llm.model.n_embd
    assert one.shape == batch.shape == (4, n_embd) and batch.dtype == np.float32
    assert np.allclose(one, batch, atol=1e-4)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    raw = llm.embed(texts[0], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    per_token = llm.embed(texts[:2], pooling="none")
    assert [p.shape for p in per_token] == [(len(llm.tokenize(t)), n_embd) for t in texts[:2]]
    last = llm.embed(texts[0], pooling="last")
    assert last.shape == (n_embd,) and not np.allclose(last, batch[0])
    with pytest.raises(ValueError, match="pooling"):
        llm.embed("x", pooling="max")
    # generation still works after embedding (separate contexts)
    assert llm(PROMPT, max_tokens=4).startswith(" Paris")


def test_fixed_small_context_is_kept_between_calls(model_path) -> None:
    with LLM(model_path, temperature=0.0, n_ctx=64, max_tokens=8) as m:  # llama.cpp pads it to 256
        m(PROMPT)
        ctx = m.context
        m(PROMPT + " Paris. And")
        assert m.context is ctx and m.last_stats.cached_tokens > 0


def test_model_recommended_sampling_is_the_default(model_path, tmp_path) -> None:
    """GGUF general.sampling.* (a model's recommended sampling) fill what the caller leaves unset, as in llama.cpp."""
    from cyllama import GGUFContext
    from cyllama._config import model_sampling_defaults

    g = GGUFContext.from_file(model_path)
    try:
        g.set_val_f32("general.sampling.temp", 0.25)
        g.set_val_i32("general.sampling.top_k", 17)
        g.set_val_str("general.sampling.top_p", "not a number")  # ignored, not an error
        g.set_val_f32("general.sampling.min_p", 7.0)  # out of range: ignored
        path = g.write_to_file(tmp_path / "recommended.gguf")
    finally:
        g.close()
    with LLM(path) as m:
        assert m.config.temperature == pytest.approx(0.25) and m.config.top_k == 17
        assert m.config.top_p == GenerationConfig().top_p and m.config.min_p == GenerationConfig().min_p
        assert model_sampling_defaults(m.model) == {"temperature": pytest.approx(0.25), "top_k": 17}
    with LLM(path, temperature=0.9) as m:  # what the caller sets wins
        assert m.config.temperature == 0.9 and m.config.top_k == 17
    with LLM(path, config=GenerationConfig()) as m:  # a whole config is taken as it is
        assert m.config.top_k == GenerationConfig().top_k
    from cyllama.server._service import ModelService

    svc = ModelService(path, n_ctx=256, n_parallel=1)
    try:
        assert svc.openai.base.top_k == 17 and svc.openai.base.temperature == pytest.approx(0.25)
    finally:
        svc.close()


def test_stopping_criteria_and_inserted_tokens(model) -> None:
    """The core step's hooks for drivers such as the drop-in's loop: a stopping criterion ends the
    generation with "stop" and drops the token just sampled; ``insert`` shows a driver's own tokens
    to the logits processor without counting them as output."""
    from cyllama import LlamaSampler
    from cyllama._generation import Generation, run_sequence

    vocab = model.get_vocab()
    prompt = vocab.tokenize(COUNT)
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=256))
    try:
        seen = []

        def three_tokens(ids, logits):
            seen.append((ids.tolist(), logits.shape))
            return len(ids) >= len(prompt) + 3

        gen = Generation(vocab, LlamaSampler().add_greedy(), prompt, 20, ctx.n_ctx, stopping_criteria=three_tokens,
                         owns_sampler=True)
        chunks = list(run_sequence(ctx, gen, prompt))
        gen.close()
        assert chunks[-1].finish_reason == "stop" and chunks[-1].token is None
        assert len(gen.completion_tokens) == 3 and [c.token for c in chunks[:-1]] == gen.completion_tokens
        assert [ids for ids, _ in seen] == [prompt + gen.completion_tokens[:k] for k in range(4)]
        assert seen[0][1] == (vocab.n_vocab,)

        ids_seen = []
        gen = Generation(vocab, LlamaSampler().add_greedy(), prompt, 2, ctx.n_ctx,
                         logits_processor=lambda ids, logits: ids_seen.append(ids.tolist()), owns_sampler=True)
        ctx.kv_cache_clear()
        pos = eval_prompt(ctx, prompt)
        first = gen.step(ctx, -1, pos)
        extra = vocab.tokenize(" 99", add_special=False)
        pos = eval_prompt(ctx, [first.token, *extra], pos)
        gen.insert(extra)
        last = gen.step(ctx, -1, pos)
        gen.close()
        assert ids_seen == [prompt, prompt + [first.token] + extra]
        assert last.finish_reason == "length" and gen.completion_tokens == [first.token, last.token]
    finally:
        ctx.close()
