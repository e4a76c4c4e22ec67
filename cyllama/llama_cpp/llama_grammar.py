"""``LlamaGrammar``: a GBNF grammar that constrains sampling (llama-cpp-python's API).

The grammar text is parsed by llama.cpp when generation starts; a grammar it rejects raises
``ValueError`` then. JSON schemas are converted by :func:`cyllama.grammar.json_schema_to_grammar`
(llama.cpp's converter, the rules llama-server makes); :class:`SchemaConverter` gives it
llama-cpp-python's converter interface. The bundled grammars (``JSON_GBNF``, ``C_GBNF``...) are
llama.cpp's ``grammars/`` files as llama-cpp-python ships them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import grammar as _grammar

__all__ = ["LlamaGrammar", "LLAMA_GRAMMAR_DEFAULT_ROOT", "JSON_GBNF", "JSON_ARR_GBNF", "LIST_GBNF",
           "ARITHMETIC_GBNF", "C_GBNF", "CHESS_GBNF", "JAPANESE_GBNF", "json_schema_to_gbnf", "SchemaConverter",
           "BuiltinRule", "SPACE_RULE", "PRIMITIVE_RULES", "STRING_FORMAT_RULES", "RESERVED_NAMES", "DOT", "DOTALL",
           "INVALID_RULE_CHARS_RE", "GRAMMAR_LITERAL_ESCAPE_RE", "GRAMMAR_LITERAL_ESCAPES", "NON_LITERAL_SET",
           "ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS"]

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

C_GBNF = r"""
root ::= (declaration)*

declaration ::= dataType identifier "(" parameter? ")" "{" statement* "}"

dataType  ::= "int" ws | "float" ws | "char" ws
identifier ::= [a-zA-Z_] [a-zA-Z_0-9]*

parameter ::= dataType identifier

statement ::=
    ( dataType identifier ws "=" ws expression ";" ) |
    ( identifier ws "=" ws expression ";" ) |
    ( identifier ws "(" argList? ")" ";" ) |
    ( "return" ws expression ";" ) |
    ( "while" "(" condition ")" "{" statement* "}" ) |
    ( "for" "(" forInit ";" ws condition ";" ws forUpdate ")" "{" statement* "}" ) |
    ( "if" "(" condition ")" "{" statement* "}" ("else" "{" statement* "}")? ) |
    ( singleLineComment ) |
    ( multiLineComment )

forInit ::= dataType identifier ws "=" ws expression | identifier ws "=" ws expression
forUpdate ::= identifier ws "=" ws expression

condition ::= expression relationOperator expression
relationOperator ::= ("<=" | "<" | "==" | "!=" | ">=" | ">")

expression ::= term (("+" | "-") term)*
term ::= factor(("*" | "/") factor)*

factor ::= identifier | number | unaryTerm | funcCall | parenExpression
unaryTerm ::= "-" factor
funcCall ::= identifier "(" argList? ")"
parenExpression ::= "(" ws expression ws ")"

argList ::= expression ("," ws expression)*

number ::= [0-9]+

singleLineComment ::= "//" [^\n]* "\n"
multiLineComment ::= "/*" ( [^*] | ("*" [^/]) )* "*/"

ws ::= ([ \t\n]+)
"""

CHESS_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]*)) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= ([ \t\n] ws)?
"""

# llama-cpp-python ships the same text (a JSON grammar) under both names.
JAPANESE_GBNF = CHESS_GBNF

LIST_GBNF = r"""
root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
"""


def json_schema_to_gbnf(schema: Union[str, dict], prop_order: Optional[List[str]] = None) -> str:
    """A GBNF grammar for a JSON schema (given as JSON text or a dict)."""
    return _grammar.json_schema_to_grammar(schema, prop_order=prop_order)


# -- the JSON-schema converter's building blocks (llama.cpp's, as cyllama.grammar uses them) -----
class BuiltinRule:
    """A primitive rule of the converter: its GBNF ``content`` and the rules it uses (``deps``)."""

    def __init__(self, content: str, deps: Optional[List[str]] = None):
        self.content = content
        self.deps = deps or []

    def __repr__(self) -> str:
        return f"BuiltinRule({self.content!r}, {self.deps!r})"


SPACE_RULE = _grammar._SPACE_RULE
PRIMITIVE_RULES: Dict[str, BuiltinRule] = {k: BuiltinRule(c, list(d)) for k, (c, d) in _grammar._PRIMITIVE_RULES.items()}
STRING_FORMAT_RULES: Dict[str, BuiltinRule] = {k: BuiltinRule(c, list(d))
                                               for k, (c, d) in _grammar._STRING_FORMAT_RULES.items()}
DOTALL = "[\\U00000000-\\U0010FFFF]"
DOT = "[^\\x0A\\x0D]"
RESERVED_NAMES = {"root", "dot", *PRIMITIVE_RULES, *STRING_FORMAT_RULES}
INVALID_RULE_CHARS_RE = _grammar._INVALID_RULE_CHARS_RE
GRAMMAR_LITERAL_ESCAPE_RE = _grammar._GRAMMAR_LITERAL_ESCAPE_RE
GRAMMAR_LITERAL_ESCAPES = dict(_grammar._GRAMMAR_LITERAL_ESCAPES)
NON_LITERAL_SET = set(_grammar._NON_LITERAL_SET)
ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS = set(_grammar._ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS)

_RULE_LINE = re.compile(r"^([A-Za-z0-9-]+) ::= (.*)$")


class SchemaConverter:
    """llama-cpp-python's JSON-schema converter interface on cyllama's converter::

        converter = SchemaConverter(prop_order={"name": 0}, allow_fetch=False, dotall=False, raw_pattern=False)
        schema = converter.resolve_refs(schema, "stdin")
        converter.visit(schema, "")          # "" names the top rule "root"
        gbnf = converter.format_grammar()

    ``visit`` converts a whole schema (local ``$ref`` resolve against the document given to
    :meth:`resolve_refs`); visiting several schemas under different names merges their rules.
    Remote ``$ref`` (``https://...``) are not fetched, and ``raw_pattern`` is not supported: both
    raise ``ValueError``.
    """

    def __init__(self, *, prop_order: Dict[str, int], allow_fetch: bool, dotall: bool, raw_pattern: bool):
        if raw_pattern:
            raise ValueError("raw_pattern=True is not supported (patterns always match JSON strings)")
        self._prop_order = [k for k, _ in sorted(dict(prop_order or {}).items(), key=lambda kv: kv[1])]
        self._allow_fetch = bool(allow_fetch)
        self._dotall = bool(dotall)
        self._raw_pattern = False
        self._rules: Dict[str, str] = {}
        self._root: Optional[dict] = None

    def resolve_refs(self, schema: dict, url: str) -> dict:
        """Checks the ``$ref`` of ``schema`` (local JSON pointers only) and remembers it as the
        document they point into; returns the schema."""
        def visit(n: Any) -> None:
            if isinstance(n, list):
                for x in n:
                    visit(x)
            elif isinstance(n, dict):
                ref = n.get("$ref")
                if isinstance(ref, str) and not ref.startswith("#"):
                    raise ValueError(f"Unsupported ref {ref}: only local references (#/...) are resolved; "
                                     "remote schemas are not fetched")
                for v in n.values():
                    visit(v)

        visit(schema)
        self._root = schema
        return schema

    def visit(self, schema: dict, name: str) -> str:
        """Converts ``schema`` into rules whose top rule is ``name`` (``"root"`` for ``""``) and
        returns that name."""
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be an object (a dict), got {type(schema).__name__}")
        rule = INVALID_RULE_CHARS_RE.sub("-", name) if name else "root"
        doc = schema
        root = self._root
        if root is not None and root is not schema:  # a part of the document: its definitions travel with it
            doc = dict(schema)
            for key in ("$defs", "definitions"):
                if key in root and key not in doc:
                    doc[key] = root[key]
        text = _grammar.json_schema_to_grammar(doc, prop_order=self._prop_order, dotall=self._dotall,
                                               rule_name=rule)
        for line in text.splitlines():
            m = _RULE_LINE.match(line)
            if m is None:
                continue
            key, body = m.groups()
            if self._rules.setdefault(key, body) != body:
                raise ValueError(f"rule {key!r} is defined differently by two visited schemas; "
                                 "visit them under different names")
        return rule

    def format_grammar(self) -> str:
        """The GBNF text of every rule visited so far."""
        return "\n".join(f"{name} ::= {rule}" for name, rule in sorted(self._rules.items()))


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
