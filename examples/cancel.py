#!/usr/bin/env python3
"""Cancelling a running generation from another thread with ``llm.cancel()``.

    python examples/cancel.py [GGUF_PATH]

``cancel()`` is safe to call from any thread: the generation stops between two tokens (or
aborts its prompt evaluation) and ends with finish_reason "cancelled". The LLM stays usable.
"""

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

# Ask for far more tokens than we will wait for (ignore_eos: the model cannot stop by itself).
with LLM(path, temperature=0.8, seed=1, max_tokens=2000, ignore_eos=True) as llm:
    print("== cancel a stream 0.5 s after its first token ==")
    timer = threading.Timer(0.5, llm.cancel)
    pieces = []
    for piece in llm("Once upon a time, a dragon decided to learn to code.", stream=True):
        if not pieces:
            timer.start()
        pieces.append(piece)
    timer.cancel()
    st = llm.last_stats
    print(f"{st.generated_tokens} tokens, finish_reason={st.finish_reason!r}")
    print(f"partial text: {''.join(pieces)[:160]!r}...")
    assert st.finish_reason == "cancelled"

    print("\n== cancel a blocking call from a timer thread after 1 s ==")
    timer = threading.Timer(1.0, llm.cancel)
    t0 = time.perf_counter()
    timer.start()
    text = llm("Count from one to a thousand: one, two, three,")
    timer.cancel()
    st = llm.last_stats
    print(f"returned after {time.perf_counter() - t0:.2f} s with {st.generated_tokens} tokens "
          f"({len(text)} characters), finish_reason={st.finish_reason!r}")

    # The next call runs normally: cancel() only stops the generation running at that moment.
    print("\n== still usable ==")
    print(llm("The capital of France is", temperature=0, max_tokens=8, ignore_eos=False).strip())
    print(f"finish_reason={llm.last_stats.finish_reason!r}")
