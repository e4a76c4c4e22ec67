#!/usr/bin/env python3
"""Plain text completion: one-shot ``complete()``, streaming, ``on_token`` and generation stats.

    python examples/complete_and_stream.py [GGUF_PATH]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM, GenerationConfig, complete  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

print("== complete() (loads the model, generates, frees it) ==")
print(complete("The three primary colours are", path, temperature=0, max_tokens=24))

# An LLM keeps the model loaded between calls; keyword arguments override the config per call.
with LLM(path, GenerationConfig(temperature=0, max_tokens=40)) as llm:
    print("\n== llm(..., stream=True) ==")
    for piece in llm("Python is a programming language that", stream=True):
        print(piece, end="", flush=True)
    print()

    print("\n== llm(..., on_token=...) ==")
    pieces = []
    text = llm("A haiku about the sea:\n", on_token=pieces.append, temperature=0.7, seed=42,
               stop=["\n\n"])
    print(text.strip())
    print(f"[{len(pieces)} pieces via on_token; joined == returned text: {''.join(pieces) == text}]")

    print("\n== generate_with_stats ==")
    text, stats = llm.generate_with_stats("The capital of France is", max_tokens=16)
    print(text)
    print(stats)
    print(f"prompt_tokens={stats.prompt_tokens} generated_tokens={stats.generated_tokens} "
          f"tok/s={stats.tokens_per_second:.1f} ttft={stats.time_to_first_token * 1000:.0f} ms "
          f"finish_reason={stats.finish_reason!r}")
