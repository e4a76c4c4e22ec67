"""llama-cpp-python's README: JSON mode, then JSON schema mode (only the import changed;
``max_tokens`` bounds a small model's answer)."""
import json

from _model import model_path

from cyllama.llama_cpp import Llama

llm = Llama(model_path=model_path(), chat_format="chatml")
out = llm.create_chat_completion(
    messages=[
        {
            "role": "system",
            "content": "You are a helpful assistant that outputs in JSON.",
        },
        {"role": "user", "content": "Who won the world series in 2020"},
    ],
    response_format={
        "type": "json_object",
    },
    temperature=0.7,
    max_tokens=64,
)
print(out["choices"][0]["message"]["content"])

out = llm.create_chat_completion(
    messages=[
        {
            "role": "system",
            "content": "You are a helpful assistant that outputs in JSON.",
        },
        {"role": "user", "content": "Who won the world series in 2020"},
    ],
    response_format={
        "type": "json_object",
        "schema": {
            "type": "object",
            "properties": {"team_name": {"type": "string", "maxLength": 40}},
            "required": ["team_name"],
        },
    },
    temperature=0.7,
    max_tokens=64,
)
print(json.dumps(json.loads(out["choices"][0]["message"]["content"])))
