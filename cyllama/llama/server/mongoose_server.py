"""Re-export of :mod:`cyllama.server.mongoose_server` (the reference's import path)."""

from cyllama.server.mongoose_server import *  # noqa: F401,F403
from cyllama.server.mongoose_server import __all__  # noqa: F401
