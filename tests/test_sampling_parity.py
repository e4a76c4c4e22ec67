"""Sampling matches llama.cpp: the same requests to the built ``llama-server`` and to our server, on
the same model, give the same tokens (penalties that see the prompt, DRY, a seeded top-k/top-p/min-p
chain, a grammar).

Both servers run one slot with the same context size, so the prompt is evaluated in the same batch
shape. The seeded cases compare sampled text: llama.cpp's ``dist`` draws from ``mt19937(seed)``
in both, over the same chain (llama-server's default order).

The greedy cases compare token ids, which may still part where the chain's top two tokens are
near-tied, since the two builds' kernels need not round alike: ``assert_same_greedy`` accepts a
divergence only there. At the first differing token it re-evaluates the shared prefix, runs the
logits through our sampler chain (penalties and DRY seeded with the prompt, the grammar) and
requires both tokens to be within a hair of the best. A sampler that differs from llama.cpp's parts
where the chain is sure, and fails."""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pytest
import requests

pytest.importorskip("fastapi")

from cyllama import LlamaContext, LlamaContextParams  # noqa: E402
from cyllama._config import build_sampler  # noqa: E402
from cyllama._ffi import ffi  # noqa: E402
from cyllama._generation import eval_prompt  # noqa: E402
from cyllama.llama._backend import lib  # noqa: E402
from cyllama.llama.server.embedded import EmbeddedServer  # noqa: E402
from cyllama.llama.server.launcher import ServerLauncher, find_server_binary  # noqa: E402

try:
    find_server_binary()
except FileNotFoundError:  # pragma: no cover - build_lib.py builds it
    pytest.skip("llama-server was not built", allow_module_level=True)

N_CTX = 1024
NEAR_TIE = 0.3  # logits; what rounding differences move on this Q4 model is ~0.1
MSGS = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "List three fruits and say why each is healthy. Repeat the word fruit often."}]
# DRY penalises going on with a sequence the context already holds: plain greedy answers
# "1, 2, 3, 4, ...", DRY "1, 2, 4, 6, ..." (its top-two margins are > 1 over the first 18 tokens)
SEQ = [{"role": "user", "content": "Continue the sequence: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"}]
DRY = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=128)


@pytest.fixture(scope="module")
def native(model_path):
    s = ServerLauncher(model_path, port=0, n_ctx=N_CTX, n_parallel=1, n_threads=2,
                       extra_args=["--no-warmup", "--cache-reuse", "0"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ours(model_path):
    s = EmbeddedServer(model_path, port=0, n_ctx=N_CTX, n_parallel=1, n_threads=2)
    s.start()
    yield s
    s.stop()


CASES = {
    "greedy + repeat penalty": dict(temperature=0, repeat_penalty=1.3, repeat_last_n=64),
    "greedy + frequency/presence": dict(temperature=0, frequency_penalty=0.8, presence_penalty=0.5),
    "greedy + DRY": dict(messages=SEQ, temperature=0, **DRY),
    "seeded top-k/top-p/min-p": dict(temperature=0.9, top_k=30, top_p=0.9, min_p=0.05, seed=1234),
    "seeded typical + penalty": dict(temperature=0.7, typical_p=0.9, repeat_penalty=1.1, seed=99),
}


def _chat(server, **kw) -> dict:
    body = {"messages": MSGS, "max_tokens": 24, **kw}
    r = requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


# -- greedy output, token by token ----------------------------------------------------------------
class Generated(NamedTuple):
    text: str
    ids: list[int]  # the generated tokens, the end of generation left out


@pytest.fixture(scope="module")
def pieces(model) -> dict[bytes, int]:
    """Token ids by their bytes: our server's logprobs give a token's bytes, llama-server's its id too."""
    vocab = model.get_vocab()
    out: dict[bytes, int] = {}
    for t in range(vocab.n_vocab):
        b = vocab.token_to_bytes(t, special=False)
        if b and not vocab.is_eog(t):
            out.setdefault(b, t)
    return out


def generated(server, pieces: dict[bytes, int], path: str, body: dict) -> Generated:
    """What a request generates; the token ids are read from its logprobs."""
    chat = path == "/v1/chat/completions"
    lp = {"logprobs": True, "top_logprobs": 1} if chat else {"logprobs": 1}
    r = requests.post(server.base_url + path, json={**body, **lp}, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    if "content" in choice["logprobs"]:  # llama-server's shape, and ours for chat
        toks = [bytes(e["bytes"]) for e in choice["logprobs"]["content"]]
    else:  # OpenAI's legacy completions shape: the tokens' text
        toks = [t.encode() for t in choice["logprobs"]["tokens"]]
    ids = [pieces[b] for b in toks if b]  # an end-of-generation token has no text
    assert b"".join(toks).decode() == text
    return Generated(text, ids)


def chain_logits(model, job, prefix: list[int]) -> np.ndarray:
    """The logits after ``job``'s prompt and ``prefix``, through its sampler chain (-inf where the
    chain rules a token out)."""
    vocab = model.get_vocab()
    s = build_sampler(job.config, vocab, job.grammar, history=job.tokens, n_ctx=N_CTX)
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=len(job.tokens) + len(prefix) + 16))
    try:
        for t in prefix:
            s.accept(t)
        eval_prompt(ctx, list(job.tokens) + prefix)
        n = vocab.n_vocab
        dt = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        arr = ffi.new("llama_token_data[]", n)
        buf = np.frombuffer(ffi.buffer(arr), dtype=dt)
        buf["id"], buf["logit"], buf["p"] = np.arange(n), ctx.get_logits_ith(-1), 0
        cur = ffi.new("llama_token_data_array *")
        cur.data, cur.size, cur.selected, cur.sorted = arr, n, -1, False
        lib.llama_sampler_apply(s.ptr, cur)
        res = np.frombuffer(ffi.buffer(cur.data, cur.size * dt.itemsize), dtype=dt)
        out = np.full(n, -np.inf, dtype=np.float32)
        out[res["id"]] = res["logit"]
        return out
    finally:
        ctx.close()
        s.close()


def assert_same_greedy(model, job, want: list[int], got: list[int]) -> None:
    """``got`` (ours) equals ``want`` (llama-server's), or parts from it first where the two tokens
    are near-tied after ``job``'s sampler chain."""
    if want == got:
        return
    i = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    logits = chain_logits(model, job, want[:i])
    vocab = model.get_vocab()
    end = max(float(logits[t]) for t in {vocab.eos, vocab.eot} if t >= 0)  # the shorter one ended there
    a, b = (float(logits[x[i]]) if i < len(x) else end for x in (want, got))
    margin = float(logits.max()) - min(a, b)
    detok = vocab.detokenize
    assert margin < NEAR_TIE, (f"ours parts from llama-server at token {i} where the chain is sure (margin "
                               f"{margin:.3f}): {detok(want[:i + 1])!r} vs {detok(got[:i + 1])!r}")


def _job(ours, path: str, body: dict):
    svc = ours.service.openai
    plan = svc.chat(body) if path == "/v1/chat/completions" else svc.completion(body)
    return plan.jobs[0]


@pytest.mark.parametrize("name", list(CASES))
def test_chat_matches_llama_server(native, ours, model, pieces, name) -> None:
    kw = CASES[name]
    if kw["temperature"] == 0:
        body = {"messages": MSGS, "max_tokens": 24, **kw}
        want = generated(native, pieces, "/v1/chat/completions", body)
        got = generated(ours, pieces, "/v1/chat/completions", body)
        assert_same_greedy(model, _job(ours, "/v1/chat/completions", body), want.ids, got.ids)
    else:
        want = _chat(native, **kw)["choices"][0]["message"]["content"]
        got = _chat(ours, **kw)["choices"][0]["message"]["content"]
        assert got == want


def test_the_dry_case_is_not_plain_greedy(ours) -> None:
    kw = CASES["greedy + DRY"]
    plain = {k: v for k, v in kw.items() if k not in DRY}
    assert _chat(ours, **kw)["choices"][0]["message"]["content"] != \
        _chat(ours, **plain)["choices"][0]["message"]["content"]


def test_repeat_penalty_sees_the_prompt(native, ours, model, pieces) -> None:
    # a strong penalty on prompt tokens changes the answer only if the prompt reaches the sampler
    plain = _chat(ours, temperature=0)["choices"][0]["message"]["content"]
    body = {"messages": MSGS, "max_tokens": 24, "temperature": 0, "repeat_penalty": 2.0, "repeat_last_n": 256}
    penalised = generated(ours, pieces, "/v1/chat/completions", body)
    assert plain != penalised.text
    want = generated(native, pieces, "/v1/chat/completions", body)
    assert_same_greedy(model, _job(ours, "/v1/chat/completions", body), want.ids, penalised.ids)


def test_completion_with_grammar_matches(native, ours, model, pieces) -> None:
    # the grammar's greedy output has top-two margins > 4 over its 16 tokens
    body = {"prompt": "Count to twenty: 1, 2, 3,", "max_tokens": 16, "temperature": 0,
            "grammar": 'root ::= (" " [0-9]+ ",")+'}
    want = generated(native, pieces, "/v1/completions", body)
    got = generated(ours, pieces, "/v1/completions", body)
    assert got.text.startswith(" 4,") and re.fullmatch(r"( [0-9]+,)*( [0-9]*)?", got.text), got.text
    assert_same_greedy(model, _job(ours, "/v1/completions", body), want.ids, got.ids)
