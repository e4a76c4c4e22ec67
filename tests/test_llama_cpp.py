"""cyllama.llama_cpp: the llama-cpp-python compatible API, on the real model and vocab-only GGUFs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from cyllama import _assets
from cyllama.llama_cpp import (
    LLAMA_DEFAULT_SEED,
    LLAMA_POOLING_TYPE_MEAN,
    Llama,
    LlamaCache,
    LlamaDiskCache,
    LlamaGrammar,
    LlamaPromptLookupDecoding,
    LlamaRAMCache,
    LlamaState,
    LlamaTokenizer,
    LogitsProcessorList,
    StoppingCriteriaList,
    __version__,
    llama_chat_format,
)

from conftest import run_isolated

# Tests that compare greedy text across runs that differ in batch shape (a run on a cached prefix
# decodes the last prompt token alone) need a prompt without near-ties, so that rounding cannot flip
# a token: PROMPT's top-two logit margins are > 3.2 over its first 32 tokens ("The capital of France
# is" has 0.26 at the 6th).
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
FORMATS = ["chatml", "llama-2", "llama-3", "mistral-instruct", "gemma", "qwen", "phi-3", "zephyr", "vicuna",
           "alpaca", "openchat"]


@pytest.fixture(scope="module")
def llm(model_path: Path) -> Llama:
    m = Llama(str(model_path), n_ctx=512, verbose=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def spm() -> Llama:
    m = Llama(str(_assets.vocab_model_path("llama-spm")), vocab_only=True, verbose=False)
    yield m
    m.close()


def greedy(llm: Llama, prompt=PROMPT, **kw) -> dict:
    kw.setdefault("max_tokens", 8)
    return llm(prompt, temperature=0, **kw)


# -- package surface and vocab-only models ------------------------------------------------------
def test_exports_and_constants() -> None:
    assert __version__
    assert LLAMA_DEFAULT_SEED == 0xFFFFFFFF and LLAMA_POOLING_TYPE_MEAN == 1
    assert LlamaCache is LlamaRAMCache
    import cyllama.llama_cpp as lc
    from cyllama.llama_cpp.llama import Llama as L2
    from cyllama.llama_cpp.llama_grammar import LlamaGrammar as G2

    assert L2 is Llama and G2 is LlamaGrammar
    assert lc.LLAMA_SPLIT_MODE_LAYER == 1 and lc.GGML_TYPE_Q8_0 == 8
    for name in FORMATS:
        assert callable(llama_chat_format.get_chat_completion_handler(name))
    with pytest.raises(llama_chat_format.LlamaChatCompletionHandlerNotFoundException):
        llama_chat_format.get_chat_completion_handler("no-such-format")


def test_vocab_only_tokenization(spm: Llama) -> None:
    assert spm.tokenize(b"Hello World") == [1, 15043, 2787]
    assert spm.tokenize(b"Hello World", add_bos=False) == [15043, 2787]
    assert spm.tokenize(b"Hello World</s>") == [1, 15043, 2787, 829, 29879, 29958]
    assert spm.tokenize(b"Hello World</s>", special=True) == [1, 15043, 2787, 2]
    assert spm.tokenize(b"", add_bos=True, special=True) == [spm.token_bos()]
    assert spm.detokenize([1, 15043, 2787]) == b"Hello World"
    assert spm.detokenize([15043, 2787]) == b" Hello World"
    assert spm.detokenize([1]) == b""
    assert spm.detokenize([1, 15043, 2787, 2], special=True) == b"<s> Hello World</s>"
    text = "Grüße, 日本語 🦙".encode()
    assert spm.detokenize(spm.tokenize(text)) == text
    assert spm.token_bos() == 1 and spm.token_eos() == 2 and spm.n_vocab() == 32000
    tok = spm.tokenizer()
    assert tok.encode("Hello World") == [1, 15043, 2787] and tok.decode([1, 15043, 2787]) == "Hello World"
    assert isinstance(spm.tokenizer_, LlamaTokenizer)
    with pytest.raises(RuntimeError, match="vocab_only"):
        spm("Hello")
    with pytest.raises(RuntimeError, match="vocab_only"):
        spm.eval([1, 2])
    with pytest.raises(TypeError):
        spm.tokenize(123)
    with pytest.raises(ValueError, match="out of range"):
        spm.detokenize([1, 10**6])


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Llama(str(tmp_path / "missing.gguf"), verbose=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all, just text" * 10)
    with pytest.raises(ValueError):
        Llama(str(bad), verbose=False)
    with pytest.raises(ValueError):
        Llama(str(_assets.vocab_model_path("llama-spm")), vocab_only=True, n_ctx=-5, verbose=False)


# -- completions ----------------------------------------------------------------------------
def test_completion_shape_and_greedy_determinism(llm: Llama, model_path: Path) -> None:
    out = greedy(llm)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion"
    assert isinstance(out["created"], int) and out["model"] == str(model_path)
    (choice,) = out["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert isinstance(choice["text"], str) and choice["text"]
    u = out["usage"]
    assert u["completion_tokens"] == 8 and u["prompt_tokens"] == len(llm.tokenize(PROMPT.encode()))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert greedy(llm)["choices"][0]["text"] == choice["text"]  # again, reusing the cached prefix
    llm.reset()
    assert greedy(llm)["choices"][0]["text"] == choice["text"]  # from scratch
    assert greedy(llm, llm.tokenize(PROMPT.encode()))["choices"][0]["text"] == choice["text"]  # token prompt
    assert llm(PROMPT, max_tokens=8, temperature=0, model="my-model")["model"] == "my-model"
    # sampling with a seed is reproducible too
    a = llm(PROMPT, max_tokens=8, temperature=1.0, seed=42)["choices"][0]["text"]
    assert llm(PROMPT, max_tokens=8, temperature=1.0, seed=42)["choices"][0]["text"] == a


def test_max_tokens_and_context_limits(llm: Llama, model_path: Path) -> None:
    assert greedy(llm, max_tokens=3)["usage"]["completion_tokens"] == 3
    n = len(llm.tokenize(("hello " * 600).encode()))
    with pytest.raises(ValueError, match=re.escape(f"Requested tokens ({n}) exceed context window of 512")):
        llm("hello " * 600, max_tokens=4)
    small = Llama(str(model_path), n_ctx=64, n_batch=64, verbose=False)
    try:
        n_ctx = small.n_ctx()
        out = small("Once upon a time", max_tokens=None, temperature=0, stop=[], repeat_penalty=1.0)
        if out["choices"][0]["finish_reason"] == "length":  # ran to the end of the context
            assert out["usage"]["total_tokens"] == n_ctx
        assert small.n_tokens <= n_ctx
    finally:
        small.close()


def test_stop_strings_and_echo(llm: Llama) -> None:
    full = greedy(llm, max_tokens=12)["choices"][0]["text"]
    cut = full.find(" ", 3)
    assert cut > 0, full
    stop = full[cut:cut + 3]
    out = greedy(llm, max_tokens=12, stop=stop)
    assert out["choices"][0]["text"] == full[:full.find(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"
    out2 = greedy(llm, max_tokens=12, stop=["zzzz-never", stop])
    assert out2["choices"][0]["text"] == out["choices"][0]["text"]
    streamed = "".join(c["choices"][0]["text"] for c in greedy(llm, max_tokens=12, stop=[stop], stream=True))
    assert streamed == out["choices"][0]["text"]
    echo = greedy(llm, max_tokens=12, echo=True)["choices"][0]["text"]
    assert echo == PROMPT + full
    # a model without fill-in-the-middle tokens appends the suffix to the output
    assert greedy(llm, max_tokens=4, suffix=" [end]")["choices"][0]["text"].endswith(" [end]")


def test_streaming_chunks(llm: Llama) -> None:
    full = greedy(llm, max_tokens=10)
    chunks = list(greedy(llm, max_tokens=10, stream=True))
    assert len(chunks) >= 2
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("cmpl-")
    for c in chunks:
        assert c["object"] == "text_completion" and "usage" not in c
        assert set(c["choices"][0]) == {"text", "index", "logprobs", "finish_reason"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"][0]["text"] == ""
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]


def test_logprobs(llm: Llama) -> None:
    out = greedy(llm, max_tokens=5, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    n = out["usage"]["completion_tokens"]
    assert all(len(v) == n for v in lp.values())
    assert all(x <= 0 and math.isfinite(x) for x in lp["token_logprobs"])
    assert all(1 <= len(t) <= 4 for t in lp["top_logprobs"])
    for tok, x, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert top[tok] == x and x == max(top.values())  # greedy picks the most likely token
    assert lp["text_offset"][0] == len(PROMPT) and lp["text_offset"] == sorted(lp["text_offset"])
    text = out["choices"][0]["text"]
    if text.isascii():
        assert "".join(lp["tokens"]) == text
    echo = greedy(llm, max_tokens=3, logprobs=1, echo=True)["choices"][0]["logprobs"]
    assert echo["token_logprobs"][0] is None and echo["top_logprobs"][0] is None
    assert all(x is not None for x in echo["token_logprobs"][1:])
    assert echo["text_offset"][0] == 0
    streamed = [c["choices"][0]["logprobs"] for c in greedy(llm, max_tokens=5, logprobs=2, stream=True)]
    assert sum(len(x["tokens"]) for x in streamed if x) == n


def test_grammar(llm: Llama, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    g = LlamaGrammar.from_json_schema(json.dumps(schema))
    out = llm("A person as JSON:", grammar=g, max_tokens=48, temperature=0)
    assert out["choices"][0]["finish_reason"] == "stop"
    obj = json.loads(out["choices"][0]["text"])
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str) and isinstance(obj["age"], int)
    yes_no = LlamaGrammar.from_string('root ::= "yes" | "no"')
    ans = llm("Is Paris in France? Answer:", grammar=yes_no, max_tokens=4, temperature=0.8, seed=1)
    assert ans["choices"][0]["text"] in ("yes", "no")
    f = tmp_path / "g.gbnf"
    f.write_text('root ::= [0-9]+ "."\n')
    digits = llm("Count: one two three, 1 2", grammar=LlamaGrammar.from_file(f), max_tokens=6, temperature=0)
    assert re.fullmatch(r"[0-9]+\.?", digits["choices"][0]["text"])
    with pytest.raises(ValueError):
        llm(PROMPT, grammar=LlamaGrammar.from_string("root ::= ((("), max_tokens=2)
    with pytest.raises(ValueError):
        LlamaGrammar.from_string("")


def test_logits_processor_logit_bias_and_stopping_criteria(llm: Llama) -> None:
    prompt = "The capital of France is"  # with its first token banned: margins > 1.5 over 3 tokens
    first = greedy(llm, prompt, max_tokens=1)
    banned = llm.tokenize(first["choices"][0]["text"].encode(), add_bos=False)[0]
    seen = []

    def ban(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen.append(len(input_ids))
        scores[banned] = -np.inf
        return scores

    out = greedy(llm, prompt, max_tokens=3, logits_processor=LogitsProcessorList([ban]))
    assert banned not in llm.tokenize(out["choices"][0]["text"].encode(), add_bos=False)
    assert seen[0] == len(llm.tokenize(prompt.encode())) and seen == sorted(seen)
    # a processor returning a new array works too
    out2 = greedy(llm, prompt, max_tokens=3,
                  logits_processor=lambda ids, s: np.where(np.arange(len(s)) == banned, -1e9, s))
    assert out2["choices"][0]["text"] == out["choices"][0]["text"]
    biased = greedy(llm, prompt, max_tokens=3, logit_bias={str(banned): -100.0})
    assert biased["choices"][0]["text"] == out["choices"][0]["text"]
    n_prompt = len(llm.tokenize(prompt.encode()))
    stop_after_2 = StoppingCriteriaList([lambda ids, logits: len(ids) >= n_prompt + 2])
    out = greedy(llm, prompt, max_tokens=10, stopping_criteria=stop_after_2)
    assert out["usage"]["completion_tokens"] == 2 and out["choices"][0]["finish_reason"] == "stop"


def test_generate_eval_sample(llm: Llama) -> None:
    tokens = llm.tokenize(PROMPT.encode())
    expected = llm.tokenize(greedy(llm, max_tokens=3)["choices"][0]["text"].encode(), add_bos=False)
    gen = llm.generate(tokens, temp=0.0)
    got = [next(gen) for _ in range(3)]
    gen.close()
    assert got == expected
    assert llm.n_tokens == len(tokens) + 2 and llm._input_ids.tolist() == tokens + got[:2]
    llm.reset()
    assert llm.n_tokens == 0
    llm.eval(tokens)
    assert llm.n_tokens == len(tokens) and llm.input_ids[:len(tokens)].tolist() == tokens
    assert llm.sample(temp=0.0) == expected[0]
    gen = llm.generate(tokens, temp=0.0)  # the prompt is fully cached: sampled without re-evaluation
    assert next(gen) == expected[0]
    gen.close()
    with pytest.raises(ValueError, match="out of range"):
        llm.eval([llm.n_vocab()])
    # send() inserts tokens after the one just sampled
    london = llm.tokenize(b" London", add_bos=False)
    gen = llm.generate(tokens, temp=0.0)
    first = next(gen)
    assert isinstance(gen.send(london), int)
    gen.close()
    assert llm._input_ids.tolist() == tokens + [first] + london


def test_draft_model(llm: Llama, model_path: Path) -> None:
    draft = LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=4)
    assert draft(np.array([1, 2, 3, 9, 1, 2], dtype=np.intc)).tolist() == [3, 9, 1, 2]
    assert draft(np.array([1, 2, 3], dtype=np.intc)).tolist() == []
    # repetitive, so that prompt lookup drafts tokens; no near-tie in the 10 tokens (margins > 6.5)
    prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3,"
    expected = greedy(llm, prompt, max_tokens=10)["choices"][0]["text"]
    spec = Llama(str(model_path), n_ctx=512, draft_model=draft, verbose=False)
    try:
        assert greedy(spec, prompt, max_tokens=10)["choices"][0]["text"] == expected
        streamed = "".join(c["choices"][0]["text"] for c in greedy(spec, prompt, max_tokens=10, stream=True))
        assert streamed == expected
    finally:
        spec.close()


def test_save_and_load_state(llm: Llama) -> None:
    llm.set_seed(1337)
    state = llm.save_state()
    assert isinstance(state, LlamaState) and state.llama_state_size == len(state.llama_state)
    kw = dict(max_tokens=6, temperature=1.0, top_k=50, top_p=0.9)
    first = llm("Pick a number from 1 to 10:", **kw)["choices"][0]["text"]
    llm("Pick a number from 1 to 10:", **kw)
    llm.load_state(state)
    assert llm.n_tokens == state.n_tokens
    assert llm("Pick a number from 1 to 10:", **kw)["choices"][0]["text"] == first
    with pytest.raises(TypeError):
        llm.load_state(b"junk")


def test_prompt_cache(llm: Llama, tmp_path: Path) -> None:
    expected = greedy(llm, max_tokens=3)["choices"][0]["text"]
    for cache in (LlamaRAMCache(), LlamaDiskCache(str(tmp_path / "c"))):
        llm.set_cache(cache)
        try:
            assert greedy(llm, max_tokens=3)["choices"][0]["text"] == expected
            assert len(cache) == 1
            llm.reset()
            loads = []
            orig = llm.load_state
            llm.load_state = lambda s: (loads.append(1), orig(s))[1]
            try:
                assert greedy(llm, max_tokens=3)["choices"][0]["text"] == expected
            finally:
                del llm.load_state
            assert loads == [1]
        finally:
            llm.set_cache(None)


def test_abandoned_stream_then_new_call(llm: Llama) -> None:
    expected = greedy(llm, max_tokens=6)["choices"][0]["text"]
    stream = greedy(llm, "Once upon a time", max_tokens=20, stream=True)
    next(stream), next(stream)
    assert greedy(llm, max_tokens=6)["choices"][0]["text"] == expected
    rest = list(stream)  # the new call ended the abandoned stream: it finishes without generating more
    assert len(rest) <= 3 and rest[-1]["choices"][0]["finish_reason"] == "stop"
    assert greedy(llm, max_tokens=6)["choices"][0]["text"] == expected


# -- chat -----------------------------------------------------------------------------------
# its greedy reply has top-two logit margins > 1.4 over 24 tokens (one without a near-tie, see PROMPT)
MESSAGES = [{"role": "user", "content": "Continue the sequence: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"}]


def test_chat_completion(llm: Llama, model_path: Path) -> None:
    assert llm.chat_format == "chat_template.default"  # SmolLM2 carries its own template
    out = llm.create_chat_completion(messages=MESSAGES, max_tokens=8, temperature=0)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
    assert out["model"] == str(model_path)
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    # streaming
    chunks = list(llm.create_chat_completion(messages=MESSAGES, max_tokens=8, temperature=0, stream=True))
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-") for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == choice["message"]["content"]
    # logprobs in the chat shape
    lp = llm.create_chat_completion(messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True,
                                    top_logprobs=2)["choices"][0]["logprobs"]
    assert len(lp["content"]) >= 1 and {"token", "logprob", "bytes", "top_logprobs"} <= set(lp["content"][0])
    # OpenAI objects
    obj = llm.create_chat_completion_openai_v1(messages=MESSAGES, max_tokens=4, temperature=0)
    assert type(obj).__name__ == "ChatCompletion" and obj.choices[0].message.role == "assistant"
    objs = list(llm.create_chat_completion_openai_v1(messages=MESSAGES, max_tokens=4, temperature=0, stream=True))
    assert type(objs[0]).__name__ == "ChatCompletionChunk"


def test_chat_json_response_format_and_forced_tool_call(llm: Llama) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
              "required": ["city"], "additionalProperties": False}
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Which city is the capital of France? Reply in JSON."}],
        response_format={"type": "json_object", "schema": schema}, max_tokens=32, temperature=0)
    data = json.loads(out["choices"][0]["message"]["content"])
    assert set(data) == {"city"} and isinstance(data["city"], str)
    loose = llm.create_chat_completion(messages=[{"role": "user", "content": "A JSON object please."}],
                                       response_format={"type": "json_object"}, max_tokens=6, temperature=0)
    assert loose["choices"][0]["message"]["content"].lstrip().startswith("{")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": schema}}]
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32, temperature=0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather" and call["id"]
    args = json.loads(call["function"]["arguments"])
    assert set(args) == {"city"} and isinstance(args["city"], str)
    chunks = list(llm.create_chat_completion(
        messages=[{"role": "user", "content": "Weather in Rome?"}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32, temperature=0,
        stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    streamed = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                       for c in chunks if c["choices"][0]["delta"].get("tool_calls"))
    assert set(json.loads(streamed)) == {"city"}
    with pytest.raises(ValueError, match="not found"):
        llm.create_chat_completion(messages=MESSAGES, tools=tools,
                                   tool_choice={"type": "function", "function": {"name": "nope"}})


def test_chat_formats_and_formatters(llm: Llama) -> None:
    for name in FORMATS:
        handler = llama_chat_format.get_chat_completion_handler(name)
        out = handler(llama=llm, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)
        assert out["object"] == "chat.completion", name
    assert "<|im_start|>user\nHi<|im_end|>" in llama_chat_format.format_chatml(
        messages=[{"role": "user", "content": "Hi"}]).prompt
    f = llama_chat_format.Jinja2ChatFormatter(template=llama_chat_format.CHATML_CHAT_TEMPLATE, eos_token="<|im_end|>",
                                              bos_token="<s>", stop_token_ids=[2])
    r = f(messages=[{"role": "user", "content": "Hi"}])
    assert isinstance(r, llama_chat_format.ChatFormatterResponse)
    assert r.prompt.endswith("<|im_start|>assistant\n") and r.stop == ["<|im_end|>"] and r.added_special
    assert r.stopping_criteria(np.array([5, 2]), np.zeros(3)) and not r.stopping_criteria(np.array([2, 5]), np.zeros(3))
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert out["object"] == "chat.completion"

    @llama_chat_format.register_chat_format("test-plain")
    def plain(messages, **kwargs):
        return llama_chat_format.ChatFormatterResponse(prompt="".join(m["content"] for m in messages) + "\nA:")

    out = llama_chat_format.get_chat_completion_handler("test-plain")(
        llama=llm, messages=[{"role": "user", "content": "Q: 2+2?"}], max_tokens=2, temperature=0)
    assert out["object"] == "chat.completion"
    with pytest.raises(ValueError):
        llm.create_chat_completion(messages=[{"content": "no role"}], max_tokens=2)
    with pytest.raises(ValueError):
        llm.create_chat_completion(messages=[], max_tokens=2)


# -- embeddings, contexts, bad input --------------------------------------------------------
def test_embeddings(model_path: Path, llm: Llama) -> None:
    with pytest.raises(RuntimeError, match="embedding=True"):
        llm.create_embedding("hi")
    emb = Llama(str(model_path), embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN, n_ctx=256, verbose=False)
    try:
        out = emb.create_embedding(["Hello world", "A different text"])
        assert out["object"] == "list" and out["model"] == str(model_path)
        assert [d["index"] for d in out["data"]] == [0, 1]
        assert all(d["object"] == "embedding" and len(d["embedding"]) == emb.n_embd() for d in out["data"])
        assert all(isinstance(x, float) for x in out["data"][0]["embedding"])
        assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
        single = emb.embed("Hello world")
        np.testing.assert_allclose(single, out["data"][0]["embedding"], rtol=1e-4, atol=1e-4)
        unit = emb.embed("Hello world", normalize=True)
        assert abs(np.linalg.norm(unit) - 1.0) < 1e-4
        vecs, count = emb.embed(["a", "b c"], return_count=True)
        assert len(vecs) == 2 and count > 0
        assert emb(PROMPT, max_tokens=2, temperature=0)["usage"]["completion_tokens"] >= 1
    finally:
        emb.close()
    per_token = Llama(str(model_path), embedding=True, n_ctx=256, verbose=False)  # pooling "none"
    try:
        rows = per_token.embed("Hello world")
        assert len(rows) == len(per_token.tokenize(b"Hello world")) and len(rows[0]) == per_token.n_embd()
    finally:
        per_token.close()


def test_n_ctx_zero_uses_the_training_context(model_path: Path) -> None:
    m = Llama(str(model_path), n_ctx=0, verbose=False)
    try:
        assert m.n_ctx() == m._model.n_ctx_train == 8192
        assert len(m.input_ids) == 8192
    finally:
        m.close()
    m = Llama(str(model_path), n_ctx=0, kv_overrides={"llama.context_length": 1024, "general.name": "renamed"},
              verbose=False)
    try:
        assert m.n_ctx() == 1024
    finally:
        m.close()
    with pytest.raises(ValueError):
        Llama(str(model_path), kv_overrides={"k": object()}, verbose=False)


def test_bad_input(llm: Llama) -> None:
    with pytest.raises(TypeError):
        llm(12345)
    with pytest.raises(ValueError, match="out of range"):
        llm([1, llm.n_vocab() + 5], max_tokens=1)
    with pytest.raises(ValueError):
        llm(PROMPT, temperature=float("nan"), max_tokens=1)
    with pytest.raises(TypeError):
        llm(PROMPT, stop=[1, 2], max_tokens=1)
    with pytest.raises(ValueError):
        llm(PROMPT, logit_bias={10**9: 1.0}, max_tokens=1)
    with pytest.raises(TypeError):
        llm(PROMPT, max_tokens="many")
    with pytest.raises(TypeError):
        llm(PROMPT, grammar=42, max_tokens=1)
    with pytest.raises(ValueError):
        llm.create_chat_completion(messages=MESSAGES, response_format={"type": "yaml"})
    assert greedy(llm, max_tokens=2)["usage"]["completion_tokens"] == 2  # still usable


def test_close_is_idempotent_and_safe(model_path: Path) -> None:
    with Llama(str(model_path), n_ctx=64, verbose=False) as m:
        assert m(PROMPT, max_tokens=1, temperature=0)["usage"]["completion_tokens"] == 1
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m(PROMPT, max_tokens=1)
    m.__del__()
    assert "closed" in repr(m)


# -- from_pretrained against a local emulation of the Hugging Face Hub (tests/fake_hub.py) ------
def test_from_pretrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("requests")
    from fake_hub import serve

    data = _assets.vocab_model_path("llama-spm").read_bytes()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with serve() as hub:
        hub.add("org/repo", files={"README.md": b"hi", "ggml-vocab-llama-spm.gguf": data})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        m = Llama.from_pretrained("org/repo", "*spm.gguf", cache_dir=tmp_path / "cache", vocab_only=True,
                                  verbose=False)
        assert m.tokenize(b"Hello World") == [1, 15043, 2787]
        assert Path(m.model_path).read_bytes() == data and str(tmp_path / "cache") in m.model_path
        m.close()
        assert hub.requests("GET", "/cdn/org/repo/ggml-vocab-llama-spm.gguf")
        local = Llama.from_pretrained("org/repo", "ggml-vocab-llama-spm.gguf", local_dir=tmp_path / "here",
                                      vocab_only=True, verbose=False)
        assert Path(local.model_path) == tmp_path / "here" / "ggml-vocab-llama-spm.gguf"
        local.close()
        with pytest.raises(FileNotFoundError):
            Llama.from_pretrained("org/repo", "*q8_0.gguf", cache_dir=tmp_path / "cache", vocab_only=True,
                                  verbose=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone: the cached copy is used
    m = Llama.from_pretrained("org/repo", "ggml-vocab-llama-spm.gguf", cache_dir=tmp_path / "cache",
                              vocab_only=True, verbose=False)
    assert m.tokenize(b"Hello World", add_bos=False) == [15043, 2787]
    m.close()


# -- a typical llama-cpp-python script, unchanged but for the import -----------------------------
def test_user_script_end_to_end(model_path: Path) -> None:
    proc = run_isolated(f"""
        import json
        from cyllama.llama_cpp import Llama, LlamaGrammar

        llm = Llama(model_path={str(model_path)!r}, n_ctx=1024, n_threads=2, seed=1337, verbose=False)
        output = llm("Q: Name the planets in the solar system? A: ", max_tokens=24, stop=["Q:", "\\n"], echo=True)
        print(output["choices"][0]["text"].startswith("Q: Name the planets"))
        for chunk in llm("Tell me a story:", max_tokens=8, stream=True):
            print(chunk["choices"][0]["text"], end="", flush=True)
        print()
        resp = llm.create_chat_completion(
            messages=[{{"role": "system", "content": "You are an assistant who perfectly describes images."}},
                      {{"role": "user", "content": "Describe this image in detail please."}}], max_tokens=16)
        print(resp["choices"][0]["message"]["role"])
        resp = llm.create_chat_completion(
            messages=[{{"role": "user", "content": "Who won the world series in 2020? Answer in JSON."}}],
            response_format={{"type": "json_object", "schema": {{"type": "object",
                "properties": {{"team_name": {{"type": "string", "maxLength": 20}}}}, "required": ["team_name"]}}}},
            temperature=0.7, max_tokens=40)
        print(sorted(json.loads(resp["choices"][0]["message"]["content"])))
        tokens = llm.tokenize(b"Hello, world!")
        print(llm.detokenize(tokens).decode())
        print(llm.n_ctx(), llm.n_vocab(), llm.token_eos() >= 0, type(llm.metadata).__name__)
        llm.close()
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "True"
    assert "assistant" in lines
    assert "['team_name']" in lines
    assert "Hello, world!" in lines
    assert lines[-1] == "1024 49152 True dict"
