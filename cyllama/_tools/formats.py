"""How each model family writes tool calls: the grammar that makes it write them well-formed, and
the parser that finds them in its output, incrementally, for streaming.

The family is read from the chat template, as llama.cpp's ``common/chat`` does:

* ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes 2/3, Qwen 2.5)
* ``llama3``: ``{"name": ..., "parameters": {...}}`` at the start, or after ``<|python_tag|>``
* ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "abcdef123"}]``
* ``functionary-v3.1``: ``<function=name>{...}</function>`` (Functionary on Llama 3.1)
* ``functionary-v3.2``: ``name\\n{...}`` after the prompt's ``>>>``, more as ``>>>name\\n{...}``
* ``generic``: templates without tool syntax; the tools are described in the system message and
  the model answers ``{"name": ..., "arguments": {...}}`` (or a list of those)

A forced call (``tool_choice`` "required" or a named tool) is generated under the family's grammar
from the first token; with "auto" the grammar is lazy and switches on at the family's trigger, so
free text stays free and a started call is always complete JSON for its tool's schema.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from .._grammar_gate import Grammar
from ..grammar import json_schema_to_grammar

__all__ = ["ToolFormat", "tool_format_for", "single_token", "ToolCallStream", "FORMATS"]

_WS = re.compile(r"\s*")
_NAME_CHARS = set(string.ascii_letters + string.digits + "_-.")


# -- scanning JSON that may still be arriving ----------------------------------------------------
class _Bad(Exception):
    """The text is not (the start of) what was expected."""


def _skip_ws(s: str, i: int) -> int:
    return _WS.match(s, i).end()  # type: ignore[union-attr]


def _scan_string(s: str, i: int) -> int | None:
    """End of the JSON string starting at ``s[i] == '"'``; None while it is incomplete."""
    j, n = i + 1, len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def _scan_value(s: str, i: int, final: bool) -> int | None:
    """End of the JSON value starting at ``s[i]``; None while it is incomplete."""
    n = len(s)
    if i >= n:
        return None
    c = s[i]
    if c == '"':
        return _scan_string(s, i)
    if c in "{[":
        depth, j = 0, i
        while j < n:
            c = s[j]
            if c == '"':
                e = _scan_string(s, j)
                if e is None:
                    return None
                j = e
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    if c in "-0123456789tfn":
        j = i
        while j < n and s[j] not in ",}] \t\r\n":
            j += 1
        return j if (j < n or final) else None
    raise _Bad(f"no JSON value at {i}")


@dataclass
class _Call:
    name: str | None = None
    args: tuple[int, int | None] | None = None  # where the arguments' JSON text is (end None: arriving)
    done: bool = False


def _literal(s: str, i: int, lit: str, final: bool, ws: bool = True) -> int | None:
    """End of ``lit`` at ``s[i:]`` (after white space); None while ``s`` ends inside it."""
    if ws:
        i = _skip_ws(s, i)
    if s.startswith(lit, i):
        return i + len(lit)
    if not final and lit.startswith(s[i:]):
        return None
    raise _Bad(f"expected {lit!r} at {i}")


def _call_object(s: str, i: int, final: bool, call: _Call, names: Sequence[str]) -> int | None:
    """Parses ``{"name": ..., "arguments"|"parameters": {...}, ...}`` into ``call``; its end, or
    None while it is incomplete (``call`` then holds what is known so far)."""
    i = _skip_ws(s, i)
    if i >= len(s):
        return None
    if s[i] != "{":
        raise _Bad("a call is a JSON object")
    i += 1
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            return None
        if s[i] == "}":
            if call.name is None or call.args is None:
                raise _Bad("a call needs a name and arguments")
            call.done = True
            return i + 1
        if s[i] == ",":
            i += 1
            continue
        if s[i] != '"':
            raise _Bad("expected a key")
        j = _scan_string(s, i)
        if j is None:
            return None
        key = json.loads(s[i:j])
        i = _literal(s, j, ":", final)
        if i is None:
            return None
        i = _skip_ws(s, i)
        end = _scan_value(s, i, final)
        if key in ("arguments", "parameters"):
            call.args = (i, end)
        if end is None:
            return None
        if key in ("name", "function"):
            value = json.loads(s[i:end])
            if isinstance(value, dict):  # {"function": {"name": ..., "arguments": ...}}
                value = value.get("name")
            if value not in names:
                raise _Bad(f"{value!r} is not one of the tools")
            call.name = value
        i = end


# -- the families ------------------------------------------------------------------------------
@dataclass
class ToolFormat:
    """One family's tool-call syntax. Subclasses say where a call section starts (``markers``
    anywhere in the text, ``openers`` only at its start) and how a section parses."""

    name: str = "generic"
    markers: tuple[str, ...] = ()  # literal text that starts a call section anywhere
    openers: tuple[str, ...] = ('{"name"', '[{"name"')  # texts (white space aside) that start one at the start
    special_markers: dict[str, int] = field(default_factory=dict)  # marker -> its single token id
    fenced: bool = False  # calls may come in a Markdown code block (small models do that)

    # -- finding and parsing ------------------------------------------------------------------
    def find_start(self, s: str, pos: int, final: bool) -> tuple[int | None, int]:
        """(start of a call section at or after ``pos`` or None, how far text is surely content)."""
        hold = len(s)
        if pos == 0 and self.openers:
            lead = _skip_ws(s, 0)
            squeezed = re.sub(r"\s+", "", s[:96])
            for o in self.openers:
                if squeezed.startswith(o):
                    return lead, lead
                if not final and o.startswith(squeezed):
                    hold = 0
        found = [k for k in (s.find(m, pos) for m in self.markers) if k >= 0]
        if found:
            return min(found), min(found)
        for m in self.markers:
            if not final:
                for n in range(min(len(m) - 1, len(s) - pos), 0, -1):
                    if m.startswith(s[len(s) - n:]):
                        hold = min(hold, len(s) - n)
                        break
        if self.fenced:  # a call in a Markdown code block: ```json {"name": ...} ```
            k = s.find("```", pos)
            while k >= 0:
                squeezed = re.sub(r"\s+", "", s[k:k + 96])
                for o in _FENCE_OPENERS:
                    if squeezed.startswith(o):
                        return k, k
                if not final and any(o.startswith(squeezed) for o in _FENCE_OPENERS):
                    hold = min(hold, k)
                    break
                k = s.find("```", k + 3)
            if not final:
                for n in (2, 1):
                    if s.endswith("`" * n) and len(s) - n >= pos:
                        hold = min(hold, len(s) - n)
                        break
        return None, hold

    def parse(self, s: str, start: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
        """The calls of the section at ``s[start:]`` (the last one maybe incomplete), and where the
        section ends (None while it may go on). Raises :class:`_Bad` on text that is no call."""
        calls: list[_Call] = []
        i = start
        if "<tool_call>" in self.markers and s.startswith("<tool_call>", _skip_ws(s, i)):
            return _parse_tagged(s, i, final, names, "<tool_call>", "</tool_call>")
        if self.fenced and s.startswith("```", _skip_ws(s, i)):
            return _parse_fenced(s, _skip_ws(s, i), final, names)
        j = _skip_ws(s, i)
        if j < len(s) and s[j] == "[":
            return _parse_list(s, j + 1, final, names)
        while True:
            c = _Call()
            calls.append(c)
            end = _call_object(s, i, final, c, names)
            if end is None:
                return calls, None
            i = end
            k = _skip_ws(s, i)
            if k < len(s) and s[k] == ";":  # Llama 3.x writes several calls separated by ';'
                i = k + 1
                continue
            if k < len(s) and s[k] == "{":
                continue
            return calls, (None if not final and k >= len(s) else i)

    # -- prompting and constraining ------------------------------------------------------------
    args_key = "arguments"  # the key of a call object's arguments

    def call_rule(self, name: str, args_rule: str) -> str:
        """GBNF of one call object ``{"name": name, "<args_key>": args}``."""
        return (f'"{{" space {_gbnf_literal(json.dumps("name"))} space ":" space {_gbnf_literal(json.dumps(name))} '
                f'space "," space {_gbnf_literal(json.dumps(self.args_key))} space ":" space {args_rule} space "}}"')

    def _calls_rule(self, tools: list[dict[str, Any]], names: Sequence[str]) -> str:
        # each tool's parameters are their own grammar (so their $refs resolve in their own schema)
        rules, pairs = _args_rules(tools, names)
        calls = "".join(f"call{k} ::= {self.call_rule(n, r)}\n" for k, (n, r) in enumerate(pairs))
        return _merge_rules(rules, calls, f"call ::= {' | '.join(f'call{k}' for k in range(len(names)))}\n")

    def root_rule(self, parallel: bool) -> str:
        tagged = 'tagged ::= "<tool_call>" [ \\t\\n]{0,2} call [ \\t\\n]{0,2} "</tool_call>"\n'
        if parallel:
            return ('root ::= call | "[" space call ("," space call)* space "]" | fenced | tagged ([ \\t\\n]{0,2} '
                    'tagged)*\n' + FENCE_RULE + tagged)
        return "root ::= call | fenced | tagged\n" + FENCE_RULE + tagged

    def grammar(self, tools: list[dict[str, Any]], names: Sequence[str], parallel: bool, lazy: bool) -> Grammar:
        """The grammar of a call section (forced: the whole answer; lazy: from the trigger on)."""
        return self._spec(_merge_rules(self._calls_rule(tools, names), self.root_rule(parallel)), names, lazy)

    def _spec(self, text: str, names: Sequence[str], lazy: bool) -> Grammar:
        # a call may start after white space: the token that starts it often carries some
        text = re.sub(r"^root ::= (.*)$", r"root ::= [ \\t\\n]{0,4} (\1)", text, count=1, flags=re.M)
        preserved = list(self.special_markers.values())
        if not lazy:
            return Grammar(text, preserved_tokens=preserved)
        return Grammar(text, trigger_patterns=self.trigger_patterns(names), trigger_tokens=preserved,
                       preserved_tokens=preserved)

    def trigger_patterns(self, names: Sequence[str]) -> list[str]:
        pats = [r"^\s*(\{\s*\"name\")", r"^\s*(\[\s*\{\s*\"name\")"]
        pats += [f"({re.escape(m)})" for m in self.markers if m not in self.special_markers]
        if self.fenced:
            pats.append(_FENCE_TRIGGER)
        return pats

    def new_id(self) -> str:
        return "call_" + uuid.uuid4().hex[:24]

    def template_call_id(self, call_id: str) -> str:
        """The id as the template may see it (Mistral's want nine letters and digits)."""
        return call_id


def _parse_tagged(s: str, i: int, final: bool, names: Sequence[str], open_: str, close: str,
                  ) -> tuple[list[_Call], int | None]:
    calls: list[_Call] = []
    while True:
        j = _literal(s, i, open_, final)
        if j is None:
            return calls, None
        c = _Call()
        calls.append(c)
        end = _call_object(s, j, final, c, names)
        if end is None:
            return calls, None
        try:
            i = _literal(s, end, close, final)
        except _Bad:  # a closing tag left out: the call is whole anyway
            i = end
        if i is None:
            return calls, None
        k = _skip_ws(s, i)
        if k >= len(s):
            return calls, (None if not final else i)
        if not s.startswith(open_, k) and not (not final and open_.startswith(s[k:])):
            return calls, i


_FENCE_TRIGGER = r"(```(?:json|xml)?[ \t\n]{0,4}\{\s*\"name\")"
_FENCE_OPENERS = ('```json{"name"', '```{"name"', '```xml{"name"', '```json[{"name"', '```[{"name"')
_FENCE_HEAD = re.compile(r"```(?:json|xml)?[ \t]*\n?")
FENCE_RULE = 'fenced ::= "```" ("json" | "xml")? [ \\t\\n]{0,4} call [ \\t\\n]{0,4} "```"\n'


def _parse_fenced(s: str, i: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
    """Calls in Markdown code blocks (one or a list per block, blocks one after another)."""
    calls: list[_Call] = []
    while True:
        m = _FENCE_HEAD.match(s, i)
        if m is None or (not final and m.end() >= len(s)):
            if not final and "```".startswith(s[i:i + 3]):
                return calls, None
            raise _Bad("expected a code block")
        j = _skip_ws(s, m.end())
        if j < len(s) and s[j] == "[":
            more, end = _parse_list(s, j + 1, final, names)
            calls += more
        else:
            c = _Call()
            calls.append(c)
            end = _call_object(s, j, final, c, names)
        if end is None:
            return calls, None
        try:
            close = _literal(s, end, "```", final)
        except _Bad:
            return calls, end
        if close is None:
            return calls, None
        k = _skip_ws(s, close)
        if k >= len(s):
            return calls, (None if not final else close)
        if not s.startswith("```", k):
            return calls, close
        i = k


def _parse_list(s: str, i: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
    calls: list[_Call] = []
    while True:
        c = _Call()
        calls.append(c)
        end = _call_object(s, i, final, c, names)
        if end is None:
            return calls, None
        k = _skip_ws(s, end)
        if k >= len(s):
            return calls, None if not final else end
        if s[k] == ",":
            i = k + 1
            continue
        if s[k] == "]":
            return calls, k + 1
        raise _Bad("expected ',' or ']' in a list of calls")


_GBNF_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z][A-Za-z0-9-]*')


def _rules_of(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if " ::= " in line:
            name, body = line.split(" ::= ", 1)
            out[name] = body
    return out


def _rename(body: str, mapping: dict[str, str]) -> str:
    return _GBNF_TOKENS.sub(lambda m: mapping.get(m.group(0), m.group(0)), body)


def _merge_rules(*grammars: str) -> str:
    """One grammar of several (each tool's, the wrapper's): rules they share (``space``,
    ``string``...) are kept once; a name two of them define differently is renamed in the later."""
    merged: dict[str, str] = {}
    for k, g in enumerate(grammars):
        rules = _rules_of(g)
        mapping: dict[str, str] = {}
        while True:  # renaming one rule changes the text of the rules using it: repeat until stable
            clash = {n for n, b in rules.items() if n not in mapping
                     and n in merged and merged[n] != _rename(b, mapping)}
            if not clash:
                break
            for n in clash:
                mapping[n] = f"{n}-g{k}"
        for n, b in rules.items():
            merged[mapping.get(n, n)] = _rename(b, mapping)
    return "".join(f"{n} ::= {b}\n" for n, b in merged.items())


class HermesFormat(ToolFormat):
    def __init__(self, special: dict[str, int]):
        super().__init__("hermes", markers=("<tool_call>",), openers=('{"name"', '[{"name"'),
                         special_markers={k: v for k, v in special.items() if k == "<tool_call>"}, fenced=True)

    def root_rule(self, parallel: bool) -> str:
        block = 'block ::= "<tool_call>" [ \\t\\n]{0,2} call [ \\t\\n]{0,2} "</tool_call>" | fenced | call\n'
        return block + FENCE_RULE + ('root ::= block ([ \\t\\n]{0,2} block)*\n' if parallel else "root ::= block\n")

    def trigger_patterns(self, names: Sequence[str]) -> list[str]:
        return ([] if "<tool_call>" in self.special_markers else [r"(<tool_call>)"]) + [
            _FENCE_TRIGGER, r"^\s*(\{\s*\"name\")"]  # some write the bare JSON object


class Llama3Format(ToolFormat):
    def __init__(self, special: dict[str, int]):
        super().__init__("llama3", markers=("<|python_tag|>",), openers=('{"name"', '{"type":"function","name"'),
                         special_markers={k: v for k, v in special.items() if k == "<|python_tag|>"})

    args_key = "parameters"

    def root_rule(self, parallel: bool) -> str:
        first = '("<|python_tag|>")? call'
        return f'root ::= {first} (space ";" space call)*\n' if parallel else f"root ::= {first}\n"

    def parse(self, s: str, start: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
        j = _skip_ws(s, start)
        if s.startswith("<|python_tag|>", j):
            start = j + len("<|python_tag|>")
        elif not final and "<|python_tag|>".startswith(s[j:]) and j < len(s):
            return [], None
        return super().parse(s, start, final, names)

    def trigger_patterns(self, names: Sequence[str]) -> list[str]:
        pats = [r"^\s*(\{\s*(?:\"type\"\s*:\s*\"function\"\s*,\s*)?\"name\")"]
        if "<|python_tag|>" not in self.special_markers:
            pats.append(r"(<\|python_tag\|>)")
        return pats


_ID_CHARS = string.ascii_letters + string.digits


class MistralFormat(ToolFormat):
    def __init__(self, special: dict[str, int]):
        super().__init__("mistral", markers=("[TOOL_CALLS]",), openers=(),
                         special_markers={k: v for k, v in special.items() if k == "[TOOL_CALLS]"})

    def call_rule(self, name: str, args_rule: str) -> str:
        return super().call_rule(name, args_rule)[:-len(' space "}"')] + \
            ' space "," space "\\"id\\"" space ":" space call-id space "}"'

    def _calls_rule(self, tools: list[dict[str, Any]], names: Sequence[str]) -> str:
        return super()._calls_rule(tools, names) + 'call-id ::= "\\"" [a-zA-Z0-9]{9} "\\""\n'

    def root_rule(self, parallel: bool) -> str:
        more = ' ("," space call)*' if parallel else ""
        return f'root ::= "[TOOL_CALLS]" space "[" space call{more} space "]"\n'

    def parse(self, s: str, start: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
        i = _literal(s, start, "[TOOL_CALLS]", final)
        if i is None:
            return [], None
        j = _skip_ws(s, i)
        if j >= len(s):
            return [], None
        if s[j] == "[":
            return _parse_list(s, j + 1, final, names)
        return super().parse(s, j, final, names)

    def trigger_patterns(self, names: Sequence[str]) -> list[str]:
        return [] if "[TOOL_CALLS]" in self.special_markers else [r"(\[TOOL_CALLS\])"]

    def new_id(self) -> str:
        return "".join(_ID_CHARS[b % len(_ID_CHARS)] for b in uuid.uuid4().bytes[:9])

    def template_call_id(self, call_id: str) -> str:
        if len(call_id) == 9 and call_id.isalnum():
            return call_id
        digest = hashlib.sha256(call_id.encode()).digest()
        return "".join(_ID_CHARS[b % len(_ID_CHARS)] for b in digest[:9])


def _args_rules(tools: list[dict[str, Any]], names: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    rules = [json_schema_to_grammar(by_name[n]["parameters"], rule_name=f"args{k}") for k, n in enumerate(names)]
    return _merge_rules(*rules), [(n, f"args{k}") for k, n in enumerate(names)]


def _gbnf_literal(text: str) -> str:
    return json.dumps(text)


class FunctionaryV31Format(ToolFormat):
    def __init__(self, special: dict[str, int]):
        super().__init__("functionary-v3.1", markers=("<function=",), openers=())

    def trigger_patterns(self, names: Sequence[str]) -> list[str]:
        return [r"(<function=)"]

    def grammar(self, tools: list[dict[str, Any]], names: Sequence[str], parallel: bool, lazy: bool) -> Grammar:
        rules, pairs = _args_rules(tools, names)
        alts = " | ".join(f'{_gbnf_literal("<function=" + n + ">")} {r} "</function>"' for n, r in pairs)
        root = f"call ::= {alts}\n" + ("root ::= call ([ \\n]? call)*\n" if parallel else "root ::= call\n")
        return self._spec(_merge_rules(rules, root), names, lazy)

    def parse(self, s: str, start: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
        calls: list[_Call] = []
        i = start
        head = re.compile(r"\s*<function=([^>]*)>")
        while True:
            m = head.match(s, i)
            if m is None:
                rest = s[_skip_ws(s, i):]
                if not final and ("<function=".startswith(rest) or (rest.startswith("<function=") and ">" not in rest)):
                    return calls, None
                if calls:
                    return calls, i
                raise _Bad("expected <function=name>")
            if m.group(1) not in names:
                raise _Bad(f"{m.group(1)!r} is not one of the tools")
            c = _Call(name=m.group(1))
            calls.append(c)
            a = _skip_ws(s, m.end())
            end = _scan_value(s, a, final) if a < len(s) else None
            c.args = (a, end)
            if end is None:
                return calls, None
            c.done = True
            try:
                i = _literal(s, end, "</function>", final)
            except _Bad:
                i = end
            if i is None:
                return calls, None


class FunctionaryV32Format(ToolFormat):
    def __init__(self, special: dict[str, int]):
        super().__init__("functionary-v3.2", markers=(">>>",), openers=())

    def find_start(self, s: str, pos: int, final: bool) -> tuple[int | None, int]:
        if pos == 0:  # the prompt ends with ">>>": the answer opens with its recipient
            if s.startswith("all\n"):
                return None, 0  # content follows; ToolCallStream drops the recipient line
            if not final and "all\n".startswith(s):
                return None, 0
            if re.match(r"[\w.-]+\n", s):
                return 0, 0
            if not final and re.fullmatch(r"[\w.-]*", s):
                return None, 0
        return super().find_start(s, pos, final)

    def grammar(self, tools: list[dict[str, Any]], names: Sequence[str], parallel: bool, lazy: bool) -> Grammar:
        rules, pairs = _args_rules(tools, names)
        alts = " | ".join(f'{_gbnf_literal(n + chr(10))} {r}' for n, r in pairs)
        root = f"call ::= {alts}\n" + ('root ::= call (">>>" call)*\n' if parallel else "root ::= call\n")
        return self._spec(_merge_rules(rules, root), names, lazy)

    def trigger_patterns(self, names: Sequence[str]) -> list[str]:
        alt = "|".join(re.escape(n) for n in names)
        return [f"^((?:{alt})\\n)", f">>>((?:{alt})\\n)"]

    def parse(self, s: str, start: int, final: bool, names: Sequence[str]) -> tuple[list[_Call], int | None]:
        calls: list[_Call] = []
        i = start
        head = re.compile(r"(?:>>>)?([\w.-]+)\n")
        while True:
            m = head.match(s, i)
            if m is None:
                rest = s[i:]
                if not final and re.fullmatch(r"(?:>{0,3})[\w.-]*", rest):
                    return calls, None
                if calls:
                    return calls, i
                raise _Bad("expected a recipient line")
            if m.group(1) not in names:
                if calls:
                    return calls, i
                raise _Bad(f"{m.group(1)!r} is not one of the tools")
            c = _Call(name=m.group(1))
            calls.append(c)
            a = m.end()
            end = _scan_value(s, a, final) if a < len(s) else None
            c.args = (a, end)
            if end is None:
                return calls, None
            c.done = True
            i = end
            if not final and i >= len(s):
                return calls, None


FORMATS = ("hermes", "llama3", "mistral", "functionary-v3.1", "functionary-v3.2", "generic")


def single_token(vocab: Any, text: str) -> int | None:
    """The token id of ``text`` when ``vocab`` has it as one token (a tool-call marker), else None."""
    toks = vocab.tokenize(text, add_special=False, parse_special=True)
    return int(toks[0]) if len(toks) == 1 else None


def tool_format_for(template_source: str | None, token_of: Any = None) -> ToolFormat:
    """The tool-call family of a chat template (``generic`` when it has no tool syntax).

    ``token_of(text)``: the single token id of a special marker in the model's vocabulary, or
    None; markers that are one token trigger the lazy grammar by token."""
    src = template_source or ""
    special: dict[str, int] = {}
    if token_of is not None:
        for m in ("<tool_call>", "<|python_tag|>", "[TOOL_CALLS]"):
            t = token_of(m)
            if t is not None:
                special[m] = t
    if ">>>all" in src:
        return FunctionaryV32Format(special)
    if "<function=" in src and "<|start_header_id|>" in src:
        return FunctionaryV31Format(special)
    if "[TOOL_CALLS]" in src:
        return MistralFormat(special)
    if "<tool_call>" in src:
        return HermesFormat(special)
    if "<|start_header_id|>" in src and ("ipython" in src or "<|python_tag|>" in src) and "tools" in src:
        return Llama3Format(special)
    return ToolFormat("generic", markers=("<tool_call>",),
                      special_markers={k: v for k, v in special.items() if k == "<tool_call>"}, fenced=True)


class _ArgsScan:
    """Where a JSON object or array that is still arriving stands (depth, inside a string), so
    each new piece of text is scanned once: long arguments stay linear to stream."""

    __slots__ = ("k", "a0", "pos", "depth", "in_str", "esc")

    def __init__(self, k: int, a0: int, s: str):
        self.k, self.a0, self.pos, self.depth, self.in_str, self.esc = k, a0, a0, 0, False, False
        self.advance(s)

    def advance(self, s: str) -> int | None:
        """The end of the value if ``s`` now holds all of it, else None."""
        i, n = self.pos, len(s)
        depth, in_str, esc = self.depth, self.in_str, self.esc
        while i < n:
            c = s[i]
            i += 1
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i
        self.pos, self.depth, self.in_str, self.esc = i, depth, in_str, esc
        return None


# -- the stream ---------------------------------------------------------------------------------
class ToolCallStream:
    """Splits a model's output into content and tool calls as it arrives.

    ``feed(text)`` and, at the end, ``finish()`` return events: ``("content", text)``,
    ``("call", index, id, name)`` when a call's name is known, and ``("args", index, text)`` with
    each new piece of its arguments' JSON text (as OpenAI streams ``tool_calls`` deltas). Text
    that may begin a call is held back until it is known not to; white space before a call is
    dropped. ``forced``: the whole output is a call section (a forced ``tool_choice``).
    """

    def __init__(self, fmt: ToolFormat, names: Sequence[str], forced: bool = False, max_calls: int | None = None):
        self.fmt, self.names = fmt, list(names)
        self.buf = ""
        self.sent = 0  # text before this is handled (content sent, or the recipient line skipped)
        self.start: int | None = 0 if forced else None
        self.forced = forced
        self.max_calls = max_calls  # 1 for parallel_tool_calls=false: later calls are dropped
        self.calls: list[dict[str, Any]] = []  # {"id", "name", "arguments", "done"} as sent so far
        self.content: list[str] = []
        self._ws = ""  # trailing white space of the content, held until more content follows
        self._ws_before = ""  # the white space dropped before a call section (restored if it is none)
        self._open: _ArgsScan | None = None  # the arguments still arriving: scanned incrementally

    @property
    def complete(self) -> bool:
        """Whether there are calls and every one of them is whole (not cut off)."""
        return bool(self.calls) and all(c["done"] for c in self.calls)

    def feed(self, text: str) -> list[tuple]:
        if not text:
            return []
        self.buf += text
        return self._advance(False)

    def finish(self) -> list[tuple]:
        return self._advance(True)

    def _content(self, text: str, final: bool, out: list[tuple]) -> None:
        if not text:
            return
        text = self._ws + text
        stripped = text.rstrip()
        self._ws = text[len(stripped):]
        if stripped:
            self.content.append(stripped)
            out.append(("content", stripped))

    def _advance(self, final: bool) -> list[tuple]:
        out: list[tuple] = []
        s = self.buf
        if self.start is None:
            if self.sent == 0 and isinstance(self.fmt, FunctionaryV32Format) and s.startswith("all\n"):
                self.sent = 4
            start, hold = self.fmt.find_start(s, self.sent, final)
            if start is None:
                upto = len(s) if final else max(self.sent, hold)
                self._content(s[self.sent:upto], final, out)
                self.sent = upto
                if final and self._ws:
                    self.content.append(self._ws)
                    out.append(("content", self._ws))
                    self._ws = ""
                return out
            self._content(s[self.sent:start], final, out)
            self._ws_before, self._ws = self._ws, ""  # white space before a call is not content
            self.start = self.sent = start
        op = self._open
        if op is not None and not final:  # long arguments: only the new text is scanned
            if op.advance(s) is None:
                self._emit_args(op.k, s[op.a0:], out)
                return out
            self._open = None
        try:
            calls, end = self.fmt.parse(s, self.start, final, self.names)
        except (_Bad, ValueError):
            calls, end = None, None
        if calls is None or (final and not any(c.done for c in calls)):
            if final:  # no call after all: what was held back is content
                if not self.calls and not self.forced:
                    self._ws = self._ws_before
                    self._content(s[self.start:], True, out)
                    if self._ws:
                        self.content.append(self._ws)
                        out.append(("content", self._ws))
                        self._ws = ""
                elif self.forced and not self.calls:
                    self._forced_fallback(s, out)
            return out
        for k, c in enumerate(calls):
            if c.name is None or (self.max_calls is not None and k >= self.max_calls):
                break
            if k >= len(self.calls):
                cid = self.fmt.new_id()  # a model-written id (Mistral's) comes after the name: too late to stream
                self.calls.append({"id": cid, "name": c.name, "arguments": "", "done": False})
                out.append(("call", k, cid, c.name))
            if c.args is not None:
                a0, a1 = c.args
                self._emit_args(k, s[a0:a1 if a1 is not None else len(s)], out)
                if a1 is None and not final and s[a0:a0 + 1] in ("{", "["):
                    self._open = _ArgsScan(k, a0, s)
            self.calls[k]["done"] = c.done or (c.args is not None and c.args[1] is not None and final)
        if final and end is not None:
            rest = s[end:].strip()
            if rest and self.content:
                rest = "\n" + rest
            self._content(rest, True, out)
        return out

    def _emit_args(self, k: int, text: str, out: list[tuple]) -> None:
        sent = self.calls[k]["arguments"]
        if len(text) > len(sent) and text.startswith(sent):
            out.append(("args", k, text[len(sent):]))
            self.calls[k]["arguments"] = text

    def _forced_fallback(self, s: str, out: list[tuple]) -> None:
        # a forced call cut off before its name was complete (max_tokens): hand back what there is
        name = self.names[0]
        m = re.search(r'"(?:name|function)"\s*:\s*"([^"]*)"', s)
        if m and m.group(1) in self.names:
            name = m.group(1)
        cid = self.fmt.new_id()
        self.calls.append({"id": cid, "name": name, "arguments": s[self.start or 0:], "done": False})
        out.append(("call", 0, cid, name))
        if s:
            out.append(("args", 0, s))

    @staticmethod
    def deltas(events: Sequence[tuple]) -> list[dict[str, Any]]:
        """OpenAI stream ``delta`` objects for events: content, a call's header (index, id, type,
        name, empty arguments), then pieces of its arguments."""
        out: list[dict[str, Any]] = []
        for ev in events:
            if ev[0] == "content":
                out.append({"content": ev[1]})
            elif ev[0] == "call":
                out.append({"tool_calls": [{"index": ev[1], "id": ev[2], "type": "function",
                                            "function": {"name": ev[3], "arguments": ""}}]})
            else:
                out.append({"tool_calls": [{"index": ev[1], "function": {"arguments": ev[2]}}]})
        return out

    def message(self) -> tuple[str | None, list[dict[str, Any]]]:
        """(content or None, OpenAI ``tool_calls``) of everything fed so far (after ``finish``)."""
        content = "".join(self.content) or None
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in self.calls]
        return content, calls
