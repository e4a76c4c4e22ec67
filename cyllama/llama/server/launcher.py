"""Re-export of :mod:`cyllama.server.launcher` (the reference's import path)."""

from cyllama.server.launcher import *  # noqa: F401,F403
from cyllama.server.launcher import __all__  # noqa: F401
