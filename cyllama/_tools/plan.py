"""Tools in a chat: checking them and ``tool_choice``, and putting them and past calls into the
prompt (through the template when it has tool syntax, else described in the system message).
:func:`plan_tools` is everything tool calling changes about one chat, for every entry point
(``LLM.chat``, the OpenAI layer, the drop-in's chat handlers). How each family writes calls, and
the grammars and parsers for them, are in :mod:`.formats`."""

from __future__ import annotations

import json
import re
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..grammar import json_schema_to_grammar
from .formats import tool_format_for

__all__ = ["template_features", "normalize_tools", "forced_tool_names", "prepare_tool_messages", "new_call_id",
           "ToolPlan", "ToolRequestError", "plan_tools"]

_PROBE = "zq_cyllama_probe"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FEATURES: "weakref.WeakKeyDictionary[Any, dict[str, bool]]" = weakref.WeakKeyDictionary()


def template_features(template: Any) -> dict[str, bool]:
    """Whether the model's chat template renders ``tools`` and assistant ``tool_calls``."""
    feats = _FEATURES.get(template)
    if feats is not None:
        return feats
    user = {"role": "user", "content": "x"}
    tool = {"type": "function", "function": {"name": _PROBE, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": _PROBE, "arguments": {}}}]}
    feats = {}
    for key, kwargs in (("tools", dict(messages=[user], tools=[tool])),
                        ("tool_calls", dict(messages=[user, call], add_generation_prompt=False))):
        try:
            feats[key] = _PROBE in template.render(**kwargs)
        except Exception:
            feats[key] = False
    _FEATURES[template] = feats
    return feats


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    """OpenAI tool dicts (``{"type": "function", "function": {...}}``; bare function dicts accepted)."""
    if tools is None:
        return None
    if isinstance(tools, Mapping) or not isinstance(tools, (list, tuple)):
        raise ValueError("tools must be a list of tool dicts like {'type': 'function', 'function': {...}}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping):
            raise ValueError(f"tools[{i}] must be a dict, got {type(t).__name__}")
        if t.get("type", "function") != "function":
            raise ValueError(f"tools[{i}]: only type 'function' is supported, got {t.get('type')!r}")
        fn = t.get("function", t if "name" in t else None)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}] needs a 'function' with a non-empty 'name'")
        if not _NAME.fullmatch(fn["name"]):
            raise ValueError(f"tools[{i}]: the function name {fn['name']!r} must be 1-64 letters, digits, "
                             "underscores, dots or dashes")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}]: 'parameters' must be a JSON schema object")
        fn = {**fn, "parameters": dict(params)}
        try:  # the grammar of its calls is built from it: a schema it cannot take is the request's fault
            json_schema_to_grammar(fn["parameters"])
        except ValueError as exc:
            raise ValueError(f"tools[{i}] ({fn['name']}): invalid parameters schema: {exc}") from None
        if fn["name"] in seen:
            raise ValueError(f"tools[{i}]: two tools are named {fn['name']!r}")
        seen.add(fn["name"])
        out.append({"type": "function", "function": fn})
    return out or None


def forced_tool_names(tool_choice: Any, tools: list[dict[str, Any]] | None) -> list[str] | None:
    """The tools the model must call (one of), or None when it answers freely.

    ``None``/``"auto"``/``"none"``: free; ``"required"``/``"any"``/``True``: one of all tools;
    ``{"type": "function", "function": {"name": N}}`` or a tool name: that tool.
    """
    names = [t["function"]["name"] for t in tools or []]
    if tool_choice is None or tool_choice is False or tool_choice in ("auto", "none"):
        return None
    if not names:
        raise ValueError(f"tool_choice={tool_choice!r} needs tools")
    if tool_choice is True or tool_choice in ("required", "any"):
        return names
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else tool_choice.get("name")
    elif isinstance(tool_choice, str):
        name = tool_choice
    else:
        raise ValueError(f"unsupported tool_choice {tool_choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not found among the tools {names}")
    return [name]


def _tool_instructions(tools: list[dict[str, Any]], forced: Sequence[str] | None, parallel: bool) -> str:
    lines = ["You can call the following functions. Their arguments are described by JSON schemas:"]
    for t in tools:
        fn = t["function"]
        lines.append(json.dumps({"name": fn["name"], "description": fn.get("description", ""),
                                 "parameters": fn["parameters"]}, ensure_ascii=False))
    how = 'reply with only a JSON object {"name": <function name>, "arguments": <arguments object>}'
    if parallel:
        how += " (or a JSON list of such objects to make several calls)"
    if forced:
        lines.append(f"Call {'the function ' + forced[0] if len(forced) == 1 else 'one of the functions'}: {how}.")
    else:
        lines.append(f"To call a function, {how}. Otherwise answer normally.")
    return "\n".join(lines)


def prepare_tool_messages(template: Any, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                          forced: Sequence[str] | None = None, fmt: Any = None, parallel: bool = True,
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and template ``tools`` for a request with tools, for any chat template.

    Templates that render ``tools`` get them; for the others the function list is described in the
    system message. Assistant ``tool_calls`` a template cannot render become their JSON text.
    ``fmt``: the template's :class:`~cyllama._tools.formats.ToolFormat` (call ids the template
    would reject, such as Mistral's nine-character ones, are mapped to ones it takes).
    """
    msgs = [dict(m) for m in messages]
    feats = template_features(template) if (tools or any(m.get("tool_calls") for m in msgs)) else {}
    if any(m.get("tool_calls") for m in msgs) and not feats.get("tool_calls"):
        for m in msgs:
            calls = m.pop("tool_calls", None)
            if calls:
                parts = [m.get("content") or ""]
                for c in calls:
                    fn = c.get("function", {})
                    args = fn.get("arguments", {})
                    if isinstance(args, str):
                        try:
                            args = json.loads(args)
                        except ValueError:
                            pass
                    # the form the tool instructions below ask the model to answer in
                    parts.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
                m["content"] = "\n".join(p for p in parts if p)
    if fmt is not None:
        for m in msgs:
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "id": fmt.template_call_id(c["id"])} if isinstance(c, Mapping)
                                   and isinstance(c.get("id"), str) else c for c in m["tool_calls"]]
            if isinstance(m.get("tool_call_id"), str):
                m["tool_call_id"] = fmt.template_call_id(m["tool_call_id"])
    for m in msgs:  # simple templates concatenate content: never hand them None
        if m.get("content") is None:
            m["content"] = ""
    if not tools:
        return msgs, None
    if feats.get("tools"):
        return msgs, tools
    text = _tool_instructions(tools, forced, parallel)
    if msgs and msgs[0].get("role") == "system":
        first = msgs[0].get("content") or ""
        if isinstance(first, (list, tuple)):  # content parts: the instructions are one more text part
            content: Any = [*first, {"type": "text", "text": "\n\n" + text}]
        else:
            content = f"{first}\n\n{text}" if first else text
        msgs[0] = {**msgs[0], "content": content}
    else:
        msgs.insert(0, {"role": "system", "content": text})
    return msgs, None


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolRequestError(ValueError):
    """A request's tools or tool_choice are invalid; ``param`` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class ToolPlan:
    """How a chat request with tools is prompted, constrained and read back."""

    messages: list[dict[str, Any]]  # ready for the template
    template_tools: list[dict[str, Any]] | None  # what the template's ``tools`` gets
    fmt: Any = None  # the ToolFormat calls are parsed with (None: no tools in play)
    names: list[str] = field(default_factory=list)  # the tools the model may call
    forced: list[str] | None = None  # a forced tool_choice: one of these must be called
    grammar: Any = None  # the Grammar of the calls (lazy for "auto"), or None


def plan_tools(template: Any, messages: Sequence[Mapping[str, Any]], tools: Any, tool_choice: Any = None, *,
               parallel: bool = True, special_token: Any = None, own_grammar: bool = False) -> ToolPlan:
    """Everything tool calling changes about one chat, for any entry point.

    ``tools``/``tool_choice``: as OpenAI takes them. ``special_token(text)``: the single token id
    of a marker, or None. ``own_grammar``: the request constrains output itself (a grammar or
    ``response_format``), which a forced choice cannot be combined with and "auto" leaves alone.
    Raises :class:`ToolRequestError` naming the field.
    """
    try:
        norm = normalize_tools(tools)
        if tool_choice is not None and norm is None and tool_choice != "none":
            raise ValueError(f"tool_choice={tool_choice!r} needs tools")
        forced = forced_tool_names(tool_choice, norm)
    except ValueError as exc:
        raise ToolRequestError(str(exc), "tool_choice" if "tool_choice" in str(exc) else "tools") from None
    active = None if tool_choice == "none" else norm
    if forced and own_grammar:
        raise ToolRequestError("a forced tool_choice cannot be combined with grammar, json_schema or "
                               "response_format", "tool_choice")
    fmt = None
    if active:
        renders = template_features(template).get("tools")
        fmt = tool_format_for(template.source if renders else None, special_token)
    history_fmt = fmt or tool_format_for(getattr(template, "source", None), special_token)
    msgs, template_tools = prepare_tool_messages(template, messages, active, forced, history_fmt, parallel)
    if fmt is None:
        return ToolPlan(msgs, template_tools)
    names = [t["function"]["name"] for t in active or []]
    grammar = None
    if not own_grammar:
        try:
            grammar = fmt.grammar(active, forced or names, parallel, lazy=not forced)
        except ValueError as exc:
            raise ToolRequestError(f"invalid tools: {exc}", "tools") from None
    return ToolPlan(msgs, template_tools, fmt, names, forced, grammar)
