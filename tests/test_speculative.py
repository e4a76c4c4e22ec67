"""Speculative decoding and n-gram lookup: llama.cpp's cache format both ways, and lossless output.

Greedy decoding with a drafter must give the tokens plain decoding gives. Verifying a draft
decodes several tokens in one batch, whose float rounding differs from one-token batches, so two
runs may part where the top two tokens are nearly tied (llama.cpp's speculative decoding behaves
the same). ``assert_same_greedy`` accepts a divergence only there: at the first differing position
it re-evaluates the shared prefix and requires both tokens to be within a hair of the best logit.
A wrong logits index or a kept rejected draft diverges at a confident token and fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cyllama import (LLM, GenerationConfig, LlamaContext, LlamaContextParams, NgramCache, Speculative,
                     SpeculativeParams)
from cyllama._ffi import lib_dir
from cyllama._generation import eval_prompt
from cyllama._speculative import ChainDrafter, Drafter, PromptLookup

NEAR_TIE = 0.3  # logits; what batch-shape rounding moves on this Q4 model is ~0.1

CODE = '''def merge_sorted(a, b):
    """Merges two sorted lists into one sorted list."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out
'''
# prompts whose greedy outputs have no near-ties (every top-two logit margin > 0.6 on the default
# model), so that runs with and without drafting must agree token for token
COPY_PROMPT = [{"role": "user", "content": "Repeat these numbers: 12 45 78 23 56 89 34 67 90 11 44 77 22 55 88 33 66 99"}]
COUNT_PROMPT = [{"role": "user", "content": "Count from 1 to 60, separated by commas."}]


def tokens_of(chunks) -> tuple[list[int], str, str]:
    toks, text, reason = [], [], ""
    for c in chunks:
        if c.token is not None:
            toks.append(c.token)
        text.append(c.text)
        if c.finish_reason:
            reason = c.finish_reason
    return toks, "".join(text), reason


def assert_same_greedy(llm: LLM, prompt: list[int], expected: list[int], got: list[int]) -> None:
    """``got`` equals ``expected``, or parts from it first where the two tokens are near-tied."""
    if expected == got:
        return
    i = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    eos = llm.vocab.eos
    a = expected[i] if i < len(expected) else eos
    b = got[i] if i < len(got) else eos
    ctx = LlamaContext(llm.model, LlamaContextParams(n_ctx=len(prompt) + i + 16))
    try:
        eval_prompt(ctx, prompt + expected[:i])
        logits = ctx.get_logits_ith(-1).copy()
    finally:
        ctx.close()
    best = float(logits.max())
    margin = best - min(float(logits[a]), float(logits[b]))
    assert margin < NEAR_TIE, (f"outputs part at token {i} ({a} vs {b}) where the model is sure "
                               f"(margin {margin:.3f}): {llm.detokenize(expected[:i + 1])!r} vs "
                               f"{llm.detokenize(got[:i + 1])!r}")


@pytest.fixture(scope="module")
def llm(model_path):
    with LLM(model_path, temperature=0.0, max_tokens=120, n_ctx=2048, repeat_penalty=1.0) as m:
        yield m


@pytest.fixture(scope="module")
def copy_prompt(llm) -> list[int]:
    return llm._chat_tokens(COPY_PROMPT, None, {})


@pytest.fixture(scope="module")
def plain(llm, copy_prompt):
    llm.reset()
    return tokens_of(llm.stream(copy_prompt))


# -- NgramCache ------------------------------------------------------------------------------------
def test_ngram_cache_reference_example(tmp_path):
    cache = NgramCache()
    cache.update([1, 2, 3, 4, 5, 6, 7, 8], ngram_min=2, ngram_max=4)
    assert cache.draft([1, 2, 3], n_draft=16) == [4, 5, 6, 7, 8]
    assert cache.draft([1, 2, 3], n_draft=2) == [4, 5]
    assert cache.draft([9, 9, 9], n_draft=16) == []
    assert len(cache) == 6 + 5 + 4  # the 2-, 3- and 4-grams that have a next token
    assert cache.continuations([2, 3]) == {4: 1}
    path = tmp_path / "patterns.bin"
    cache.save(path)
    loaded = NgramCache.from_file(path)
    assert loaded == cache and loaded.draft([1, 2, 3], n_draft=16) == [4, 5, 6, 7, 8]
    cache.clear()
    assert len(cache) == 0 and cache.draft([1, 2, 3]) == []


def test_ngram_cache_counts_and_thresholds():
    cache = NgramCache()
    cache.update([5, 6, 7, 5, 6, 8, 5, 6, 7], ngram_min=1, ngram_max=2)
    assert cache.continuations([5, 6]) == {7: 2, 8: 1}
    assert cache.draft([1, 5, 6], n_draft=1) == [7]  # 2 of 3 (66%) clears the 2-gram's 50%
    other = NgramCache()
    other.update([5, 6, 8, 5, 6, 8, 5, 6, 8], ngram_min=1, ngram_max=2)
    cache.merge(other)
    assert cache.continuations([5, 6]) == {7: 2, 8: 4}
    assert cache.draft([1, 5, 6], n_draft=1) == [8]
    grown = NgramCache()
    seq = [3, 1, 4, 1, 5, 9, 2, 6]
    for n in range(1, len(seq) + 1):  # growing a sequence with n_new counts each n-gram once
        grown.update(seq[:n], 1, 4, n_new=1)
    whole = NgramCache()
    whole.update(seq, 1, 4)
    assert grown == whole


@pytest.mark.parametrize("kwargs, field", [
    (dict(ngram_min=0), "ngram_min"), (dict(ngram_max=5), "ngram_max"), (dict(ngram_min=3, ngram_max=2), "ngram_min"),
])
def test_ngram_cache_rejects_bad_sizes(kwargs, field):
    with pytest.raises(ValueError, match=field):
        NgramCache().update([1, 2, 3], **kwargs)


def test_ngram_cache_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        NgramCache.from_file(tmp_path / "missing.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(30))
    with pytest.raises(ValueError, match="not a lookup cache"):
        NgramCache.from_file(bad)
    cache = NgramCache()
    cache.update([1, 2, 3, 4])
    cache.save(bad)
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated|bad record"):
        NgramCache.from_file(bad)


# -- llama.cpp's lookup tools read our files and we read theirs ---------------------------------------
def _tool(name: str) -> Path:
    path = lib_dir() / name
    if not path.exists():  # pragma: no cover - build_lib.py builds it
        pytest.skip(f"{name} was not built")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lookup") / "corpus.txt"
    path.write_text(CODE * 3 + "\n")
    return path


def test_llama_lookup_create_file_loads_here(model_path, llm, corpus, tmp_path):
    out = tmp_path / "static.bin"
    subprocess.run([_tool("llama-lookup-create"), "-m", model_path, "-f", corpus, "-lcs", out, "-c", "512"],
                   check=True, capture_output=True, timeout=300)
    theirs = NgramCache.from_file(out)
    text = corpus.read_text()[:-1]  # llama.cpp's -f drops one trailing newline
    ours = NgramCache()
    ours.update(llm.vocab.tokenize(text, add_special=True, parse_special=True), 2, 2)
    assert len(theirs) > 50 and theirs == ours


def test_our_file_loads_in_llama_lookup_merge(model_path, llm, corpus, tmp_path):
    ours = NgramCache()
    ours.update(llm.vocab.tokenize(CODE, add_special=True, parse_special=True), 1, 4)
    ours.save(tmp_path / "ours.bin")
    theirs_path = tmp_path / "theirs.bin"
    subprocess.run([_tool("llama-lookup-create"), "-m", model_path, "-f", corpus, "-lcs", theirs_path, "-c", "512"],
                   check=True, capture_output=True, timeout=300)
    merged_path = tmp_path / "merged.bin"
    subprocess.run([_tool("llama-lookup-merge"), tmp_path / "ours.bin", theirs_path, merged_path],
                   check=True, capture_output=True, timeout=300)
    expected = NgramCache.from_file(tmp_path / "ours.bin")
    assert expected == ours
    expected.merge(NgramCache.from_file(theirs_path))
    assert NgramCache.from_file(merged_path) == expected


# -- lossless speculative generation -----------------------------------------------------------------
def test_prompt_lookup_is_lossless_and_drafts(llm, copy_prompt, plain):
    llm.reset()
    toks, text, reason = tokens_of(llm.stream(copy_prompt, prompt_lookup_num_tokens=10))
    stats = llm.last_stats
    assert_same_greedy(llm, copy_prompt, plain[0], toks)
    assert stats.draft_tokens > 0 and stats.accepted_tokens > 0
    assert stats.generated_tokens == len(toks)
    assert stats.acceptance_rate == pytest.approx(stats.accepted_tokens / stats.draft_tokens)
    assert "drafted" in str(stats)


def test_prompt_lookup_with_reused_prefix_and_stop(llm, copy_prompt, plain):
    # the second call reuses the KV prefix; the stop string ends the text inside an accepted draft
    stop = "67 90"
    assert plain[2] == "stop" and stop in plain[1]
    llm.reset()
    ref = llm(copy_prompt, stop_sequences=[stop])
    got = llm(copy_prompt, stop_sequences=[stop], prompt_lookup_num_tokens=8)
    stats = llm.last_stats
    assert stats.cached_tokens > 0 and stats.finish_reason == "stop" and stats.accepted_tokens > 0
    assert got == ref == plain[1][:plain[1].index(stop)]
    streamed = "".join(llm(copy_prompt, stop_sequences=[stop], prompt_lookup_num_tokens=8, stream=True))
    assert streamed == ref


def test_ngram_cache_drafting_is_lossless_and_learns(llm, copy_prompt, plain):
    cache = NgramCache()
    llm.reset()
    toks, _, _ = tokens_of(llm.stream(copy_prompt, ngram_cache=cache, prompt_lookup_num_tokens=6))
    assert_same_greedy(llm, copy_prompt, plain[0], toks)
    assert llm.last_stats.accepted_tokens > 0
    assert len(cache) > 100  # the context's n-grams were merged into the persistent cache


def test_draft_model_is_lossless(model_path, llm):
    prompt = llm._chat_tokens(COUNT_PROMPT, None, {})
    llm.reset()
    expected, _, _ = tokens_of(llm.stream(prompt, max_tokens=100))
    with LLM(model_path, temperature=0.0, max_tokens=100, n_ctx=2048, repeat_penalty=1.0, draft_model=llm,
             speculative=SpeculativeParams(n_draft=8, p_min=0.5)) as spec:
        toks, _, _ = tokens_of(spec.stream(prompt))
        stats = spec.last_stats
        assert_same_greedy(llm, prompt, expected, toks)
        assert stats.draft_tokens > 0 and stats.acceptance_rate > 0.8  # a model drafting for itself
        # a second call reuses both contexts' KV, and streams the same tokens
        again, _, _ = tokens_of(spec.stream(prompt))
        assert again == toks and spec.last_stats.cached_tokens > 0


def test_speculation_with_sampling_and_grammar(llm):
    prompt = [{"role": "user", "content": "Give me a JSON object with a name and an age."}]
    cfg = GenerationConfig(temperature=0.7, seed=42, max_tokens=60, n_ctx=2048, repeat_penalty=1.0,
                           json_schema={"type": "object", "properties": {"name": {"type": "string"},
                                                                         "age": {"type": "integer"}},
                                        "required": ["name", "age"]})
    import json

    out = llm.chat(prompt, cfg, prompt_lookup_num_tokens=5)
    assert set(json.loads(out)) == {"name", "age"}


# -- the reference's Speculative API -------------------------------------------------------------------
def test_speculative_reference_example(model):
    p = LlamaContextParams()
    p.n_ctx = 512
    with LlamaContext(model, p) as ctx_target, LlamaContext(model, p) as ctx_draft:
        spec = Speculative(ctx_target, ctx_draft)
        assert spec.are_compatible()
        params = SpeculativeParams(n_draft=16, n_reuse=8, p_min=0.75)
        prompt = model.get_vocab().tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", add_special=True)
        draft = spec.gen_draft(params, prompt[:-1], prompt[-1])
        assert 1 <= len(draft) <= 16
        assert model.get_vocab().detokenize(draft).startswith(" 11")
        assert spec.gen_draft(params.replace(p_min=1.0), prompt[:-1], prompt[-1]) == []
        spec.close()


def test_incompatible_draft_model_names_both(model_path, vocab_model):
    other = vocab_model("gpt-2")
    with pytest.raises(ValueError, match=r"ggml-vocab-gpt-2.gguf cannot draft for .*SmolLM2.*: vocabulary"):
        LLM(model_path, draft_model=other)


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_draft=0), "n_draft"), (dict(p_min=1.5), "p_min"), (dict(n_reuse=-1), "n_reuse"),
    (dict(n_draft=2, n_min=3), "n_min"), (dict(p_min="x"), "p_min"),
])
def test_speculative_params_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SpeculativeParams(**kwargs)


def test_lookup_options_are_validated():
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        GenerationConfig(prompt_lookup_num_tokens=-1)
    with pytest.raises(ValueError, match="ngram_cache"):
        GenerationConfig(ngram_cache={})


def test_prompt_lookup_follows_the_copy_in_progress():
    # the source: "a x b" recurs with different continuations; the output copies the second line
    src = [1, 7, 2, 10, 11, 12, 3, 7, 2, 20, 21, 22, 23, 24, 4]
    d = PromptLookup(num_tokens=3, max_ngram=2, min_ngram=2)
    hist = src + [7, 2]
    assert d.draft(hist, 3) == [20, 21, 22]  # the latest "7 2" (a plain n-gram lookup)
    hist += [20, 21, 22, 23]  # the draft confirmed, plus the next token
    # "22 23" alone would be ambiguous for an n-gram index; following the copy is not
    assert d.draft(hist, 3) == [24, 4, 7]
    hist += [99]  # the copy parts from its source: back to the n-gram index (no "23 99" anywhere)
    assert d.draft(hist, 3) == []
    d.begin(hist)
    assert d.draft(src + [7, 2], 2) == [20, 21]


class _Fixed(Drafter):
    def __init__(self, out: list[int], n_max: int):
        self.out, self.n_max, self.seen = out, n_max, []

    def draft(self, history, n):
        return self.out[:n]

    def accepted(self, n_drafted, n_accepted):
        self.seen.append((n_drafted, n_accepted))
        super().accepted(n_drafted, n_accepted)


def test_chain_drafter_routes_budget_and_acceptance_to_the_drafter_that_drafted():
    lookup, model = _Fixed([5, 6, 7, 8], 4), _Fixed([9, 9, 9], 3)
    chain = ChainDrafter(lookup, model)
    assert chain.draft([1], chain.budget(10)) == [5, 6]  # the lookup's own adaptive budget starts at 2
    chain.accepted(2, 0)  # a miss at once: the lookup pauses, the next step falls to the model
    assert lookup.seen == [(2, 0)] and model.seen == []
    assert chain.draft([1], chain.budget(10)) == [9, 9]  # the model's default budget is adaptive too
    chain.accepted(2, 2)
    assert model.seen == [(2, 2)]


# -- the engine and the server -----------------------------------------------------------------------
def test_engine_lookup_is_lossless(llm, copy_prompt, plain):
    from cyllama import Engine

    cfg = GenerationConfig(temperature=0.0, max_tokens=120, repeat_penalty=1.0)
    with Engine(llm.model, n_slots=2, n_ctx=1024, lookup=8) as eng:
        req = eng.submit(copy_prompt, cfg)
        chunks = list(req)
        assert "".join(c.text for c in chunks) == plain[1]
        assert [c.token for c in chunks if c.token is not None] == plain[0]
        assert eng.metrics["accepted_tokens_total"] > 0 and req.stats.accepted_tokens > 0
    # per request, on an engine without --lookup
    with Engine(llm.model, n_slots=1, n_ctx=1024) as eng:
        req = eng.submit(copy_prompt, cfg.replace(prompt_lookup_num_tokens=6))
        assert req.result() == plain[1] and req.stats.draft_tokens > 0


def test_server_lookup(model_path, plain):
    requests = pytest.importorskip("requests")
    pytest.importorskip("fastapi")
    from cyllama.llama.server.embedded import EmbeddedServer

    with EmbeddedServer(model_path, port=0, n_ctx=1024, n_parallel=1, lookup=8) as s:
        body = {"messages": COPY_PROMPT, "temperature": 0, "max_tokens": 120, "repeat_penalty": 1.0}
        r = requests.post(s.base_url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == plain[1]
        assert s.service.engine.metrics["accepted_tokens_total"] > 0
        bad = requests.post(s.base_url + "/v1/chat/completions", json={**body, "prompt_lookup_num_tokens": -1},
                            timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_lookup_num_tokens"


def test_engine_draft_model_is_lossless_per_slot(llm, copy_prompt, plain):
    """A draft model in the engine: one draft sequence per slot; two requests at once each get the
    output they get without drafting, and the drafts are used."""
    from cyllama import Engine

    cfg = GenerationConfig(temperature=0.0, max_tokens=120, repeat_penalty=1.0)
    with Engine(llm.model, n_slots=2, n_ctx=1024, draft_model=llm.model, draft_budget=12) as eng:
        reqs = [eng.submit(copy_prompt, cfg), eng.submit(copy_prompt, cfg)]
        for req in reqs:
            toks = [c.token for c in req if c.token is not None]
            assert_same_greedy(llm, copy_prompt, plain[0], toks)
        assert eng.metrics["draft_tokens_total"] > 0 and eng.metrics["accepted_tokens_total"] > 0
    from cyllama import LlamaModel, LlamaModelParams, _assets

    other = LlamaModel(_assets.vocab_model_path("gpt-2"), LlamaModelParams(vocab_only=True))
    try:
        with pytest.raises(ValueError, match="cannot draft"):  # another vocabulary
            Engine(llm.model, n_slots=1, draft_model=other)
    finally:
        other.close()


def test_server_draft_model(model_path, plain):
    requests = pytest.importorskip("requests")
    pytest.importorskip("fastapi")
    from cyllama.llama.server.embedded import EmbeddedServer

    with EmbeddedServer(model_path, port=0, n_ctx=1024, n_parallel=1, draft_model=model_path, draft_max=8) as s:
        body = {"messages": COPY_PROMPT, "temperature": 0, "max_tokens": 120, "repeat_penalty": 1.0}
        r = requests.post(s.base_url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == plain[1]
        assert s.service.engine.metrics["accepted_tokens_total"] > 0
