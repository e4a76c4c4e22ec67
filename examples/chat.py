#!/usr/bin/env python3
"""Chat with the model's own chat template: a one-shot ``chat()`` and a multi-turn ``LLM.chat``.

    python examples/chat.py [GGUF_PATH]

An ``LLM`` remembers which tokens its KV cache holds, so each new turn of a growing conversation
only evaluates the new tokens (``llm.last_stats.cached_tokens`` shows how many were reused).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM, chat  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

print("== chat() one-shot ==")
print(chat([{"role": "user", "content": "What is the capital of France?"}], path, temperature=0, max_tokens=32))

print("\n== multi-turn LLM.chat ==")
messages = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
questions = ["Name a fruit that is yellow.", "What colour is it when it is unripe?", "Thanks! Say goodbye."]
with LLM(path, temperature=0, max_tokens=32) as llm:
    for question in questions:
        messages.append({"role": "user", "content": question})
        print(f"user: {question}\nassistant: ", end="", flush=True)
        reply = llm.chat(messages, on_token=lambda piece: print(piece, end="", flush=True))
        messages.append({"role": "assistant", "content": reply})
        st = llm.last_stats
        print(f"\n  [prompt {st.prompt_tokens} tokens, {st.cached_tokens} reused from the KV cache, "
              f"{st.generated_tokens} generated, finish: {st.finish_reason}]")
