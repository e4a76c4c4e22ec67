"""Closing native objects while another thread uses them, and reading logits after close: each
case ran into freed memory (a segfault) before; each runs in its own interpreter so a crash fails
one test, and must end with a Python exception or a completed call."""

from __future__ import annotations

import pytest

from conftest import run_isolated

SETUP = """
import threading, time
from cyllama import _assets, LlamaModel, LlamaContext, LlamaContextParams, LlamaBatch, LlamaSampler
from cyllama._errors import ClosedError
model = LlamaModel(str(_assets.default_model_path()))
def make_ctx():
    p = LlamaContextParams(); p.n_ctx = 2048; p.n_batch = 2048; p.n_ubatch = 512
    p.n_threads = 2; p.n_threads_batch = 2
    return LlamaContext(model, p)
toks = model.get_vocab().tokenize("hello world " * 400, add_special=True)[:2000]
def long_batch():
    b = LlamaBatch(len(toks), 0, 1); b.add_sequence(toks, 0, 0); return b
def later(fn, delay=0.2):
    started = threading.Event()
    def run():
        started.set(); time.sleep(delay); fn(); print("closed", flush=True)
    t = threading.Thread(target=run); t.start(); started.wait(); return t
"""


def _run(body: str) -> str:
    proc = run_isolated(SETUP + body, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("target", ["ctx", "model", "batch"])
def test_close_from_another_thread_waits_for_a_running_decode(target):
    out = _run(f"""
ctx = make_ctx(); b = long_batch()
obj = {{"ctx": ctx, "model": model, "batch": b}}["{target}"]
t = later(obj.close)
ctx.decode(b)   # 2000 tokens: the close above arrives while this runs
print("decoded", flush=True)
t.join()
try:
    ctx.decode(b)
except (ClosedError, ValueError) as e:
    print("then", type(e).__name__)
""")
    # two threads print: their lines may interleave, so look for the words, not the lines
    assert "decoded" in out and "closed" in out
    assert out.rstrip().endswith("then ClosedError")


def test_logits_read_after_close_or_the_next_decode_are_unchanged():
    out = _run("""
import numpy as np
ctx = make_ctx(); b = long_batch(); ctx.decode(b)
first = ctx.get_logits_ith(-1); kept = first.copy()
b2 = LlamaBatch(1, 0, 1); b2.add(toks[0], len(toks), (0,), True); ctx.decode(b2)
ctx.close(); model.close()
print(np.array_equal(first, kept), float(first.sum()) == float(kept.sum()))
""")
    assert out.split() == ["True", "True"]


def test_grammar_sampler_after_its_model_closed_raises():
    out = _run("""
vocab = model.get_vocab()
s = LlamaSampler(vocab=vocab).add_grammar(vocab, 'root ::= "a" [b-z]*').add_greedy()
model.close()
for call in (lambda: s.accept(5), lambda: s.reset()):
    try:
        call(); print("ran")
    except ClosedError:
        print("closed")
""")
    assert out.split() == ["closed", "closed"]


def test_sampler_bound_to_another_vocabulary_is_refused(vocab_model):
    out = _run("""
from cyllama import LlamaModelParams
other = LlamaModel(str(_assets.vocab_model_path("gpt-2")), LlamaModelParams(vocab_only=True))
ov = other.get_vocab()
s = LlamaSampler(vocab=ov).add_grammar(ov, 'root ::= "a" [b-z]*').add_greedy()
ctx = make_ctx(); b = LlamaBatch(4, 0, 1); b.add_sequence(toks[:4], 0, 0, logits_last=True); ctx.decode(b)
try:
    s.sample(ctx, -1); print("sampled")
except ValueError as e:
    print("refused", "vocabulary" in str(e))
""")
    assert out.split() == ["refused", "True"]


def test_tokenize_while_the_model_closes_in_another_thread():
    out = _run("""
text = "a quick brown fox " * 200000   # long enough that the close arrives during it
t = later(model.close, delay=0.05)
try:
    n = len(model.get_vocab().tokenize(text)); print("tokenized", n > 0)
except ClosedError:
    print("tokenized closed")
t.join()
""")
    assert out.split()[0] in ("tokenized", "closed")
