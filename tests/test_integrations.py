"""The OpenAI-compatible client and the LangChain models, on the real default model (greedy)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import numpy as np
import pytest

from cyllama import LLM
from cyllama.integrations import OpenAICompatibleClient

from conftest import ROOT

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
# tests that compare greedy text across runs (a stream, n choices in one batch, a request on the
# cached prefix) ask for this: its greedy reply (repeat_penalty 1.0) has every top-two logit margin
# > 1.4 over 24 tokens, so rounding between batch shapes cannot flip a token
SEQ = "Continue the sequence: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
SEQ_MSGS = [{"role": "user", "content": SEQ}]


@pytest.fixture(scope="module")
def llm(model_path):
    m = LLM(model_path, repeat_penalty=1.0)  # penalising the prompt would give SEQ's reply near-ties
    yield m
    m.close()


@pytest.fixture(scope="module")
def client(llm):
    return OpenAICompatibleClient(llm=llm, temperature=0, max_tokens=12)


# -- import ------------------------------------------------------------------------------------
def test_import_without_langchain():
    code = ("import sys; sys.modules['langchain_core'] = None\n"
            "import cyllama.integrations as I\n"
            "assert I.OpenAICompatibleClient.__name__ == 'OpenAICompatibleClient'\n"
            "try:\n    I.ChatCyllama\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTERROR" in proc.stdout and "langchain" in proc.stdout


# -- OpenAI-compatible client ---------------------------------------------------------------------
def test_openai_chat(client, llm):
    r = client.chat.completions.create(messages=MSGS)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert isinstance(r.created, int) and r.model == llm.model_path.name
    ch = r.choices[0]
    assert ch.index == 0 and ch.message.role == "assistant"
    assert ch.message.content and ch.finish_reason in ("stop", "length")
    u = r.usage
    prompt = llm.tokenize(llm.format_chat(MSGS), add_bos=llm.vocab.add_bos)
    assert u.prompt_tokens == len(prompt)
    assert 0 < u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert abs(len(llm.tokenize(ch.message.content, add_bos=False)) - u.completion_tokens) <= 2
    d = r.model_dump()
    assert d["choices"][0]["message"]["content"] == ch.message.content and d["usage"]["total_tokens"] == u.total_tokens
    assert json.loads(r.to_json())["object"] == "chat.completion"


def test_openai_chat_stream(client):
    full = client.chat.completions.create(messages=SEQ_MSGS).choices[0]
    chunks = list(client.chat.completions.create(messages=SEQ_MSGS, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.message.content
    last = chunks[-2].choices[0]
    assert last.finish_reason == full.finish_reason and all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_openai_options_and_errors(client):
    with pytest.raises(TypeError, match="'bogus'.*'other'"):
        client.chat.completions.create(messages=MSGS, bogus=1, other=2)
    with pytest.raises(ValueError):
        client.chat.completions.create(messages=MSGS, temperature=-1)
    with pytest.raises(ValueError):
        client.chat.completions.create(messages=[])
    r = client.chat.completions.create(messages=SEQ_MSGS, max_tokens=3, user="x", top_k=1, n=2)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == r.choices[1].message.content
    r = client.chat.completions.create(messages=MSGS, logprobs=True, top_logprobs=2, max_tokens=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == 3 and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in lp)
    assert "".join(e.token for e in lp) == r.choices[0].message.content


def test_openai_structured(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"]}
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "Is Paris in France?"}], max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(r.choices[0].message.content)["answer"] in ("yes", "no")
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = client.chat.completions.create(messages=[{"role": "user", "content": "What's the weather in Paris?"}],
                                       tools=tools, max_tokens=30,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_openai_completions(client):
    # 4 tokens: the greedy continuation's top-two logit margins are > 1.1 there (0.26 at the 6th)
    r = client.completions.create(prompt="The capital of France is", max_tokens=4)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    c = r.choices[0]
    assert c.text and c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(client.llm.tokenize("The capital of France is"))
    assert 0 < r.usage.completion_tokens <= 4
    streamed = "".join(ch.choices[0].text for ch in
                       client.completions.create(prompt="The capital of France is", max_tokens=4, stream=True))
    assert streamed == c.text
    r2 = client.completions.create(prompt=["The capital of France is", "One, two,"], max_tokens=4, echo=True)
    assert [x.index for x in r2.choices] == [0, 1]
    assert r2.choices[0].text.startswith("The capital of France is")


def test_openai_embeddings(client, llm):
    e = client.embeddings.create(input=["hello world", "goodbye"])
    assert e.object == "list" and len(e.data) == 2 and e.data[1].index == 1
    n = llm.model.n_embd
    assert len(e.data[0].embedding) == n
    assert abs(np.linalg.norm(e.data[0].embedding) - 1) < 1e-3
    assert e.usage.prompt_tokens == len(llm.tokenize("hello world")) + len(llm.tokenize("goodbye"))
    b = client.embeddings.create(input="hello world", encoding_format="base64", dimensions=64)
    vec = np.frombuffer(base64.b64decode(b.data[0].embedding), dtype="<f4")
    assert vec.shape == (64,) and abs(np.linalg.norm(vec) - 1) < 1e-3
    ids = client.embeddings.create(input=[llm.tokenize("hello world")])  # token ids, as OpenAI takes them
    assert np.allclose(ids.data[0].embedding, e.data[0].embedding, atol=1e-4)
    with pytest.raises(ValueError):
        client.embeddings.create(input=[10**9])


def test_openai_client_owns_model(model_path):
    with OpenAICompatibleClient(model_path, temperature=0, max_tokens=2) as c:
        assert c.completions.create(prompt="Hi").choices[0].text is not None
        llm = c.llm
    assert llm.model.closed


# -- LangChain ------------------------------------------------------------------------------------
lc = pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from cyllama.integrations import ChatCyllama, CyllamaEmbeddings, CyllamaLLM  # noqa: E402


class TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city name")


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def lc_llm(llm):
    m = CyllamaLLM(client=llm, temperature=0, max_tokens=12, repeat_penalty=1.0)
    yield m
    m.close()


@pytest.fixture(scope="module")
def chat(llm):
    return ChatCyllama(client=llm, temperature=0, max_tokens=16, repeat_penalty=1.0)


def test_langchain_llm_chain(lc_llm):
    assert lc_llm._llm_type == "cyllama" and lc_llm._identifying_params["temperature"] == 0
    chain = PromptTemplate.from_template("Count: {n}, 2, 3,") | lc_llm | StrOutputParser()
    text = chain.invoke({"n": 1})
    assert text.strip()
    counter = TokenCounter()
    pieces = list(chain.stream({"n": 1}, config={"callbacks": [counter]}))
    assert "".join(pieces) == text
    assert len(counter.tokens) >= 2 and "".join(counter.tokens) == text


def test_langchain_llm_streaming_callbacks(llm):
    counter = TokenCounter()
    m = CyllamaLLM(client=llm, temperature=0, max_tokens=8, streaming=True, callbacks=[counter])
    text = m.invoke("The capital of France is")
    assert text and len(counter.tokens) >= 2 and "".join(counter.tokens) == text


def test_langchain_llm_batch_uses_engine(lc_llm):
    prompts = ["Count: 1, 2, 3,", "100, 200, 300,", "11, 12, 13, 14,"]  # no near-ties in 12 tokens
    batched = lc_llm.batch(prompts)
    assert lc_llm._engine is not None  # went through the batching engine
    assert batched == [lc_llm.invoke(p) for p in prompts]
    assert asyncio.run(lc_llm.abatch(prompts)) == batched
    res = lc_llm.generate(prompts[:2])
    assert res.llm_output["token_usage"]["completion_tokens"] > 0
    assert res.generations[0][0].generation_info["finish_reason"] in ("stop", "length")


def test_langchain_llm_stop(lc_llm, llm):
    prompt = "Count: 1, 2, 3,"
    assert "," in lc_llm.invoke(prompt)  # the greedy answer goes on counting
    assert "," not in lc_llm.invoke(prompt, stop=[","])
    m = CyllamaLLM(client=llm, temperature=0, max_tokens=12, stop=[","])
    assert "," not in m.invoke(prompt)
    assert "," not in "".join(m.stream(prompt))


def test_langchain_chat_chain_and_stream(chat):
    chain = ChatPromptTemplate.from_messages([("system", "You are concise."), ("human", "What is {x}?")]) \
        | chat | StrOutputParser()
    assert chain.invoke({"x": "the capital of France"}).strip()
    msgs = [HumanMessage(SEQ)]
    full = chat.invoke(msgs)
    assert isinstance(full, AIMessage) and full.content
    assert full.usage_metadata["output_tokens"] > 0
    chunks = list(chat.stream(msgs))
    assert all(isinstance(c, AIMessageChunk) for c in chunks) and len(chunks) >= 3
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.content == full.content
    assert merged.usage_metadata == full.usage_metadata
    assert merged.response_metadata["finish_reason"] == full.response_metadata["finish_reason"]


def test_langchain_bind_tools_forced(chat):
    bound = chat.bind_tools([GetWeather], tool_choice="GetWeather", max_tokens=40)
    msg = bound.invoke("What's the weather in Paris?")
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] == "GetWeather" and call["type"] == "tool_call" and call["id"]
    assert GetWeather(**call["args"]).city
    merged = None
    for c in bound.stream("What's the weather in Paris?"):
        merged = c if merged is None else merged + c
    assert merged.tool_calls[0]["args"] == call["args"]
    with pytest.raises(ValueError):
        chat.bind_tools([GetWeather], tool_choice="NoSuchTool")


def test_langchain_structured_output(llm):
    chat = ChatCyllama(client=llm, temperature=0, max_tokens=48)
    out = chat.with_structured_output(Person).invoke("John is 25 years old. Extract the person.")
    assert isinstance(out, Person) and isinstance(out.age, int)
    raw = chat.with_structured_output(Person, method="function_calling", include_raw=True) \
        .invoke("John is 25 years old. Extract the person.")
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Person)
    as_dict = chat.with_structured_output(Person.model_json_schema()).invoke("John is 25. Extract the person.")
    assert set(as_dict) >= {"name", "age"}


def test_langchain_embeddings(llm):
    emb = CyllamaEmbeddings(client=llm)
    docs = emb.embed_documents(["hello world", "goodbye", "cats"])
    assert len(docs) == 3 and all(len(v) == llm.model.n_embd for v in docs)
    q = emb.embed_query("hello world")
    assert np.allclose(q, docs[0], atol=1e-5)
    assert emb.embed_documents([]) == []


def test_langchain_validation(model_path):
    with pytest.raises(ValueError):
        CyllamaLLM()
    with pytest.raises(ValueError):
        CyllamaLLM(model_path=str(model_path), temperature=-1)
    with pytest.raises(TypeError, match="bogus"):
        ChatCyllama(model_path=str(model_path), model_kwargs={"bogus": 1})
