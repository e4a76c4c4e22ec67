#!/usr/bin/env python3
"""Structured output: generation constrained by a grammar made from a JSON Schema.

    python examples/structured_output.py [GGUF_PATH]

The output always parses, even from a tiny model: the grammar only lets it sample tokens that
keep the text valid for the schema.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM, json_schema_to_grammar  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
}

print("== json_schema_to_grammar (GBNF, first lines) ==")
print("\n".join(json_schema_to_grammar(schema).splitlines()[:6]), "\n...")

with LLM(path, temperature=0, max_tokens=128) as llm:
    print("\n== LLM.chat(..., json_schema=schema) ==")
    messages = [{"role": "user", "content": "Describe a fictional software developer as JSON."}]
    text = llm.chat(messages, json_schema=schema)
    person = json.loads(text)
    print(text)
    print(f"parsed: name={person['name']!r}, age={person['age']}, languages={person['languages']}")

    print('\n== LLM.chat(..., response_format={"type": "json_object"}) ==')
    messages = [{"role": "user", "content": "Give the capital city and population of Japan as JSON."}]
    text = llm.chat(messages, response_format={"type": "json_object"}, max_tokens=256)
    data = json.loads(text)
    print(text)
    print(f"parsed a {type(data).__name__} with keys {sorted(data)}")
