"""Tool calling, for any model and any entry point: checking tool definitions and ``tool_choice``,
putting tools and past calls into the prompt (:mod:`.plan`), and each model family's call syntax
with the grammar that constrains it and the parser that reads it back, incrementally
(:mod:`.formats`).

It sits with the high-level API (below ``LLM``, which uses it for ``chat(tools=...)``, and below
the OpenAI layer, which shapes its results as OpenAI's JSON); it depends only on the grammar
converter and the decoding core's :class:`~cyllama._grammar_gate.Grammar`.
"""

from .formats import FORMATS, ToolCallStream, ToolFormat, single_token, tool_format_for
from .plan import (ToolPlan, ToolRequestError, forced_tool_names, new_call_id, normalize_tools, plan_tools,
                   prepare_tool_messages, template_features)

__all__ = ["plan_tools", "ToolPlan", "ToolRequestError", "normalize_tools", "forced_tool_names",
           "prepare_tool_messages", "template_features", "new_call_id",
           "ToolFormat", "ToolCallStream", "tool_format_for", "single_token", "FORMATS"]
