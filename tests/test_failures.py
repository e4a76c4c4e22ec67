"""Failures that must not spread: a user callback that raises fails only its own request (the
engine thread goes on), a dead engine thread is reported at once, timeouts are honoured, and the
interpreter exits cleanly while the engine decodes."""

from __future__ import annotations

import time

import pytest

from cyllama import LLM, Engine, GenerationConfig
from cyllama._engine import EngineStoppedError, QueueTimeoutError

from conftest import run_isolated

# greedy continuations with no near-tie (see tests/test_engine.py)
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
GREEDY = GenerationConfig(temperature=0.0, max_tokens=24, repeat_penalty=1.0)
LONG = GREEDY.replace(max_tokens=200, ignore_eos=True)


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def llm(model_path):
    with LLM(model_path, n_threads=2) as m:
        yield m


@pytest.fixture()
def engine(llm):
    with Engine(llm.model, n_slots=2, n_ctx=256, n_threads=2) as e:
        yield e


def _idle(engine: Engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.busy_slots and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.busy_slots == 0


def _failing_on_chunk(at: int):
    seen = []

    def on_chunk(c) -> None:
        seen.append(c)
        if len(seen) == at or (at == -1 and c.finish_reason is not None):
            raise Boom(f"on_chunk failed at chunk {len(seen)}")
    return on_chunk, seen


@pytest.mark.parametrize("at", [1, 3, -1], ids=["first-chunk", "third-chunk", "last-chunk"])
def test_on_chunk_that_raises_fails_only_its_request(llm, engine, at) -> None:
    toks = llm.tokenize(PROMPT)
    on_chunk, seen = _failing_on_chunk(at)
    with engine.hold():  # both run in the same batches
        good = engine.submit(toks, GREEDY)
        bad = engine.submit(toks, GREEDY, on_chunk=on_chunk)
    assert good.result(timeout=60) and good.finish_reason in ("stop", "length")
    with pytest.raises(Boom, match="on_chunk failed"):
        bad.wait(timeout=60)
    assert bad.finish_reason == "error" and isinstance(bad.error, Boom)
    assert at == -1 or len(seen) == at  # never called again after it raised
    _idle(engine)
    assert engine.running and engine.metrics["requests_failed"] == 1
    assert engine.submit(toks, GREEDY).result(timeout=60) == good.result()  # the engine goes on


def test_on_start_that_raises_fails_only_its_request(llm, engine) -> None:
    def on_start() -> None:
        raise Boom("on_start failed")

    bad = engine.submit(llm.tokenize(PROMPT), GREEDY, on_start=on_start)
    with pytest.raises(Boom):
        bad.result(timeout=60)
    started = []
    ok = engine.submit(llm.tokenize(PROMPT), GREEDY, on_start=lambda: started.append(1))
    assert ok.result(timeout=60) and started == [1]
    _idle(engine)


@pytest.mark.parametrize("exc", [Boom("processor failed"), SystemExit(3)], ids=["exception", "system-exit"])
def test_logits_processor_that_raises_fails_only_its_request(llm, engine, exc) -> None:
    calls = []

    def processor(ids, logits):
        calls.append(len(ids))
        if len(calls) == 4:
            raise exc
        return logits

    toks = llm.tokenize(PROMPT)
    with engine.hold():
        good = engine.submit(toks, LONG.replace(max_tokens=30))
        bad = engine.submit(toks, GREEDY.replace(logits_processor=processor))
    if isinstance(exc, Exception):
        with pytest.raises(Boom, match="processor failed"):
            bad.result(timeout=60)
    else:  # re-raised to the reader as an Exception that names it
        with pytest.raises(Exception, match="SystemExit") as info:
            bad.result(timeout=60)
        assert isinstance(info.value.__cause__, SystemExit)
    assert len(calls) == 4 and bad.finish_reason == "error"
    assert good.result(timeout=60) and good.finish_reason == "length" and good.stats.generated_tokens == 30
    _idle(engine)
    assert engine.running


def test_result_honours_its_timeout(llm, engine) -> None:
    req = engine.submit(llm.tokenize(PROMPT), LONG)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        req.result(timeout=0.2)
    assert time.monotonic() - t0 < 2.0
    req.cancel()
    req.result(timeout=30)  # continues where it stopped
    assert req.finish_reason == "cancelled"
    with pytest.raises(TimeoutError):
        engine.submit(llm.tokenize(PROMPT), LONG, on_chunk=lambda c: None).wait(timeout=0.1)


class _Die(BaseException):
    """Stands for something that ends a thread (not an Exception the loop could handle)."""


def test_dead_engine_thread_fails_requests_and_submit_raises(llm, engine) -> None:
    def die() -> None:
        raise _Die("engine bug")

    engine._step = die  # the seam: the next step kills the thread
    req = engine.submit(llm.tokenize(PROMPT), GREEDY)
    with pytest.raises(EngineStoppedError, match="stopped.*engine bug"):
        req.result(timeout=10)
    engine._thread.join(10)
    assert not engine.running
    t0 = time.monotonic()
    with pytest.raises(EngineStoppedError):
        engine.submit(llm.tokenize(PROMPT), GREEDY)
    assert time.monotonic() - t0 < 1.0
    engine.close()


def test_step_exception_fails_a_request_and_the_engine_goes_on(llm, engine) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("step bug")

    engine._step = broken
    req = engine.submit(llm.tokenize(PROMPT), GREEDY)
    with pytest.raises(RuntimeError, match="step bug"):
        req.result(timeout=10)
    assert len(calls) == 1  # no spinning on the failure
    del engine._step
    assert engine.running and engine.submit(llm.tokenize(PROMPT), GREEDY).result(timeout=60)


def test_queue_timeout(llm) -> None:
    with Engine(llm.model, n_slots=1, n_ctx=256, n_threads=2, queue_timeout=0.3) as e:
        toks = llm.tokenize(PROMPT)
        long = e.submit(toks, LONG)
        waiting = e.submit(toks, GREEDY)
        with pytest.raises(QueueTimeoutError):
            waiting.result(timeout=30)
        assert waiting.finish_reason == "error" and e.metrics["requests_timed_out"] == 1
        long.cancel()
        long.result(timeout=30)
        assert e.submit(toks, GREEDY).result(timeout=60)  # a request that gets a slot in time runs
    with pytest.raises(ValueError, match="queue_timeout"):
        Engine(llm.model, n_slots=1, n_ctx=64, queue_timeout=0)


def test_closed_engine_refuses_submissions(llm) -> None:
    e = Engine(llm.model, n_slots=1, n_ctx=64, n_threads=2)
    e.close()
    with pytest.raises(EngineStoppedError, match="closed"):
        e.submit(llm.tokenize(PROMPT), GREEDY)


def test_interpreter_exit_while_decoding() -> None:
    """Exiting with the engine mid-decode (a long prompt being evaluated, another generating)
    neither crashes nor hangs: the engine closes before the contexts' finalizers run."""
    t0 = time.monotonic()
    proc = run_isolated("""
        from cyllama import Engine, GenerationConfig, _assets
        from cyllama.llama.model import LlamaModel
        m = LlamaModel(_assets.default_model_path())
        e = Engine(m, n_slots=2, n_ctx=512, n_threads=2)
        toks = m.get_vocab().tokenize("Count: 1, 2, 3," * 30, add_special=True, parse_special=False)
        cfg = GenerationConfig(temperature=0, max_tokens=400, ignore_eos=True)
        r = e.submit(toks, cfg)
        e.submit(toks[:-5], cfg, on_chunk=lambda c: None)
        next(iter(r))
        print("exiting", flush=True)
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting" in proc.stdout and time.monotonic() - t0 < 120


# -- the single-sequence API: callbacks run in the caller's thread ------------------------------
def test_llm_on_token_and_processor_errors_reach_the_caller(llm) -> None:
    expected = llm(PROMPT, GREEDY)

    def on_token(text: str) -> None:
        raise Boom("on_token failed")

    with pytest.raises(Boom, match="on_token"):
        llm(PROMPT, GREEDY, on_token=on_token)

    def processor(ids, logits):
        raise Boom("processor failed")

    with pytest.raises(Boom, match="processor"):
        llm(PROMPT, GREEDY.replace(logits_processor=processor))
    assert llm(PROMPT, GREEDY) == expected  # the LLM is usable and its cache consistent


def test_drop_in_stopping_criterion_error_reaches_the_caller(model_path) -> None:
    from cyllama.llama_cpp import Llama, StoppingCriteriaList

    llama = Llama(model_path=str(model_path), n_ctx=256, n_threads=2, verbose=False)
    try:
        expected = llama.create_completion(PROMPT, max_tokens=12, temperature=0.0)["choices"][0]["text"]

        def criterion(ids, logits) -> bool:
            raise Boom("criterion failed")

        with pytest.raises(Boom, match="criterion"):
            llama.create_completion(PROMPT, max_tokens=12, temperature=0.0,
                                    stopping_criteria=StoppingCriteriaList([criterion]))
        again = llama.create_completion(PROMPT, max_tokens=12, temperature=0.0)["choices"][0]["text"]
        assert again == expected
    finally:
        llama.close()


# -- native error lines reach the exception -----------------------------------------------------
def test_native_errors_reach_the_exception_after_many_warnings() -> None:
    """llama.cpp's error lines name the cause even when many warnings were logged before (the
    recent-lines ring used to hold both, so warnings pushed the errors out of reach)."""
    from cyllama import LlamaModel, LlamaModelParams, ModelLoadError, _assets, _logging

    for _ in range(3):  # this vocabulary makes llama.cpp warn 8 times per load
        LlamaModel(_assets.vocab_model_path("aquila"), LlamaModelParams(vocab_only=True)).close()
    assert len(_logging.last_errors()) >= 16
    with pytest.raises(ModelLoadError, match="token_embd.weight"):  # a vocabulary-only file loaded whole
        LlamaModel(_assets.vocab_model_path("llama-spm"))
    mark = _logging.log_mark()
    assert _logging.errors_since(mark) == []
