#!/usr/bin/env python3
"""Greedy generation with the core classes: model, context, batch, sampler.

    python examples/core_generate.py [GGUF_PATH] ["prompt"]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LlamaBatch, LlamaContext, LlamaContextParams, LlamaModel, LlamaSampler  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
prompt = sys.argv[2] if len(sys.argv) > 2 else "The three primary colours are"

with LlamaModel(path) as model, LlamaContext(model, LlamaContextParams(n_ctx=512)) as ctx:
    vocab = model.get_vocab()
    tokens = vocab.tokenize(prompt)
    batch = LlamaBatch(len(tokens))
    batch.add_sequence(tokens, pos0=0, seq_id=0)       # logits for the last token only
    ctx.decode(batch)

    sampler = LlamaSampler().add_greedy()
    print(prompt, end="", flush=True)
    pos = len(tokens)
    for _ in range(32):
        tok = sampler.sample(ctx, -1)
        if vocab.is_eog(tok):
            break
        print(vocab.token_to_piece(tok), end="", flush=True)
        batch.clear()
        batch.add(tok, pos, [0], logits=True)
        pos += 1
        ctx.decode(batch)
    print()
    ctx.print_perf_data()
