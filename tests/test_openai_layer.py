"""One behaviour suite for every OpenAI entry point: the server (through the ``openai`` package)
and the in-process client run the same checks, since both go through the one OpenAI layer.
LangChain's chat model runs on the same layer and is checked at the end."""

from __future__ import annotations

import json

import pytest
import requests

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from cyllama import LLM  # noqa: E402
from cyllama.integrations import OpenAICompatibleClient  # noqa: E402
from cyllama.llama.server.embedded import EmbeddedServer  # noqa: E402

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
# tests that compare greedy text across runs (n choices decoded in one batch, a stream and a second
# request on a cached prefix) ask for this: its greedy reply has every top-two logit margin > 1.4
# over 24 tokens, so rounding between batch shapes cannot flip a token
SEQ = [{"role": "user", "content": "Continue the sequence: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"}]


@pytest.fixture(scope="module")
def server(model_path):
    s = EmbeddedServer(model_path, port=0, n_ctx=1024, n_parallel=4, cors_origins=["http://example.test"])
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_llm(model_path):
    with LLM(model_path, n_ctx=1024, repeat_penalty=1.0) as m:  # the server's default: both give the same text
        yield m


@pytest.fixture(scope="module", params=["server", "client"])
def api(request, server, shared_llm):
    if request.param == "server":
        c = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
        c.kind = "server"
        c.model_id = server.service.model_id
        return c
    c = OpenAICompatibleClient(llm=shared_llm, temperature=0.8, max_tokens=64)
    c.kind = "client"
    c.model_id = c.model
    return c


def bad_request(api):
    """The exception a rejected request raises at this entry point."""
    return openai.BadRequestError if api.kind == "server" else (ValueError, TypeError)


EXTRAS = {"top_k", "min_p", "grammar", "repeat_penalty", "bogus_field", "json_schema"}


def chat(api, **kw):
    """A chat request; llama.cpp's extras go in ``extra_body`` for the ``openai`` package."""
    kw.setdefault("messages", MSGS)
    kw.setdefault("model", api.model_id)
    extra = {k: kw.pop(k) for k in list(kw) if k in EXTRAS}
    if extra:
        kw["extra_body"] = extra
    return api.chat.completions.create(**kw)


# -- every feature, every entry point ---------------------------------------------------------------
def test_n_choices_share_the_prompt(api) -> None:
    r = chat(api, messages=SEQ, n=3, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = {c.message.content for c in r.choices}
    assert len(texts) == 1 and texts.pop()  # greedy: all the same
    assert r.usage.completion_tokens == sum(1 for _ in r.choices) * (r.usage.completion_tokens // 3)


def test_n_with_seed_gives_distinct_reproducible_choices(api) -> None:
    a = chat(api, n=3, max_tokens=12, temperature=1.5, seed=7, top_k=0, top_p=1.0, min_p=0.0)
    b = chat(api, n=3, max_tokens=12, temperature=1.5, seed=7, top_k=0, top_p=1.0, min_p=0.0)
    ta, tb = [c.message.content for c in a.choices], [c.message.content for c in b.choices]
    assert ta == tb  # the seed makes each choice's stream reproducible
    assert len(set(ta)) > 1  # ... and each choice has its own stream


def test_response_format_json_schema_strict(api) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    r = chat(api, max_tokens=60, temperature=0,
             response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema,
                                                                     "strict": True}})
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"city", "country"}


def test_stream_include_usage_and_max_completion_tokens(api) -> None:
    chunks = list(chat(api, messages=SEQ, stream=True, max_completion_tokens=5, temperature=0,
                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    full = chat(api, messages=SEQ, max_completion_tokens=5, temperature=0).choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full


def test_logprobs(api) -> None:
    r = chat(api, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == 4 and "".join(e.token for e in lp) == r.choices[0].message.content
    for e in lp:  # greedy: the chosen token is the most likely one
        assert len(e.top_logprobs) == 3 and e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-4)


def test_stop_and_logit_bias(api) -> None:
    base = chat(api, messages=SEQ, max_tokens=12, temperature=0).choices[0].message.content
    words = base.split()
    assert len(words) >= 3
    r = chat(api, messages=SEQ, max_tokens=12, temperature=0, stop=[words[2]])
    assert r.choices[0].finish_reason == "stop" and words[2] not in r.choices[0].message.content
    first = base.split()[0]
    tok = requests.post(api_base_of(api) + "/tokenize", json={"content": first}).json()["tokens"][0] \
        if api.kind == "server" else api.llm.tokenize(first, add_bos=False)[0]
    banned = chat(api, messages=SEQ, max_tokens=4, temperature=0,
                  logit_bias={str(tok): -100}).choices[0].message.content
    assert not banned.startswith(first)


def api_base_of(api) -> str:
    return str(api.base_url).rstrip("/").removesuffix("/v1")


def test_completions_n_echo_and_usage(api) -> None:
    # both prompts' greedy continuations have top-two logit margins > 2.5, so the two copies of
    # each (decoded in one batch, one of them on a shared prefix) cannot part on rounding
    r = api.completions.create(model=api.model_id, prompt=["1, 2, 3, 4,", "a b c d e f"], n=2, max_tokens=3,
                               temperature=0, echo=True)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text.startswith("1, 2, 3, 4,") and r.choices[2].text.startswith("a b c d e f")
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    assert r.usage.completion_tokens == 12


def test_embeddings_base64_and_dimensions(api) -> None:
    import base64

    import numpy as np

    e = api.embeddings.create(model=api.model_id, input=["hello", "world"], encoding_format="float")
    full = np.asarray(e.data[0].embedding)
    assert abs(np.linalg.norm(full) - 1) < 1e-3
    if api.kind == "server":  # the openai package decodes base64 itself; look at the wire format
        raw = requests.post(api_base_of(api) + "/v1/embeddings",
                            json={"input": "hello", "encoding_format": "base64", "dimensions": 32}).json()
        vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    else:
        b = api.embeddings.create(input="hello", encoding_format="base64", dimensions=32)
        vec = np.frombuffer(base64.b64decode(b.data[0].embedding), dtype="<f4")
    assert vec.shape == (32,) and abs(np.linalg.norm(vec) - 1) < 1e-3
    want = full[:32] / np.linalg.norm(full[:32])
    assert np.allclose(vec, want, atol=1e-4)  # Matryoshka: truncate, then re-normalize


def test_tools_required_gives_a_call(api) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = chat(api, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools,
             tool_choice="required", max_tokens=40, temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.tool_calls[0].function.name == "get_weather"
    assert isinstance(json.loads(ch.message.tool_calls[0].function.arguments)["city"], str)
    # the agent's next turn: an assistant message with content None and tool_calls, then the result
    follow = chat(api, max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [tc.model_dump() for tc in ch.message.tool_calls]},
        {"role": "tool", "tool_call_id": ch.message.tool_calls[0].id, "content": "sunny, 21 C"}])
    assert follow.choices[0].message.content


@pytest.mark.parametrize("kw, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ({"bogus_field": 1}, "bogus_field"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"grammar": "root ::= [unclosed"}, "grammar"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"messages": []}, "messages"),
])
def test_invalid_requests_name_the_field(api, kw, param) -> None:
    if api.kind == "server":
        with pytest.raises(openai.BadRequestError) as ei:
            chat(api, **kw)
        assert ei.value.status_code == 400
        assert param in str(ei.value.body)
    else:
        with pytest.raises((ValueError, TypeError), match=param):
            chat(api, **kw)


# -- server only: routes and HTTP errors in OpenAI's shape ------------------------------------------
def test_model_routes_and_unknown_model(server) -> None:
    base = server.base_url
    mid = server.service.model_id
    assert requests.get(f"{base}/v1/models/{mid}").json()["id"] == mid
    r = requests.get(f"{base}/v1/models/gpt-99")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = requests.post(f"{base}/v1/chat/completions", json={"model": "gpt-99", "messages": MSGS})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_http_errors_have_openai_shape(server) -> None:
    base = server.base_url
    r = requests.get(f"{base}/v1/nope")
    assert r.status_code == 404 and "message" in r.json()["error"]
    r = requests.get(f"{base}/v1/chat/completions")
    assert r.status_code == 405 and "message" in r.json()["error"]
    r = requests.post(f"{base}/v1/chat/completions", data=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_cors_preflight(server) -> None:
    r = requests.options(server.base_url + "/v1/chat/completions",
                         headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
                                  "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://example.test"


def test_cors_is_off_by_default(model_path) -> None:
    with EmbeddedServer(model_path, port=0, n_ctx=256, n_parallel=1) as s:
        r = requests.options(s.base_url + "/v1/chat/completions",
                             headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"})
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


# -- LangChain on the same layer -------------------------------------------------------------------
def test_langchain_stream_usage_and_model_param(shared_llm) -> None:
    pytest.importorskip("langchain_core")
    from cyllama.integrations import ChatCyllama

    m = ChatCyllama(client=shared_llm, temperature=0, max_tokens=6)
    total = None
    for chunk in m.stream("Say hi"):
        total = chunk if total is None else total + chunk
    assert total.usage_metadata and total.usage_metadata["output_tokens"] == 6
    assert m._get_ls_params(model="other")["ls_model_name"] == "other"
    with pytest.raises(ValueError, match="temprature.*did you mean 'temperature'"):
        ChatCyllama(client=shared_llm, temprature=0)
