"""Byte-level mutations of GGUF files, loaded in subprocesses: no mutation may kill the process
with a signal (every failure must be a Python exception). ``tests/test_fuzz.py`` runs a bounded
number in CI; run more by hand::

    python tests/fuzz_gguf.py --n 5000 [--vocab gpt-2 llama-spm bert-bge] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_LOADER = textwrap.dedent("""
    import sys
    from cyllama import LlamaModel, LlamaModelParams
    from cyllama.llama.gguf import GGUFContext
    for p in sys.argv[1:]:
        print("TRY", p, flush=True)
        try:
            g = GGUFContext.from_file(p)
            g.get_all_metadata()
            g.get_tensors()
            g.close()
        except Exception:
            pass
        try:
            m = LlamaModel(p, LlamaModelParams(vocab_only=True))
            v = m.get_vocab()
            v.detokenize(v.tokenize("hello world, héllo wörld"))
            m.close()
        except Exception:
            pass
    print("DONE", flush=True)
""")


def mutate(data: bytes, rng: random.Random, span: int = 400_000) -> bytes:
    """A few random byte, word and size-field overwrites in the header region."""
    d = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(8, min(len(d), span))
        r = rng.random()
        if r < 0.5:
            d[i] = rng.randrange(256)
        elif r < 0.8:
            d[i:i + 4] = rng.randrange(2 ** 32).to_bytes(4, "little")
        else:
            d[i:i + 8] = rng.choice([0, 2 ** 63 - 1, 2 ** 64 - 1, 2 ** 32, 1 << 40]).to_bytes(8, "little")
    return bytes(d)


def fuzz(src: Path, n: int, seed: int) -> list[tuple[str, int, str]]:
    """Loads ``n`` mutations of ``src``; returns (file, exit code, last stderr line) per crash."""
    rng = random.Random(seed)
    data = src.read_bytes()
    crashes: list[tuple[str, int, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(n):
            p = Path(tmp) / f"{src.stem}-{seed}-{k}.gguf"
            p.write_bytes(mutate(data, rng))
            paths.append(str(p))
        i = 0
        while i < len(paths):
            r = subprocess.run([sys.executable, "-c", _LOADER, *paths[i:]], capture_output=True, text=True,
                               cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
            if r.returncode == 0 and "DONE" in r.stdout:
                break
            tried = [line.split(" ", 1)[1] for line in r.stdout.splitlines() if line.startswith("TRY ")]
            culprit = tried[-1] if tried else paths[i]
            last = (r.stderr.strip().splitlines() or [""])[-1]
            crashes.append((culprit, r.returncode, last))
            i = paths.index(culprit) + 1
    return crashes


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from cyllama import _assets

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vocab", nargs="+", default=["gpt-2", "llama-spm", "bert-bge"])
    args = ap.parse_args()
    total = 0
    for name in args.vocab:
        crashes = fuzz(_assets.vocab_model_path(name), args.n, args.seed)
        total += len(crashes)
        print(f"{name}: {args.n} mutations, {len(crashes)} crashes")
        for c in crashes[:20]:
            print("   ", c)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
