"""JSON Schema -> GBNF grammars, for constrained (structured) generation.

A port of llama.cpp's own converter (``common/json-schema-to-grammar.cpp`` and the schema model
in ``common/json-schema.cpp`` of the pinned llama.cpp), producing the same grammar text rule for
rule, so that a schema behaves here as it does in ``llama-server``::

    from cyllama import LlamaSampler
    from cyllama.grammar import json_schema_to_grammar

    gbnf = json_schema_to_grammar({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    })
    sampler = LlamaSampler().add_grammar(gbnf).add_greedy()

Supported: ``type`` (one or a list), ``properties``/``required`` (required properties first, then
the optional ones, each in schema order), ``additionalProperties`` (true, false or a schema),
``items``/``prefixItems`` (a schema or a tuple), ``minItems``/``maxItems``, ``enum``, ``const``,
strings with ``minLength``/``maxLength``/``pattern`` (an anchored ``^...$`` regular expression
turned into grammar rules) and ``format`` (``date``, ``time``, ``date-time``, ``uuid``),
integers with ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``, ``number``,
``boolean``, ``null``, ``anyOf``/``oneOf``/``allOf`` and local ``$ref`` (``#/definitions/...``,
``#/$defs/...``, any JSON pointer into the same document). Keywords it cannot express (``format:
email``, ``multipleOf``, number bounds, ...) are ignored, as in llama.cpp; a ``pattern`` that is
a valid regular expression without a grammar equivalent (``\\d``, lookarounds, no anchors)
degrades to "any string" with a ``UserWarning``. An invalid or unsupported schema raises
``ValueError``.

Deviations from the C++ converter, all for grammars that would otherwise not parse or not match:
characters of property names that are special inside a GBNF character class are escaped in the
"any other key" rule; a regex character is taken whole (the C++ works on bytes); empty bounds
(``minimum > maximum``, ``minItems > maxItems``, ``minLength > maxLength``, ``{5,3}``) raise
``ValueError``; an integer with a single bound of 16 or more digits gets the other bound at
``10**16 - 1`` (the C++ emits an empty repetition there); a JSON pointer in ``$ref`` has its
``~0``/``~1`` escapes decoded.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from typing import Any, Callable, Sequence

__all__ = ["JSON_GRAMMAR", "json_schema_to_grammar", "json_grammar_for_response_format"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1  # "no maximum" in repetitions, as std::numeric_limits<int>::max()
_BOUND_LIMIT = 2**62  # integer bounds stay well inside int64, away from its "unbounded" sentinels


# --------------------------------------------------------------------------------------------
# the schema model (json-schema.cpp): a tree of nodes of the subset the converter understands
# --------------------------------------------------------------------------------------------

class _Node:
    __slots__ = ()
    kind = ""


class _Any(_Node):
    __slots__ = ()
    kind = "any"


class _Ref(_Node):
    __slots__ = ("ref", "target")
    kind = "ref"

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.target: _Node | None = None


class _AnyOf(_Node):
    __slots__ = ("children",)
    kind = "anyOf"

    def __init__(self, children: list[_Node]) -> None:
        self.children = children


class _AllOf(_Node):
    __slots__ = ("children",)
    kind = "allOf"

    def __init__(self, children: list[_Node]) -> None:
        self.children = children


class _Const(_Node):
    __slots__ = ("value",)
    kind = "const"

    def __init__(self, value: Any) -> None:
        self.value = value


class _Enum(_Node):
    __slots__ = ("values",)
    kind = "enum"

    def __init__(self, values: list[Any]) -> None:
        self.values = values


class _Null(_Node):
    __slots__ = ()
    kind = "null"


class _Boolean(_Node):
    __slots__ = ()
    kind = "boolean"


class _Number(_Node):
    __slots__ = ()
    kind = "number"


class _Integer(_Node):
    __slots__ = ("minimum", "maximum")
    kind = "integer"

    def __init__(self) -> None:
        self.minimum = _INT64_MIN  # inclusive; INT64_MIN: unbounded
        self.maximum = _INT64_MAX  # inclusive; INT64_MAX: unbounded


class _String(_Node):
    __slots__ = ("pattern", "format", "min_length", "max_length")
    kind = "string"

    def __init__(self) -> None:
        self.pattern = ""
        self.format = ""  # "", "uuid", "date", "time", "date-time"
        self.min_length = 0
        self.max_length = -1  # -1: unbounded


class _Array(_Node):
    __slots__ = ("items", "min_items", "max_items")
    kind = "array"

    def __init__(self, items: _Node) -> None:
        self.items = items
        self.min_items = 0
        self.max_items = -1  # -1: unbounded


class _Tuple(_Node):
    __slots__ = ("items",)
    kind = "tuple"

    def __init__(self, items: list[_Node]) -> None:
        self.items = items


class _Object(_Node):
    __slots__ = ("properties", "additional")
    kind = "object"

    def __init__(self) -> None:
        self.properties: list[tuple[str, _Node, bool]] = []  # (name, schema, required), schema order
        self.additional: _Node | None = None  # None: no additional properties allowed


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _SchemaBuilder:
    """Builds the node tree from the JSON schema, as common_chat_schema_builder does."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.refs: dict[str, _Node | None] = {}
        self.pending: list[_Ref] = []

    @staticmethod
    def fail(path: str, msg: str) -> None:
        raise ValueError(f"JSON schema error at {path}: {msg}")

    def build(self) -> _Node:
        node = self.node(self.root, "#")
        for ref in self.pending:
            ref.target = self.refs[ref.ref]
        return node

    def count(self, schema: dict, key: str, path: str, default: int) -> int:
        if key not in schema:
            return default
        v = schema[key]
        if not _is_int(v) or v < 0:
            self.fail(path, f"{key} must be a non-negative integer")
        if v > _INT_MAX:
            self.fail(path, f"{key} is too large ({v})")
        return v

    def bound(self, schema: dict, key: str, path: str, round_up: bool) -> int:
        # a fractional bound is rounded inwards, towards the integers it still admits
        v = schema[key]
        if _is_int(v):
            b = v
        elif _is_number(v) and math.isfinite(v):
            b = math.ceil(v) if round_up else math.floor(v)
        else:
            self.fail(path, f"{key} must be a number")
        if not -_BOUND_LIMIT < b < _BOUND_LIMIT:
            self.fail(path, f"{key} is out of the supported range, +-2**62 ({v})")
        return b

    def string_format(self, schema: dict, path: str) -> str:
        if "format" not in schema:
            return ""
        f = schema["format"]
        if not isinstance(f, str):
            self.fail(path, "format must be a string")
        if f in ("date", "time", "date-time"):
            return f
        if f == "uuid" or (len(f) == 5 and f.startswith("uuid") and "1" <= f[4] <= "5"):
            return "uuid"
        return ""

    def resolve(self, ref: str, path: str) -> Any:
        target = self.root
        for sel in ref[1:].split("/")[1:]:
            sel = sel.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and sel in target:
                target = target[sel]
            elif isinstance(target, list):
                idx = int(sel) if sel.isascii() and sel.isdigit() else len(target)
                if idx >= len(target):
                    self.fail(path, f"cannot resolve $ref {ref}, {sel} is out of range")
                target = target[idx]
            else:
                self.fail(path, f"cannot resolve $ref {ref}, {sel} not found")
        return target

    def ref(self, value: Any, path: str) -> _Node:
        if not isinstance(value, str):
            self.fail(path, "$ref must be a string")
        if not value.startswith("#/"):
            self.fail(path, f"unsupported $ref {value}, only references into the same document are supported")
        if value not in self.refs:
            self.refs[value] = None  # reserve the key first, so that a cycle back to this $ref stops here
            self.refs[value] = self.node(self.resolve(value, path), value)
        node = _Ref(value)
        self.pending.append(node)
        return node

    def alternatives(self, cls: Callable[[list[_Node]], _Node], alts: Any, path: str) -> _Node:
        if not isinstance(alts, list):
            self.fail(path, "must be an array of schemas")
        if not alts:
            self.fail(path, "must not be empty")
        return cls([self.node(alt, f"{path}/{i}") for i, alt in enumerate(alts)])

    def object(self, schema: dict, path: str) -> _Node:
        node = _Object()
        required = set()
        if isinstance(schema.get("required"), list):
            required = {n for n in schema["required"] if isinstance(n, str)}
        if "properties" in schema:
            props = schema["properties"]
            if not isinstance(props, dict):
                self.fail(path, "properties must be an object")
            for name, prop in props.items():
                node.properties.append((name, self.node(prop, f"{path}/properties/{name}"), name in required))
        if "additionalProperties" in schema:
            additional = schema["additionalProperties"]
            if isinstance(additional, bool):
                if additional:
                    node.additional = _Any()
            elif isinstance(additional, dict):
                node.additional = self.node(additional, f"{path}/additionalProperties")
            else:
                self.fail(path, "additionalProperties must be a boolean or a schema")
        elif "properties" not in schema:
            node.additional = _Any()  # {"type": "object"} on its own accepts any object
        return node

    def array(self, schema: dict, path: str) -> _Node:
        if "items" in schema or "prefixItems" in schema:
            # "items" wins when both are present; a schema instead of an array is the item schema
            key = "items" if "items" in schema else "prefixItems"
            items = schema[key]
            if isinstance(items, list):
                return _Tuple([self.node(item, f"{path}/{key}/{i}") for i, item in enumerate(items)])
            node = _Array(self.node(items, f"{path}/{key}"))
        else:
            node = _Array(_Any())
        node.min_items = self.count(schema, "minItems", path, 0)
        node.max_items = self.count(schema, "maxItems", path, -1)
        if 0 <= node.max_items < node.min_items:
            self.fail(path, f"minItems ({node.min_items}) is greater than maxItems ({node.max_items})")
        return node

    def string(self, schema: dict, path: str) -> _Node:
        node = _String()
        if "pattern" in schema:
            if not isinstance(schema["pattern"], str):
                self.fail(path, "pattern must be a string")
            node.pattern = schema["pattern"]
        node.format = self.string_format(schema, path)
        node.min_length = self.count(schema, "minLength", path, 0)
        node.max_length = self.count(schema, "maxLength", path, -1)
        if 0 <= node.max_length < node.min_length:
            self.fail(path, f"minLength ({node.min_length}) is greater than maxLength ({node.max_length})")
        return node

    def integer(self, schema: dict, path: str) -> _Node:
        node = _Integer()
        if "minimum" in schema:
            node.minimum = self.bound(schema, "minimum", path, True)
        elif "exclusiveMinimum" in schema:
            node.minimum = self.bound(schema, "exclusiveMinimum", path, False) + 1
        if "maximum" in schema:
            node.maximum = self.bound(schema, "maximum", path, False)
        elif "exclusiveMaximum" in schema:
            node.maximum = self.bound(schema, "exclusiveMaximum", path, True) - 1
        if node.minimum > node.maximum:
            self.fail(path, f"no integer lies between the minimum ({node.minimum}) and the maximum ({node.maximum})")
        return node

    def node(self, schema: Any, path: str) -> _Node:
        if not isinstance(schema, dict):
            self.fail(path, f"schema must be an object, got {type(schema).__name__}")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        if "oneOf" in schema or "anyOf" in schema:
            key = "oneOf" if "oneOf" in schema else "anyOf"
            return self.alternatives(_AnyOf, schema[key], f"{path}/{key}")

        typ = schema.get("type")
        if isinstance(typ, list):
            # {"type": ["a", "b"], ...} is {"anyOf": [{"type": "a", ...}, {"type": "b", ...}]}
            if not typ:
                self.fail(path, "type must not be empty")
            return _AnyOf([self.node({**schema, "type": t}, f"{path}/type/{i}") for i, t in enumerate(typ)])
        if "const" in schema:
            return _Const(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                self.fail(path, "enum must be a non-empty array")
            return _Enum(list(values))
        if typ is not None and not isinstance(typ, str):
            self.fail(path, "type must be a string or an array of strings")

        type_name = typ or ""
        has_properties = "properties" in schema or (
            "additionalProperties" in schema and schema["additionalProperties"] is not True)
        if not type_name:
            # without a type the structural keywords decide
            if has_properties:
                return self.object(schema, path)
            if "allOf" in schema:
                return self.alternatives(_AllOf, schema["allOf"], f"{path}/allOf")
            if "items" in schema or "prefixItems" in schema:
                return self.array(schema, path)
            if ("pattern" in schema or "minLength" in schema or "maxLength" in schema
                    or self.string_format(schema, path)):
                return self.string(schema, path)
            return _Any()
        if type_name == "object":
            if not has_properties and "allOf" in schema:
                return self.alternatives(_AllOf, schema["allOf"], f"{path}/allOf")
            return self.object(schema, path)
        if type_name == "string":
            if "allOf" in schema:
                return self.alternatives(_AllOf, schema["allOf"], f"{path}/allOf")
            return self.string(schema, path)
        if type_name == "array":
            return self.array(schema, path)
        if type_name == "integer":
            return self.integer(schema, path)
        if type_name == "number":
            return _Number()
        if type_name == "boolean":
            return _Boolean()
        if type_name == "null":
            return _Null()
        self.fail(path, f"unrecognized type {type_name!r}")
        raise AssertionError  # unreachable


# --------------------------------------------------------------------------------------------
# the converter (json-schema-to-grammar.cpp)
# --------------------------------------------------------------------------------------------

def _build_repetition(item_rule: str, min_items: int, max_items: int, separator_rule: str = "") -> str:
    has_max = max_items != _INT_MAX
    if max_items == 0:
        return ""
    if min_items == 0 and max_items == 1:
        return item_rule + "?"
    if not separator_rule:
        if min_items == 1 and not has_max:
            return item_rule + "+"
        if min_items == 0 and not has_max:
            return item_rule + "*"
        return item_rule + "{" + str(min_items) + "," + (str(max_items) if has_max else "") + "}"
    result = item_rule + " " + _build_repetition(
        "(" + separator_rule + " " + item_rule + ")",
        0 if min_items == 0 else min_items - 1,
        max_items - 1 if has_max else max_items)
    if min_items == 0:
        result = "(" + result + ")?"
    return result


def _build_min_max_int(min_value: int, max_value: int, out: list[str], decimals_left: int = 16,
                       top_level: bool = True) -> None:
    has_min = min_value != _INT64_MIN
    has_max = max_value != _INT64_MAX

    def digit_range(frm: str, to: str) -> None:
        out.append("[")
        out.append(frm if frm == to else frm + "-" + to)
        out.append("]")

    def more_digits(min_digits: int, max_digits: int) -> None:
        out.append("[0-9]")
        if min_digits == max_digits == 1:
            return
        out.append("{")
        out.append(str(min_digits))
        if max_digits != min_digits:
            out.append(",")
            if max_digits != _INT_MAX:
                out.append(str(max_digits))
        out.append("}")

    def uniform_range(frm: str, to: str) -> None:
        i = 0
        while i < len(frm) and i < len(to) and frm[i] == to[i]:
            i += 1
        if i > 0:
            out.append('"' + frm[:i] + '"')
        if i < len(frm) and i < len(to):
            if i > 0:
                out.append(" ")
            sub_len = len(frm) - i - 1
            if sub_len > 0:
                from_sub, to_sub = frm[i + 1:], to[i + 1:]
                sub_zeros, sub_nines = "0" * sub_len, "9" * sub_len
                to_reached = False
                out.append("(")
                if from_sub == sub_zeros:
                    digit_range(frm[i], chr(ord(to[i]) - 1))
                    out.append(" ")
                    more_digits(sub_len, sub_len)
                else:
                    out.append("[" + frm[i] + "] ")
                    out.append("(")
                    uniform_range(from_sub, sub_nines)
                    out.append(")")
                    if ord(frm[i]) < ord(to[i]) - 1:
                        out.append(" | ")
                        if to_sub == sub_nines:
                            digit_range(chr(ord(frm[i]) + 1), to[i])
                            to_reached = True
                        else:
                            digit_range(chr(ord(frm[i]) + 1), chr(ord(to[i]) - 1))
                        out.append(" ")
                        more_digits(sub_len, sub_len)
                if not to_reached:
                    out.append(" | ")
                    digit_range(to[i], to[i])
                    out.append(" ")
                    uniform_range(sub_zeros, to_sub)
                out.append(")")
            else:
                out.append("[" + frm[i] + "-" + to[i] + "]")

    if has_min and has_max:
        if min_value < 0 and max_value < 0:
            out.append('"-" (')
            _build_min_max_int(-max_value, -min_value, out, decimals_left, True)
            out.append(")")
            return
        if min_value < 0:
            out.append('"-" (')
            _build_min_max_int(0, -min_value, out, decimals_left, True)
            out.append(") | ")
            min_value = 0
        min_s, max_s = str(min_value), str(max_value)
        for digits in range(len(min_s), len(max_s)):
            uniform_range(min_s, "9" * digits)
            min_s = "1" + "0" * digits
            out.append(" | ")
        uniform_range(min_s, max_s)
        return

    less_decimals = max(decimals_left - 1, 1)

    if has_min:
        if min_value < 0:
            out.append('"-" (')
            _build_min_max_int(_INT64_MIN, -min_value, out, decimals_left, False)
            out.append(") | [0] | [1-9] ")
            more_digits(0, decimals_left - 1)
        elif min_value == 0:
            if top_level:
                out.append("[0] | [1-9] ")
                more_digits(0, less_decimals)
            else:
                more_digits(1, decimals_left)
        elif min_value <= 9:
            c = chr(ord("0") + min_value)
            range_start = "1" if top_level else "0"
            if c > range_start:
                digit_range(range_start, chr(ord(c) - 1))
                out.append(" ")
                more_digits(1, less_decimals)
                out.append(" | ")
            digit_range(c, "9")
            out.append(" ")
            more_digits(0, less_decimals)
        else:
            min_s = str(min_value)
            n = len(min_s)
            c = min_s[0]
            if c > "1":
                digit_range("1" if top_level else "0", chr(ord(c) - 1))
                out.append(" ")
                more_digits(n, less_decimals)
                out.append(" | ")
            digit_range(c, c)
            out.append(" (")
            _build_min_max_int(int(min_s[1:]), _INT64_MAX, out, less_decimals, False)
            out.append(")")
            if c < "9":
                out.append(" | ")
                digit_range(chr(ord(c) + 1), "9")
                out.append(" ")
                more_digits(n - 1, less_decimals)
        return

    if has_max:
        if max_value >= 0:
            if top_level:
                out.append('"-" [1-9] ')
                more_digits(0, less_decimals)
                out.append(" | ")
            _build_min_max_int(0, max_value, out, decimals_left, True)
        else:
            out.append('"-" (')
            _build_min_max_int(-max_value, _INT64_MAX, out, decimals_left, False)
            out.append(")")
        return

    raise ValueError("At least one of min_value or max_value must be set")


_SPACE_RULE = '| " " | "\\n"{1,2} [ \\t]{0,20}'

# name -> (content, deps)
_PRIMITIVE_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"',
               ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             '[0-9a-fA-F]{12} "\\""', ()),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "null": ('"null"', ()),
}

_STRING_FORMAT_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\""', ("date",)),
    "time-string": ('"\\"" time "\\""', ("time",)),
    "date-time-string": ('"\\"" date-time "\\""', ("date-time",)),
}

_RESERVED_NAMES = {"root", *_PRIMITIVE_RULES, *_STRING_FORMAT_RULES}

_INVALID_RULE_CHARS_RE = re.compile(r"[^a-zA-Z0-9-]+")
_GRAMMAR_LITERAL_ESCAPE_RE = re.compile(r'[\r\n"\\]')
_GRAMMAR_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "-": "\\-", "]": "\\]", "\\": "\\\\"}

_MAX_PATTERN_DEPTH = 100
_NON_LITERAL_SET = set("|.()[]{}*+?^$")
_ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS = set("^$.[](){}|*+?")
_HEX = set("0123456789abcdefABCDEF")
_STOI_RE = re.compile(r"\s*[+-]?[0-9]+")


def _format_literal(literal: str) -> str:
    return '"' + _GRAMMAR_LITERAL_ESCAPE_RE.sub(lambda m: _GRAMMAR_LITERAL_ESCAPES[m.group(0)], literal) + '"'


def _json_dump(value: Any) -> str:
    """As nlohmann's dump(): compact, UTF-8 kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _class_char(c: str) -> str:
    """One character for a GBNF character class (escaped where the class syntax would take it)."""
    if c in "\\]-":
        return "\\" + c
    if c == "^" or ord(c) < 0x20 or c == "\x7f":
        return "\\x%02X" % ord(c)
    return c


def _gbnf_escape_length(pattern: str, pos: int) -> int:
    """Length of an escape at pattern[pos] that GBNF understands as is, 0 if none."""
    if pos + 1 >= len(pattern) or pattern[pos] != "\\":
        return 0
    nxt = pattern[pos + 1]
    if nxt in "trn\\\"[]-":
        return 2
    n_hex = {"x": 2, "u": 4, "U": 8}.get(nxt)
    if n_hex is None or pos + 2 + n_hex > len(pattern):
        return 0
    if not all(h in _HEX for h in pattern[pos + 2:pos + 2 + n_hex]):
        return 0
    return 2 + n_hex


def _stoi(s: str) -> int:
    m = _STOI_RE.match(s)  # std::stoi: leading spaces and trailing junk are fine, no digits is not
    if m is None:
        raise ValueError(s)
    v = int(m.group(0))
    if not -(2**31) <= v <= _INT_MAX:
        raise ValueError(s)
    return v


class _UnsupportedPattern(Exception):
    """A valid regular expression with no grammar equivalent."""


class _InvalidPattern(Exception):
    """Not a valid regular expression."""


class _Trie:
    def __init__(self, words: Sequence[str]) -> None:
        self.children: list[dict[str, int]] = [{}]
        self.is_end: list[bool] = [False]
        for w in words:
            cur = 0
            for ch in w:
                nxt = self.children[cur].get(ch)
                if nxt is None:
                    nxt = len(self.children)
                    self.children.append({})
                    self.is_end.append(False)
                    self.children[cur][ch] = nxt
                cur = nxt
            self.is_end[cur] = True


class _SchemaConverter:
    def __init__(self, dotall: bool, prop_order: Sequence[str]) -> None:
        self._dotall = dotall
        self._prop_order = {name: i for i, name in enumerate(prop_order)}
        self._rules: dict[str, str] = {"space": _SPACE_RULE}
        self._refs_being_resolved: set[str] = set()
        self._errors: list[str] = []
        self._warnings: list[str] = []

    def _add_rule(self, name: str, rule: str) -> str:
        esc_name = _INVALID_RULE_CHARS_RE.sub("-", name)
        if esc_name not in self._rules or self._rules[esc_name] == rule:
            self._rules[esc_name] = rule
            return esc_name
        i = 0
        while f"{esc_name}{i}" in self._rules and self._rules[f"{esc_name}{i}"] != rule:
            i += 1
        key = f"{esc_name}{i}"
        self._rules[key] = rule
        return key

    def _add_primitive(self, name: str, rule: tuple[str, tuple[str, ...]]) -> str:
        n = self._add_rule(name, rule[0])
        for dep in rule[1]:
            dep_rule = _PRIMITIVE_RULES.get(dep) or _STRING_FORMAT_RULES.get(dep)
            if dep_rule is None:
                self._errors.append(f"Rule {dep} not known")
                continue
            if dep not in self._rules:
                self._add_primitive(dep, dep_rule)
        return n

    def _visit_primitive(self, rule_name: str, typ: str) -> str:
        return self._add_primitive("root" if rule_name == "root" else typ, _PRIMITIVE_RULES[typ])

    def _generate_union_rule(self, name: str, alt_schemas: Sequence[_Node]) -> str:
        return " | ".join(
            self.visit(alt, name + ("alternative-" if not name else "-") + str(i))
            for i, alt in enumerate(alt_schemas))

    # -- regular expressions -------------------------------------------------------------
    def _visit_pattern(self, pattern: str, name: str) -> str:
        snapshot = dict(self._rules)
        try:
            return self._pattern_to_rule(pattern, name)
        except _UnsupportedPattern as err:
            self._rules = snapshot
            self._warnings.append(f"pattern {pattern} is not supported ({err}), accepting any string")
            return self._add_rule(name, self._add_primitive("string", _PRIMITIVE_RULES["string"]))
        except _InvalidPattern as err:
            self._rules = snapshot
            self._errors.append(f"Invalid pattern {pattern}: {err}")
            return ""

    def _pattern_to_rule(self, pattern: str, name: str) -> str:
        if len(pattern) < 2 or pattern[0] != "^" or pattern[-1] != "$":
            raise _UnsupportedPattern("not anchored with '^' and '$'")
        sub_pattern = pattern[1:-1]
        sub_rule_ids: dict[str, str] = {}
        length = len(sub_pattern)
        i = 0
        paren_depth = 0

        def to_rule(ls: tuple[str, bool]) -> str:
            return '"' + ls[0] + '"' if ls[1] else ls[0]

        def get_dot() -> str:
            rule = "[\\U00000000-\\U0010FFFF]" if self._dotall else "[^\\x0A\\x0D]"
            return self._add_rule("dot", rule)

        def transform() -> tuple[str, bool]:
            nonlocal i, paren_depth
            seq: list[tuple[str, bool]] = []

            def join_seq() -> tuple[str, bool]:
                ret: list[tuple[str, bool]] = []
                literal = ""
                for text, is_literal in seq:
                    if is_literal:
                        literal += text
                    else:
                        if literal:
                            ret.append((literal, True))
                            literal = ""
                        ret.append((text, False))
                if literal:
                    ret.append((literal, True))
                return " ".join(to_rule(item) for item in ret), False

            while i < length:
                c = sub_pattern[i]
                if c == ".":
                    seq.append((get_dot(), False))
                    i += 1
                elif c == "(":
                    i += 1
                    if i < length and sub_pattern[i] == "?":
                        if i + 1 < length and sub_pattern[i + 1] == ":":
                            i += 2  # a non-capturing group is a group
                        else:
                            raise _UnsupportedPattern("unsupported group syntax")
                    paren_depth += 1
                    if paren_depth > _MAX_PATTERN_DEPTH:
                        raise _UnsupportedPattern("pattern nesting too deep")
                    seq.append(("(" + to_rule(transform()) + ")", False))
                elif c == ")":
                    i += 1
                    if paren_depth == 0:
                        raise _InvalidPattern("unbalanced parentheses")
                    paren_depth -= 1
                    return join_seq()
                elif c in "^$":
                    raise _UnsupportedPattern("anchor inside the pattern")
                elif c == "[":
                    square_brackets = c
                    i += 1
                    while i < length and sub_pattern[i] != "]":
                        if sub_pattern[i] == "\\":
                            n = _gbnf_escape_length(sub_pattern, i)
                            if n == 0:
                                raise _UnsupportedPattern(
                                    "unsupported escape in character class: " + sub_pattern[i:i + 2])
                            square_brackets += sub_pattern[i:i + n]
                            i += n
                        else:
                            square_brackets += sub_pattern[i]
                            i += 1
                    if i >= length:
                        raise _InvalidPattern("unterminated character class")
                    square_brackets += "]"
                    i += 1
                    seq.append((square_brackets, False))
                elif c == "|":
                    seq.append(("|", False))
                    i += 1
                elif c in "*+?":
                    if not seq:
                        raise _InvalidPattern("nothing to repeat")
                    seq[-1] = (to_rule(seq[-1]) + c, False)
                    i += 1
                elif c == "{":
                    curly_brackets = c
                    i += 1
                    while i < length and sub_pattern[i] != "}":
                        curly_brackets += sub_pattern[i]
                        i += 1
                    if i >= length:
                        raise _UnsupportedPattern("unterminated curly brackets")
                    curly_brackets += "}"
                    i += 1
                    nums = curly_brackets[1:-1].split(",")
                    min_times, max_times = 0, _INT_MAX
                    if len(nums) not in (1, 2):
                        raise _UnsupportedPattern("wrong number of values in curly brackets")
                    try:
                        if len(nums) == 1:
                            min_times = max_times = _stoi(nums[0])
                        else:
                            if nums[0]:
                                min_times = _stoi(nums[0])
                            if nums[1]:
                                max_times = _stoi(nums[1])
                    except ValueError:
                        raise _UnsupportedPattern("invalid number in curly brackets") from None
                    if min_times < 0 or max_times < 0:
                        raise _UnsupportedPattern("negative number in curly brackets")
                    if min_times > max_times:
                        raise _InvalidPattern(f"min repeat greater than max repeat in {curly_brackets}")
                    if not seq:
                        raise _InvalidPattern("nothing to repeat")
                    sub, sub_is_literal = seq[-1]
                    if not sub_is_literal:
                        sub_id = sub_rule_ids.get(sub)
                        if sub_id is None:
                            sub_id = self._add_rule(f"{name}-{len(sub_rule_ids) + 1}", sub)
                            sub_rule_ids[sub] = sub_id
                        sub = sub_id
                    seq[-1] = (_build_repetition('"' + sub + '"' if sub_is_literal else sub,
                                                 min_times, max_times, ""), False)
                else:
                    literal = ""
                    while i < length:
                        ch = sub_pattern[i]
                        if ch == "\\":
                            if i == length - 1:
                                raise _InvalidPattern("trailing backslash")
                            nxt = sub_pattern[i + 1]
                            if nxt in _ESCAPED_IN_REGEXPS_BUT_NOT_IN_LITERALS:
                                literal += nxt
                                i += 2
                            else:
                                n = _gbnf_escape_length(sub_pattern, i)
                                if n == 0:
                                    raise _UnsupportedPattern("unsupported escape: " + sub_pattern[i:i + 2])
                                literal += sub_pattern[i:i + n]
                                i += n
                        elif ch == '"':
                            literal += '\\"'
                            i += 1
                        elif ch not in _NON_LITERAL_SET and (
                                i == length - 1 or not literal or sub_pattern[i + 1] == "."
                                or sub_pattern[i + 1] not in _NON_LITERAL_SET):
                            literal += ch
                            i += 1
                        else:
                            break
                    if not literal:  # nothing was consumed, e.g. a stray ']' or '}'
                        raise _UnsupportedPattern("unsupported character: " + c)
                    seq.append((literal, True))
            return join_seq()

        rule = to_rule(transform())
        if paren_depth != 0:
            raise _InvalidPattern("unbalanced parentheses")
        return self._add_rule(name, '"\\"" (' + rule + ') "\\""')

    # -- objects -------------------------------------------------------------------------
    def _not_strings(self, strings: Sequence[str]) -> str:
        """A rule for a JSON string that is none of ``strings``."""
        trie = _Trie(strings)
        char_rule = self._add_primitive("char", _PRIMITIVE_RULES["char"])
        out = ['["] ( ']

        def visit(idx: int) -> None:
            children = trie.children[idx]
            rejects = ""
            first = True
            for ch in sorted(children):  # by code point, as the C++ trie's std::map
                child = children[ch]
                c = _class_char(ch)
                rejects += c
                if first:
                    first = False
                else:
                    out.append(" | ")
                out.append("[" + c + "]")
                if trie.children[child]:
                    out.append(" (")
                    visit(child)
                    out.append(")")
                else:
                    out.append(" " + char_rule + "+")
            if children:
                out.append(' | [^"' + rejects + "] " + char_rule + "*")

        visit(0)
        out.append(" )")
        if not trie.is_end[0]:
            out.append("?")
        out.append(' ["]')
        return "".join(out)

    def _resolve_ref(self, ref: _Ref) -> str:
        fragment = ref.ref[ref.ref.find("#") + 1:] if "#" in ref.ref else ref.ref
        ref_name = "ref" + _INVALID_RULE_CHARS_RE.sub("-", fragment)
        if ref_name not in self._rules and ref.ref not in self._refs_being_resolved:
            if ref.target is None:
                self._errors.append(f"Unresolved $ref {ref.ref}")
                return ""
            self._refs_being_resolved.add(ref.ref)
            ref_name = self.visit(ref.target, ref_name)
            self._refs_being_resolved.discard(ref.ref)
        return ref_name

    def _build_object_rule(self, properties: list[tuple[str, _Node]], required: set[str], name: str,
                           additional: _Node | None) -> str:
        if self._prop_order:
            order = self._prop_order
            properties = [kv for _, kv in sorted(enumerate(properties),
                                                 key=lambda ikv: (order.get(ikv[1][0], len(order)), ikv[0]))]
        sep = "-" if name else ""
        required_props: list[str] = []
        optional_props: list[str] = []
        prop_kv_rule_names: dict[str, str] = {}
        prop_names: list[str] = []
        for prop_name, prop_schema in properties:
            prop_rule_name = self.visit(prop_schema, name + sep + prop_name)
            prop_kv_rule_names[prop_name] = self._add_rule(
                name + sep + prop_name + "-kv",
                _format_literal(_json_dump(prop_name)) + ' space ":" space ' + prop_rule_name)
            (required_props if prop_name in required else optional_props).append(prop_name)
            prop_names.append(prop_name)
        if additional is not None:
            sub_name = name + sep + "additional"
            value_rule = (self.visit(additional, sub_name + "-value") if additional.kind != "any"
                          else self._add_primitive("value", _PRIMITIVE_RULES["value"]))
            key_rule = (self._add_primitive("string", _PRIMITIVE_RULES["string"]) if not prop_names
                        else self._add_rule(sub_name + "-k", self._not_strings(prop_names)))
            prop_kv_rule_names["*"] = self._add_rule(sub_name + "-kv", key_rule + ' ":" space ' + value_rule)
            optional_props.append("*")

        if not required_props and not optional_props:
            return '"{" space "}"'

        rule = '"{" space ' + ' "," space '.join(prop_kv_rule_names[k] for k in required_props)
        if optional_props:
            rule += " ("
            if required_props:
                rule += ' "," space ( '

            def get_recursive_refs(ks: list[str], first_is_optional: bool) -> str:
                if not ks:
                    return ""
                k = ks[0]
                kv_rule_name = prop_kv_rule_names[k]
                comma_ref = '( "," space ' + kv_rule_name + " )"
                if first_is_optional:
                    res = comma_ref + ("*" if k == "*" else "?")
                else:
                    res = kv_rule_name + (" " + comma_ref + "*" if k == "*" else "")
                if len(ks) > 1:
                    res += " " + self._add_rule(name + sep + k + "-rest", get_recursive_refs(ks[1:], True))
                return res

            rule += " | ".join(get_recursive_refs(optional_props[i:], False) for i in range(len(optional_props)))
            if required_props:
                rule += " )"
            rule += " )?"
        rule += ' space "}"'
        return rule

    def _visit_all_of(self, schema: _AllOf, name: str, rule_name: str) -> str:
        required: set[str] = set()
        properties: list[tuple[str, _Node]] = []
        enum_values: dict[str, int] = {}

        def add_component(comp: _Node, is_required: bool) -> None:
            if isinstance(comp, _Ref):
                if comp.target is not None:
                    add_component(comp.target, is_required)
            elif isinstance(comp, _Object):
                for prop_name, prop_schema, _ in comp.properties:
                    properties.append((prop_name, prop_schema))
                    if is_required:
                        required.add(prop_name)
            elif isinstance(comp, _Enum):
                for v in comp.values:
                    lit = _format_literal(_json_dump(v))
                    enum_values[lit] = enum_values.get(lit, 0) + 1

        for child in schema.children:
            if isinstance(child, _AnyOf):
                for alt in child.children:
                    add_component(alt, False)
            else:
                add_component(child, True)
        if enum_values:
            intersection = [lit for lit, n in sorted(enum_values.items()) if n == len(schema.children)]
            if intersection:
                return self._add_rule(rule_name, "(" + " | ".join(intersection) + ")")
        return self._add_rule(rule_name, self._build_object_rule(properties, required, name, None))

    # -- the walk ------------------------------------------------------------------------
    def visit(self, schema: _Node, name: str) -> str:
        rule_name = name + "-" if name in _RESERVED_NAMES else (name or "root")
        sub_name = name + ("-" if name else "")

        if isinstance(schema, _Ref):
            return self._add_rule(rule_name, self._resolve_ref(schema))
        if isinstance(schema, _AnyOf):
            return self._add_rule(rule_name, self._generate_union_rule(name, schema.children))
        if isinstance(schema, _AllOf):
            return self._visit_all_of(schema, name, rule_name)
        if isinstance(schema, _Const):
            return self._add_rule(rule_name, _format_literal(_json_dump(schema.value)))
        if isinstance(schema, _Enum):
            return self._add_rule(rule_name, "(" + " | ".join(_format_literal(_json_dump(v)) for v in schema.values) + ")")
        if isinstance(schema, _Object):
            if not schema.properties and schema.additional is not None and schema.additional.kind == "any":
                return self._add_rule(rule_name, self._add_primitive("object", _PRIMITIVE_RULES["object"]))
            required = {n for n, _, req in schema.properties if req}
            properties = [(n, s) for n, s, _ in schema.properties]
            return self._add_rule(rule_name, self._build_object_rule(properties, required, name, schema.additional))
        if isinstance(schema, _Tuple):
            rule = '"[" space ' + ' "," space '.join(
                self.visit(item, f"{sub_name}tuple-{i}") for i, item in enumerate(schema.items))
            return self._add_rule(rule_name, rule + ' space "]"')
        if isinstance(schema, _Array):
            if schema.items.kind == "any" and schema.min_items == 0 and schema.max_items < 0:
                return self._visit_primitive(rule_name, "array")
            item_rule_name = self.visit(schema.items, sub_name + "item")
            max_items = _INT_MAX if schema.max_items < 0 else schema.max_items
            return self._add_rule(rule_name, '"[" space ' + _build_repetition(
                item_rule_name, schema.min_items, max_items, '"," space') + ' space "]"')
        if isinstance(schema, _String):
            if schema.pattern:
                return self._visit_pattern(schema.pattern, rule_name)
            if schema.format == "uuid":
                return self._visit_primitive(rule_name, "uuid")
            if schema.format:
                prim_name = schema.format + "-string"
                return self._add_rule(rule_name, self._add_primitive(prim_name, _STRING_FORMAT_RULES[prim_name]))
            if schema.min_length > 0 or schema.max_length >= 0:
                char_rule = self._add_primitive("char", _PRIMITIVE_RULES["char"])
                max_len = _INT_MAX if schema.max_length < 0 else schema.max_length
                return self._add_rule(rule_name, '"\\"" ' + _build_repetition(
                    char_rule, schema.min_length, max_len) + ' "\\""')
            return self._visit_primitive(rule_name, "string")
        if isinstance(schema, _Integer):
            if schema.minimum == _INT64_MIN and schema.maximum == _INT64_MAX:
                return self._visit_primitive(rule_name, "integer")
            lo, hi = schema.minimum, schema.maximum
            # One bound of 16 or more digits: the C++ emits [0-9]{16,15} for the longer numbers
            # past it (llama.cpp's GBNF parser then loops on max - min); bound the other side
            # instead, at the 16 digits an unbounded integer gets (or the bound's own length).
            if hi == _INT64_MAX and lo >= 10**15:
                hi = 10 ** max(16, len(str(lo))) - 1
            elif lo == _INT64_MIN and hi <= -(10**15):
                lo = -(10 ** max(16, len(str(-hi))) - 1)
            out = ["("]
            _build_min_max_int(lo, hi, out)
            out.append(")")
            return self._add_rule(rule_name, "".join(out))
        if isinstance(schema, _Number):
            return self._visit_primitive(rule_name, "number")
        if isinstance(schema, _Boolean):
            return self._visit_primitive(rule_name, "boolean")
        if isinstance(schema, _Null):
            return self._visit_primitive(rule_name, "null")
        return self._add_rule(rule_name, self._add_primitive("value", _PRIMITIVE_RULES["value"]))

    def check_errors(self) -> None:
        if self._errors:
            raise ValueError("JSON schema conversion failed:\n" + "\n".join(self._errors))
        if self._warnings:
            warnings.warn("JSON schema conversion was incomplete: " + "; ".join(self._warnings),
                          UserWarning, stacklevel=3)

    def format_grammar(self) -> str:
        return "".join(f"{name} ::= {rule}\n" for name, rule in sorted(self._rules.items()))


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def json_schema_to_grammar(schema: dict[str, Any] | str, *, prop_order: list[str] | None = None,
                           dotall: bool = False, rule_name: str = "root") -> str:
    """Converts a JSON Schema (a dict, or its JSON text) to a GBNF grammar whose root is ``root``.

    ``prop_order`` lists property names that come first, in that order, within the required and
    within the optional properties of every object (the others keep schema order after them);
    ``dotall`` lets ``.`` in a ``pattern`` match line breaks too; ``rule_name`` names the top rule
    instead of ``root`` (its own rules are then prefixed with it), to embed the grammar in a larger
    one. Raises ``ValueError`` for a schema that is not valid JSON, not an object, or outside the
    supported subset.
    """
    if not isinstance(rule_name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", rule_name):
        raise ValueError(f"rule_name must be a GBNF rule name, got {rule_name!r}")
    if isinstance(schema, (str, bytes, bytearray)):
        try:
            schema = json.loads(schema)
        except RecursionError:
            raise ValueError("the JSON schema is nested too deeply to convert") from None
        except ValueError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
    else:
        try:  # normalise to plain JSON values (tuples -> lists, ...), rejecting what JSON cannot hold
            schema = json.loads(json.dumps(schema, allow_nan=False))
        except RecursionError:
            raise ValueError("the JSON schema is nested too deeply to convert") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"the JSON schema is not JSON-serialisable: {e}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be an object (a dict), got {type(schema).__name__}")
    if prop_order is None:
        prop_order = []
    elif isinstance(prop_order, str) or not all(isinstance(p, str) for p in prop_order):
        raise ValueError("prop_order must be a list of property names")
    try:
        root = _SchemaBuilder(schema).build()
        converter = _SchemaConverter(bool(dotall), list(prop_order))
        converter.visit(root, "" if rule_name == "root" else rule_name)
    except RecursionError:
        raise ValueError("the JSON schema is nested too deeply to convert") from None
    converter.check_errors()
    return converter.format_grammar()


#: A grammar for any JSON object (``response_format={"type": "json_object"}``); the same text as
#: ``json_schema_to_grammar({"type": "object"})``.
JSON_GRAMMAR: str = (
    'array ::= "[" space ( value ("," space value)* )? space "]"\n'
    'boolean ::= ("true" | "false")\n'
    'char ::= [^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})\n'
    "decimal-part ::= [0-9]{1,16}\n"
    "integral-part ::= [0] | [1-9] [0-9]{0,15}\n"
    'null ::= "null"\n'
    'number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?\n'
    'object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? space "}"\n'
    "root ::= object\n"
    'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}\n'
    'string ::= "\\"" char* "\\""\n'
    "value ::= object | array | string | number | boolean | null\n"
)


def json_grammar_for_response_format(response_format: dict[str, Any]) -> str | None:
    """The grammar for an OpenAI-style ``response_format``, or None when output is free text.

    * ``{"type": "text"}`` -> None
    * ``{"type": "json_object"}`` -> :data:`JSON_GRAMMAR` (any JSON object)
    * ``{"type": "json_object", "schema": {...}}`` -> the schema's grammar
    * ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}``
      -> the schema's grammar (output always follows it; ``strict`` changes nothing)

    As in llama-server, an absent or empty schema means any JSON object. Anything else raises
    ``ValueError``.
    """
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format must be a dict, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        where = "response_format.schema"
    elif kind == "json_schema":
        wrapper = response_format.get("json_schema")
        if not isinstance(wrapper, dict):
            raise ValueError('response_format of type "json_schema" needs a "json_schema" object '
                             '({"name": ..., "schema": {...}})')
        schema = wrapper.get("schema")
        where = "response_format.json_schema.schema"
    else:
        raise ValueError('response_format type must be one of "text", "json_object" or "json_schema", '
                         f"got {kind!r}")
    if schema is None or (isinstance(schema, dict) and not schema):
        return JSON_GRAMMAR
    if not isinstance(schema, (dict, str)):
        raise ValueError(f"{where} must be a JSON schema object, got {type(schema).__name__}")
    return json_schema_to_grammar(schema)
