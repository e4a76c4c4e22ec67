"""cyllama.chat_template: real templates, llama.cpp's built-in formatter as a cross-check, the sandbox.

The upstream templates below are the models' own ``tokenizer.chat_template`` texts. The ones
llama.cpp ships in ``models/templates`` (Qwen2.5, Gemma-2, Phi-3.5, Llama-3.2) are compared with
those files when the llama.cpp asset is available; the others (Meta-Llama-3, Mistral v0.2/v0.3)
are the texts llama.cpp's own ``tests/test-chat-template.cpp`` uses. The expected renderings of the
standard conversation ``CONV`` are the ones llama.cpp's test suite expects from its Jinja engine.
"""

from __future__ import annotations

import copy
import json
import threading
from datetime import datetime

import pytest

from cyllama import _assets
from cyllama import chat_template as ct
from cyllama._generation import apply_chat_template as llama_cpp_apply
from cyllama.chat_template import (
    KNOWN_TEMPLATES,
    MAX_RANGE,
    ChatTemplate,
    ChatTemplateError,
    detect_format,
    get_template,
)

# llama.cpp's test conversation (tests/test-chat-template.cpp), whitespace in the last answer included.
CONV = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]
NO_SYS = CONV[1:]

# --- upstream templates, verbatim ---------------------------------------------------------------
# meta-llama/Meta-Llama-3-8B-Instruct (current tokenizer_config.json, with the generation-prompt switch).
LLAMA3_8B = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>'"
    " + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 =="
    " 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# mistralai/Mistral-7B-Instruct-v0.2 as first published (no system role).
MISTRAL_V02_ORIGINAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] =="
    " 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles"
    " are supported!') }}{% endif %}{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.2, current ("v1" tokenization, optional system message).
MISTRAL_V02 = (
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate"
    " user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception"
    " of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"
)

# mistralai/Mistral-7B-Instruct-v0.3 ("v3": tools, system message in the last user turn).
MISTRAL_V03 = r'''{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
'''

# Qwen/Qwen2.5-7B-Instruct (llama.cpp: models/templates/Qwen-Qwen2.5-7B-Instruct.jinja).
QWEN25 = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
'''

# google/gemma-2-2b-it (models/templates/google-gemma-2-2b-it.jinja): raises on a system message.
GEMMA2 = r'''{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}'''

# microsoft/Phi-3.5-mini-instruct (models/templates/microsoft-Phi-3.5-mini-instruct.jinja).
PHI35 = r'''{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}'''

# meta-llama/Llama-3.2-3B-Instruct (models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja): strftime_now, tools.
LLAMA32 = r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
'''

TEMPLATE_FILES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": QWEN25,
    "google-gemma-2-2b-it.jinja": GEMMA2,
    "microsoft-Phi-3.5-mini-instruct.jinja": PHI35,
    "meta-llama-Llama-3.2-3B-Instruct.jinja": LLAMA32,
}

# The GGUF stores real newlines inside the Jinja string literals.
SMOLLM2_SOURCE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou"
    " are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' +"
    " message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

# What llama.cpp's test suite expects for CONV (ChatML, Llama 3 with bos_token "", Mistral v1/v3).
CHATML_CONV = (
    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
    "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
    "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLAMA3_CONV = (
    "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user"
    "<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    "\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
MISTRAL_V1_CONV = (
    " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an"
    " assistant   </s> [INST] Another question [/INST]"
)
MISTRAL_V3_CONV = (
    "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>[INST] You are a helpful"
    " assistant\n\nAnother question[/INST]"
)
GEMMA_NO_SYS = (
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\n"
    "Who are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\n"
    "Another question<end_of_turn>\n<start_of_turn>model\n"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle d'une ville",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _tool_conv(arguments) -> list[dict]:
    return [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21}'},
    ]


# --- the fixtures are the real texts ----------------------------------------------------------------
def _llama_cpp_templates_dir():
    try:
        path = _assets.fetch("llama.cpp-source") / "templates"
    except Exception as exc:  # offline and not cached
        pytest.skip(f"llama.cpp's models/ folder is not available: {exc}")
    if not path.is_dir():
        pytest.skip("llama.cpp's models/templates is not available")
    return path


@pytest.mark.parametrize("filename", sorted(TEMPLATE_FILES))
def test_fixtures_match_llama_cpp_copies(filename: str) -> None:
    path = _llama_cpp_templates_dir() / filename
    assert TEMPLATE_FILES[filename] == path.read_text(encoding="utf-8")


def test_known_templates_are_the_upstream_texts() -> None:
    assert KNOWN_TEMPLATES["llama-3"] == LLAMA3_8B
    assert KNOWN_TEMPLATES["mistral-instruct"] == MISTRAL_V02
    assert KNOWN_TEMPLATES["phi-3"] == PHI35
    # teknium/OpenHermes-2.5-Mistral-7B's ChatML template.
    assert KNOWN_TEMPLATES["chatml"] == (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
        " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


# --- SmolLM2's own template --------------------------------------------------------------------------
def test_smollm2_template_from_model(model) -> None:
    assert model.chat_template() == SMOLLM2_SOURCE
    tmpl = ChatTemplate.from_model(model)
    assert tmpl.source == SMOLLM2_SOURCE
    assert (tmpl.bos_token, tmpl.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tmpl.add_bos is False and tmpl.format == "chatml"
    assert "Smollm2" in repr(tmpl)


def test_smollm2_default_system_prompt(model) -> None:
    tmpl = ChatTemplate.from_model(model)
    user = [{"role": "user", "content": "What is 2+2?"}]
    assert tmpl.render(user) == (SMOLLM2_DEFAULT_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    assert tmpl.render(user, add_generation_prompt=False) == (SMOLLM2_DEFAULT_SYSTEM
                                                              + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    # An own system message replaces the default one.
    assert tmpl.render(CONV) == CHATML_CONV
    # A conversation that starts with the assistant still gets the default system turn first.
    convo = [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Hi"}]
    assert tmpl.render(convo).startswith(SMOLLM2_DEFAULT_SYSTEM + "<|im_start|>assistant\nHello!<|im_end|>\n")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_matches_llama_cpp(model, add_generation_prompt: bool) -> None:
    tmpl = ChatTemplate.from_model(model)
    # llama.cpp detects the template as ChatML (it contains <|im_start|>) and formats in C.
    c_text = llama_cpp_apply(model, CONV, add_generation_prompt)
    assert tmpl.render(CONV, add_generation_prompt=add_generation_prompt) == c_text
    # Without a system message the C formatter knows nothing of SmolLM2's default system prompt:
    # that is the only difference (a legitimate one: the Jinja template is the model's truth).
    c_text = llama_cpp_apply(model, NO_SYS, add_generation_prompt)
    assert tmpl.render(NO_SYS, add_generation_prompt=add_generation_prompt) == SMOLLM2_DEFAULT_SYSTEM + c_text


# --- cross-check with llama.cpp's built-in C formatter ------------------------------------------------
# (known format, llama.cpp name, eos override, conversation). llama.cpp's C formatter never writes
# BOS (its tokenizer adds it), so the Jinja text is BOS + C text for the templates that write one.
CROSS = [
    ("chatml", "chatml", None, CONV),
    ("qwen", "chatml", None, CONV),  # with a system message; without, Qwen adds its default one
    ("llama-3", "llama3", None, CONV),  # both trim the contents
    ("mistral-instruct", "mistral-v1", None, CONV),
    ("gemma", "gemma", None, CONV),  # both fold the system message into the first user turn
    ("phi-3", "phi3", None, CONV),
    # llama.cpp's "zephyr" is stablelm-2-zephyr, which ends turns with <|endoftext|> (its EOS).
    ("zephyr", "zephyr", "<|endoftext|>", CONV),
    # openchat's template writes "GPT4 Correct System:"; llama.cpp writes the system text bare.
    ("openchat", "openchat", None, NO_SYS),
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("known, c_name, eos, conv", CROSS, ids=[c[0] for c in CROSS])
def test_known_formats_match_llama_cpp(model, known, c_name, eos, conv, add_generation_prompt) -> None:
    tmpl = get_template(known, eos_token=eos)
    text = tmpl.render(conv, add_generation_prompt=add_generation_prompt)
    c_text = llama_cpp_apply(model, conv, add_generation_prompt, template=c_name)
    if known == "phi-3" and not add_generation_prompt:
        c_text += tmpl.eos_token  # Phi-3.5's template ends a prompt without generation header with EOS
    bos = tmpl.bos_token if "bos_token" in tmpl.source else ""
    assert text == bos + c_text


def test_known_format_outputs_equal_llama_cpp_test_suite() -> None:
    assert get_template("chatml").render(CONV) == CHATML_CONV
    assert get_template("llama-3", bos_token="").render(CONV) == LLAMA3_CONV
    assert get_template("mistral-instruct", bos_token="").render(CONV) == MISTRAL_V1_CONV
    assert get_template("llama-3").render(CONV) == "<|begin_of_text|>" + LLAMA3_CONV


@pytest.mark.parametrize("source, c_name, bos", [
    (LLAMA3_8B, "llama3", "<|begin_of_text|>"),
    (MISTRAL_V02, "mistral-v1", "<s>"),
    (PHI35, "phi3", ""),
])
def test_upstream_templates_match_llama_cpp(model, source, c_name, bos) -> None:
    tmpl = ChatTemplate(source, bos_token=bos, eos_token="</s>")
    assert tmpl.render(CONV) == bos + llama_cpp_apply(model, CONV, True, template=c_name)


def test_gemma2_matches_llama_cpp_without_system(model) -> None:
    tmpl = ChatTemplate(GEMMA2, bos_token="<bos>", eos_token="<eos>")
    assert tmpl.render(NO_SYS) == "<bos>" + llama_cpp_apply(model, NO_SYS, True, template="gemma")


def test_mistral_v3_vs_llama_cpp(model) -> None:
    tmpl = ChatTemplate(MISTRAL_V03, bos_token="<s>", eos_token="</s>")
    single = [CONV[0], CONV[1]]
    assert tmpl.render(single) == "<s>" + llama_cpp_apply(model, single, True, template="mistral-v3")
    assert tmpl.render(NO_SYS) == "<s>" + llama_cpp_apply(model, NO_SYS, True, template="mistral-v3")
    # With several turns the real template puts the system message into the *last* user turn,
    # llama.cpp's C version into the first: a known, legitimate difference.
    c_text = llama_cpp_apply(model, CONV, True, template="mistral-v3")
    assert c_text.startswith("[INST] You are a helpful assistant\n\nHello[/INST]")
    assert tmpl.render(CONV, bos_token="") == MISTRAL_V3_CONV


def test_llama2_vs_llama_cpp(model) -> None:
    tmpl = get_template("llama-2")
    single = [CONV[0], CONV[1]]
    assert tmpl.render(single) == "<s>" + llama_cpp_apply(model, single, True, template="llama2-sys")
    # Over several turns Meta's template writes " answer </s>" (spaces around the answer, stripped)
    # where llama.cpp writes "answer</s>"; BOS before each later [INST] matches "llama2-sys-bos".
    conv = CONV[:4]
    text = tmpl.render(conv)
    assert text == ("<s>[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there </s>"
                    "<s>[INST] Who are you [/INST]")
    c_text = llama_cpp_apply(model, conv, True, template="llama2-sys-bos")
    assert "<s>" + c_text == text.replace("[/INST] ", "[/INST]").replace(" </s>", "</s>")


# --- exact renderings of upstream templates -------------------------------------------------------------
def test_llama3_8b() -> None:
    tmpl = ChatTemplate(LLAMA3_8B, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert tmpl.render(CONV) == "<|begin_of_text|>" + LLAMA3_CONV
    assert tmpl.render(CONV, add_generation_prompt=False) == (
        "<|begin_of_text|>" + LLAMA3_CONV[: -len("<|start_header_id|>assistant<|end_header_id|>\n\n")])
    assert tmpl.format == "llama-3"


def test_mistral_v02_original_rejects_system() -> None:
    tmpl = ChatTemplate(MISTRAL_V02_ORIGINAL, bos_token="<s>", eos_token="</s>")
    assert tmpl.render(NO_SYS) == ("<s>[INST] Hello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an"
                                   " assistant   </s>[INST] Another question [/INST]")
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        tmpl.render(CONV)
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles are supported!"):
        tmpl.render([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])


def test_mistral_v02_with_system() -> None:
    tmpl = ChatTemplate(MISTRAL_V02, bos_token="<s>", eos_token="</s>")
    assert tmpl.render(CONV) == "<s>" + MISTRAL_V1_CONV
    with pytest.raises(ChatTemplateError, match="After the optional system message"):
        tmpl.render([CONV[0], CONV[2]])


def test_mistral_v03() -> None:
    tmpl = ChatTemplate(MISTRAL_V03, bos_token="<s>", eos_token="</s>")
    assert tmpl.render(CONV) == "<s>" + MISTRAL_V3_CONV
    assert tmpl.format == "mistral"


def test_mistral_v03_tools() -> None:
    tmpl = ChatTemplate(MISTRAL_V03, bos_token="<s>", eos_token="</s>")
    text = tmpl.render(_tool_conv('{"city": "Paris"}'), tools=[WEATHER_TOOL])
    assert text == (
        '<s>[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather", "description": "Météo'
        ' actuelle d\'une ville", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},'
        ' "required": ["city"]}}}][/AVAILABLE_TOOLS][INST] What\'s the weather in Paris?[/INST]'
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call12345"}]</s>'
        '[TOOL_RESULTS] {"content": {"temperature": 21}, "call_id": "call12345"}[/TOOL_RESULTS]'
    )
    with pytest.raises(ChatTemplateError, match="length 9"):
        bad = _tool_conv({"city": "Paris"})
        bad[1]["tool_calls"][0]["id"] = "x"
        tmpl.render(bad, tools=[WEATHER_TOOL])


def test_gemma2() -> None:
    tmpl = ChatTemplate(GEMMA2, bos_token="<bos>", eos_token="<eos>")
    assert tmpl.render(NO_SYS) == "<bos>" + GEMMA_NO_SYS
    # Gemma 2's template has no system role: it raises (the known "gemma" format folds it instead).
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        tmpl.render(CONV)
    assert get_template("gemma").render(CONV) == "<bos>" + GEMMA_NO_SYS.replace(
        "user\nHello", "user\nYou are a helpful assistant\n\nHello", 1)
    assert tmpl.format == "gemma"


QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_qwen25_default_system_prompt() -> None:
    tmpl = ChatTemplate(QWEN25, eos_token="<|im_end|>")
    assert tmpl.render(CONV) == CHATML_CONV
    assert tmpl.render(NO_SYS) == CHATML_CONV.replace("You are a helpful assistant", QWEN_DEFAULT_SYSTEM)
    assert tmpl.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == (
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


QWEN25_TOOLS_SYSTEM = (
    "<|im_start|>system\n{system}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{{"type": "function", "function": {{"name": "get_weather", "description": "Météo actuelle d\'une ville",'
    ' "parameters": {{"type": "object", "properties": {{"city": {{"type": "string"}}}}, "required": ["city"]}}}}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within"
    " <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call><|im_end|>\n'
)
QWEN25_TOOL_TURNS = (
    "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\n"
)


@pytest.mark.parametrize("arguments", [{"city": "Paris"}, '{"city": "Paris"}'], ids=["dict", "json-string"])
def test_qwen25_tools(arguments) -> None:
    tmpl = ChatTemplate(QWEN25, eos_token="<|im_end|>")
    messages = _tool_conv(arguments)
    before = copy.deepcopy(messages)
    text = tmpl.render(messages, tools=[WEATHER_TOOL])
    assert text == QWEN25_TOOLS_SYSTEM.format(system=QWEN_DEFAULT_SYSTEM) + QWEN25_TOOL_TURNS
    assert messages == before  # the caller's messages are not modified
    # An own system message goes in front of the tools section.
    text = tmpl.render([{"role": "system", "content": "Be brief."}] + messages, tools=[WEATHER_TOOL])
    assert text == QWEN25_TOOLS_SYSTEM.format(system="Be brief.") + QWEN25_TOOL_TURNS


def test_llama32_date_and_tools() -> None:
    tmpl = ChatTemplate(LLAMA32, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    head = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    text = tmpl.render(CONV[:2], date_string="26 Jul 2024")
    assert text == (head + "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                    "You are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # Without date_string the template asks strftime_now for today's date.
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in tmpl.render(CONV[:2])
    text = tmpl.render([CONV[1]], tools=[WEATHER_TOOL], date_string="26 Jul 2024")
    assert text.startswith(head + "Environment: ipython\nCutting Knowledge Date: December 2023\n")
    assert json.dumps(WEATHER_TOOL, indent=4, ensure_ascii=False) + "\n\nHello<|eot_id|>" in text


# --- known formats -------------------------------------------------------------------------------------
def test_known_template_names() -> None:
    for name in ("chatml", "llama-2", "llama-3", "mistral-instruct", "gemma", "qwen", "phi-3", "zephyr", "vicuna",
                 "alpaca", "openchat"):
        assert name in KNOWN_TEMPLATES
        tmpl = get_template(name)
        assert isinstance(tmpl, ChatTemplate) and tmpl.name == name
        assert tmpl.render(CONV[:2]), name


def test_get_template_unknown_and_aliases() -> None:
    with pytest.raises(ValueError, match="unknown chat format 'nope'.*chatml.*llama-3"):
        get_template("nope")
    assert get_template("llama3").source == KNOWN_TEMPLATES["llama-3"]
    assert get_template("mistral").source == KNOWN_TEMPLATES["mistral-instruct"]
    tmpl = get_template("llama-3")
    assert (tmpl.bos_token, tmpl.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    assert get_template("llama-3", bos_token="").bos_token == ""


def test_known_vicuna_alpaca_qwen() -> None:
    user = [{"role": "user", "content": "Hi"}]
    assert get_template("vicuna").render(user) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,"
        " detailed, and polite answers to the user's questions. USER: Hi ASSISTANT:")
    assert get_template("vicuna").render(CONV[:3] + [CONV[3]]) == (
        "You are a helpful assistant USER: Hello ASSISTANT: Hi there</s>USER: Who are you ASSISTANT:")
    assert get_template("alpaca").render(user) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the"
        " request.\n\n### Instruction:\nHi\n\n### Response:\n")
    assert get_template("qwen").render(user) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.mark.parametrize("source, family", [
    (SMOLLM2_SOURCE, "chatml"), (QWEN25, "chatml"), (LLAMA3_8B, "llama-3"), (LLAMA32, "llama-3"),
    (KNOWN_TEMPLATES["llama-2"], "llama-2"), (MISTRAL_V02, "mistral"), (MISTRAL_V03, "mistral"),
    (GEMMA2, "gemma"), (PHI35, "phi-3"), (KNOWN_TEMPLATES["zephyr"], "zephyr"),
    (KNOWN_TEMPLATES["openchat"], "openchat"), (KNOWN_TEMPLATES["vicuna"], "vicuna"),
    (KNOWN_TEMPLATES["alpaca"], "alpaca"), ("{{ messages }}", None), (None, None), ("", None),
])
def test_detect_format(source, family) -> None:
    assert detect_format(source) == family
    if family is not None:
        get_template(family)  # every family it names can be used as a format


# --- from_model ----------------------------------------------------------------------------------------
def test_from_model_without_template_falls_back_to_chatml(vocab_model) -> None:
    m = vocab_model("gpt-2")
    assert m.chat_template() is None
    tmpl = ChatTemplate.from_model(m)
    assert tmpl.source == KNOWN_TEMPLATES["chatml"] and "chatml" in tmpl.name
    assert (tmpl.bos_token, tmpl.eos_token) == ("<|endoftext|>", "<|endoftext|>")
    assert tmpl.render(CONV) == CHATML_CONV


def test_from_model_uses_the_models_template(vocab_model) -> None:
    tmpl = ChatTemplate.from_model(vocab_model("qwen2"))
    # This GGUF carries the Qwen1.5-style template (default system prompt without a full stop).
    assert tmpl.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_from_model_named_template_missing(model) -> None:
    with pytest.raises(ValueError, match="no chat template named 'tool_use'"):
        ChatTemplate.from_model(model, name="tool_use")


def test_add_bos_gives_one_bos_after_tokenizing(vocab_model) -> None:
    vocab = vocab_model("llama-bpe").get_vocab()  # Llama 3 tokenizer: adds <|begin_of_text|> itself
    assert vocab.add_bos and vocab.bos == 128000
    bos, eos = vocab.token_to_piece(vocab.bos, special=True), vocab.token_to_piece(vocab.eos, special=True)
    plain = ChatTemplate(LLAMA3_8B, bos_token=bos, eos_token=eos).render(CONV[:2])
    assert vocab.tokenize(plain, add_special=True, parse_special=True)[:2] == [128000, 128000]  # the hazard
    stripped = ChatTemplate(LLAMA3_8B, bos_token=bos, eos_token=eos, add_bos=True).render(CONV[:2])
    assert stripped == plain[len(bos):]
    tokens = vocab.tokenize(stripped, add_special=True, parse_special=True)
    assert tokens[0] == 128000 and tokens[1] != 128000
    assert tokens == vocab.tokenize(plain, add_special=False, parse_special=True)


# --- the sandbox -----------------------------------------------------------------------------------------
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ messages.__class__.__base__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['__builtins__'] }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self.__init__.__globals__ }}",
    "{{ messages[0].content.__class__.__subclasses__() }}",
    "{{ messages.pop() }}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'system'}) }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ lipsum.__globals__ }}",
])
def test_sandbox_escapes_raise(source: str) -> None:
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate(source).render(USER)
    assert isinstance(info.value, ValueError)


def test_raise_exception_message() -> None:
    tmpl = ChatTemplate("{{ raise_exception('Only user and assistant roles are supported!') }}", name="strict")
    with pytest.raises(ChatTemplateError) as info:
        tmpl.render(USER)
    assert str(info.value) == "chat template 'strict' raised an error: Only user and assistant roles are supported!"


def test_invalid_syntax_raises_at_compile_time() -> None:
    with pytest.raises(ChatTemplateError, match=r"syntax error on line 2: .*"):
        ChatTemplate("{% for m in messages %}\n{% if %}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="syntax error"):
        ChatTemplate("{{ messages[0] ")
    with pytest.raises(ChatTemplateError, match="syntax error.*unknown tag 'include_raw'"):
        ChatTemplate("{% include_raw 'x' %}")
    with pytest.raises(TypeError):
        ChatTemplate(None)


def test_runtime_errors_name_the_line() -> None:
    with pytest.raises(ChatTemplateError, match=r"failed on line 3: UndefinedError: 'foo' is undefined"):
        ChatTemplate("a\nb\n{{ foo.bar }}").render(USER)
    with pytest.raises(ChatTemplateError, match=r"TypeError"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render(USER)
    with pytest.raises(ChatTemplateError, match="recursed too deeply"):
        ChatTemplate("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").render(USER)
    with pytest.raises(ChatTemplateError, match="include|template"):
        ChatTemplate("{% include 'other.jinja' %}").render(USER)  # no loader: templates cannot load files


def test_range_is_limited() -> None:
    assert MAX_RANGE == 100_000
    assert ChatTemplate("{{ range(MAX)|length }}").render(USER, MAX=MAX_RANGE) == str(MAX_RANGE)
    with pytest.raises(ChatTemplateError, match="MAX_RANGE"):
        ChatTemplate("{% for i in range(MAX + 1) %}{% endfor %}").render(USER, MAX=MAX_RANGE)
    with pytest.raises(ChatTemplateError, match="MAX_RANGE"):
        ChatTemplate("{{ range(10**12)|list }}").render(USER)


@pytest.mark.parametrize("source", [
    "{{ 'a' * 10**10 }}",
    "{{ [0] * 10**9 }}",
    "{{ 9 ** 999999999 }}",
    "{{ '%999999999999d' % 1 }}",
    "{{ '%*d' % (10**10, 1) }}",
    "{{ '{:>99999999999}'.format(1) }}",
    "{{ '{:>{w}}'.format(1, w=10**10) }}",
    "{{ 'a'.center(10**10) }}",
    "{{ 'a'.zfill(10**10) }}",
    "{{ ('\t' * 1000000).expandtabs(1000) }}",
    "{{ 'a'|center(10**10) }}",
    "{{ ('a\n' * 1000000)|indent(1000) }}",
    "{{ ('a' * 100000)|replace('', 'b' * 1000) }}",
    "{{ ('a' * 100000).replace('a', 'b' * 1000) }}",
    "{{ (['a' * 1000000] * 1000)|join }}",
    "{{ ','.join(['a' * 1000000] * 1000) }}",
    "{{ [1]|batch(10**10, 0)|list }}",
    "{{ '%s'|format('a' * 10**7) ~ ('a' * 10**7) }}",
    "{% set s = 'a' * 10**7 %}{{ s + s }}",
    "{% set ns = namespace(s='a' * 10**6) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{{ {'a': 1}|tojson(indent=10**9) }}",
])
def test_resource_guards(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="stopped by the sandbox"):
        ChatTemplate(source).render(USER)


def test_deadline_stops_long_loops(monkeypatch) -> None:
    monkeypatch.setattr(ct, "MAX_RENDER_SECONDS", 0.3)
    for source in ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                   "{% set x = range(100000)|list %}{% for i in x %}{% for j in x %}{% endfor %}{% endfor %}"):
        with pytest.raises(ChatTemplateError, match="MAX_RENDER_SECONDS"):
            ChatTemplate(source).render(USER)


def test_output_limit(monkeypatch) -> None:
    monkeypatch.setattr(ct, "MAX_OUTPUT_CHARS", 1000)
    with pytest.raises(ChatTemplateError, match="MAX_OUTPUT_CHARS"):
        ChatTemplate("{% for i in range(1000) %}{{ 'xx' }}{% endfor %}").render(USER)
    assert len(ChatTemplate("{% for i in range(500) %}{{ 'xx' }}{% endfor %}").render(USER)) == 1000


def test_helpers_tojson_strftime_loopcontrols_generation() -> None:
    data = {"b": "é<&>'\"", "a": [1, 2]}
    assert ChatTemplate("{{ d|tojson }}").render(USER, d=data) == '{"b": "é<&>\'\\"", "a": [1, 2]}'
    assert ChatTemplate("{{ d|tojson(indent=2) }}").render(USER, d=data) == json.dumps(data, indent=2,
                                                                                       ensure_ascii=False)
    assert ChatTemplate("{{ d|tojson(separators=(',', ':'), sort_keys=true) }}").render(USER, d=data) == (
        '{"a":[1,2],"b":"é<&>\'\\""}')
    assert ChatTemplate("{{ d|tojson(ensure_ascii=true) }}").render(USER, d={"k": "é"}) == '{"k": "\\u00e9"}'
    assert ChatTemplate("{{ strftime_now('%Y') }}").render(USER) == str(datetime.now().year)
    loops = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
             "{% if loop.index > 3 %}{% break %}{% endif %}{{ m.content }};{% endfor %}")
    assert ChatTemplate(loops).render(CONV) == "Hello;Hi there;"
    gen = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    assert ChatTemplate(gen).render(CONV[:2]) == "[You are a helpful assistant][Hello]"


def test_context_variables() -> None:
    tmpl = ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|{{ extra }}",
                        bos_token="<s>", eos_token="</s>")
    assert tmpl.render(USER, extra=1) == "<s>|</s>|True|None|1"
    assert tmpl.render(USER, add_generation_prompt=False, bos_token="", extra="x") == "|</s>|False|None|x"
    assert "get_weather" in tmpl.render(USER, tools=[WEATHER_TOOL], extra=0)


def test_content_parts_are_flattened() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this."}]}]
    assert get_template("chatml").render(parts, add_generation_prompt=False) == (
        "<|im_start|>user\nDescribe\nthis.<|im_end|>\n")


@pytest.mark.parametrize("messages, match", [
    ("hello", "messages must be a list"),
    ({"role": "user", "content": "x"}, "messages must be a list"),
    (None, "messages must be a list"),
    ([], "must not be empty"),
    ([{"role": "user", "content": "a"}, "b"], "message 1 must be a dict"),
    ([{"content": "a"}], "message 0 needs a non-empty string 'role'"),
    ([{"role": 3, "content": "a"}], "message 0 needs a non-empty string 'role'"),
    ([{"role": "user", "content": "a"}, {"role": "user"}], r"message 1 \(user\) has no 'content'"),
    ([{"role": "user", "content": 42}], r"message 0 \(user\): content must be a string"),
    ([{"role": "user", "content": {"text": "a"}}], r"message 0 \(user\): content must be a string"),
    ([{"role": "user", "content": None}], r"message 0 \(user\): content may only be None"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     r"message 0 \(user\): content part 0 has type 'image_url'"),
    ([{"role": "user", "content": [{"type": "text"}]}], "content part 0 needs a string 'text'"),
    ([{"role": "assistant", "content": None, "tool_calls": "x"}], "'tool_calls' must be a list"),
    ([{"role": "assistant", "content": None, "tool_calls": ["x"]}], "tool call 0 must be a dict"),
    ([{"role": "tool", "content": "a", "tool_call_id": 5}], "'tool_call_id' must be a string"),
    ([{"role": "user", "content": "a", "name": ["x"]}], "'name' must be a string"),
])
def test_message_validation(messages, match: str) -> None:
    tmpl = get_template("chatml")
    with pytest.raises(ChatTemplateError, match=match) as info:
        tmpl.render(messages)
    assert isinstance(info.value, ValueError)


def test_tools_validation() -> None:
    with pytest.raises(ChatTemplateError, match="tools must be a list of dicts"):
        ChatTemplate(QWEN25).render(USER, tools="get_weather")
    with pytest.raises(ChatTemplateError, match="tools must be a list of dicts"):
        ChatTemplate(QWEN25).render(USER, tools=[1])


def test_assistant_tool_call_without_content_key() -> None:
    messages = _tool_conv({"city": "Paris"})
    del messages[1]["content"]
    assert ChatTemplate(QWEN25).render(messages, tools=[WEATHER_TOOL]).endswith(QWEN25_TOOL_TURNS)


def test_render_from_threads() -> None:
    tmpl = ChatTemplate(QWEN25)
    expected = tmpl.render(CONV)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.extend(tmpl.render(CONV) for _ in range(50)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 200
