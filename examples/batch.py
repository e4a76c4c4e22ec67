#!/usr/bin/env python3
"""Many prompts at once on the continuous-batching engine: ``batch_generate`` and ``BatchGenerator``.

    python examples/batch.py [GGUF_PATH]

Up to ``batch_size`` prompts are decoded together and the rest join as slots free up. Greedy
output is the same as generating each prompt alone with ``LLM``.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import BatchGenerator, BatchRequest, batch_generate  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

prompts = ["The capital of France is", "Water boils at", "The largest planet in the solar system is",
           "A haiku is a poem with"]

print("== batch_generate (loads the model, answers all prompts, frees it) ==")
t0 = time.perf_counter()
answers = batch_generate(prompts, path, batch_size=4, max_tokens=24, temperature=0, stop=["\n"])
print(f"{len(answers)} answers in {time.perf_counter() - t0:.2f} s")
for prompt, answer in zip(prompts, answers):
    print(f"  {prompt}|{answer}")

print("\n== BatchGenerator.process_batch (own max_tokens and temperature per request) ==")
requests = [
    BatchRequest(id=1, prompt="List three colours:", max_tokens=20, temperature=0.0),
    BatchRequest(id=2, prompt="Write a one-line poem about rain:", max_tokens=30, temperature=0.9),
    BatchRequest(id=3, prompt="2 + 2 =", max_tokens=8, temperature=0.0),
]
with BatchGenerator(path, batch_size=8, n_ctx=256) as gen:
    for r in gen.process_batch(requests):
        print(f"  #{r.id} [{r.prompt_tokens} prompt + {r.tokens_generated} tokens, {r.time_taken:.2f} s, "
              f"{r.finish_reason}] {r.prompt}|{r.response.strip()!r}")
