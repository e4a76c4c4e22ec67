"""Tool calling in the high-level API: ``LLM.chat`` / ``chat_stream`` / ``cyllama.chat`` with
``tools=`` on the real default model (SmolLM2-135M: its template has no tool syntax, so the tools
are described in the system message and calls come in the generic JSON form). Forced calls are
checked against their tool's JSON schema, "auto" answers for call markup in the content, and the
whole loop (call, result, answer) runs through ``reply.message``."""

from __future__ import annotations

import json
import pickle
import re

import pytest

import cyllama
from cyllama import LLM, ChatReply, ChatStream, GenerationChunk
from cyllama._chat import read_tool_calls
from cyllama._tools import ToolCallStream, tool_format_for

jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]
# what starts a call in the generic form: a JSON call at the start, one in a code block, a <tool_call> tag
MARKUP = re.compile(r'^\s*\[?\s*\{\s*"name"|```\w*\s*\[?\s*\{\s*"name"|<tool_call>')


@pytest.fixture(scope="module")
def llm(model_path):
    # repeat_penalty 1: the tool descriptions in the prompt would otherwise penalise writing JSON
    with LLM(model_path, n_ctx=2048, temperature=0, max_tokens=60, repeat_penalty=1.0) as m:
        yield m


def check_calls(calls, names=SCHEMAS) -> None:
    """Each call is OpenAI-shaped, names one of ``names`` and has arguments valid for its schema."""
    assert calls
    ids = [c["id"] for c in calls]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids)
    for c in calls:
        assert set(c) == {"id", "type", "function"} and c["type"] == "function"
        assert set(c["function"]) == {"name", "arguments"} and c["function"]["name"] in names
        assert isinstance(c["function"]["arguments"], str)
        jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[c["function"]["name"]])


FORCED = [("required", set(SCHEMAS)), ({"type": "function", "function": {"name": "add"}}, {"add"})]


@pytest.mark.parametrize("choice, names", FORCED, ids=["required", "named"])
def test_forced_choice_gives_calls_valid_for_the_schema(llm, choice, names) -> None:
    r = llm.chat(ASK, tools=TOOLS, tool_choice=choice)
    assert isinstance(r, ChatReply) and isinstance(r, str)
    assert r == "" and r.content is None and r.finish_reason == "tool_calls"
    check_calls(r.tool_calls, names)
    assert r.message == {"role": "assistant", "content": None, "tool_calls": r.tool_calls}


@pytest.mark.parametrize("choice, names", FORCED, ids=["required", "named"])
def test_forced_choice_streamed_keeps_markup_out_and_calls_on_the_last_chunk(llm, choice, names) -> None:
    chunks = list(llm.chat_stream(ASK, tools=TOOLS, tool_choice=choice))
    assert all(isinstance(c, GenerationChunk) for c in chunks) and len(chunks) > 1
    assert "".join(c.text for c in chunks) == ""  # the call's JSON is never content
    *body, last = chunks
    assert all(c.tool_calls is None and c.finish_reason is None for c in body)
    assert last.finish_reason == "tool_calls"
    check_calls(last.tool_calls, names)
    # chat(stream=True): the text pieces (none here), then the whole reply
    s = llm.chat(ASK, tools=TOOLS, tool_choice=choice, stream=True)
    assert isinstance(s, ChatStream) and s.reply is None
    assert list(s) == []
    assert s.reply is not None and s.reply.finish_reason == "tool_calls"
    check_calls(s.reply.tool_calls, names)


def test_parallel_tool_calls_false_gives_one_call(llm) -> None:
    msgs = [{"role": "user", "content": "Weather in Paris and in Rome, please."}]
    r = llm.chat(msgs, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    check_calls(r.tool_calls)
    assert len(r.tool_calls) == 1
    assert "list of such objects" not in llm.format_chat(msgs, tools=TOOLS, parallel_tool_calls=False)
    assert "list of such objects" in llm.format_chat(msgs, tools=TOOLS)


# "auto": prompts the model answers with a call (the first token "{\"" well ahead of the next one) and
# prompts it answers in text, code blocks included
AUTO_PROMPTS = ["Call add with a=2 and b=3.", "get_weather Paris", "Call get_weather for Paris.", "Say hello.",
                "Call get_weather."]


def test_auto_calls_or_answers_and_never_leaks_markup(llm) -> None:
    called = answered = 0
    for prompt in AUTO_PROMPTS:
        msgs = [{"role": "user", "content": prompt}]
        r = llm.chat(msgs, tools=TOOLS, max_tokens=40)  # tool_choice defaults to "auto"
        assert not MARKUP.search(r), (prompt, str(r))
        if r.tool_calls:
            called += 1
            check_calls(r.tool_calls)
            assert r.finish_reason == "tool_calls" and r.content is None
            assert r.message["tool_calls"] == r.tool_calls
        else:
            answered += 1
            assert r and r.finish_reason in ("stop", "length")
            assert r.message == {"role": "assistant", "content": str(r)}
        # streamed: no piece is markup, and the calls come on the last chunk
        chunks = list(llm.chat_stream(msgs, tools=TOOLS, tool_choice="auto", max_tokens=40))
        text = "".join(c.text for c in chunks)
        assert not MARKUP.search(text), (prompt, text)
        if chunks[-1].tool_calls:
            check_calls(chunks[-1].tool_calls)
            assert chunks[-1].finish_reason == "tool_calls" and text == ""
    assert called and answered, (called, answered)


def test_auto_content_streams_in_pieces(llm) -> None:
    s = llm.chat([{"role": "user", "content": "Write two sentences about the sea."}], tools=TOOLS, stream=True,
                 max_tokens=24)
    pieces = list(s)
    assert len(pieces) > 3 and all(p for p in pieces)
    assert s.reply == "".join(pieces) and s.reply.tool_calls == [] and not MARKUP.search(s.reply)


def test_tool_choice_none_offers_no_tools(llm) -> None:
    prompt = llm.format_chat(ASK, tools=TOOLS, tool_choice="none")
    assert "get_weather" not in prompt
    r = llm.chat(ASK, tools=TOOLS, tool_choice="none", max_tokens=16)
    assert r and r.tool_calls == [] and r.finish_reason in ("stop", "length")


def test_full_loop_call_result_answer(llm) -> None:
    msgs = list(ASK)
    call = llm.chat(msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    check_calls(call.tool_calls, {"get_weather"})
    msgs.append(call.message)  # content None + tool_calls
    msgs.append({"role": "tool", "tool_call_id": call.tool_calls[0]["id"],
                 "content": json.dumps({"temperature_c": 21, "sky": "sunny"})})
    # the history renders: the call as the JSON the model was told to write, the result as a tool turn
    prompt = llm.format_chat(msgs, tools=TOOLS)
    args = json.loads(call.tool_calls[0]["function"]["arguments"])
    assert json.dumps({"name": "get_weather", "arguments": args}) in prompt
    assert '"temperature_c": 21' in prompt and "None" not in prompt
    final = llm.chat(msgs, tools=TOOLS, tool_choice="none", max_tokens=30)
    assert final and final.tool_calls == [] and final.finish_reason in ("stop", "length")
    again = llm.chat(msgs, tools=TOOLS, max_tokens=30)  # "auto": an answer or another valid call
    assert again or again.tool_calls
    if again.tool_calls:
        check_calls(again.tool_calls)
    # the same history without tools (the conversation goes on after the tools are dropped)
    plain = llm.format_chat(msgs)
    assert '"name": "get_weather"' in plain and "None" not in plain
    assert llm.chat(msgs, max_tokens=8)


BAD = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "minimum": 5, "maximum": 1}}}}}]},
     "invalid parameters schema"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
    ({"tools": TOOLS, "tool_choice": "nope"}, "'nope'"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "bad name!"),
    ({"tools": [WEATHER, WEATHER]}, "two tools"),
    ({"tools": WEATHER}, "must be a list"),
    ({"tools": [{"type": "retrieval"}]}, "only type 'function'"),
    ({"tools": TOOLS, "tool_choice": "required", "json_schema": {"type": "object"}}, "cannot be combined"),
]


@pytest.mark.parametrize("kw, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_tool_input_raises_value_error_naming_it(llm, kw, words) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        llm.chat(ASK, **kw)
    with pytest.raises(ValueError, match=re.escape(words)):
        llm.chat(ASK, stream=True, **kw)  # at the call, before anything runs
    with pytest.raises(ValueError, match=re.escape(words)):
        llm.chat_stream(ASK, **kw)


def test_bad_messages_and_parallel_flag(llm) -> None:
    with pytest.raises(TypeError, match="parallel_tool_calls"):
        llm.chat(ASK, tools=TOOLS, parallel_tool_calls="yes")
    with pytest.raises(ValueError, match="messages"):
        llm.chat("hello", tools=TOOLS)
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        llm.chat([ASK[0], "hi"], tools=TOOLS)
    assert llm.chat(ASK, max_tokens=4)  # still usable


def test_module_level_chat_with_tools(model_path) -> None:
    r = cyllama.chat(ASK, model_path, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=60)
    assert isinstance(r, ChatReply) and r.finish_reason == "tool_calls"
    check_calls(r.tool_calls)
    s = cyllama.chat(ASK, model_path, stream=True, tools=TOOLS, tool_choice="required", temperature=0,
                     max_tokens=60)
    assert list(s) == [] and s.reply.finish_reason == "tool_calls"
    check_calls(s.reply.tool_calls)
    with pytest.raises(ValueError, match="needs tools"):
        cyllama.chat(ASK, model_path, tool_choice="required")


def test_chat_reply_is_a_str_with_its_message() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    r = ChatReply(None, calls, "tool_calls")
    assert r == "" and r.content is None and r.message["tool_calls"] == calls
    r.message["tool_calls"][0]["function"]["name"] = "changed"  # a copy each time
    assert r.tool_calls[0]["function"]["name"] == "add"
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.tool_calls == calls and back.finish_reason == "tool_calls"
    t = ChatReply("Hello", None, "stop")
    assert t == "Hello" and t + "!" == "Hello!" and json.dumps(t) == '"Hello"' and t.tool_calls == []
    assert t.message == {"role": "assistant", "content": "Hello"}


def test_read_tool_calls_splits_content_from_a_call_as_it_arrives() -> None:
    """The chunk seam: content before a fenced call streams, the call's text never does, and the
    last chunk carries the call and the finish reason."""
    fmt = tool_format_for(None)
    pieces = ["Sure", ", here", " it is:\n", "``", "`json\n{\"na", "me\": \"add\", ", "\"arguments\": {\"a\": 1,",
              " \"b\": 2}}\n", "```"]
    chunks = [GenerationChunk(p, 7) for p in pieces] + [GenerationChunk("", None, None, None, "stop")]
    out = list(read_tool_calls(iter(chunks), ToolCallStream(fmt, ["add", "get_weather"])))
    texts = [c.text for c in out]
    assert "".join(texts) == "Sure, here it is:" and texts[0] == "Sure"
    assert all(c.tool_calls is None for c in out[:-1])
    assert out[-1].finish_reason == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in out[-1].tool_calls] == \
        [("add", {"a": 1, "b": 2})]
    # cut off mid-call (max_tokens): the call is reported, the reason stays "length"
    chunks = [GenerationChunk('{"name": "add", "arguments": {"a": 1', 7, None, None, "length")]
    out = list(read_tool_calls(iter(chunks), ToolCallStream(fmt, ["add"])))
    assert out[-1].finish_reason == "length" and out[-1].tool_calls[0]["function"]["name"] == "add"
    assert out[-1].text == ""
