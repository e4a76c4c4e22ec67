from __future__ import annotations

import gc
import os

from cyllama import LlamaContext, LlamaContextParams, LlamaModel, llama_batch_get_one


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_no_leak_over_50_model_and_context_cycles(model_path) -> None:
    def cycle() -> None:
        with LlamaModel(model_path) as m, LlamaContext(m, LlamaContextParams(n_ctx=256)) as c:
            c.decode(llama_batch_get_one(m.get_vocab().tokenize("hello there")))
    for _ in range(5):
        cycle()
    gc.collect()
    base = _rss_mb()
    for _ in range(50):
        cycle()
    gc.collect()
    grown = _rss_mb() - base
    assert grown < 60, f"RSS grew by {grown:.1f} MB over 50 cycles"


def test_finalizer_frees_without_close(model_path) -> None:
    m = LlamaModel(model_path)
    c = LlamaContext(m, LlamaContextParams(n_ctx=128))
    fin = c._finalizer
    del c
    gc.collect()
    assert not fin.alive
    m.close()
