#!/usr/bin/env python3
"""Sentence embeddings with ``LLM.embed`` and their cosine similarities.

    python examples/embeddings.py [GGUF_PATH]

A list of texts is embedded in one batch; with ``normalize=True`` (the default) each vector has
unit length, so a dot product is the cosine similarity. A chat model gives usable but rough
embeddings; a dedicated embedding model (e.g. a BERT/nomic GGUF) gives better ones.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import LLM  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()

sentences = [
    "The cat sat on the mat.",
    "A kitten is resting on the rug.",
    "Stock markets fell sharply today.",
    "Shares dropped as investors panicked.",
]

with LLM(path) as llm:
    vectors = llm.embed(sentences)  # a (4, n_embd) array, one unit-length row per sentence
    norms = np.linalg.norm(vectors, axis=1)
    print(f"embeddings: shape {vectors.shape}, dtype {vectors.dtype}, norms {np.round(norms, 3).tolist()}")

    sims = vectors @ vectors.T  # cosine similarities
    print("\ncosine similarity:")
    for i, s in enumerate(sentences):
        print(f"  [{i}] {s}")
    print("      " + "".join(f"{j:>7}" for j in range(len(sentences))))
    for i, row in enumerate(sims):
        print(f"  [{i}] " + "".join(f"{v:7.3f}" for v in row))

    query = llm.embed("Where is the cat?")  # a single string gives a 1-D vector
    best = max(range(len(sentences)), key=lambda i: float(vectors[i] @ query))
    print(f"\nclosest to 'Where is the cat?': {sentences[best]!r}")
