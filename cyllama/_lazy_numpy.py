"""``np``: numpy, imported on first use rather than when cyllama is imported.

Importing numpy takes about 50 ms, a third of ``import cyllama``, and many programs (the CLI's
help, a server that has not started yet, code that only reads GGUF metadata) never need it before
their first generation. Each attribute is looked up once, then cached on the proxy, so later
accesses cost what a module attribute costs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["np"]


class _LazyNumpy:
    def __getattr__(self, name: str) -> Any:
        import numpy

        value = getattr(numpy, name)
        setattr(self, name, value)
        return value

    def __repr__(self) -> str:
        return "<numpy, imported on first use>"


np: Any = _LazyNumpy()
