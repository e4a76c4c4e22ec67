"""cyllama.grammar: JSON Schema -> GBNF, checked three ways.

* the grammar text against llama.cpp's own converter tests (tests/test-json-schema-to-grammar.cpp
  of the pinned llama.cpp, cases copied verbatim; the whole file is run too when its source is in
  the build cache);
* every grammar against llama.cpp's GBNF parser (a grammar sampler on the real model's vocab);
* generation on the real model (SmolLM2-135M, greedy): the output parses and follows the schema.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import run_isolated
from cyllama import LlamaContext, LlamaContextParams, LlamaSampler, _assets, llama_batch_get_one
from cyllama._generation import StreamStats, stream_text
from cyllama.grammar import JSON_GRAMMAR, json_grammar_for_response_format, json_schema_to_grammar

# --------------------------------------------------------------------------------------------
# expected grammars, from llama.cpp's tests/test-json-schema-to-grammar.cpp (None: must fail)
# --------------------------------------------------------------------------------------------

_CPP_CASES = [
    ('min 0',
     r'''{"type": "integer", "minimum": 0}''',
     r'''
root ::= ([0] | [1-9] [0-9]{0,15})
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min 3',
     r'''{"type": "integer", "minimum": 3}''',
     r'''
root ::= ([1-2] [0-9]{1,15} | [3-9] [0-9]{0,15})
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min 25',
     r'''{"type": "integer", "minimum": 25}''',
     r'''
root ::= ([1] [0-9]{2,15} | [2] ([0-4] [0-9]{1,14} | [5-9] [0-9]{0,14}) | [3-9] [0-9]{1,15})
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('max 30',
     r'''{"type": "integer", "maximum": 30}''',
     r'''
root ::= ("-" [1-9] [0-9]{0,15} | [0-9] | ([1-2] [0-9] | [3] "0"))
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min -5',
     r'''{"type": "integer", "minimum": -5}''',
     r'''
root ::= ("-" ([0-5]) | [0] | [1-9] [0-9]{0,15})
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min -123',
     r'''{"type": "integer", "minimum": -123}''',
     r'''
root ::= ("-" ([0-9] | ([1-8] [0-9] | [9] [0-9]) | "1" ([0-1] [0-9] | [2] [0-3])) | [0] | [1-9] [0-9]{0,15})
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('max -5',
     r'''{"type": "integer", "maximum": -5}''',
     r'''
root ::= ("-" ([0-4] [0-9]{1,15} | [5-9] [0-9]{0,15}))
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('max 100',
     r'''{"type": "integer", "maximum": 100}''',
     r'''
root ::= ("-" [1-9] [0-9]{0,15} | [0-9] | ([1-8] [0-9] | [9] [0-9]) | "100")
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min 15 max 300',
     r'''{"type": "integer", "minimum": 15, "maximum": 300}''',
     r'''
root ::= (([1] ([5-9]) | [2-9] [0-9]) | ([1-2] [0-9]{2} | [3] "00"))
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min -123 max 42',
     r'''{"type": "integer", "minimum": -123, "maximum": 42}''',
     r'''
root ::= ("-" ([0-9] | ([1-8] [0-9] | [9] [0-9]) | "1" ([0-1] [0-9] | [2] [0-3])) | [0-9] | ([1-3] [0-9] | [4] [0-2]))
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('min -10 max 10',
     r'''{"type": "integer", "minimum": -10, "maximum": 10}''',
     r'''
root ::= ("-" ([0-9] | "10") | [0-9] | "10")
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('unknown type',
     r'''{"type": "kaboom"}''',
     None),
    ('invalid type',
     r'''{"type": 123}''',
     None),
    ('exotic formats',
     r'''{"items": [{"format": "date"}, {"format": "uuid"}, {"format": "time"}, {"format": "date-time"}]}''',
     r'''
date ::= [0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )
date-string ::= "\"" date "\""
date-time ::= date "T" time
date-time-string ::= "\"" date-time "\""
root ::= "[" space tuple-0 "," space uuid "," space tuple-2 "," space tuple-3 space "]"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
time ::= ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )
time-string ::= "\"" time "\""
tuple-0 ::= date-string
tuple-2 ::= time-string
tuple-3 ::= date-time-string
uuid ::= "\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\""
'''),
    ('string w/ min & max length',
     r'''{"type": "string", "minLength": 1, "maxLength": 4}''',
     r'''
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
root ::= "\"" char{1,4} "\""
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('non-string enum',
     r'''{"enum": ["red", "amber", "green", null, 42, ["foo"]]}''',
     r'''
root ::= ("\"red\"" | "\"amber\"" | "\"green\"" | "null" | "42" | "[\"foo\"]")
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('nullable string array',
     r'''{"type": ["array", "null"], "prefixItems": {"type": "string"}}''',
     r'''
alternative-0 ::= "[" space (string ("," space string)*)? space "]"
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
null ::= "null"
root ::= alternative-0 | null
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('tuple2',
     r'''{"prefixItems": [{"type": "string"}, {"type": "number"}]}''',
     r'''
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
root ::= "[" space string "," space number space "]"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('min + maxItems',
     r'''{"items": {"type": ["number", "integer"]}, "minItems": 3, "maxItems": 5}''',
     r'''
decimal-part ::= [0-9]{1,16}
integer ::= ("-"? integral-part)
integral-part ::= [0] | [1-9] [0-9]{0,15}
item ::= number | integer
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
root ::= "[" space item ("," space item){2,4} space "]"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('maxItems 0',
     r'''{"items": {"type": "boolean"}, "maxItems": 0}''',
     r'''
boolean ::= ("true" | "false")
root ::= "[" space  space "]"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('maxItems 2',
     r'''{"items": {"type": "boolean"}, "maxItems": 2}''',
     r'''
boolean ::= ("true" | "false")
root ::= "[" space (boolean ("," space boolean)?)? space "]"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('simple regexp',
     r'''{"type": "string", "pattern": "^abc?d*efg+(hij)?kl$"}''',
     r'''
root ::= "\"" ("ab" "c"? "d"* "ef" "g"+ ("hij")? "kl") "\""
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('regexp escapes',
     r'''{"type": "string", "pattern": "^\\[\\]\\{\\}\\(\\)\\|\\+\\*\\?$"}''',
     r'''
root ::= "\"" ("[]{}()|+*?") "\""
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('regexp with top-level alternation',
     r'''{"type": "string", "pattern": "^A|B|C|D$"}''',
     r'''
root ::= "\"" ("A" | "B" | "C" | "D") "\""
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('regexp',
     r'''{"type": "string", "pattern": "^(\\([0-9]{1,3}\\))?[0-9]{3}-[0-9]{4} a{3,5}nd...$"}''',
     r'''
dot ::= [^\x0A\x0D]
root ::= "\"" (("(" root-1{1,3} ")")? root-1{3,3} "-" root-1{4,4} " " "a"{3,5} "nd" dot dot dot) "\""
root-1 ::= [0-9]
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('regexp with non-capturing group',
     r'''{"type": "string", "pattern": "^(?:foo|bar)baz$"}''',
     r'''
root ::= "\"" (("foo" | "bar") "baz") "\""
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('required props in original order',
     r'''{"type": "object", "properties": {"b": {"type": "string"}, "c": {"type": "string"}, "a": {"type": "string"}}, "required": ["a", "b", "c"], "additionalProperties": false, "definitions": {}}''',
     r'''
a-kv ::= "\"a\"" space ":" space string
b-kv ::= "\"b\"" space ":" space string
c-kv ::= "\"c\"" space ":" space string
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
root ::= "{" space b-kv "," space c-kv "," space a-kv space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('N optional props',
     r'''{"properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}}, "additionalProperties": false}''',
     r'''
a-kv ::= "\"a\"" space ":" space string
a-rest ::= ( "," space b-kv )? b-rest
b-kv ::= "\"b\"" space ":" space string
b-rest ::= ( "," space c-kv )?
c-kv ::= "\"c\"" space ":" space string
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
root ::= "{" space  (a-kv a-rest | b-kv b-rest | c-kv )? space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('required + optional props each in original order',
     r'''{"properties": {"b": {"type": "string"}, "a": {"type": "string"}, "d": {"type": "string"}, "c": {"type": "string"}}, "required": ["a", "b"], "additionalProperties": false}''',
     r'''
a-kv ::= "\"a\"" space ":" space string
b-kv ::= "\"b\"" space ":" space string
c-kv ::= "\"c\"" space ":" space string
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
d-kv ::= "\"d\"" space ":" space string
d-rest ::= ( "," space c-kv )?
root ::= "{" space b-kv "," space a-kv ( "," space ( d-kv d-rest | c-kv ) )? space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('additional props',
     r'''{"type": "object", "additionalProperties": {"type": "array", "items": {"type": "number"}}}''',
     r'''
additional-kv ::= string ":" space additional-value
additional-value ::= "[" space (number ("," space number)*)? space "]"
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
root ::= "{" space  (additional-kv ( "," space additional-kv )* )? space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('required + additional props',
     r'''{"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"], "additionalProperties": {"type": "string"}}''',
     r'''
a-kv ::= "\"a\"" space ":" space number
additional-k ::= ["] ( [a] char+ | [^"a] char* )? ["]
additional-kv ::= additional-k ":" space string
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
root ::= "{" space a-kv ( "," space ( additional-kv ( "," space additional-kv )* ) )? space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('required + optional + additional props',
     r'''{"type": "object", "properties": {"and": {"type": "number"}, "also": {"type": "number"}}, "required": ["and"], "additionalProperties": {"type": "number"}}''',
     r'''
additional-k ::= ["] ( [a] ([l] ([s] ([o] char+ | [^"o] char*) | [^"s] char*) | [n] ([d] char+ | [^"d] char*) | [^"ln] char*) | [^"a] char* )? ["]
additional-kv ::= additional-k ":" space number
also-kv ::= "\"also\"" space ":" space number
also-rest ::= ( "," space additional-kv )*
and-kv ::= "\"and\"" space ":" space number
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
root ::= "{" space and-kv ( "," space ( also-kv also-rest | additional-kv ( "," space additional-kv )* ) )? space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('top-level $ref',
     r'''{"$ref": "#/definitions/foo", "definitions": {"foo": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false}}}''',
     r'''
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
ref-definitions-foo ::= "{" space ref-definitions-foo-a-kv space "}"
ref-definitions-foo-a-kv ::= "\"a\"" space ":" space string
root ::= ref-definitions-foo
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('anyOf',
     r'''{"anyOf": [{"$ref": "#/definitions/foo"}, {"$ref": "#/definitions/bar"}], "definitions": {"foo": {"properties": {"a": {"type": "number"}}}, "bar": {"properties": {"b": {"type": "number"}}}}, "type": "object"}''',
     r'''
alternative-0 ::= ref-definitions-foo
alternative-1 ::= ref-definitions-bar
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
ref-definitions-bar ::= "{" space  (ref-definitions-bar-b-kv )? space "}"
ref-definitions-bar-b-kv ::= "\"b\"" space ":" space number
ref-definitions-foo ::= "{" space  (ref-definitions-foo-a-kv )? space "}"
ref-definitions-foo-a-kv ::= "\"a\"" space ":" space number
root ::= alternative-0 | alternative-1
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('mix of allOf, anyOf and $ref (similar to https://json.schemastore.org/tsconfig.json)',
     r'''{"allOf": [{"$ref": "#/definitions/foo"}, {"$ref": "#/definitions/bar"}, {"anyOf": [{"$ref": "#/definitions/baz"}, {"$ref": "#/definitions/bam"}]}], "definitions": {"foo": {"properties": {"a": {"type": "number"}}}, "bar": {"properties": {"b": {"type": "number"}}}, "bam": {"properties": {"c": {"type": "number"}}}, "baz": {"properties": {"d": {"type": "number"}}}}, "type": "object"}''',
     r'''
a-kv ::= "\"a\"" space ":" space number
b-kv ::= "\"b\"" space ":" space number
c-kv ::= "\"c\"" space ":" space number
d-kv ::= "\"d\"" space ":" space number
d-rest ::= ( "," space c-kv )?
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
root ::= "{" space a-kv "," space b-kv ( "," space ( d-kv d-rest | c-kv ) )? space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('allOf with multiple enum schemas',
     r'''{"allOf": [{"$ref": "#/definitions/foo"}, {"$ref": "#/definitions/bar"}], "definitions": {"foo": {"type": "string", "enum": ["a", "b", "c"]}, "bar": {"type": "string", "enum": ["b", "c", "d"]}}}''',
     r'''
root ::= ("\"b\"" | "\"c\"")
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('conflicting names',
     r'''{"type": "object", "properties": {"number": {"type": "object", "properties": {"number": {"type": "object", "properties": {"root": {"type": "number"}}, "required": ["root"], "additionalProperties": false}}, "required": ["number"], "additionalProperties": false}}, "required": ["number"], "additionalProperties": false, "definitions": {}}''',
     r'''
decimal-part ::= [0-9]{1,16}
integral-part ::= [0] | [1-9] [0-9]{0,15}
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?
number- ::= "{" space number-number-kv space "}"
number-kv ::= "\"number\"" space ":" space number-
number-number ::= "{" space number-number-root-kv space "}"
number-number-kv ::= "\"number\"" space ":" space number-number
number-number-root-kv ::= "\"root\"" space ":" space number
root ::= "{" space number-kv space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('literal string with escapes',
     r'''{"properties": {"code": {"const": " \r \n \" \\ ", "description": "Generated code", "title": "Code", "type": "string"}}, "required": ["code"], "title": "DecoderResponse", "type": "object"}''',
     r'''
code ::= "\" \\r \\n \\\" \\\\ \""
code-kv ::= "\"code\"" space ":" space code
root ::= "{" space code-kv space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
'''),
    ('regexp with unsupported shorthand',
     r'''{"type": "string", "pattern": "^[0-9]{3}\\w$"}''',
     r'''
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
root ::= string
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
    ('regexp with unbalanced parentheses',
     r'''{"type": "string", "pattern": "^(a$"}''',
     None),
    ('unsupported regexp in a property',
     r'''{"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=a)a$"}}, "required": ["a"], "additionalProperties": false}''',
     r'''
a ::= string
a-kv ::= "\"a\"" space ":" space a
char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})
root ::= "{" space a-kv space "}"
space ::= | " " | "\n"{1,2} [ \t]{0,20}
string ::= "\"" char* "\""
'''),
]


def _expected(text: str) -> str:
    return text.strip("\n") + "\n"


def _convert(schema: Any, **kw: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsupported patterns warn; checked on their own below
        return json_schema_to_grammar(schema, **kw)


@pytest.mark.parametrize("name,schema,expected", _CPP_CASES, ids=[c[0] for c in _CPP_CASES])
def test_matches_llama_cpp_converter(name: str, schema: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            _convert(schema)
    else:
        assert _convert(schema) == _expected(expected)
        assert _convert(json.loads(schema)) == _expected(expected)  # dict and JSON text alike


def _cpp_test_file() -> Path | None:
    pattern = "src/*/llama_cpp_python-*/vendor/llama.cpp/tests/test-json-schema-to-grammar.cpp"
    found = sorted(_assets.cache_dir().glob(pattern))
    return found[0] if found else None


def _parse_cpp_cases(text: str) -> list[tuple[str, str, str | None]]:
    body = text[text.index("static void test_all"):text.index("int main()")]
    lit = r'(?:R"""\((.*?)\)"""|"((?:[^"\\]|\\.)*)")'
    pat = re.compile(r'test\(\{\s*(SUCCESS|FAILURE),\s*' + lit + r',\s*' + lit + r',\s*' + lit + r'\s*\}\);', re.S)

    def s(raw: str | None, quoted: str | None) -> str:
        return raw if raw is not None else json.loads('"' + (quoted or "") + '"')

    cases = []
    for m in pat.finditer(body):
        grammar = s(m.group(6), m.group(7)).strip(" \n\r\t")
        grammar = re.sub(r"(^|\n)[ \t]+", r"\1", grammar)
        cases.append((s(m.group(2), m.group(3)), s(m.group(4), m.group(5)),
                      grammar + "\n" if m.group(1) == "SUCCESS" else None))
    return cases


def test_matches_every_case_of_the_pinned_llama_cpp() -> None:
    path = _cpp_test_file()
    if path is None:
        pytest.skip("llama.cpp sources are not in the build cache")
    cases = _parse_cpp_cases(path.read_text(encoding="utf-8"))
    assert len(cases) >= 60
    wrong = []
    for name, schema, expected in cases:
        try:
            got: str | None = _convert(schema)
        except ValueError:
            got = None
        if got != expected:
            wrong.append(f"{name}:\n--- expected\n{expected}--- got\n{got}")
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------------------------
# llama.cpp's GBNF parser accepts every grammar
# --------------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ENUM = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "color": {"enum": ["red", "green", "blue"]}},
    "required": ["name", "color"],
    "additionalProperties": False,
}
SCORES = {
    "type": "object",
    "properties": {"scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                              "minItems": 2, "maxItems": 4}},
    "required": ["scores"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "address"],
    "additionalProperties": False,
}
NULLABLE_AND_FORMAT = {
    "type": "object",
    "properties": {"name": {"type": ["string", "null"], "maxLength": 12}, "ok": {"type": "boolean"},
                   "born": {"type": "string", "format": "date"}},
    "required": ["name", "ok", "born"],
    "additionalProperties": False,
}
REFS = {
    "$defs": {"person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}},
                         "required": ["name"], "additionalProperties": False}},
    "type": "object",
    "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 1, "maxItems": 2}},
    "required": ["people"],
    "additionalProperties": False,
}
INT_LIST = {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "minItems": 2, "maxItems": 3}

EXTRA_SCHEMAS: dict[str, Any] = {
    "person": PERSON,
    "enum": ENUM,
    "scores": SCORES,
    "nested": NESTED,
    "nullable_and_format": NULLABLE_AND_FORMAT,
    "refs": REFS,
    "int_list": INT_LIST,
    "recursive": {"$ref": "#/definitions/node", "definitions": {"node": {
        "type": "object", "properties": {"value": {"type": "number"}, "next": {"anyOf": [{"$ref": "#/definitions/node"}, {"type": "null"}]}},
        "required": ["value"]}}},
    "odd_keys": {"type": "object", "properties": {"a-b": {"type": "string"}, "x]": {"type": "integer"}, "^c": {"type": "null"},
                                                  'q"\\': {"type": "boolean"}, "é ü": {"const": "ñ"}},
                 "additionalProperties": {"type": "number"}},
    "every_format": {"type": "array", "prefixItems": [{"type": "string", "format": f} for f in ("date", "time", "date-time", "uuid", "uuid4", "email")]},
    "patterns": {"type": "array", "prefixItems": [{"type": "string", "pattern": p} for p in (
        r"^[a-z]+@[a-z]+\.com$", r"^(\+1 )?\([0-9]{3}\) [0-9]{3}-[0-9]{4}$", r"^a.b$", r"^x{2,}y{,3}$", r"^\x41\u00e9\"$")]},
    "exclusive_bounds": {"type": "integer", "exclusiveMinimum": -1.5, "exclusiveMaximum": 1000},
    "big_bounds": {"type": "integer", "minimum": -9007199254740991, "maximum": 9007199254740991},
    # one bound of 16+ digits: llama.cpp's converter emits [0-9]{16,15} here, which its own GBNF
    # parser turns into a 2**64-iteration loop (the process runs out of memory)
    "huge_min": {"type": "integer", "minimum": 6187328071158548},
    "huge_negative_max": {"type": "integer", "maximum": -61873280711585480},
    "huge_negative_min": {"type": "integer", "minimum": -61873280711585480},
    "all_of": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                         {"type": "object", "properties": {"b": {"type": "integer"}}}]},
    "one_of_const": {"oneOf": [{"const": {"k": [1, 2.5, None, True]}}, {"const": "x\ny"}, {"enum": [1, "two", None]}]},
    "empty": {},
    "empty_tuple": {"type": "array", "prefixItems": []},
}

_ALL_GRAMMARS: dict[str, str] = {
    **{f"cpp:{name}": expected for name, _, expected in _CPP_CASES if expected is not None},
    **{f"extra:{name}": _convert(schema) for name, schema in EXTRA_SCHEMAS.items()},
    "extra:prop_order": _convert(PERSON, prop_order=["age"]),
    "extra:dotall": _convert({"type": "string", "pattern": "^a.b$"}, dotall=True),
    "JSON_GRAMMAR": JSON_GRAMMAR,
}


def test_every_grammar_parses_in_llama_cpp(model) -> None:
    vocab = model.get_vocab()
    rejected = {}
    for name, grammar in _ALL_GRAMMARS.items():
        for lo, hi in re.findall(r"\{([0-9]+),([0-9]+)\}", grammar):
            # llama.cpp's GBNF parser computes max - min unsigned: {16,15} would exhaust memory
            assert int(lo) <= int(hi), f"{name}: empty repetition {{{lo},{hi}}}\n{grammar}"
        try:
            LlamaSampler(vocab=vocab).add_grammar(grammar).close()
        except ValueError as e:
            rejected[name] = f"{e}\n{grammar}"
    assert not rejected, rejected


def test_bad_raw_grammar_raises(model) -> None:
    vocab = model.get_vocab()
    for bad in ("root ::= undefined-rule", 'root ::= "unterminated', "root ::= [a-", "other ::= \"x\"",
                "root ::= root \"x\"", "root ::= \"\\q\""):
        with pytest.raises(ValueError, match="grammar"):
            LlamaSampler(vocab=vocab).add_grammar(bad)


PRELUDE = """
import os
os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort should not wait for gdb
from cyllama import LlamaContext, LlamaContextParams, LlamaModel, LlamaSampler, llama_batch_get_one, _assets
model = LlamaModel(_assets.default_model_path())
ctx = LlamaContext(model, LlamaContextParams(n_ctx=256))
vocab = model.get_vocab()
ctx.decode(llama_batch_get_one(vocab.tokenize("Hello")))
"""


def _isolated(body: str):
    return run_isolated(PRELUDE + textwrap.dedent(body))


def test_bad_deferred_grammar_raises_at_first_sample(model, ctx) -> None:
    # without a vocab the grammar is only parsed at the first sample(): a Python exception there too
    vocab = model.get_vocab()
    ctx.decode(llama_batch_get_one(vocab.tokenize("Hello")))
    sampler = LlamaSampler().add_grammar("root ::= [").add_greedy()
    with pytest.raises(ValueError, match="grammar"):
        sampler.sample(ctx, -1)
    sampler.close()


def test_sampling_again_after_a_bad_deferred_grammar_does_not_crash() -> None:
    proc = _isolated("""
        s = LlamaSampler().add_grammar("root ::= [").add_greedy()
        for _ in range(2):
            try:
                s.sample(ctx, -1)
            except ValueError:
                pass
        print("SURVIVED")
    """)
    assert "SURVIVED" in proc.stdout


def test_accepting_a_token_the_grammar_forbids_does_not_crash() -> None:
    proc = _isolated("""
        s = LlamaSampler(vocab=vocab).add_grammar('root ::= "yes"').add_greedy()
        try:
            s.accept(vocab.tokenize("no", add_special=False)[0])
        except ValueError:
            pass
        print("SURVIVED")
    """)
    assert "SURVIVED" in proc.stdout


# --------------------------------------------------------------------------------------------
# generation on the real model
# --------------------------------------------------------------------------------------------

def _resolve(root: dict, ref: str) -> Any:
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[int(part)] if isinstance(target, list) else target[part]
    return target


def _is_type(value: Any, typ: str) -> bool:
    return {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[typ]


def validate(value: Any, schema: dict, root: dict | None = None, path: str = "$") -> None:
    """A small JSON Schema validator for the keywords these tests use; AssertionError on a mismatch."""
    root = schema if root is None else root
    if "$ref" in schema:
        return validate(value, _resolve(root, schema["$ref"]), root, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            errors = []
            for alt in schema[key]:
                try:
                    return validate(value, alt, root, path)
                except AssertionError as e:
                    errors.append(str(e))
            raise AssertionError(f"{path}: matches no alternative of {key}: {errors}")
    for sub in schema.get("allOf", []):
        validate(value, sub, root, path)
    typ = schema.get("type")
    if isinstance(typ, list):
        assert any(_is_type(value, t) for t in typ), f"{path}: {value!r} is none of {typ}"
    elif typ is not None:
        assert _is_type(value, typ), f"{path}: {value!r} is not {typ}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), f"{path}: {value!r} too short"
        assert len(value) <= schema.get("maxLength", math.inf), f"{path}: {value!r} too long"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{path}: {value!r} does not match {schema['pattern']}"
        if schema.get("format") == "date":
            assert re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", value), f"{path}: {value!r}"
    if _is_type(value, "number"):
        assert value >= schema.get("minimum", -math.inf), f"{path}: {value} < minimum"
        assert value <= schema.get("maximum", math.inf), f"{path}: {value} > maximum"
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{path}: too few items"
        assert len(value) <= schema.get("maxItems", math.inf), f"{path}: too many items"
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if isinstance(sub, dict):
                validate(item, sub, root, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{path}: missing required {name!r}"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                validate(item, props[name], root, f"{path}.{name}")
            elif extra is False:
                raise AssertionError(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                validate(item, extra, root, f"{path}.{name}")


def test_validator_catches_mismatches() -> None:
    validate({"name": "Al", "age": 3}, PERSON)
    for bad in ({"name": "Al"}, {"name": "Al", "age": "3"}, {"name": "Al", "age": 200}, {"name": "x" * 21, "age": 1},
                {"name": "Al", "age": 3, "extra": 1}, [1]):
        with pytest.raises(AssertionError):
            validate(bad, PERSON)
    with pytest.raises(AssertionError):
        validate({"scores": [1]}, SCORES)
    with pytest.raises(AssertionError):
        validate({"people": [{"name": 5}]}, REFS)


def generate(model, grammar: str, prompt: str, max_tokens: int = 120) -> tuple[str, StreamStats]:
    ctx = LlamaContext(model, LlamaContextParams(n_ctx=512, n_batch=512))
    try:
        vocab = model.get_vocab()
        sampler = LlamaSampler(vocab=vocab).add_grammar(grammar).add_greedy()
        stats = StreamStats()
        text = "".join(stream_text(ctx, sampler, vocab.tokenize(prompt), max_tokens, stats))
        sampler.close()
        return text, stats
    finally:
        ctx.close()


PERSON_PROMPT = "Give me a JSON object describing a person:"


@pytest.mark.parametrize("schema", [PERSON, ENUM, SCORES, NESTED, NULLABLE_AND_FORMAT, REFS],
                         ids=["person", "enum", "int_array", "nested", "nullable_and_date", "refs"])
def test_generation_follows_the_schema(model, schema: dict) -> None:
    text, stats = generate(model, json_schema_to_grammar(schema), PERSON_PROMPT)
    assert stats.finish_reason == "stop", f"did not finish within the grammar: {text!r}"
    value = json.loads(text)
    validate(value, schema)


def test_generation_top_level_array(model) -> None:
    text, stats = generate(model, json_schema_to_grammar(INT_LIST), "Give me a JSON list of three numbers:")
    assert stats.finish_reason == "stop", text
    value = json.loads(text)
    validate(value, INT_LIST)
    assert 2 <= len(value) <= 3


def test_generation_prop_order(model) -> None:
    text, stats = generate(model, json_schema_to_grammar(PERSON, prop_order=["age", "name"]), PERSON_PROMPT)
    assert stats.finish_reason == "stop", text
    value = json.loads(text)
    validate(value, PERSON)
    assert list(value) == ["age", "name"]


def test_generation_json_object(model) -> None:
    grammar = json_grammar_for_response_format({"type": "json_object"})
    assert grammar == JSON_GRAMMAR
    text, stats = generate(model, grammar, PERSON_PROMPT)
    assert stats.finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_generation_response_format_json_schema(model) -> None:
    grammar = json_grammar_for_response_format(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": ENUM, "strict": True}})
    text, stats = generate(model, grammar, PERSON_PROMPT)
    assert stats.finish_reason == "stop", text
    validate(json.loads(text), ENUM)


# --------------------------------------------------------------------------------------------
# the API itself
# --------------------------------------------------------------------------------------------

def test_json_grammar_is_the_object_schema() -> None:
    assert json_schema_to_grammar({"type": "object"}) == JSON_GRAMMAR
    assert "root ::= object\n" in JSON_GRAMMAR


def test_person_grammar_text() -> None:
    assert json_schema_to_grammar(PERSON) == (
        'age ::= ([0-9] | ([1-8] [0-9] | [9] [0-9]) | "1" ([0-4] [0-9] | [5] "0"))\n'
        'age-kv ::= "\\"age\\"" space ":" space age\n'
        'char ::= [^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})\n'
        'name ::= "\\"" char{0,20} "\\""\n'
        'name-kv ::= "\\"name\\"" space ":" space name\n'
        'root ::= "{" space name-kv "," space age-kv space "}"\n'
        'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}\n'
    )


def test_prop_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"},
                                               "d": {"type": "string"}},
              "required": ["a", "b", "c"], "additionalProperties": False}
    g = json_schema_to_grammar(schema, prop_order=["c", "d", "a"])
    assert 'root ::= "{" space c-kv "," space a-kv "," space b-kv ( "," space ( d-kv ) )? space "}"\n' in g
    assert json_schema_to_grammar(schema, prop_order=[]) == json_schema_to_grammar(schema)
    with pytest.raises(ValueError, match="prop_order"):
        json_schema_to_grammar(schema, prop_order="abc")  # type: ignore[arg-type]


def test_dotall() -> None:
    schema = {"type": "string", "pattern": "^a.b$"}
    assert "dot ::= [^\\x0A\\x0D]\n" in json_schema_to_grammar(schema)
    assert "dot ::= [\\U00000000-\\U0010FFFF]\n" in json_schema_to_grammar(schema, dotall=True)


def test_unsupported_pattern_warns_and_accepts_any_string() -> None:
    with pytest.warns(UserWarning, match="not supported"):
        g = json_schema_to_grammar({"type": "string", "pattern": r"^\d+$"})
    assert "root ::= string\n" in g


def test_not_strings_escapes_class_characters() -> None:
    g = json_schema_to_grammar({"type": "object", "properties": {"a-b": {}, "]": {}, "^": {}, "\\": {}},
                                "additionalProperties": {"type": "integer"}})
    key_rule = next(line for line in g.splitlines() if line.startswith("additional-k ::="))
    assert key_rule == ('additional-k ::= ["] ( [\\\\] char+ | [\\]] char+ | [\\x5E] char+ | '
                        '[a] ([\\-] ([b] char+ | [^"b] char*) | [^"\\-] char*) | [^"\\\\\\]\\x5Ea] char* )? ["]')


@pytest.mark.parametrize("schema,match", [
    ({"type": "kaboom"}, "unrecognized type"),
    ({"type": 123}, "type must be"),
    ({"type": []}, "must not be empty"),
    ([], "must be an object"),
    ("[1, 2]", "must be an object"),
    ("{not json", "not valid JSON"),
    ({"properties": {"a": 5}}, r"#/properties/a: schema must be an object"),
    ({"properties": [1]}, "properties must be an object"),
    ({"type": "object", "additionalProperties": 5}, "additionalProperties"),
    ({"$ref": "https://example.com/schema.json"}, "only references into the same document"),
    ({"$ref": "other.json#/definitions/a"}, "only references into the same document"),
    ({"$ref": "#/definitions/missing", "definitions": {}}, "cannot resolve"),
    ({"$ref": 5}, r"\$ref must be a string"),
    ({"enum": []}, "enum must be a non-empty array"),
    ({"enum": "abc"}, "enum must be a non-empty array"),
    ({"anyOf": []}, "must not be empty"),
    ({"oneOf": {"type": "string"}}, "must be an array"),
    ({"type": "array", "minItems": -1}, "minItems"),
    ({"type": "array", "maxItems": "3"}, "maxItems"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems"),
    ({"type": "string", "maxLength": 1.5}, "maxLength"),
    ({"type": "string", "minLength": 4, "maxLength": 2}, "minLength"),
    ({"type": "string", "pattern": 5}, "pattern must be a string"),
    ({"type": "string", "pattern": "^(a$"}, "unbalanced parentheses"),
    ({"type": "string", "pattern": "^a{3,1}$"}, "min repeat"),
    ({"type": "string", "format": 5}, "format must be a string"),
    ({"type": "integer", "minimum": "0"}, "minimum must be a number"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
    ({"type": "integer", "maximum": 2**70}, "supported range"),
    ({"const": float("nan")}, "JSON"),
    ({"const": {1, 2}}, "JSON"),
])
def test_bad_schemas_raise_value_error(schema: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        json_schema_to_grammar(schema)


def test_local_refs_to_definitions_and_defs() -> None:
    item = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    g1 = json_schema_to_grammar({"$ref": "#/definitions/item", "definitions": {"item": item}})
    g2 = json_schema_to_grammar({"$ref": "#/$defs/item", "$defs": {"item": item}})
    assert "root ::= ref-definitions-item\n" in g1
    assert "root ::= ref-defs-item\n" in g2  # "/$" is one "-"


def test_response_format() -> None:
    assert json_grammar_for_response_format({"type": "text"}) is None
    assert json_grammar_for_response_format({"type": "json_object"}) == JSON_GRAMMAR
    assert json_grammar_for_response_format({"type": "json_object", "schema": {}}) == JSON_GRAMMAR
    assert json_grammar_for_response_format({"type": "json_object", "schema": PERSON}) == json_schema_to_grammar(PERSON)
    assert json_grammar_for_response_format(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}}) == json_schema_to_grammar(PERSON)
    assert json_grammar_for_response_format({"type": "json_schema", "json_schema": {"name": "p"}}) == JSON_GRAMMAR
    for bad in ({"type": "xml"}, {}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": "x"},
                {"type": "json_object", "schema": 5}, {"type": "json_schema", "json_schema": {"schema": {"type": "kaboom"}}},
                "json_object", None):
        with pytest.raises(ValueError):
            json_grammar_for_response_format(bad)  # type: ignore[arg-type]


def test_raw_grammar_with_impossible_repetition_is_rejected() -> None:
    from cyllama import LlamaSampler

    with pytest.raises(ValueError, match="max < min"):
        LlamaSampler().add_grammar('root ::= "a"{5,3}')
    with pytest.raises(ValueError, match="too large"):
        LlamaSampler().add_grammar('root ::= "a"{0,99999999999}')
