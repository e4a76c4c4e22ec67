"""``python -m cyllama.llama_cpp.server``: llama-cpp-python's server command line on cyllama's
embedded OpenAI server (:mod:`cyllama.server`). See :mod:`.settings` for what each setting does."""

from __future__ import annotations

from .settings import SETTINGS, Setting, SettingsError, parse_settings, server_kwargs

__all__ = ["SETTINGS", "Setting", "SettingsError", "parse_settings", "server_kwargs"]
