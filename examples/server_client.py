#!/usr/bin/env python3
"""The embedded OpenAI-compatible server, started in-process and queried with the ``openai`` package.

    python examples/server_client.py [GGUF_PATH]

Needs ``pip install 'cyllama[server]' openai``. ``port=0`` picks a free port. To serve on its own
instead: ``python -m cyllama serve --port 8000``, or ``start_server(path, port=8000)`` in Python.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openai import OpenAI  # noqa: E402

from cyllama._assets import default_model_path  # noqa: E402
from cyllama.llama.server.embedded import EmbeddedServer  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

server = EmbeddedServer(path, port=0, n_ctx=1024, n_parallel=2).start()
try:
    print(f"serving on {server.base_url}")
    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    print(f"model: {model}")

    print("\n== chat ==")
    r = client.chat.completions.create(
        model=model, temperature=0, max_tokens=48,
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}])
    print(r.choices[0].message.content)
    print(f"[{r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens, "
          f"finish: {r.choices[0].finish_reason}]")

    print("\n== streaming ==")
    stream = client.chat.completions.create(model=model, max_tokens=60, seed=1, stream=True,
                                            messages=[{"role": "user", "content": "Count to 5"}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
finally:
    server.stop()
    print("\nserver stopped")
