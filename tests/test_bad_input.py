"""Bad input raises a Python exception; nothing may crash the process.

Each case runs in a fresh interpreter so that a native crash fails that case (run_isolated
asserts the process was not killed by a signal) instead of taking the whole test run down.
"""

from __future__ import annotations

import pytest

from conftest import run_isolated

PRELUDE = """
import os, sys
from cyllama import *
from cyllama import _assets
model_path = str(_assets.default_model_path())
def expect(exc, fn, *a, **k):
    try:
        fn(*a, **k)
    except exc as e:
        print("RAISED", type(e).__name__, str(e)[:300])
        return
    print("NO EXCEPTION")
    sys.exit(3)
"""


def check(body: str, *expected: str) -> str:
    proc = run_isolated(PRELUDE + body)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    for e in expected:
        assert e in proc.stdout, proc.stdout
    return proc.stdout


def test_missing_model() -> None:
    check("expect(FileNotFoundError, LlamaModel, '/nonexistent/model.gguf')", "RAISED FileNotFoundError")


@pytest.mark.parametrize("content,what", [
    ("b''", "empty"),
    ("os.urandom(4096)", "random"),
    ("b'hello, this is a text file\\n' * 100", "text"),
    ("b'GGUF' + os.urandom(4000)", "bad header"),
    ("b'GGUF' + b'\\x03\\x00\\x00\\x00' + b'\\xff' * 64", "huge counts"),
])
def test_not_a_model(tmp_path, content: str, what: str) -> None:
    path = tmp_path / "bad.gguf"
    out = check(f"open({str(path)!r}, 'wb').write({content})\n"
                f"expect((ValueError, RuntimeError), LlamaModel, {str(path)!r})", "RAISED")
    assert "bad.gguf" in out  # the message names the file


def test_truncated_model(tmp_path, model_path) -> None:
    path = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as src:
        path.write_bytes(src.read(model_path.stat().st_size // 2))
    out = check(f"expect((ValueError, RuntimeError), LlamaModel, {str(path)!r})", "RAISED")
    assert "truncated.gguf" in out


def test_invalid_parameters_and_tokens() -> None:
    check("""
m = LlamaModel(model_path)
expect(ValueError, setattr, LlamaContextParams(), 'n_ctx', -1)
expect(ValueError, setattr, LlamaContextParams(), 'n_batch', 0)
expect(ValueError, LlamaBatch, 0)
ctx = LlamaContext(m, LlamaContextParams(n_ctx=128, n_batch=64))
b = LlamaBatch(8)
b.add(10**7, 0, [0], True)
expect(ValueError, ctx.decode, b)                    # token id out of range
b.clear(); b.add(-1, 0, [0], True)
expect(ValueError, ctx.decode, b)
b2 = LlamaBatch(8)
b2.add(1, 5, [0]); b2.add(2, 3, [0], True)
expect(ValueError, ctx.decode, b2)                   # positions out of order
expect(ValueError, b2.add, 1, -3, [0])               # negative position
expect(ValueError, b2.add, 1, 0, [7])                # sequence id beyond n_seq_max
expect(ValueError, ctx.decode, LlamaBatch(8))        # empty batch
expect(ValueError, ctx.decode, llama_batch_get_one(list(range(1, 100))))  # more than n_batch
expect(ValueError, ctx.get_logits_ith, 0)            # nothing decoded yet
expect(ValueError, LlamaSampler().add_greedy().sample, ctx, -1)
expect(ValueError, ctx.kv_cache_seq_rm, 5, 0, -1)
expect(ValueError, LlamaSampler().add_top_p, 2.0)
expect(ValueError, m.get_vocab().detokenize, [1, 10**9])
s = LlamaSampler(vocab=m.get_vocab())
expect(ValueError, s.add_grammar, 'root ::= "a" | (')
expect(ValueError, s.add_grammar, 'root ::= undefined_rule')
expect(ValueError, ctx.set_state, b'not a state')
expect(FileNotFoundError, ctx.load_state_file, '/nonexistent/state.bin')
ctx.close(); m.close()
expect(ClosedError, ctx.decode, b)
expect(ClosedError, LlamaContext, m)
print("OK")
""", "OK")


def test_decode_error_names_the_cause() -> None:
    check("""
m = LlamaModel(model_path)
ctx = LlamaContext(m, LlamaContextParams(n_ctx=64, n_batch=64))
n, step, pos = ctx.n_ctx, ctx.n_batch, 0
while pos < n:
    k = min(step, n - pos)
    b = LlamaBatch(k); b.add_sequence(list(range(100, 100 + k)), pos, 0); ctx.decode(b); pos += k
b2 = LlamaBatch(1); b2.add(5, n, [0], True)
expect(DecodeError, ctx.decode, b2)                  # the context is full
print("OK")
""", "OK", "no KV cache slot")


def test_closing_model_closes_its_contexts() -> None:
    check("""
m = LlamaModel(model_path)
ctx = LlamaContext(m, LlamaContextParams(n_ctx=64))
m.close()
assert ctx.closed
expect(ClosedError, ctx.decode, llama_batch_get_one([1, 2]))
print("OK")
""", "OK")
