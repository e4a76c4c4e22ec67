#!/usr/bin/env python3
"""Print a GGUF file's metadata and tensors, and write a copy with a changed name.

    python examples/gguf_inspect.py [GGUF_PATH]
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cyllama import GGUFContext, LlamaModel  # noqa: E402
from cyllama._assets import default_model_path  # noqa: E402

path = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_path()
tmp = tempfile.TemporaryDirectory()
with GGUFContext.from_file(path) as g:
    for key, value in g.get_all_metadata().items():
        text = f"[{len(value)} items]" if isinstance(value, list) else repr(value)[:80]
        print(f"{key:45} {text}")
    tensors = g.get_tensors()
    print(f"\n{len(tensors)} tensors, first: {tensors[0]}")
    g.set_val_str("general.name", "renamed by cyllama")
    out = Path(tmp.name) / "renamed.gguf"
    g.write_to_file(out)
with LlamaModel(out) as m:
    print(f"\nwrote {out}: general.name = {m.meta_val_str('general.name')!r}")
tmp.cleanup()
