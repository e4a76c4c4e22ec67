#!/usr/bin/env python3
"""A typical llama-cpp-python script, run on cyllama by changing one import line.

    python examples/llama_cpp_dropin.py [GGUF_PATH]

``from llama_cpp import Llama`` becomes ``from cyllama.llama_cpp import Llama``; the calls and the
returned dicts (OpenAI shapes) are llama-cpp-python's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama._assets import default_model_path  # noqa: E402
from cyllama.llama_cpp import Llama  # noqa: E402  (was: from llama_cpp import Llama)

path = sys.argv[1] if len(sys.argv) > 1 else str(default_model_path())

llm = Llama(model_path=path, n_ctx=2048, n_gpu_layers=-1, seed=1, verbose=False)

print("== create_completion ==")
out = llm.create_completion("Q: What is the capital of France?\nA:", max_tokens=32, stop=["Q:", "\n"],
                            temperature=0)
print(out["choices"][0]["text"].strip())
print(f"[usage: {out['usage']}, finish: {out['choices'][0]['finish_reason']}]")

print("\n== llm(prompt, stream=True) ==")
for chunk in llm("The three primary colours are", max_tokens=32, stream=True, temperature=0.7):
    print(chunk["choices"][0]["text"], end="", flush=True)
print()

print("\n== create_chat_completion ==")
messages = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of Italy?"}]
resp = llm.create_chat_completion(messages=messages, max_tokens=32, temperature=0)
print(resp["choices"][0]["message"]["content"])
print(f"[{resp['usage']['prompt_tokens']} prompt + {resp['usage']['completion_tokens']} completion tokens]")

print("\n== create_chat_completion(stream=True) ==")
for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": "Count to 5"}], max_tokens=32,
                                        stream=True):
    delta = chunk["choices"][0]["delta"]
    if "content" in delta and delta["content"]:
        print(delta["content"], end="", flush=True)
print()

llm.close()
