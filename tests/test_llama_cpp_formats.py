"""The drop-in's chat formats render exactly the prompts llama-cpp-python renders.

llama-cpp-python's own ``llama_chat_format`` module is run from its sdist (the one ``build_lib.py``
downloads) in a subprocess, its ctypes-dependent imports stubbed (its prompt formatters are pure
Python); its prompts for a set of conversations are compared with ours. The function-calling
handlers are compared through a recording stand-in for ``Llama`` (``llama_cpp_recorder.py``): the
prompts they ask it to complete, step by step, for scripted answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cyllama import _assets
from cyllama.llama_cpp import llama_chat_format
from cyllama.llama_cpp._chat_formats import FORMATS

from llama_cpp_recorder import FUNCTIONARY_V2_TEMPLATE, FakeHFTokenizer, RecordingLlama

ROOT = Path(__file__).resolve().parent.parent
ASSET = _assets.ASSETS["llama.cpp-source"]
PREFIX = f"llama_cpp_python-{ASSET.version}/llama_cpp/"

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
CONVERSATIONS = {
    "system_user_assistant_user": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2+2?"}],
    "user_only": [{"role": "user", "content": "Name a colour."}],
    "multi_turn_no_system": [
        {"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"}, {"role": "assistant", "content": "Four"},
        {"role": "user", "content": "Five?"}],
    "markup_and_quotes": [
        {"role": "system", "content": "Rules: <b>bold</b> & 'quotes' \"double\""},
        {"role": "user", "content": "a < b > c & {braces} {system_message}"}],
    "tools_history_and_parts": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
        {"role": "user", "content": [{"type": "text", "text": "parts"}]}, {"role": "bot", "content": "b"},
        {"role": "User", "content": "capital U"}, {"role": "Assistant", "content": "capital A"}],
}
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city"},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": "array", "items": {"type": "integer"}},
        "where": {"$ref": "#/$defs/Place"}}, "required": ["city"],
        "$defs": {"Place": {"type": "object", "properties": {"lat": {"type": "number"}}}}}}}
TOOL2 = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in <Oslo> & Bergen?"}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
ARGS = '{"city": "Oslo"}'
V1_START = "<|START_OF_FUNCTION_CALL|>"
#: (name, handler, request, scripted answers, tokenizer): each is run by llama-cpp-python and by us
HANDLER_CASES = [
    ("chatml_plain", "chatml-function-calling", {"messages": ASK}, ["Sunny."], None),
    ("chatml_history", "chatml-function-calling",
     {"messages": CONVERSATIONS["tools_history_and_parts"][:4] + [{"role": "user", "content": "And Rome?"}],
      "tools": [TOOL]}, ["x"], None),
    ("chatml_none", "chatml-function-calling", {"messages": ASK, "tools": [TOOL], "tool_choice": "none"}, ["x"], None),
    ("chatml_forced", "chatml-function-calling", {"messages": ASK, "tools": [TOOL, TOOL2], "tool_choice": FORCED},
     [ARGS], None),
    ("chatml_legacy", "chatml-function-calling",
     {"messages": ASK, "functions": [TOOL["function"]], "function_call": {"name": "get_weather"}}, [ARGS], None),
    ("chatml_auto_call", "chatml-function-calling", {"messages": ASK, "tools": [TOOL, TOOL2], "tool_choice": "auto"},
     ["functions.get_weather", ARGS, ""], None),
    ("chatml_auto_message", "chatml-function-calling",
     {"messages": ASK, "tools": [TOOL, TOOL2], "tool_choice": "auto"}, ["message", "It is sunny."], None),
    ("functionary_plain", "functionary", {"messages": CONVERSATIONS["system_user_assistant_user"]}, ["Four."], None),
    ("functionary_history", "functionary",
     {"messages": CONVERSATIONS["tools_history_and_parts"][:4] + [
         {"role": "function", "name": "get_weather", "content": "5 C"},
         {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": ARGS}},
         {"role": "assistant", "content": "Text", "function_call": {"name": "add", "arguments": "{}"}},
         {"role": "user", "content": "ok?"}]}, ["ok"], None),
    ("functionary_forced", "functionary", {"messages": ASK, "tools": [TOOL, TOOL2], "tool_choice": FORCED}, [ARGS],
     None),
    ("functionary_auto_call", "functionary", {"messages": ASK, "tools": [TOOL, TOOL2]},
     [" to=functions.get_weather:", ARGS], None),
    ("functionary_functions", "functionary",
     {"messages": ASK, "functions": [TOOL2["function"]], "function_call": {"name": "add"}}, ['{"a": 1, "b": 2}'],
     None),
    ("v2_plain", "functionary-v2", {"messages": CONVERSATIONS["system_user_assistant_user"]}, [" Four."], "v2"),
    ("v2_none", "functionary-v2", {"messages": ASK, "tools": [TOOL], "tool_choice": "none"}, ["x"], "v2"),
    ("v2_forced", "functionary-v2", {"messages": ASK, "tools": [TOOL, TOOL2], "tool_choice": FORCED}, [ARGS], "v2"),
    ("v2_auto_call", "functionary-v2", {"messages": ASK, "tools": [TOOL, TOOL2]}, ["get_weather", ARGS, ""], "v2"),
    ("v2_functions", "functionary-v2",
     {"messages": CONVERSATIONS["multi_turn_no_system"], "functions": [TOOL2["function"]],
      "function_call": {"name": "add"}}, ['{"a": 1, "b": 2}'], "v2"),
    ("v1_plain", "functionary-v1", {"messages": CONVERSATIONS["user_only"]}, ["Red."], "v1"),
    ("v1_forced", "functionary-v1", {"messages": ASK, "tools": [TOOL], "tool_choice": FORCED}, [ARGS], "v1"),
    ("v1_auto_call", "functionary-v1", {"messages": ASK, "tools": [TOOL, TOOL2]},
     [f"{V1_START}get_weather:", ARGS], "v1"),
]

UPSTREAM_SCRIPT = textwrap.dedent('''
    import json, logging, sys, tarfile, types
    tar_path, prefix, cases_path, out_path = sys.argv[1:5]
    with tarfile.open(tar_path) as tf:
        def source(name):
            return tf.extractfile(prefix + name).read().decode("utf-8")
        texts = {n: source(n + ".py") for n in ("llama_types", "_utils", "llama_chat_format")}

    def module(name, text=None, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        if text is not None:
            exec(compile(text, name, "exec"), m.__dict__)
        return m

    pkg = module("llama_cpp", __path__=[])
    module("llama_cpp.llama_cpp")
    module("llama_cpp.llama")
    module("llama_cpp._logger", logger=logging.getLogger("upstream"))

    class Grammar:
        @classmethod
        def from_string(cls, text, verbose=True):
            return cls()
        @classmethod
        def from_json_schema(cls, schema, verbose=True):
            return cls()

    module("llama_cpp.llama_grammar", LlamaGrammar=Grammar, JSON_GBNF="json",
           json_schema_to_gbnf=lambda schema: "schema")
    module("transformers", AutoTokenizer=object)
    module("llama_cpp.llama_types", texts["llama_types"], __package__="llama_cpp")
    module("llama_cpp._utils", texts["_utils"], __package__="llama_cpp")
    lcf = module("llama_cpp.llama_chat_format", texts["llama_chat_format"], __package__="llama_cpp")
    from llama_cpp_recorder import FakeHFTokenizer, RecordingLlama, FUNCTIONARY_V2_TEMPLATE

    cases = json.load(open(cases_path))
    out = {"formats": {}, "handlers": {}}
    registry = lcf.LlamaChatCompletionHandlerRegistry()
    out["registered"] = list(registry._chat_handlers)
    for fname in cases["formats"]:
        f = getattr(lcf, fname)
        out["formats"][fname] = {c: (lambda r: [r.prompt, r.stop, r.added_special])(f(messages=json.loads(json.dumps(m))))
                                 for c, m in cases["conversations"].items()}
    for name, handler, request, replies, tok in cases["handlers"]:
        hf = None if tok is None else FakeHFTokenizer(FUNCTIONARY_V2_TEMPLATE,
                                                      ["<|START_OF_FUNCTION_CALL|>"] if tok == "v1" else [])
        llama = RecordingLlama(replies, hf)
        registry.get_chat_completion_handler_by_name(handler)(llama=llama, **request)
        out["handlers"][name] = llama.prompts
    json.dump(out, open(out_path, "w"))
''')


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tar = _assets.cache_dir() / "downloads" / ASSET.filename
    if not tar.exists():
        pytest.skip(f"{ASSET.filename} is not downloaded yet (python build_lib.py fetches it)")
    d = tmp_path_factory.mktemp("upstream_formats")
    cases = {"formats": sorted({f.__name__ for f in FORMATS.values()}), "conversations": CONVERSATIONS,
             "handlers": HANDLER_CASES}
    (d / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    (d / "run.py").write_text(UPSTREAM_SCRIPT, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, str(d / "run.py"), str(tar), PREFIX, str(d / "cases.json"),
                           str(d / "out.json")], cwd=d, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((d / "out.json").read_text(encoding="utf-8"))


def test_every_format_and_handler_llama_cpp_python_registers_is_registered(upstream: dict) -> None:
    assert len(upstream["registered"]) == 27
    ours = llama_chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers
    assert set(upstream["registered"]) <= set(ours)
    assert set(FORMATS) | {"functionary", "functionary-v1", "functionary-v2", "chatml-function-calling"} == set(
        upstream["registered"])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_renders_llama_cpp_pythons_prompt(upstream: dict, name: str) -> None:
    f = FORMATS[name]
    assert getattr(llama_chat_format, f.__name__) is f
    for conv, messages in CONVERSATIONS.items():
        r = f(messages=json.loads(json.dumps(messages)))
        assert [r.prompt, r.stop, r.added_special] == upstream["formats"][f.__name__][conv], (name, conv)


@pytest.mark.parametrize("case", HANDLER_CASES, ids=[c[0] for c in HANDLER_CASES])
def test_function_calling_handler_prompts(upstream: dict, case: tuple) -> None:
    name, handler, request, replies, tok = case
    hf = None if tok is None else FakeHFTokenizer(FUNCTIONARY_V2_TEMPLATE, [V1_START] if tok == "v1" else [])
    llama = RecordingLlama(replies, hf)
    request = json.loads(json.dumps(request))
    before = json.dumps(request)
    out = llama_chat_format.get_chat_completion_handler(handler)(llama=llama, **request)
    assert json.dumps(request) == before  # the caller's messages are left alone
    assert llama.prompts == upstream["handlers"][name]
    message = out["choices"][0]["message"]
    if "call" in name or "forced" in name or "legacy" in name or "functions" in name:
        calls = message.get("tool_calls") or [{"function": message["function_call"]}]
        assert out["choices"][0]["finish_reason"] == "tool_calls" and message["content"] is None
        assert json.loads(calls[0]["function"]["arguments"]) and calls[0]["function"]["name"] in ("get_weather", "add")
    else:
        assert message["content"] and not message.get("tool_calls")


def test_bad_messages_are_value_errors() -> None:
    for f in FORMATS.values():
        with pytest.raises(ValueError):
            f(messages=[{"content": "no role"}])
        with pytest.raises(ValueError):
            f(messages="hello")
    for handler in ("chatml-function-calling", "functionary"):
        with pytest.raises(ValueError, match="not found"):
            llama_chat_format.get_chat_completion_handler(handler)(
                llama=RecordingLlama([]), messages=ASK, tools=[TOOL], tool_choice={"type": "function",
                                                                                 "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="lacks"):
        llama_chat_format.get_chat_completion_handler("chatml-function-calling")(
            llama=RecordingLlama([]), messages=[{"role": "user"}])


def test_hf_autotokenizer_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed: a clear ImportError
    with pytest.raises(ImportError, match="pip install transformers"):
        llama_chat_format.hf_autotokenizer_to_chat_formatter("org/model")

    class AutoTokenizer(FakeHFTokenizer):
        eos_token = "</s>"

        @classmethod
        def from_pretrained(cls, name: str) -> "AutoTokenizer":
            assert name == "org/model"
            return cls(FUNCTIONARY_V2_TEMPLATE)

    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(AutoTokenizer=AutoTokenizer))
    f = llama_chat_format.hf_autotokenizer_to_chat_formatter("org/model")
    r = f(messages=CONVERSATIONS["user_only"])
    assert r.prompt == "<|from|>user\n<|recipient|>all\n<|content|>Name a colour.\n"
    assert r.stop == "</s>" and r.added_special


# -- on the real model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(model_path: Path):
    from cyllama.llama_cpp import Llama

    m = Llama(str(model_path), n_ctx=1024, n_threads=2, verbose=False)
    yield m
    m.close()


def test_functionary_v2_renders_the_models_own_template_without_transformers(llm) -> None:
    from cyllama.llama_cpp._function_calling import _functionary_template, functionary_v1_v2_prompt

    version, render = _functionary_template(llm)  # SmolLM2's GGUF template, no hf_tokenizer
    hf = FakeHFTokenizer(llm.metadata["tokenizer.chat_template"])
    msgs = CONVERSATIONS["system_user_assistant_user"]
    assert version == "v2"
    assert functionary_v1_v2_prompt(render, "v2", msgs, [TOOL["function"]], [TOOL]) == functionary_v1_v2_prompt(
        lambda m: hf.apply_chat_template(m), "v2", msgs, [TOOL["function"]], [TOOL])


# bounded arguments, so that a small model's answers stay short
SMALL = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
    "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "maximum": 99, "minimum": 0},
                                         "b": {"type": "integer", "maximum": 99, "minimum": 0}},
        "required": ["a", "b"], "additionalProperties": False}}}]


@pytest.mark.parametrize("handler", ["chatml-function-calling", "functionary", "functionary-v2"])
def test_function_calling_handlers_generate_calls(llm, handler: str) -> None:
    h = llama_chat_format.get_chat_completion_handler(handler)
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    for choice in (FORCED, "required") if handler != "functionary" else (FORCED,):
        out = h(llama=llm, messages=ask, tools=SMALL, tool_choice=choice, temperature=0, max_tokens=48)
        ch = out["choices"][0]
        assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None, choice
        for call in ch["message"]["tool_calls"]:
            args = json.loads(call["function"]["arguments"])
            assert call["function"]["name"] in ("get_weather", "add") and call["id"]
            assert {"city"} <= set(args) if call["function"]["name"] == "get_weather" else {"a", "b"} <= set(args)
        chunks = list(h(llama=llm, messages=ask, tools=SMALL, tool_choice=choice, temperature=0,
                        max_tokens=48, stream=True))
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        streamed = "".join(d["function"]["arguments"] for c in chunks
                           for d in c["choices"][0]["delta"].get("tool_calls") or [])
        assert streamed == "".join(c["function"]["arguments"] for c in ch["message"]["tool_calls"])
    out = h(llama=llm, messages=ask, tools=SMALL, tool_choice="none", temperature=0, max_tokens=8)
    assert isinstance(out["choices"][0]["message"]["content"], str) and not out["choices"][0]["message"].get(
        "tool_calls")
    out = h(llama=llm, messages=ask, tools=SMALL, temperature=0, max_tokens=24)  # auto: a call or an answer
    msg = out["choices"][0]["message"]
    assert (msg.get("tool_calls") and out["choices"][0]["finish_reason"] == "tool_calls") or isinstance(
        msg["content"], str)
