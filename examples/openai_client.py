#!/usr/bin/env python3
"""The OpenAI client API, answered in-process by a local model.

    python examples/openai_client.py [GGUF_PATH]

Code written for ``openai.OpenAI()`` runs unchanged against ``OpenAICompatibleClient``: same
calls, same response shapes (``response.choices[0].message.content``, ``chunk.choices[0].delta``,
``response.usage``...).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama._assets import default_model_path  # noqa: E402
from cyllama.integrations.openai_compat import OpenAICompatibleClient  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

with OpenAICompatibleClient(model_path=path, temperature=0.7, max_tokens=48) as client:
    response = client.chat.completions.create(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is Python?"},
        ],
        temperature=0.7,
        max_tokens=48,
        seed=1,
    )
    print("== chat ==")
    print(response.choices[0].message.content)
    print(f"[{response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} completion tokens, "
          f"finish: {response.choices[0].finish_reason}]")

    print("\n== streaming ==")
    for chunk in client.chat.completions.create(messages=[{"role": "user", "content": "Count to 5"}],
                                                stream=True, max_tokens=32):
        if chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    print("\n== JSON output (response_format) ==")
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"]}
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "Name a famous city and its country."}], temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    print(json.loads(r.choices[0].message.content))

    print("\n== tool call ==")
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "What's the weather in Tokyo?"}], temperature=0, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    print(call.function.name, json.loads(call.function.arguments))

    print("\n== completion ==")
    r = client.completions.create(prompt="The three primary colours are", max_tokens=24, temperature=0)
    print(r.choices[0].text)

    print("\n== embeddings ==")
    e = client.embeddings.create(input=["hello world", "goodbye world"])
    print(f"{len(e.data)} embeddings of {len(e.data[0].embedding)} dimensions")
    print(json.dumps(response.model_dump(), indent=2)[:400], "...")
