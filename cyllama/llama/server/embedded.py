"""Re-export of :mod:`cyllama.server.embedded` (the reference's import path)."""

from cyllama.server.embedded import *  # noqa: F401,F403
from cyllama.server.embedded import __all__  # noqa: F401
