"""Tools in chat requests: checking them, describing them to templates without tool syntax,
forcing a call through a JSON-schema grammar, and finding calls in free model output."""

from __future__ import annotations

import json
import re
import uuid
import weakref
from typing import Any, Mapping, Sequence

__all__ = ["template_features", "normalize_tools", "forced_tool_names", "tool_call_schema",
           "prepare_tool_messages", "parse_tool_calls", "new_call_id"]

_PROBE = "zq_cyllama_probe"
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
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping):
            raise ValueError(f"tools[{i}] must be a dict, got {type(t).__name__}")
        if t.get("type", "function") != "function":
            raise ValueError(f"tools[{i}]: only type 'function' is supported, got {t.get('type')!r}")
        fn = t.get("function", t if "name" in t else None)
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}] needs a 'function' with a non-empty 'name'")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}]: 'parameters' must be a JSON schema object")
        fn = {**fn, "parameters": dict(params)}
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
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools {names}")
    return [name]


def tool_call_schema(tools: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of one call ``{"name": ..., "arguments": {...}}`` to one of ``names``."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    alts = []
    for n in names:
        alts.append({"type": "object",
                     "properties": {"name": {"const": n}, "arguments": by_name[n]["parameters"]},
                     "required": ["name", "arguments"]})
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def _tool_instructions(tools: list[dict[str, Any]], forced: Sequence[str] | None) -> str:
    lines = ["You can call the following functions. Their arguments are described by JSON schemas:"]
    for t in tools:
        fn = t["function"]
        lines.append(json.dumps({"name": fn["name"], "description": fn.get("description", ""),
                                 "parameters": fn["parameters"]}, ensure_ascii=False))
    how = 'reply with only a JSON object {"name": <function name>, "arguments": <arguments object>}'
    if forced:
        lines.append(f"Call {'the function ' + forced[0] if len(forced) == 1 else 'one of the functions'}: {how}.")
    else:
        lines.append(f"To call a function, {how}. Otherwise answer normally.")
    return "\n".join(lines)


def prepare_tool_messages(template: Any, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                          forced: Sequence[str] | None = None,
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and template ``tools`` for a request with tools, for any chat template.

    Templates that render ``tools`` get them; for the others the function list is described in the
    system message. Assistant ``tool_calls`` a template cannot render become their JSON text.
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
    for m in msgs:  # simple templates concatenate content: never hand them None
        if m.get("content") is None:
            m["content"] = ""
    if not tools:
        return msgs, None
    if feats.get("tools"):
        return msgs, tools
    text = _tool_instructions(tools, forced)
    if msgs and msgs[0].get("role") == "system":
        first = msgs[0].get("content") or ""
        msgs[0] = {**msgs[0], "content": f"{first}\n\n{text}" if first else text}
    else:
        msgs.insert(0, {"role": "system", "content": text})
    return msgs, None


_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def _call_from_obj(obj: Any, names: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if name not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return (name, args) if isinstance(args, dict) else None


def parse_tool_calls(text: str, names: Sequence[str]) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Tool calls in free model output: ``<tool_call>{...}</tool_call>`` blocks (Hermes, Qwen...),
    or the whole text being ``{"name": ..., "arguments"|"parameters": {...}}`` (or a list of those).

    Returns ``(calls, remaining_text)``; only names in ``names`` count.
    """
    calls: list[tuple[str, dict[str, Any]]] = []
    if "<tool_call>" in text:
        for m in _TOOL_TAG.finditer(text):
            try:
                c = _call_from_obj(json.loads(m.group(1)), names)
            except ValueError:
                c = None
            if c is not None:
                calls.append(c)
        if calls:
            return calls, _TOOL_TAG.sub("", text).strip()
    s = text.strip()
    if s[:1] in "{[":
        try:
            obj = json.loads(s)
        except ValueError:
            return [], text
        for item in obj if isinstance(obj, list) else [obj]:
            c = _call_from_obj(item, names)
            if c is None:
                return [], text
            calls.append(c)
        return calls, ""
    return [], text


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]
