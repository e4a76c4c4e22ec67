from __future__ import annotations

import json

import pytest

from cyllama import LlamaBatch, LlamaContext, LlamaModel, LlamaSampler, LlamaSamplerChainParams
from cyllama._generation import stream_text


def run(ctx: LlamaContext, model: LlamaModel, sampler: LlamaSampler, prompt: str, n: int = 40) -> str:
    ctx.kv_cache_clear()
    toks = model.get_vocab().tokenize(prompt, parse_special=True)
    return "".join(stream_text(ctx, sampler, toks, n))


def test_seeded_sampling_is_reproducible(model, ctx) -> None:
    def chain(seed):
        return LlamaSampler().add_top_k(40).add_top_p(0.95).add_temp(0.9).add_dist(seed)
    a = run(ctx, model, chain(123), "Once upon a time")
    b = run(ctx, model, chain(123), "Once upon a time")
    assert a == b and len(a) > 20
    others = {run(ctx, model, chain(s), "Once upon a time") for s in (1, 2, 3)}
    assert len(others) > 1


def test_grammar_constrains_output(model, ctx) -> None:
    grammar = 'root ::= "{" ws "\\"answer\\":" ws ("\\"yes\\"" | "\\"no\\"") ws "}"\nws ::= [ \\t\\n]*'
    s = LlamaSampler()  # the grammar sampler waits for the vocab of the first context it samples from
    s.add_grammar(grammar).add_greedy()
    out = run(ctx, model, s, "Is the sky blue? Answer in JSON:", 30)
    assert json.loads(out)["answer"] in ("yes", "no")


def test_chain_of_every_sampler_runs(model, ctx) -> None:
    v = model.get_vocab()
    s = LlamaSampler(LlamaSamplerChainParams(no_perf=False), vocab=v)
    (s.add_penalties(64, 1.1, 0.1, 0.1).add_dry(0.8, 1.75, 2, 64).add_logit_bias(v.n_vocab, {v.eos: -5.0})
      .add_top_k(40).add_typical(0.95).add_top_p(0.9).add_min_p(0.05).add_xtc(0.1, 0.5, 1, 7)
      .add_top_n_sigma(2.0).add_temp_ext(0.8, 0.1, 1.0).add_dist(7))
    assert s.n_samplers == 11
    assert len(run(ctx, model, s, "The weather today", 20)) > 0
    s2 = LlamaSampler().add_mirostat_v2(5, 5.0, 0.1)
    assert len(run(ctx, model, s2, "The weather today", 10)) > 0
    s3 = LlamaSampler().add_mirostat(v.n_vocab, 5, 5.0, 0.1, 100)
    assert len(run(ctx, model, s3, "The weather today", 10)) > 0


def test_logit_bias_bans_a_token(model, ctx) -> None:
    v = model.get_vocab()
    greedy = run(ctx, model, LlamaSampler().add_greedy(), "The capital of France is", 3)
    first = v.tokenize(greedy, add_special=False)[0]
    banned = LlamaSampler().add_logit_bias(v.n_vocab, {first: float("-inf")}).add_greedy()
    out = run(ctx, model, banned, "The capital of France is", 3)
    assert v.tokenize(out, add_special=False)[0] != first


def test_bad_grammar_and_values(model) -> None:
    v = model.get_vocab()
    with pytest.raises(ValueError, match="grammar"):
        LlamaSampler(vocab=v).add_grammar("root ::= undefined_rule")
    with pytest.raises(ValueError):
        LlamaSampler().add_min_p(-0.1)
    with pytest.raises(ValueError):
        LlamaSampler().add_penalties(64, 0.0)
    with pytest.raises(ValueError):
        LlamaSampler().add_dist(2**40)
    s = LlamaSampler(vocab=v).add_grammar('root ::= "a"').add_greedy()
    with pytest.raises(ValueError, match="out of range"):
        s.accept(v.n_vocab + 5)
    with pytest.raises(ValueError, match="vocabulary"):
        LlamaSampler().add_penalties(64, 1.1).accept(3)
