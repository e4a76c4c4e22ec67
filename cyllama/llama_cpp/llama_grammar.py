"""``LlamaGrammar``: a GBNF grammar that constrains sampling (llama-cpp-python's API).

The grammar text is parsed by llama.cpp when generation starts; a grammar it rejects raises
``ValueError`` then. JSON schemas are converted by :func:`cyllama.grammar.json_schema_to_grammar`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Union

from .. import grammar as _grammar

__all__ = ["LlamaGrammar", "LLAMA_GRAMMAR_DEFAULT_ROOT", "JSON_GBNF", "JSON_ARR_GBNF", "LIST_GBNF",
           "ARITHMETIC_GBNF", "json_schema_to_gbnf"]

LLAMA_GRAMMAR_DEFAULT_ROOT = "root"

#: Any JSON object.
JSON_GBNF = _grammar.JSON_GRAMMAR

#: Any JSON array.
JSON_ARR_GBNF = _grammar.JSON_GRAMMAR.replace("root ::= object\n", "root ::= array\n")

ARITHMETIC_GBNF = r"""
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
"""

LIST_GBNF = r"""
root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
"""


def json_schema_to_gbnf(schema: Union[str, dict], prop_order: Optional[List[str]] = None) -> str:
    """A GBNF grammar for a JSON schema (given as JSON text or a dict)."""
    return _grammar.json_schema_to_grammar(schema, prop_order=prop_order)


class LlamaGrammar:
    """A GBNF grammar; pass it as ``grammar=`` to completions and ``generate``."""

    def __init__(self, *args: Any, _grammar: str, **kwargs: Any):
        if not isinstance(_grammar, str) or not _grammar.strip():
            raise ValueError("a grammar must be a non-empty GBNF string")
        self._grammar = _grammar
        self._root = LLAMA_GRAMMAR_DEFAULT_ROOT

    @property
    def grammar(self) -> str:
        """The GBNF text."""
        return self._grammar

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "LlamaGrammar":
        if not isinstance(grammar, str):
            raise TypeError(f"grammar must be a string, got {type(grammar).__name__}")
        return cls(_grammar=grammar)

    @classmethod
    def from_file(cls, file: Union[str, Path, "os.PathLike[str]"], verbose: bool = True) -> "LlamaGrammar":
        try:
            with open(file, encoding="utf-8") as f:
                grammar = f.read()
        except Exception as err:
            raise Exception(f"{cls.from_file.__name__}: error reading grammar file: {err}")
        if grammar:
            return cls.from_string(grammar, verbose=verbose)
        raise ValueError(f"{cls.from_file.__name__}: error parsing grammar file: params_grammer is empty")

    @classmethod
    def from_json_schema(cls, json_schema: Union[str, dict], verbose: bool = True) -> "LlamaGrammar":
        """A grammar for a JSON schema (JSON text, or a dict)."""
        if isinstance(json_schema, dict):
            json_schema = json.dumps(json_schema)
        return cls.from_string(json_schema_to_gbnf(json_schema), verbose=verbose)

    def __repr__(self) -> str:
        first = self._grammar.strip().splitlines()[0] if self._grammar.strip() else ""
        return f"<LlamaGrammar {first[:60]!r}{'...' if len(first) > 60 else ''}>"
